"""Issue 8, item 7: scorer restarts under load lose no request and never change a decision.

Two real `fraud serve` processes share Redis and the decisions topic, behind a ``ScorerPool``
(round-robin; a call failing in transit is retried on the other scorer with the same transaction).
Three threads call steadily; every fourth call deliberately re-sends one of the thread's earlier
payments (a gateway retry). Scorer A is restarted (SIGTERM, start, wait until it serves), then B.
What must hold:

* every call got a decision (zero lost);
* every re-sent transaction id got the decision of its first answer (outcome, score, model);
* the decisions topic holds exactly one distinct decision per answered id, the one answered;
* SIGTERM is graceful: the scorer exits 0, and a large call in flight when it arrives is answered
  in full and its decisions are on the topic.

And directly: a payment decided on A, A SIGKILLed, the same id asked of B: same decision, and B
publishes nothing for it.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
import uuid
from collections import defaultdict

import grpc
import pytest

from deploy import Topics, ensure_topics, free_port, read_topic
from fraud.processes import wait_for
from schema import decode_decision
from scoring import ScorerClient, ScorerPool
from tests.factories import register_tiny_model, txn
from tests.integration.helpers import fraud_env, start

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Scorer:
    """One `fraud serve` process with its own home (a copy of the registry), port and metrics."""

    def __init__(self, name, kafka_bootstrap, redis_url, topics, root, registry, prefix):
        self.name, self.home = name, root / name
        shutil.copytree(registry, self.home / "registry")
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.env = fraud_env(
            kafka_bootstrap,
            redis_url,
            topics,
            self.home,
            FRAUD_GRPC_PORT=str(self.port),
            FRAUD_METRICS_PORT=str(free_port()),
            FRAUD_KEY_PREFIX=prefix,
        )
        self.process = None

    def start(self):
        self.process = start(f"serve-{self.name}-{time.monotonic_ns()}", ["serve"], self.env, self.home)

    def ensure_started(self):
        if self.process is None or self.process.proc.poll() is not None:
            self.start()

    def wait_serving(self, timeout_s=60):
        with ScorerClient(self.target, timeout_s=2) as client:
            deadline = time.monotonic() + timeout_s
            while True:
                self.process.check_alive()
                try:
                    client.decide(txn(0, card="card-probe"))
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def signal(self, sig):
        self.process.proc.send_signal(sig)
        return self.process.proc.wait(15)

    def stop(self):
        if self.process is not None:
            self.process.stop()


class Caller(threading.Thread):
    """Calls Decide through the pool back to back; every fourth call re-sends an earlier payment."""

    def __init__(self, pool: ScorerPool, worker: int) -> None:
        super().__init__(daemon=True)
        self.pool, self.worker = pool, worker
        self.first: dict[str, tuple] = {}  # transaction id -> (outcome, score, model) of its first answer
        self.resent: list[tuple[str, tuple]] = []  # (id, answer) of each deliberate retry
        self.errors: list[Exception] = []
        self.halt = threading.Event()
        self.rng = random.Random(worker)

    def run(self) -> None:
        sent = []
        i = 0
        while not self.halt.is_set():
            i += 1
            retry = i % 4 == 0 and sent
            payment = self.rng.choice(sent[-20:]) if retry else txn(self.worker * 1_000_000 + i, card=f"c{i % 53}")
            try:
                d = self.pool.decide(payment)
            except grpc.RpcError as exc:
                self.errors.append(exc)
                continue
            answer = (d.outcome, d.score, d.model_version)
            if retry:
                self.resent.append((payment.transaction_id, answer))
            else:
                self.first[payment.transaction_id] = answer
                sent.append(payment)


def decisions_by_id(kafka_bootstrap, topic, idle_s=0.5):
    by_id = defaultdict(set)
    for m in read_topic(kafka_bootstrap, topic, idle_s=idle_s):
        d = decode_decision(m.value())
        by_id[d.transaction_id].add((d.outcome.value, d.score or 0.0, d.model_version, d.decided_at))
    return by_id


def restart_under_load(s: Scorer, pool: ScorerPool) -> list:
    """SIGTERM ``s`` while a large call is in flight on it, check it exits 0, start it again and
    wait until the pool's calls reach it. Returns the replies to the call in flight."""
    # own cards, merchants and devices: the in-batch fold pairs the payments of one entity
    big = [txn(9_000_000 + n, card=f"big-{s.name}-{n}", merchant=f"m-{n % 100}", device=f"d-{n}") for n in range(2000)]
    replies: list = []
    with ScorerClient(s.target, timeout_s=10) as direct:
        call = threading.Thread(target=lambda: replies.extend(direct.decide_batch(big)))
        call.start()
        time.sleep(0.15)
        assert s.signal(signal.SIGTERM) == 0, s.process.log_path.read_text()[-2000:]
        call.join(10)
    answered_before = pool.answered[s.target]
    s.start()
    s.wait_serving()
    wait_for(lambda: pool.answered[s.target] > answered_before + 20, 15, f"the pool calling {s.name} again")
    return replies


