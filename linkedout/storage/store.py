"""`FeatureStore`: the Lance dataset both stages share (layout: `linkedout.storage.columns`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import lance
import pyarrow as pa
import pyarrow.compute as pc

from linkedout.errors import LinkedOutError, first_line
from linkedout.storage.columns import (
    MANIFEST_KEY,
    PRIMARY_KEY,
    arrow_schema,
    declares_primary_key,
    digested_column,
)
from linkedout.storage.duplicates import (
    CHOICE_COLUMNS,
    has_duplicates,
    kept_positions,
)
from linkedout.storage.location import appears, exists, not_a_dataset, refuse_foreign_directory
from linkedout.storage.manifest import Manifest
from linkedout.storage.pins import missing_pin, split_pin, tags
from linkedout.storage.query_columns import QueryColumns
from linkedout.storage.reading import StoreReads
from linkedout.storage.status import Failure, StoredStatus, StoreInfo
from linkedout.storage.uri import normalize

log = logging.getLogger(__name__)
T = TypeVar("T")

_STORED_FAILED = "target.error IS NOT NULL"
_PRUNED_ATTEMPTS = 3


class FeatureStore(QueryColumns, StoreReads):
    """A LinkedOut feature dataset at one version: read with `read_tokens`/`load` (reading.py),
    commit rows with `append`/`upsert` (`FeatureWriter` batches them), add queries' columns
    (query_columns.py).

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
        """Open an existing dataset (local path or object-store URI) at its newest version, or
        at `version`, or at the version `URI@TAG` / `URI@VERSION` pins (pins.py)."""
        uri, pin = split_pin(str(uri))
        if pin is not None and version is not None:
            raise LinkedOutError(f"{uri}@{pin} pins a version already: drop @{pin}")
        pin = version if pin is None else pin
        uri = normalize(uri)
        options = dict(storage_options or {})
        try:
            ds = lance.dataset(uri, version=pin, storage_options=options or None)
        except (ValueError, OSError) as e:
            if pin is None:
                raise LinkedOutError(not_a_dataset(uri, e, options)) from None
            try:  # the dataset, or only the pinned version, is not there?
                newest = lance.dataset(uri, storage_options=options or None)
            except (ValueError, OSError) as e:
                raise LinkedOutError(not_a_dataset(uri, e, options)) from None
            raise missing_pin(uri, pin, newest) from None
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
            tags=tags(self._ds),
        )

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

    def append_new(self, reader: pa.RecordBatchReader) -> None:
        """Add rows whose ids the caller knows are not stored (merge.py planned them), streamed
        in one plain append commit: no join with the stored ids, as a merge_insert per batch
        would cost. Not for concurrent writers of the same ids: `append` is."""
        self.refresh()
        self._ds.insert(reader, mode="append", storage_options=self.storage_options or None)
        self._committed.add(self._ds.version)
        self._offsets = None

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
        # A dataset written before digests existed is appended to as it is (no digest column).
        stored = set(self._ds.schema.names)
        table = table.drop_columns(
            [n for n in table.schema.names if digested_column(n) and n not in stored]
        )
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


def _pruned_meanwhile(error: Exception) -> bool:
    """Whether a read failed because a file of this handle's version is gone (Lance: `Not
    found: .../data/<fragment>.lance`), which only pruning by another process does."""
    return "Not found:" in str(error)


def id_filter(ids: Sequence[str]) -> str:
    quoted = ",".join("'" + i.replace("'", "''") + "'" for i in ids)
    return f"item_id IN ({quoted})"
