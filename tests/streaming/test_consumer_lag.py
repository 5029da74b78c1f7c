"""The feature stream's consumer lag against the session's real broker: its offsets live in bytewax
recovery state, so the lag is the high watermark minus the offsets its validation step has seen.
Messages are read with a real consumer and handed to the step as bytewax's Kafka source does."""

import pytest
from bytewax.connectors.kafka import KafkaSourceMessage
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from deploy.kafka import make_producer, produce_all
from schema import encode
from streaming.dataflow import StreamConfig, _Steps
from streaming.metrics import StreamMetrics
from tests.factories import txn

pytestmark = pytest.mark.integration


def _read(consumer: Consumer, n: int) -> list[KafkaSourceMessage]:
    out: list[KafkaSourceMessage] = []
    while len(out) < n:
        for msg in consumer.consume(num_messages=n - len(out), timeout=5):
            assert msg.error() is None, msg.error()
            out.append(
                KafkaSourceMessage(
                    key=msg.key(), value=msg.value(), topic=msg.topic(), offset=msg.offset(), partition=msg.partition()
                )
            )
    return out


def test_lag_is_what_the_stream_has_not_validated_yet(kafka_bootstrap, topics):
    produced = [txn(n, minutes=n) for n in range(10)]
    producer = make_producer(kafka_bootstrap)
    for t in produced:  # one at a time: tansu's high watermark reads low after batched produces (STACK-NOTES)
        produce_all(producer, topics.transactions, [(None, encode(t))])
    metrics = StreamMetrics()
    steps = _Steps(StreamConfig(kafka_bootstrap, "redis://unused", transactions_topic=topics.transactions), metrics)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "lag-test", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topics.transactions, 0, OFFSET_BEGINNING)])

    def lag() -> float | None:
        labels = {"consumer": "feature-stream", "topic": topics.transactions, "partition": "0"}
        return metrics.registry.get_sample_value("fraud_kafka_consumer_lag", labels)

    try:
        steps.transactions_by_card_shard(_read(consumer, 4))
        steps.lag.refresh()
        assert lag() == 6
        steps.transactions_by_card_shard(_read(consumer, 6))
        steps.lag.refresh()
        assert lag() == 0
    finally:
        consumer.close()
        steps.lag.close()
