import numpy as np
import pytest
from scipy import stats

from experiments import CONTROL_ARM, HOLDOUT_ARM, Arm, Experiment, Policy
from experiments.assign import assign_arms, card_buckets

CARDS = [f"card-{i:06d}" for i in range(40_000)]


def _experiment(**kw) -> Experiment:
    arms = [Arm(name="control"), Arm(name="low-block", weight=3, policy=Policy(block=0.8))]
    arms.append(Arm(name="no-velocity", weight=2))
    return Experiment(name="thresholds-q4", arms=arms, **kw)


def test_buckets_are_uniform_and_stable():
    buckets = card_buckets(CARDS, "exp")
    assert stats.kstest(buckets, "uniform").pvalue > 0.001
    assert np.array_equal(buckets, card_buckets(list(CARDS), "exp"))
    assert not np.array_equal(buckets, card_buckets(CARDS, "another-exp"))


def test_shares_follow_the_declaration_at_each_ramp_step():
    exp = _experiment(holdout=0.05)
    for traffic in (0.01, 0.1, 0.5, 1.0):
        arms = assign_arms(CARDS, exp, traffic)
        for name, share in exp.shares_at(traffic).items():
            observed = float(np.mean(arms == name))
            assert observed == pytest.approx(share, abs=4 * np.sqrt(share * (1 - share) / len(CARDS)) + 1e-9)


def test_ramping_up_only_moves_cards_from_control_into_treatments():
    exp = _experiment(holdout=0.05)
    steps = [assign_arms(CARDS, exp, f) for f in (0.0, 0.01, 0.1, 0.5, 1.0)]
    for before, after in zip(steps, steps[1:], strict=False):
        moved = before != after
        assert moved.any()
        assert set(before[moved]) == {CONTROL_ARM}  # only control cards move
        assert HOLDOUT_ARM not in set(after[moved])
        stayed_treated = (before != CONTROL_ARM) & (before != HOLDOUT_ARM)
        assert np.array_equal(before[stayed_treated], after[stayed_treated])  # a treated card stays put
    assert set(steps[0]) == {CONTROL_ARM, HOLDOUT_ARM}
    assert np.array_equal(steps[0] == HOLDOUT_ARM, steps[-1] == HOLDOUT_ARM)  # the holdout never moves


def test_a_card_gets_one_arm_whatever_its_batch():
    exp = _experiment()
    alone = [assign_arms([c], exp, 0.5)[0] for c in CARDS[:200]]
    assert list(assign_arms(CARDS[:200], exp, 0.5)) == alone


def test_serving_arms_follow_the_experiment_state(tmp_path):
    from experiments.assign import serving_arms
    from experiments.store import ExperimentStore

    store = ExperimentStore(tmp_path)
    exp = _experiment(holdout=0.05)
    assert set(serving_arms(CARDS, None)) == {CONTROL_ARM}
    running = serving_arms(CARDS, store.start(exp))
    assert np.array_equal(running, assign_arms(CARDS, exp, exp.ramp[0].traffic))
    advanced = serving_arms(CARDS, store.advance("gate passed"))
    assert np.mean(advanced != CONTROL_ARM) > np.mean(running != CONTROL_ARM)
    halted = serving_arms(CARDS, store.halt("approval rate guardrail"))
    assert set(halted) == {CONTROL_ARM, HOLDOUT_ARM}
    assert np.array_equal(halted == HOLDOUT_ARM, running == HOLDOUT_ARM)
    with pytest.raises(ValueError, match="halted"):
        store.advance("no")
    store.stop("done")
    store.start(exp)
    launched = serving_arms(CARDS, store.launch("low-block", "beat control at look 4"))
    assert set(launched) == {"low-block", HOLDOUT_ARM}
    assert np.array_equal(launched == HOLDOUT_ARM, running == HOLDOUT_ARM)  # the long-term holdout stays
    assert [e["event"] for e in store.history()] == ["start", "advance", "halt", "stop", "start", "launch"]
