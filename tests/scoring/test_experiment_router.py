"""A/B experiments on the decision path: each card's payments decided by its arm's policy, with a
real Redis behind the features and the idempotency record.

The ``registry`` fixture's two models have opposite tastes (the quiet champion never flags, the
eager one flags everything), so the policy that decided a payment shows in its outcome.
"""

import numpy as np
import pytest

from experiments import CONTROL_ARM, HOLDOUT_ARM, Arm, Experiment, Policy, RampStep
from experiments.assign import serving_arms
from experiments.store import ExperimentStore
from rules_engine import load_rules
from schema import Outcome
from scoring import DecisionEngine, ScorerMetrics
from scoring.experiment import ExperimentRouter, arm_engine_factory
from scoring.release import CHAMPION_ARM, RegistryRelease
from streaming import OnlineFeatureStore
from tests.factories import txn

pytestmark = pytest.mark.integration


def _router(registry, redis_client, store):
    reg, _, _ = registry
    control = DecisionEngine(
        load_rules(), RegistryRelease(reg), OnlineFeatureStore(redis_client, "abtest"), None, ScorerMetrics()
    )
    return ExperimentRouter(control, arm_engine_factory(reg, control), store)


def _experiment(eager: str, **kw) -> Experiment:
    arms = (Arm(name="control"), Arm(name="eager", policy=Policy(model=eager)))
    ramp = (RampStep(traffic=0.2), RampStep(traffic=0.5))
    return Experiment(name="eager-model", arms=arms, ramp=ramp, **kw)


def _payments(n, start=0, cards=500):
    # small amounts at a home merchant: no rule fires, so the policy's model alone decides
    return [txn(i, minutes=i * 0.01, card=f"card-{i % cards:06d}", amount_minor=1500) for i in range(start, start + n)]


def test_each_card_is_decided_by_its_arm_policy_and_records_the_arm(registry, redis_client, tmp_path):
    _, quiet, eager = registry
    store = ExperimentStore(tmp_path / "exp")
    router = _router(registry, redis_client, store)
    assert {d.policy_arm for d in router.decide_batch(_payments(50))} == {CHAMPION_ARM}  # no experiment

    state = store.start(_experiment(eager, holdout=0.1))
    assert router.poll()
    payments = _payments(1500)
    once = router.decide_batch_once(payments)
    expected = serving_arms([t.card_id for t in payments], state)
    assert [d.policy_arm for d in once.decisions] == expected.tolist()
    assert [d.transaction_id for d in once.decisions] == [t.transaction_id for t in payments]  # order kept
    assert all(once.new)
    for d in once.decisions:
        eager_arm = d.policy_arm == "eager"
        assert d.model_version == (eager if eager_arm else quiet)
        assert d.outcome is (Outcome.FLAG if eager_arm else Outcome.APPROVE)
        assert d.propensity == 1.0
    arms = np.array([d.policy_arm for d in once.decisions])
    assert set(arms) == {CONTROL_ARM, HOLDOUT_ARM, "eager"}
    assert 0.12 < np.mean(arms == "eager") < 0.24  # 20% of the 90% outside the holdout


def test_a_retry_is_answered_with_the_arm_that_decided_it_even_after_a_halt(registry, redis_client, tmp_path):
    _, _, eager = registry
    store = ExperimentStore(tmp_path / "exp")
    router = _router(registry, redis_client, store)
    store.start(_experiment(eager))
    router.poll()
    payments = _payments(400, start=10_000)
    first = router.decide_batch_once(payments)
    store.halt("approval rate guardrail breached")
    assert router.poll()
    assert {d.policy_arm for d in router.decide_batch(_payments(300, start=20_000))} == {CONTROL_ARM}
    retry = router.decide_batch_once(payments)
    assert not any(retry.new)
    assert [(d.policy_arm, d.outcome) for d in retry.decisions] == [(d.policy_arm, d.outcome) for d in first.decisions]


def test_ramping_up_moves_only_control_cards_and_a_refused_arm_falls_back_to_control(registry, redis_client, tmp_path):
    _, _, eager = registry
    store = ExperimentStore(tmp_path / "exp")
    router = _router(registry, redis_client, store)
    store.start(_experiment(eager))
    router.poll()
    before = {d.transaction.card_id: d.policy_arm for d in router.decide_batch(_payments(500, start=30_000))}
    store.advance("gate passed")
    router.poll()
    after = {d.transaction.card_id: d.policy_arm for d in router.decide_batch(_payments(500, start=40_000))}
    moved = [c for c in before if before[c] != after[c]]
    assert moved and all(before[c] == CONTROL_ARM and after[c] == "eager" for c in moved)

    store.stop("next")
    store.start(_experiment("xgb-9999").model_copy(update={"name": "missing-model"}))
    router.poll()
    decided = router.decide_batch(_payments(200, start=50_000))
    assert {d.policy_arm for d in decided} == {CONTROL_ARM}  # its cards stay on control, and say so
    assert "missing-model/eager" in router.refused
