"""Subsets: `export --layers --queries --items --where` write only what they keep, as a feature
dataset whose manifest names its source; training on one equals training on the full dataset
with the same --layers and --queries."""

from __future__ import annotations

import json

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.recommend.catalog_dataset import CatalogDataset
from linkedout.service.catalog_changes import add_items
from linkedout.storage import FailedItem, FeatureRow, FeatureStore, FeatureWriter, export
from linkedout.storage.subset import Subset
from linkedout.testing.factories import make_manifest, make_rows
from tests.cli_harness import assert_one_line_error, run_linkedout, tree_digest
from tests.recommend.planted import make_planted, train_planted


@pytest.fixture
def source(tmp_path):
    """Three depths, two queries (the second's column holds its own 2 of 4 slots), 6 items
    and a failure; item00005 has no slots for the second query yet."""
    manifest = make_manifest(
        prompt="first?", queries=(("first", "first?"), ("second", "second?")), query_slots=2
    )
    store = FeatureStore.create(tmp_path / "src.lance", manifest)
    rows = make_rows(6, manifest)
    with FeatureWriter(store, commit_every=100) as w:
        for i, row in enumerate(rows):
            second = {} if i == 5 else {"second": torch.full((3, 2, 8), float(i)).half()}
            w.add(FeatureRow(row.item_id, row.tokens, row.content_sha256, queries=second))
        w.add(FailedItem("broken", "no video stream", "hb", "/v/broken.avi"))
    return FeatureStore.open(store.uri)


def test_a_subset_keeps_the_depths_queries_and_items_asked_for(source, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# the team's slice\nitem00004\nitem00001\n\nbroken\nitem00005\n")
    proc = run_linkedout(
        ["export", source.uri, tmp_path / "part.lance", "--layers", "4,0", "--items", ids]
    )
    assert proc.returncode == 0, proc.stderr
    assert "exported 3 items" in proc.stdout and "a subset: depths 0,4" in proc.stdout
    part = FeatureStore.open(tmp_path / "part.lance")
    m = part.manifest
    assert m.layers == (0, 4)  # stored order, whatever order was asked
    assert m.queries == source.manifest.queries and m.query_slots == 2
    assert m.provenance["subset_of"] == f"{source.uri}@{source.version}"
    assert "3 items from" not in m.provenance["subset"]  # it counts what the file names
    assert "4 items from" in m.provenance["subset"]
    assert m.mismatches(source.manifest) == [
        "layers: stored [0, 4], new [0, 2, 4]"
    ]  # provenance is not compared
    assert sorted(part.ids()) == ["item00001", "item00004", "item00005"]
    assert [f.item_id for f in part.failures()] == ["broken"]
    want = ["item00005", "item00001", "item00004"]
    assert torch.equal(part.read_tokens(want), source.read_tokens(want, layers=[0, 4]))
    both = part.read_queries(["item00001"], [4], ["second", "first"])
    assert torch.equal(both, source.read_queries(["item00001"], [4], ["second", "first"]))
    assert part.query_nulls("second") == 1  # item00005 still has no slots for it
    card = (tmp_path / "part.lance" / "README.md").read_text()
    assert f"Exported from {source.uri} (version {source.version}), a subset: depths 0,4" in card
    assert len(part.dataset.describe_indices()) == 1  # the item_id index


def test_a_subset_of_one_query_and_a_filter_to_s3(source, s3_bucket):
    bucket, options = s3_bucket
    dest = f"s3://{bucket}/first-only.lance"
    subset = Subset(queries=("first",), where="error IS NULL AND item_id >= 'item00003'")
    copy = export(source.uri, dest, dest_options=options, subset=subset)
    remote = FeatureStore.open(dest, options)
    assert remote.manifest.queries == (("first", "first?"),) and remote.manifest.query_slots is None
    assert "query_second" not in remote.dataset.schema.names
    assert sorted(remote.ids()) == ["item00003", "item00004", "item00005"]
    assert remote.failures() == [] and len(copy) == 3
    assert torch.equal(remote.load()[1], source.read_tokens(remote.ids()))


def test_training_on_a_subset_equals_training_on_the_full_dataset(tmp_path):
    planted = make_planted(tmp_path / "data", items=96, users=120, queries=("look", "ask"))
    subset = Subset(layers=(4, 8), queries=("ask",))
    export(planted.features, tmp_path / "sub.lance", subset=subset)
    full = train_planted(
        planted, tmp_path / "full", epochs=2, layers=[8, 4], queries=["ask"], patience=5
    )
    import dataclasses

    cut = dataclasses.replace(planted, features=tmp_path / "sub.lance")
    part = train_planted(cut, tmp_path / "part", epochs=2, queries=["ask"], patience=5)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((part / "metrics.json").read_text())
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
    assert json.loads((part / "config.json").read_text())["layers"] == [4, 8]

    # New uploads extracted with every depth join the catalog of the run trained on the subset,
    # scored as the full-dataset run scores them.
    store = FeatureStore.open(planted.features)
    ids = store.ids()[:3]
    own = store.read_queries(ids, list(store.manifest.layers), ["ask"])[:, :, 2:]
    uploads = FeatureStore.create(tmp_path / "uploads.lance", store.manifest)
    with FeatureWriter(uploads, commit_every=100) as w:
        for i, item in enumerate(ids):
            tokens = store.read_tokens([item])[0]
            w.add(FeatureRow(f"up{i}", tokens, f"up{i}", queries={"ask": own[i]}))
    for run in (full, part):
        assert add_items(run, uploads.uri).added == 3
    live = [CatalogDataset(run / "catalog.lance").live() for run in (full, part)]
    assert live[0][0] == live[1][0] and live[0][0][-3:] == ["up0", "up1", "up2"]
    assert torch.equal(live[0][1], live[1][1])


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--layers", "3"], ["layers [3] are not stored", "holds layers [0, 2, 4]"]),
        (["--layers", "2,x"], ["--layers '2,x'", "write stored depths as 4,8"]),
        (["--queries", "third"], ["holds no query 'third'", "first, second"]),
        (["--where", "itm_id = 'a'"], ["--where", "is not a filter", "itm_id"]),
        (["--items", "{ids}"], ["--items names 1 item(s)", "'nope'"]),
        (["--items", "{ids}", "--where", "error IS NULL"], ["not both"]),
        (["--items", "{missing}"], ["cannot read --items"]),
    ],
)
def test_a_bad_subset_is_one_line_and_writes_nothing(source, tmp_path, extra, fragments):
    ids = tmp_path / "ids.txt"
    ids.write_text("item00001\nnope\n")
    extra = [a.format(ids=ids, missing=tmp_path / "none.txt") for a in extra]
    before = tree_digest(source.uri)
    dest = tmp_path / "out.lance"
    assert_one_line_error(run_linkedout(["export", source.uri, dest, *extra]), *fragments)
    assert not dest.exists() and tree_digest(source.uri) == before


def test_an_unfinished_query_is_refused_by_name(source, tmp_path):
    from dataclasses import replace

    unfinished = replace(source.manifest, queries=(*source.manifest.queries, ("third", "third?")))
    source.write_manifest(unfinished)  # as an extract stopped before the column is committed
    with pytest.raises(LinkedOutError, match="query 'third' of .* was never finished"):
        export(source.uri, tmp_path / "x.lance", subset=Subset(queries=("third",)))
    copy = export(source.uri, tmp_path / "y.lance", subset=Subset(layers=(2,)))
    assert [n for n, _ in copy.manifest.queries] == ["first", "second"]  # not the unfinished
