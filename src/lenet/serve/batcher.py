"""Micro-batching: requests that queue up together share one call of `run_batch`.

Up to `workers` batches run at once (one per core, on `executor`'s threads). A request
that finds a worker idle runs at once, alone: there is no waiting window, so batching
adds no latency. Requests that arrive while every worker is busy queue up, and the next
worker to finish takes them all (up to `max_batch`) in one call: under load, batches grow
by themselves and the model's forward pass is paid once per batch, not once per request.

    batcher = Batcher(run_batch, executor, workers=2)  # run_batch(items) -> a result or exception each
    result = await batcher.submit(item)                 # raises the exception run_batch gave for item

If run_batch itself raises for a batch, each of its items is run again alone, so only the
items that make it fail get the exception: one bad request never fails the others.
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
        while self._pending:
            batch = self._pending[:self.max_batch]
            del self._pending[:self.max_batch]
            results = await self._run([item for item, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _run(self, items: list[Any]) -> list[Any]:
        """run_batch(items) on a worker thread; if it raises (a bug), each item alone."""
        loop = asyncio.get_running_loop()
        self.batches += 1
        try:
            results = list(await loop.run_in_executor(self.executor, self.run_batch, items))
            if len(results) != len(items):  # else the futures past the end would never be answered
                raise RuntimeError(f"run_batch gave {len(results)} results for {len(items)} items")
            return results
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            return [(await self._run([item]))[0] for item in items]
