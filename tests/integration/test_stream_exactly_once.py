"""The feature stream's guarantees against a real broker, Redis and bytewax process:
late events are dead-lettered with reason `late`, duplicates and labels are applied once, and a
SIGKILL mid-stream followed by a restart leaves Redis exactly as an uninterrupted run would."""

import json
import re
import signal
import threading
import time
import urllib.request
from datetime import timedelta

import pytest

from deploy import make_producer, produce_all, read_topic
from fraud.processes import wait_for
from schema import Label, LabelSource, encode
from streaming import OfflineFeatureBuilder, OnlineFeatureStore
from streaming.packed import pack_state
from tests.factories import T0, txn
from tests.integration.helpers import fraud_env, start

pytestmark = pytest.mark.integration


def redis_equals_replay(store, transactions, labels):
    """The keys whose Redis state differs from an offline replay of the same arrivals (empty: equal)."""
    builder = OfflineFeatureBuilder()
    builder.replay(transactions, labels)
    stored, _ = store.read_states(sorted(builder.states))
    return [key for key, state in builder.states.items() if stored.get(key) != pack_state(state)]


def produce_paced(producer, topic, items, per_s):
    """Produce ``items`` in order, in chunks of a tenth of a second at ``per_s`` a second."""
    chunk = per_s // 10
    started = time.monotonic()
    for i in range(0, len(items), chunk):
        time.sleep(max(0.0, started + i / per_s - time.monotonic()))
        produce_all(producer, topic, items[i : i + chunk])


def scrape(port, name, label="outcome"):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {m[0]: float(m[1]) for m in re.findall(rf'^{name}\{{{label}="([^"]+)"\}} (\S+)$', text, re.M)}


