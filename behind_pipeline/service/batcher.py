"""Micro-batching: requests that arrive within a few milliseconds of each other share one forward pass.

A forward pass over 32 short texts costs far less than 32 passes over one (chapter 6), but a server receives texts
one request at a time. The batcher keeps the waiting requests in arrival order. A pass takes their texts, in
order, while two limits hold: at most ``max_batch`` texts, and at most ``max_tokens`` padded tokens (the number of
texts times the longest one's tokens, what the pass really computes). A request whose texts did not all fit goes
to the back of the line with the rest, so a request of 64 long texts is served in several passes, and a short
request that arrived after it waits for one bounded pass, not for all of them (no head-of-line blocking); the
requests that arrived meanwhile get the next pass to themselves, not padded to the long request's texts.

The first waiting request may wait up to ``max_wait_ms`` for company, but only under concurrent load (when the
previous pass served more than one request): a lone client is never kept waiting for company that does not come.
Requests already queued join at once. The queue is bounded: past ``max_queue`` waiting texts, ``logits`` raises
:class:`QueueFull` at once, and the app answers 503 with ``Retry-After`` instead of letting every client wait.

The pass runs in a worker thread (so the event loop keeps answering ``/health``), and each request gets back
exactly its own rows. When a pass fails, each of its requests is run again on its own, so that only the request
that makes the model fail gets the error, never its batch-mates.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch


class QueueFull(Exception):
    """The batcher already holds ``max_queue`` waiting texts: the request is refused, not queued."""


@dataclass(eq=False)
class _Waiting:
    items: list
    costs: list[int]
    answer: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    sent: int = 0  # items already taken into a pass (they are sent in order)
    rows: dict = field(default_factory=dict)  # item index -> its row of logits


@dataclass
class BatchStats:
    """Counts that show the batching at work: forward passes, texts, and the largest batch seen."""

    forward_passes: int = 0
    texts: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0  # time spent in forward passes: divided by the elapsed time, how busy the model was
    failed_passes: int = 0  # passes that raised (their requests were then run one by one)
    refused_full: int = 0  # requests refused because the queue was full


class MicroBatcher:
    """``await batcher.logits(items)`` returns ``run(the items of a pass)``'s rows for ``items``.

    ``items`` are whatever ``run`` takes (texts, or token ids); ``costs`` (default 1 each) are their lengths in
    tokens, for the ``max_tokens`` budget. ``on_pass(size, seconds, failed)`` is called after each pass.
    """

    def __init__(self, run: Callable[[list], torch.Tensor], max_batch: int, max_wait_ms: float,
                 max_tokens: int | None = None, max_queue: int | None = None,
                 on_pass: Callable[[int, float, bool], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.max_tokens, self.max_queue, self.on_pass = max_tokens, max_queue, on_pass
        self.waiting: deque[_Waiting] = deque()
        self.queued = 0  # items waiting for a pass, over all requests
        self._arrival = asyncio.Event()
        # One thread: PyTorch already uses every core inside a forward pass; two passes at once would only fight.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.stats = BatchStats()
        self.worker: asyncio.Task | None = None
        self.last_batch_requests = 0  # requests in the previous pass: more than one means concurrent load
        self._partial: _Waiting | None = None  # a request the previous pass served only in part

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._serve_forever())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        for waiting in self.waiting:
            if not waiting.answer.done():
                waiting.answer.set_exception(RuntimeError("the service is shutting down"))
        self.waiting.clear()
        self.executor.shutdown(wait=True)

    async def logits(self, items: Sequence, costs: Sequence[int] | None = None) -> torch.Tensor:
        items = list(items)
        if self.max_queue is not None and self.queued + len(items) > self.max_queue:
            self.stats.refused_full += 1
            raise QueueFull(f"{self.queued} texts are waiting; at most {self.max_queue}")
        costs = [1] * len(items) if costs is None else [max(1, int(cost)) for cost in costs]
        waiting = _Waiting(items, costs, asyncio.get_running_loop().create_future())
        self.waiting.append(waiting)
        self.queued += len(items)
        self._arrival.set()
        return await waiting.answer  # cancelled with its caller (a timeout): the batcher then drops it

    def _drop_cancelled(self) -> None:
        for waiting in [w for w in self.waiting if w.answer.done()]:
            self.waiting.remove(waiting)
            self.queued -= len(waiting.items) - waiting.sent

    def _fits(self, size: int, longest: int, cost: int) -> bool:
        if size >= self.max_batch:
            return False
        return size == 0 or self.max_tokens is None or (size + 1) * max(longest, cost) <= self.max_tokens

    def _full(self) -> bool:
        """Whether the waiting items already fill a pass (no point in waiting for more)."""
        size = longest = 0
        for waiting in self.waiting:
            for cost in waiting.costs[waiting.sent:]:
                if not self._fits(size, longest, cost):
                    return True
                size, longest = size + 1, max(longest, cost)
        return size >= self.max_batch

    async def _wait_for_work(self) -> None:
        while True:
            self._drop_cancelled()
            if self.waiting:
                return
            self._arrival.clear()
            await self._arrival.wait()

    async def _next_pass(self) -> list[tuple[_Waiting, int]]:
        await self._wait_for_work()
        # Waiting pays only when other requests are likely to come: under load, i.e. when the last pass had company.
        wait = self.max_wait if self.last_batch_requests > 1 else 0.0
        deadline = self.waiting[0].arrived + wait
        while not self._full():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                break
        self._drop_cancelled()
        rest_of_long = None
        if self._partial is not None and self._partial in self.waiting:
            # The rest of a long request goes behind every request that arrived meanwhile: they get this pass.
            self.waiting.remove(self._partial)
            self.waiting.append(self._partial)
            # And only they: topped up with the long request's texts, the pass would be padded to their length
            # and cost the short requests as much as a whole long pass. The rest is first in line for the next.
            rest_of_long = self._partial if len(self.waiting) > 1 else None
        chosen, size, longest, partial = [], 0, 0, []
        for waiting in list(self.waiting):
            if waiting is rest_of_long and chosen:
                break
            while waiting.sent < len(waiting.items):
                cost = waiting.costs[waiting.sent]
                if not self._fits(size, longest, cost):
                    break
                chosen.append((waiting, waiting.sent))
                waiting.sent += 1
                size, longest = size + 1, max(longest, cost)
            if waiting.sent < len(waiting.items):
                partial.append(waiting)
                break  # the pass is full: first come, first served, nothing skips ahead
        for waiting in {id(w): w for w, _ in chosen}.values():
            if waiting.sent == len(waiting.items):
                self.waiting.remove(waiting)
        self._partial = partial[0] if partial and partial[0].sent else None
        self.queued -= size
        self.last_batch_requests = len({id(w) for w, _ in chosen})
        return chosen

    async def _run(self, items: list) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            logits = await loop.run_in_executor(self.executor, self.run, items)
        except Exception:
            self.stats.failed_passes += 1
            if self.on_pass is not None:
                self.on_pass(len(items), time.perf_counter() - started, True)
            raise
        seconds = time.perf_counter() - started
        self.stats.busy_seconds += seconds
        self.stats.forward_passes += 1
        self.stats.texts += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        if self.on_pass is not None:
            self.on_pass(len(items), seconds, False)
        return logits

    def _deliver(self, waiting: _Waiting, indices: list[int], logits: torch.Tensor) -> None:
        for index, row in zip(indices, logits, strict=True):
            waiting.rows[index] = row
        if len(waiting.rows) == len(waiting.items) and not waiting.answer.done():
            waiting.answer.set_result(torch.stack([waiting.rows[i] for i in range(len(waiting.items))]))

    def _fail(self, waiting: _Waiting, error: Exception) -> None:
        if waiting in self.waiting:  # its remaining items are dropped with it
            self.waiting.remove(waiting)
            self.queued -= len(waiting.items) - waiting.sent
        if not waiting.answer.done():
            waiting.answer.set_exception(error)

    async def _serve_forever(self) -> None:
        while True:
            chosen = await self._next_pass()
            if not chosen:
                continue
            by_request: dict[int, tuple[_Waiting, list[int]]] = {}
            for waiting, index in chosen:
                by_request.setdefault(id(waiting), (waiting, []))[1].append(index)
            try:
                logits = await self._run([waiting.items[index] for waiting, index in chosen])
            except Exception as error:
                if len(by_request) == 1:
                    self._fail(chosen[0][0], error)
                    continue
                # Isolation: each request again on its own, so only the one that makes the model fail gets the error.
                for waiting, indices in by_request.values():
                    try:
                        alone = await self._run([waiting.items[index] for index in indices])
                    except Exception as own_error:
                        self._fail(waiting, own_error)
                    else:
                        self._deliver(waiting, indices, alone)
                continue
            start = 0
            for waiting, indices in by_request.values():
                self._deliver(waiting, indices, logits[start:start + len(indices)])
                start += len(indices)
