"""`linkedout verify`: check every row of a feature dataset against the digests written with it.

A dataset extracted once on a GPU cluster is copied, cut and merged many times over months;
a flipped byte in an object store or a half-copied fragment would otherwise reach training as
plausible numbers. Each tensor column has a digest column written beside it (columns.py:
blake2b-128 of every depth's raw bytes); verify recomputes them, fragment by fragment, and
names what does not hold: rows whose bytes changed, rows that lost their tensors or a data
file, item ids stored twice, a schema that disagrees with the manifest. Rows written before
digests existed are read and shape-checked, and counted as not verifiable.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from linkedout.errors import LinkedOutError, first_line
from linkedout.storage.columns import (
    digest_column,
    layer_arrays,
    layer_column,
    layer_digest,
    layer_type,
    query_column,
    tensor_bytes,
    tokens_column,
)
from linkedout.storage.store import FeatureStore

BATCH_BYTES = 64 * 2**20
"""Tensor bytes hashed per batch read."""
WORKERS = os.cpu_count() or 1
"""Threads hashing at once (hashlib releases the GIL on large buffers)."""
SHOWN = 10
"""Problems of each kind kept by name in the report (all are counted)."""


@dataclass
class VerifyReport:
    """What `verify` found; `ok` when nothing is wrong (rows without digests are not wrong)."""

    uri: str
    version: int
    rows: int = 0
    """Rows read (good and failed items)."""
    verified: int = 0
    """Good rows whose every tensor matched its digest."""
    unverifiable: int = 0
    """Good rows written without digests (before 2026-12-07): read and shape-checked only."""
    corrupt: list[str] = field(default_factory=list)
    """`item (column, depth D)` of tensors whose bytes no longer match their digest."""
    corrupt_count: int = 0
    missing: list[str] = field(default_factory=list)
    """Rows that lost what they should hold: a good row without tensors, a fragment whose
    data cannot be read."""
    missing_count: int = 0
    duplicated: list[str] = field(default_factory=list)
    """Item ids stored in more than one row."""
    duplicated_count: int = 0
    schema: list[str] = field(default_factory=list)
    """Where the stored schema disagrees with the manifest."""
    bytes_hashed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        found = self.corrupt_count + self.missing_count + self.duplicated_count
        return not found and not self.schema

    def problems(self) -> list[str]:
        """One line per kind of problem, with up to `SHOWN` examples."""
        out = list(self.schema)
        for count, shown, what in (
            (self.corrupt_count, self.corrupt, "corrupt"),
            (self.missing_count, self.missing, "missing"),
            (self.duplicated_count, self.duplicated, "duplicated"),
        ):
            if count:
                more = f" and {count - len(shown)} more" if count > len(shown) else ""
                out.append(f"{count} {what}: {', '.join(shown)}{more}")
        return out

    def to_json(self) -> dict:
        return {
            "uri": self.uri,
            "version": self.version,
            "ok": self.ok,
            "rows": self.rows,
            "verified": self.verified,
            "unverifiable": self.unverifiable,
            "corrupt": self.corrupt_count,
            "missing": self.missing_count,
            "duplicated": self.duplicated_count,
            "schema": self.schema,
            "problems": self.problems(),
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
        }


def verify(
    store: FeatureStore, on_progress: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Check every row of `store` (at its version) against its digests and its manifest."""
    started = time.perf_counter()
    report = VerifyReport(store.uri, store.version)
    columns = _tensor_columns(store, report)
    ds = store.dataset
    ids: Counter[str] = Counter()
    total = ds.count_rows()
    row_bytes = sum(tensor_bytes(store.manifest, slots) for _, slots in columns)
    batch_rows = max(1, BATCH_BYTES // max(1, row_bytes))
    names = set(ds.schema.names)
    read = ["item_id", "error"]
    for column, _ in columns:
        read += [tokens_column(x, column) for x in store.manifest.layers]
        if digest_column(column) in names:
            read.append(digest_column(column))
    with ThreadPoolExecutor(WORKERS, "linkedout-verify") as pool:
        for fragment in ds.get_fragments():
            seen = report.rows
            try:  # streamed: a fragment may hold more rows than memory
                for batch in fragment.to_batches(columns=read, batch_size=batch_rows):
                    _check_batch(pool, store, batch, columns, names, report, ids)
                    if on_progress is not None:
                        on_progress(report.rows, total)
            except (OSError, ValueError) as e:
                lost = fragment.count_rows() - (report.rows - seen)
                report.rows += lost
                where = f"{lost} rows of fragment {fragment.fragment_id} ({first_line(e, 120)})"
                _note(report, "missing", where, lost)
    for item, count in ids.items():
        if count > 1:
            _note(report, "duplicated", f"{item} ({count} rows)")
    report.seconds = time.perf_counter() - started
    return report


def check_copy(copy: FeatureStore, what: str) -> VerifyReport:
    """Verify what an export or merge wrote (every row against its digests): a copy that
    does not hold is an error, never a dataset someone trains on."""
    report = verify(copy)
    if report.corrupt_count or report.missing_count or report.schema:
        raise LinkedOutError(
            f"{what} does not verify ({'; '.join(report.problems())}): the source may be "
            "damaged; run `linkedout verify` on it"
        )
    return report


def _tensor_columns(store: FeatureStore, report: VerifyReport) -> list[tuple[str, int | None]]:
    """(column, slots) of each tensor column the manifest names and the schema holds as the
    manifest says; every disagreement is noted in `report.schema`."""
    m = store.manifest
    schema = store.dataset.schema
    wanted = [("tokens", None)]
    unfinished = set(store.missing_queries())
    wanted += [
        (query_column(name), m.query_slots)
        for name, _ in m.named_queries()[1:]
        if name not in unfinished
    ]
    out = []
    for column, slots in wanted:
        if column not in schema.names:
            report.schema.append(f"column {column} is absent")
            continue
        struct = schema.field(column).type
        fields = {struct.field(i).name: struct.field(i).type for i in range(struct.num_fields)}
        expected = {layer_column(x): layer_type(m, slots) for x in m.layers}
        bad = [name for name, kind in expected.items() if fields.get(name) != kind]
        if bad:
            shown = fields.get(bad[0])
            report.schema.append(
                f"{column}.{bad[0]} is {shown if shown is not None else 'absent'}, the manifest "
                f"says {expected[bad[0]]}"
            )
            continue
        out.append((column, slots))
    return out


def _check_batch(
    pool: ThreadPoolExecutor,
    store: FeatureStore,
    batch: pa.RecordBatch,
    columns: list[tuple[str, int | None]],
    names: set[str],
    report: VerifyReport,
    ids: Counter,
) -> None:
    layers = list(store.manifest.layers)
    items = batch.column("item_id").to_pylist()
    ok = batch.column("error").is_null().to_pylist()
    ids.update(items)
    report.rows += len(items)
    good_rows = [i for i, fine in enumerate(ok) if fine]
    unverified = set()
    bad_rows = set()
    for column, _ in columns:
        arrays = layer_arrays(batch, layers, column)
        valid = arrays[0].is_valid().to_pylist()
        values = [_row_bytes_view(a) for a in arrays]
        digests = (
            batch.column(digest_column(column)).to_pylist()
            if digest_column(column) in names
            else [None] * len(items)
        )
        checks = []
        for i in good_rows:
            if not valid[i]:
                if column == "tokens":  # a query column may not have reached an item yet
                    _note(report, "missing", f"{items[i]} (no tensors)")
                    bad_rows.add(i)
                continue
            if digests[i] is None:
                unverified.add(i)
                continue
            checks += [(i, j) for j in range(len(layers))]
        for (i, j), got in zip(checks, _hashed(pool, values, checks), strict=True):
            report.bytes_hashed += values[j][i].nbytes
            stored = digests[i]
            if j >= len(stored) or got != stored[j]:
                _note(report, "corrupt", f"{items[i]} ({column}, depth {layers[j]})")
                bad_rows.add(i)
    report.unverifiable += len(unverified - bad_rows)
    report.verified += len([i for i in good_rows if i not in bad_rows and i not in unverified])


def _hashed(
    pool: ThreadPoolExecutor, values: list[np.ndarray], checks: list[tuple[int, int]]
) -> list[str]:
    """`layer_digest` of each (row, layer) of `checks`, on every core: hashlib lets go of the
    GIL while it hashes a buffer, so threads hash in parallel (in chunks: a future per layer
    would cost as much as hashing it)."""
    size = max(1, len(checks) // (4 * WORKERS))
    chunks = [checks[k : k + size] for k in range(0, len(checks), size)]

    def run(chunk: list[tuple[int, int]]) -> list[str]:
        return [layer_digest(values[j][i]) for i, j in chunk]

    return [d for part in pool.map(run, chunks) for d in part]


def _row_bytes_view(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`[rows, T * D]` of one layer's raw values, as stored (no copy where Arrow allows)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    storage = array.storage if isinstance(array, pa.ExtensionArray) else array
    width = storage.type.list_size
    values = storage.values.to_numpy(zero_copy_only=False)
    offset = storage.offset * width
    return values[offset : offset + len(storage) * width].reshape(len(storage), width)


def _note(report: VerifyReport, kind: str, text: str, count: int = 1) -> None:
    shown = getattr(report, kind)
    if len(shown) < SHOWN:
        shown.append(text)
    setattr(report, f"{kind}_count", getattr(report, f"{kind}_count") + count)
