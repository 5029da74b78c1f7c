"""Hands decisions to Kafka without making the decision path wait for the broker."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import Message, Producer

from schema import Decision, encode
from scoring.metrics import ScorerMetrics
from scoring.reasons import needs_reasons
from scoring.spill import Spill, SpillReplayer


class DecisionPublisher:
    """Asynchronous, batched publishing of decisions to the ``decisions`` topic.

    ``produce`` only queues in librdkafka's buffer; delivery happens on its thread. When the broker
    is away the buffer fills (it is bounded, see ``deploy.kafka.make_producer``): with a ``spill``,
    what does not fit, times out in the buffer or is purged at shutdown goes to disk and is
    replayed when the broker is back (``scoring.spill``); without one it is counted as a publish
    failure. Authorisations never wait for the broker either way.
    """

    def __init__(self, producer: Producer, topic: str, metrics: ScorerMetrics, spill: Spill | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.spill = spill
        self.replayer = (
            SpillReplayer(spill, producer, self._delivered, metrics.decisions_replayed.inc).start() if spill else None
        )

    def _delivered(self, err: object, msg: Message) -> None:
        if err is not None:
            self._keep(msg.topic(), msg.key(), msg.value())

    def _keep(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self.spill is not None and self.spill.append(topic, key, value):
            self.metrics.decisions_spilled.inc()
        else:
            self.metrics.publish_failures.inc()

    def publish(self, decisions: Iterable[Decision]) -> None:
        """Queue ``decisions`` in the producer; the time it takes is the ``publish`` stage of
        ``fraud_decision_latency_seconds`` (one observation per batch)."""
        started = time.perf_counter()
        for decision in decisions:
            key, value = decision.transaction_id.encode(), encode(decision)
            try:
                self.producer.produce(self.topic, key=key, value=value, on_delivery=self._delivered)
            except BufferError:
                self._keep(self.topic, key, value)
        self.producer.poll(0)
        self.metrics.observe_stage("publish", time.perf_counter() - started)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for delivery; with a spill, whatever is still undelivered is purged into it."""
        remaining = self.producer.flush(timeout)
        if remaining and self.spill is not None:
            self.producer.purge(in_queue=True, in_flight=False)
            self.producer.poll(1.0)  # runs the delivery callbacks, which spill the purged messages
            remaining = len(self.producer)
        if self.replayer is not None:
            self.replayer.stop()
        return remaining


log = logging.getLogger(__name__)


class ExplainingPublisher:
    """Publishes approvals at once and flagged/blocked decisions once their reason codes are in.

    Reason codes (TreeSHAP) cost about a millisecond per explained row (docs/performance.md,
    section 8); computed inline, every payment batched with a flagged one would wait for them. Here
    the reply goes out first and a worker thread explains and publishes; XGBoost releases the GIL
    while it computes, so on a second core this overlaps the decision loop. The queue is bounded:
    when it is full (a flood of flags) decisions are published without reasons and counted, never
    held back and never dropped.

    The worker explains the flagged decisions of several batches in one call: after taking a
    batch it collects what else arrives for up to ``collect_s`` (at most ``collect_rows`` rows).
    XGBoost's TreeSHAP costs ~1.4 ms for one row but ~0.8–1 ms per row in calls of 4–64
    (docs/performance.md), and at a 1% flag rate most batches hold one flagged row. The price is
    that a flagged decision reaches `decisions` up to ``collect_s`` later; the reply never waits.
    """

    def __init__(
        self,
        inner: DecisionPublisher,
        explain: Callable[[Sequence[Decision]], list[Decision]],
        max_pending_batches: int = 1000,
        collect_s: float = 0.1,
        collect_rows: int = 256,
    ) -> None:
        self.inner = inner
        self.explain = explain
        self.metrics = inner.metrics
        self.collect_s = collect_s
        self.collect_rows = collect_rows
        self._queue: queue.Queue[list[Decision]] = queue.Queue(max_pending_batches)
        self._worker = threading.Thread(target=self._run, name="explain-publish", daemon=True)
        self._worker.start()

    def publish(self, decisions: Iterable[Decision]) -> None:
        now, later = [], []
        for d in decisions:
            (later if needs_reasons(d) else now).append(d)
        if now:
            self.inner.publish(now)
        if later:
            try:
                self._queue.put_nowait(later)
            except queue.Full:
                self.metrics.count_degraded("reasons_skipped", len(later))
                self.inner.publish(later)

    def _run(self) -> None:
        while True:
            batches = self._collect()
            decisions = [d for batch in batches for d in batch]
            try:
                self.inner.publish(self.explain(decisions))
            except Exception:  # noqa: BLE001 - explaining must never lose a decision
                log.exception("explaining %d decisions failed; published without reasons", len(decisions))
                self.inner.publish(decisions)
            finally:
                for _ in batches:
                    self._queue.task_done()

    def _collect(self) -> list[list[Decision]]:
        """The next batch, and those that arrive within ``collect_s`` of it (up to ``collect_rows``)."""
        batches = [self._queue.get()]
        rows = len(batches[0])
        deadline = time.monotonic() + self.collect_s
        while rows < self.collect_rows and (left := deadline - time.monotonic()) > 0:
            try:
                batches.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
            rows += len(batches[-1])
        return batches

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for the explanations in hand, then for Kafka; returns messages still undelivered."""
        self._queue.join()
        return self.inner.flush(timeout)
