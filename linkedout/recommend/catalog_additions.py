"""Items joined to a trained run's catalog by their content alone: `linkedout catalog add` on a
finished run, and `linkedout train --catalog-features` as training ends (so a retrained run
keeps what was added to the one before it).

The items are embedded with the run's trained compressor and experts and appended to
catalog.lance in one commit (CatalogDataset.append: an interrupted add commits nothing).
They get no ID vector, so a content + IDs model ranks them by content (with its new-item
lift); version 1, what training wrote and evaluation ranks, is never rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog_dataset import CHUNK_ITEMS, CatalogDataset
from linkedout.recommend.run import RunConfig
from linkedout.storage import FeatureStore
from linkedout.storage.manifest import Manifest


@dataclass(frozen=True)
class CatalogChange:
    added: int = 0
    removed: int = 0
    already: int = 0
    """Items of the request that were already in (add) or already out of (remove) the catalog."""
    version: int = 0
    """catalog.lance's version after the change (unchanged if nothing changed)."""
    size: int = 0
    """Live items after the change."""


def open_additions(
    uri: str, manifest: dict, layers: list[int], storage_options: dict[str, str] | None = None
) -> FeatureStore:
    """The feature dataset at `uri`, refused in one line unless it was extracted the way
    `manifest` (the run's features') says: same model and pooling, and the depths `layers`
    the run reads among its own (a run trained on a subset of depths takes new uploads
    extracted with all of them)."""
    store = FeatureStore.open(uri, storage_options)
    differences = Manifest.from_json(json.dumps(manifest)).mismatches(store.manifest, layers)
    if differences:
        raise LinkedOutError(
            f"{uri} was not extracted the way this run's features were ("
            + "; ".join(differences)
            + "): extract the new items with the same model, layers and pooling"
        )
    return store


def add_to_catalog(
    catalog: CatalogDataset,
    model,
    config: RunConfig,
    store: FeatureStore,
    on_progress: Callable[[int, int], None] | None = None,
) -> CatalogChange:
    """Embed every item of `store` that `catalog` lacks with `model` (reading the run's
    depths, queries and slots) and append them in one commit."""
    present = catalog.live_ids()
    stored = store.ids()
    new = [i for i in stored if i not in present]
    if not new:
        return CatalogChange(already=len(stored), version=catalog.version, size=len(present))

    @torch.inference_mode()
    def experts() -> Iterator[torch.Tensor]:
        slots = tuple(config.slots) if config.slots else None
        for start in range(0, len(new), CHUNK_ITEMS):
            ids = new[start : start + CHUNK_ITEMS]
            yield model.item_experts(store.read_queries(ids, config.layers, config.queries, slots))
            if on_progress is not None:
                on_progress(start + len(ids), len(new))

    return CatalogChange(
        added=len(new),
        already=len(stored) - len(new),
        version=catalog.append(new, experts()),
        size=len(present) + len(new),
    )
