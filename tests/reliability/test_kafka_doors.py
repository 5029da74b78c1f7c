"""Both Kafka doors under one generated batch of hostile events, produced once to `transactions`
between valid ones, against the session's real broker and Redis: the scorer's Kafka door and the
feature stream (`fraud stream`, a subprocess). Every hostile event lands on the door's dead-letter
topic with a reason naming the field, every valid one is decided (scorer) or aggregated once
(stream), nobody crashes, and the counts add up exactly."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from deploy import ensure_topics, make_consumer, make_producer, produce_all, read_topic
from fraud.processes import wait_for
from schema import DeadLetter, decode_decision, decode_transaction
from schema.codec import DEAD_LETTER_PAYLOAD_MAX
from scoring.kafka_door import KafkaDecisionDoor, KafkaDoorConfig
from streaming import OnlineFeatureStore
from tests.integration.helpers import fraud_env, start
from tests.reliability.conftest import scorer_service
from tests.reliability.hostile import Hostile, hostile_batch, valid_fields

pytestmark = pytest.mark.integration

# Beyond the generated events: a message past the dead-letter payload cut, and retried copies.
HUGE = Hostile("huge", b'{"transaction_id": "' + b"h" * (3 * DEAD_LETTER_PAYLOAD_MAX) + b'"}', "oversized", None)
# Invalid UTF-8 inside a string: msgspec raised UnicodeDecodeError, not a DecodeError, and it
# went past both doors' error handling (a crash) until the schema turned it into an InvalidEvent.
BAD_UTF8 = Hostile(
    "invalid UTF-8", json.dumps(valid_fields(999)).encode().replace(b"card-h", b"card-\xff\xfe"), "`$.card_id`", None
)
DUPLICATED = 3


def generated_batch() -> list[Hostile]:
    """One batch drawn by hypothesis: every kind of hostile event, twice, shuffled."""
    drawn: list[list[Hostile]] = []

    @settings(
        max_examples=1,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(hostile_batch(per_kind=2), st.randoms(use_true_random=False))
    def draw(batch, rng):
        drawn.append(batch)

    draw()
    return drawn[0]


@pytest.fixture(scope="module")
def events() -> list[tuple[bytes, Hostile]]:
    """(key, event) in produce order: the generated batch, the two above, copies of valid events."""
    batch = [*generated_batch(), HUGE, BAD_UTF8]
    valid = [e for e in batch if e.expect is None]
    batch += valid[:DUPLICATED]  # a producer's retries: the same record again
    return [(f"k{i}".encode(), e) for i, e in enumerate(batch)]


def produce(kafka_bootstrap, topic, events) -> None:
    produce_all(make_producer(kafka_bootstrap), topic, [(key, e.raw) for key, e in events])


def check_letters(letters: list, events: list[tuple[bytes, Hostile]], topic: str) -> None:
    by_key = {key: e for key, e in events}
    hostile = {key for key, e in events if e.expect is not None}
    assert sorted(m.key() for m in letters) == sorted(hostile)  # each hostile event once, nothing else
    for m in letters:
        letter = msgspec.json.decode(m.value(), type=DeadLetter)
        event = by_key[m.key()]
        assert event.expect in letter.reason, (event.kind, letter.reason)
        assert letter.source_topic == topic
        if len(event.raw) > DEAD_LETTER_PAYLOAD_MAX:
            assert letter.payload_bytes == len(event.raw) and len(letter.payload) <= DEAD_LETTER_PAYLOAD_MAX
        else:
            assert letter.payload == event.raw.decode("utf-8", errors="replace") and letter.payload_bytes is None


def test_the_scorers_kafka_door(kafka_bootstrap, topics, redis_client, model, events):
    dead_letter_topic = f"dead-letter-scorer-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [dead_letter_topic])
    produce(kafka_bootstrap, topics.transactions, events)
    service = scorer_service(kafka_bootstrap, topics, redis_client, model)
    consumer = make_consumer(kafka_bootstrap, f"door-{uuid.uuid4().hex[:8]}", [topics.transactions])
    door = KafkaDecisionDoor(
        service.engine,
        service.publisher,
        consumer,
        make_producer(kafka_bootstrap),
        dead_letter_topic,
        KafkaDoorConfig(poll_timeout_s=0.2, shed_after_s=600),
    )
    read, deadline = 0, time.monotonic() + 30
    while read < len(events) and time.monotonic() < deadline:
        read += door.step()  # a crash would raise here
    door.publisher.flush()
    door.dead_letters.flush(10)
    door.consumer.close()
    assert read == len(events)

    decisions = [decode_decision(m.value()) for m in read_topic(kafka_bootstrap, topics.decisions)]
    letters = read_topic(kafka_bootstrap, dead_letter_topic)
    valid = [e for _, e in events if e.expect is None]
    unique_ids = {decode_transaction(e.raw).transaction_id for e in valid}
    assert len(unique_ids) == len(valid) - DUPLICATED
    assert {d.transaction_id for d in decisions} == unique_ids  # every valid payment decided
    # a retried copy is decided again or (idempotent scorer) answered from the first decision
    assert len(unique_ids) <= len(decisions) <= len(valid)
    assert len(unique_ids) + DUPLICATED + len(letters) == len(events)  # every message accounted for
    assert all(d.outcome in ("approve", "flag", "block") for d in decisions)
    check_letters(letters, events, topics.transactions)
    metrics = service.engine.metrics.registry
    assert metrics.get_sample_value("fraud_dead_letters_total", {"reason": "invalid"}) == len(letters)


def stream_counts(port: int) -> dict[str, float]:
    """The stream's fraud_stream_transactions_total by outcome ({} until its /metrics is up)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "fraud_stream_transactions_total"
    }


def test_the_feature_stream(kafka_bootstrap, redis_url, redis_client, topics, tmp_path, events):
    produce(kafka_bootstrap, topics.transactions, events)
    env = fraud_env(kafka_bootstrap, redis_url, topics, tmp_path)
    proc = start("stream", ["stream"], env, tmp_path)
    store = OnlineFeatureStore(redis_client)
    valid = [e for _, e in events if e.expect is None]
    unique = len(valid) - DUPLICATED
    hostile = len(events) - len(valid)
    port = int(env["FRAUD_STREAM_METRICS_PORT"])
    try:
        wait_for(
            lambda: sum(stream_counts(port).values()) >= len(events), 60, "every event seen", alive=proc.check_alive
        )
        letters = read_topic(kafka_bootstrap, topics.dead_letter, idle_s=1.0)
        counts = stream_counts(port)
        proc.check_alive()  # still running after all of it
    finally:
        proc.stop()

    assert {k: v for k, v in counts.items() if v} == {"admitted": unique, "duplicate": DUPLICATED, "invalid": hostile}
    assert counts["admitted"] + counts["duplicate"] + len(letters) == len(events)  # nothing lost
    assert store.counts()["events"] == unique  # each valid payment aggregated once
    check_letters(letters, events, topics.transactions)
