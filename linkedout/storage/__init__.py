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
from linkedout.storage.store import FeatureStore, StoreInfo
from linkedout.storage.writer import FeatureWriter, WriteStats

__all__ = [
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
