"""The Batcher merges requests that arrive while a pass runs into the next pass: deterministic
tests (the first pass is held until the others are queued), so they fail if merging stops."""

from __future__ import annotations

import asyncio
import threading

from linkedout.service.batching import Batcher
from linkedout.service.ranker import RankRequestError


class HeldRanker:
    """A rank function whose first pass waits until released; records every pass's queries."""

    def __init__(self, fail_on: str | None = None):
        self.passes: list[list[str]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, queries):
        self.passes.append(list(queries))
        if len(self.passes) == 1:
            self.started.set()
            assert self.release.wait(10)
        if self.fail_on in queries:
            raise RankRequestError(queries.index(self.fail_on), f"cannot rank {self.fail_on}")
        return [f"ranked {q}" for q in queries], 7


async def _submit_while_held(batcher: Batcher, ranker: HeldRanker, groups: list[list[str]]):
    """The first group starts a pass; the rest queue up behind it; then the pass ends."""
    first = asyncio.ensure_future(batcher.rank(groups[0]))
    assert await asyncio.to_thread(ranker.started.wait, 10)
    rest = [asyncio.ensure_future(batcher.rank(g)) for g in groups[1:]]
    await asyncio.sleep(0.05)  # every put has run: the worker is still held in the first pass
    ranker.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_requests_queued_during_a_pass_are_ranked_together_in_the_next():
    ranker = HeldRanker()
    batcher = Batcher(ranker, max_batch=64)
    try:
        groups = [["a"], ["b"], ["c", "d"], ["e"]]
        results = asyncio.run(_submit_while_held(batcher, ranker, groups))
    finally:
        batcher.close()
    assert ranker.passes == [["a"], ["b", "c", "d", "e"]]
    # each request gets its own slice of the merged pass, in its own order
    assert results == [
        (["ranked a"], 7),
        (["ranked b"], 7),
        (["ranked c", "ranked d"], 7),
        (["ranked e"], 7),
    ]


def test_a_pass_takes_requests_up_to_max_batch_queries():
    ranker = HeldRanker()
    batcher = Batcher(ranker, max_batch=3)
    try:
        asyncio.run(_submit_while_held(batcher, ranker, [["a"], ["b"], ["c"], ["d"], ["e"]]))
    finally:
        batcher.close()
    assert ranker.passes == [["a"], ["b", "c", "d"], ["e"]]


def test_a_merged_pass_that_fails_on_one_request_answers_each_request_alone():
    ranker = HeldRanker(fail_on="bad")
    batcher = Batcher(ranker, max_batch=64)
    try:
        results = asyncio.run(_submit_while_held(batcher, ranker, [["a"], ["b"], ["bad"], ["c"]]))
    finally:
        batcher.close()
    assert ranker.passes == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
    assert results[0] == (["ranked a"], 7) and results[1] == (["ranked b"], 7)
    assert isinstance(results[2], RankRequestError) and "cannot rank bad" in str(results[2])
    assert results[3] == (["ranked c"], 7)


def test_an_unexpected_error_reaches_the_request_as_it_is():
    error = RuntimeError("disk gone")
    calls = []

    def rank(queries):
        calls.append(list(queries))
        raise error

    batcher = Batcher(rank, max_batch=8)

    async def one():
        return await asyncio.gather(batcher.rank(["x"]), return_exceptions=True)

    try:
        (result,) = asyncio.run(one())
    finally:
        batcher.close()
    assert result is error and calls == [["x"]]


def test_a_loaded_run_is_kept_out_of_the_cyclic_collector(trained_run):
    """Every full collection walked a loaded run's objects (150 ms on MicroLens-50K, the p99
    under load): once loaded, they are frozen, so collections skip them."""
    import gc

    from linkedout.service.config import ServeConfig
    from linkedout.service.state import Service

    service = Service(ServeConfig(run=trained_run))
    service.stop.set()  # load, then leave the watch loop at once
    gc.unfreeze()
    try:
        service.load_and_watch()
        assert service.ranker is not None
        frozen = gc.get_freeze_count()
        assert frozen > 0
        # the ranker's catalog ids are among the frozen, not the collector's objects
        tracked = {id(o) for o in gc.get_objects()}
        assert id(service.ranker.snapshot.index) not in tracked
    finally:
        gc.unfreeze()
        if service.batcher is not None:
            service.batcher.close()
