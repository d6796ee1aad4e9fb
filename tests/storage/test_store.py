from __future__ import annotations

import pickle

import lance
import pyarrow as pa
import pytest
import torch

from linkedout.errors import LinkedOutError, MissingItemsError, SettingError
from linkedout.storage import (
    COMMIT_EVERY,
    FailedItem,
    FeatureStore,
    FeatureWriter,
    InMemoryFeatures,
    StreamingFeatures,
    item_loader,
    open_features,
)
from linkedout.storage.columns import arrow_schema, rows_to_table
from linkedout.storage.location import exists
from linkedout.storage.maintenance import optimize
from linkedout.testing.factories import (
    content_hash,
    item_tokens,
    make_manifest,
    make_row,
    make_rows,
)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def _store(tmp_path, n=0, commit_every=COMMIT_EVERY, **manifest):
    m = make_manifest(**manifest)
    store = FeatureStore.create(tmp_path / "features.lance", m)
    if n:
        with FeatureWriter(store, commit_every=commit_every) as w:
            w.extend(make_rows(n, m))
    return store


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_tokens_round_trip_bit_for_bit(tmp_path, dtype):
    store = _store(tmp_path, n=7, dtype=dtype)
    reopened = FeatureStore.open(store.uri)
    ids = [f"item{i:05d}" for i in range(7)]
    got = reopened.read_tokens(ids)
    want = torch.stack([item_tokens(i, reopened.manifest) for i in ids])
    assert got.dtype == want.dtype
    assert torch.equal(_bits(got), _bits(want))  # -0.0 and subnormals survive too
    ids_all, loaded = reopened.load()
    assert sorted(ids_all) == ids
    assert torch.equal(_bits(loaded[ids_all.index("item00003")]), _bits(want[3]))


def test_row_facts_are_stored(tmp_path):
    store = _store(tmp_path, n=2)
    row = store.dataset.to_table(filter="item_id = 'item00001'").to_pylist()[0]
    assert row["content_sha256"] == content_hash("item00001")
    assert row["source"] == "/videos/item00001.mp4"
    assert row["frame_indices"] == [0, 10, 20, 30]
    assert row["token_counts"] == {"video": 64, "prompt": 12, "generated": 0}
    assert row["extracted_at"] is not None and row["error"] is None


def test_read_tokens_keeps_requested_order_and_repeats(tmp_path):
    store = _store(tmp_path, n=20, commit_every=6)  # several fragments
    ids = ["item00017", "item00002", "item00011", "item00002", "item00000"]
    got = store.read_tokens(ids)
    for row, item_id in zip(got, ids):
        assert torch.equal(row, item_tokens(item_id, store.manifest))


def test_read_tokens_reads_a_subset_of_layers_in_the_order_asked(tmp_path):
    store = _store(tmp_path, n=3)
    full = item_tokens("item00001", store.manifest)
    got = store.read_tokens(["item00001"], layers=[4, 0])
    assert got.shape == (1, 2, 4, 8)
    assert torch.equal(got[0, 0], full[2]) and torch.equal(got[0, 1], full[0])
    with pytest.raises(
        LinkedOutError, match=r"layers \[3\] are not stored.*holds layers \[0, 2, 4\]"
    ):
        store.read_tokens(["item00001"], layers=[3])


def test_read_tokens_names_the_missing_ids(tmp_path):
    store = _store(tmp_path, n=2)
    with FeatureWriter(store) as w:
        w.add(FailedItem("broken", "moov atom not found", "h", "/v/broken.mp4"))
    missing = [f"nope{i}" for i in range(7)]
    with pytest.raises(MissingItemsError) as err:
        store.read_tokens(["item00000", "broken", *missing])
    assert err.value.missing == ["broken", *missing]
    message = str(err.value)
    assert "8 item id(s) not stored" in message
    assert "'broken' (failed: moov atom not found)" in message
    assert "'nope0'" in message and "and 3 more" in message


