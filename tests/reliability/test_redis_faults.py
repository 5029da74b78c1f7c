"""Redis killed, then hung (SIGSTOP), while a real `fraud serve` answers steady calls.

What must hold (README, "Decisions and their fallback"): every call is answered within its
deadline, by the fallback ladder with the reason recorded; a hung Redis costs a timeout only until
the circuit opens; nothing piles up in the scorer; when Redis returns, decisions use features
again with nobody intervening.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
import uuid
from collections import Counter

import pytest

from deploy import EmbeddedRedis, ensure_topics, free_port
from fraud.processes import wait_for
from scoring import ScorerClient
from tests.factories import register_tiny_model, txn
from tests.integration.helpers import SteadyCaller, fraud_env, start

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 1.0


def timed(started: float, latency: float, d) -> tuple[float, float, str]:
    return (started, latency, d.degraded_reason)


def answers_between(callers, start, end):
    return [a for c in callers for a in c.answers if start <= a[0] < end]


def scorer_threads(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", open(f"/proc/{pid}/status").read(), re.M).group(1))


def scorer_rss_mb(pid: int) -> float:
    return int(re.search(r"^VmRSS:\s+(\d+) kB", open(f"/proc/{pid}/status").read(), re.M).group(1)) / 1024


def scrape(port: int, sample: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_redis_killed_then_hung_under_load_every_call_answered_in_time_then_recovered(
    kafka_bootstrap, topics, tmp_path
):
    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    register_tiny_model(tmp_path / "registry", lambda x: x[:, 0] > 1.0)
    port, metrics_port = free_port(), free_port()
    env = fraud_env(
        kafka_bootstrap,
        redis_server.url,
        topics,
        tmp_path,
        FRAUD_GRPC_PORT=str(port),
        FRAUD_METRICS_PORT=str(metrics_port),
        FRAUD_KEY_PREFIX=f"faults-{uuid.uuid4().hex[:6]}",
    )
    ensure_topics(kafka_bootstrap, topics.all())
    scorer = start("serve", ["serve"], env, tmp_path)
    callers: list[SteadyCaller] = []
    restarted: EmbeddedRedis | None = None
    try:
        ScorerClient(f"127.0.0.1:{port}").wait_ready(60)
        callers = [SteadyCaller(f"127.0.0.1:{port}", w, timed, timeout_s=DEADLINE_S) for w in range(3)]
        for c in callers:
            c.start()

        def healthy_since(t):
            return lambda: sum(1 for a in answers_between(callers, t, 1e18) if not a[2]) >= 30

        wait_for(healthy_since(time.monotonic()), 20, "healthy answers", alive=scorer.check_alive)
        threads_before = scorer_threads(scorer.proc.pid)
        rss_before = scorer_rss_mb(scorer.proc.pid)

        # 1. Redis killed: refused connections, decided by the ladder.
        killed_at = time.monotonic()
        redis_server.proc.send_signal(signal.SIGKILL)
        redis_server.proc.wait()
        time.sleep(3)
        restarting_at = time.monotonic()
        restarted = EmbeddedRedis(tmp_path / "redis")
        restarted.port = redis_server.port  # a restarted Redis at the same address, empty
        restarted.start()
        back_at = time.monotonic()
        wait_for(healthy_since(back_at), 20, "features used again after the restart", alive=scorer.check_alive)
        # calls that began and ended while no Redis was up (one that began just before the restart
        # may be read from the new Redis, so its start alone does not place it in the outage)
        down = [a for a in answers_between(callers, killed_at + 0.1, restarting_at) if a[0] + a[1] < restarting_at]
        assert len(down) > 50 and all(a[2].startswith("features_unavailable") for a in down)
        assert any(a[2].endswith("circuit open") for a in down)

        # 2. Redis hung: every read would wait for its timeout; the circuit keeps that to a few.
        hung_at = time.monotonic()
        os.kill(restarted.proc.pid, signal.SIGSTOP)
        time.sleep(4)
        rss_hung = scorer_rss_mb(scorer.proc.pid)
        os.kill(restarted.proc.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        wait_for(healthy_since(resumed_at), 20, "features used again after SIGCONT", alive=scorer.check_alive)
        # (a read already waiting when SIGCONT comes is answered: leave out the last timeout's worth)
        hung = answers_between(callers, hung_at + 0.5, resumed_at - 0.3)
        # Calls queued behind a batch waiting out its Redis timeout are shed (answered by the same
        # ladder, reason "shed"): degraded either way, never late.
        assert len(hung) > 50 and all(a[2].startswith(("features_unavailable", "shed")) for a in hung)
        fast = sum(1 for a in hung if a[1] < 0.05) / len(hung)
        assert fast > 0.8, f"only {fast:.0%} of calls during the hang took under 50 ms: the circuit is not open"

        for c in callers:
            c.halt.set()
            c.join(10)
        every = [a for c in callers for a in c.answers]
        assert [e for c in callers for e in c.errors] == []  # no call failed or missed its deadline
        assert max(a[1] for a in every) < DEADLINE_S
        assert scorer_threads(scorer.proc.pid) <= threads_before + 2  # nothing piled up
        assert rss_hung < rss_before + 50, (rss_before, rss_hung)  # nor in memory
        opens = scrape(metrics_port, 'fraud_dependency_circuit_opens_total{dependency="redis"}')
        assert opens >= 2 and scrape(metrics_port, 'fraud_dependency_circuit_open{dependency="redis"}') == 0.0
        answered = Counter(a[2].split(":")[0] for a in every if a[2])
        counted = {r: scrape(metrics_port, f'fraud_degraded_decisions_total{{reason="{r}"}}') for r in answered}
        assert counted == answered
    finally:
        for c in callers:
            c.halt.set()
        scorer.stop()
        for server in (restarted, redis_server):
            if server is not None and server.proc is not None and server.proc.poll() is None:
                os.kill(server.proc.pid, signal.SIGCONT)
                server.stop()


def test_the_stream_waits_out_a_redis_restart_and_rewrites_every_state_it_lost(kafka_bootstrap, topics, tmp_path):
    from deploy import make_producer, produce_all
    from schema import encode
    from streaming import OnlineFeatureStore
    from tests.integration.test_stream_exactly_once import redis_equals_replay

    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    env = fraud_env(kafka_bootstrap, redis_server.url, topics, tmp_path)
    ensure_topics(kafka_bootstrap, topics.all())
    # Cards 40-59 and merchants m7-m9 pay only before the outage: nothing new rewrites their
    # states after it, so only the stream's resync can bring them back.
    before = [txn(i, minutes=i, card=f"card-{i % 60}", merchant=f"m{i % 10}") for i in range(200)]
    during = [txn(200 + i, minutes=200 + i, card=f"card-{i % 40}", merchant=f"m{i % 7}") for i in range(100)]
    after = [txn(300 + i, minutes=300 + i, card=f"card-{i % 40}", merchant=f"m{i % 7}") for i in range(100)]
    producer = make_producer(kafka_bootstrap)

    def send(batch):
        produce_all(producer, topics.transactions, [(t.card_id.encode(), encode(t)) for t in batch])

    stream = start("stream", ["stream"], env, tmp_path)
    restarted = None
    try:
        store = OnlineFeatureStore(_client(redis_server))
        send(before)
        wait_for(lambda: store.counts().get("events", 0) >= 200, 60, "first batch applied", alive=stream.check_alive)
        redis_server.proc.send_signal(signal.SIGKILL)
        redis_server.proc.wait()
        send(during)  # arrives while Redis is away: the stream waits, it does not crash
        time.sleep(3)
        stream.check_alive()
        restarted = EmbeddedRedis(tmp_path / "redis")
        restarted.port = redis_server.port  # back at the same address, empty (no persistence)
        restarted.start()
        store = OnlineFeatureStore(_client(restarted))
        send(after)  # the next batches carry every state of their shard (a rewrite)
        everything = [*before, *during, *after]
        wait_for(
            lambda: redis_equals_replay(store, everything, []) == [],
            60,
            "Redis equal to an uninterrupted replay",
            alive=stream.check_alive,
        )
        retries = scrape(int(env["FRAUD_STREAM_METRICS_PORT"]), "fraud_stream_store_retries_total")
        assert retries > 0 and scrape(int(env["FRAUD_STREAM_METRICS_PORT"]), "fraud_stream_store_resyncs_total") >= 1
    finally:
        stream.stop()
        for server in (restarted, redis_server):
            if server is not None:
                server.stop()


def _client(server: EmbeddedRedis):
    import redis

    return redis.Redis(port=server.port, socket_timeout=2)
