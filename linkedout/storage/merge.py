"""`linkedout merge`: feature datasets extracted apart (other machines, days, clusters) with the
same manifest become one, each item in one row.

Which row an item keeps is decided before anything is written: features beat a failure; the
same bytes in two inputs (overlapping shards) are one item, not a clash; two different
extractions of one item are a clash, refused unless `prefer` says which wins (`newest`: the
later `extracted_at`, `first`: the earlier input, the existing dataset first when merging into
one). The merged dataset is verified (verify.py) before the command reports success.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

import numpy as np
import pyarrow as pa

from linkedout.errors import LinkedOutError
from linkedout.storage.columns import digest_column
from linkedout.storage.location import exists
from linkedout.storage.pins import split_pin
from linkedout.storage.store import FeatureStore
from linkedout.storage.uri import normalize
from linkedout.storage.verify import check_copy

Prefer = Literal["refuse", "newest", "first"]
PREFER: tuple[str, ...] = ("refuse", "newest", "first")
BATCH_ROWS = 256
"""Rows per read and commit: a few hundred MB at the largest tensors (8 x 16 x 896 fp16)."""


@dataclass(frozen=True)
class Row:
    """What deciding needs of one stored row."""

    source: int
    """Index of the input (0 = the existing dataset when merging into one)."""
    offset: int
    """Row offset in that input's version."""
    ok: bool
    extracted_at: datetime | None
    digest: tuple[str, ...] | None


@dataclass
class MergePlan:
    """Per input, the row offsets it contributes; and what deciding found."""

    taken: list[list[int]]
    """Rows of items the output does not hold yet: appended, no join with stored ids."""
    replacing: list[list[int]]
    """Rows that win over a row of the existing output (merging into one): upserted."""
    clashes: list[str]
    """Items extracted differently in two inputs (when `prefer` is refuse: the error)."""
    resolved: int = 0
    """Items stored in several inputs, decided by a rule (features over failures, same bytes,
    `prefer`)."""


@dataclass(frozen=True)
class MergeResult:
    store: FeatureStore
    added: int
    """Rows written by this merge."""
    resolved: int


