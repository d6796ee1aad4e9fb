"""A writer process for test_concurrent_writers: one of two that write the same ids into each
of a list of datasets, meeting the other at a barrier before each so the runs overlap."""

from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass

from linkedout.storage import FailedItem, FeatureStore, FeatureWriter
from linkedout.storage.maintenance import optimize
from linkedout.testing.factories import content_hash, make_manifest, make_row

IDS = [f"item{i:02d}" for i in range(7)]


@dataclass(frozen=True)
class Case:
    uri: str
    kind: str
    """same: both write the same good rows; failure: writer 0 records failures, writer 1 good
    rows; overwrite: both rewrite stored rows with their own content (version 1 + writer);
    optimize: as same, then each ends as `extract` does (optimize, pruning, when it saw no
    other writer's commit), while the other may still be writing."""
    seed: int


def rows_for(case: Case, worker: int) -> tuple[list, bool]:
    """(rows in this writer's order, overwrite) for one case."""
    manifest = make_manifest()
    order = random.Random(case.seed * 2 + worker).sample(IDS, len(IDS))
    if case.kind == "failure" and worker == 0:
        return [FailedItem(i, "out of memory", content_hash(i)) for i in order], False
    if case.kind == "overwrite":
        return [make_row(i, manifest, version=1 + worker) for i in order], True
    return [make_row(i, manifest) for i in order], False


def write(case: Case, worker: int) -> None:
    jitter = random.Random(case.seed * 7 + worker)
    rows, overwrite = rows_for(case, worker)
    time.sleep(jitter.uniform(0, 0.02))
    store = FeatureStore.open_or_create(case.uri, make_manifest())
    first_version = store.version
    with FeatureWriter(store, commit_every=1, overwrite=overwrite) as writer:
        for row in rows:
            writer.add(row)
            time.sleep(jitter.uniform(0, 0.01))
    if case.kind == "optimize" and store.only_writer_since(first_version):
        optimize(store)  # as an unsharded `extract` ends, while the other may still write


def work(worker: int, cases: list[Case], barrier, errors) -> None:
    """Process entry point: every case in turn, each started together with the other writer."""
    for case in cases:
        barrier.wait(timeout=120)
        try:
            write(case, worker)
        except Exception:
            errors.put(f"writer {worker}, {case}:\n{traceback.format_exc()}")
    errors.put(None)
