"""Operating thresholds chosen per model from its validation slice, for a stated review capacity.

A threshold is a business decision expressed as a score: every model's scores are scaled
differently, so a fixed 0.7 that gave 150 flags a day under one model gives 900 under the next
and buries the review team. Each model therefore gets its own thresholds, chosen when it is
trained and stored with it:

* **block**: the lowest score above which at least ``block_precision`` of the validation
  payments were fraud (and at least ``min_block_frauds`` frauds lie above it). Blocking declines a
  customer with no human in the loop, so it needs high precision. If no score reaches that
  precision the model never blocks on its own (threshold 1.0) and rules do the hard calls.
* **flag**: below the block threshold, the band ``[flag, block)`` holds at most
  ``review_capacity_per_day`` payments per validation day (the validation slice stands for a day
  of live traffic), and is not widened into scores where fewer than ``min_flag_precision`` of
  the flagged payments were fraud (reviewers' time spent on near-certain legitimate payments).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from schema import DecisionThresholds


@dataclass(frozen=True)
class ThresholdPolicy:
    review_capacity_per_day: float = 200.0  # flagged cases the review team can work in a day
    block_precision: float = 0.8  # share of model blocks that must be fraud on validation
    min_block_frauds: int = 5  # fewer frauds above a threshold than this is noise, not evidence
    min_flag_precision: float = 0.02  # at least 1 in 50 flagged payments fraud

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class OperatingPoint:
    thresholds: DecisionThresholds
    flags_per_day: float  # expected on traffic like the validation slice
    blocks_per_day: float
    flag_band_precision: float
    block_precision: float

    def as_dict(self) -> dict[str, float]:
        return {
            "flag": self.thresholds.flag,
            "block": self.thresholds.block,
            "flags_per_day": self.flags_per_day,
            "blocks_per_day": self.blocks_per_day,
            "flag_band_precision": self.flag_band_precision,
            "block_precision": self.block_precision,
        }


def choose_thresholds(y_true: np.ndarray, scores: np.ndarray, days: float, policy: ThresholdPolicy) -> OperatingPoint:
    """The operating point for ``scores`` on a validation slice of ``days`` days.

    Example: the top 6 scores hold 5 frauds (precision 0.83 >= 0.8), so the model blocks 6; a
    capacity of 10 reviews a day on one validation day flags the next 10.

    >>> y = np.array([1] * 5 + [0] * 10 + [1] + [0] * 84)
    >>> s = np.linspace(1.0, 0.01, 100)
    >>> p = choose_thresholds(y, s, 1.0, ThresholdPolicy(review_capacity_per_day=10, min_block_frauds=3))
    >>> p.blocks_per_day, p.flags_per_day
    (6.0, 10.0)
    """
    if days <= 0:
        raise ValueError(f"days: the validation slice must span a positive time, got {days}")
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], y_true[order].astype(np.float64)
    block_k = _block_count(ranked, hits, policy)
    block = float(ranked[block_k - 1]) if block_k else 1.0
    capacity = int(np.floor(policy.review_capacity_per_day * days))
    band_scores, band_hits = ranked[block_k:], hits[block_k:]
    flag_k = _flag_count(band_scores, band_hits, capacity, policy.min_flag_precision)
    # The flag threshold sits just above the first payment not flagged, so ties never overfill.
    if flag_k == 0:
        flag = block
    elif flag_k < len(band_scores):
        flag = float(np.nextafter(band_scores[flag_k], np.inf))
    else:
        flag = float(band_scores[-1])
    return operating_point(y_true, scores, days, DecisionThresholds(flag=min(flag, block), block=block))


def operating_point(
    y_true: np.ndarray, scores: np.ndarray, days: float, thresholds: DecisionThresholds
) -> OperatingPoint:
    """What ``thresholds`` do on a validation slice of ``days`` days: flags and blocks per day, precision."""
    flagged = (scores >= thresholds.flag) & (scores < thresholds.block)
    blocked = scores >= thresholds.block
    return OperatingPoint(
        thresholds=thresholds,
        flags_per_day=float(flagged.sum()) / days,
        blocks_per_day=float(blocked.sum()) / days,
        flag_band_precision=_precision(y_true, flagged),
        block_precision=_precision(y_true, blocked),
    )


def _block_count(ranked: np.ndarray, hits: np.ndarray, policy: ThresholdPolicy) -> int:
    """How many top-ranked payments the model may block (0: none)."""
    frauds = np.cumsum(hits)
    precision = frauds / np.arange(1, len(hits) + 1)
    ok = (precision >= policy.block_precision) & (frauds >= policy.min_block_frauds)
    # Only cut between distinct scores: a threshold cannot split payments with equal scores.
    distinct_end = np.append(ranked[1:] < ranked[:-1], True)
    candidates = np.flatnonzero(ok & distinct_end)
    return int(candidates[-1]) + 1 if len(candidates) else 0


def _flag_count(band_scores: np.ndarray, band_hits: np.ndarray, capacity: int, min_precision: float) -> int:
    if capacity <= 0 or len(band_scores) == 0:
        return 0
    precision = np.cumsum(band_hits) / np.arange(1, len(band_hits) + 1)
    distinct_end = np.append(band_scores[1:] < band_scores[:-1], True)
    ok = distinct_end & (precision >= min_precision)
    ok[capacity:] = False
    candidates = np.flatnonzero(ok)
    return int(candidates[-1]) + 1 if len(candidates) else 0


def _precision(y_true: np.ndarray, chosen: np.ndarray) -> float:
    return float(y_true[chosen].mean()) if chosen.any() else float("nan")
