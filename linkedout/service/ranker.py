"""A trained run loaded once for many rankings: the model, the split's users, and the newest
snapshot of its catalog, swapped whole when catalog.lance gets a new version.

Every ranking reads `self.snapshot` once, so a batch is ranked against one catalog version even
if a swap happens meanwhile: no request sees half a catalog.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from linkedout.errors import LinkedOutError, SettingError
from linkedout.recommend.loaded_run import LoadedRun
from linkedout.service.graph_settings import INDEX_MODES, wanted
from linkedout.service.graph_store import StoredGraph, load_graph
from linkedout.service.results import Recommendation, Recommendations, user_history
from linkedout.service.snapshot import CatalogSnapshot, load_snapshot

log = logging.getLogger("linkedout.serve")


@dataclass(frozen=True)
class RankRequest:
    """One user to rank for: a watch history (oldest first) or a user of the run's split."""

    history: list[str] | None = None
    user: str | None = None
    k: int = 10
    exclude: list[str] = field(default_factory=list)
    """Item ids never to return (the history is never returned either)."""
    explain: bool = False


class RankRequestError(LinkedOutError):
    """A query that cannot be ranked; `index` is its place in the batch."""

    def __init__(self, index: int, message: str, unknown_user: bool = False):
        super().__init__(message)
        self.index = index
        self.unknown_user = unknown_user


POLL_OPTIONS = {"client_max_retries": "1", "client_retry_timeout": "5", "connect_timeout": "2s"}
"""Object-store client settings of the catalog polls (a published catalog's own options win):
a store out of reach fails a poll in seconds, not after the client's default minutes of
retries, so /readyz says so promptly; the next poll tries again anyway."""


class Ranker(LoadedRun):
    """A run served: its newest catalog snapshot, swapped whole on a new version."""

    def __init__(self, path: str | Path, new_item_lift: float | None = None, index: str = "exact"):
        """`new_item_lift`: rank with this instead of the run's own (None: the run's).
        `index`: exact, graph or auto (indexing.py): the run's stored graph index is used
        where the mode wants one; with none stored, rankings are exact until `use_graph`."""
        super().__init__(path, new_item_lift=new_item_lift)
        if index not in INDEX_MODES:
            raise SettingError("index", index, f"choose one of {', '.join(INDEX_MODES)}")
        self.index_mode = index
        newest = self.run.catalog_dataset()
        self.run.check_run_id(newest.path, newest.run_id, self.config.run_id)
        self._swap = threading.Lock()
        self.graph: StoredGraph | None = None
        if wanted(index, newest.num_rows - 1):
            try:
                self.graph = load_graph(self.run.path, self.config.run_id)
            except LinkedOutError:
                if index == "graph":
                    raise
                log.warning("exact scan: the graph index cannot be used", exc_info=True)
        self.snapshot: CatalogSnapshot = load_snapshot(self.model, newest, self.index, self.graph)

    def use_graph(self, stored: StoredGraph | None) -> None:
        """Rank through `stored` from the next ranking on (None: exactly)."""
        with self._swap:
            self.graph = stored
            self.snapshot = self.snapshot.with_graph(stored)

    def refresh(self) -> bool:
        """Swap in the newest catalog version if there is one; True if it swapped."""
        with self._swap:  # one loader at a time; rankings never wait for it
            newest = self.run.catalog_dataset(poll_options=POLL_OPTIONS)  # latest manifest only
            if newest.version == self.snapshot.version:
                return False
            self.snapshot = load_snapshot(self.model, newest, self.index, self.graph)
            return True

    def history_of(self, user: str, index: int = 0) -> list[str]:
        if user not in self.user_index:
            raise RankRequestError(
                index,
                f"user {user!r} is not in this run's interactions ({len(self.user_index):,} "
                "users): rank their history instead",
                unknown_user=True,
            )
        return user_history(self, user)

    def rank(self, requests: list[RankRequest]) -> list[Recommendations]:
        """Top-k of each query, all against one catalog version, users in one forward."""
        return self.rank_at(requests)[0]

    @torch.inference_mode()
    def rank_at(self, requests: list[RankRequest]) -> tuple[list[Recommendations], int]:
        """`rank`, and the catalog version it ranked against."""
        snap = self.snapshot
        histories = [
            q.history if q.user is None else self.history_of(q.user, b)
            for b, q in enumerate(requests)
        ]
        rows, unknown = [], []
        for b, history in enumerate(histories):
            rows.append([snap.index[i] for i in history if i in snap.index])
            unknown.append([i for i in history if i not in snap.index])
            if not rows[-1]:
                raise RankRequestError(
                    b,
                    f"none of the {len(history)} history item(s) is in the catalog "
                    f"(e.g. {history[0]!r}): send item ids the catalog holds",
                )
        h, gate = self._user_states(snap, rows)
        offsets = None if snap.new_items is None else self.model.lifts(h, snap.id_scale)
        masked = [
            [0, *known, *(snap.index[i] for i in q.exclude if i in snap.index)]  # 0: padding
            for q, known in zip(requests, rows, strict=True)
        ]
        k = max(q.k for q in requests)
        values, top = snap.top(self.model.user_vectors(h, gate), k, masked, offsets)
        results = [
            self._result(snap, q, history, missing, h[b], gate[b], top[b], values[b])
            for b, (q, history, missing) in enumerate(
                zip(requests, histories, unknown, strict=True)
            )
        ]
        return results, snap.version

    def _user_states(
        self, snap: CatalogSnapshot, rows: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's `encode`, reading item vectors from the snapshot's rows."""
        padded = self.pad(rows)
        flat = padded.reshape(-1)
        codes = snap.experts[flat] if snap.experts is not None else None
        ids = snap.id_vectors[flat] if snap.id_vectors is not None else None
        return self.model.encode(padded, codes, ids)

    def _result(
        self, snap, q: RankRequest, history, unknown, h, gate, rows, scores
    ) -> Recommendations:
        rows, scores = rows[: q.k], scores[: q.k]
        found = torch.isfinite(scores)
        rows, scores = rows[found], scores[found]
        explained = q.explain and self.model.content
        contributions = None
        if explained:
            experts = snap.experts[rows]
            contributions = self.model.expert_contributions(h[None], gate[None], experts)[0]
        items = []
        for j, (row, score) in enumerate(zip(rows.tolist(), scores.tolist(), strict=True)):
            item = snap.item_ids[row - 1]
            if contributions is None:
                items.append(Recommendation(item, score))
                continue
            per_layer = contributions[j].tolist()
            best = max(range(len(per_layer)), key=per_layer.__getitem__)
            items.append(Recommendation(item, score, self.experts[best], per_layer))
        gates = dict(zip(self.experts, gate.tolist(), strict=True)) if explained else {}
        return Recommendations(items, history, gates, unknown)
