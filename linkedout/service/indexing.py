"""When a run ranks through its graph index, and building one: for `linkedout catalog index`
(now, with progress) and `linkedout serve` (in the background, serving exactly meanwhile).

`--index auto` ranks through the graph from GRAPH_AUTO_MIN_ITEMS (200,000) items on, where the
exact scan stops being cheap (README, serving: at 19,220 items the exact scan takes 0.5 ms and
the graph saves nothing; at a million it takes 31 ms); `exact` never; `graph` at any size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from linkedout.errors import SettingError, first_line
from linkedout.recommend.run_lock import RunLock
from linkedout.service.graph import GraphIndex
from linkedout.service.graph_settings import DEFAULT_SETTINGS, GraphSettings, wanted
from linkedout.service.graph_store import (
    FIT_USERS,
    StoredGraph,
    graph_folder,
    load_graph,
    save_graph,
    stored_version,
)

if TYPE_CHECKING:
    from linkedout.service.ranker import Ranker
    from linkedout.service.snapshot import CatalogSnapshot

log = logging.getLogger("linkedout.serve")

REBUILD_SHARE = 0.05
"""A served graph is rebuilt once the items beside it (added since, scanned exactly) or the
items it holds that were removed since pass this share of it."""


def stale(snapshot: CatalogSnapshot) -> bool:
    """The snapshot's graph misses too much of its catalog (or it has none): items added
    since that a new graph would hold, or items removed since, past REBUILD_SHARE of it."""
    graph = snapshot.graph
    if graph is None:
        return True
    size = max(len(graph.label_rows), 1)
    return max(graph.unbuilt, graph.removed) > REBUILD_SHARE * size


@torch.inference_mode()
def user_sample(ranker: Ranker, snapshot: CatalogSnapshot, count: int = FIT_USERS) -> torch.Tensor:
    """The vectors `[U, W]` of a seeded sample of the run's users, ranked against `snapshot`:
    what a graph's projection is fitted on (with a last coordinate, the lift each gives new
    items, where the model lifts them: `CatalogSnapshot.graph_rows`)."""
    users = ranker.split.users
    g = torch.Generator().manual_seed(0)
    chosen = torch.randperm(len(users), generator=g)[:count].tolist()
    rows = []
    for u in chosen:
        known = [snapshot.index[i] for i in ranker.history_of(users[u]) if i in snapshot.index]
        if known:
            rows.append(known)
    vectors = []
    for at in range(0, len(rows), 256):
        h, gate = ranker._user_states(snapshot, rows[at : at + 256])
        users = ranker.model.user_vectors(h, gate).float()
        if snapshot.new_items is not None:
            lifts = ranker.model.lifts(h, snapshot.id_scale).float()
            users = torch.cat([users, lifts[:, None]], 1)
        vectors.append(users)
    width = snapshot.keys.shape[1] + (snapshot.new_items is not None)
    return torch.cat(vectors) if vectors else torch.empty(0, width)


def graph_lock(run) -> RunLock:
    """One graph build per run at a time (`catalog index`, or a server's)."""
    return RunLock(graph_folder(run).with_name("graph.lock"), "catalog index")


def build_for(
    ranker: Ranker,
    snapshot: CatalogSnapshot,
    settings: GraphSettings = DEFAULT_SETTINGS,
    threads: int = 1,
    progress: Callable[[int], None] | None = None,
) -> StoredGraph:
    """A graph over `snapshot`'s live items, saved in the run (with the lift's coordinate
    where the snapshot lifts new items: `CatalogSnapshot.graph_rows`). One build per run at a
    time (another is one line naming it)."""
    keys, items = snapshot.graph_rows()
    if settings.dims > keys.shape[1]:
        width = keys.shape[1]
        raise SettingError(
            "dims", settings.dims, f"this run's keys are {width} wide: project to at most {width}"
        )
    lock = graph_lock(ranker.run.path)
    lock.acquire()
    try:
        start = time.perf_counter()
        index = GraphIndex.build(
            keys,
            user_sample(ranker, snapshot),
            settings,
            threads=threads,
            progress=progress,
            lifted=snapshot.new_items is not None,
        )
        stored = StoredGraph(
            index,
            items,
            snapshot.version,
            ranker.config.run_id,
            time.perf_counter() - start,
        )
        save_graph(ranker.run.path, stored)
    finally:
        lock.release()
    return stored


class BackgroundBuilds:
    """One graph build at a time, off the request path; the ranker takes the graph when it is
    done, so rankings go exact -> graph (or old graph -> new) between two requests."""

    def __init__(self, ranker: Ranker, mode: str, threads: int = 1):
        self.ranker, self.mode, self.threads = ranker, mode, threads
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self._failed_version: int | None = None  # not retried on every poll

    @property
    def building(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> bool:
        """Starts a build if the current snapshot wants one and none runs; True if started.
        A graph another process saved meanwhile (`catalog index`, another worker) is taken
        instead when it is newer than the one in use."""
        snap = self.ranker.snapshot
        if self.building or not wanted(self.mode, snap.size) or not stale(snap):
            return False
        if snap.version == self._failed_version or self._take_saved(snap):
            return False
        self._thread = threading.Thread(
            target=self._build, args=(snap,), name="linkedout-graph-build", daemon=True
        )
        self._thread.start()
        return True

    def _take_saved(self, snap: CatalogSnapshot) -> bool:
        in_use = -1 if snap.graph is None else snap.graph.catalog_version
        saved = stored_version(self.ranker.run.path)  # meta.json only: no graph read for nothing
        if saved is None or saved <= in_use:
            return False
        try:
            saved = load_graph(self.ranker.run.path, self.ranker.config.run_id)
        except Exception:  # damaged or another run's: a build replaces it
            return False
        if saved is None:
            return False
        self.ranker.use_graph(saved)
        log.info("graph index over catalog version %d taken from disk", saved.catalog_version)
        return not stale(self.ranker.snapshot)

    def _build(self, snap: CatalogSnapshot) -> None:
        if graph_lock(self.ranker.run.path).holder_alive():
            return  # another process builds: its graph is taken from disk when saved
        start = time.perf_counter()
        log.info("building the graph index over catalog version %d", snap.version)
        try:
            stored = build_for(self.ranker, snap, threads=self.threads)
        except Exception as e:  # keep serving as before; /metadata says why
            self.error = first_line(e, 300)
            self._failed_version = snap.version
            log.warning("graph index not built: %s", self.error)
            return
        self.error = None
        self.ranker.use_graph(stored)
        log.info(
            "graph index over catalog version %d in use (%d items, built in %.1f s)",
            snap.version,
            len(stored.items),
            time.perf_counter() - start,
        )
