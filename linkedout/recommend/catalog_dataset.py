"""`catalog.lance`, the run's catalog dataset: the one module that opens or writes it.

Training creates it (`CatalogDataset.create`), evaluation reads version 1 (`TRAINED_VERSION`),
`linkedout catalog add` and `remove` commit later versions (`append`, `delete`), and serving
reads the newest live rows (`live`). Validation's spills (catalogs too large for memory) are
datasets of the same layout.

Layout, one row per model item index, row 0 being the padding item:

    item_id   string                                    "" in row 0
    experts   arrow.fixed_shape_tensor<float32>[L, r]   absent for ID-only models

Schema metadata:

    linkedout_catalog_format   the layout's version (FORMAT); catalogs written before the key
                               are format 1. A reader refuses a newer format in one line.
    linkedout_run_id           the run that wrote it (absent in spills and in catalogs written
                               before run ids)

Version 1 is what training wrote: the split's items, row i being model item i. Later versions
append rows (new items) or delete them (removed items); version 1 is never rewritten, so row
offsets stay model indices there.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.compute as pc
import torch

from linkedout.errors import LinkedOutError, first_line
from linkedout.storage.store import id_filter
from linkedout.storage.uri import describe_storage_error, is_local

FORMAT = 1
"""The layout above; raise it (and read the older ones) when the layout changes."""
FORMAT_KEY = b"linkedout_catalog_format"
RUN_ID_KEY = b"linkedout_run_id"

TRAINED_VERSION = 1
"""The version training wrote (it creates the dataset afresh)."""

CHUNK_ITEMS = 4096
"""Items per chunk, for computing e and for ranking against it: bounds the memory of both to
CHUNK_ITEMS x (L·d + batch) floats, whatever the catalog's size."""

READ_ERRORS = (OSError, ValueError, KeyError, pa.ArrowException)


class CatalogDataset:
    """One version of a catalog dataset, opened (and its format checked) once. `path` is a
    local folder or an object-store URI (a run's published catalog, `catalog publish`), with
    the `storage_options` that reach it."""

    def __init__(
        self,
        path: str | Path,
        version: int | None = None,
        storage_options: dict[str, str] | None = None,
    ):
        self.local = is_local(str(path))
        self.path: str | Path = Path(path) if self.local else str(path)
        self.storage_options = dict(storage_options or {})
        if self.local and not self.path.exists():
            raise LinkedOutError(
                f"{self.path} is missing: the run was trained by an older linkedout, or its "
                "directory is damaged; train it again"
            )
        try:
            self._ds = lance.dataset(
                str(self.path), version=version, storage_options=self.storage_options or None
            )
            metadata = self._ds.schema.metadata or {}
            found = int(metadata.get(FORMAT_KEY, b"1"))
        except READ_ERRORS as e:
            raise read_error(self.path, self.storage_options, e) from None
        if found > FORMAT:
            raise LinkedOutError(
                f"{self.path} is catalog format {found}, newer than this linkedout reads "
                f"({FORMAT}): upgrade linkedout to read this run"
            )
        stamp = metadata.get(RUN_ID_KEY)
        self.run_id: str | None = stamp.decode() if stamp is not None else None
        self.content = "experts" in self._ds.schema.names

    # -- writing ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        experts: Iterator[torch.Tensor] | None,
        item_ids: list[str] | None,
        shape: tuple[int, int, int],
        run_id: str | None = None,
    ) -> CatalogDataset:
        """A new catalog dataset at `path` (replacing any) from e's chunks (None for ID-only
        models), without holding e. `item_ids[i]` names model item i + 1, as in the split."""
        n, layers, d = shape
        fields = [pa.field("item_id", pa.string())]
        if experts is not None:
            fields.append(pa.field("experts", pa.fixed_shape_tensor(pa.float32(), [layers, d])))
        metadata = {FORMAT_KEY: str(FORMAT).encode()}
        if run_id:
            metadata[RUN_ID_KEY] = run_id.encode()
        schema = pa.schema(fields, metadata=metadata)
        names = ["", *item_ids] if item_ids is not None else None

        def batches() -> Iterator[pa.RecordBatch]:
            if experts is None:
                for start in range(0, n, CHUNK_ITEMS):
                    stop = min(n, start + CHUNK_ITEMS)
                    yield pa.record_batch([_names(names, start, stop)], schema)
                return
            start = 0
            for chunk in experts:
                stop = start + len(chunk)
                yield pa.record_batch([_names(names, start, stop), experts_array(chunk)], schema)
                start = stop
            if start != n:
                raise ValueError(f"catalog chunks held {start} items, expected {n}")

        shutil.rmtree(path, ignore_errors=True)  # a stale spill would keep its old versions' files
        reader = pa.RecordBatchReader.from_batches(schema, batches())
        lance.write_dataset(reader, str(path), schema=schema, mode="create")
        return cls(path)

    @property
    def version(self) -> int:
        """The version this handle reads: the one opened, or its own latest commit."""
        return self._ds.version

    def append(self, item_ids: list[str], experts: Iterator[torch.Tensor]) -> int:
        """Rows for new items in one commit (nothing is committed if `experts` stops early);
        `experts` yields e of `item_ids` in order, chunk by chunk. Returns the new version,
        which this handle then reads."""
        schema = self._ds.schema

        def batches() -> Iterator[pa.RecordBatch]:
            start = 0
            for chunk in experts:
                names = pa.array(item_ids[start : start + len(chunk)], pa.string())
                yield pa.record_batch([names, experts_array(chunk)], schema=schema)
                start += len(chunk)

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        options = self.storage_options or None
        self._ds = lance.write_dataset(
            reader, str(self.path), mode="append", storage_options=options
        )
        return self._ds.version

    def delete(self, item_ids: list[str]) -> int:
        """Delete these items' rows in one commit; returns the new version, which this handle
        then reads."""
        self._ds.delete(id_filter(item_ids))
        return self._ds.version

    # -- reading ----------------------------------------------------------------------------
    @staticmethod
    def latest_version(path: str | Path) -> int:
        """The newest committed version (opening reads the latest manifest only)."""
        return lance.dataset(str(path)).version

    @property
    def num_rows(self) -> int:
        """Rows of this version, the padding row included."""
        return self._ds.count_rows()

    @property
    def expert_shape(self) -> tuple[int, int]:
        """(L, r) of the `experts` column."""
        layers, d = self._ds.schema.field("experts").type.shape
        return layers, d

    def experts(self) -> torch.Tensor:
        """e of every row, `[rows, L, r]`."""
        return experts_from_table(self._ds.to_table(columns=["experts"]))

    def experts_at(self, rows: torch.Tensor) -> torch.Tensor:
        """e of these row offsets (any order, repeats allowed), `[*rows.shape, L, r]`."""
        # Lance reads sorted, distinct rows fastest; histories repeat popular items.
        unique, inverse = torch.unique(rows.cpu(), return_inverse=True)
        table = self._ds.take(unique.numpy(), columns=["experts"])
        return experts_from_table(table)[inverse].to(rows.device)

    def experts_range(self, start: int, stop: int) -> torch.Tensor:
        table = self._ds.to_table(columns=["experts"], offset=start, limit=stop - start)
        return experts_from_table(table)

    def live(self) -> tuple[list[str], torch.Tensor | None]:
        """The live items of this version in stored order (the padding row left out): their ids
        and, for content runs, their e `[N, L, r]`."""
        columns = ["item_id", "experts"] if self.content else ["item_id"]
        table = self._ds.to_table(columns=columns)
        table = table.filter(pc.not_equal(table.column("item_id"), ""))
        item_ids: list[str] = table.column("item_id").to_pylist()
        return item_ids, experts_from_table(table) if self.content else None

    def live_ids(self) -> set[str]:
        """Item ids of the live rows (not the padding row's "")."""
        return set(self._ds.to_table(columns=["item_id"]).column("item_id").to_pylist()) - {""}