@pytest.fixture(scope="module")
def topics(kafka_bootstrap):
    """One set of topics for the module: both tests share the two scorers (each start costs seconds)."""
    suffix = uuid.uuid4().hex[:8]
    named = Topics(*(f"{name}-{suffix}" for name in Topics().all()))
    ensure_topics(kafka_bootstrap, named.all())
    return named


@pytest.fixture(scope="module")
def scorers(kafka_bootstrap, redis_url, topics, tmp_path_factory):
    root = tmp_path_factory.mktemp("restart")
    # fraud where is_cross_border > 1: these domestic payments are approved (no reason codes to compute)
    register_tiny_model(root / "registry", lambda x: x[:, 2] > 1.0)
    prefix = f"restart-{uuid.uuid4().hex[:6]}"
    pair = [Scorer(n, kafka_bootstrap, redis_url, topics, root, root / "registry", prefix) for n in "ab"]
    try:
        yield pair
    finally:
        for s in pair:
            s.stop()


def test_rolling_restart_of_two_scorers_under_load_loses_no_request_and_changes_no_decision(
    scorers, kafka_bootstrap, topics
):
    a, b = scorers
    for s in scorers:
        s.ensure_started()  # both at once: each takes seconds
    for s in scorers:
        s.wait_serving()
    pool = ScorerPool([a.target, b.target], timeout_s=2)
    callers = [Caller(pool, w) for w in range(1, 4)]
    for c in callers:
        c.start()
    in_flight: dict[str, list] = {}  # scorer -> the replies to the call in flight at its SIGTERM
    try:
        time.sleep(1.0)
        for s in (a, b):
            in_flight[s.name] = restart_under_load(s, pool)
        time.sleep(0.5)
    finally:
        for c in callers:
            c.halt.set()
            c.join(10)
        pool.close()

    assert [e for c in callers for e in c.errors] == []  # zero lost
    answered = {k: v for c in callers for k, v in c.first.items()}
    resent = [r for c in callers for r in c.resent]
    assert len(answered) > 200 and len(resent) > 60 and pool.retries > 0, (len(answered), len(resent), pool.retries)
    assert [(tid, got) for tid, got in resent if answered[tid] != got] == []  # a retry never changes a decision
    for name, replies in in_flight.items():
        assert len(replies) == 2000 and all(r.outcome and not r.error for r in replies), name
        answered.update({r.transaction_id: (r.outcome, r.score, r.model_version) for r in replies})

    on_topic = decisions_by_id(kafka_bootstrap, topics.decisions)
    assert [tid for tid in answered if len(on_topic[tid]) != 1] == []  # published once each, none lost
    assert [tid for tid, got in answered.items() if next(iter(on_topic[tid]))[:3] != got] == []


def test_a_payment_decided_on_a_killed_scorer_gets_the_same_decision_from_the_other(scorers, kafka_bootstrap, topics):
    a, b = scorers
    for s in scorers:
        s.ensure_started()  # both at once: each takes seconds
    for s in scorers:
        s.wait_serving()
    payments = [txn(7_000_000 + n, card=f"kill-{n % 7}") for n in range(50)]
    with ScorerClient(a.target) as on_a:
        first = on_a.decide_batch(payments)
    time.sleep(1.0)  # A's producer delivers (librdkafka's buffer dies with a SIGKILLed process)
    a.signal(signal.SIGKILL)
    with ScorerClient(b.target) as on_b:
        again = on_b.decide_batch(payments)
        (single,) = [on_b.decide(payments[0])]
    want = [(d.outcome, d.score, d.model_version) for d in first]
    assert [(d.outcome, d.score, d.model_version) for d in again] == want
    assert (single.outcome, single.score, single.model_version) == want[0]
    on_topic = decisions_by_id(kafka_bootstrap, topics.decisions)
    ids = [p.transaction_id for p in payments]
    assert {tid: len(on_topic[tid]) for tid in ids} == dict.fromkeys(ids, 1)  # B published nothing for them
