"""Hands decisions to Kafka without making the decision path wait for the broker."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Producer

from schema import Decision, encode
from scoring.metrics import ScorerMetrics


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

    def flush(self, timeout: float = 10.0) -> int:
        return self.producer.flush(timeout)
