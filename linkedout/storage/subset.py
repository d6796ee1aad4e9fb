"""Subsets of a feature dataset: some depths, some queries, some items, written as a feature
dataset of their own whose manifest names the source and version it was cut from.

A team member who trains on two depths of eight should not download the other six: Lance
stores each depth of each query as its own column, so a subset reads only the columns it keeps
and the rows it selects, and writes them in the same layout (`columns.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from linkedout.errors import LinkedOutError, first_line
from linkedout.storage.columns import (
    arrow_schema,
    digested_column,
    is_tensor_column,
    layer_arrays,
    query_column,
    tensor_bytes,
    tokens_column,
)
from linkedout.storage.manifest import Manifest
from linkedout.storage.store import FeatureStore, id_filter

BATCH_BYTES = 64 * 2**20
"""Tensor bytes per batch read and written: bounds memory whatever the row size."""


@dataclass(frozen=True)
class Subset:
    """What `export` keeps of its source; every part empty keeps it all."""

    layers: tuple[int, ...] = ()
    """Stored depths to keep (empty: every one)."""
    queries: tuple[str, ...] = ()
    """Queries to keep, by name, or `all` (empty: every finished one). The first query's
    column is always kept: it also holds the video slots later queries share."""
    items: tuple[str, ...] | None = None
    """Item ids to keep (None: every item, or those `where` selects)."""
    items_from: str | None = None
    """Where `items` came from, for the manifest and messages."""
    where: str | None = None
    """A Lance SQL filter over the dataset's scalar columns, e.g. `source LIKE '%/news/%'`."""

    def __post_init__(self) -> None:
        if self.items is not None and self.where is not None:
            raise LinkedOutError("give --items or --where, not both")

    @property
    def selects(self) -> bool:
        return bool(self.layers or self.queries or self.items is not None or self.where)


def read_item_ids(path: str | Path) -> tuple[str, ...]:
    """One item id per line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LinkedOutError(f"cannot read --items {path}: {first_line(e)}") from None
    ids = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
    if not ids:
        raise LinkedOutError(f"--items {path} names no item: write one item id per line")
    return ids


def subset_manifest(store: FeatureStore, subset: Subset) -> tuple[Manifest, list[int], list[str]]:
    """The subset's manifest, its depths (stored order) and its queries beyond the first."""
    m = store.manifest
    layers = store.layer_positions(list(subset.layers) or None)
    layers = [x for x in m.layers if x in layers]
    named = [name for name, _ in m.named_queries()]
    unfinished = set(store.missing_queries())
    if subset.queries:
        wanted = set(store.query_names(list(subset.queries)))
        if wanted & unfinished:
            raise LinkedOutError(
                f"query {sorted(wanted & unfinished)[0]!r} of {store.uri} was never finished: "
                "re-run the `linkedout extract` that added it, or leave it out of --queries"
            )
    else:
        wanted = set(named) - unfinished
    kept = [(n, t) for i, (n, t) in enumerate(m.named_queries()) if i == 0 or n in wanted]
    extra = [n for n, _ in kept[1:]]
    where = f"{store.uri}@{store.version}"
    parts = [f"depths {','.join(str(x) for x in layers)}"]
    if m.queries:
        parts.append(f"queries {','.join(n for n, _ in kept)}")
    if subset.items is not None:
        parts.append(f"{len(subset.items):,} items from {subset.items_from or 'a list'}")
    if subset.where:
        parts.append(f"items where {subset.where}")
    manifest = replace(
        m,
        layers=tuple(layers),
        queries=tuple(kept) if m.queries else (),
        query_slots=m.query_slots if extra else None,
        provenance={**m.provenance, "subset_of": where, "subset": "; ".join(parts)},
    )
    return manifest, layers, extra


