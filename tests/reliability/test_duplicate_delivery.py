"""Issue 8, item 2: the same Kafka records delivered twice change no aggregate and create no second
decision effect or review case.

* The feature stream (``fraud stream``, a real bytewax process): transactions and labels applied,
  then the very same records produced again (what a producer retry or a rewound offset delivers).
  Every entity state in Redis, the watermark and the event counter are unchanged; the repeats are
  counted as duplicates (within the allowed lateness) or dead-lettered as late (older), never applied.
  (The stream's ``labels`` counter in Redis counts label records applied, repeats included: a delivery
  counter, not an aggregate; the merchants' label-rate state does not change.)
* The scorer's Kafka door (``fraud serve --kafka``) reads the same transaction records twice and
  decides both: `decisions` is at least once, keyed by transaction id, and a repeat is not
  byte-identical (its decision time, and its features, which now include the first copy, differ;
  its outcome can differ too).
  The documented contract is that consumers dedupe by transaction id, first decision wins; the
  review intake does, so the effects downstream are single: one case and one history row per
  payment, however often and in whatever order the decisions are read.
"""

import json
import re
import urllib.request
import uuid
from datetime import timedelta

import msgspec
import pytest

from deploy import free_port, make_producer, produce_all, read_topic
from fraud.config import Settings
from fraud.lifecycle import intake_decisions
from fraud.processes import wait_for
from review_queue import ReviewStore, in_audit_sample, needs_post_auth_review
from schema import Label, LabelSource, Outcome, decode_decision, encode
from streaming import OnlineFeatureStore
from tests.factories import register_tiny_model, txn
from tests.integration.helpers import fraud_env, start

pytestmark = pytest.mark.integration


def _counter(port, name, label):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {m[0]: float(m[1]) for m in re.findall(rf'^{name}\{{{label}="([^"]+)"\}} (\S+)$', text, re.M)}


def _ours(decisions):
    return sum(d.transaction.card_id != "card-probe" for d in decisions)


def _redis_snapshot(client):
    """Every key's value except the stream's delivery counters (checked on their own)."""
    return {key: client.dump(key) for key in client.scan_iter(count=1000) if key != b"fraud:stream:counts"}


def test_the_feature_stream_applies_records_delivered_twice_once(
    kafka_bootstrap, redis_url, redis_client, topics, tmp_path
):
    n = 1200  # 40 cards, one payment each 3 s: repeats of the last 5 min per card are duplicates, older ones late
    arrivals = [
        txn(i, minutes=i / 20, card=f"card-{i % 40}", merchant=f"m{i % 13}", amount_minor=100 + i % 900)
        for i in range(n)
    ]
    labels = [
        Label(
            transaction_id=arrivals[i].transaction_id,
            is_fraud=i % 2 == 0,
            source=LabelSource.CHARGEBACK,
            known_at=arrivals[i].event_time + timedelta(minutes=30),
            author="issuer",
            merchant_id=arrivals[i].merchant_id,
        )
        for i in range(0, n, 61)
    ]
    records = [(t.card_id.encode(), encode(t)) for t in arrivals]
    producer = make_producer(kafka_bootstrap)
    produce_all(producer, topics.labels, [(None, encode(lb)) for lb in labels])
    produce_all(producer, topics.transactions, records)

    env = fraud_env(kafka_bootstrap, redis_url, topics, tmp_path, FRAUD_SNAPSHOT_INTERVAL_S="1")
    port = env["FRAUD_STREAM_METRICS_PORT"]
    store = OnlineFeatureStore(redis_client)
    stream = start("stream", ["stream"], env, tmp_path)
    seen = "fraud_stream_transactions_total"
    try:
        wait_for(
            lambda: store.counts().get("events", 0) >= n and store.counts().get("labels", 0) >= len(labels),
            60,
            "the first delivery applied",
            alive=stream.check_alive,
        )
        wait_for(lambda: sum(_counter(port, seen, "outcome").values()) >= n, 10, "every record seen")
        before = _redis_snapshot(redis_client)
        counts_before = store.counts()

        produce_all(producer, topics.labels, [(None, encode(lb)) for lb in labels])  # the same records again
        produce_all(producer, topics.transactions, records)
        wait_for(
            lambda: sum(_counter(port, seen, "outcome").values()) >= 2 * n,
            60,
            "the repeats read",
            alive=stream.check_alive,
        )
        wait_for(lambda: _redis_snapshot(redis_client) == before, 5, "Redis as before the repeats")
        outcomes = _counter(port, seen, "outcome")
    finally:
        stream.stop()
    after = _redis_snapshot(redis_client)
    assert after == before, [k for k in set(before) | set(after) if before.get(k) != after.get(k)][:5]
    # `events` counts admitted payments: unchanged. `labels` counts label records applied, repeats
    # included (known: a delivery counter, not an aggregate; the label-rate state above is unchanged).
    assert store.counts() == {"events": n, "labels": 2 * len(labels)} and counts_before["events"] == n
    assert outcomes["admitted"] == n and outcomes.get("duplicate", 0) + outcomes.get("late", 0) == n
    assert outcomes.get("duplicate", 0) > 0 and outcomes.get("late", 0) > 0  # both paths exercised


