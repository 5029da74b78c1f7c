"""The feature stream against a real broker and Redis: malformed events are dead-lettered with a
reason naming the problem, the worker keeps running, and every valid event around them counts."""

import json

import pytest

from deploy import make_producer, produce_all, read_topic
from fraud.processes import wait_for
from schema import encode
from streaming import OfflineFeatureBuilder, OnlineFeatureStore
from streaming.packed import pack_state
from tests.factories import txn
from tests.integration.helpers import fraud_env, start

pytestmark = pytest.mark.integration

VALID = {
    "transaction_id": "x",
    "event_time": "2026-01-05T12:00:00Z",
    "card_id": "card-1",
    "customer_id": "cust-1",
    "merchant_id": "merch-1",
    "merchant_category": "grocery",
    "amount_minor": 1000,
    "currency": "EUR",
    "country": "DE",
    "card_country": "DE",
    "device_id": "dev-1",
}

MALFORMED = {
    "malformed json": (b'{"transaction_id": "bad-1", "amount_minor": ', "malformed JSON"),
    "missing field": (json.dumps({k: v for k, v in VALID.items() if k != "card_id"}).encode(), "card_id"),
    "wrong type": (json.dumps({**VALID, "amount_minor": "ten euros"}).encode(), "amount_minor"),
    "negative amount": (json.dumps({**VALID, "amount_minor": -500}).encode(), "amount_minor"),
    "naive time": (json.dumps({**VALID, "event_time": "2026-01-05T12:00:00"}).encode(), "event_time"),
}


def test_malformed_events_go_to_dead_letter_and_valid_ones_all_count(
    kafka_bootstrap, redis_url, redis_client, topics, tmp_path
):
    valid = [txn(i, minutes=i * 3, card=f"card-{i % 3}", merchant=f"m{i % 5}") for i in range(30)]
    stream_of_events = []
    bad = iter(MALFORMED.values())
    for i, t in enumerate(valid):
        stream_of_events.append((t.card_id.encode(), encode(t)))
        if i % 6 == 5:
            stream_of_events.append((None, next(bad)[0]))
    produce_all(make_producer(kafka_bootstrap), topics.transactions, stream_of_events)

    proc = start("stream", ["stream"], fraud_env(kafka_bootstrap, redis_url, topics, tmp_path), tmp_path)
    store = OnlineFeatureStore(redis_client)
    try:
        wait_for(lambda: store.counts().get("events", 0) >= len(valid), 60, "valid events", alive=proc.check_alive)
        letters = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, topics.dead_letter, idle_s=1.0)]
        proc.check_alive()  # still running after the bad input
    finally:
        proc.stop()

    assert store.counts()["events"] == len(valid)
    assert len(letters) == len(MALFORMED)
    for letter, (payload, field) in zip(letters, MALFORMED.values(), strict=True):
        assert field in letter["reason"], letter
        assert letter["payload"] == payload.decode() and letter["source_topic"] == topics.transactions

    # Redis holds exactly the state a replay of the valid events builds.
    builder = OfflineFeatureBuilder()
    builder.replay(valid)
    stored, _ = store.read_states(sorted(builder.states))
    assert set(stored) == set(builder.states)
    for key, state in builder.states.items():
        assert stored[key] == pack_state(state), key
