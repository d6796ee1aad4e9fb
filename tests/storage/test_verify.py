"""`linkedout verify`: every row against the digests written with it; corrupt, missing and
duplicated rows named, exit 1; datasets from before digests read as they are; export checks
what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from linkedout.errors import LinkedOutError
from linkedout.storage import (
    FailedItem,
    FeatureRow,
    FeatureStore,
    FeatureWriter,
    export,
    optimize,
)
from linkedout.storage.subset import Subset
from linkedout.storage.verify import verify
from linkedout.testing.factories import item_tokens, make_manifest, make_rows
from tests.cli_harness import assert_one_line_error, run_linkedout
from tests.storage._legacy import old_append


@pytest.fixture
def source(tmp_path):
    """Two queries, 6 items (item00005 without the second query's slots) and a failure,
    written in three commits (three fragments)."""
    manifest = make_manifest(
        prompt="first?", queries=(("first", "first?"), ("second", "second?")), query_slots=2
    )
    store = FeatureStore.create(tmp_path / "src.lance", manifest)
    with FeatureWriter(store, commit_every=3) as w:
        for i, row in enumerate(make_rows(6, manifest)):
            second = {} if i == 5 else {"second": torch.full((3, 2, 8), float(i)).half()}
            w.add(FeatureRow(row.item_id, row.tokens, row.content_sha256, queries=second))
        w.add(FailedItem("broken", "no video stream", "hb", "/v/broken.avi"))
    return FeatureStore.open(store.uri)


def _flip_bytes_of(store: FeatureStore, item: str, depth: int) -> None:
    """Corrupt one stored tensor in place, as a bad disk or a bad copy would: find its bytes
    in the data files and flip one."""
    wanted = item_tokens(item, store.manifest)[store.manifest.layers.index(depth)]
    needle = wanted.numpy().tobytes()
    for path in sorted(Path(store.uri, "data").iterdir()):
        data = bytearray(path.read_bytes())
        at = data.find(needle)
        if at >= 0:
            data[at + 5] ^= 0x40
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"the bytes of {item} depth {depth} are not in any data file")


def test_a_dataset_as_written_verifies(source):
    proc = run_linkedout(["verify", source.uri])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 rows read, 6 items match their digests" in proc.stdout
    assert proc.stdout.strip().endswith("verified")
    report = json.loads(run_linkedout(["verify", source.uri, "--json"]).stdout)
    assert report["ok"] and report["corrupt"] == report["missing"] == report["duplicated"] == 0
    assert report["bytes_hashed"] == (6 * 3 * 4 * 8 + 5 * 3 * 2 * 8) * 2  # tokens + second


def test_a_flipped_byte_is_named_by_item_column_and_depth(source):
    _flip_bytes_of(source, "item00004", 2)
    proc = run_linkedout(["verify", source.uri])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "problem: 1 corrupt: item00004 (tokens, depth 2)" in proc.stdout
    assert "NOT verified" in proc.stdout
    # an export refuses to hand on what it copied, and leaves nothing behind
    dest = source.uri + "-copy"
    with pytest.raises(LinkedOutError, match="does not verify \\(1 corrupt: item00004"):
        export(source.uri, dest)
    assert not Path(dest).exists()
    # a subset that leaves the corrupt depth out is sound
    part = export(source.uri, source.uri + "-part", subset=Subset(layers=(0, 4)))
    assert verify(part).ok


def test_a_lost_data_file_is_named_as_missing_rows(source):
    files = sorted(Path(source.uri, "data").iterdir(), key=lambda p: p.stat().st_mtime)
    files[0].unlink()
    report = verify(FeatureStore.open(source.uri))
    assert not report.ok and report.missing_count == 3
    assert report.missing[0].startswith("3 rows of fragment 0 (")
    assert report.rows == 7 and report.verified == 3


def test_rows_written_before_digests_are_read_but_not_verifiable(tmp_path):
    manifest = make_manifest()
    uri = tmp_path / "old.lance"
    rows = make_rows(4, manifest)
    old_append(uri, rows, manifest)
    old_append(uri, [rows[1]], manifest)  # an older LinkedOut's duplicate
    store = FeatureStore.open(uri)
    report = verify(store)
    assert report.unverifiable == 5 and report.verified == 0
    assert report.duplicated == ["item00001 (2 rows)"] and not report.ok
    optimize(store)  # deletes the duplicate
    store = FeatureStore.open(uri)
    assert verify(store).ok and verify(store).unverifiable == 4
    # appending to it still works, without a digest column (the dataset is not rewritten)
    with FeatureWriter(store, commit_every=10) as w:
        w.extend(make_rows(2, manifest, start=10))
    store = FeatureStore.open(uri)
    assert "digest_tokens" not in store.dataset.schema.names
    copy = export(uri, tmp_path / "copy.lance", subset=Subset(layers=(2,)))
    card = (tmp_path / "copy.lance" / "README.md").read_text()
    assert verify(copy).unverifiable == 6  # its rows had no digests to carry over
    assert "written before LinkedOut stored digests" in card


def test_an_export_to_s3_verifies_there(source, s3_bucket):
    bucket, options = s3_bucket
    dest = f"s3://{bucket}/f.lance"
    export(source.uri, dest, dest_options=options)
    opts = [a for k, v in options.items() for a in ("-s", f"{k}={v}")]
    proc = run_linkedout(["verify", dest, *opts, "--json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verified"] == 6


def test_verifying_what_is_not_a_feature_dataset_is_one_line(tmp_path):
    assert_one_line_error(run_linkedout(["verify", tmp_path / "nothing.lance"]), "nothing.lance")
    import lance
    import pyarrow as pa

    lance.write_dataset(pa.table({"x": [1]}), tmp_path / "plain.lance")
    assert_one_line_error(
        run_linkedout(["verify", tmp_path / "plain.lance"]), "not a LinkedOut feature store"
    )


def test_an_object_store_that_does_not_answer_is_one_line_in_bounded_time():
    import time

    closed = ["-s", "aws_endpoint=http://127.0.0.1:9", "-s", "allow_http=true"]
    keys = ["-s", "aws_access_key_id=x", "-s", "aws_secret_access_key=y", "-s", "aws_region=r"]
    for argv in (["verify", "s3://b/f.lance"], ["merge", "s3://b/a.lance", "-o", "s3://b/c"]):
        started = time.monotonic()
        proc = run_linkedout([*argv, *closed, *keys])
        assert_one_line_error(proc, "cannot reach the object store at http://127.0.0.1:9")
        assert time.monotonic() - started < 30
