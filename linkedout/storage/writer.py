"""Batched, idempotent, crash-safe writes into a `FeatureStore`: the policy over its commits.

Each flush is one atomic commit of the store's: `store.append` of the items the dataset does not
hold yet or holds as failures, and (only when some rows replace good stored ones) a second,
`store.upsert`. A writer killed at any moment therefore leaves every earlier batch whole and no
half-written one, and re-running the same work skips what was committed (same id, content hash
and title) and writes the rest.

The writer reads what is stored once, when it starts, and keeps that map up to date: deciding
what to skip then costs O(batch). Both commits are merge_inserts on item_id, the dataset's
declared primary key, so writers running at once (the same command started twice, two hosts on
one bucket) still leave one row per item: Lance finds the clash at commit and re-plans the later
commit against the earlier. Both may extract the same item, though (the work, not the row, is
duplicated); `--shard` gives each writer its own ids. The stats count what this writer asked
for, which includes rows a concurrent writer's commit made redundant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from linkedout.errors import LinkedOutError, SettingError
from linkedout.storage.columns import TORCH_DTYPES, rows_to_table
from linkedout.storage.defaults import COMMIT_EVERY
from linkedout.storage.rows import FailedItem, FeatureRow
from linkedout.storage.status import StoredStatus
from linkedout.storage.store import FeatureStore

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
    """Buffer rows and failures; commit every `commit_every` of them (never one commit per row).

    Use as a context manager: leaving the block commits what is buffered, also when the block
    raised, so work done before an error is kept.
    """

    def __init__(
        self, store: FeatureStore, commit_every: int = COMMIT_EVERY, overwrite: bool = False
    ):
        if commit_every < 1:
            raise SettingError("commit_every", commit_every, "must be >= 1")
        self.store = store
        self.commit_every = commit_every
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
        if len(self._pending) >= self.commit_every:
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
        # A failure (or a stored failure) never goes through the upsert: `append` replaces
        # only stored failures, re-checked at commit, so no writer trades a good row for one.
        upserts = [r for r in keep if _replaces_good(r, stored)]
        new = [r for r in keep if not _replaces_good(r, stored)]
        if new:
            self.store.append(rows_to_table(new, self.store.manifest))
            self.stats.commits += 1
        if upserts:
            self.store.upsert(rows_to_table(upserts, self.store.manifest))
            self.stats.commits += 1
        for r in keep:
            error = r.error if isinstance(r, FailedItem) else None
            stored[r.item_id] = StoredStatus(r.content_sha256, error, r.title)

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
        if not row.finite():
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
        # The index only speeds lookups up; failing to update it must not fail a run whose
        # data is already committed. A writer finishing at the same time often wins the race
        # with the same index, so try once more against its commit before warning.
        for attempt in (1, 2):
            try:
                self.store.update_index()
                return
            except (OSError, RuntimeError, ValueError) as e:
                if attempt == 2:
                    log.warning("could not update the item_id index of %s: %s", self.store.uri, e)
                self.store.refresh()


def _replaces_good(row: FeatureRow | FailedItem, stored: dict[str, StoredStatus]) -> bool:
    before = stored.get(row.item_id)
    return isinstance(row, FeatureRow) and before is not None and before.ok
