"""The item-token table training reads: `[num_items, L, T, D]` indexed by model item index.

Row 0 is the padding item and items without features (kept with `allow_missing`) are zero, so
the layout of `data.py` (index 0 padding, 1..F the store's items in its order, then the items
without features) is written here once. Two backends answer the same calls, as `Catalog` does
in catalog.py: `MemoryItemTokens` holds the table in one tensor, `LanceItemTokens` reads rows
from the feature store on demand, for catalogs whose features exceed the memory budget.

    gather(index, prefetched=None)  rows of these item indices, `[n, L, T, D]`
    prefetch(index)                 start reading rows in the background (None: nothing to do)
    chunk(start, stop)              rows start..stop-1, for passes over the whole catalog
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from linkedout.errors import LinkedOutError
from linkedout.memory import MemoryBudget
from linkedout.storage import FeatureStore
from linkedout.storage.columns import TORCH_DTYPES
from linkedout.storage.features import feature_bytes

log = logging.getLogger(__name__)


class Prefetched:
    """One batch's item rows, being read in the background (a plain class: Lightning leaves it
    as it is when it moves the batch to the device)."""

    def __init__(self, items: torch.Tensor, rows: Future):
        self.items = items  # sorted model item indices
        self.rows = rows  # -> their tokens [len(items), L, T, D]


class ItemTokens:
    """Stored tokens of every model item index, wherever they live."""

    shape: tuple[int, int, int, int]
    dtype: torch.dtype

    def gather(self, index: torch.Tensor, prefetched: Prefetched | None = None) -> torch.Tensor:
        """`[len(index), L, T, D]`, taking the rows `prefetched` holds from it."""
        raise NotImplementedError

    def prefetch(self, index: torch.Tensor) -> Prefetched | None:
        return None

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError


class MemoryItemTokens(ItemTokens):
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype

    def gather(self, index: torch.Tensor, prefetched: Prefetched | None = None) -> torch.Tensor:
        return self.tensor[index.to(self.tensor.device)]

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor[start:stop]


class LanceItemTokens(ItemTokens):
    """Rows read from the feature store on demand; holds only the ids in memory."""

    def __init__(
        self,
        store: FeatureStore,
        item_ids: Sequence[str],
        layers: Sequence[int],
        num_with_features: int,
        queries: Sequence[str] = (),
        slots: tuple[int, int] | None = None,
    ):
        self.store = store
        self.item_ids = list(item_ids)  # model index i + 1 is item_ids[i]
        self.layers = list(layers)
        self.queries = list(queries)
        self.slots = slots
        self.num_with_features = num_with_features
        manifest = store.manifest
        experts = len(self.layers) * max(1, len(self.queries))
        _, t, d = manifest.shape
        kept = t if slots is None else slots[1] - slots[0]
        self.shape = (len(self.item_ids) + 1, experts, kept, d)
        self.dtype = TORCH_DTYPES[manifest.dtype]
        self._reader = ThreadPoolExecutor(1, "linkedout-read-ahead")

    def _read(self, index: torch.Tensor) -> torch.Tensor:
        index = index.cpu()
        out = torch.zeros((len(index), *self.shape[1:]), dtype=self.dtype)
        real = (index >= 1) & (index <= self.num_with_features)
        if real.any():
            ids = [self.item_ids[i - 1] for i in index[real].tolist()]
            out[real] = self.store.read_queries(ids, self.layers, self.queries, self.slots)
        return out

    def prefetch(self, index: torch.Tensor) -> Prefetched:
        """Read these items in a background thread, beside the training step that runs
        meanwhile (it pays where the step leaves cores idle, as on a GPU machine)."""
        items = torch.unique(index.cpu())
        return Prefetched(items, self._reader.submit(self._read, items))

    def gather(self, index: torch.Tensor, prefetched: Prefetched | None = None) -> torch.Tensor:
        if prefetched is None:
            return self._read(index)
        index = index.cpu()
        items, rows = prefetched.items, prefetched.rows.result()
        at = torch.searchsorted(items, index).clamp(max=len(items) - 1)
        hit = items[at] == index
        out = torch.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        out[hit] = rows[at[hit]]
        if not bool(hit.all()):
            out[~hit] = self._read(index[~hit])
        return out

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        return self._read(torch.arange(start, min(stop, self.shape[0])))


def open_item_tokens(
    store: FeatureStore,
    layers: Sequence[int],
    item_ids: Sequence[str],
    num_with_features: int,
    budget: MemoryBudget,
    queries: Sequence[str] = (),
    slots: tuple[int, int] | None = None,
) -> ItemTokens:
    """The table of these model items (`item_ids[i]` is index i + 1, the first
    `num_with_features` being the store's items in its order): in memory when it fits the
    budget, else read from the store batch by batch. With several `queries`, an item's rows
    are every (query, layer) pair, query-major; `slots` keeps a range of the T slots."""
    layers = store.layer_positions(layers)
    need = feature_bytes(store, layers, len(queries))
    if not budget.fits(need):
        log.warning(
            "item features need %.2f GiB, over the %.2f GiB budget: streaming them from %s",
            need / 2**30,
            budget.gib,
            store.uri,
        )
        return LanceItemTokens(store, item_ids, layers, num_with_features, queries, slots)
    ids, tokens = store.load(layers, queries, slots)
    if ids != list(item_ids[:num_with_features]):
        raise LinkedOutError(f"{store.uri} changed while training was starting: run again")
    pad = torch.zeros((1, *tokens.shape[1:]), dtype=tokens.dtype)
    missing = torch.zeros((len(item_ids) - len(tokens), *tokens.shape[1:]), dtype=tokens.dtype)
    return MemoryItemTokens(torch.cat([pad, tokens, missing]))
