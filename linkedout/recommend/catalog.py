"""The catalog a ranking runs over: every item's per-depth expert outputs `e [N, L, r]` (from
the compressor and the experts; the model's `keys`) and ID vectors `[N, d]` (model weights,
always in memory).

e is computed from the item tokens `CHUNK_ITEMS` items at a time and read back in the same
chunks, whether it is held in memory or, when it is larger than the memory budget, stored in a
catalog dataset (catalog_dataset.py, which owns the on-disk layout): the same matrix products in
the same shapes either way, so a ranking gives bitwise the same scores from memory and from disk.
Evaluation ranks the split's items, so it reads version 1 of a run's catalog.lance
(`TRAINED_VERSION`), where row offsets are model indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from linkedout.memory import MemoryBudget
from linkedout.recommend.catalog_dataset import (
    CHUNK_ITEMS,
    READ_ERRORS,
    TRAINED_VERSION,
    CatalogDataset,
    read_error,
)


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

    def __init__(self, dataset: CatalogDataset, ids: torch.Tensor | None):
        self.dataset = dataset
        self.ids = ids
        self.num_items = dataset.num_rows
        self.content = dataset.content
        self.run_id = dataset.run_id

    @property
    def nbytes(self) -> int:
        """Size of e once loaded."""
        return catalog_bytes((self.num_items, *self.dataset.expert_shape))

    def load(self) -> MemoryCatalog:
        loaded = MemoryCatalog(self.dataset.experts(), self.ids)
        loaded.run_id = self.run_id
        return loaded

    def experts_of(self, items: torch.Tensor) -> torch.Tensor | None:
        return self.dataset.experts_at(items) if self.content else None

    def _experts_range(self, start: int, stop: int) -> torch.Tensor | None:
        return self.dataset.experts_range(start, stop) if self.content else None


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
    return LanceCatalog(CatalogDataset.create(spill, chunks(), None, shape), ids)


def catalog_bytes(shape: tuple[int, int, int]) -> int:
    n, layers, d = shape
    return n * layers * d * 4


def open_catalog(
    path: str | Path,
    ids: torch.Tensor | None,
    memory_budget: MemoryBudget,
    storage_options: dict[str, str] | None = None,
) -> Catalog:
    """A run's catalog dataset as training wrote it: loaded when it fits `memory_budget`, else
    read on demand."""
    try:
        dataset = CatalogDataset(path, TRAINED_VERSION, storage_options)
        catalog = LanceCatalog(dataset, ids)
        if catalog.content and memory_budget.fits(catalog.nbytes):
            return catalog.load()
    except READ_ERRORS as e:
        raise read_error(path, storage_options or {}, e) from None
    if catalog.content:
        return catalog
    memory = MemoryCatalog(None, ids)
    memory.run_id = catalog.run_id
    return memory
