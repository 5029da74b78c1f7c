"""A drift detector whose false-alarm rate is a setting, not an accident of window size.

A fixed KL threshold means different things at different window sizes: a window of 200 payments
drawn from the training distribution itself shows a KL of a few hundredths by sampling noise
alone, a window of 50,000 almost none. So a window counts as "over" only when its KL exceeds both

- ``kl_threshold``: the smallest shift worth anyone's attention (an effect size, in nats), and
- the **noise floor**: the ``1 - false_alarm_rate`` quantile of the KL that a window of the same
  size shows against this reference when nothing has drifted. It is found by simulation over the
  feature's own bins with the same smoothing, so it accounts for the smoothing's bias, discrete
  features, empty bins and the reference's own sampling error, where the chi-square approximation
  (2·n·KL ≈ χ²) is poor.

With no drift, a feature's window is over with probability at most ``false_alarm_rate``; an alert
needs ``sustain`` consecutive windows over, so a false alert needs that many rare events in a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from monitoring.drift import DEFAULT_SMOOTHING, DriftReference, FeatureReference, kl_divergence, psi


@dataclass(frozen=True)
class DriftPolicy:
    """When a window's distribution counts as drifted, and how long before that is an alert."""

    kl_threshold: float = 0.1  # nats; the smallest shift worth attention
    false_alarm_rate: float = 0.01  # per feature per window, with no drift
    sustain: int = 3  # consecutive windows over (under) to fire (clear)
    min_samples: int = 200  # fewer in a window: no statistic, the alert neither fires nor clears
    smoothing: float = DEFAULT_SMOOTHING
    simulations: int = 2000  # draws behind each noise floor

    def __post_init__(self) -> None:
        if not 0 < self.false_alarm_rate < 0.5:
            raise ValueError(f"false_alarm_rate: expected a probability in (0, 0.5), got {self.false_alarm_rate}")
        if self.kl_threshold < 0:
            raise ValueError(f"kl_threshold: expected >= 0 nats, got {self.kl_threshold}")
        if self.sustain < 1 or self.min_samples < 1:
            raise ValueError("sustain and min_samples: expected at least 1")


@dataclass(frozen=True)
class WindowDrift:
    """One feature (or the score) in one window."""

    feature: str
    n: int
    kl: float | None
    psi: float | None
    noise_floor: float | None
    over: bool  # kl above both kl_threshold and the noise floor

    def as_dict(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "n": self.n,
            "kl": self.kl,
            "psi": self.psi,
            "noise_floor": self.noise_floor,
            "over": self.over,
        }


@dataclass
class DriftDetector:
    """Scores windows of live values against a training reference, per feature."""

    reference: DriftReference
    policy: DriftPolicy = field(default_factory=DriftPolicy)
    seed: int = 0
    _floors: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)

    def window(self, values: dict[str, np.ndarray], features: Iterable[str] | None = None) -> list[WindowDrift]:
        """The statistics of one window, for ``features`` (default: every reference feature);
        features absent from ``values`` are reported with n=0."""
        names = self.reference.features if features is None else features
        return [self._one(name, self.reference.features[name], values.get(name)) for name in names]

    def noise_floor(self, feature: str, n: int) -> float:
        """KL that a window of ``n`` reference-distributed values exceeds with probability false_alarm_rate."""
        bucket = _size_bucket(n)
        key = (feature, bucket)
        if key not in self._floors:
            self._floors[key] = self._simulate_floor(self.reference.features[feature], bucket)
        return self._floors[key]

    def _one(self, name: str, ref: FeatureReference, values: np.ndarray | None) -> WindowDrift:
        if values is None or len(values) < self.policy.min_samples:
            return WindowDrift(name, 0 if values is None else len(values), None, None, None, False)
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        counts = ref.histogram(values)
        kl = kl_divergence(counts, ref.counts, self.policy.smoothing)
        floor = self.noise_floor(name, len(values))
        over = kl > max(self.policy.kl_threshold, floor)
        return WindowDrift(name, len(values), kl, psi(counts, ref.counts, self.policy.smoothing), floor, over)

    def _simulate_floor(self, ref: FeatureReference, n: int) -> float:
        """The (1 - false_alarm_rate) quantile of KL(window || this reference) with no drift.

        The reference is one sample, so the true bin shares are uncertain: each draw takes shares
        from their posterior given the reference counts, Dirichlet(counts + 1/2), then a window of
        ``n`` from those shares, and scores it against the fixed reference exactly as a live window
        would be. Skipping the first step treats the reference as exact and, with references of a
        few thousand rows, alarms several times more often than the setting says.
        """
        # A stable seed per (feature bins, size): the same floor on every run and every process.
        rng = np.random.default_rng([self.seed, n, len(ref.counts), int(ref.counts.sum())])
        shares = rng.dirichlet(ref.counts + 0.5, size=self.policy.simulations)
        windows = np.stack([rng.multinomial(n, s) for s in shares]).astype(np.float64)
        p = _smoothed_rows(windows, self.policy.smoothing)
        q = _smoothed_rows(ref.counts[None, :], self.policy.smoothing)
        kls = np.sum(p * np.log(p / q), axis=1)
        return float(np.quantile(kls, 1 - self.policy.false_alarm_rate))


def _smoothed_rows(counts: np.ndarray, smoothing: float) -> np.ndarray:
    counts = counts + smoothing
    return counts / counts.sum(axis=1, keepdims=True)


def _size_bucket(n: int) -> int:
    """Round a window size down to a grid 10% apart, so floors are cached, not recomputed per window.

    Rounding down gives the floor of a slightly smaller window, which is slightly higher: the
    cached floor errs towards fewer false alarms."""
    if n < 20:
        return n
    step = math.log(1.1)
    return int(math.exp(math.floor(math.log(n) / step) * step))


__all__ = ["DriftDetector", "DriftPolicy", "WindowDrift"]
