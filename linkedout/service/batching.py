"""Rankings of concurrent requests merged into one forward pass.

One thread ranks; requests that arrive while it works wait in a queue, and the next pass takes
all of them (up to `max_batch` requests) in one sequence forward and one matrix product. On few
cores this is what keeps latency flat under concurrency: 32 users cost about 4x one user, not
32x. A merged pass that fails on one request's query (an unknown user, say) is re-run request by
request, so each request gets its own answer or its own error.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

from linkedout.service.ranker import RankRequest, RankRequestError

Ranked = tuple[list, int]


class Batcher:
    def __init__(self, rank: Callable[[list[RankRequest]], Ranked], max_batch: int):
        self._rank = rank
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="linkedout-rank", daemon=True)
        self._thread.start()

    async def rank(self, requests: list[RankRequest]) -> Ranked:
        """`rank(requests)`, merged with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((requests, future, loop))
        return await future

    def close(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            groups, size = [first], len(first[0])
            while size < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this pass
                    break
                groups.append(more)
                size += len(more[0])
            self._pass(groups)

    def _pass(self, groups: list) -> None:
        try:
            results, version = self._rank([q for requests, _, _ in groups for q in requests])
        except RankRequestError as e:
            if len(groups) > 1:
                for group in groups:
                    self._pass([group])
                return
            _settle(groups[0], error=e)
            return
        except Exception as e:  # reaches the app's handler for this request alone
            for group in groups:
                _settle(group, error=e)
            return
        start = 0
        for group in groups:
            stop = start + len(group[0])
            _settle(group, value=(results[start:stop], version))
            start = stop


def _settle(group, value=None, error: BaseException | None = None) -> None:
    _, future, loop = group

    def settle() -> None:
        if future.done():  # the client went away and the request was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    loop.call_soon_threadsafe(settle)