def read_run_id(path: str | Path, storage_options: dict[str, str] | None = None) -> str | None:
    """The run id stamped on a catalog dataset, read from its schema only."""
    return CatalogDataset(path, storage_options=storage_options).run_id


def read_error(path: str | Path, options: dict[str, str], error: Exception) -> LinkedOutError:
    """The one line for a catalog that could not be read: damaged in the run directory, or out
    of reach where it was published."""
    if is_local(str(path)):
        return unreadable(path, error)
    return unreachable(str(path), options, error)


def unreadable(path: str | Path, error: Exception) -> LinkedOutError:
    return LinkedOutError(
        f"{path} is not a readable catalog ({first_line(error, 160)}): the run directory is "
        "damaged; train it again"
    )


def unreachable(uri: str, options: dict[str, str], error: Exception) -> LinkedOutError:
    """A published catalog that cannot be read where it lies: what went wrong, what to do."""
    if "not found" in str(error).lower():
        return LinkedOutError(
            f"{uri} holds no catalog: the run's catalog-location.json points at it, so publish "
            "the catalog there again (`linkedout catalog publish`) or delete that file to read "
            "the run's own catalog.lance"
        )
    return LinkedOutError(
        f"cannot read the catalog at {uri}: {describe_storage_error(options, error)}"
    )


def _names(names: list[str] | None, start: int, stop: int) -> pa.Array:
    return pa.array(
        names[start:stop] if names is not None else [None] * (stop - start), pa.string()
    )


def experts_array(chunk: torch.Tensor) -> pa.FixedShapeTensorArray:
    """`e` rows `[C, L, r]` as the catalog's `experts` column."""
    # A fresh C-order copy: a "contiguous" tensor may keep odd strides on size-1 dimensions
    # (one depth), which Arrow's tensor type refuses.
    values = chunk.detach().float().cpu().numpy().copy(order="C")
    return pa.FixedShapeTensorArray.from_numpy_ndarray(values)


def experts_from_table(table: pa.Table) -> torch.Tensor:
    column = table.column("experts").combine_chunks()
    shape = column.type.shape
    values = column.storage.flatten().to_numpy(zero_copy_only=False).reshape(len(column), *shape)
    # Arrow's buffers are read-only; a tensor over them must not be written through.
    return torch.from_numpy(values if values.flags.writeable else values.copy())