def test_reappending_the_same_rows_changes_nothing(tmp_path):
    store = _store(tmp_path, n=10, commit_every=4)
    version = store.version
    with FeatureWriter(store, commit_every=4) as w:
        w.extend(make_rows(10, store.manifest))
    assert (w.stats.skipped, w.stats.written, w.stats.commits) == (10, 0, 0)
    assert store.version == version
    assert store.dataset.count_rows() == 10


def test_one_commit_per_batch_not_per_row(tmp_path):
    store = _store(tmp_path)
    start = store.version
    w = FeatureWriter(store, commit_every=4)
    w.extend(make_rows(9, store.manifest))  # two full batches flushed, one row buffered
    assert store.version == start + 2
    assert store.dataset.count_rows() == 8
    w.close()
    assert store.dataset.count_rows() == 9
    assert w.stats.commits == 3


def test_append_and_upsert_are_one_commit_each_and_refresh_the_store(tmp_path):
    store = _store(tmp_path)
    start = store.version
    store.append(rows_to_table(make_rows(3, store.manifest), store.manifest))
    assert store.version == start + 1 and len(store) == 3
    changed = [make_row("item00001", store.manifest, version=1), make_row("new", store.manifest)]
    store.upsert(rows_to_table(changed, store.manifest))
    assert store.version == start + 2 and store.dataset.count_rows() == 4
    got = store.read_tokens(["item00001", "new"])
    assert torch.equal(got[0], item_tokens("item00001", store.manifest, version=1))
    assert torch.equal(got[1], item_tokens("new", store.manifest))


