"""Datasets older LinkedOut versions wrote: no primary-key metadata, and duplicate rows left by
two unsharded runs. Reads use one row per item, `info` says so, `optimize` repairs them."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import torch
from typer.testing import CliRunner

from linkedout.cli import app
from linkedout.storage import FailedItem, FeatureStore, FeatureWriter
from linkedout.storage.columns import declares_primary_key
from linkedout.storage.maintenance import optimize
from linkedout.testing.factories import (
    content_hash,
    item_tokens,
    make_manifest,
    make_row,
    make_rows,
)
from tests.storage._legacy import old_append

runner = CliRunner()
EARLY = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _at(row, when):
    return replace(row, extracted_at=when)


@pytest.fixture
def doubled(tmp_path):
    """7 items, 5 extra rows: 4 identical copies, a later failure beside a good row (the good
    row must win) and a re-extraction with new content (the later must win); plus one item that
    only failed, twice."""
    m = make_manifest()
    uri = tmp_path / "old.lance"
    first = [_at(r, EARLY) for r in make_rows(6, m)]
    old_append(uri, [*first, FailedItem("broken", "no video stream", "h", "/v/broken.avi")], m)
    again = [_at(r, EARLY) for r in make_rows(4, m)]
    late = EARLY + timedelta(days=1)
    old_append(
        uri,
        [
            *again,
            _at(FailedItem("item00004", "out of memory", content_hash("item00004")), late),
            _at(make_row("item00005", m, version=1), late),
            FailedItem("broken", "no video stream", "h", "/v/broken.avi"),
        ],
        m,
    )
    return FeatureStore.open(uri)


def _expected(store):
    return {
        f"item{i:05d}": item_tokens(f"item{i:05d}", store.manifest, 1 if i == 5 else 0)
        for i in range(6)
    }


def test_duplicates_are_read_once_and_reported(doubled):
    assert doubled.dataset.count_rows() == 14
    want = _expected(doubled)
    ids, tokens = doubled.load()
    assert sorted(ids) == sorted(want) and ids == doubled.ids()
    for item_id, t in zip(ids, tokens):
        assert torch.equal(t, want[item_id]), item_id
    assert torch.equal(doubled.read_tokens(["item00005"])[0], want["item00005"])
    batches = list(doubled.iter_batches(batch_size=4))
    assert [i for b, _ in batches for i in b] == ids
    assert doubled.status(["item00004"])["item00004"].ok  # the good row, not the failure
    assert [f.item_id for f in doubled.failures()] == ["broken"]
    info = doubled.info()
    assert (info.rows, info.failures, info.duplicates) == (6, 1, 7)
    assert info.to_json()["duplicate_rows"] == 7

    shown = runner.invoke(app, ["info", doubled.uri])
    assert shown.exit_code == 0, shown.output
    assert "7 duplicate row(s)" in shown.output
    # rich wraps the line at the terminal's width, a long path mid-word included
    assert f"linkedoutoptimize{doubled.uri}" in "".join(shown.output.split())
    as_json = runner.invoke(app, ["info", doubled.uri, "--json"])
    assert json.loads(as_json.output)["duplicate_rows"] == 7


def test_optimize_keeps_one_row_per_item_with_its_data(doubled):
    version = doubled.version
    report = optimize(doubled)
    assert report.duplicates_removed == 7 and report.fragments_after == 1
    table = doubled.dataset.to_table(columns=["item_id", "error", "content_sha256"])
    assert sorted(table.column("item_id").to_pylist()) == sorted([*_expected(doubled), "broken"])
    want = _expected(doubled)
    assert torch.equal(doubled.read_tokens(list(want)), torch.stack(list(want.values())))
    row5 = doubled.dataset.to_table(filter="item_id = 'item00005'").to_pylist()[0]
    assert row5["content_sha256"] == content_hash("item00005", 1)
    assert doubled.info().duplicates == 0 and doubled.version > version
    assert runner.invoke(app, ["optimize", doubled.uri]).output.count("removed") == 0


def test_optimize_command_says_how_many_duplicates_it_removed(doubled):
    result = runner.invoke(app, ["optimize", doubled.uri])
    assert result.exit_code == 0, result.output
    assert "7 duplicate row(s) removed" in result.output


def test_an_old_dataset_is_read_as_is_and_declares_its_key_on_first_write(tmp_path):
    m = make_manifest()
    uri = tmp_path / "old.lance"
    old_append(uri, make_rows(3, m), m)
    store = FeatureStore.open(uri)
    version = store.version
    assert not declares_primary_key(store.dataset.schema)
    assert len(store) == 3 and store.load()[1].shape == (3, *m.shape)
    assert store.version == version  # reading writes nothing

    store = FeatureStore.open_or_create(uri, m)
    assert declares_primary_key(store.dataset.schema)
    assert store.version == version + 1  # one metadata commit
    assert store.dataset.get_fragments()[0].data_files() == (
        FeatureStore.open(uri, version=version).dataset.get_fragments()[0].data_files()
    )  # no data rewritten
    assert store.manifest == FeatureStore.open(uri).manifest
    with FeatureWriter(store, commit_every=2) as w:
        w.extend(make_rows(5, m))  # 3 stored, 2 new
    assert (w.stats.skipped, w.stats.written) == (3, 2)
    ids = store.dataset.to_table(columns=["item_id"]).column(0).to_pylist()
    assert sorted(ids) == [f"item{i:05d}" for i in range(5)]
