"""Model performance as labels mature: what the monitor can know on a given day.

Fraud labels arrive late (chargebacks take days to weeks), so the recall of yesterday's decisions
is unknowable today. Realised recall counts only the frauds already known at the evaluation time;
it is an estimate from a partial, and biased, sample: frauds that are reported fast (e.g. those a
reviewer saw) are over-represented. The number of known frauds behind each figure is reported
with it, and a figure backed by fewer than ``min_fraud`` labels is withheld rather than shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RealisedPerformance:
    recall: float | None  # share of known frauds the decisions stopped (flag or block)
    precision: float | None  # share of stopped payments known to be fraud
    known_fraud: int
    stopped: int
    recall_interval: tuple[float, float] | None  # Wilson 90% interval

    @property
    def reliable(self) -> bool:
        return self.recall is not None


def realised_performance(stopped: np.ndarray, known_fraud: np.ndarray, min_fraud: int = 10) -> RealisedPerformance:
    """Recall and precision of decisions over a window, from the labels known so far.

    Args:
        stopped: per decision, True when it was flagged or blocked.
        known_fraud: per decision, True when a fraud label for it is known at evaluation time.
        min_fraud: fewer known frauds than this and recall is withheld (None).
    """
    n_fraud = int(known_fraud.sum())
    caught = int((stopped & known_fraud).sum())
    n_stopped = int(stopped.sum())
    precision = caught / n_stopped if n_stopped else None
    if n_fraud < min_fraud:
        return RealisedPerformance(None, precision, n_fraud, n_stopped, None)
    return RealisedPerformance(caught / n_fraud, precision, n_fraud, n_stopped, wilson_interval(caught, n_fraud))


def wilson_interval(successes: int, trials: int, z: float = 1.645) -> tuple[float, float]:
    """Wilson score interval for a proportion (z=1.645: 90%); sane at 0 and 1, unlike the normal one."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
