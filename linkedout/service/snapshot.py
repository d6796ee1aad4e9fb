"""One version of a run's catalog.lance, held in memory as the service ranks it.

A user's score for an item is `user_vectors(h, gate) · keys(item)` (model.py), so serving keeps the
keys of every live item `[N + 1, d + L·r]` and ranks with one matrix product per batch of
users. Rows are renumbered for the snapshot: row 0 is padding, rows 1..N the catalog's live
items in their stored order (trained items first, then added ones); removed items are simply
absent. An item's ID vector is found by its id in the training split, so items added after
training (no ID vector was ever learned for them) get a zero one and rank by content alone.

A snapshot is never changed once built: a new catalog version is a new snapshot, swapped in
whole (ranker.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from linkedout.recommend.catalog_dataset import CatalogDataset
from linkedout.service.graph_scan import GraphScan
from linkedout.service.graph_store import StoredGraph
from linkedout.service.scan import Scan


@dataclass(frozen=True)
class CatalogSnapshot:
    version: int
    """The catalog.lance version this snapshot holds."""
    item_ids: list[str]
    """`item_ids[j - 1]` is row j."""
    index: dict[str, int]
    """Item id -> row."""
    keys: torch.Tensor
    """`[N + 1, d + L·r]` (model.keys: ID vector, then the flattened `e`), what a user's
    query is multiplied with; the two parts are read back as views, never stored twice."""
    scan: Scan
    """The exact top-k scan over `keys` (scan.py: bfloat16 candidates, float32 answers)."""
    id_width: int
    """d, the ID part's width (0 for content-only runs)."""
    num_layers: int
    """L of the content part (0 for ID-only runs)."""
    added: int
    """Live items that were not in the training split."""
    new_items: torch.Tensor | None = None
    """`[N + 1]` 1 on items without a trained ID vector (lifted by the model's `new_item_lift`
    in every user's scores), None when the model lifts none."""
    id_scale: torch.Tensor | None = None
    """The model's `id_scale()`, the lift's unit (with `new_items`)."""
    graph: GraphScan | None = None
    """The approximate index rankings go through (graph_scan.py); None: the exact scan."""

    def top(
        self,
        users: torch.Tensor,
        k: int,
        masked: list[list[int]],
        offsets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` best rows of each user `[B, W]` (Scan.top's contract), through the graph
        where the snapshot has one."""
        if self.graph is None:
            return self.scan.top(users, k, masked, offsets, self.new_items)
        return self.graph.top(self.scan, users, k, masked, offsets, self.new_items)

    def with_graph(self, stored: StoredGraph | None) -> CatalogSnapshot:
        """This snapshot ranking through `stored` (None: exactly)."""
        if stored is None:
            return replace(self, graph=None)
        graph = GraphScan.of(
            stored.index,
            stored.items,
            stored.catalog_version,
            self.index,
            self.keys,
            self.new_items,
        )
        return replace(self, graph=graph)

    def graph_rows(self) -> tuple[torch.Tensor, list[str]]:
        """The keys and item ids a graph over this snapshot holds: every live item. Where the
        model lifts new items, each key gains a last coordinate, 1 on lifted items, so that a
        user's lift is one more product term (the user's side: graph_scan.py)."""
        keys = self.keys[1:]
        if self.new_items is not None:
            keys = torch.cat([keys, self.new_items[1:, None].to(keys.dtype)], 1)
        return keys, self.item_ids

    @property
    def size(self) -> int:
        return len(self.item_ids)

    @property
    def experts(self) -> torch.Tensor | None:
        """`e [N + 1, L, r]`: history inputs and explanations."""
        if not self.num_layers:
            return None
        return self.keys[:, self.id_width :].unflatten(1, (self.num_layers, -1))

    @property
    def id_vectors(self) -> torch.Tensor | None:
        """`[N + 1, d]`, zero for items the training split lacks."""
        return self.keys[:, : self.id_width] if self.id_width else None


@torch.inference_mode()
def load_snapshot(
    model,
    dataset: CatalogDataset,
    trained: dict[str, int],
    graph: StoredGraph | None = None,
) -> CatalogSnapshot:
    """One opened version of a catalog dataset, for `model`; `trained` maps the training
    split's item ids to model item indices (rows of the ID table); `graph`: rank through it."""
    item_ids, e = dataset.live()
    model_index = torch.tensor([trained.get(i, 0) for i in item_ids], dtype=torch.long)
    id_vectors = None
    if model.ids is not None:
        # Index 0 of the ID table is the padding row, kept at zero by padding_idx: items the
        # split lacks read it, which is the zero vector they should have.
        id_vectors = model.ids.weight.detach()[model_index]
    id_width = 0 if id_vectors is None else id_vectors.shape[1]
    width = id_width + (0 if e is None else e.shape[1] * e.shape[2])
    keys = torch.empty(len(item_ids) + 1, width)
    keys[0] = 0  # row 0: padding, never a candidate
    model.keys(e, id_vectors, out=keys[1:])  # written in place: no second copy of the catalog
    new_items = model.new_items(keys[:, :id_width] if id_vectors is not None else None)
    snapshot = CatalogSnapshot(
        version=dataset.version,
        item_ids=item_ids,
        index={item: j + 1 for j, item in enumerate(item_ids)},
        keys=keys,
        scan=Scan.of(keys),
        id_width=id_width,
        num_layers=0 if e is None else e.shape[1],
        added=int((model_index == 0).sum()),
        new_items=new_items,
        id_scale=None if new_items is None else model.id_scale(),
    )
    return snapshot if graph is None else snapshot.with_graph(graph)
