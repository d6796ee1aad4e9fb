"""The catalog a ranking runs over: every item's per-depth expert outputs `e [N, L, r]` (from
the compressor and the experts; the model's `keys`) and ID vectors `[N, d]` (model weights,
always in memory).

e is computed from the item tokens `CHUNK_ITEMS` items at a time and read back in the same
chunks, whether it is held in memory or, when it is larger than the memory budget, stored in a
Lance dataset: the same matrix products in the same shapes either way, so a ranking gives
bitwise the same scores from memory and from disk.

On-disk layout of a catalog dataset (`catalog.lance` in a run directory), one row per model item
index, row 0 being the padding item:

    item_id   string                                "" in row 0
    experts   arrow.fixed_shape_tensor<float32>[L, r]   absent for ID-only models

and the schema metadata `linkedout_run_id`: the run id of the run that wrote it (absent in
catalogs written before run ids, and in validation's spills).

Version 1 is what training wrote: the split's items, row i being model item i. `linkedout
catalog add` and `remove` commit later versions (appended rows for new items, deleted rows for
removed ones) that only serving reads (linkedout/service/snapshot.py); evaluation ranks the
split's items, so it always reads version 1, where row offsets are model indices.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lance
import pyarrow as pa
import torch

from linkedout.errors import LinkedOutError, first_line
from linkedout.memory import MemoryBudget

RUN_ID_KEY = b"linkedout_run_id"

TRAINED_VERSION = 1
"""The catalog.lance version training wrote (it creates the dataset afresh)."""

CHUNK_ITEMS = 4096
"""Items per chunk, for computing e and for ranking against it: bounds the memory of both to
CHUNK_ITEMS x (L·d + batch) floats, whatever the catalog's size."""


@dataclass(frozen=True)
class CatalogChunk:
    start: int
    """Model item index of the chunk's first row."""
    experts: torch.Tensor | None  # [C, L, d]
    ids: torch.Tensor | None  # [C, d]

    @property
    def width(self) -> int:
        return len(self.experts if self.experts is not None else self.ids)


class Catalog:
    """Per-layer item embeddings wherever they live, plus the ID vectors."""

    num_items: int
    ids: torch.Tensor | None
    run_id: str | None = None
    """The run id stored with a catalog.lance (None in memory, or in an older catalog)."""

    def experts_of(self, items: torch.Tensor) -> torch.Tensor | None:
        """`e[items]`: `[*items.shape, L, r]` (None for ID-only models)."""
        raise NotImplementedError

    def chunks(self, width: int = CHUNK_ITEMS) -> Iterator[CatalogChunk]:
        """The whole catalog, `width` items at a time, in item order."""
        for start in range(0, self.num_items, width):
            stop = min(start + width, self.num_items)
            ids = None if self.ids is None else self.ids[start:stop]
            yield CatalogChunk(start, self._experts_range(start, stop), ids)

    def _experts_range(self, start: int, stop: int) -> torch.Tensor | None:
        raise NotImplementedError


class MemoryCatalog(Catalog):
    def __init__(self, experts: torch.Tensor | None, ids: torch.Tensor | None):
        self.experts = experts  # [N, L, r], row 0 = padding
        self.ids = ids
        self.num_items = len(experts if experts is not None else ids)

    def experts_of(self, items: torch.Tensor) -> torch.Tensor | None:
        return None if self.experts is None else self.experts[items]

    def _experts_range(self, start: int, stop: int) -> torch.Tensor | None:
        return None if self.experts is None else self.experts[start:stop]


class LanceCatalog(Catalog):
    """e read from a catalog dataset on demand: rows by index, or a chunk at a time."""

    def __init__(self, path: str | Path, ids: torch.Tensor | None, version: int | None = None):
        self.path = str(path)
        self._ds = lance.dataset(self.path, version=version)
        self.ids = ids
        self.num_items = self._ds.count_rows()
        self.content = "experts" in self._ds.schema.names
        stamp = (self._ds.schema.metadata or {}).get(RUN_ID_KEY)
        self.run_id = stamp.decode() if stamp is not None else None

    @property
    def nbytes(self) -> int:
        """Size of e once loaded."""
        layers, d = self._ds.schema.field("experts").type.shape
        return catalog_bytes((self.num_items, layers, d))

    def load(self) -> MemoryCatalog:
        loaded = MemoryCatalog(experts_from_table(self._ds.to_table(columns=["experts"])), self.ids)
        loaded.run_id = self.run_id
        return loaded

    def experts_of(self, items: torch.Tensor) -> torch.Tensor | None:
        if not self.content:
            return None
        # Lance reads sorted, distinct rows fastest; histories repeat popular items.
        unique, inverse = torch.unique(items.cpu(), return_inverse=True)
        table = self._ds.take(unique.numpy(), columns=["experts"])
        return experts_from_table(table)[inverse].to(items.device)

    def _experts_range(self, start: int, stop: int) -> torch.Tensor | None:
        if not self.content:
            return None
        table = self._ds.to_table(columns=["experts"], offset=start, limit=stop - start)
        return experts_from_table(table)


