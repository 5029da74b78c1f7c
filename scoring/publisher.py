"""Hands decisions to Kafka without making the decision path wait for the broker."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import Producer

from schema import Decision, encode
from scoring.metrics import ScorerMetrics
from scoring.reasons import needs_reasons


class DecisionPublisher:
    """Asynchronous, batched publishing of decisions to the ``decisions`` topic.

    ``produce`` only queues in librdkafka's buffer; delivery happens on its thread. A full buffer
    (broker away for long) is counted as a publish failure rather than blocking authorisations;
    bounded buffering with spill-to-disk is the reliability issue's job.
    """

    def __init__(self, producer: Producer, topic: str, metrics: ScorerMetrics) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.metrics.publish_failures.inc()

    def publish(self, decisions: Iterable[Decision]) -> None:
        """Queue ``decisions`` in the producer; the time it takes is the ``publish`` stage of
        ``fraud_decision_latency_seconds`` (one observation per batch)."""
        started = time.perf_counter()
        for decision in decisions:
            try:
                self.producer.produce(
                    self.topic,
                    key=decision.transaction_id.encode(),
                    value=encode(decision),
                    on_delivery=self._delivered,
                )
            except BufferError:
                self.metrics.publish_failures.inc()
        self.producer.poll(0)
        self.metrics.observe_stage("publish", time.perf_counter() - started)

    def flush(self, timeout: float = 10.0) -> int:
        return self.producer.flush(timeout)


log = logging.getLogger(__name__)


class ExplainingPublisher:
    """Publishes approvals at once and flagged/blocked decisions once their reason codes are in.

    Reason codes (TreeSHAP) cost about a millisecond per explained row (docs/performance.md,
    section 8); computed inline, every payment batched with a flagged one would wait for them. Here
    the reply goes out first and a worker thread explains and publishes; XGBoost releases the GIL
    while it computes, so on a second core this overlaps the decision loop. The queue is bounded:
    when it is full (a flood of flags) decisions are published without reasons and counted, never
    held back and never dropped.
    """

    def __init__(
        self,
        inner: DecisionPublisher,
        explain: Callable[[Sequence[Decision]], list[Decision]],
        max_pending_batches: int = 1000,
    ) -> None:
        self.inner = inner
        self.explain = explain
        self.metrics = inner.metrics
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
            batch = self._queue.get()
            try:
                self.inner.publish(self.explain(batch))
            except Exception:  # noqa: BLE001 - explaining must never lose a decision
                log.exception("explaining %d decisions failed; published without reasons", len(batch))
                self.inner.publish(batch)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for the explanations in hand, then for Kafka; returns messages still undelivered."""
        self._queue.join()
        return self.inner.flush(timeout)
