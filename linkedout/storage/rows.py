"""What an extractor hands the store: a `FeatureRow` per item, or a `FailedItem` saying why not."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch


@dataclass(frozen=True)
class FeatureRow:
    """One catalog item's pooled hidden states and the facts needed to trust them."""

    item_id: str
    tokens: torch.Tensor | None
    """`[L, T, D]` in the manifest's layer order and dtype; None in a row that only adds
    queries to a stored item (`queries`)."""
    content_sha256: str
    source: str = ""
    title: str | None = None
    frame_indices: Sequence[int] | None = None
    frame_seconds: Sequence[float] | None = None
    token_counts: dict[str, int] = field(default_factory=dict)
    """Tokens per span (`video`, `prompt`, `generated`) before pooling."""
    extract_seconds: float | None = None
    extracted_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    queries: dict[str, torch.Tensor] = field(default_factory=dict)
    """Query name -> its `[L, S, D]` slots, for each query beyond the first (whose slots are
    `tokens`), as the manifest's `query_slots` says."""

    def finite(self) -> bool:
        """No NaN or inf in any of its states (fp16 overflows on some layers' activations)."""
        held = ([] if self.tokens is None else [self.tokens]) + list(self.queries.values())
        return all(bool(torch.isfinite(t).all()) for t in held)


@dataclass(frozen=True)
class FailedItem:
    """An item that could not be extracted; kept so `info` shows it and a re-run retries it."""

    item_id: str
    error: str
    content_sha256: str | None = None
    source: str = ""
    title: str | None = None
    extracted_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
