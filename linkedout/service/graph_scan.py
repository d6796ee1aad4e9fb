"""Top-k through a graph index over one snapshot: the graph's candidates and the items it does
not hold, scored exactly, with the history, `exclude` and removed items never returned.

A graph is built over one catalog version's items (graph.py) and serves later versions too:
an item added since is in `side`, scanned exactly beside the graph's candidates for every
user, until a rebuild folds it in; an item removed since maps to row 0 (padding) and is
dropped. The new-item lift (a per-user term on items without a trained ID vector) is one more
coordinate of the graph's keys and users where the graph was built with it (GraphIndex.lifted);
a graph built without it leaves lifted items beside it. Masking is exact
because it happens after the candidates are scored: a user whose candidates run out (a history
or an `exclude` longer than the over-fetch) is scanned exactly instead, so every answer holds
min(k, items left) items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from linkedout.service.graph import GraphIndex
from linkedout.service.scan import Scan, rank_again


@dataclass(frozen=True)
class GraphScan:
    graph: GraphIndex
    label_rows: torch.Tensor
    """`[G]` the snapshot row of each graph label (0: the item is no longer live)."""
    side: torch.Tensor
    """`[S]` live rows the graph does not hold, scanned exactly for every user."""
    side_keys: torch.Tensor
    """`[S, W]` their keys (float32)."""
    catalog_version: int
    """The catalog version the graph was built over."""
    unbuilt: int
    """Items of `side` a new graph would hold: what a rebuild folds in (all of them, but
    lifted items when the graph has no lift coordinate: those stay beside it)."""
    removed: int
    """Items of the graph no longer in the catalog."""

    @classmethod
    def of(
        cls,
        graph: GraphIndex,
        graph_items: list[str],
        catalog_version: int,
        rows_of: dict[str, int],
        keys: torch.Tensor,
        lifted: torch.Tensor | None,
    ) -> GraphScan:
        """The graph of `graph_items` (its labels' item ids) over a snapshot whose item ids map
        to rows by `rows_of` and whose keys are `keys [N + 1, W]`; `lifted [N + 1]`: rows whose
        scores carry the new-item lift (scanned exactly beside a graph without the lift's
        coordinate)."""
        label_rows = torch.tensor([rows_of.get(i, 0) for i in graph_items], dtype=torch.long)
        removed = int((label_rows == 0).sum())
        covered = torch.zeros(len(keys), dtype=torch.bool)
        covered[label_rows] = True
        covered[0] = True  # padding is never a candidate
        unbuilt = int((~covered).sum())
        if lifted is not None and not graph.lifted:  # the graph cannot score the lift
            lifted_rows = lifted.bool()
            label_rows[lifted_rows[label_rows]] = 0  # scored with the lift, beside the graph
            covered &= ~lifted_rows
            covered[0] = True
            unbuilt = int((~covered & ~lifted_rows).sum())
        side = (~covered).nonzero()[:, 0]
        return cls(graph, label_rows, side, keys[side].float(), catalog_version, unbuilt, removed)

    @property
    def covered(self) -> int:
        """Live items the graph holds."""
        return int((self.label_rows > 0).sum())

    def top(
        self,
        scan: Scan,
        users: torch.Tensor,
        k: int,
        masked: list[list[int]],
        offsets: torch.Tensor | None = None,
        lifted: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`Scan.top`'s contract, over the graph's candidates and `side`; `scan`: the snapshot's
        exact scan (its keys score the candidates, and it answers users the candidates
        cannot)."""
        query = users
        if self.graph.lifted:  # the lift is the last coordinate's product
            lift = offsets if offsets is not None else users.new_zeros(len(users))
            query = torch.cat([users, lift[:, None].to(users.dtype)], 1)
        rows = self.label_rows[self.graph.candidates(query)]  # [B, C]
        scores = torch.einsum("bw,bcw->bc", users, scan.keys[rows])
        if len(self.side):
            rows = torch.cat([rows, self.side.expand(len(users), -1)], 1)
            scores = torch.cat([scores, users @ self.side_keys.T], 1)
        if offsets is not None:
            scores += offsets[:, None] * lifted[rows]
        drop = rows == 0
        for b, never in enumerate(masked):
            if len(never) > 1:  # [0] alone: padding, already dropped
                drop[b] |= torch.isin(rows[b], torch.tensor(never))
        scores.masked_fill_(drop, float("-inf"))
        k = min(k, len(scan.keys) - 1)
        if scores.shape[1] < k:  # a graph and side smaller than k: everyone exactly
            return scan.top(users, k, masked, offsets, lifted)
        best, at = scores.topk(k, dim=1)
        best_rows = rows.gather(1, at)
        # Too few candidates left for a user: rank them exactly (the answer must hold every
        # item it can, not only those the graph offered).
        short = (best[:, -1] == float("-inf")).nonzero()[:, 0]
        rank_again(scan.top, short, users, k, masked, offsets, lifted, best, best_rows)
        return best, best_rows
