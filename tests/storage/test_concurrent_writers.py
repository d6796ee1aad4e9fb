"""Two real writer processes on one dataset, the same ids, no --shard: one row per item each
time, whatever the interleaving (issue 16)."""

from __future__ import annotations

import multiprocessing as mp

import torch

from linkedout.storage import FeatureStore, FeatureWriter
from linkedout.storage.maintenance import optimize
from linkedout.testing.factories import content_hash, item_tokens, make_manifest, make_row
from tests.storage._concurrent_job import IDS, Case, work
from tests.storage._legacy import old_append

KINDS = ("same", "same_old_layout", "failure", "overwrite", "optimize")
ROUNDS = 6  # 30 interleavings


def _prepare(case: Case) -> None:
    manifest = make_manifest()
    if case.kind == "same_old_layout":  # both writers upgrade it at once, then write
        old_append(case.uri, [], manifest)
    elif case.kind == "overwrite":
        with FeatureWriter(FeatureStore.create(case.uri, manifest)) as w:
            w.extend(make_row(i, manifest) for i in IDS)
    else:
        # Created beforehand: two creates racing can still both commit (Lance rebases the
        # loser's as an Overwrite), which is a separate issue from one row per item.
        FeatureStore.create(case.uri, manifest)


def _check(case: Case) -> None:
    store = FeatureStore.open(case.uri)
    table = store.dataset.to_table(columns=["item_id", "error", "content_sha256"])
    ids = table.column("item_id").to_pylist()
    assert sorted(ids) == IDS, f"{case}: {sorted(ids)}"
    assert table.column("error").null_count == len(IDS), f"{case}: a failure beat a good row"
    assert store.info().duplicates == 0
    got = store.read_tokens(ids)
    for i, (item_id, sha) in enumerate(zip(ids, table.column("content_sha256").to_pylist())):
        versions = (1, 2) if case.kind == "overwrite" else (0,)
        version = next(v for v in versions if content_hash(item_id, v) == sha)
        assert torch.equal(got[i], item_tokens(item_id, store.manifest, version)), case


def test_two_processes_writing_the_same_ids_leave_one_row_per_item(tmp_path):
    cases = [
        Case(str(tmp_path / f"{n:02d}-{kind}.lance"), kind, seed=n)
        for n, kind in enumerate(KINDS * ROUNDS)
    ]
    for case in cases:
        _prepare(case)
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=work, args=(w, cases, barrier, errors)) for w in (0, 1)]
    for p in workers:
        p.start()
    failed, finished = [], 0
    while finished < len(workers):
        message = errors.get(timeout=240)
        if message is None:
            finished += 1
        else:
            failed.append(message)
    for p in workers:
        p.join(30)
    assert not failed, "\n".join(failed)
    for case in cases:
        _check(case)


def test_a_writer_whose_version_another_writer_pruned_still_commits(tmp_path):
    # The CI failure behind this test: run A finished first and, seeing no other commit yet,
    # compacted and pruned; run B's next commit then read a fragment A had deleted.
    manifest = make_manifest()
    uri = str(tmp_path / "pruned.lance")
    first = FeatureStore.create(uri, manifest)
    second = FeatureStore.open(uri)
    late = FeatureWriter(second, commit_every=1)
    late.add(make_row("early", manifest))  # committed: `second` now reads that version
    with FeatureWriter(first, commit_every=1) as w:
        w.extend(make_row(f"a{i}", manifest) for i in range(3))
    optimize(first)  # compacts, then deletes every file only older versions use
    late.extend(make_row(i, manifest) for i in ("a1", "b0"))
    late.close()
    store = FeatureStore.open(uri)
    assert sorted(store.ids()) == ["a0", "a1", "a2", "b0", "early"]
    assert store.info().duplicates == 0


def test_a_writer_whose_first_status_read_meets_pruned_files_still_commits(tmp_path):
    # The window behind issue 35's concurrent-extract failure: run B opened the dataset, run A
    # then finished, compacted and pruned, and B's first read of what is stored (before its
    # first commit) met a deleted fragment. Lance raises that read as ArrowInvalid, not
    # OSError, so it was not retried and B died; B's writes are what must not be lost.
    manifest = make_manifest()
    uri = str(tmp_path / "pruned-read.lance")
    with FeatureWriter(FeatureStore.create(uri, manifest), commit_every=1) as w:
        w.add(make_row("a0", manifest))
    late = FeatureStore.open(uri)  # B: its handle reads the version holding a0's fragment
    first = FeatureStore.open(uri)
    with FeatureWriter(first, commit_every=1) as w:
        w.extend(make_row(f"a{i}", manifest) for i in range(1, 3))
    optimize(first)  # A: compacts, then deletes the files only older versions use
    assert sorted(late.status()) == ["a0", "a1", "a2"]  # re-read on the latest version
    with FeatureWriter(late, commit_every=1) as w:
        w.extend(make_row(i, manifest) for i in ("a1", "b0"))
    store = FeatureStore.open(uri)
    assert sorted(store.ids()) == ["a0", "a1", "a2", "b0"]
    assert store.info().duplicates == 0


def test_a_writer_that_opened_before_the_others_run_and_prune_stores_no_second_row(tmp_path):
    # Issue 35's duplicate: run B opened the new, empty dataset; run A stored k, finished and
    # pruned (its end-of-run optimize); B then stored k too. B's handle had no fragment to
    # miss, so its insert was planned on the empty version, and the commits whose history
    # would have shown the clash were pruned: k was stored twice. B now plans every write on
    # the latest version.
    manifest = make_manifest()
    for b_reads_first in (False, True):
        uri = str(tmp_path / f"stale-{b_reads_first}.lance")
        FeatureStore.create(uri, manifest)
        late, first = FeatureStore.open(uri), FeatureStore.open(uri)
        if b_reads_first:
            assert late.status() == {}  # what B's run plans from, before A writes anything
        with FeatureWriter(first, commit_every=1) as w:
            w.add(make_row("k", manifest))
        optimize(first)  # A: everything but the latest version pruned
        with FeatureWriter(late, commit_every=1) as w:
            w.add(make_row("k", manifest))
        table = FeatureStore.open(uri).dataset.to_table(columns=["item_id"])
        assert table.column("item_id").to_pylist() == ["k"], b_reads_first