def test_the_scorers_kafka_door_and_review_intake_under_duplicate_delivery(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    version = register_tiny_model(tmp_path / "registry", lambda x: x[:, 0] > 1.0)
    meta_path = tmp_path / "registry" / "models" / version / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["operating_point"] = {"flag": 0.0, "block": 1.01}  # the model flags every payment it scores
    meta_path.write_text(json.dumps(meta))
    env = fraud_env(
        kafka_bootstrap,
        redis_url,
        topics,
        tmp_path,
        FRAUD_METRICS_PORT=str(free_port()),
        FRAUD_KEY_PREFIX=f"dup-{uuid.uuid4().hex[:6]}",
    )
    producer = make_producer(kafka_bootstrap)
    payments = [txn(i, minutes=i / 10, card=f"card-{i % 30}", amount_minor=1500) for i in range(300)]
    records = [(t.card_id.encode(), encode(t)) for t in payments]

    def decided():
        return [decode_decision(m.value()) for m in read_topic(kafka_bootstrap, topics.decisions, idle_s=0.3)]

    door = start("serve-kafka", ["serve", "--kafka"], env, tmp_path)
    try:
        probes = 0

        def probe_decided():  # the door reads from the end: wait until it has joined and decides
            nonlocal probes
            probes += 1
            produce_all(producer, topics.transactions, [(b"p", encode(txn(10_000 + probes, card="card-probe")))])
            return any(d.transaction.card_id == "card-probe" for d in decided())

        wait_for(probe_decided, 60, "the Kafka door deciding", poll_s=0.5, alive=door.check_alive)
        produce_all(producer, topics.transactions, records)
        wait_for(lambda: _ours(decided()) >= 300, 30, "the first delivery decided", alive=door.check_alive)
        produce_all(producer, topics.transactions, records)  # the same records again (a rewind)
        wait_for(lambda: _ours(decided()) >= 600, 30, "the repeats decided", alive=door.check_alive)
    finally:
        door.stop()

    messages = read_topic(kafka_bootstrap, topics.decisions, idle_s=0.5)
    ours = [m for m in messages if decode_decision(m.value()).transaction.card_id != "card-probe"]
    by_tx: dict[str, list[bytes]] = {}
    for m in ours:
        assert m.key() == decode_decision(m.value()).transaction_id.encode()  # keyed by transaction id
        by_tx.setdefault(m.key().decode(), []).append(m.value())
    assert len(by_tx) == 300 and all(len(v) == 2 for v in by_tx.values())  # at least once: a repeat each

    settings = Settings(
        home=tmp_path, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_suffix=env["FRAUD_TOPIC_SUFFIX"]
    )
    first: dict[str, object] = {}
    for m in messages:
        first.setdefault(m.key().decode(), decode_decision(m.value()))
    reviewable = [  # flagged, approved under the fail-open budget (post_auth), or in the audit sample
        d
        for d in first.values()
        if d.outcome is Outcome.FLAG
        or needs_post_auth_review(d)
        or (d.outcome is Outcome.APPROVE and in_audit_sample(d.transaction_id, settings.review_audit_rate))
    ]
    assert len(reviewable) > 100
    assert intake_decisions(settings, idle_s=0.5) == len(reviewable)  # one case per payment, not per record
    assert intake_decisions(settings, idle_s=0.5) == 0
    with ReviewStore(settings.review_db) as store:
        # read again from the beginning (a new consumer group, a rewound one): nothing new
        assert store.intake([decode_decision(m.value()) for m in messages], settings.review_audit_rate) == 0
        (cases,) = store.db.execute("SELECT COUNT(*) FROM cases").fetchone()
        (history,) = store.db.execute("SELECT COUNT(*) FROM card_payments").fetchone()
        assert cases == len(reviewable) and history == len(first)
        # the first decision wins: the case holds the first copy read, byte for byte
        tx = next(t for t in by_tx if decode_decision(by_tx[t][0]).outcome is Outcome.FLAG)
        (stored,) = store.db.execute("SELECT decision_json FROM cases WHERE transaction_id = ?", (tx,)).fetchone()
        assert stored.encode() == encode(decode_decision(by_tx[tx][0]))

        # a repeat that came out differently (a re-decision after a restart) cannot open a case
        # its first decision did not, nor be taken in twice within one read
        first = decode_decision(by_tx[tx][0])
        approved = msgspec.structs.replace(
            first,
            transaction=msgspec.structs.replace(first.transaction, transaction_id="tx-flip"),
            outcome=Outcome.APPROVE,
        )
        flagged = msgspec.structs.replace(approved, outcome=Outcome.FLAG)
        assert store.intake([approved, flagged], audit_rate=0.0) == 0
        assert store.intake([flagged], audit_rate=0.0) == 0
        assert store.get_case("tx-flip") is None
