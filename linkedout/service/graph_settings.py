"""The graph index's settings, apart from the index (graph.py) so that the CLI can build its
options without importing torch."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from linkedout.recommend.config import GRAPH_AUTO_MIN_ITEMS, IndexMode
from linkedout.settings import at_least

INDEX_MODES = typing.get_args(IndexMode)


def wanted(mode: str, size: int) -> bool:
    """Whether rankings of a catalog of `size` items go through a graph under `--index mode`."""
    return mode == "graph" or (mode == "auto" and size >= GRAPH_AUTO_MIN_ITEMS)


@dataclass(frozen=True)
class GraphSettings:
    """How the graph is built and searched (defaults chosen on `benchmarks/ann.py`'s 1M
    catalogs: README, serving)."""

    dims: int = 32
    """Numbers per item the graph links by (the keys projected to the users' main
    directions)."""
    links: int = 16
    """HNSW's M: links per item (memory: about 8 x links bytes an item, beside 4 x (dims + 1)
    for the projected keys)."""
    build_breadth: int = 100
    """HNSW's ef_construction: candidates weighed when an item is linked in."""
    breadth: int = 1000
    """HNSW's ef when searching (at least --candidates): more finds more of the true top k,
    slower."""
    candidates: int = 800
    """Items the graph returns per user, each scored exactly with its full key; the best k of
    them (less the user's history and exclusions) are the answer."""

    def __post_init__(self) -> None:
        at_least(self, "dims", 1, "project to at least 1 number")
        at_least(self, "links", 2, "link each item to at least 2 others")
        at_least(self, "build_breadth", 1, "weigh at least 1 candidate")
        at_least(self, "candidates", 1, "take at least 1 candidate")
        at_least(self, "breadth", self.candidates, "search at least as broadly as --candidates")


DEFAULT_SETTINGS = GraphSettings()
