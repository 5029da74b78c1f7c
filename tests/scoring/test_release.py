"""Shadow and canary releases in the decision engine, with a real Redis behind the features.

Two models with opposite tastes make the arm that decided a payment visible in its outcome: the
champion never flags, the challenger flags everything (the ``registry`` fixture, conftest.py).
"""

import pytest

from rules_engine import load_rules
from schema import Outcome
from scoring import DecisionEngine, ScorerMetrics
from scoring.release import CANARY_ARM, CHAMPION_ARM, SHADOW_ARM, RegistryRelease, canary_mask
from streaming import OnlineFeatureStore
from tests.factories import register_tiny_model, set_model_thresholds, txn

pytestmark = pytest.mark.integration


def _engine(registry, redis_client, shadow_sink=None):
    metrics = ScorerMetrics()
    release = RegistryRelease(registry)
    store = OnlineFeatureStore(redis_client, "releasetest")
    return DecisionEngine(load_rules(), release, store, None, metrics, on_shadow=shadow_sink), release, metrics


def _payments(n, cards=400):
    # small amounts at a home merchant: no rule fires, so the model alone decides
    return [txn(i, minutes=i * 0.01, card=f"card-{i % cards:06d}", amount_minor=1500) for i in range(n)]


def test_canary_decides_a_stable_share_of_cards_and_records_arm_and_propensity(registry, redis_client):
    reg, quiet, eager = registry
    reg.start_challenger(eager, "canary", share=0.25)
    engine, release, _ = _engine(reg, redis_client)
    decisions = engine.decide_batch(_payments(1200))
    by_card = {}
    for d in decisions:
        by_card.setdefault(d.transaction.card_id, set()).add(d.policy_arm)
        canary = d.policy_arm == CANARY_ARM
        expected_model, expected_outcome = (eager, Outcome.FLAG) if canary else (quiet, Outcome.APPROVE)
        # the card's hash fixes its arm: given the payment, its outcome was certain (no exploration)
        assert (d.model_version, d.outcome, d.propensity) == (expected_model, expected_outcome, 1.0)
    assert all(len(arms) == 1 for arms in by_card.values())  # one card, one model
    share = sum(arms == {CANARY_ARM} for arms in by_card.values()) / len(by_card)
    assert 0.18 < share < 0.32
    assert canary_mask(list(by_card), 0.25).sum() == sum(arms == {CANARY_ARM} for arms in by_card.values())


def test_shadow_scores_everything_but_never_changes_a_live_decision(registry, redis_client):
    reg, quiet, eager = registry
    logged = []
    engine, _, metrics = _engine(reg, redis_client, logged.extend)
    before = engine.decide_batch(_payments(300))
    reg.start_challenger(eager, "shadow")
    engine.release.poll()
    during = engine.decide_batch(_payments(300))
    assert [(d.outcome, d.model_version, d.policy_arm) for d in during] == [
        (d.outcome, d.model_version, d.policy_arm) for d in before
    ]
    assert all(d.outcome is Outcome.APPROVE and d.policy_arm == CHAMPION_ARM for d in during)
    assert len(logged) == 300
    assert {(d.model_version, d.policy_arm, d.outcome) for d in logged} == {(eager, SHADOW_ARM, Outcome.FLAG)}
    assert (
        metrics.registry.get_sample_value("fraud_shadow_decisions_total", {"outcome": "flag", "model_version": eager})
        == 300
    )


def test_the_guard_rolls_back_a_canary_that_flags_far_more_than_the_champion(registry, redis_client):
    reg, quiet, eager = registry
    reg.start_challenger(eager, "canary", share=0.5, guard={"min_decisions": 200})
    engine, release, _ = _engine(reg, redis_client)
    first = engine.decide_batch(_payments(1000))
    assert any(d.policy_arm == CANARY_ARM for d in first)
    assert reg.challenger() is None
    rollback = reg.history()[-1]
    assert (rollback["event"], rollback["version"], rollback["by"]) == ("rollback", eager, "canary-guard")
    assert "flag rate" in rollback["reason"]
    after = engine.decide_batch(_payments(1000))
    assert {(d.model_version, d.policy_arm) for d in after} == {(quiet, CHAMPION_ARM)}


def test_a_canary_inside_its_band_keeps_running(registry, redis_client):
    reg, quiet, _ = registry
    twin = register_tiny_model(reg.root, lambda x: x[:, 0] > 1.0)  # same taste as the champion
    set_model_thresholds(reg.root, twin, 1.0, 1.0)
    reg.rollback("quiet again")
    reg.start_challenger(twin, "canary", share=0.5, guard={"min_decisions": 200})
    engine, _, _ = _engine(reg, redis_client)
    engine.decide_batch(_payments(2000))
    assert reg.challenger()["version"] == twin


def test_promotion_is_picked_up_between_batches_without_reloading_the_canary(registry, redis_client):
    reg, quiet, eager = registry
    reg.start_challenger(eager, "canary", share=0.1)
    engine, release, _ = _engine(reg, redis_client)
    canary_model = release.current.challenger
    reg.promote(eager, {"reason": "canary held"})
    assert release.poll()
    assert release.current.champion is canary_model  # the loaded session is reused
    assert release.current.challenger is None
    assert {d.model_version for d in engine.decide_batch(_payments(50))} == {eager}
