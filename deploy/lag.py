"""Kafka consumer lag, exported the same way by every consumer of ours:
``fraud_kafka_consumer_lag{consumer, topic, partition}`` = messages between the consumer's next
offset and the partition's high watermark.

Two ways to know the next offset: a consumer that reads through librdkafka's own positions (the
scorer's Kafka door) sets the gauge itself with ``ConsumerLag.set``; one whose offsets live
elsewhere (the feature stream: in bytewax recovery state) notes the offsets it has processed and
lets ``ProcessedOffsetsLag`` ask the broker for the high watermarks on a thread of its own, every
few seconds, so the stream never waits for the broker on its behalf.

Against tansu the high watermark can read low after batched produces (STACK-NOTES), so lag reads
low there by up to ~1.5% of what was produced (never below 0); against Kafka it is exact.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger(__name__)

LAG_METRIC = "fraud_kafka_consumer_lag"


def consumer_lag_gauge(registry: CollectorRegistry) -> Gauge:
    return Gauge(
        LAG_METRIC,
        "Messages between the consumer's next offset and the partition's high watermark",
        ["consumer", "topic", "partition"],
        registry=registry,
    )


class ConsumerLag:
    """The lag gauge of one named consumer."""

    def __init__(self, gauge: Gauge, consumer: str) -> None:
        self.gauge = gauge
        self.consumer = consumer

    def set(self, topic: str, partition: int, next_offset: int, high_watermark: int) -> None:
        self.gauge.labels(self.consumer, topic, str(partition)).set(max(0, high_watermark - next_offset))


def record_positions(consumer: Consumer, lag: ConsumerLag) -> None:
    """Set ``lag`` for every partition ``consumer`` is assigned and has read from.

    Uses the high watermarks librdkafka cached from its last fetches: no broker round trip."""
    assignment = consumer.assignment()
    if not assignment:
        return
    for tp in consumer.position(assignment):
        if tp.offset < 0:  # nothing read from it yet: no position
            continue
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0:
            lag.set(tp.topic, tp.partition, tp.offset, high)


class ProcessedOffsetsLag:
    """Lag of a consumer that keeps its offsets outside Kafka, from the offsets it has processed.

    The reading side calls ``processed`` (one dict store per partition per batch); the gauge is
    refreshed by a daemon thread, started with the first ``processed`` call, that queries the
    high watermarks every ``interval_s``, and at once when a partition is seen for the first time
    (a partition shows up once a message of it has been processed).
    """

    def __init__(self, lag: ConsumerLag, bootstrap: str, interval_s: float = 5.0) -> None:
        self.lag = lag
        self.bootstrap = bootstrap
        self.interval_s = interval_s
        self.next_offsets: dict[tuple[str, int], int] = {}
        self._client: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # the thread and a caller of refresh share the client

    def processed(self, topic: str, partition: int, offset: int) -> None:
        """The message at ``offset`` has been processed (offsets only grow within a partition)."""
        key = (topic, partition)
        if key not in self.next_offsets:
            self._wake.set()
        self.next_offsets[key] = offset + 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"lag-{self.lag.consumer}", daemon=True)
            self._thread.start()

    def refresh(self, timeout_s: float = 2.0) -> None:
        """Query the high watermark of every partition seen and set the gauge."""
        with self._lock:
            if self._client is None:
                # Never subscribes: it only asks for offsets (the client wants a group id all the same).
                self._client = Consumer(
                    {"bootstrap.servers": self.bootstrap, "group.id": f"lag-probe-{uuid.uuid4().hex[:8]}"}
                )
            for (topic, partition), next_offset in dict(self.next_offsets).items():  # a copy: the reader goes on
                try:
                    _, high = self._client.get_watermark_offsets(TopicPartition(topic, partition), timeout_s)
                except KafkaException as exc:
                    log.warning("no high watermark for %s[%d]: %s", topic, partition, exc)
                    continue
                self.lag.set(topic, partition, next_offset, high)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a metric must never stop the consumer it describes
                log.exception("refreshing consumer lag failed")
            self._wake.wait(self.interval_s)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
