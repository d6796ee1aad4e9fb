"""`linkedout merge`: datasets of one manifest become one, each item in one row; features beat
failures, the same bytes are one item, a real clash is refused unless --prefer decides; the
result is verified."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.storage import FailedItem, FeatureStore, FeatureWriter
from linkedout.storage.merge import merge
from linkedout.storage.verify import verify
from linkedout.testing.factories import item_tokens, make_manifest, make_row
from tests.cli_harness import assert_one_line_error, run_linkedout, tree_digest

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _dataset(uri, rows, options=None, manifest=None):
    store = FeatureStore.create(uri, manifest or make_manifest(), options)
    with FeatureWriter(store, commit_every=100) as w:
        w.extend(rows)
    return FeatureStore.open(uri, options)


def _row(item, version=0, day=0):
    row = make_row(item, make_manifest(), version)
    return replace(row, extracted_at=T0 + timedelta(days=day))


@pytest.fixture
def halves(tmp_path):
    """Two clusters' outputs: a0-a3 and b0-b3, both holding `shared` (same bytes), and `flaky`
    (failed on the first, extracted on the second)."""
    a = _dataset(
        tmp_path / "a.lance",
        [*(_row(f"a{i}") for i in range(4)), _row("shared"), FailedItem("flaky", "timeout")],
    )
    b = _dataset(
        tmp_path / "b.lance",
        [*(_row(f"b{i}", day=1) for i in range(4)), _row("shared"), _row("flaky")],
    )
    return a, b


def test_two_halves_become_one_dataset_with_one_row_per_item(halves, tmp_path):
    a, b = halves
    out = tmp_path / "all.lance"
    proc = run_linkedout(["merge", a.uri, b.uri, "--out", out])
    assert proc.returncode == 0, proc.stderr
    assert "10 items (10 rows written, 2 items found in several inputs resolved)" in proc.stdout
    merged = FeatureStore.open(out)
    assert sorted(merged.ids()) == sorted(
        [*(f"a{i}" for i in range(4)), *(f"b{i}" for i in range(4)), "shared", "flaky"]
    )
    assert merged.failures() == [] and merged.duplicate_rows() == 0
    assert torch.equal(merged.read_tokens(["flaky"])[0], item_tokens("flaky", merged.manifest))
    assert merged.manifest.provenance["merged_from"] == f"{a.uri}@{a.version}, {b.uri}@{b.version}"
    assert verify(merged).ok and verify(merged).verified == 10


def test_a_clash_is_refused_unless_a_rule_decides(halves, tmp_path):
    a, b = halves
    newer = _dataset(tmp_path / "c.lance", [_row("a1", version=1, day=5), _row("c0", day=5)])
    out = tmp_path / "all.lance"
    before = [tree_digest(s.uri) for s in (a, newer)]
    assert_one_line_error(
        run_linkedout(["merge", a.uri, newer.uri, "-o", out]),
        "1 item(s) hold different features in two inputs (a1)",
        "--prefer newest",
    )
    assert not out.exists() and [tree_digest(s.uri) for s in (a, newer)] == before
    first = merge([a.uri, newer.uri], str(tmp_path / "first.lance"), prefer="first")
    newest = merge([a.uri, newer.uri], str(tmp_path / "newest.lance"), prefer="newest")
    m = first.store.manifest
    assert torch.equal(first.store.read_tokens(["a1"])[0], item_tokens("a1", m, 0))
    assert torch.equal(newest.store.read_tokens(["a1"])[0], item_tokens("a1", m, 1))
    assert len(newest.store) == 6


def test_merging_into_an_existing_dataset_rewrites_none_of_its_rows(halves, tmp_path):
    a, b = halves
    files = {p.name for p in Path(a.uri, "data").iterdir()}
    result = merge([b.uri], a.uri)
    assert result.added == 5  # b0-b3 and flaky's features; shared is the same bytes
    assert files <= {p.name for p in Path(a.uri, "data").iterdir()}
    merged = FeatureStore.open(a.uri)
    assert len(merged) == 10 and merged.failures() == []
    assert "merged_from" not in merged.manifest.provenance  # it keeps its own manifest


def test_merging_on_s3(halves, s3_bucket):
    a, b = halves
    bucket, options = s3_bucket
    out = f"s3://{bucket}/all.lance"
    opts = [x for k, v in options.items() for x in ("-s", f"{k}={v}")]
    # the local inputs are read without the endpoint options: they are plain paths
    proc = run_linkedout(["merge", a.uri, b.uri, "-o", out, *opts])
    assert proc.returncode == 0, proc.stderr
    assert len(FeatureStore.open(out, options)) == 10


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("other-manifest", ["was not extracted the way", "layers: stored [0, 2, 4], new [0, 2]"]),
        ("into-a-folder", ["is not a Lance dataset"]),
        ("twice", ["is named twice"]),
        ("pinned-out", ["pins a version"]),
        ("prefer", ["--prefer 'latest'"]),
    ],
)
def test_bad_merges_are_one_line_and_change_nothing(halves, tmp_path, case, fragments):
    a, b = halves
    out = tmp_path / "out.lance"
    argv = ["merge", a.uri, b.uri, "-o", out]
    if case == "other-manifest":
        other = _dataset(tmp_path / "o.lance", [], manifest=make_manifest(layers=(0, 2)))
        argv = ["merge", a.uri, other.uri, "-o", out]
    elif case == "into-a-folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        argv[-1] = out
    elif case == "twice":
        argv = ["merge", a.uri, a.uri, "-o", out]
    elif case == "pinned-out":
        argv = ["merge", b.uri, "-o", f"{a.uri}@1"]
    elif case == "prefer":
        argv += ["--prefer", "latest"]
    before = [tree_digest(s.uri) for s in (a, b)]
    assert_one_line_error(run_linkedout(argv), *fragments)
    assert [tree_digest(s.uri) for s in (a, b)] == before
    if case != "into-a-folder":
        assert not out.exists()
    else:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_failure_everywhere_stays_one_failure(tmp_path):
    a = _dataset(tmp_path / "a.lance", [FailedItem("x", "no stream")])
    b = _dataset(tmp_path / "b.lance", [FailedItem("x", "timeout")])
    with pytest.raises(LinkedOutError, match="name at least one"):
        merge([], str(tmp_path / "none.lance"))
    merged = merge([a.uri, b.uri], str(tmp_path / "m.lance")).store
    assert [(f.item_id, f.error) for f in merged.failures()] == [("x", "no stream")]