def expert_chunks(model, tokens, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """`e` of every item, `CHUNK_ITEMS` rows at a time, from stored tokens `[N, L, T, D]` (a
    tensor, or streamed from the store: only one chunk of tokens is held at a time)."""
    for start in range(0, tokens.shape[0], CHUNK_ITEMS):
        chunk = tokens[start : start + CHUNK_ITEMS].to(device)
        yield model.item_experts(chunk)


@torch.inference_mode()
def build_catalog(
    model,
    chunks: Callable[[], Iterator[torch.Tensor]],
    ids: torch.Tensor | None,
    memory_budget: MemoryBudget,
    spill: Path | None,
) -> Catalog:
    """The catalog of `model` from `chunks()`, its items' `e` in order: in memory when it fits
    `memory_budget`, else written chunk by chunk to the Lance dataset `spill` (replaced
    if present) and read from it."""
    if not model.content:
        return MemoryCatalog(None, ids)
    shape = (model.num_items, model.num_layers, model.expert_dim)
    if memory_budget.fits(catalog_bytes(shape)) or spill is None:
        return MemoryCatalog(torch.cat(list(chunks())), ids)
    write_catalog(spill, chunks(), None, shape)
    return LanceCatalog(spill, ids)


def catalog_bytes(shape: tuple[int, int, int]) -> int:
    n, layers, d = shape
    return n * layers * d * 4


def write_catalog(
    path: Path,
    experts: Iterator[torch.Tensor] | None,
    item_ids: list[str] | None,
    shape: tuple[int, int, int],
    run_id: str | None = None,
) -> None:
    """Write a catalog dataset from e's chunks (None for ID-only models) without holding e.
    `item_ids[i]` names model item i + 1, as in the split; `run_id` goes in the schema
    metadata."""
    n, layers, d = shape
    fields = [pa.field("item_id", pa.string())]
    if experts is not None:
        fields.append(pa.field("experts", pa.fixed_shape_tensor(pa.float32(), [layers, d])))
    schema = pa.schema(fields, metadata={RUN_ID_KEY: run_id.encode()} if run_id else None)
    names = ["", *item_ids] if item_ids is not None else None

    def batches() -> Iterator[pa.RecordBatch]:
        if experts is None:
            for start in range(0, n, CHUNK_ITEMS):
                yield pa.record_batch([_names(names, start, min(n, start + CHUNK_ITEMS))], schema)
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


def catalog_run_id(path: Path) -> str | None:
    """The run id stamped on a catalog dataset, read from its schema only."""
    try:
        stamp = (lance.dataset(str(path)).schema.metadata or {}).get(RUN_ID_KEY)
    except (OSError, ValueError) as e:
        raise _unreadable(path, e) from None
    return stamp.decode() if stamp is not None else None


def require_catalog(path: Path) -> None:
    if not path.exists():
        raise LinkedOutError(
            f"{path} is missing: the run was trained by an older linkedout, or its directory is "
            "damaged; train it again"
        )


def open_catalog(path: Path, ids: torch.Tensor | None, memory_budget: MemoryBudget) -> Catalog:
    """A run's catalog dataset: loaded when it fits `memory_budget`, else read on demand."""
    require_catalog(path)
    try:
        catalog = LanceCatalog(path, ids, version=TRAINED_VERSION)
        if catalog.content and memory_budget.fits(catalog.nbytes):
            return catalog.load()
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None
    if catalog.content:
        return catalog
    memory = MemoryCatalog(None, ids)
    memory.run_id = catalog.run_id
    return memory


def _unreadable(path: Path, error: Exception) -> LinkedOutError:
    return LinkedOutError(
        f"{path} is not a readable catalog ({first_line(error, 160)}): the run directory is "
        "damaged; train it again"
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
