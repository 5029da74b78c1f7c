"""The exploration holdout: stable uniform draws, the rate, what is never explored, propensities,
and the decision engine applying it on the production path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kstest

from experiments import Exploration
from experiments.exploration import EXPLORATION_RULE, exploration_draws, explore
from retrain import ModelRegistry
from rules_engine import load_rules
from schema import Outcome
from scoring import DecisionEngine, ScorerMetrics

try:
    from experiments.replay import ReplayedFeatures
except ImportError:  # before the replay moved out of the scenario runner
    from fraud.scenario.runner import ReplayedFeatures

A, F, B = Outcome.APPROVE, Outcome.FLAG, Outcome.BLOCK


def test_draws_are_stable_and_uniform() -> None:
    ids = [f"tx-{i}" for i in range(20_000)]
    draws = exploration_draws(ids, "salt")
    assert np.array_equal(draws, exploration_draws(ids, "salt"))  # a retry gets the same draw
    assert np.array_equal(draws[5:9], exploration_draws(ids[5:9], "salt"))  # whatever else is in the batch
    assert kstest(draws, "uniform").pvalue > 0.01
    assert ((draws >= 0) & (draws < 1)).all()
    other = exploration_draws(ids, "another salt")
    assert abs(np.corrcoef(draws, other)[0, 1]) < 0.05


def test_rate_holds_and_propensities_are_as_defined() -> None:
    n = 40_000
    rng = np.random.default_rng(1)
    outcomes = list(rng.choice([A, F, B], size=n))
    hard = rng.random(n) < 0.1
    amounts = rng.integers(100, 20_000, size=n)
    exploration = Exploration(rate=0.1, max_amount_minor=10_000, action="approve")
    out = explore(outcomes, hard, amounts, exploration_draws([str(i) for i in range(n)], "s"), exploration)
    o = np.array(outcomes)
    eligible = (o != A) & ~hard & (amounts <= 10_000)
    assert not out.explored[~eligible].any()  # rule stops, approvals and amounts over the cap never
    assert out.explored[eligible].mean() == pytest.approx(0.1, abs=0.01)
    assert (out.propensity[~eligible] == 1.0).all()
    assert (out.propensity[out.explored] == 0.1).all()
    assert (out.propensity[eligible & ~out.explored] == 0.9).all()
    assert all(out.outcomes[i] is A for i in np.flatnonzero(out.explored))
    assert all(out.outcomes[i] is outcomes[i] for i in np.flatnonzero(~out.explored))


def test_review_action_only_turns_blocks_into_flags() -> None:
    outcomes = [A, F, B, B, B]
    hard = np.array([False, False, False, True, False])
    amounts = np.array([1, 1, 1, 1, 10**6])
    exploration = Exploration(rate=0.5, max_amount_minor=100, action="review")
    out = explore(outcomes, hard, amounts, np.zeros(5), exploration)  # every draw under the rate
    assert out.outcomes == [A, F, F, B, B]
    assert out.explored.tolist() == [False, False, True, False, False]
    assert out.propensity.tolist() == [1.0, 1.0, 0.5, 1.0, 1.0]


def test_engine_records_the_hit_and_propensity_and_is_idempotent(simulated_history) -> None:
    h = simulated_history
    txns = h.ordered[h.decide_from : h.decide_from + 6000]
    model = ModelRegistry(h.registry_dir).load(h.model_version)
    store = ReplayedFeatures(h.ordered, h.matrix)
    exploration = Exploration(rate=0.2, max_amount_minor=10_000)
    plain = DecisionEngine(load_rules(), model, store, None, ScorerMetrics(), explain_inline=False)
    metrics = ScorerMetrics()
    exploring = DecisionEngine(load_rules(), model, store, None, metrics, exploration=exploration)
    before = plain.decide_batch(txns)
    after = exploring.decide_batch(txns)

    explored = [i for i, d in enumerate(after) if any(r.rule_id == EXPLORATION_RULE for r in d.rule_hits)]
    assert explored, "no payment explored: the test world changed"
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        hard = any(r.action is not A for r in b.rule_hits)
        eligible = b.outcome is not A and not hard and b.transaction.amount_minor <= 10_000
        if i in explored:
            hit = next(r for r in a.rule_hits if r.rule_id == EXPLORATION_RULE)
            assert eligible and a.outcome is A and hit.action is A and a.propensity == pytest.approx(0.2)
            assert "exploration holdout: approved instead of flag" in hit.reason
            assert a.reasons == []  # an approval: no reason codes
        else:
            assert a.outcome is b.outcome and a.rule_hits == b.rule_hits
            assert a.propensity == pytest.approx(0.8 if eligible else 1.0)
    eligible_n = sum(1 for d in before if d.outcome is not A and d.transaction.amount_minor <= 10_000)
    assert len(explored) / eligible_n == pytest.approx(0.2, abs=0.06)
    counted = metrics.registry.get_sample_value("fraud_exploration_decisions_total", {"action": "approve"})
    assert counted == len(explored)

    # a retry of a payment, alone or in another batch, gets the same decision
    again = exploring.decide_batch([txns[i] for i in explored[:20]] + txns[:50])
    expected = [after[i] for i in explored[:20]] + after[:50]
    for d, e in zip(again, expected, strict=True):
        assert (d.outcome, d.propensity, d.rule_hits) == (e.outcome, e.propensity, e.rule_hits)


def test_fallback_decisions_are_never_explored(simulated_history) -> None:
    h = simulated_history
    model = ModelRegistry(h.registry_dir).load(h.model_version)
    engine = DecisionEngine(
        load_rules(),
        model,
        ReplayedFeatures(h.ordered, h.matrix),
        None,
        ScorerMetrics(),
        exploration=Exploration(rate=0.5),
    )
    decisions = engine.without_features(h.ordered[:200], "features_unavailable: test")
    assert all(d.propensity == 1.0 for d in decisions)
    assert not any(r.rule_id == EXPLORATION_RULE for d in decisions for r in d.rule_hits)
