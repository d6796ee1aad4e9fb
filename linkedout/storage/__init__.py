"""The artifact both stages share: a Lance dataset of `[layers, tokens, dim]` item tensors."""

from linkedout.storage.features import (
    InMemoryFeatures,
    ItemFeatures,
    StreamingFeatures,
    item_loader,
    open_features,
)
from linkedout.storage.manifest import FORMAT_VERSION, Manifest
from linkedout.storage.rows import FailedItem, FeatureRow, sha256_file, sha256_text
from linkedout.storage.share import dataset_card, export
from linkedout.storage.status import StoreInfo
from linkedout.storage.store import FeatureStore
from linkedout.storage.writer import COMMIT_EVERY, FeatureWriter, WriteStats

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
    "sha256_file",
    "sha256_text",
]
