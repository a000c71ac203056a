"""Micro-batching: requests that queue up together share one call of `run_batch`.

Up to `workers` batches run at once (one per core, on `executor`'s threads). A request
that finds a worker idle runs at once, alone: there is no waiting window, so batching
adds no latency. Requests that arrive while every worker is busy queue up, and the next
worker to finish takes them all (up to `max_batch`) in one call: under load, batches grow
by themselves and the model's forward pass is paid once per batch, not once per request.

    batcher = Batcher(run_batch, executor, workers=2)  # run_batch(items) -> a result or exception each
    result = await batcher.submit(item)                 # raises the exception run_batch gave for item
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Sequence


class Batcher:
    """Feeds queued items to `run_batch` on `executor`, a batch at a time, in arrival order."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], executor: Executor,
                 workers: int = 1, max_batch: int = 64):
        self.run_batch = run_batch
        self.executor = executor
        self.workers = workers
        self.max_batch = max_batch
        self.batches = 0  # calls of run_batch so far: the tests read it
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._drainers: set[asyncio.Task] = set()

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        # Drainers are tasks of their own, not part of a request, so a client that goes
        # away cannot strand the requests batched with it. A drainer is done as soon as it
        # finds the queue empty (no await in between), so a running one will see this item.
        self._drainers = {task for task in self._drainers if not task.done()}
        if len(self._drainers) < self.workers:
            self._drainers.add(loop.create_task(self._drain()))
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[:self.max_batch]
            del self._pending[:self.max_batch]
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in batch])
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
