"""The decision engine with a real Redis that is up, then unreachable, then back."""

import pytest
import redis

from deploy import EmbeddedRedis
from rules_engine import load_rules
from schema import DecisionThresholds, Outcome
from scoring import DecisionEngine, ScorerMetrics
from streaming import OnlineFeatureStore
from tests.factories import txn

pytestmark = pytest.mark.integration


def engine_for(client, model):
    metrics = ScorerMetrics()
    engine = DecisionEngine(load_rules(), model, OnlineFeatureStore(client), DecisionThresholds(), metrics)
    return engine, metrics


def test_decisions_degrade_when_redis_is_down_and_recover_when_it_returns(tmp_path, model):
    server = EmbeddedRedis(tmp_path).start()
    client = redis.Redis(port=server.port, socket_timeout=0.25, socket_connect_timeout=0.25)
    engine, metrics = engine_for(client, model)
    small, large = txn(1, amount_minor=2_000), txn(2, amount_minor=90_000)
    assert all(d.degraded_reason is None for d in engine.decide_batch([small, large]))

    server.stop()
    down = engine.decide_batch([small, large])
    assert [d.degraded_reason.split(":")[0] for d in down] == ["features_unavailable"] * 2
    assert [d.score for d in down] == [None, None]
    assert [d.outcome for d in down] == [Outcome.APPROVE, Outcome.FLAG]  # large amounts go to review
    assert any(h.rule_id == "velocity_card_10m@1" and not h.evaluated for h in down[0].rule_hits)
    assert (
        metrics.registry.get_sample_value("fraud_degraded_decisions_total", {"reason": "features_unavailable"}) == 2.0
    )

    restarted = EmbeddedRedis(tmp_path)
    restarted.port = server.port  # same address, as a restarted Redis would have
    restarted.start()
    try:
        back = engine.decide_batch([small])
        assert back[0].degraded_reason is None and back[0].score is not None
    finally:
        restarted.stop()


def test_rules_floor_the_model(redis_client, model):
    engine, _ = engine_for(redis_client, model)
    (decision,) = engine.decide_batch([txn(1, country="KP", card_country="DE")])
    assert decision.outcome is Outcome.BLOCK
    assert [h.rule_id for h in decision.rule_hits] == ["blocked_country@1"]


def test_the_ladder_fails_open_for_small_amounts_within_its_budget_then_flags(tmp_path, model):
    from scoring import FallbackPolicy

    server = EmbeddedRedis(tmp_path).start()
    client = redis.Redis(port=server.port, socket_timeout=0.25, socket_connect_timeout=0.25)
    metrics = ScorerMetrics()
    policy = FallbackPolicy(degraded_flag_amount_minor=10_000, fail_open_per_s=0.001, fail_open_burst=3)
    engine = DecisionEngine(load_rules(), model, OnlineFeatureStore(client), DecisionThresholds(), metrics, policy)
    server.stop()
    small = [txn(i, amount_minor=2_000) for i in range(5)]
    down = engine.decide_batch([*small, txn(9, amount_minor=10_001), txn(10, country="KP", card_country="DE")])
    hits = [[h.rule_id for h in d.rule_hits if h.rule_id.startswith(("degraded", "blocked"))] for d in down]
    assert [d.outcome for d in down] == [Outcome.APPROVE] * 3 + [Outcome.FLAG] * 3 + [Outcome.BLOCK]
    assert hits[:3] == [["degraded_post_auth_review@1"]] * 3  # approved, queued for review after authorisation
    assert hits[3:6] == [["degraded_amount_review@1"]] * 3 and "budget" in down[3].rule_hits[-1].reason
    assert "over 100.00" in down[5].rule_hits[-1].reason
    assert hits[6] == ["blocked_country@1"]  # hard rules still decide
    assert (
        metrics.registry.get_sample_value("fraud_degraded_decisions_total", {"reason": "fail_open_budget_spent"}) == 2
    )


def test_the_circuit_skips_a_dead_redis_then_closes_when_it_returns(tmp_path, model):
    from scoring import FallbackPolicy

    server = EmbeddedRedis(tmp_path).start()
    client = redis.Redis(port=server.port, socket_timeout=0.25, socket_connect_timeout=0.25)
    metrics = ScorerMetrics()
    policy = FallbackPolicy(failures_to_open=2, retry_after_s=0.3)
    engine = DecisionEngine(load_rules(), model, OnlineFeatureStore(client), DecisionThresholds(), metrics, policy)
    server.stop()
    reasons = [engine.decide_batch([txn(i)])[0].degraded_reason for i in range(4)]
    assert [r.split(": ")[1] for r in reasons[2:]] == ["circuit open", "circuit open"]
    assert metrics.registry.get_sample_value("fraud_dependency_circuit_open", {"dependency": "redis"}) == 1.0
    restarted = EmbeddedRedis(tmp_path)
    restarted.port = server.port
    restarted.start()
    try:
        import time

        time.sleep(0.35)
        assert engine.decide_batch([txn(7)])[0].degraded_reason is None  # the half-open trial succeeds
        assert metrics.registry.get_sample_value("fraud_dependency_circuit_open", {"dependency": "redis"}) == 0.0
        assert metrics.registry.get_sample_value("fraud_dependency_circuit_opens_total", {"dependency": "redis"}) == 1
    finally:
        restarted.stop()
