"""Per-model operating thresholds for a review capacity, and the money view of a model."""

import numpy as np
import pytest

from retrain.evaluate import CostModel, money_outcome
from retrain.thresholds import ThresholdPolicy, choose_thresholds


def _validation(days: int = 4, per_day: int = 5000, seed: int = 3):
    rng = np.random.default_rng(seed)
    n = days * per_day
    y = (rng.random(n) < 0.01).astype(np.int8)
    scores = np.clip(rng.normal(0.1, 0.08, n) + y * rng.uniform(0.0, 0.7, n), 0, 1)
    return y, scores


@pytest.mark.parametrize("capacity", [10, 50, 300])
def test_flags_per_day_never_exceed_the_review_capacity(capacity):
    y, scores = _validation()
    point = choose_thresholds(y, scores, 4.0, ThresholdPolicy(review_capacity_per_day=capacity, min_flag_precision=0))
    flagged = (scores >= point.thresholds.flag) & (scores < point.thresholds.block)
    assert flagged.sum() / 4.0 == point.flags_per_day <= capacity
    # and it uses the capacity: one more payment would overfill it (no slack left on the table)
    assert point.flags_per_day > capacity - 1


def test_more_capacity_lowers_the_flag_threshold_and_leaves_block_alone():
    y, scores = _validation()
    small = choose_thresholds(y, scores, 4.0, ThresholdPolicy(review_capacity_per_day=20))
    large = choose_thresholds(y, scores, 4.0, ThresholdPolicy(review_capacity_per_day=200))
    assert large.thresholds.flag < small.thresholds.flag
    assert large.thresholds.block == small.thresholds.block


def test_block_threshold_meets_the_precision_target():
    y, scores = _validation()
    point = choose_thresholds(y, scores, 4.0, ThresholdPolicy(block_precision=0.9))
    blocked = scores >= point.thresholds.block
    assert blocked.sum() >= 5 and y[blocked].mean() >= 0.9
    # the lowest such threshold: the next lower score would drop below the target or is a tie
    lower = np.sort(scores[~blocked])[-1]
    assert y[scores >= lower].mean() < 0.9


def test_a_model_that_never_reaches_block_precision_never_blocks():
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.01).astype(np.int8)
    scores = rng.random(5000)  # useless model
    point = choose_thresholds(y, scores, 1.0, ThresholdPolicy())
    assert point.thresholds.block == 1.0 and point.blocks_per_day == 0


def test_tied_scores_are_never_split_by_the_flag_threshold():
    y = np.zeros(100, dtype=np.int8)
    y[:3] = 1
    scores = np.concatenate([np.full(3, 0.99), np.full(20, 0.5), np.linspace(0.4, 0.0, 77)])
    point = choose_thresholds(y, scores, 1.0, ThresholdPolicy(review_capacity_per_day=10, min_block_frauds=3))
    assert point.thresholds.block == pytest.approx(0.99)
    assert point.flags_per_day == 0  # the 20 tied at 0.5 would overfill 10; none of them may be flagged


def test_money_outcome_follows_the_stated_cost_model():
    y = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.95, 0.8, 0.1, 0.95, 0.8, 0.1])
    amounts = np.array([100.0, 200.0, 300.0, 50.0, 60.0, 70.0])
    cost = CostModel(review_cost=4, false_block_cost=15, chargeback_fee=20)
    money = money_outcome(y, scores, amounts, flag=0.7, block=0.9, cost=cost)
    assert money["money_saved"] == 300.0  # blocked 100 + flagged-and-reviewed 200
    assert money["money_lost"] == 320.0  # the approved 300 fraud plus its chargeback fee
    assert money["money_spent"] == 2 * 4 + 15  # two reviews, one good customer blocked
    assert money["money_net_vs_no_model"] == (600 + 60) - 320 - 23