def test_commit_every_must_be_at_least_one(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(SettingError, match=r"commit_every=0: must be >= 1") as err:
        FeatureWriter(store, commit_every=0)
    assert err.value.setting == "commit_every"


def test_changed_content_replaces_the_row_in_place(tmp_path):
    store = _store(tmp_path, n=6, commit_every=3)
    with FeatureWriter(store) as w:
        w.add(make_row("item00004", store.manifest, version=1))
    assert (w.stats.replaced, w.stats.written) == (1, 0)
    assert len(store) == 6 and store.dataset.count_rows() == 6
    got = store.read_tokens(["item00005", "item00004", "item00000"])
    assert torch.equal(got[1], item_tokens("item00004", store.manifest, version=1))
    assert torch.equal(got[0], item_tokens("item00005", store.manifest))
    assert torch.equal(got[2], item_tokens("item00000", store.manifest))


def test_overwrite_rewrites_rows_with_the_same_hash(tmp_path):
    store = _store(tmp_path, n=3)
    fresh = [
        r.__class__(**{**r.__dict__, "tokens": r.tokens + 1}) for r in make_rows(3, store.manifest)
    ]
    with FeatureWriter(store, overwrite=True) as w:
        w.extend(fresh)
    assert w.stats.replaced == 3
    assert torch.equal(store.read_tokens(["item00002"])[0], fresh[2].tokens)


def test_pending_lists_new_changed_and_failed_items(tmp_path):
    store = _store(tmp_path, n=3)
    with FeatureWriter(store) as w:
        w.add(FailedItem("bad", "decode error", "hb"))
    asked = [
        ("item00000", content_hash("item00000"), "title of item00000"),  # done
        ("item00001", "changed", "title of item00001"),  # content changed
        ("item00002", content_hash("item00002"), "a new title"),  # prompt changed
        ("bad", "hb", None),  # failed before: retry
        ("new", "hn", None),  # never seen
    ]
    assert store.pending(asked) == ["item00001", "item00002", "bad", "new"]
    assert store.pending(asked, overwrite=True) == [i for i, _, _ in asked]
    # "bad" failed with these bytes: without retry_failed it waits, counted as known.
    assert store.triage(asked, retry_failed=False) == (["item00001", "item00002", "new"], ["bad"])
    assert store.triage([("bad", "changed bytes", None)], retry_failed=False) == (["bad"], [])


def test_failures_are_kept_with_reason_and_retried(tmp_path):
    store = _store(tmp_path, n=2)
    with FeatureWriter(store) as w:
        w.add(FailedItem("clip", "no video stream", "h1", "/v/clip.avi"))
    assert [(f.item_id, f.error, f.source) for f in store.failures()] == [
        ("clip", "no video stream", "/v/clip.avi")
    ]
    assert store.info().failures == 1 and len(store) == 2
    with FeatureWriter(store) as w:
        w.add(make_row("clip", store.manifest))
    assert w.stats.replaced == 1
    assert store.failures() == [] and len(store) == 3
    assert torch.equal(store.read_tokens(["clip"])[0], item_tokens("clip", store.manifest))


def test_info_to_json_lists_the_facts_and_the_failures_given(tmp_path):
    store = _store(tmp_path, n=2)
    with FeatureWriter(store) as w:
        w.add(FailedItem("clip", "no video stream", "h1", "/v/clip.avi"))
    data = store.info().to_json(store.failures())
    assert (data["rows"], data["failures"], data["version"]) == (2, 1, store.version)
    assert data["failed_items"] == [
        {"item_id": "clip", "source": "/v/clip.avi", "error": "no video stream"}
    ]
    assert list(data["manifest"]["layers"]) == [0, 2, 4] and "schema" not in data
    assert store.info().to_json()["failed_items"] == []


def test_a_failure_never_replaces_a_good_row(tmp_path):
    store = _store(tmp_path, n=2)
    with FeatureWriter(store, overwrite=True) as w:
        w.add(FailedItem("item00001", "out of memory", content_hash("item00001")))
    assert w.stats.kept == 1
    assert store.failures() == []
    assert torch.equal(
        store.read_tokens(["item00001"])[0], item_tokens("item00001", store.manifest)
    )


def test_nonfinite_tokens_become_a_failure_not_inf_in_the_store(tmp_path):
    store = _store(tmp_path)
    row = make_row("hot", store.manifest)
    row.tokens[1, 0, 0] = float("inf")
    with FeatureWriter(store) as w:
        w.add(row)
    assert [f.item_id for f in store.failures()] == ["hot"]
    assert "--dtype bfloat16" in store.failures()[0].error


@pytest.mark.parametrize(
    "tokens, match",
    [
        (torch.zeros(3, 4, 9, dtype=torch.float16), r"shape \[3, 4, 9\] .* \[3, 4, 8\]"),
        (torch.zeros(3, 4, 8, dtype=torch.float32), "are float32 but this store holds float16"),
        ([[0.0]], "must be a torch.Tensor"),
    ],
)
def test_writer_refuses_wrong_shape_or_dtype(tmp_path, tokens, match):
    store = _store(tmp_path, n=2)
    row = make_row("bad", store.manifest)
    with pytest.raises(LinkedOutError, match=match):
        FeatureWriter(store).add(row.__class__(**{**row.__dict__, "tokens": tokens}))
    assert store.dataset.count_rows() == 2


def test_rows_before_an_error_in_the_block_are_kept(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(RuntimeError):
        with FeatureWriter(store, commit_every=100) as w:
            w.extend(make_rows(5, store.manifest))
            raise RuntimeError("decoder crashed")
    assert len(store) == 5


def test_append_with_another_manifest_is_refused_and_data_kept(tmp_path):
    store = _store(tmp_path, n=3)
    for change in [
        dict(layers=(0, 2, 6)),
        dict(hidden_size=16),
        dict(dtype="bfloat16"),
        dict(backbone="other/model"),
        dict(tokens_per_layer=8),
    ]:
        with pytest.raises(LinkedOutError, match="holds features made another way") as err:
            FeatureStore.open_or_create(store.uri, make_manifest(**change))
        assert next(iter(change)) in str(err.value)
    again = FeatureStore.open_or_create(store.uri, make_manifest(linkedout_version="9.9"))
    assert len(again) == 3


def test_open_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(LinkedOutError, match="the path does not exist"):
        FeatureStore.open(tmp_path / "missing.lance")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LinkedOutError, match="is not a Lance dataset"):
        FeatureStore.open(tmp_path / "plain")
    lance.write_dataset(pa.table({"x": [1, 2]}), tmp_path / "other.lance")
    with pytest.raises(LinkedOutError, match="not a LinkedOut feature store"):
        FeatureStore.open(tmp_path / "other.lance")


def test_another_format_version_is_refused(tmp_path):
    schema = arrow_schema(make_manifest())
    future = make_manifest().to_json().replace('"format_version": 1', '"format_version": 2')
    schema = schema.with_metadata({b"linkedout.manifest": future.encode()})
    lance.write_dataset(
        pa.RecordBatchReader.from_batches(schema, []), tmp_path / "f.lance", schema=schema
    )
    with pytest.raises(LinkedOutError, match="format version 2.*upgrade linkedout"):
        FeatureStore.open(tmp_path / "f.lance")


def test_create_refuses_an_existing_folder_of_other_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"\0")
    with pytest.raises(LinkedOutError, match="exists and is not a Lance dataset"):
        FeatureStore.open_or_create(videos, make_manifest())
    assert sorted(p.name for p in videos.iterdir()) == ["a.mp4"]
    assert not exists(videos)


