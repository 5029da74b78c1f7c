"""experiments.stats against published tables, and against simulation where no table exists."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from experiments.stats import (
    crossing_probabilities,
    group_sequential_bounds,
    mean_difference_z,
    ratio_metric_variance,
    sample_size_means,
    sample_size_proportions,
    sequential_inflation,
    sequential_test,
    spending,
    two_proportion_z,
)

FIVE = np.arange(1, 6) / 5


def test_lan_demets_bounds_match_the_published_tables():
    # gsDesign/rpact/EAST, 5 equally spaced looks, two-sided alpha 0.05 (0.025 a side).
    obf = group_sequential_bounds(FIVE, 0.05, "obrien-fleming")
    np.testing.assert_allclose(obf, [4.877, 3.357, 2.680, 2.290, 2.031], atol=1e-3)
    pocock = group_sequential_bounds(FIVE, 0.05, "pocock")
    np.testing.assert_allclose(pocock, [2.438, 2.427, 2.410, 2.397, 2.386], atol=1e-3)


def test_a_single_look_is_the_fixed_sample_test():
    for kind in ("obrien-fleming", "pocock"):
        assert group_sequential_bounds([1.0], 0.05, kind)[0] == pytest.approx(1.95996, abs=1e-4)
        assert spending(1.0, 0.05, kind) == pytest.approx(0.05)
        assert spending(0.0, 0.05, kind) == pytest.approx(0.0)


@pytest.mark.parametrize("kind", ["obrien-fleming", "pocock"])
def test_unequal_unplanned_looks_spend_exactly_the_spending_function(kind):
    t = [0.1, 0.15, 0.5, 0.97, 1.2]  # an early look, a look soon after, and an overrun past 1
    bounds = group_sequential_bounds(t, 0.05, kind)
    crossed = crossing_probabilities(t, bounds).cumsum()
    np.testing.assert_allclose(crossed, spending(np.array(t), 0.05, kind), atol=1e-7)
    # An independent check: the z's are N(0, corr sqrt(t_i/t_j)); P(some |Z_k| >= b_k) by Genz.
    tt = np.array(t)
    cov = np.sqrt(np.minimum.outer(tt, tt) / np.maximum.outer(tt, tt))
    mvn = stats.multivariate_normal(mean=np.zeros(len(t)), cov=cov)
    assert 1.0 - mvn.cdf(bounds, lower_limit=-bounds) == pytest.approx(0.05, abs=3e-4)


def test_constant_bounds_reproduce_jennison_turnbull_sample_size_ratios():
    # J&T (2000) tables 2.1/2.3 constants and tables 2.7/2.8 ratios R, also in gsDesign's unit tests:
    # Pocock K=4 C=2.361 R=1.202; O'Brien-Fleming K=5 C=2.040 R=1.028 (alpha 0.05, power 0.8).
    fixed = stats.norm.isf(0.025) + stats.norm.isf(0.2)
    for looks, shape, constant, ratio in ((4, "pocock", 2.361, 1.202), (5, "obf", 2.040, 1.028)):
        t = np.arange(1, looks + 1) / looks
        bounds = constant * (np.ones(looks) if shape == "pocock" else np.sqrt(1 / t))
        assert crossing_probabilities(t, bounds).sum() == pytest.approx(0.05, abs=2e-4)
        drift = optimize.brentq(lambda d, t=t, b=bounds: crossing_probabilities(t, b, d).sum() - 0.8, 2.0, 5.0)
        assert (drift / fixed) ** 2 == pytest.approx(ratio, abs=2e-3)


def test_sequential_inflation_of_the_spending_designs():
    # No table at hand for these spending functions: the values are checked by simulation below.
    assert sequential_inflation(1, 0.05, 0.8, "pocock") == pytest.approx(1.0, abs=1e-5)  # wrong-side tail
    assert sequential_inflation(5, 0.05, 0.8, "obrien-fleming") == pytest.approx(1.025, abs=2e-3)
    assert sequential_inflation(5, 0.05, 0.8, "pocock") == pytest.approx(1.212, abs=3e-3)


def _paths(rng: np.random.Generator, n: int, t: np.ndarray, drift: float = 0.0) -> np.ndarray:
    """z statistics at information fractions ``t`` for ``n`` experiments (rows): Brownian motion."""
    dt = np.diff(t, prepend=0.0)
    s = np.cumsum(rng.normal(drift * dt, np.sqrt(dt), size=(n, len(t))), axis=1)
    return s / np.sqrt(t)


def test_monte_carlo_type_one_error_peeking_vs_alpha_spending():
    rng = np.random.default_rng(7)
    z = np.abs(_paths(rng, 200_000, FIVE))
    naive = (z >= 1.959964).any(axis=1).mean()
    assert naive == pytest.approx(0.142, abs=0.004)  # Armitage, McPherson & Rowe (1969): 5 looks 14.2%
    for kind in ("obrien-fleming", "pocock"):
        rejected = (z >= group_sequential_bounds(FIVE, 0.05, kind)).any(axis=1).mean()
        assert rejected == pytest.approx(0.05, abs=0.0025)


@pytest.mark.parametrize("kind", ["obrien-fleming", "pocock"])
def test_monte_carlo_power_of_the_inflated_sequential_design(kind):
    fixed = stats.norm.isf(0.025) + stats.norm.isf(0.2)
    drift = fixed * np.sqrt(sequential_inflation(5, 0.05, 0.8, kind))
    z = np.abs(_paths(np.random.default_rng(11), 100_000, FIVE, drift))
    assert (z >= group_sequential_bounds(FIVE, 0.05, kind)).any(axis=1).mean() == pytest.approx(0.8, abs=0.006)


def test_sequential_test_verdicts():
    looks = sequential_test([1.0, 3.5, 2.0], [0.2, 0.4, 0.6], 0.05, "obrien-fleming")
    assert [look.look for look in looks] == [1, 2, 3]
    assert [look.crossed for look in looks] == [False, True, False]
    assert looks[1].bound == pytest.approx(3.357, abs=1e-3)
    assert looks[2].alpha_spent == pytest.approx(spending(0.6, 0.05, "obrien-fleming"))
    with pytest.raises(ValueError, match="strictly increasing"):
        sequential_test([1.0, 2.0], [0.5, 0.5], 0.05, "pocock")
    with pytest.raises(ValueError, match="spending"):
        spending(0.5, 0.05, "haybittle")


def test_sample_sizes_match_the_textbook():
    # Fleiss, Levin & Paik (2003) without continuity correction: 10% vs 15% needs 686 a group,
    # 5% vs 10% needs 435; a mean shift of half a standard deviation needs 63 (z test).
    assert sample_size_proportions(0.10, 0.5, 0.05, 0.8) == (686, 686)
    assert sample_size_proportions(0.05, 1.0, 0.05, 0.8) == (435, 435)
    assert sample_size_means(10.0, 2.0, 0.1, 0.05, 0.8) == (63, 63)
    n_c, n_t = sample_size_proportions(0.10, 0.5, 0.05, 0.8, ratio=2.0)
    assert n_t == pytest.approx(2 * n_c, abs=1) and n_c < 686 < n_t
    with pytest.raises(ValueError, match="rates must lie"):
        sample_size_proportions(0.6, 1.0, 0.05, 0.8)


def test_z_statistics():
    diff, z = two_proportion_z(100, 1000, 130, 1000)
    pooled = 230 / 2000
    assert diff == pytest.approx(0.03)
    assert z == pytest.approx(0.03 / np.sqrt(pooled * (1 - pooled) * 2 / 1000))
    diff, z = mean_difference_z(5.0, 4.0, 100, 6.0, 9.0, 100)
    assert (diff, z) == (pytest.approx(1.0), pytest.approx(1.0 / np.sqrt(0.13)))


def test_power_at_the_planned_sample_size_by_simulation():
    n, _ = sample_size_proportions(0.10, 0.5, 0.05, 0.8)
    rng = np.random.default_rng(3)
    x1, x2 = rng.binomial(n, 0.10, 20_000), rng.binomial(n, 0.15, 20_000)
    z = np.array([two_proportion_z(a, n, b, n)[1] for a, b in zip(x1, x2, strict=True)])
    assert (np.abs(z) >= 1.959964).mean() == pytest.approx(0.8, abs=0.015)


def test_ratio_metric_variance_is_the_clustered_variance():
    rng = np.random.default_rng(5)
    # One payment per card, independent: the Bernoulli variance p (1 - p).
    y = rng.binomial(1, 0.1, 50_000)
    assert ratio_metric_variance(y, np.ones_like(y)) == pytest.approx(0.09, rel=0.03)

    # Cards with many payments and a card-level fraud propensity: payments of one card correlate.
    def ratio_and_counts(m: int) -> tuple[float, np.ndarray, np.ndarray]:
        payments = rng.poisson(5, m) + 1
        risk = rng.beta(0.5, 9.5, m)  # mean 5%, very uneven across cards
        frauds = rng.binomial(payments, risk)
        return frauds.sum() / payments.sum(), frauds, payments

    _, frauds, payments = ratio_and_counts(4000)
    per_payment = ratio_metric_variance(frauds, payments)
    ratios = np.array([ratio_and_counts(4000)[0] for _ in range(300)])
    expected_payments = 4000 * 6
    assert ratios.var(ddof=1) * expected_payments == pytest.approx(per_payment, rel=0.2)
    p = frauds.sum() / payments.sum()
    assert per_payment > 1.3 * p * (1 - p)  # the naive variance would understate the noise
