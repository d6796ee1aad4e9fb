"""Batched, idempotent, crash-safe writes into a `FeatureStore`.

Each flush is one atomic Lance commit: an append of the items the dataset does not hold yet, and
(only when some rows replace stored ones) a `merge_insert` keyed on `item_id`. A writer killed at
any moment therefore leaves every earlier batch whole and no half-written one, and re-running the
same work skips what was committed (same id, content hash and title) and writes the rest.

The writer reads what is stored once, when it starts, and keeps that map up to date: appends
then cost O(batch) instead of a join against the whole dataset. Concurrent writers must write
disjoint ids (as `--shard` does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lance
import pyarrow as pa
import torch

from linkedout.errors import LinkedOutError
from linkedout.storage.columns import TOKEN_SPANS, TORCH_DTYPES, arrow_schema, tokens_to_arrow
from linkedout.storage.rows import FailedItem, FeatureRow
from linkedout.storage.store import FeatureStore, StoredStatus

log = logging.getLogger(__name__)


@dataclass
class WriteStats:
    written: int = 0
    """New items stored."""
    replaced: int = 0
    """Items stored again: changed content, an earlier failure, or `overwrite`."""
    skipped: int = 0
    """Items already stored with the same content hash."""
    failed: int = 0
    """Failures recorded."""
    kept: int = 0
    """Failures not recorded because a good row for the item is already stored."""
    commits: int = 0


class FeatureWriter:
    """Buffer rows and failures; commit every `batch_size` of them (never one commit per row).

    Use as a context manager: leaving the block commits what is buffered, also when the block
    raised, so work done before an error is kept.
    """

    def __init__(self, store: FeatureStore, batch_size: int = 64, overwrite: bool = False):
        if batch_size < 1:
            raise LinkedOutError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.batch_size = batch_size
        self.overwrite = overwrite
        self.stats = WriteStats()
        self._pending: dict[str, FeatureRow | FailedItem] = {}
        self._stored: dict[str, StoredStatus] | None = None  # loaded at the first flush
        self._shape = store.manifest.shape
        self._dtype = TORCH_DTYPES[store.manifest.dtype]

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def add(self, row: FeatureRow | FailedItem) -> None:
        if isinstance(row, FeatureRow):
            row = self._check(row)
        self._pending[row.item_id] = row  # a later row for the same id wins
        if len(self._pending) >= self.batch_size:
            self.flush()

    def extend(self, rows) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = list(self._pending.values()), {}
        if self._stored is None:
            self._stored = self.store.status()
        stored = self._stored
        keep: list[FeatureRow | FailedItem] = []
        for row in batch:
            before = stored.get(row.item_id)
            if isinstance(row, FailedItem):
                if before is not None and before.ok:
                    self.stats.kept += 1  # never trade a good row for a failure
                    continue
                self.stats.failed += 1
            elif (
                not self.overwrite
                and before is not None
                and before.is_current(row.content_sha256, row.title)
            ):
                self.stats.skipped += 1
                continue
            elif before is not None:
                self.stats.replaced += 1
            else:
                self.stats.written += 1
            keep.append(row)
        if not keep:
            return
        new = [r for r in keep if r.item_id not in stored]
        again = [r for r in keep if r.item_id in stored]
        if new:
            lance.write_dataset(
                _to_table(new, self.store),
                self.store.dataset,
                mode="append",
                storage_options=self.store.storage_options or None,
            )
            self.stats.commits += 1
        if again:
            (
                self.store.dataset.merge_insert("item_id")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(_to_table(again, self.store))
            )
            self.stats.commits += 1
        for r in keep:
            error = r.error if isinstance(r, FailedItem) else None
            stored[r.item_id] = StoredStatus(r.content_sha256, error, r.title)
        self.store._refresh()

    def close(self) -> None:
        self.flush()
        if self.stats.commits:
            self._maintain()

    def _check(self, row: FeatureRow) -> FeatureRow | FailedItem:
        tokens = row.tokens
        if not isinstance(tokens, torch.Tensor):
            raise LinkedOutError(
                f"item {row.item_id!r}: tokens must be a torch.Tensor, got {type(tokens).__name__}"
            )
        if tuple(tokens.shape) != self._shape:
            raise LinkedOutError(
                f"item {row.item_id!r}: tokens have shape {list(tokens.shape)} but this store "
                f"holds [layers, tokens, dim] = {list(self._shape)}"
            )
        if tokens.dtype != self._dtype:
            raise LinkedOutError(
                f"item {row.item_id!r}: tokens are {str(tokens.dtype).removeprefix('torch.')} but "
                f"this store holds {self.store.manifest.dtype}: cast them first"
            )
        if not bool(torch.isfinite(tokens).all()):
            # fp16 overflows on the massive activations some LLM layers carry; keep the run going
            # and say how to avoid it rather than storing inf.
            return FailedItem(
                row.item_id,
                f"hidden states hold NaN or inf in {self.store.manifest.dtype}: re-extract with "
                "--dtype bfloat16 or float32",
                row.content_sha256,
                row.source,
                row.title,
            )
        return row

    def _maintain(self) -> None:
        # The index only speeds lookups up; failing to update it (say, a concurrent writer's
        # commit won the race) must not fail a run whose data is already committed.
        try:
            self.store.update_index()
        except (OSError, RuntimeError, ValueError) as e:
            log.warning("could not update the item_id index of %s: %s", self.store.uri, e)


def _to_table(rows: list[FeatureRow | FailedItem], store: FeatureStore) -> pa.Table:
    schema = arrow_schema(store.manifest)
    good = [r if isinstance(r, FeatureRow) else None for r in rows]
    columns = {
        "item_id": [r.item_id for r in rows],
        "tokens": tokens_to_arrow([g.tokens if g else None for g in good], store.manifest),
        "error": [None if isinstance(r, FeatureRow) else r.error for r in rows],
        "content_sha256": [r.content_sha256 for r in rows],
        "source": [r.source for r in rows],
        "title": [r.title for r in rows],
        "frame_indices": [_opt_list(g.frame_indices, int) if g else None for g in good],
        "frame_seconds": [_opt_list(g.frame_seconds, float) if g else None for g in good],
        "token_counts": [
            {s: g.token_counts.get(s) for s in TOKEN_SPANS} if g and g.token_counts else None
            for g in good
        ],
        "extracted_at": [r.extracted_at for r in rows],
        "extract_seconds": [g.extract_seconds if g else None for g in good],
    }
    arrays = [
        columns[f.name]
        if isinstance(columns[f.name], pa.Array)
        else pa.array(columns[f.name], f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _opt_list(values, cast) -> list | None:
    return None if values is None else [cast(v) for v in values]
