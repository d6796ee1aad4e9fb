"""The one interface both engines implement, so `pipeline.extract` plans, resumes and writes
the same way whichever runs the steps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linkedout.extract.discover import CatalogItem
from linkedout.storage import FailedItem, FeatureRow, Manifest


class Engine(Protocol):
    manifest: Manifest
    """What the rows it yields are, checked against the store before any item is read."""

    def rows(self, todo: list[tuple[CatalogItem, str]]) -> Iterator[FeatureRow | FailedItem]:
        """One row or failure per (item, content hash), in any order."""
        ...