def merge(
    sources: Sequence[str],
    out: str,
    prefer: Prefer = "refuse",
    storage_options: dict[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> MergeResult:
    """Merge `sources` into `out`: a new dataset, or an existing one of the same manifest whose
    rows take part as the first input."""
    if prefer not in PREFER:
        raise LinkedOutError(f"--prefer {prefer!r}: use {', '.join(PREFER)}")
    options = dict(storage_options or {})
    if split_pin(str(out))[1] is not None:
        raise LinkedOutError(f"--out {out} pins a version: merge into the dataset's newest, not @")
    out = normalize(out)
    inputs = [FeatureStore.open(uri, options) for uri in sources]
    if not inputs:
        raise LinkedOutError("name at least one dataset to merge")
    into = exists(out, options)
    target = FeatureStore.open(out, options) if into else None
    stores = ([target] if target is not None else []) + inputs
    repeated = [uri for uri, n in Counter(s.uri for s in stores).items() if n > 1]
    if repeated:
        raise LinkedOutError(f"{repeated[0]} is named twice: name each dataset once")
    _refuse_other_manifests(stores)
    plan = plan_merge(stores, prefer, keep_first=into)
    if plan.clashes:
        shown = ", ".join(plan.clashes[:5]) + (
            f" and {len(plan.clashes) - 5} more" if len(plan.clashes) > 5 else ""
        )
        raise LinkedOutError(
            f"{len(plan.clashes)} item(s) hold different features in two inputs ({shown}): "
            "pass --prefer newest or --prefer first to choose, or drop them from one input"
        )
    if target is None:
        manifest = replace(
            inputs[0].manifest,
            provenance={
                **inputs[0].manifest.provenance,
                "merged_from": ", ".join(f"{s.uri}@{s.version}" for s in inputs),
            },
        )
        target = FeatureStore.create(out, manifest, options)
    schema = target.dataset.schema  # as stored: an older output has no digest columns
    total = sum(len(t) for t in plan.taken) + sum(len(r) for r in plan.replacing)
    done = 0

    def batches(store: FeatureStore, rows: list[int]) -> Iterator[pa.RecordBatch]:
        nonlocal done
        for start in range(0, len(rows), BATCH_ROWS):
            part = np.asarray(rows[start : start + BATCH_ROWS], dtype=np.int64)
            table = _conformed(store, part, schema)
            yield from table.to_batches()
            done += table.num_rows
            if on_progress is not None:
                on_progress(done, total)

    for store, rows in zip(stores, plan.taken, strict=True):
        if rows:  # one commit per input, streamed
            target.append_new(pa.RecordBatchReader.from_batches(schema, batches(store, rows)))
    for store, rows in zip(stores, plan.replacing, strict=True):
        for batch in batches(store, rows):
            target.upsert(pa.Table.from_batches([batch], schema))
    if done:
        target.update_index()
    written = FeatureStore.open(out, options)
    check_copy(written, f"the merged dataset {out}")
    return MergeResult(written, done, plan.resolved)


def plan_merge(stores: Sequence[FeatureStore], prefer: Prefer, keep_first: bool) -> MergePlan:
    """Which row of which input each item keeps. With `keep_first` (merging into input 0),
    input 0's rows stay where they are unless another input's row wins."""
    by_item: dict[str, list[Row]] = {}
    for index, store in enumerate(stores):
        for item, row in _rows(store, index):
            held = by_item.setdefault(item, [])
            if held and held[-1].source == index:  # read here, not in a scan of its own
                raise LinkedOutError(
                    f"{store.uri} holds duplicate rows written by an older LinkedOut: run "
                    "`linkedout optimize` on it first"
                )
            held.append(row)
    taken: list[list[int]] = [[] for _ in stores]
    replacing: list[list[int]] = [[] for _ in stores]
    clashes: list[str] = []
    resolved = 0
    for item, rows in by_item.items():
        winner = _decide(item, rows, prefer, clashes)
        if winner is None:
            continue
        resolved += len(rows) > 1
        if keep_first and winner.source == 0:
            continue  # stays where it is
        stored = keep_first and rows[0].source == 0
        (replacing if stored else taken)[winner.source].append(winner.offset)
    return MergePlan(taken, replacing, clashes, resolved)


def _decide(item: str, rows: list[Row], prefer: Prefer, clashes: list[str]) -> Row | None:
    if len(rows) == 1:
        return rows[0]
    good = [r for r in rows if r.ok]
    candidates = good or rows  # features beat failures; all failed: keep one failure
    if good and len({r.digest for r in good}) == 1 and good[0].digest is not None:
        return good[0]  # the same bytes in several inputs: one item
    if len(candidates) == 1:
        return candidates[0]
    if prefer == "refuse" and good:
        clashes.append(item)
        return None
    if prefer == "newest":  # ties (and rows without a time) go to the earlier input
        stamped = [r for r in candidates if r.extracted_at is not None] or candidates
        latest = max(r.extracted_at for r in stamped) if stamped[0].extracted_at else None
        return next(r for r in stamped if r.extracted_at == latest)
    return candidates[0]  # first (and, for failures alone, the first's)


def _rows(store: FeatureStore, index: int):
    """(item id, Row) of every stored row, offsets in this version."""
    names = set(store.dataset.schema.names)
    columns = ["item_id", "error", "extracted_at"]
    has_digest = digest_column("tokens") in names
    if has_digest:
        columns.append(digest_column("tokens"))
    table = store.dataset.to_table(columns=columns)
    ids = table.column("item_id").to_pylist()
    ok = table.column("error").is_null().to_pylist()
    stamps = table.column("extracted_at").to_pylist()
    digests = table.column(digest_column("tokens")).to_pylist() if has_digest else [None] * len(ids)
    for offset, item in enumerate(ids):
        digest = tuple(digests[offset]) if digests[offset] is not None else None
        yield item, Row(index, offset, ok[offset], stamps[offset], digest)


def _conformed(store: FeatureStore, rows: np.ndarray, schema: pa.Schema) -> pa.Table:
    """These rows of `store` in the output's stored `schema` (digest columns an older input
    lacks are null; the manifests are equal, so every other column matches)."""
    names = set(store.dataset.schema.names)
    read = [f.name for f in schema if f.name in names]
    table = store.dataset.take(rows, columns=read)
    columns = [
        table.column(f.name) if f.name in names else pa.nulls(len(table), f.type) for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _refuse_other_manifests(stores: Sequence[FeatureStore]) -> None:
    first = stores[0]
    for other in stores[1:]:
        differences = first.manifest.mismatches(other.manifest)
        mine = [n for n, _ in first.manifest.named_queries()]
        theirs = [n for n, _ in other.manifest.named_queries()]
        if mine != theirs:
            differences.append(f"queries: {mine} in {first.uri}, {theirs} in {other.uri}")
        unfinished = sorted(set(first.missing_queries()) ^ set(other.missing_queries()))
        if unfinished:
            differences.append(f"query {unfinished[0]!r} finished in one of them only")
        if differences:
            raise LinkedOutError(
                f"{other.uri} was not extracted the way {first.uri} was ("
                + "; ".join(differences)
                + "): only datasets of one manifest merge"
            )
