"""The drift detector, tested as a statistical instrument: how often it cries wolf, how fast it sees a wolf.

Both properties are measured on synthetic streams whose truth is known: a continuous feature, a
count, a categorical with uneven categories, and a rare flag (mostly empty bins), each against a
reference of 5,000 training rows, in windows of 300 to 3,000 payments.
"""

from __future__ import annotations

import numpy as np
import pytest

from monitoring import DriftDetector, DriftPolicy, DriftReference, SustainedAlert

FALSE_ALARM_RATE = 0.02
SUSTAIN = 3
REFERENCE_ROWS = 5000


def draw(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    hours = np.r_[np.full(12, 1 / 36), np.full(12, 2 / 36)]
    return {
        "amount": rng.lognormal(3.5 + shift, 0.8, n),
        "count_1h": rng.poisson(1.2 + shift, n).astype(float),
        "hour_of_day": rng.choice(24, n, p=hours).astype(float),
        "is_rare": (rng.random(n) < 0.004).astype(float),
    }


def detector(rng: np.random.Generator, kl_threshold: float = 0.0) -> DriftDetector:
    reference = DriftReference.from_samples(draw(rng, REFERENCE_ROWS), categorical=["hour_of_day"])
    policy = DriftPolicy(kl_threshold=kl_threshold, false_alarm_rate=FALSE_ALARM_RATE, sustain=SUSTAIN)
    return DriftDetector(reference, policy)


@pytest.mark.slow
def test_without_drift_windows_are_over_at_most_at_the_configured_rate_and_alerts_almost_never_fire():
    """kl_threshold 0: only the noise floor decides, the hardest case for false alarms."""
    rng = np.random.default_rng(11)
    over = windows = fired = 0
    for _ in range(8):  # eight training references, each with its own sampling error
        det = detector(rng)
        alerts = {name: SustainedAlert(name, 0.5, SUSTAIN) for name in det.reference.features}
        for n in rng.integers(300, 3000, size=40):
            for result in det.window(draw(rng, int(n))):
                over += result.over
                windows += 1
                fired += alerts[result.feature].observe(float(result.over)) == "fire"
    rate = over / windows
    # 1280 feature-windows: three binomial standard deviations of slack over the configured rate
    slack = 3 * np.sqrt(FALSE_ALARM_RATE * (1 - FALSE_ALARM_RATE) / windows)
    assert rate <= FALSE_ALARM_RATE + slack, f"{rate:.4f} of windows over, configured {FALSE_ALARM_RATE}"
    assert fired / windows < FALSE_ALARM_RATE / 10  # a sustained alert needs SUSTAIN rare windows in a row
    assert over > 0  # the floor is a quantile, not a wall: at this level a few windows do go over


def test_a_shift_of_known_size_fires_within_sustain_windows_every_time():
    """Half a standard deviation of log-amount (KL = 0.5²/2 = 0.125 nats), a 0.05 nats threshold, windows of 1,000."""
    rng = np.random.default_rng(12)
    delays = []
    for _ in range(15):
        det = detector(rng, kl_threshold=0.05)
        alert = SustainedAlert("amount", 0.5, SUSTAIN)
        for _ in range(5):  # quiet before the change
            (amount,) = [r for r in det.window(draw(rng, 1000)) if r.feature == "amount"]
            assert alert.observe(float(amount.over)) is None
        for k in range(1, 10):
            (amount,) = [r for r in det.window(draw(rng, 1000, shift=0.4)) if r.feature == "amount"]
            if alert.observe(float(amount.over)) == "fire":
                delays.append(k)
                break
    assert delays == [SUSTAIN] * 15, f"windows after the change until the alert fired: {delays}"


def test_the_noise_floor_falls_with_window_size_and_the_threshold_governs_big_windows():
    det = detector(np.random.default_rng(13), kl_threshold=0.02)
    floors = [det.noise_floor("amount", n) for n in (200, 1000, 5000, 50_000)]
    assert floors == sorted(floors, reverse=True) and floors[0] > 5 * floors[-1]
    assert floors[0] > 0.02 > floors[-1]  # small windows: noise decides; big ones: the effect size does
    assert det.noise_floor("amount", 1000) == det.noise_floor("amount", 1001)  # cached on a 10% grid


def test_thin_windows_give_no_statistic_and_cannot_fire():
    det = detector(np.random.default_rng(14))
    results = det.window({**draw(np.random.default_rng(15), 50, shift=3.0)})
    assert all(r.kl is None and not r.over and r.n == 50 for r in results)


@pytest.mark.parametrize(
    "kwargs, field", [({"false_alarm_rate": 0.0}, "false_alarm_rate"), ({"kl_threshold": -1}, "kl_threshold")]
)
def test_a_nonsense_policy_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DriftPolicy(**kwargs)
