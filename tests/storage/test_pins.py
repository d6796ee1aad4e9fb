"""Versions a run can pin: `linkedout tag`, `URI@TAG` / `URI@VERSION` wherever features are
read, tagged versions kept by `optimize`, and one line for a pin that is not there."""

from __future__ import annotations

import json

import pytest

from linkedout.errors import LinkedOutError
from linkedout.storage import FeatureStore, FeatureWriter
from linkedout.storage.maintenance import optimize
from linkedout.storage.pins import create_tag, delete_tag, split_pin
from linkedout.testing.factories import make_manifest, make_rows
from tests.cli_harness import assert_one_line_error, run_linkedout


def _store(uri, options=None, n=5):
    store = FeatureStore.create(uri, make_manifest(), options)
    with FeatureWriter(store, commit_every=100) as w:
        w.extend(make_rows(n, store.manifest))
    return FeatureStore.open(uri, options)


def _append(store, n, start):
    with FeatureWriter(store, commit_every=100) as w:
        w.extend(make_rows(n, store.manifest, start=start))


def test_a_pin_splits_off_only_after_the_last_slash():
    assert split_pin("/data/f.lance@7") == ("/data/f.lance", 7)
    assert split_pin("s3://b/f.lance@stable-2") == ("s3://b/f.lance", "stable-2")
    assert split_pin("s3://user@host/f.lance") == ("s3://user@host/f.lance", None)
    assert split_pin("/data/f.lance") == ("/data/f.lance", None)
    with pytest.raises(LinkedOutError, match="neither a version number nor a tag name"):
        split_pin("/data/f.lance@no!")


def test_a_tag_pins_a_version_that_reads_and_optimize_keep(tmp_path):
    uri = str(tmp_path / "f.lance")
    store = _store(uri)
    tagged = store.version
    proc = run_linkedout(["tag", uri, "first"])
    assert proc.returncode == 0, proc.stderr
    assert f"version {tagged} tagged first: train on it with --features {uri}@first" in proc.stdout
    _append(store, 3, start=5)
    middle = FeatureStore.open(uri).version  # 8 items, untagged
    _append(store, 2, start=8)
    store = FeatureStore.open(uri)
    assert len(store.ids()) == 10
    for pin in ("first", tagged):
        assert len(FeatureStore.open(f"{uri}@{pin}").ids()) == 5
    assert len(FeatureStore.open(uri, version=middle).ids()) == 8
    info = run_linkedout(["info", uri, "--json"])
    assert json.loads(info.stdout)["tags"] == {"first": tagged}

    optimize(store)  # prunes every old version but the tagged one
    assert len(FeatureStore.open(f"{uri}@first").ids()) == 5
    with pytest.raises(LinkedOutError, match=f"has no version {middle} \\(it keeps versions"):
        FeatureStore.open(f"{uri}@{middle}")
    with pytest.raises(LinkedOutError, match="has no tag 'nope' \\(its tags: first \\(version"):
        FeatureStore.open(f"{uri}@nope")
    assert_one_line_error(
        run_linkedout(["tag", uri, "first"]), "already has a tag 'first'", "--delete"
    )
    store = FeatureStore.open(uri)
    with pytest.raises(LinkedOutError, match=f"has no version {middle}"):
        create_tag(store.dataset, uri, "again", middle)
    with pytest.raises(LinkedOutError, match="must start with a letter"):
        create_tag(store.dataset, uri, "9lives", None)
    with pytest.raises(LinkedOutError, match="has no tag 'gone'"):
        delete_tag(store.dataset, uri, "gone")
    assert_one_line_error(run_linkedout(["optimize", f"{uri}@first"]), "not @first")

    assert delete_tag(store.dataset, uri, "first") == tagged
    optimize(FeatureStore.open(uri))  # nothing names it now: pruned
    with pytest.raises(LinkedOutError, match="has no tag 'first' \\(it has no tags"):
        FeatureStore.open(f"{uri}@first")


def test_tags_on_an_object_store(s3_bucket):
    bucket, options = s3_bucket
    uri = f"s3://{bucket}/f.lance"
    store = _store(uri, options)
    tagged = create_tag(store.dataset, uri, "base", None)
    assert tagged == store.version
    _append(store, 4, start=5)
    assert len(FeatureStore.open(f"{uri}@base", options).ids()) == 5
    assert FeatureStore.open(uri, options).info().tags == {"base": tagged}
