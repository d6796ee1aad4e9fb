"""The peers' item vectors: one row per item of the split's items.tsv, read from the feature
dataset LinkedOut trains on (the last depth's mean slot), and traceable to that items.tsv."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from benchmarks.peers import item_vectors
from linkedout.errors import LinkedOutError
from linkedout.storage import FeatureStore, FeatureWriter
from linkedout.testing.factories import item_tokens, make_manifest, make_rows


@pytest.fixture
def store_and_split(tmp_path):
    manifest = make_manifest()
    store = FeatureStore.create(tmp_path / "f.lance", manifest)
    with FeatureWriter(store) as w:
        w.extend(make_rows(5, manifest))
    split = tmp_path / "split"
    split.mkdir()
    # items.tsv in an order other than the store's: the vectors follow items.tsv
    items = ["item00003", "item00000", "item00004"]
    (split / "items.tsv").write_text("item\n" + "\n".join(items) + "\n")
    return tmp_path / "f.lance", split, items, manifest


def test_vectors_are_the_last_depths_slot_in_items_tsv_order(store_and_split, tmp_path):
    features, split, items, manifest = store_and_split
    meta = item_vectors.export(str(features), split, tmp_path / "out" / "vectors")
    vectors = np.load(tmp_path / "out" / "vectors.npy")
    want = np.stack([item_tokens(i, manifest)[-1, 0].float().numpy() for i in items])
    np.testing.assert_array_equal(vectors, want)
    assert vectors.dtype == np.float32 and vectors.shape == (3, manifest.hidden_size)
    written = json.loads((tmp_path / "out" / "vectors.json").read_text())
    assert written == meta
    assert meta["layer"] == manifest.layers[-1] and meta["slot"] == 0
    assert meta["items_sha256"] == hashlib.sha256((split / "items.tsv").read_bytes()).hexdigest()


def test_a_slot_the_dataset_lacks_is_refused(store_and_split, tmp_path):
    features, split, _, manifest = store_and_split
    with pytest.raises(LinkedOutError, match="slots 0..3"):
        item_vectors.export(str(features), split, tmp_path / "v", slot=manifest.tokens_per_layer)
    assert not (tmp_path / "v.npy").exists()
