"""The Kafka door of the decision service: transactions in from a topic, decisions out to another.

For producers that publish payments rather than call a service (a processor's authorisation log,
a batch of card-not-present orders). Each poll takes what has arrived and decides it as one
batch, as the gRPC door's batcher does, and like it cuts the batch to about ``batch_time_s`` of
work at the measured cost per payment (at most ``max_batch``), so one huge poll cannot hold every
payment in it past the budget.

Shedding, while the door is behind: a message older than ``shed_after_s`` when it is read (by its
Kafka timestamp) gets the rules-only degraded decision at once, so a backlog drains within the
latency budget instead of every decision in it arriving late. "Behind" means the messages still
waiting in the read partitions (cached high watermark minus the last offset read) would take
longer than ``shed_after_s`` at the door's measured cost per payment. A message that is merely
old because the broker or the producer was slow, with nothing queued behind it, is decided in
full: shedding it would degrade the decision without making it any faster. Malformed messages
go to the dead-letter topic with the reason (counted in ``fraud_dead_letters_total{reason="invalid"}``).

The door's lag, ``fraud_kafka_consumer_lag{consumer="scorer"}``, is its position in each assigned
partition against the high watermark of the last fetch (cached by librdkafka: no broker request),
refreshed every ``lag_refresh_s`` on the door's own loop.

Delivery is at least once: offsets are committed after the batch's decisions are handed to the
producer, so a crash between the two re-decides a few payments; decisions are keyed by
transaction id, and consumers of ``decisions`` keep the first one per key (docs/architecture.md).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from deploy.lag import ConsumerLag, record_positions
from schema import Decision, InvalidEvent, Transaction, dead_letter, decode_transaction, encode
from scoring.engine import DecisionEngine
from scoring.experiment import ExperimentRouter
from scoring.publisher import DecisionPublisher


@dataclass(frozen=True)
class KafkaDoorConfig:
    max_batch: int = 4000
    batch_time_s: float = 0.02  # the work one poll may take on (the gRPC batcher's cut, too)
    poll_timeout_s: float = 0.002  # an empty poll costs this much latency at most
    shed_after_s: float = 0.05
    # The cost per payment assumed before the first batch is measured (then an average of batches).
    initial_cost_per_payment_s: float = 0.0005
    lag_refresh_s: float = 1.0  # how often fraud_kafka_consumer_lag is set (0: every poll)


class KafkaDecisionDoor:
    def __init__(
        self,
        engine: DecisionEngine | ExperimentRouter,
        publisher: DecisionPublisher,
        consumer: Consumer,
        dead_letters: Producer,
        dead_letter_topic: str,
        config: KafkaDoorConfig | None = None,
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.dead_letter_topic = dead_letter_topic
        self.config = config or KafkaDoorConfig()
        self.cost_per_payment_s = self.config.initial_cost_per_payment_s
        self.lag = ConsumerLag(engine.metrics.consumer_lag, "scorer")
        self._next_lag_refresh = 0.0

    def run(self, stop: threading.Event) -> None:
        """Decide until ``stop`` is set, then flush decisions and leave the group."""
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.publisher.flush()
            self.dead_letters.flush(10)
            self.consumer.close()

    def step(self) -> int:
        """One poll: decide what arrived. Returns the number of messages read."""
        messages = self.consumer.consume(num_messages=self.poll_limit(), timeout=self.config.poll_timeout_s)
        if time.monotonic() >= self._next_lag_refresh:
            self.refresh_lag()
        horizon_ms = (time.time() - self.config.shed_after_s) * 1000
        read = [
            (txn, msg.timestamp()[1] < horizon_ms) for msg in messages if (txn := self._transaction(msg)) is not None
        ]
        # The backlog is only looked up when something is old enough to shed.
        behind = any(old for _, old in read) and self.backlog_s(messages) > self.config.shed_after_s
        fresh = [txn for txn, old in read if not (behind and old)]
        stale = [txn for txn, old in read if behind and old]
        decisions = self._decide(fresh) if fresh else []
        if stale:
            decisions += self.engine.without_features(
                stale, f"shed: queued over {self.config.shed_after_s * 1000:.0f} ms"
            )
        self.publisher.publish(decisions)
        return len(messages)

    def refresh_lag(self) -> None:
        """Set the lag gauge of every assigned partition the door has a position in."""
        self._next_lag_refresh = time.monotonic() + self.config.lag_refresh_s
        record_positions(self.consumer, self.lag)

    def poll_limit(self) -> int:
        """Messages one poll may take: about ``batch_time_s`` of work, at least one."""
        return max(1, min(self.config.max_batch, int(self.config.batch_time_s / self.cost_per_payment_s)))

    def backlog_s(self, messages: Sequence[Message]) -> float:
        """Seconds of work waiting behind ``messages`` in their partitions, at the measured cost
        per payment; infinite while a partition's high watermark is not known yet."""
        last: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error() is None:
                last[(msg.topic(), msg.partition())] = msg.offset()
        waiting = 0
        for (topic, partition), offset in last.items():
            offsets = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if offsets is None or offsets[1] < 0:
                return math.inf
            waiting += max(0, offsets[1] - offset - 1)
        return waiting * self.cost_per_payment_s

    def _decide(self, transactions: list[Transaction]) -> list[Decision]:
        started = time.perf_counter()
        decisions = self.engine.decide_batch(transactions)
        per_payment = (time.perf_counter() - started) / len(transactions)
        self.cost_per_payment_s += 0.2 * (per_payment - self.cost_per_payment_s)  # a moving average
        return decisions

    def _transaction(self, msg: Message) -> Transaction | None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            raise KafkaException(err)
        try:
            if msg.value() is None:
                raise InvalidEvent("empty message (no value)")
            return decode_transaction(msg.value(), now=time.time())
        except InvalidEvent as exc:
            self.engine.metrics.invalid.inc()
            self.engine.metrics.dead_letters.labels("invalid").inc()
            letter = dead_letter(
                str(exc), msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.value() or b""
            )
            self.dead_letters.produce(self.dead_letter_topic, key=msg.key(), value=encode(letter))
            return None