def write_subset(
    store: FeatureStore,
    dest: str,
    subset: Subset,
    dest_options: dict[str, str],
    on_progress: Callable[[int, int], None] | None = None,
) -> FeatureStore:
    """Write what `subset` keeps of `store` to `dest` (checked empty by the caller) as a new
    feature dataset, with its item_id index; returns it opened."""
    if store.duplicate_rows():
        raise LinkedOutError(
            f"{store.uri} holds {store.duplicate_rows()} duplicate rows written by an older "
            "LinkedOut: run `linkedout optimize` on it before cutting a subset"
        )
    manifest, layers, extra = subset_manifest(store, subset)
    schema = arrow_schema(manifest)
    row_bytes = tensor_bytes(manifest) + len(extra) * tensor_bytes(manifest, manifest.query_slots)
    batch_rows = max(1, BATCH_BYTES // row_bytes)
    batches, total = _selected_batches(store, subset, layers, extra, batch_rows)
    positions = [store.manifest.layers.index(x) for x in layers]

    def rebuilt() -> Iterator[pa.RecordBatch]:
        done = 0
        for batch in batches:
            yield _in_layout(batch, schema, layers, positions)
            done += batch.num_rows
            if on_progress is not None:
                on_progress(done, total)

    reader = pa.RecordBatchReader.from_batches(schema, rebuilt())
    try:
        lance.write_dataset(
            reader, dest, schema=schema, mode="create", storage_options=dest_options or None
        )
    except (OSError, ValueError) as e:
        raise LinkedOutError(f"cannot write the subset to {dest}: {first_line(e)}") from None
    written = FeatureStore.open(dest, dest_options)
    if len(written.dataset.get_fragments()):
        written.update_index()
    return written


def _selected_batches(
    store: FeatureStore, subset: Subset, layers: list[int], extra: list[str], batch_rows: int
) -> tuple[Iterator[pa.RecordBatch], int]:
    """The kept columns of the selected rows, in batches, and how many rows they hold."""
    schema_names = set(store.dataset.schema.names)
    kept = {"tokens", *(query_column(q) for q in extra)}
    scalars = [
        f.name
        for f in arrow_schema(store.manifest)
        if f.name in schema_names
        and not is_tensor_column(f.name)
        and digested_column(f.name) in (None, *kept)
    ]
    columns = [
        *scalars,
        *(tokens_column(x) for x in layers),
        *(tokens_column(x, query_column(q)) for q in extra for x in layers),
    ]
    ds = store.dataset
    if subset.items is not None:
        stored = set(store.ids())
        failed = {f.item_id for f in store.failures()}
        absent = [i for i in subset.items if i not in stored and i not in failed]
        if absent:
            raise LinkedOutError(
                f"--items names {len(absent)} item(s) {store.uri} does not hold (e.g. "
                f"{absent[0]!r}): drop them from {subset.items_from or 'the list'}"
            )
        wanted = list(dict.fromkeys(subset.items))
        rows = np.sort(store.row_offsets([i for i in wanted if i in stored]))  # in storage order
        wanted_failed = [i for i in wanted if i in failed and i not in stored]

        def taken() -> Iterator[pa.RecordBatch]:
            for start in range(0, len(rows), batch_rows):
                table = ds.take(rows[start : start + batch_rows], columns=columns)
                yield from table.to_batches()
            if wanted_failed:  # failures hold no tokens: read them by id
                yield from ds.to_batches(columns=columns, filter=id_filter(wanted_failed))

        return taken(), len(rows) + len(wanted_failed)
    try:
        total = ds.count_rows(filter=subset.where)
    except (OSError, ValueError) as e:
        raise LinkedOutError(
            f"--where {subset.where!r} is not a filter {store.uri} can apply: {first_line(e)}"
        ) from None
    return ds.to_batches(columns=columns, filter=subset.where, batch_size=batch_rows), total


def _in_layout(
    batch: pa.RecordBatch, schema: pa.Schema, layers: Sequence[int], positions: list[int]
) -> pa.RecordBatch:
    """A read's flat `tokens.layer_i` columns (or take's partial structs) rebuilt into the
    layout's struct columns; a struct is null where its rows are (failed items, items a query
    has not reached). Digests keep the kept depths' (`positions` in the source's lists), and
    stay null where the source had none."""
    arrays = []
    for field in schema:
        if is_tensor_column(field.name):
            children = [_one_chunk(c) for c in layer_arrays(batch, layers, field.name)]
            mask = pc.invert(children[0].is_valid()) if children[0].null_count else None
            arrays.append(pa.StructArray.from_arrays(children, fields=list(field.type), mask=mask))
        elif digested_column(field.name) is not None:
            if field.name not in batch.schema.names:
                arrays.append(pa.nulls(batch.num_rows, field.type))
                continue
            lists = batch.column(field.name).to_pylist()
            kept = [None if d is None else [d[p] for p in positions] for d in lists]
            arrays.append(pa.array(kept, field.type))
        else:
            arrays.append(_one_chunk(batch.column(field.name)).cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _one_chunk(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
