"""Server-side adaptive batching with load shedding: many requests, one decision batch at a time.

Each gRPC call (one transaction or a client's batch) is queued; one worker takes *everything*
queued, decides it as one batch (one Redis round trip, one ONNX call, one publish pass) on a
worker thread, answers every caller, and takes the next lot. Under light load a batch is one
request and nothing waits for a timer; under heavy load batches grow by themselves, which is
what keeps the fixed cost per batch (~0.5 ms of Python, STACK-NOTES) from capping throughput.

Load shedding: a request that has already waited longer than ``shed_after_s`` when the worker
reaches it gets an explicit degraded decision (rules only, conservative default: see
``DecisionEngine.without_features``) instead of a late one, so an overloaded server answers within
its latency budget and says so in the decision and the metrics. Never silence. Shed decisions are
made on a thread of their own: each costs rules, the idempotency record's round trip to Redis and
publishing, and made on the event loop, the 2,354 payments shed at once in one stall of a `fraud
bench` run held the loop for ~140 ms, so the replies of batches already decided waited too.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from schema import Decision, Transaction

DecideFn = Callable[[Sequence[Transaction]], list[Decision]]
ShedFn = Callable[[Sequence[Transaction], str], list[Decision]]


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_rows: int = 4000  # more queued than this waits for the next batch
    # A request queued longer than this is shed (answered degraded at once). Half the 100 ms
    # budget: the rest is for the network, the batch that is running and the client's own wait.
    shed_after_s: float = 0.05
    # A batch is cut to what the worker can decide in about this long (from the measured cost per
    # row): a huge batch would hold every request behind it past the budget before shedding could
    # look at them.
    batch_time_s: float = 0.02


@dataclass
class _Pending:
    transactions: Sequence[Transaction]
    future: asyncio.Future[list[Decision]]
    queued_at: float = field(default_factory=time.monotonic)


class DecisionBatcher:
    """Coalesces concurrent requests into one ``decide`` call at a time (see module docstring)."""

    def __init__(self, decide: DecideFn, shed: ShedFn, config: BatchingConfig | None = None) -> None:
        self._decide = decide
        self._shed = shed
        self.config = config or BatchingConfig()
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        # One thread: batches are decided one after another, so the decision for a card's second
        # payment always sees the first; the event loop keeps receiving requests meanwhile.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="decide")
        # Sheds run beside the decide thread (the engine's shared parts are thread-safe, and both
        # paths record first writer wins, so a payment shed and retried at once gets one answer).
        self._shedder = ThreadPoolExecutor(1, thread_name_prefix="shed")
        self._shedding: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references
        self._worker: asyncio.Task[None] | None = None
        self._row_cost_s = 0.0005  # seconds per decided row, a moving average; starts pessimistic

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def decide(self, transactions: Sequence[Transaction]) -> list[Decision]:
        """Decisions for ``transactions``, in order, once their batch has been decided."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="decision-batcher")
        pending = _Pending(transactions, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_rows += len(transactions)
        self._wakeup.set()
        return await pending.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                fresh, stale = self._take()
                if stale:
                    task = loop.create_task(self._answer_shed(stale))
                    self._shedding.add(task)
                    task.add_done_callback(self._shedding.discard)
                if fresh:
                    rows = [t for p in fresh for t in p.transactions]
                    started = time.perf_counter()
                    try:
                        decisions = await loop.run_in_executor(self._executor, self._decide, rows)
                        self._row_cost_s += 0.2 * ((time.perf_counter() - started) / len(rows) - self._row_cost_s)
                    except Exception as exc:  # noqa: BLE001 - every caller must get an answer
                        _fail(fresh, exc)
                        continue
                    _resolve(fresh, decisions)

    def _take(self) -> tuple[list[_Pending], list[_Pending]]:
        """Everything queued (up to max_batch_rows), split into requests in budget and stale ones."""
        fresh: list[_Pending] = []
        stale: list[_Pending] = []
        rows = 0
        horizon = time.monotonic() - self.config.shed_after_s
        limit = min(self.config.max_batch_rows, max(1, int(self.config.batch_time_s / self._row_cost_s)))
        while self._queue and (not fresh or rows + len(self._queue[0].transactions) <= limit):
            p = self._queue.popleft()
            self._queued_rows -= len(p.transactions)
            if p.queued_at < horizon:
                stale.append(p)
            else:
                fresh.append(p)
                rows += len(p.transactions)
        return fresh, stale

    async def _answer_shed(self, pending: list[_Pending]) -> None:
        rows = [t for p in pending for t in p.transactions]
        reason = f"shed: queued over {self.config.shed_after_s * 1000:.0f} ms"
        try:
            decisions = await asyncio.get_running_loop().run_in_executor(self._shedder, self._shed, rows, reason)
        except Exception as exc:  # noqa: BLE001 - every caller must get an answer
            _fail(pending, exc)
            return
        _resolve(pending, decisions)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)
        self._shedder.shutdown(wait=True)


def _fail(pending: list[_Pending], exc: Exception) -> None:
    for p in pending:
        if not p.future.done():
            p.future.set_exception(exc)


def _resolve(pending: list[_Pending], decisions: list[Decision]) -> None:
    start = 0
    for p in pending:
        end = start + len(p.transactions)
        if not p.future.done():  # the caller may have gone (deadline passed, cancelled)
            p.future.set_result(decisions[start:end])
        start = end
