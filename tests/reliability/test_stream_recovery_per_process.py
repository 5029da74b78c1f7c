"""The feature stream as a 2-process bytewax cluster whose processes each keep their recovery store
in a directory of their own (FRAUD_STREAM_RECOVERY_LAYOUT=per-process), as the Kubernetes
StatefulSet runs it with a volume per pod: snapshots land in both directories, and a SIGKILL of
both processes mid-stream followed by a restart leaves Redis exactly as an uninterrupted run would;
a process whose volume was lost refuses to start."""

import shutil
import signal
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from deploy import Topics, ensure_topics, free_port, make_producer, produce_all
from fraud.processes import wait_for
from schema import Label, LabelSource, encode
from streaming import OnlineFeatureStore
from tests.factories import txn
from tests.integration.helpers import fraud_env, start
from tests.integration.test_stream_exactly_once import redis_equals_replay

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROCESSES = 2


def _partitions(recovery: Path) -> dict[str, tuple[int, int, int]]:
    """Per partition file: (its index, snapshot rows, newest committed epoch), read from bytewax's
    SQLite tables (its own schema: a bytewax upgrade that changes it fails here, loudly)."""
    found = {}
    for part in sorted(recovery.glob("part-*.sqlite3")):
        db = sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1.0)
        try:
            (index,) = db.execute("SELECT part_index FROM parts").fetchone()
            (snaps,) = db.execute("SELECT COUNT(*) FROM snaps").fetchone()
            (epoch,) = db.execute("SELECT COALESCE(MAX(commit_epoch), 0) FROM commits").fetchone()
        finally:
            db.close()
        found[part.name] = (index, snaps, epoch)
    return found


def _resume_epoch(recoveries: list[Path]) -> int:
    """The epoch bytewax's newest execution resumed from (1: the start), across the partitions."""
    newest = (-1, 0)
    for recovery in recoveries:
        for part in recovery.glob("part-*.sqlite3"):
            db = sqlite3.connect(f"file:{part}?mode=ro", uri=True)
            try:
                newest = max(newest, *db.execute("SELECT ex_num, resume_epoch FROM exs").fetchall())
            finally:
                db.close()
    return newest[1]


def _payments(first: int, n: int) -> tuple[list, list]:
    arrivals = [
        txn(i, minutes=i / 20, card=f"card-{i % 1200}", merchant=f"m{i % 89}", amount_minor=100 + i % 5000)
        for i in range(first, first + n)
    ]
    labels = [
        Label(
            transaction_id=t.transaction_id,
            is_fraud=True,
            source=LabelSource.CHARGEBACK,
            known_at=t.event_time + timedelta(hours=2),
            author="issuer",
            merchant_id=t.merchant_id,
        )
        for t in arrivals[::997]
    ]
    return arrivals, labels


def test_per_process_recovery_dirs_resume_a_killed_cluster_exactly(kafka_bootstrap, redis_url, redis_client, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(*(f"{name}-{suffix}" for name in ("transactions", "decisions", "dead-letter", "labels", "shadow")))
    ensure_topics(kafka_bootstrap, topics.all(), partitions=4)  # both processes read input
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(PROCESSES))
    homes = [tmp_path / f"pod-{i}" for i in range(PROCESSES)]  # a volume per pod
    envs = [
        fraud_env(
            kafka_bootstrap,
            redis_url,
            topics,
            home,
            FRAUD_SNAPSHOT_INTERVAL_S="1",
            FRAUD_STREAM_RECOVERY_LAYOUT="per-process",
            FRAUD_STREAM_METRICS_PORT="0",
        )
        for home in homes
    ]
    recoveries = [home / "recovery" / f"stream-{suffix}" for home in homes]
    store = OnlineFeatureStore(redis_client)
    producer = make_producer(kafka_bootstrap)

    def publish(arrivals, labels):
        produce_all(producer, topics.labels, [(None, encode(lb)) for lb in labels])
        produce_all(producer, topics.transactions, [(t.card_id.encode(), encode(t)) for t in arrivals])

    def cluster(name):
        args = ["stream", "--addresses", addresses, "--process-id"]
        procs = [start(f"{name}-{i}", [*args, str(i)], envs[i], tmp_path) for i in range(PROCESSES)]

        def alive():
            for proc in procs:
                proc.check_alive()

        return procs, alive

    def applied():
        return store.counts().get("events", 0)

    # 1. A first part of the stream applied, and snapshotted into both processes' partitions.
    early, early_labels = _payments(0, 12_000)
    late, late_labels = _payments(12_000, 18_000)
    n = len(early) + len(late)
    publish(early, early_labels)
    first, alive = cluster("stream")
    try:
        wait_for(lambda: applied() >= len(early), 90, "the first part applied", alive=alive)

        def both_snapshotted() -> bool:  # state snapshotted and committed on both volumes
            parts = [_partitions(r) for r in recoveries]
            return all(p and all(snaps > 0 and epoch > 0 for _, snaps, epoch in p.values()) for p in parts)

        wait_for(both_snapshotted, 30, "snapshots in both processes' partitions", poll_s=0.2, alive=alive)
        # 2. The rest arrives; both processes are killed while it is being applied.
        publish(late, late_labels)
        wait_for(lambda: applied() >= len(early) + 3_000, 60, "the second part under way", alive=alive)
    finally:
        for proc in first:
            proc.proc.send_signal(signal.SIGKILL)
        for proc in first:
            proc.proc.wait()
            proc.stop()
    killed_at = applied()
    assert killed_at < n, "the stream finished before it was killed: the test proves nothing"
    # Each directory holds its own partition of one 2-partition store, and each has snapshots.
    parts = [_partitions(r) for r in recoveries]
    assert [sorted((name, index) for name, (index, _, _) in p.items()) for p in parts] == [
        [("part-0.sqlite3", 0)],
        [("part-1.sqlite3", 1)],
    ]
    assert all(snaps > 0 for p in parts for _, snaps, _ in p.values()), parts
    (record,) = redis_client.keys("fraud:stream:recovery:*")
    assert {k.decode() for k in redis_client.hkeys(record)} == {"store", "p0", "p1"}

    # 3. Both restarted: they resume from their own partitions, and Redis ends as if never killed.
    second, alive = cluster("restarted")
    try:
        wait_for(lambda: applied() >= n, 120, "all events after the restart", alive=alive)
        wait_for(
            lambda: redis_equals_replay(store, [*early, *late], [*early_labels, *late_labels]) == [],
            60,
            "Redis to equal an uninterrupted run",
            alive=alive,
        )
        replayed = applied() - n  # Redis's progress counter is at least once: replayed events count twice
    finally:
        for proc in second:
            proc.interrupt()
        for proc in second:
            proc.stop()
    for i in range(PROCESSES):
        log = (tmp_path / "logs" / f"restarted-{i}.log").read_text()
        assert "recovery resumed from" in log and "(per-process)" in log, log[-2000:]
    # Resumed from the snapshots, not from the start of the topics (which would also end equal).
    assert 0 <= replayed < killed_at, (replayed, killed_at)  # from the start, every event applied counts twice
    assert _resume_epoch(recoveries) > 1

    # 4. Process 1's volume lost: it refuses to start, rather than let the cluster resume without
    # its partition's share of the state (which bytewax does, silently).
    shutil.rmtree(recoveries[1])
    lost = start("lost-1", ["stream", "--addresses", addresses, "--process-id", "1"], envs[1], tmp_path)
    lost.proc.wait(60)
    lost.stop()
    said = " ".join(lost.log_path.read_text().split())
    assert lost.proc.returncode == 2 and "volume was lost" in said, said[-2000:]
