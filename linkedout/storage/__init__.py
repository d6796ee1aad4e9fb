"""The artifact both stages share: a Lance dataset of `[layers, tokens, dim]` item tensors.

The names below load on first use (PEP 562), so a command that only parses its options (or
`--help`) does not import torch and Lance.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "COMMIT_EVERY": "defaults",
    "FORMAT_VERSION": "manifest",
    "FailedItem": "rows",
    "FeatureRow": "rows",
    "FeatureStore": "store",
    "FeatureWriter": "writer",
    "InMemoryFeatures": "features",
    "ItemFeatures": "features",
    "Manifest": "manifest",
    "StoreInfo": "status",
    "StreamingFeatures": "features",
    "WriteStats": "writer",
    "dataset_card": "card",
    "export": "share",
    "item_loader": "features",
    "open_features": "features",
    "optimize": "maintenance",
    "sha256_file": "rows",
    "sha256_text": "rows",
}
__all__ = [
    "COMMIT_EVERY",
    "FORMAT_VERSION",
    "FailedItem",
    "FeatureRow",
    "FeatureStore",
    "FeatureWriter",
    "InMemoryFeatures",
    "ItemFeatures",
    "Manifest",
    "StoreInfo",
    "StreamingFeatures",
    "WriteStats",
    "dataset_card",
    "export",
    "item_loader",
    "open_features",
    "optimize",
    "sha256_file",
    "sha256_text",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from linkedout.storage.card import dataset_card
    from linkedout.storage.defaults import COMMIT_EVERY
    from linkedout.storage.features import (
        InMemoryFeatures,
        ItemFeatures,
        StreamingFeatures,
        item_loader,
        open_features,
    )
    from linkedout.storage.maintenance import optimize
    from linkedout.storage.manifest import FORMAT_VERSION, Manifest
    from linkedout.storage.rows import FailedItem, FeatureRow, sha256_file, sha256_text
    from linkedout.storage.share import export
    from linkedout.storage.status import StoreInfo
    from linkedout.storage.store import FeatureStore
    from linkedout.storage.writer import FeatureWriter, WriteStats
