"""The Kafka door of the decision service: transactions in from a topic, decisions out to another.

For producers that publish payments rather than call a service (a processor's authorisation log,
a batch of card-not-present orders). Each poll takes what has arrived (up to ``max_batch``) and
decides it as one batch, exactly as the gRPC door's batcher does. A message older than
``shed_after_s`` when it is read (by its Kafka timestamp) is shed: it gets the rules-only
degraded decision at once, so a backlog drains within the latency budget instead of every
decision in it arriving late. Malformed messages go to the dead-letter topic with the reason.

Delivery is at least once: offsets are committed after the batch's decisions are handed to the
producer, so a crash between the two re-decides a few payments; decisions are keyed by
transaction id, so consumers of ``decisions`` keep the last one per key.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from schema import DeadLetter, InvalidEvent, Transaction, decode_transaction, encode
from scoring.engine import DecisionEngine
from scoring.publisher import DecisionPublisher


@dataclass(frozen=True)
class KafkaDoorConfig:
    max_batch: int = 4000
    poll_timeout_s: float = 0.002  # an empty poll costs this much latency at most
    shed_after_s: float = 0.05


class KafkaDecisionDoor:
    def __init__(
        self,
        engine: DecisionEngine,
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
        messages = self.consumer.consume(num_messages=self.config.max_batch, timeout=self.config.poll_timeout_s)
        fresh: list[Transaction] = []
        stale: list[Transaction] = []
        horizon_ms = (time.time() - self.config.shed_after_s) * 1000
        for msg in messages:
            txn = self._transaction(msg)
            if txn is not None:
                (stale if msg.timestamp()[1] < horizon_ms else fresh).append(txn)
        decisions = self.engine.decide_batch(fresh) if fresh else []
        if stale:
            decisions += self.engine.without_features(
                stale, f"shed: queued over {self.config.shed_after_s * 1000:.0f} ms"
            )
        self.publisher.publish(decisions)
        return len(messages)

    def _transaction(self, msg: Message) -> Transaction | None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            raise KafkaException(err)
        try:
            if msg.value() is None:
                raise InvalidEvent("empty message (no value)")
            return decode_transaction(msg.value())
        except InvalidEvent as exc:
            self.engine.metrics.invalid.inc()
            letter = DeadLetter(
                reason=str(exc),
                source_topic=msg.topic() or "",
                partition=msg.partition() or 0,
                offset=msg.offset() or 0,
                payload=(msg.value() or b"").decode("utf-8", errors="replace"),
                received_at=datetime.now(UTC),
            )
            self.dead_letters.produce(self.dead_letter_topic, key=msg.key(), value=encode(letter))
            return None
