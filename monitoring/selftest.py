"""Measure the drift detector under a policy: false alarms without drift, delay to fire with it.

A threshold is only meaningful with its error rates. This runs the real detector on synthetic
features whose truth is known (a log-normal amount, a Poisson count, an uneven 24-value category
and a rare flag), against references of the stated size, and reports per window size:

- the share of feature-windows over threshold when nothing drifted (compare: false_alarm_rate),
- the share of windows in which a sustained alert fired when nothing drifted,
- for a shift of the amount's log-mean by ``shift_sd`` standard deviations: windows from the
  change until the alert fired (median and worst over the runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from monitoring.alerts import SustainedAlert
from monitoring.detector import DriftDetector, DriftPolicy
from monitoring.drift import DriftReference

_HOURS = np.r_[np.full(12, 1 / 36), np.full(12, 2 / 36)]
_LOG_SD = 0.8


def synthetic_features(rng: np.random.Generator, n: int, shift_sd: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "amount": rng.lognormal(3.5 + shift_sd * _LOG_SD, _LOG_SD, n),
        "card_txn_count_1h": rng.poisson(1.2, n).astype(float),
        "hour_of_day": rng.choice(24, n, p=_HOURS).astype(float),
        "is_rare": (rng.random(n) < 0.004).astype(float),
    }


@dataclass(frozen=True)
class DetectorCheck:
    window: int
    over_rate: float  # feature-windows over threshold, no drift
    alert_rate: float  # sustained alerts fired per feature-window, no drift
    delay_median: float | None  # windows from the change to the alert
    delay_worst: int | None  # None: some run never fired within max_windows
    runs: int


def check_detector(
    policy: DriftPolicy,
    windows: Sequence[int] = (300, 1000, 5000),
    reference_rows: int = 20_000,
    shift_sd: float = 0.5,
    references: int = 5,
    quiet_windows: int = 60,
    max_windows: int = 20,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> list[DetectorCheck]:
    rng = np.random.default_rng(seed)
    results = []
    for n in windows:
        over = fired = total = 0
        delays: list[int | None] = []
        for _ in range(references):
            training = synthetic_features(rng, reference_rows)
            reference = DriftReference.from_samples(training, categorical=["hour_of_day"])
            detector = DriftDetector(reference, policy)
            o, f, t = _quiet(detector, rng, n, quiet_windows, policy.sustain)
            over, fired, total = over + o, fired + f, total + t
            delays.append(_delay(detector, rng, n, shift_sd, max_windows, policy.sustain))
        fired_in = [d for d in delays if d is not None]
        results.append(
            DetectorCheck(
                n,
                over / total,
                fired / total,
                float(np.median(fired_in)) if fired_in else None,
                max(fired_in) if len(fired_in) == len(delays) else None,
                references,
            )
        )
        progress(f"window {n}: done")
    return results


def _quiet(detector: DriftDetector, rng: np.random.Generator, n: int, windows: int, sustain: int):
    alerts = {name: SustainedAlert(name, 0.5, sustain) for name in detector.reference.features}
    over = fired = total = 0
    for _ in range(windows):
        for r in detector.window(synthetic_features(rng, n)):
            over += r.over
            fired += alerts[r.feature].observe(float(r.over)) == "fire"
            total += 1
    return over, fired, total


def _delay(detector: DriftDetector, rng, n: int, shift_sd: float, max_windows: int, sustain: int) -> int | None:
    alert = SustainedAlert("amount", 0.5, sustain)
    for k in range(1, max_windows + 1):
        (amount,) = [r for r in detector.window(synthetic_features(rng, n, shift_sd)) if r.feature == "amount"]
        if alert.observe(float(amount.over)) == "fire":
            return k
    return None
