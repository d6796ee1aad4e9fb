"""An approximate top-k index for catalogs of millions: a graph over a low-rank projection of
the keys that keeps the scores users give them, whose candidates are then scored exactly.

Two findings shape it (issue 38, `benchmarks/ann.py`):

1. **User vectors use few of the key's directions.** A user's vector is `[h, g_1 U_1^T h, ...]`
   for a `d`-wide state h and a gate g that varies little, so on MicroLens-50K's 176-wide keys
   64 directions hold 99.7% of the users' energy and 32 hold 90%. Inner products against those
   users are kept by a projection fitted to them: whiten by the users' second moment S (keys
   times S^(1/2), users times S^(-1/2): products unchanged), then keep the keys' `dims` main
   directions in that space. Ranking the whole catalog by 32 projected numbers puts 99% of each
   user's true top 10 in its top 100 (plain PCA of the keys: 17%).
2. **A graph wants a distance.** HNSW over inner products (hnswlib's `ip`) links keys by a
   similarity that is not a distance, and it routed real users badly (recall@10 0.58 at ef 100
   on the 19,220 real keys). The standard reduction of maximum inner product to nearest
   neighbour (keys gain a coordinate sqrt(M^2 - |k|^2), users a 0) makes it one, and in 32
   dimensions HNSW is in its element.

So a ranking asks the graph for `candidates` items nearest the projected user, scores them
exactly with the full keys (the caller's), and keeps the best k: the answer's scores are exact,
its recall is the graph's and the projection's (measured, never assumed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from linkedout.errors import LinkedOutError
from linkedout.service.graph_settings import DEFAULT_SETTINGS, GraphSettings

CHUNK = 20_000
"""Items linked in per call (between progress reports)."""


@dataclass(frozen=True)
class Projection:
    """`users @ users_map` · `keys @ keys_map` ≈ `users · keys` for users like those fitted on."""

    keys_map: torch.Tensor
    """`[W, dims]`"""
    users_map: torch.Tensor
    """`[W, dims]`"""

    @classmethod
    def fit(cls, keys: torch.Tensor, users: torch.Tensor, dims: int) -> Projection:
        """`keys [N, W]`, `users [U, W]`: the user vectors the projection must serve (a sample
        of real users' is enough: their second moment is what is fitted)."""
        users = users.double()
        width = keys.shape[1]
        second = users.T @ users / max(len(users), 1)
        # Directions no user uses get a floor, so S^(-1/2) stays finite; keys along them are
        # shrunk to almost nothing by S^(1/2), which is right: no user's score reads them.
        floor = 1e-6 * second.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(width, dtype=torch.float64)
        values, vectors = torch.linalg.eigh(second + floor * eye)
        half = vectors @ torch.diag(values.sqrt()) @ vectors.T
        inverse_half = vectors @ torch.diag(values.rsqrt()) @ vectors.T
        # The whitened keys' main directions, from their second moment summed in chunks (a
        # million keys in float64 at once would be 1.4 GB).
        moment = torch.zeros(width, width, dtype=torch.float64)
        for chunk in keys.split(65_536):
            chunk = chunk.double()
            moment += chunk.T @ chunk
        _, main = torch.linalg.eigh(half @ moment @ half)
        main = main.flip(1)[:, : min(dims, width)]
        return cls(keys_map=(half @ main).float(), users_map=(inverse_half @ main).float())

    def keys(self, keys: torch.Tensor) -> torch.Tensor:
        return keys.float() @ self.keys_map

    def users(self, users: torch.Tensor) -> torch.Tensor:
        return users.float() @ self.users_map


def require_hnswlib():
    try:
        import hnswlib
    except ImportError as exc:  # an optional extra: say how to get it
        raise LinkedOutError(
            "the graph index needs hnswlib: pip install 'linkedout[serve]' (or use --index exact)"
        ) from exc
    return hnswlib


class GraphIndex:
    """HNSW (hnswlib) over the projected, L2-reduced keys of rows `0..N-1` of a key table."""

    def __init__(
        self,
        projection: Projection,
        graph,
        max_norm: float,
        settings: GraphSettings,
        lifted: bool = False,
    ):
        self.projection = projection
        self.graph = graph
        self.max_norm = max_norm
        self.settings = settings
        self.lifted = lifted
        """The keys end in a coordinate that is 1 for items without a trained ID vector, and
        users in the new-item lift they give such items (graph_scan.py): lifted items are in
        the graph like any other."""

    @classmethod
    def build(
        cls,
        keys: torch.Tensor,
        users: torch.Tensor,
        settings: GraphSettings = DEFAULT_SETTINGS,
        threads: int = 1,
        progress: Callable[[int], None] | None = None,
        lifted: bool = False,
    ) -> GraphIndex:
        """Links every row of `keys [N, W]` into a graph; `users`: real user vectors to fit
        the projection on; `progress(n)` after each n items linked in. Minutes at a million
        items: build it off the request path."""
        hnswlib = require_hnswlib()
        projection = Projection.fit(keys, users, settings.dims)
        projected = projection.keys(keys)
        max_norm = float(projected.norm(dim=1).max()) if len(projected) else 0.0
        graph = hnswlib.Index(space="l2", dim=projected.shape[1] + 1)
        graph.init_index(
            max_elements=max(len(keys), 1),
            M=settings.links,
            ef_construction=settings.build_breadth,
            random_seed=0,
        )
        reduced = _reduced_keys(projected, max_norm).numpy()
        for start in range(0, len(keys), CHUNK):
            part = reduced[start : start + CHUNK]
            graph.add_items(part, range(start, start + len(part)), num_threads=threads)
            if progress is not None:
                progress(len(part))
        graph.set_ef(max(settings.breadth, settings.candidates))
        graph.set_num_threads(1)
        return cls(projection, graph, max_norm, settings, lifted)

    @property
    def size(self) -> int:
        return self.graph.get_current_count()

    def candidates(self, users: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """`[B, c]` rows nearest each user `[B, W]` in the projected space, nearest first;
        c = min(count, size), count defaulting to the settings' `candidates`."""
        count = min(count or self.settings.candidates, self.size)
        if count == 0:
            return torch.empty(len(users), 0, dtype=torch.long)
        if count > self.graph.ef:
            self.graph.set_ef(count)
        projected = self.projection.users(users)
        reduced = torch.cat([projected, projected.new_zeros(len(projected), 1)], 1)
        labels, _ = self.graph.knn_query(reduced.numpy(), k=count)
        return torch.from_numpy(labels.astype("int64"))


def _reduced_keys(projected: torch.Tensor, max_norm: float) -> torch.Tensor:
    """`[k, sqrt(M^2 - |k|^2)]`: the distance to `[q, 0]` is then |q|^2 + M^2 - 2 q·k, so the
    nearest keys are those of the largest inner products."""
    extra = (max_norm**2 - projected.norm(dim=1) ** 2).clamp_min(0).sqrt()
    return torch.cat([projected, extra[:, None]], 1).contiguous()
