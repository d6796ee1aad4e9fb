"""`FeatureStore`: the Lance dataset both stages share (layout: `linkedout.storage.columns`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from linkedout.errors import LinkedOutError, MissingItemsError, first_line
from linkedout.storage.columns import (
    MANIFEST_KEY,
    PRIMARY_KEY,
    TORCH_DTYPES,
    arrow_schema,
    arrow_to_tokens,
    declares_primary_key,
    layer_arrays,
    query_column,
    query_fields,
    tokens_column,
)
from linkedout.storage.duplicates import (
    CHOICE_COLUMNS,
    has_duplicates,
    kept_positions,
)
from linkedout.storage.location import appears, exists, not_a_dataset, refuse_foreign_directory
from linkedout.storage.manifest import Manifest
from linkedout.storage.status import Failure, StoredStatus, StoreInfo
from linkedout.storage.uri import normalize

log = logging.getLogger(__name__)
T = TypeVar("T")

_OK = "error IS NULL"
ADD_QUERY_READS = ("item_id", "error", "content_sha256")
"""What `add_query_columns` hands its fill function of each stored row."""
_STORED_FAILED = "target.error IS NOT NULL"
_PRUNED_ATTEMPTS = 3


class FeatureStore:
    """A LinkedOut feature dataset at one version: read with `read_tokens`/`load`, commit rows
    with `append`/`upsert` (`FeatureWriter` batches them).

    A dataset written by an older LinkedOut may hold several rows for one item; every read then
    uses the same one per item (`kept_positions`) and `optimize` deletes the others.
    """

    def __init__(
        self, uri: str, dataset: lance.LanceDataset, manifest: Manifest, storage_options: dict
    ):
        self._uri = uri
        self._ds = dataset
        self.manifest = manifest
        self.storage_options = storage_options
        self._offsets: dict[str, int] | None = None
        self._committed: set[int] = set()  # versions this handle committed
        self._distinct = 0  # item ids stored, good or failed; set with _offsets
        self._duplicates = 0  # rows beyond one per item id; set with _offsets

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        uri: str | Path,
        storage_options: dict[str, str] | None = None,
        version: int | None = None,
    ) -> FeatureStore:
        """Open an existing dataset (local path or object-store URI)."""
        uri = normalize(uri)
        options = dict(storage_options or {})
        try:
            ds = lance.dataset(uri, version=version, storage_options=options or None)
        except (ValueError, OSError) as e:
            raise LinkedOutError(not_a_dataset(uri, e, options)) from None
        raw = (ds.schema.metadata or {}).get(MANIFEST_KEY)
        if raw is None:
            raise LinkedOutError(
                f"{uri} is a Lance dataset but not a LinkedOut feature store (its schema has no "
                "linkedout.manifest): point at a dataset written by `linkedout extract`"
            )
        try:
            manifest = Manifest.from_json(raw)
        except LinkedOutError as e:
            raise LinkedOutError(f"{uri}: {e}") from None
        return cls(uri, ds, manifest, options)

    @classmethod
    def create(
        cls, uri: str | Path, manifest: Manifest, storage_options: dict[str, str] | None = None
    ) -> FeatureStore:
        """Create an empty dataset whose schema carries `manifest`; refuses an existing one."""
        uri = normalize(uri)
        options = dict(storage_options or {})
        refuse_foreign_directory(uri)
        schema = arrow_schema(manifest)
        try:
            # A commit that may not be retried: of two writers creating the same path at once,
            # exactly one wins and the other gets an error (then joins it in open_or_create).
            # write_dataset(mode="create") would instead retry the loser as an Overwrite on top
            # of the winner's version, wiping whatever it committed meanwhile.
            ds = lance.LanceDataset.commit(
                uri,
                lance.LanceOperation.Overwrite(schema, []),
                storage_options=options or None,
                max_retries=0,
            )
        except OSError as e:
            raise LinkedOutError(
                f"cannot create a feature dataset at {uri}: {first_line(e)}"
            ) from None
        return cls(uri, ds, manifest, options)

    @classmethod
    def open_or_create(
        cls, uri: str | Path, manifest: Manifest, storage_options: dict[str, str] | None = None
    ) -> FeatureStore:
        """The extractor's entry point: resume into a compatible dataset or start a new one."""
        if not exists(uri, storage_options):
            try:
                return cls.create(uri, manifest, storage_options)
            except LinkedOutError:
                # Another writer may be creating it right now (its folder exists before its
                # first version does); if one appears, join it below.
                if not appears(uri, storage_options):
                    raise
        store = cls.open(uri, storage_options)
        diffs = store.manifest.mismatches(manifest)
        if diffs:
            raise LinkedOutError(
                f"{uri} holds features made another way ({'; '.join(diffs)}): "
                "write these to a new output path, or repeat the original settings"
            )
        store.declare_primary_key()
        merged = store.manifest.with_queries(manifest)
        if merged != store.manifest:
            store.write_manifest(merged)  # the new queries' columns follow: `missing_queries`
        return store

    # ---------------------------------------------------------------- queries
    def write_manifest(self, manifest: Manifest) -> None:
        """Commit a manifest that adds queries (one metadata commit, no data rewritten)."""
        self._ds.update_schema_metadata({MANIFEST_KEY.decode(): manifest.to_json()})
        self._committed.add(self._ds.version)
        self.refresh()
        self.manifest = manifest

    def missing_queries(self) -> list[str]:
        """Queries the manifest names whose column the dataset does not hold yet (a run that
        added them was stopped before their column was committed)."""
        names = set(self._ds.schema.names)
        return [
            name for name, _ in self.manifest.named_queries()[1:] if query_column(name) not in names
        ]

    def add_query_columns(
        self,
        names: Sequence[str],
        fill: Callable[[pa.RecordBatch], pa.RecordBatch],
        batch_size: int,
        checkpoint: str | None = None,
    ) -> None:
        """Add the columns of queries `names` in one commit, without rewriting any stored
        column: `fill` gets batches of `ADD_QUERY_READS` of the stored rows and returns the new
        columns for them (null where an item gets none). With `checkpoint` (a local file),
        batches already filled by an interrupted call are not filled again."""
        from lance.udf import BatchUDF

        schema = pa.schema(
            [f for f in query_fields(self.manifest) if f.name in {query_column(n) for n in names}]
        )
        if not self._ds.get_fragments():  # nothing stored: the columns alone
            self._ds.add_columns(schema)
        else:
            udf = BatchUDF(fill, output_schema=schema, checkpoint_file=checkpoint)
            self._ds.add_columns(udf, read_columns=list(ADD_QUERY_READS), batch_size=batch_size)
        self._committed.add(self._ds.version)
        self.refresh()

    def query_nulls(self, name: str) -> int:
        """Extracted items that hold no slots for query `name`."""
        column = query_column(name)
        return self._ds.count_rows(filter=f"{_OK} AND {column} IS NULL")

    def __reduce__(self):
        # Reopen by URI in another process: Lance handles must not cross a fork.
        return (FeatureStore.open, (self.uri, self.storage_options, self.version))

    # ---------------------------------------------------------------- facts
    @property
    def uri(self) -> str:
        return self._uri

    @property
    def version(self) -> int:
        return self._ds.version

    @property
    def dataset(self) -> lance.LanceDataset:
        """The underlying Lance dataset, for queries this class does not wrap."""
        return self._ds

    def __len__(self) -> int:
        return len(self._offset_map())

    def ids(self) -> list[str]:
        """Ids of the successfully extracted items, in storage order."""
        return list(self._offset_map())

    def status(self, item_ids: Iterable[str] | None = None) -> dict[str, StoredStatus]:
        """What is stored for these ids (absent ids are left out); every row when None."""
        columns = ["item_id", "content_sha256", "error", "title"]
        read = [*columns, "extracted_at"]
        wanted = None if item_ids is None else list(dict.fromkeys(item_ids))
        if wanted == []:
            return {}
        if wanted is not None and len(wanted) <= 1000:
            query = {"columns": read, "filter": id_filter(wanted)}
        else:  # one scan of five small columns beats many IN-list queries
            query = {"columns": read}
        table = self._despite_pruning(lambda: self._ds.to_table(**query))
        if has_duplicates(table.column("item_id")):
            table = table.take(kept_positions(table))  # the row reads use, as they do
        keep = None if wanted is None else set(wanted)
        return {
            item_id: StoredStatus(sha, error, title)
            for item_id, sha, error, title in zip(*(table.column(c).to_pylist() for c in columns))
            if keep is None or item_id in keep
        }

    def pending(
        self,
        items: Iterable[tuple[str, str, str | None]],
        overwrite: bool = False,
        retry_failed: bool = True,
    ) -> list[str]:
        """Ids among `(item_id, content_sha256, title)` that still need extracting.

        An item stored with the same content hash and title is done (the title is part of the
        prompt, so a new title means new states); a changed or new one is pending, and with
        `overwrite` every one is. One stored as a failure of the same content and title is
        pending only with `retry_failed` (see `known_failures`)."""
        return self.triage(items, overwrite, retry_failed)[0]

    def triage(
        self,
        items: Iterable[tuple[str, str, str | None]],
        overwrite: bool = False,
        retry_failed: bool = True,
    ) -> tuple[list[str], list[str]]:
        """`pending`, and the known failures: ids stored as failures of the same content hash
        and title (extracting the same bytes again would most likely fail the same way)."""
        items = list(items)
        if overwrite:
            return [item_id for item_id, _, _ in items], []
        stored = self.status(item_id for item_id, _, _ in items)
        pending, known = [], []
        for item_id, sha, title in items:
            before = stored.get(item_id)
            if before is not None and before.is_current(sha, title):
                continue
            if before is not None and before.is_known_failure(sha, title):
                known.append(item_id)
                if not retry_failed:
                    continue
            pending.append(item_id)
        return pending, known

    def failures(self) -> list[Failure]:
        """Items whose extraction failed and that hold no good row, one entry per item."""
        table = self._ds.to_table(
            columns=["item_id", "source", "error"], filter="error IS NOT NULL"
        )
        found = {r["item_id"]: r for r in table.to_pylist()}
        if self.duplicate_rows():
            good = self._offset_map()
            found = {i: r for i, r in found.items() if i not in good}
        return [Failure(i, r["source"] or "", r["error"]) for i, r in found.items()]

    def duplicate_rows(self) -> int:
        """Rows beyond one per item id: only older LinkedOut versions wrote them (concurrent
        runs without --shard); `optimize` removes them."""
        self._offset_map()
        return self._duplicates

    def info(self) -> StoreInfo:
        versions = self._ds.versions()
        stamps = [v["timestamp"] for v in versions]
        files = self._ds.all_files().read_all()
        good = len(self)  # also counts the distinct ids and the duplicates
        unfinished = self.missing_queries()
        return StoreInfo(
            uri=self.uri,
            manifest=self.manifest,
            rows=good,
            failures=self._distinct - good,
            size_bytes=int(pc.sum(files.column("size_bytes")).as_py() or 0),
            version=self.version,
            versions=len(versions),
            created=min(stamps) if stamps else None,
            updated=max(stamps) if stamps else None,
            fragments=len(self._ds.get_fragments()),
            indices=[
                f"{i.name} ({i.index_type} on {', '.join(i.field_names)}, "
                f"{i.num_rows_indexed} rows)"
                for i in self._ds.describe_indices()
            ],
            schema=self._ds.schema,
            duplicates=self.duplicate_rows(),
            query_items={
                name: 0 if name in unfinished else good - self.query_nulls(name)
                for name, _ in self.manifest.named_queries()[1:]
            },
        )

    # ---------------------------------------------------------------- reading
    def layer_positions(self, layers: Sequence[int] | None) -> list[int]:
        """Validate requested layer indices (model depths, as in the manifest)."""
        if layers is None:
            return list(self.manifest.layers)
        unknown = [x for x in layers if x not in self.manifest.layers]
        if unknown:
            raise LinkedOutError(
                f"layers {unknown} are not stored in {self.uri}; it holds layers "
                f"{list(self.manifest.layers)}"
            )
        return list(layers)

    def read_tokens(
        self,
        item_ids: Sequence[str],
        layers: Sequence[int] | None = None,
        query: str | None = None,
    ) -> torch.Tensor:
        """`[N, L, T, D]` for these ids in this order, reading only the requested layers, as
        query `query` made them (default: the first stored query, the `tokens` column)."""
        if query is not None:
            return self._read_asked(item_ids, self.layer_positions(layers), [query])
        layers = self.layer_positions(layers)
        rows = self._rows(item_ids)
        if not len(rows):
            return self._empty(len(layers))
        table = self._ds.take(rows, columns=[tokens_column(x) for x in layers])
        return arrow_to_tokens(layer_arrays(table, layers), self.manifest)

    def read_queries(
        self,
        item_ids: Sequence[str],
        layers: Sequence[int],
        queries: Sequence[str],
        slots: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """`[N, len(queries) * L, T, D]`: each query's layers in turn (query-major), the
        experts of a model over (query, depth); no queries is the first stored one. `slots`
        (start, stop) keeps those of the T slots alone."""
        if not queries:
            tokens = self.read_tokens(item_ids, layers)
        else:
            tokens = self._read_asked(item_ids, self.layer_positions(layers), queries)
        return tokens if slots is None else tokens[:, :, slots[0] : slots[1]].contiguous()

    def _read_asked(
        self, item_ids: Sequence[str], layers: list[int], queries: Sequence[str]
    ) -> torch.Tensor:
        """`read_queries` of named queries in one take: each query's own column, and `tokens`
        once (the first query's slots, and the video slots queries after the video share)."""
        columns = [self._query_column(q) for q in queries]  # None: the first query, `tokens`
        own = [c for c in columns if c is not None]
        shared = self.manifest.query_position == "after"
        rows = self._rows(item_ids)
        if not len(rows):
            return self._empty(len(queries) * len(layers))
        with_tokens = None in columns or (shared and bool(own))
        read = [tokens_column(x, c) for c in own for x in layers]
        if with_tokens:
            read += [tokens_column(x) for x in layers]
        table = self._ds.take(rows, columns=read)
        for query, column in zip(queries, columns, strict=True):
            absent = [] if column is None else _absent(table, column, item_ids)
            if absent:
                raise MissingItemsError(
                    f"{len(absent)} item(s) of {self.uri} hold no slots for query {query!r} "
                    f"(e.g. {absent[0]!r}): their video was not found when the query was added; "
                    "re-run `linkedout extract` with their videos",
                    absent,
                )
        first = arrow_to_tokens(layer_arrays(table, layers), self.manifest) if with_tokens else None
        slots = self.manifest.query_slots
        parts = []
        for column in columns:
            if column is None:
                parts.append(first)
                continue
            mine = arrow_to_tokens(layer_arrays(table, layers, column), self.manifest, slots=slots)
            video = self.manifest.tokens_per_layer - slots
            parts.append(torch.cat([first[:, :, :video], mine], dim=2) if shared else mine)
        return torch.cat(parts, dim=1)

    def _rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row offsets of these stored ids, in order; ids not stored are one error."""
        offsets = self._offset_map()
        missing = [i for i in item_ids if i not in offsets]
        if missing:
            raise MissingItemsError(self._missing_message(missing), missing)
        return np.fromiter((offsets[i] for i in item_ids), dtype=np.int64, count=len(item_ids))

    def _empty(self, experts: int) -> torch.Tensor:
        return torch.empty(
            (0, experts, *self.manifest.shape[1:]), dtype=TORCH_DTYPES[self.manifest.dtype]
        )

    def query_names(self, wanted: Sequence[str]) -> list[str]:
        """`wanted` checked against the stored queries (`all`: every one); a one-line error
        names those stored."""
        stored = [name for name, _ in self.manifest.named_queries()]
        if list(wanted) == ["all"]:
            return stored
        unknown = [q for q in wanted if q not in stored]
        if unknown:
            raise self._no_query(unknown[0])
        if len(set(wanted)) != len(wanted):
            raise LinkedOutError(f"queries {', '.join(wanted)} name one twice")
        return list(wanted)

    def _no_query(self, query: str) -> LinkedOutError:
        stored = [name for name, _ in self.manifest.named_queries()]
        return LinkedOutError(
            f"{self.uri} holds no query {query!r}; its queries: "
            f"{', '.join(stored) or '- (text features)'}"
        )

    def _query_column(self, query: str | None) -> str | None:
        """The column holding query `query`'s own slots; None for the first (`tokens`)."""
        stored = [name for name, _ in self.manifest.named_queries()]
        if query is None or (stored and query == stored[0]):
            return None
        if query not in stored:
            raise self._no_query(query)
        if query in self.missing_queries():
            raise LinkedOutError(
                f"query {query!r} of {self.uri} was never finished: re-run the `linkedout "
                "extract` that added it"
            )
        return query_column(query)

    def iter_batches(
        self, batch_size: int = 1024, layers: Sequence[int] | None = None
    ) -> Iterator[tuple[list[str], torch.Tensor]]:
        """Stream `(ids, [B, L, T, D])` over every stored item without holding them all."""
        for ids, columns in self._scan(batch_size, self.layer_positions(layers)):
            yield ids, arrow_to_tokens(columns, self.manifest)

    def load(
        self,
        layers: Sequence[int] | None = None,
        queries: Sequence[str] = (),
        slots: tuple[int, int] | None = None,
    ) -> tuple[list[str], torch.Tensor]:
        """Every stored item as `(ids, [N, L, T, D])` in one tensor (`[N, Q * L, T, D]` for
        several queries and a range of slots, as `read_queries`)."""
        layers = self.layer_positions(layers)
        if len(queries) > 1 or (queries and self._query_column(queries[0]) is not None):
            ids = self.ids()
            chunks = [
                self.read_queries(ids[start : start + 8192], layers, queries, slots)
                for start in range(0, len(ids), 8192)
            ]
            empty = self.read_queries([], layers, queries, slots)
            return ids, torch.cat(chunks) if chunks else empty
        ids, out = self._load_tokens(layers)
        return ids, out if slots is None else out[:, :, slots[0] : slots[1]].contiguous()

    def _load_tokens(self, layers: list[int]) -> tuple[list[str], torch.Tensor]:
        out = torch.empty(
            (len(self), len(layers), *self.manifest.shape[1:]),
            dtype=TORCH_DTYPES[self.manifest.dtype],
        )
        ids: list[str] = []
        for batch_ids, columns in self._scan(8192, layers):
            arrow_to_tokens(columns, self.manifest, out=out[len(ids) : len(ids) + len(batch_ids)])
            ids.extend(batch_ids)
        return ids, out

    def _scan(self, batch_size: int, layers: list[int]):
        if self.duplicate_rows():
            yield from self._take_kept(batch_size, layers)
            return
        columns = ["item_id", *(tokens_column(x) for x in layers)]
        for batch in self._ds.to_batches(columns=columns, filter=_OK, batch_size=batch_size):
            if batch.num_rows:
                yield batch.column(0).to_pylist(), layer_arrays(batch, layers)

    def _take_kept(self, batch_size: int, layers: list[int]):
        # A scan would yield every copy of a duplicated item; take just the row kept for each.
        offsets = self._offset_map()
        ids = list(offsets)
        rows = np.fromiter(offsets.values(), dtype=np.int64, count=len(ids))
        columns = [tokens_column(x) for x in layers]
        for start in range(0, len(ids), batch_size):
            table = self._ds.take(rows[start : start + batch_size], columns=columns)
            yield ids[start : start + batch_size], layer_arrays(table, layers)

    # ---------------------------------------------------------------- writing
    def append(self, table: pa.Table) -> None:
        """Add rows (`columns.rows_to_table`) for ids not stored yet, as one atomic commit; a
        stored row of one of these ids is replaced only if it is a failure.

        Like every write, a merge_insert on the declared primary key: if another writer commits
        one of these ids first, Lance finds the conflict at commit and re-plans against that
        commit, so the item keeps one row (the good one, when one of the two failed).
        """
        self._merge(table, replace_when=_STORED_FAILED)

    def upsert(self, table: pa.Table) -> None:
        """Replace the stored rows of these ids (adding any not stored), as one atomic commit."""
        self._merge(table, replace_when=None)

    def declare_primary_key(self) -> None:
        """Declare item_id the primary key of a dataset written before LinkedOut did: one commit
        of schema metadata that rewrites no data, and nothing to do on a current dataset."""
        if declares_primary_key(self._ds.schema):
            return
        try:
            self._ds.update_field_metadata({"item_id": PRIMARY_KEY})
        except (OSError, RuntimeError, ValueError):
            self.refresh()  # another writer may have declared it a moment ago
            if not declares_primary_key(self._ds.schema):
                raise
        self.refresh()

    def _merge(self, table: pa.Table, replace_when: str | None) -> None:
        # Planned on the latest version: the insert's clashes with other writers' inserts are
        # then found in the few commits made while it runs (whose history a prune keeps, see
        # maintenance.END_OF_RUN_GRACE), never in an old handle's long past.
        self.refresh()
        # Without the declared key Lance would not see a concurrent insert of the same id.
        self.declare_primary_key()
        self._despite_pruning(
            lambda: (
                self._ds.merge_insert("item_id")
                .when_matched_update_all(condition=replace_when)
                .when_not_matched_insert_all()
                # pylance 14 rejects a conditional update planned through the item_id index
                # ("Primary key column ... must not be nullable"); its scan join works.
                .use_index(replace_when is None)
                .execute(table)
            )
        )
        # execute() moved the handle to its commit, which holds this batch: the next merge
        # refreshes to the latest first, so reopening here would only read the manifest twice.
        self._committed.add(self._ds.version)
        self._offsets = None

    # ---------------------------------------------------------------- maintenance
    def update_index(self) -> None:
        """Create the scalar index on item_id, or extend it over rows added since."""
        if any(i.field_names == ["item_id"] for i in self._ds.describe_indices()):
            self._ds.optimize.optimize_indices()
        else:
            self._ds.create_scalar_index("item_id", "BTREE")
        self._committed.add(self._ds.version)
        self.refresh()

    def only_writer_since(self, version: int) -> bool:
        """Whether every commit after `version`, up to the latest, was made through this
        handle: if so no other process is known to be writing, and pruning is safe."""
        self.refresh()
        return set(range(version + 1, self.version + 1)) <= self._committed

    def _despite_pruning(self, action: Callable[[], T]) -> T:
        """Run a read or a commit of this handle's version; if another process pruned that
        version's files meanwhile (its end-of-run optimize), run it again on the latest version,
        whose files a prune always keeps. A failed read or merge commits nothing, so a retry is
        safe, and a merge re-planned on the latest version still keeps one row per item."""
        for _ in range(_PRUNED_ATTEMPTS - 1):
            try:
                return action()
            # Lance raises a missing fragment as OSError from a merge, but as ArrowInvalid from
            # a scan (to_table): both mean the same here.
            except (OSError, pa.ArrowInvalid) as error:
                if not _pruned_meanwhile(error):
                    raise
                log.info("%s: another writer pruned this version; using the latest", self.uri)
                self.refresh()
        return action()  # the last attempt's error, if any, is the caller's

    def refresh(self) -> None:
        """Move this handle to the dataset's latest version (another process's commits too)."""
        self._ds = lance.dataset(self.uri, storage_options=self.storage_options or None)
        self._offsets = None

    # ---------------------------------------------------------------- internals
    def _offset_map(self) -> dict[str, int]:
        """item_id -> row offset, for the stored (non-failed) rows of this version."""
        if self._offsets is None:
            table = self._ds.to_table(columns=["item_id", "error"])
            positions = None
            if has_duplicates(table.column("item_id")):
                table = self._ds.to_table(columns=CHOICE_COLUMNS)
                positions = kept_positions(table)
                self._duplicates = table.num_rows - len(positions)
                log.warning(
                    "%s holds %d duplicate row(s) (written by an older LinkedOut); reading one "
                    "per item: run `linkedout optimize %s` to remove them",
                    self.uri,
                    self._duplicates,
                    self.uri,
                )
            else:
                self._duplicates = 0
            ids = table.column("item_id").to_pylist()
            ok = table.column("error").is_null().to_pylist()
            if positions is None:
                positions = range(len(ids))
            self._distinct = len(positions)
            self._offsets = {ids[i]: int(i) for i in positions if ok[i]}
        return self._offsets

    def _missing_message(self, missing: list[str]) -> str:
        failed = {f.item_id: f.error for f in self.failures() if f.item_id in set(missing[:5])}
        shown = ", ".join(
            f"{i!r} (failed: {failed[i]})" if i in failed else repr(i) for i in missing[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return (
            f"{len(missing)} item id(s) not stored in {self.uri}: {shown}{more}; "
            "extract them first or drop them from the request"
        )


def _absent(table: pa.Table, column: str, item_ids: Sequence[str]) -> list[str]:
    """The ids whose row of a read holds no `column` (a struct: Lance's take returns it whole,
    a scan returns its children flat)."""
    if column not in table.schema.names:
        column = next(n for n in table.schema.names if n.startswith(column + "."))
    valid = table.column(column).is_valid().to_pylist()
    return [i for i, ok in zip(item_ids, valid, strict=True) if not ok]


def _pruned_meanwhile(error: Exception) -> bool:
    """Whether a read failed because a file of this handle's version is gone (Lance: `Not
    found: .../data/<fragment>.lance`), which only pruning by another process does."""
    return "Not found:" in str(error)


def id_filter(ids: Sequence[str]) -> str:
    quoted = ",".join("'" + i.replace("'", "''") + "'" for i in ids)
    return f"item_id IN ({quoted})"
