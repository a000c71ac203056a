"""Micro-batching: concurrent requests share one forward pass on one worker thread.

While the worker runs a batch, new requests queue up; when it is done, everything queued
goes into the next batch (up to `max_batch`). A lone request on an idle server runs at
once: there is no waiting window, so batching adds no latency, it only appears under load.

    batcher = Batcher(run_batch, executor)   # run_batch(items) -> one result or exception each
    result = await batcher.submit(item)      # raises the exception run_batch gave for item
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Sequence


class Batcher:
    """Feeds queued items to `run_batch` on `executor`, a batch at a time, in arrival order."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], executor: Executor,
                 max_batch: int = 64):
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.batches = 0  # forward passes so far: the tests and the benchmark read it
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        # One drainer at a time. It is a task of its own, not part of this request, so a
        # client that goes away cannot strand the requests batched with it.
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[:self.max_batch]
            del self._pending[:self.max_batch]
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, items)
            except Exception as exc:  # a bug in run_batch: everyone in the batch sees it
                results = [exc] * len(batch)
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
