"""What a server process holds between requests: the run once loaded, the batcher that merges
concurrent rankings, and the thread that swaps in new catalog versions."""

from __future__ import annotations

import gc
import logging
import threading

from linkedout.errors import first_line
from linkedout.service.batching import Batcher
from linkedout.service.config import ServeConfig
from linkedout.service.indexing import BackgroundBuilds
from linkedout.service.ranker import Ranker

log = logging.getLogger("linkedout.serve")


class ServiceError(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        index: int = 0,
    ):
        self.status, self.detail, self.headers = status, detail, headers
        self.index = index  # the request of a batch it is about


class Service:
    """What the endpoints share: the ranker once loaded, and the thread that watches for
    new catalog versions."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.ranker: Ranker | None = None
        self.builds: BackgroundBuilds | None = None
        """Graph index builds in the background (`--index graph`, or `auto` on large
        catalogs), serving exactly or through the old graph until one is done."""
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self.catalog_error: str | None = None
        """Why the newest catalog version could not be read (a store out of reach, a bad
        version), while the one loaded is still served; None once a check succeeds."""
        self.stop = threading.Event()

    def load_and_watch(self) -> None:
        try:
            ranker = Ranker(self.config.run, self.config.new_item_lift, self.config.index)
        except Exception as e:  # reported by /readyz and every ranking, never raised
            self.load_error = first_line(e, 300)
            log.error("could not load %s: %s", self.config.run, self.load_error)
            return
        _freeze_heap()
        self.batcher = Batcher(ranker.rank_at, self.config.max_batch)
        self.ranker = ranker  # last: once a request sees the ranker, the batcher is there
        snap = ranker.snapshot
        log.info(
            "ready: %s, catalog version %d (%d items), %s",
            self.config.run,
            snap.version,
            snap.size,
            "through its graph index" if snap.graph is not None else "exact scan",
        )
        # One thread builds: the other cores keep answering.
        self.builds = BackgroundBuilds(ranker, self.config.index, threads=1)
        self.builds.check()
        while not self.stop.wait(self.config.poll_seconds):
            try:
                swapped = self.ranker.refresh()
            except Exception as e:  # a bad new version, a store out of reach: keep serving
                error = first_line(e, 300)
                if error != self.catalog_error:  # once, not every poll
                    log.warning("catalog version not swapped in: %s", error)
                self.catalog_error = error
                continue
            if self.catalog_error is not None:
                log.info("catalog readable again")
            self.catalog_error = None
            if swapped:
                _freeze_heap()
                snap = self.ranker.snapshot
                log.info("catalog version %d swapped in (%d items)", snap.version, snap.size)
                self.builds.check()

    def ready(self) -> Ranker:
        if self.ranker is not None:
            return self.ranker
        if self.load_error is not None:
            raise ServiceError(503, f"the run could not be loaded: {self.load_error}")
        raise ServiceError(503, "the run is still loading: retry shortly", {"Retry-After": "1"})


def _freeze_heap() -> None:
    """Keeps the loaded run out of Python's cyclic garbage collector. A loaded run is some
    250,000 objects (the split's histories, the catalog's ids) that live as long as the process,
    and every full collection walks them all: 150 ms with the GIL held, on MicroLens-50K, which
    was the service's p99 under load. Frozen, they are never walked; they are still freed by
    reference counting when a catalog swap drops them. Young garbage goes first (generations
    0-1: cheap), so little of it is frozen for good."""
    gc.collect(1)
    gc.freeze()
