"""Micro-batching: requests that arrive within ``max_wait_ms`` of the first waiting one
share one encoder call (up to ``max_batch`` queries), computed on one worker thread.

    batcher = Batcher(engine.run_jobs, max_batch=32, max_wait_ms=5)
    await batcher.start()
    result = await batcher.submit(Job("search", task, queries, k=10))
    await batcher.stop()

The event loop only queues and hands out results; the encoder, FAISS and the passage
table run on the worker (JAX and FAISS release the GIL), so requests keep arriving while
a batch is computed, and the next batch takes every request that waited meanwhile. A
request is never split between batches; one of more than ``max_batch`` queries is a
batch of its own (the engine encodes it ``max_batch`` rows at a time).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
from typing import Any, Callable, Deque, List, Optional, Sequence

from multiret_jax.serve.engine import Job

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Waiting:
    job: Job
    future: asyncio.Future
    arrived: float


class Batcher:
    """Collects jobs into batches for ``run_jobs`` (jobs -> one result or exception each).

    Args:
      run_jobs: the batch computation (``Engine.run_jobs``), called on the worker thread.
      max_batch: queries per batch (a batch closes when it has them).
      max_wait_ms: how long the first waiting job waits for others.
      on_batch: called with (requests, queries) of every batch.
    """

    def __init__(self, run_jobs: Callable[[Sequence[Job]], List[Any]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, on_batch: Optional[Callable[[int, int], None]] = None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, "
                             f"{max_wait_ms}")
        self.run_jobs, self.max_batch = run_jobs, int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._pending: Deque[_Waiting] = collections.deque()
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._worker: Optional[concurrent.futures.ThreadPoolExecutor] = None

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encoder")
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for w in self._pending:
            if not w.future.done():
                w.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        if self._worker is not None:
            self._worker.shutdown(wait=True)

    async def submit(self, job: Job) -> Any:
        """The job's result, after it went through a batch; raises what the job raised."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(job, loop.create_future(), loop.time())
        self._pending.append(waiting)
        self._wakeup.set()
        return await waiting.future

    def _queued(self) -> int:
        return sum(len(w.job.queries) for w in self._pending)

    def _take(self) -> List[_Waiting]:
        """The oldest jobs whose queries fit ``max_batch`` (at least one job)."""
        batch = [self._pending.popleft()]
        n = len(batch[0].job.queries)
        while self._pending and n + len(self._pending[0].job.queries) <= self.max_batch:
            n += len(self._pending[0].job.queries)
            batch.append(self._pending.popleft())
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._pending[0].arrived + self.max_wait
            while self._queued() < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [w for w in self._take() if not w.future.cancelled()]  # client gone
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), sum(len(w.job.queries) for w in batch))
            try:
                results = await loop.run_in_executor(self._worker, self.run_jobs,
                                                     [w.job for w in batch])
            except Exception as e:  # noqa: BLE001 -- the batch fails, the server goes on
                log.exception("a batch of %d requests failed", len(batch))
                results = [e] * len(batch)
            for w, r in zip(batch, results):
                if w.future.done():
                    continue
                if isinstance(r, BaseException):
                    w.future.set_exception(r)
                else:
                    w.future.set_result(r)
