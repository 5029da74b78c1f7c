"""Performance before the labels arrive: calibration, the confidence-based estimate, label maturity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from monitoring import ScoreCalibration, estimate_performance, label_maturity


def miscalibrated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True fraud probabilities, the labels drawn from them, and scores the way weighted training skews them."""
    p = expit(rng.normal(-5.0, 1.8, n))
    scores = expit(1.3 * logit(p) + 1.5)  # overconfident and shifted up, like positive weighting
    return p, rng.random(n) < p, scores


def test_platt_calibration_recovers_the_probabilities_from_skewed_scores():
    rng = np.random.default_rng(1)
    _, labels, scores = miscalibrated(rng, 200_000)
    calibration = ScoreCalibration.fit(scores, labels)
    p, _, new_scores = miscalibrated(rng, 50_000)
    assert abs(calibration.probability(new_scores) - p).mean() < 0.002
    assert abs(scores.mean() - labels.mean()) > 5 * abs(calibration.probability(scores).mean() - labels.mean())
    assert ScoreCalibration.from_dict(calibration.as_dict()) == calibration


def test_too_few_frauds_to_fit_leaves_scores_as_they_are():
    calibration = ScoreCalibration.fit(np.array([0.1, 0.9, 0.2]), np.array([0, 1, 0]))
    assert calibration.fitted_on == 0
    assert calibration.probability(np.array([0.3]))[0] == pytest.approx(0.3)


def test_estimated_recall_interval_covers_the_realised_recall_about_nine_days_in_ten():
    """200 simulated days whose labels are drawn from calibrated probabilities: the 90% interval's coverage."""
    rng = np.random.default_rng(2)
    covered_recall = covered_precision = 0
    for _ in range(200):
        p = expit(rng.normal(-5.0, 1.8, 20_000))
        fraud = rng.random(len(p)) < p
        stopped = p > 0.1
        estimate = estimate_performance(p, stopped)
        recall = fraud[stopped].sum() / fraud.sum()
        precision = fraud[stopped].mean()
        covered_recall += estimate.recall_interval[0] <= recall <= estimate.recall_interval[1]
        covered_precision += estimate.precision_interval[0] <= precision <= estimate.precision_interval[1]
    assert 0.84 <= covered_recall / 200 <= 0.96
    assert 0.84 <= covered_precision / 200 <= 0.96


def test_nothing_stopped_gives_zero_recall_and_no_precision():
    estimate = estimate_performance(np.array([0.2, 0.1]), np.array([False, False]))
    assert estimate.recall == 0.0 and estimate.precision is None and estimate.expected_fraud == pytest.approx(0.3)


def test_label_maturity_reads_the_delay_distribution_of_complete_days():
    rng = np.random.default_rng(3)
    delays = rng.exponential(10 * 86_400, 5000)  # chargebacks: mean ten days
    curve = label_maturity(delays, np.array([0.0, 10 * 86_400 * np.log(2), 1e9]), horizon_s=120 * 86_400)
    assert curve[0] == 0.0 and curve[1] == pytest.approx(0.5, abs=0.03) and curve[2] == 1.0
    assert label_maturity(delays[:5], np.array([1.0]), horizon_s=1e9) is None  # too few to say
