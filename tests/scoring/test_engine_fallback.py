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
