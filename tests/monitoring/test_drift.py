"""Drift statistics: finite, sensitive to real shifts, quiet without them."""

import math

import numpy as np

from monitoring import DriftReference, compare, kl_divergence


def reference(rng, n=5000):
    return DriftReference.from_samples(
        {"amount": rng.lognormal(3.5, 0.7, n), "count_1h": rng.poisson(1.5, n).astype(float)}
    )


def test_same_distribution_gives_small_kl():
    rng = np.random.default_rng(0)
    ref = reference(rng)
    results = compare(ref, {"amount": rng.lognormal(3.5, 0.7, 3000), "count_1h": rng.poisson(1.5, 3000)})
    assert all(r.kl is not None and r.kl < 0.02 and not r.drifted for r in results)


def test_a_one_sigma_shift_is_flagged():
    rng = np.random.default_rng(1)
    ref = reference(rng)
    (amount,) = [r for r in compare(ref, {"amount": rng.lognormal(4.2, 0.7, 3000)}) if r.feature == "amount"]
    assert amount.drifted and amount.kl > 0.2 and amount.psi > 0.2


def test_values_beyond_training_range_land_in_end_bins():
    ref = DriftReference.from_samples({"x": np.linspace(0, 100, 1000)})
    counts = ref.features["x"].histogram(np.array([-1e9, 1e9]))
    assert counts[0] == 1 and counts[-1] == 1 and counts.sum() == 2


def test_empty_bins_never_give_infinity():
    assert math.isfinite(kl_divergence(np.array([100.0, 0.0, 0.0]), np.array([0.0, 0.0, 100.0])))


def test_low_cardinality_feature_gets_one_bin_per_value_and_an_other_bin():
    ref = DriftReference.from_samples({"flag": np.array([0.0, 1.0] * 500)})
    feature = ref.features["flag"]
    assert list(feature.discrete_values) == [0.0, 1.0] and len(feature.counts) == 3
    assert list(feature.histogram(np.array([0.0, 1.0, 7.0]))) == [1.0, 1.0, 1.0]


def test_round_trip_through_metadata_gives_identical_results():
    rng = np.random.default_rng(2)
    ref = reference(rng)
    current = {"amount": rng.lognormal(3.7, 0.7, 1000), "count_1h": rng.poisson(2.0, 1000)}
    assert compare(DriftReference.from_dict(ref.to_dict()), current) == compare(ref, current)


def test_missing_and_thin_features_are_reported_with_a_note():
    ref = reference(np.random.default_rng(3))
    results = {r.feature: r for r in compare(ref, {"amount": np.ones(10)})}
    assert results["count_1h"].kl is None and "missing" in results["count_1h"].note
    assert results["amount"].kl is None and "only 10" in results["amount"].note


def test_a_categorical_feature_gets_a_bin_per_training_category_and_new_ones_land_in_other():
    rng = np.random.default_rng(4)
    categories = rng.choice([3.0, 5.0, 8.0], size=5000, p=[0.6, 0.3, 0.1])
    ref = DriftReference.from_samples({"category": categories}, categorical=["category"], max_categories=2)
    feature = ref.features["category"]
    assert list(feature.discrete_values) == [3.0, 5.0]  # the two most frequent; 8 is "other"
    assert list(feature.histogram(np.array([3.0, 5.0, 8.0, 42.0]))) == [1.0, 1.0, 2.0]
    (result,) = compare(ref, {"category": np.full(1000, 42.0)})
    assert result.drifted and result.most_shifted_bin == 2


def test_false_alarm_rate_without_drift_is_low():
    rng = np.random.default_rng(5)
    ref = reference(rng, n=20000)
    alarms = 0
    for _ in range(200):
        current = {"amount": rng.lognormal(3.5, 0.7, 2000), "count_1h": rng.poisson(1.5, 2000)}
        alarms += any(r.drifted for r in compare(ref, current))
    assert alarms / 200 < 0.05
