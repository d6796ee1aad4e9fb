"""Item features by id, for code reading a feature store: all in memory when they fit, streamed
when not.

Both views answer the same three questions (which ids, the tensors of some ids, every item in
batches), so a reader is written once against `ItemFeatures`. (The recommender indexes items by
its own model index instead: `linkedout.recommend.tokens`.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from linkedout.errors import LinkedOutError, MissingItemsError
from linkedout.memory import MemoryBudget
from linkedout.storage.columns import TORCH_DTYPES
from linkedout.storage.store import FeatureStore

log = logging.getLogger(__name__)


class ItemFeatures(Protocol):
    layers: list[int]

    @property
    def ids(self) -> list[str]: ...

    def read_tokens(self, item_ids: Sequence[str]) -> torch.Tensor: ...

    def batches(self, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]: ...


class InMemoryFeatures:
    """Every item's `[L, T, D]` in one tensor (move it to a GPU with `.to(device)`)."""

    def __init__(self, ids: list[str], tokens: torch.Tensor, layers: list[int]):
        self._ids = ids
        self.tokens = tokens
        self.layers = layers
        self._row = {item_id: i for i, item_id in enumerate(ids)}

    @property
    def ids(self) -> list[str]:
        return self._ids

    def to(self, device: torch.device | str) -> InMemoryFeatures:
        return InMemoryFeatures(self._ids, self.tokens.to(device), self.layers)

    def read_tokens(self, item_ids: Sequence[str]) -> torch.Tensor:
        missing = [i for i in item_ids if i not in self._row]
        if missing:
            raise MissingItemsError(
                f"{len(missing)} item id(s) have no features: {', '.join(map(repr, missing[:5]))}",
                missing,
            )
        rows = torch.tensor([self._row[i] for i in item_ids], dtype=torch.long)
        return self.tokens[rows.to(self.tokens.device)]

    def batches(self, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        for start in range(0, len(self._ids), batch_size):
            yield self._ids[start : start + batch_size], self.tokens[start : start + batch_size]


class StreamingFeatures:
    """Reads from the store on demand; holds only the id list in memory."""

    def __init__(self, store: FeatureStore, layers: list[int]):
        self.store = store
        self.layers = layers

    @property
    def ids(self) -> list[str]:
        return self.store.ids()

    def read_tokens(self, item_ids: Sequence[str]) -> torch.Tensor:
        return self.store.read_tokens(item_ids, self.layers)

    def batches(self, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
        return self.store.iter_batches(batch_size, self.layers)


def feature_bytes(
    store: FeatureStore, layers: Sequence[int] | None = None, queries: int = 1
) -> int:
    """Bytes of every item's `[L, T, D]` for these layers, times `queries` read together."""
    layers = store.layer_positions(layers)
    _, t, d = store.manifest.shape
    itemsize = torch.empty((), dtype=TORCH_DTYPES[store.manifest.dtype]).element_size()
    return len(store) * max(1, queries) * len(layers) * t * d * itemsize


def open_features(
    store: FeatureStore,
    layers: Sequence[int] | None = None,
    memory_budget: MemoryBudget | int | None = None,
) -> InMemoryFeatures | StreamingFeatures:
    """Load every item's features when they fit `memory_budget` (bytes; default: half the free
    memory), else stream them."""
    layers = store.layer_positions(layers)
    if not isinstance(memory_budget, MemoryBudget):
        memory_budget = (
            MemoryBudget.resolve(None) if memory_budget is None else MemoryBudget(memory_budget)
        )
    need = feature_bytes(store, layers)
    if memory_budget.fits(need):
        ids, tokens = store.load(layers)
        return InMemoryFeatures(ids, tokens, layers)
    log.warning(
        "item features need %.2f GiB, over the %.2f GiB budget: streaming them from %s",
        need / 2**30,
        memory_budget.gib,
        store.uri,
    )
    return StreamingFeatures(store, layers)


class _ItemBatches(Dataset):
    """Batch k = the k-th run of `batch_size` stored items; picklable into spawned workers."""

    def __init__(self, store: FeatureStore, batch_size: int, layers: list[int]):
        self.store = store
        self.batch_size = batch_size
        self.layers = layers
        self.item_ids = store.ids()

    def __len__(self) -> int:
        return (len(self.item_ids) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, k: int) -> tuple[list[str], torch.Tensor]:
        ids = self.item_ids[k * self.batch_size : (k + 1) * self.batch_size]
        return ids, self.store.read_tokens(ids, self.layers)


def item_loader(
    store: FeatureStore,
    batch_size: int = 256,
    layers: Sequence[int] | None = None,
    num_workers: int = 0,
    multiprocessing_context: str = "spawn",
) -> DataLoader:
    """A DataLoader of `(ids, [B, L, T, D])` over the store, in storage order.

    Lance is not fork-safe, so worker processes are spawned (or forkserver), never forked.
    """
    if num_workers > 0 and multiprocessing_context not in ("spawn", "forkserver"):
        raise LinkedOutError(
            f"multiprocessing_context={multiprocessing_context!r}: Lance is not fork-safe; "
            "use 'spawn' or 'forkserver' (or num_workers=0)"
        )
    dataset = _ItemBatches(store, batch_size, store.layer_positions(layers))
    return DataLoader(
        dataset,
        batch_size=None,  # items arrive already batched
        num_workers=num_workers,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        persistent_workers=False,
    )
