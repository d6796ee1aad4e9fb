"""The one interface both engines implement, so `pipeline.extract` plans, resumes and writes
the same way whichever runs the steps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from linkedout.extract.discover import CatalogItem
from linkedout.extract.steps import ExtractPlan
from linkedout.storage import FailedItem, FeatureRow, Manifest


class Engine(Protocol):
    manifest: Manifest
    """What the rows it yields are, checked against the store before any item is read."""
    plan: ExtractPlan
    """What every item is asked; the run widens its queries to the dataset's."""

    def rows(
        self, todo: list[tuple[CatalogItem, str]], plan: ExtractPlan | None = None
    ) -> Iterator[FeatureRow | FailedItem]:
        """One row or failure per (item, content hash), in any order, under `plan` (default:
        the engine's)."""
        ...
