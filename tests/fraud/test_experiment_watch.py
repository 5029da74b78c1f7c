"""`fraud experiment watch` on the live topics: the controller reads `decisions` and `labels`,
and a treatment that breaches a guardrail is halted in the experiment file the scorers follow."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from prometheus_client import generate_latest

from deploy.kafka import make_producer, produce_all
from experiments import Arm, Experiment, Guardrails, Policy, RampStep
from experiments.store import HALTED, RUNNING, ExperimentStore
from fraud.config import Settings
from fraud.experiment_watch import arm_latencies_ms, watch
from schema import Decision, Outcome, encode
from scoring import ScorerMetrics
from tests.factories import txn


def _experiment() -> Experiment:
    arms = (Arm(name="control"), Arm(name="strict", policy=Policy(block=0.3)))
    guard = Guardrails(max_approval_drop=0.02, min_decisions=200, max_review_backlog=10**6)
    return Experiment(name="strict-block", arms=arms, ramp=(RampStep(traffic=0.5, min_days=7),), guardrails=guard)


def _decisions(arm: str, n: int, approve_share: float, start: int) -> list[Decision]:
    now = datetime.now(UTC)
    approved = np.random.default_rng(start).random(n) < approve_share
    return [
        Decision(
            transaction=txn(start + i, card=f"card-{start + i:06d}"),
            outcome=Outcome.APPROVE if ok else Outcome.BLOCK,
            score=0.1 if ok else 0.95,
            model_version="xgb-0001",
            rule_hits=[],
            features={},
            decided_at=now,
            policy_arm=arm,
        )
        for i, ok in enumerate(approved.tolist())
    ]


def _settings(kafka_bootstrap, topics, home) -> Settings:
    return Settings(
        kafka_bootstrap=kafka_bootstrap, home=home, topic_suffix=topics.transactions.removeprefix("transactions")
    )


@pytest.mark.integration
@pytest.mark.parametrize(("strict_approves", "status"), [(0.80, HALTED), (0.99, RUNNING)])
def test_a_treatment_approving_far_less_than_control_is_halted(
    kafka_bootstrap, topics, tmp_path, strict_approves, status
):
    settings = _settings(kafka_bootstrap, topics, tmp_path)
    store = ExperimentStore(settings.registry_dir)
    said = []
    watch(settings, metrics_urls=[], interval_s=0.0, once=True, say=said.append)
    assert said == ["no experiment running: waiting for `fraud experiment start FILE`"]
    store.start(_experiment(), now=datetime.now(UTC) - timedelta(minutes=5))
    decisions = _decisions("control", 600, 0.99, 0) + _decisions("strict", 600, strict_approves, 10_000)
    decisions += _decisions("some-earlier-experiment", 300, 0.10, 20_000)  # not this experiment's arms
    produce_all(make_producer(kafka_bootstrap), topics.decisions, ((None, encode(d)) for d in decisions))
    watch(settings, metrics_urls=[], interval_s=0.0, once=True, say=said.append)
    state = store.current()
    assert state.status == status, said
    assert "1,200 decisions" in said[-1]
    if status == RUNNING:  # the sequential plan is kept in the file: a restarted watcher spends no alpha twice
        plans = state.extra["plans"]["strict"]
        watch(settings, metrics_urls=[], interval_s=0.0, once=True, say=said.append)
        assert store.current().extra["plans"]["strict"] == plans
    if status == HALTED:
        assert "strict approves" in state.reason and "control" in state.reason
        assert [e["event"] for e in store.history()] == ["start", "looks", "halt"]


def test_arm_latencies_come_from_the_scorers_histograms_at_bucket_resolution():
    scorers = []
    for slow_ms in (30.0, 180.0):
        metrics = ScorerMetrics()
        for _ in range(990):
            metrics.arm_latency.labels(arm="control").observe(0.004)
        for _ in range(10):
            metrics.arm_latency.labels(arm="control").observe(0.004)
            metrics.arm_latency.labels(arm="strict").observe(slow_ms / 1000)
        scorers.append(generate_latest(metrics.registry).decode())
    latencies = arm_latencies_ms(scorers)
    assert len(latencies["control"]) == 2000 and len(latencies["strict"]) == 20  # summed over scorers
    assert np.percentile(latencies["control"], 99) == 5.0  # 4 ms falls in the (2.5, 5] ms bucket
    assert np.percentile(latencies["strict"], 99) == 250.0  # the slow scorer's 180 ms: (100, 250] ms