def consumer_lag(port):
    """fraud_kafka_consumer_lag of the feature stream, by topic (partition 0: the topics have one)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    found = re.findall(
        r'^fraud_kafka_consumer_lag\{consumer="feature-stream",partition="0",topic="([^"]+)"\} (\S+)$', text, re.M
    )
    return {topic: float(value) for topic, value in found}


def test_late_duplicate_and_label_events(kafka_bootstrap, redis_url, redis_client, topics, tmp_path):
    on_time = [txn(i, minutes=i * 2, card=f"card-{i % 2}", merchant=f"m{i % 3}") for i in range(20)]
    late = txn(100, minutes=1, card="card-0", merchant="m0")  # arrives 38 min behind card-0's newest
    within = txn(101, minutes=36, card="card-1", merchant="m0")  # 2 min behind card-1's newest: admitted
    arrivals = [*on_time, on_time[17], late, within, on_time[18]]  # two duplicates, both within the lateness
    labels = [
        Label(
            transaction_id=on_time[3].transaction_id,
            is_fraud=True,
            source=LabelSource.CHARGEBACK,
            known_at=T0 + timedelta(minutes=30),
            author="issuer",
            merchant_id="m0",
        ),
    ]
    producer = make_producer(kafka_bootstrap)
    produce_all(producer, topics.labels, [(None, encode(labels[0])), (None, b'{"transaction_id": 7}')])
    produce_all(producer, topics.transactions, [(t.card_id.encode(), encode(t)) for t in arrivals])

    env = fraud_env(kafka_bootstrap, redis_url, topics, tmp_path)
    proc = start("stream", ["stream"], env, tmp_path)
    store = OnlineFeatureStore(redis_client)
    try:
        wait_for(
            lambda: store.counts().get("events", 0) >= 21 and store.counts().get("labels", 0) >= 1,
            60,
            "events and labels applied",
            alive=proc.check_alive,
        )
        letters = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, topics.dead_letter, idle_s=1.0)]
        admission = scrape(env["FRAUD_STREAM_METRICS_PORT"], "fraud_stream_transactions_total")
        dead = scrape(env["FRAUD_STREAM_METRICS_PORT"], "fraud_stream_dead_letters_total", "reason")
        caught_up = {topics.transactions: 0.0, topics.labels: 0.0}
        wait_for(lambda: consumer_lag(env["FRAUD_STREAM_METRICS_PORT"]) == caught_up, 15, "lag 0 on both inputs")
    finally:
        proc.stop()

    assert store.counts()["events"] == 21  # 20 on time + 1 within the allowed lateness; duplicates once
    late_letters = [lt for lt in letters if lt["reason"].startswith("late")]
    assert [json.loads(lt["payload"])["transaction_id"] for lt in late_letters] == [late.transaction_id]
    assert "allowed lateness 300s" in late_letters[0]["reason"] and late_letters[0]["offset"] >= 0
    assert any("transaction_id" in lt["reason"] and lt["source_topic"] == topics.labels for lt in letters)
    assert admission == {"admitted": 21.0, "late": 1.0, "duplicate": 2.0}
    assert dead == {"late": 1.0, "invalid": 1.0}  # every dead letter counted by its reason
    assert redis_equals_replay(store, arrivals, labels) == []


def test_sigkill_mid_stream_then_restart_leaves_redis_as_an_uninterrupted_run(
    kafka_bootstrap, redis_url, redis_client, topics, tmp_path
):
    n = 60_000  # the kill lands mid-stream, once the snapshots name base files (streaming.checkpoints)
    arrivals = [
        txn(i, minutes=i / 20, card=f"card-{i % 1500}", merchant=f"m{i % 97}", amount_minor=100 + i % 5000)
        for i in range(n)
    ]
    labels = [
        Label(
            transaction_id=arrivals[i].transaction_id,
            is_fraud=True,
            source=LabelSource.CHARGEBACK,
            known_at=arrivals[i].event_time + timedelta(hours=2),
            author="issuer",
            merchant_id=arrivals[i].merchant_id,
        )
        for i in range(0, n, 997)
    ]
    producer = make_producer(kafka_bootstrap)
    produce_all(producer, topics.labels, [(None, encode(lb)) for lb in labels])
    # Fed at a fixed pace, not all at once: on a fast machine the stream applied all 60,000 before
    # the kill could land. At this pace the feed lasts 6 s, and the kill lands a few seconds in.
    feed = threading.Thread(
        target=produce_paced,
        args=(producer, topics.transactions, [(t.card_id.encode(), encode(t)) for t in arrivals], 10_000),
    )
    feed.start()

    interval_s = 0.5
    # A base every other snapshot: the kill lands while shards hold a base and logged changes.
    env = fraud_env(
        kafka_bootstrap,
        redis_url,
        topics,
        tmp_path,
        FRAUD_SNAPSHOT_INTERVAL_S=str(interval_s),
        FRAUD_SNAPSHOT_BASE_EVERY="2",
    )
    store = OnlineFeatureStore(redis_client)
    first = start("stream", ["stream"], env, tmp_path)
    progress: list[tuple[float, int]] = []  # (time, events applied), to know the pace at the kill
    try:

        def bases_written() -> bool:
            # The snapshot after a shard's first base is on disk names it: a resume must read bases
            # and log files, not only replay what bytewax holds. Then intervals for bytewax to commit it.
            progress.append((time.monotonic(), store.counts().get("events", 0)))
            return any(tmp_path.glob("recovery/*/bases/entity_state/*.1.zst"))

        wait_for(bases_written, 120, "the snapshots to name base files", alive=first.check_alive)
        time.sleep(3 * interval_s)
        progress.append((time.monotonic(), store.counts().get("events", 0)))
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        first.stop()
    killed_at = store.counts()["events"]
    assert killed_at < n, "the stream finished before it was killed: the test proves nothing"
    feed.join()

    second = start("stream-restarted", ["stream"], env, tmp_path)
    try:
        wait_for(
            lambda: store.counts().get("events", 0) >= n, 180, "all events after restart", alive=second.check_alive
        )
        wait_for(
            lambda: redis_equals_replay(store, arrivals, labels) == [],
            60,
            "Redis to equal an uninterrupted run",
            alive=second.check_alive,
        )
        # Redis's progress counter is at least once: events applied again after the restart count
        # twice. They are what the restart read again, and must be at most about one snapshot
        # interval of the pace the stream had when it was killed.
        replayed = store.counts()["events"] - n
    finally:
        second.stop()
    restarted = (tmp_path / "logs" / "stream-restarted.log").read_text()
    assert "resumed from" in restarted
    # Resumed from what is on disk: a base, and changes from log files (not only those inline).
    pattern = r"entity_state shard s\d+ restored from base \d+, [1-9]\d* logged batches from log files"
    assert re.search(pattern, restarted), restarted[-2000:]
    (t0, c0), (t1, c1) = next(p for p in progress if p[0] >= progress[-1][0] - 2.0), progress[-1]
    pace = (c1 - c0) / max(t1 - t0, 1e-3)
    assert 0 <= replayed <= pace * 4 * interval_s + 2_000, (replayed, pace)  # an interval, with room for a batch
