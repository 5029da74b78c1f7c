"""The Kafka door against the session's real broker and Redis: payments in on `transactions`,
decisions out on `decisions`, malformed messages to the dead-letter topic, stale ones shed with an
explicit degraded decision. Nothing is mocked."""

import time
import uuid

import msgspec
import pytest

from deploy.kafka import make_consumer, make_producer, produce_all, read_topic
from rules_engine import load_rules
from schema import DeadLetter, DecisionThresholds, decode_decision, encode
from scoring import DecisionEngine, DecisionPublisher, ScorerMetrics
from scoring.kafka_door import KafkaDecisionDoor, KafkaDoorConfig
from streaming import OnlineFeatureStore
from tests.factories import txn

pytestmark = pytest.mark.integration


def _door(kafka_bootstrap, topics, redis_client, model, shed_after_s):
    metrics = ScorerMetrics()
    engine = DecisionEngine(
        load_rules(), model, OnlineFeatureStore(redis_client, "doortest"), DecisionThresholds(), metrics
    )
    publisher = DecisionPublisher(make_producer(kafka_bootstrap), topics.decisions, metrics)
    consumer = make_consumer(kafka_bootstrap, f"door-{uuid.uuid4().hex[:8]}", [topics.transactions])
    door = KafkaDecisionDoor(
        engine,
        publisher,
        consumer,
        make_producer(kafka_bootstrap),
        topics.dead_letter,
        KafkaDoorConfig(poll_timeout_s=0.2, shed_after_s=shed_after_s),
    )
    return door, metrics


def _drain(door, expected: int, timeout_s: float = 30.0) -> None:
    """Step the door until it has read ``expected`` messages, then flush what it produced."""
    read, deadline = 0, time.monotonic() + timeout_s
    while read < expected and time.monotonic() < deadline:
        read += door.step()
    door.publisher.flush()
    door.dead_letters.flush(10)
    door.consumer.close()
    assert read == expected, f"the door read {read} of {expected} messages"


def test_payments_are_decided_and_bad_messages_go_to_dead_letter_without_stopping_the_door(
    kafka_bootstrap, topics, redis_client, model
):
    good = [txn(n, minutes=n) for n in range(3)]
    negative = msgspec.json.decode(encode(txn(9)))
    negative["amount_minor"] = -5
    messages = [encode(good[0]), b"{not json", encode(good[1]), msgspec.json.encode(negative), encode(good[2])]
    produce_all(make_producer(kafka_bootstrap), topics.transactions, [(None, m) for m in messages])
    door, metrics = _door(kafka_bootstrap, topics, redis_client, model, shed_after_s=600)

    _drain(door, expected=len(messages))

    decisions = [decode_decision(m.value()) for m in read_topic(kafka_bootstrap, topics.decisions)]
    assert sorted(d.transaction_id for d in decisions) == sorted(t.transaction_id for t in good)
    assert all(d.degraded_reason is None and d.score is not None and d.model_version for d in decisions)
    letters = [msgspec.json.decode(m.value(), type=DeadLetter) for m in read_topic(kafka_bootstrap, topics.dead_letter)]
    assert [letter.payload for letter in letters] == ["{not json", msgspec.json.encode(negative).decode()]
    assert "amount_minor" in letters[1].reason  # the error names the field
    assert all(letter.source_topic == topics.transactions for letter in letters)
    assert metrics.registry.get_sample_value("fraud_invalid_requests_total") == 2


def test_payments_that_waited_past_the_budget_are_shed_with_an_explicit_decision(
    kafka_bootstrap, topics, redis_client, model
):
    late = [txn(n, minutes=n, amount_minor=amount) for n, amount in enumerate([2_000, 90_000])]
    produce_all(make_producer(kafka_bootstrap), topics.transactions, [(None, encode(t)) for t in late])
    time.sleep(0.2)  # both are now older than the door's 50 ms budget when it reads them
    door, metrics = _door(kafka_bootstrap, topics, redis_client, model, shed_after_s=0.05)

    _drain(door, expected=len(late))

    decisions = {
        d.transaction_id: d
        for d in map(decode_decision, (m.value() for m in read_topic(kafka_bootstrap, topics.decisions)))
    }
    assert set(decisions) == {t.transaction_id for t in late}  # shed, never dropped
    assert all(d.degraded_reason.startswith("shed") and d.score is None for d in decisions.values())
    assert decisions[late[1].transaction_id].outcome == "flag"  # the conservative default: large amounts reviewed
    assert metrics.registry.get_sample_value("fraud_degraded_decisions_total", {"reason": "shed"}) == 2
