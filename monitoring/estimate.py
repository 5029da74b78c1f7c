"""Model performance before the labels arrive: confidence-based performance estimation (CBPE).

Chargebacks take weeks, so today's recall cannot be measured today. If the model's scores are
calibrated probabilities, they say how many frauds to expect among today's payments and how many
of those the decisions stopped, and so estimate recall and precision now:

    expected frauds          E = Σ p_i            (all scored payments)
    expected frauds stopped  C = Σ p_i            (flagged or blocked ones)
    estimated recall         C / E,    estimated precision  C / n_stopped

The interval is the sampling uncertainty of the outcomes given the probabilities (each payment's
fraud is a Bernoulli(p_i) draw; normal approximation with the delta method for the ratio). It does
**not** cover miscalibration, and miscalibration is exactly what concept drift causes: when the
relation between features and fraud changes, the scores stop being the right probabilities, and
the estimate stays confidently wrong. That is why the estimate is shown next to realised figures
as labels mature, never instead of them (docs/monitoring.md).

Scores are calibrated by a Platt map fitted on the model's evaluation slice at training time: the
training weights positives (retrain/train.py), which shifts raw scores away from probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit

_Z90 = 1.645


@dataclass(frozen=True)
class ScoreCalibration:
    """p(fraud) = sigmoid(slope * logit(score) + intercept), fitted on held-out labelled rows."""

    slope: float = 1.0
    intercept: float = 0.0
    fitted_on: int = 0  # rows behind the fit; 0 = identity (no fit)

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, min_positives: int = 5) -> ScoreCalibration:
        """Platt scaling by maximum likelihood; the identity when there are too few frauds to fit."""
        labels = np.asarray(labels, dtype=np.float64)
        if labels.sum() < min_positives or labels.sum() == len(labels):
            return cls()
        x = _logit(scores)

        def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
            z = params[0] * x + params[1]
            p = expit(z)
            nll = np.sum(np.logaddexp(0.0, z) - labels * z)
            grad = p - labels
            return float(nll), np.array([np.dot(grad, x), grad.sum()])

        result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        return cls(float(result.x[0]), float(result.x[1]), len(labels))

    def probability(self, scores: np.ndarray) -> np.ndarray:
        return expit(self.slope * _logit(scores) + self.intercept)

    def as_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "intercept": self.intercept, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ScoreCalibration:
        return cls(**data) if data else cls()


def _logit(scores: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7))


@dataclass(frozen=True)
class EstimatedPerformance:
    recall: float | None
    recall_interval: tuple[float, float] | None
    precision: float | None
    precision_interval: tuple[float, float] | None
    expected_fraud: float
    expected_stopped_fraud: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "recall": self.recall,
            "recall_interval": self.recall_interval,
            "precision": self.precision,
            "precision_interval": self.precision_interval,
            "expected_fraud": self.expected_fraud,
            "expected_stopped_fraud": self.expected_stopped_fraud,
        }


def estimate_performance(probabilities: np.ndarray, stopped: np.ndarray) -> EstimatedPerformance:
    """Estimated recall and precision, with 90% intervals, from calibrated fraud probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    stopped = np.asarray(stopped, dtype=bool)
    caught, missed = p[stopped].sum(), p[~stopped].sum()
    var_caught, var_missed = (p * (1 - p))[stopped].sum(), (p * (1 - p))[~stopped].sum()
    expected = caught + missed
    n_stopped = int(stopped.sum())
    recall = recall_interval = precision = precision_interval = None
    if expected > 0:
        recall = caught / expected
        # delta method on C / (C + M), C and M independent sums of Bernoullis
        sd = math.sqrt(missed**2 * var_caught + caught**2 * var_missed) / expected**2
        recall_interval = _clip(recall, _Z90 * sd)
    if n_stopped:
        precision = caught / n_stopped
        precision_interval = _clip(precision, _Z90 * math.sqrt(var_caught) / n_stopped)
    return EstimatedPerformance(recall, recall_interval, precision, precision_interval, float(expected), float(caught))


def _clip(centre: float, half: float) -> tuple[float, float]:
    return (max(0.0, centre - half), min(1.0, centre + half))


def label_maturity(delays_s: np.ndarray, ages_s: np.ndarray, horizon_s: float) -> np.ndarray | None:
    """Share of a day's eventual fraud labels expected to be known at each age, or None if unknowable yet.

    Estimated from fraud labels of payments old enough that their labels are complete (older than
    ``horizon_s``): the empirical distribution of their delays. Using younger payments would
    undercount long delays (their slow labels have not arrived yet) and overstate maturity.

    Args:
        delays_s: label time minus payment time, for fraud labels of payments older than horizon_s.
        ages_s: ages at which to read the curve.
    """
    delays = np.sort(np.asarray(delays_s, dtype=np.float64))
    if len(delays) < 20:
        return None
    return np.searchsorted(delays, np.minimum(ages_s, horizon_s), side="right") / len(delays)