def test_item_id_has_a_scalar_index(tmp_path):
    store = _store(tmp_path, n=5)
    indices = store.dataset.describe_indices()
    assert any(i.field_names == ["item_id"] and i.index_type == "BTree" for i in indices)
    with FeatureWriter(store) as w:
        w.extend(make_rows(3, store.manifest, start=5))
    index = next(i for i in store.dataset.describe_indices() if i.field_names == ["item_id"])
    assert index.num_rows_indexed == 8  # later appends are indexed too


def test_in_memory_and_streaming_views_agree(tmp_path):
    store = _store(tmp_path, n=11, commit_every=4)
    in_memory = open_features(store, layers=[2])
    streaming = open_features(store, layers=[2], memory_budget=0)
    assert isinstance(in_memory, InMemoryFeatures) and isinstance(streaming, StreamingFeatures)
    assert in_memory.ids == streaming.ids
    ask = ["item00009", "item00001"]
    assert torch.equal(in_memory.read_tokens(ask), streaming.read_tokens(ask))
    seen = [(ids, t) for ids, t in streaming.batches(3)]
    assert sum(len(ids) for ids, _ in seen) == 11
    assert torch.equal(torch.cat([t for _, t in seen]), in_memory.tokens)


def test_store_pickles_by_uri_and_version(tmp_path):
    store = _store(tmp_path, n=3)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.uri == store.uri and copy.version == store.version
    assert torch.equal(copy.read_tokens(["item00001"]), store.read_tokens(["item00001"]))


def test_item_loader_uses_spawned_workers(tmp_path):
    store = _store(tmp_path, n=10, commit_every=4)
    loader = item_loader(store, batch_size=4, layers=[0, 4], num_workers=2)
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    ids, tokens = zip(*loader)
    assert [len(i) for i in ids] == [4, 4, 2]
    flat = [i for chunk in ids for i in chunk]
    assert flat == store.ids()
    assert torch.equal(torch.cat(tokens), store.read_tokens(flat, layers=[0, 4]))
    with pytest.raises(LinkedOutError, match="not fork-safe"):
        item_loader(store, num_workers=2, multiprocessing_context="fork")


def test_optimize_merges_fragments_and_frees_old_files_without_changing_data(tmp_path):
    store = _store(tmp_path, n=40, commit_every=4)
    ids = store.ids()
    before = store.load()[1]
    report = optimize(store)
    assert report.fragments_before == 10 and report.fragments_after == 1
    assert report.bytes_after < report.bytes_before
    assert store.ids() == ids and torch.equal(store.load()[1], before)
    assert torch.equal(
        store.read_tokens(["item00031"])[0], item_tokens("item00031", store.manifest)
    )
    assert len(store.dataset.versions()) == 1
