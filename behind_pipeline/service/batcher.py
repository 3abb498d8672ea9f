"""Micro-batching: requests that arrive within a few milliseconds of each other share one forward pass.

A forward pass over 32 short texts costs far less than 32 passes over one (chapter 6), but a server receives texts
one request at a time. The batcher keeps a queue: the first waiting request opens a batch, which closes when it
holds ``max_batch`` texts or ``max_wait_ms`` has passed, whichever comes first. Requests already queued (they
arrived while the previous batch ran) join at once. The wait is only worth paying under concurrent load, so it
applies when the previous batch gathered more than one request: a lone client is never kept waiting for company
that does not come. The batch runs in a worker thread (so the event loop keeps answering ``/health``), and each
request gets back exactly its own rows.
"""

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch


@dataclass
class _Waiting:
    texts: list[str]
    answer: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counts that show the batching at work: forward passes, texts, and the largest batch seen."""

    forward_passes: int = 0
    texts: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0  # time spent in forward passes: divided by the elapsed time, how busy the model was


class MicroBatcher:
    """``await batcher.logits(texts)`` returns ``run(all texts of the batch)``'s rows for ``texts``."""

    def __init__(self, run: Callable[[list[str]], torch.Tensor], max_batch: int, max_wait_ms: float):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        # One thread: PyTorch already uses every core inside a forward pass; two passes at once would only fight.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.stats = BatchStats()
        self.worker: asyncio.Task | None = None
        self.last_batch_requests = 0  # requests in the previous batch: more than one means concurrent load

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._serve_forever())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=True)

    async def logits(self, texts: list[str]) -> torch.Tensor:
        waiting = _Waiting(list(texts), asyncio.get_running_loop().create_future())
        await self.queue.put(waiting)
        return await waiting.answer

    async def _next_batch(self) -> list[_Waiting]:
        batch = [await self.queue.get()]
        size = len(batch[0].texts)
        # Waiting pays only when other requests are likely to come: under load, i.e. when the last batch had company.
        wait = self.max_wait if self.last_batch_requests > 1 else 0.0
        deadline = batch[0].arrived + wait
        while size < self.max_batch:
            try:
                # Requests already queued (they arrived while the previous batch ran) join at once, even when the
                # first one's wait is over: waiting is for requests still to come, never for those already here.
                waiting = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    waiting = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(waiting)
            size += len(waiting.texts)
        self.last_batch_requests = len(batch)
        return batch

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [w for w in await self._next_batch() if not w.answer.cancelled()]  # timed-out requests left
            if not batch:
                continue
            texts = [text for waiting in batch for text in waiting.texts]
            started = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self.executor, self.run, texts)
            except Exception as error:  # a failed pass fails its own requests, never the worker
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(error)
                continue
            self.stats.busy_seconds += time.perf_counter() - started
            self.stats.forward_passes += 1
            self.stats.texts += len(texts)
            self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
            start = 0
            for waiting in batch:
                rows = logits[start:start + len(waiting.texts)]
                start += len(waiting.texts)
                if not waiting.answer.done():
                    waiting.answer.set_result(rows)
