"""`--engine local`: this process. Decode threads prepare items ahead while the model runs
batches, so decoding overlaps the forward instead of queueing in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from linkedout.extract.backbones import Backbone
from linkedout.extract.discover import CatalogItem
from linkedout.extract.steps import ExtractPlan, build_manifest, prepare_item, run_batch
from linkedout.storage import FailedItem, FeatureRow


class LocalEngine:
    """The steps of `plan` in this process, on a loaded backbone."""

    def __init__(self, plan: ExtractPlan, backbone: Backbone, decode_threads: int):
        self.plan, self.backbone, self.decode_threads = plan, backbone, decode_threads
        self.manifest = build_manifest(plan, {"engine": "local"})

    def rows(
        self, todo: list[tuple[CatalogItem, str]], plan: ExtractPlan | None = None
    ) -> Iterator[FeatureRow | FailedItem]:
        plan, backbone = plan or self.plan, self.backbone
        window = plan.batch_size * 2 + self.decode_threads
        work = [(item, sha, plan, backbone.packer) for item, sha in todo]
        with ThreadPoolExecutor(max(1, self.decode_threads), "linkedout-decode") as pool:
            for batch in _batched(_in_order(pool, work, prepare_item, window), plan.batch_size):
                yield from run_batch(batch, backbone, plan)


def _in_order(pool: ThreadPoolExecutor, work: list, fn: Callable, window: int) -> Iterator:
    """`fn(*args)` for each args in `work` on the pool, yielded in order, at most `window` ahead."""
    pending: list[Future] = []
    for args in work:
        pending.append(pool.submit(fn, *args))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def _batched(stream: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for x in stream:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
