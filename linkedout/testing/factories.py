"""Feature rows whose tensors are a pure function of the item id, and the small manifest they
follow: tests and benchmarks write real feature datasets from them."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch

from linkedout.storage import FeatureRow, Manifest
from linkedout.storage.columns import TORCH_DTYPES


def make_manifest(**overrides) -> Manifest:
    base = Manifest(
        backbone="tests/tiny-qwen2-vl",
        backbone_kind="video-llm",
        layers=(0, 2, 4),
        tokens_per_layer=4,
        hidden_size=8,
        dtype="float16",
        backbone_revision="abc123",
        pooling="video=adaptive_avg:2,prompt=mean:1,generated=mean:1",
        prompt="What does this video show? Title: {title}",
        frames_per_video=4,
    )
    return replace(base, **overrides)


def item_tokens(item_id: str, manifest: Manifest, version: int = 0) -> torch.Tensor:
    """Deterministic `[L, T, D]` for an id, with values spanning the dtype's awkward corners."""
    seed = int.from_bytes(hashlib.sha256(f"{item_id}/{version}".encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(manifest.shape, generator=g) * 50
    x.view(-1)[:3] = torch.tensor([-0.0, 1e-7, 6e4])  # negative zero, fp16 subnormal, near fp16 max
    return x.to(TORCH_DTYPES[manifest.dtype])


def content_hash(item_id: str, version: int = 0) -> str:
    return hashlib.sha256(f"content:{item_id}/{version}".encode()).hexdigest()


def make_row(item_id: str, manifest: Manifest, version: int = 0) -> FeatureRow:
    return FeatureRow(
        item_id=item_id,
        tokens=item_tokens(item_id, manifest, version),
        content_sha256=content_hash(item_id, version),
        source=f"/videos/{item_id}.mp4",
        title=f"title of {item_id}",
        frame_indices=[0, 10, 20, 30],
        frame_seconds=[0.0, 0.4, 0.8, 1.2],
        token_counts={"video": 64, "prompt": 12, "generated": 0},
        extract_seconds=0.5,
    )


def make_rows(n: int, manifest: Manifest, prefix: str = "item", start: int = 0) -> list[FeatureRow]:
    return [make_row(f"{prefix}{i:05d}", manifest) for i in range(start, start + n)]
