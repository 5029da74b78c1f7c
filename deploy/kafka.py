"""Kafka plumbing every component shares: topic names, topic creation, producers, consumers.

Works against the embedded tansu broker and any real Kafka cluster alike. Note (STACK-NOTES):
tansu's high watermark can read low after batched produces, so nothing here relies on it;
consumers read until the topic has been idle for a while instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import astuple, dataclass

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import Consumer as _Consumer
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class Topics:
    transactions: str = "transactions"
    decisions: str = "decisions"
    dead_letter: str = "dead-letter"
    labels: str = "labels"
    shadow_decisions: str = "decisions-shadow"  # what a shadow challenger would have decided

    def all(self) -> tuple[str, ...]:
        return astuple(self)


DEFAULT_TOPICS = Topics()


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int = 1, timeout: float = 15.0) -> None:
    """Create the topics that do not exist yet, and wait until the broker lists them all."""
    names = list(names)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    for name, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create topic {name!r}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while True:
        listed = set(admin.list_topics(timeout=timeout).topics)
        missing = [n for n in names if n not in listed]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics not visible after creation: {missing}")
        time.sleep(0.1)


def make_producer(bootstrap: str, **overrides: object) -> Producer:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,  # coalesce into batches: ~155k msg/s against tansu (STACK-NOTES)
        "acks": "all",
        # lz4 per record batch: a decision record (~2.8 KB of JSON then, ~1.4 KB with packed
        # features) repeats its field names in every message, and the broker's CPU follows the
        # bytes it is sent. `fraud bench` at
        # 10,000/s, 2 scorers: the embedded broker at 11% of a core instead of 20%; zstd took it to
        # 9% but cost the scorers ~5% more (docs/performance.md). Consumers decompress unasked.
        "compression.type": "lz4",
    }
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    return Producer(config)


def make_consumer(
    bootstrap: str, group_id: str, topics: Iterable[str], from_beginning: bool = True, **overrides: object
) -> _Consumer:
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": True,
        # Tansu holds a group join for a share of the session timeout: 45 s by default made the
        # first poll wait ~24 s; 6 s brings it to ~3.7 s (measured here), and is a sane production value.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    config.update({k.replace("_", "."): v for k, v in overrides.items()})
    consumer = _Consumer(config)
    consumer.subscribe(list(topics))
    return consumer


def consume_until_idle(
    consumer: _Consumer, idle_s: float = 2.0, max_messages: int | None = None, timeout_s: float = 60.0
) -> list[Message]:
    """Every message that arrives until none has for ``idle_s`` (or a limit is reached).

    The idle clock starts once the consumer has partitions: joining a group takes seconds, and
    an empty poll before that says nothing about the topic.
    """
    messages: list[Message] = []
    started = time.monotonic()
    last: float | None = None
    while True:
        now = time.monotonic()
        if last is None and consumer.assignment():
            last = now
        if (last is not None and now - last >= idle_s) or now - started >= timeout_s:
            return messages
        for msg in consumer.consume(num_messages=500, timeout=0.2):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            messages.append(msg)
            last = time.monotonic()
            if max_messages is not None and len(messages) >= max_messages:
                return messages


def read_topic(bootstrap: str, topic: str, idle_s: float = 1.0, timeout_s: float = 60.0) -> list[Message]:
    """Every message on ``topic`` from the beginning, without a consumer group (no rebalance wait)."""
    consumer = _Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-reader", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        return consume_until_idle(consumer, idle_s=idle_s, timeout_s=timeout_s)
    finally:
        consumer.close()


def produce_all(producer: Producer, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce every (key, value) and wait for delivery; raises if any was not delivered."""
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    n = 0
    for key, value in items:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
        n += 1
        if n % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} messages to {topic!r} still undelivered after 60 s")
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} messages to {topic!r} failed, first: {failures[0]}")
    return n
