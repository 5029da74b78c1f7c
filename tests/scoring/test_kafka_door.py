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


def _door(kafka_bootstrap, topics, redis_client, model, shed_after_s, max_batch=4000):
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
        KafkaDoorConfig(max_batch=max_batch, poll_timeout_s=0.2, shed_after_s=shed_after_s, lag_refresh_s=0.0),
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
    assert metrics.registry.get_sample_value("fraud_dead_letters_total", {"reason": "invalid"}) == 2


def test_a_backlog_is_shed_with_explicit_decisions_and_drained_in_full(kafka_bootstrap, topics, redis_client, model):
    backlog = [txn(n, minutes=n / 10, amount_minor=90_000 if n % 2 else 2_000) for n in range(300)]
    produce_all(make_producer(kafka_bootstrap), topics.transactions, [(None, encode(t)) for t in backlog])
    time.sleep(0.2)  # all of them are now older than the door's budget when it reads them
    door, metrics = _door(kafka_bootstrap, topics, redis_client, model, shed_after_s=0.01, max_batch=50)

    _drain(door, expected=len(backlog))

    decisions = [decode_decision(m.value()) for m in read_topic(kafka_bootstrap, topics.decisions)]
    assert sorted(d.transaction_id for d in decisions) == sorted(t.transaction_id for t in backlog)  # none dropped
    shed = [d for d in decisions if d.degraded_reason is not None]
    assert len(shed) >= 150, len(shed)  # while the door was behind
    assert len(shed) < len(backlog)  # once nothing waited behind a poll, it decided in full
    assert all(d.degraded_reason.startswith("shed") and d.score is None for d in shed)
    assert {d.outcome for d in shed if d.transaction.amount_minor == 90_000} == {"flag"}  # the conservative default
    assert metrics.registry.get_sample_value("fraud_degraded_decisions_total", {"reason": "shed"}) == len(shed)


def test_an_old_payment_with_nothing_behind_it_is_decided_in_full(kafka_bootstrap, topics, redis_client, model):
    late = [txn(n, minutes=n) for n in range(2)]
    produce_all(make_producer(kafka_bootstrap), topics.transactions, [(None, encode(t)) for t in late])
    time.sleep(0.2)  # old, as after a slow broker hop, but the door is not behind
    door, _ = _door(kafka_bootstrap, topics, redis_client, model, shed_after_s=0.05)

    _drain(door, expected=len(late))

    decisions = [decode_decision(m.value()) for m in read_topic(kafka_bootstrap, topics.decisions)]
    assert sorted(d.transaction_id for d in decisions) == sorted(t.transaction_id for t in late)
    assert all(d.degraded_reason is None and d.score is not None for d in decisions)


def _lag(metrics, topic):
    return metrics.registry.get_sample_value(
        "fraud_kafka_consumer_lag", {"consumer": "scorer", "topic": topic, "partition": "0"}
    )


def test_a_poll_takes_no_more_than_its_time_budget_of_work_and_the_rest_shows_as_lag(
    kafka_bootstrap, topics, redis_client, model
):
    waiting = [txn(n, minutes=n) for n in range(12)]
    producer = make_producer(kafka_bootstrap)
    for t in waiting:  # one at a time: tansu's high watermark reads low after batched produces (STACK-NOTES)
        produce_all(producer, topics.transactions, [(None, encode(t))])
    door, metrics = _door(kafka_bootstrap, topics, redis_client, model, shed_after_s=600)
    door.cost_per_payment_s = door.config.batch_time_s / 3  # as if each payment took a third of the budget

    first = 0
    deadline = time.monotonic() + 30
    while first == 0 and time.monotonic() < deadline:
        first = door.step()  # the first poll that finds the topic's messages

    assert 0 < first <= 3  # all 12 were there to take; the cut allows 3
    assert _lag(metrics, topics.transactions) == len(waiting) - first
    _drain(door, expected=len(waiting) - first)  # the rest follow, none lost
    assert _lag(metrics, topics.transactions) == 0
