"""The statistics of A/B tests: two-sample z statistics, sample sizes, and group-sequential tests
with Lan-DeMets alpha spending (docs/experiments.md, "Peeking and sequential tests").

Pure numpy/scipy, no I/O. Every test is two-sided and symmetric.

Why a sequential test: an experiment's status is looked at many times while labels mature. Testing
at |z| >= 1.96 at every look rejects a true null far more often than 5% (about 14% over 5 looks).
A spending function fixes, before launch, how much of alpha may be used by each information
fraction t (the share of the planned sample seen so far); the bound at a look is the |z| whose
crossing probability under the null, given no earlier crossing, is exactly the alpha newly spent.
Looks may come at any t, planned or not: the bound is computed from the t actually reached.

The crossing probabilities are computed by the recursive numerical integration of Armitage,
McPherson and Rowe (1969), in the form of Jennison & Turnbull (2000), ch. 19: on the score scale
S_k = Z_k sqrt(t_k) the increments are independent N(theta dt, dt), so the density of S_k on the
continuation region is the previous one convolved with a normal kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

SPENDING_KINDS = ("obrien-fleming", "pocock")
_Z_CAP = 8.5  # |z| beyond which a path's probability (< 1e-16) is dropped from the integration
_MIN_STEP = 1e-15  # alpha increments below this are "spend nothing": the bound is infinite
_MAX_POINTS = 2001  # grid points per look: bounds memory (points^2) for looks very close together


def spending(t: np.ndarray | float, alpha: float, kind: str) -> np.ndarray:
    """Two-sided alpha spent by information fraction ``t`` (clipped to [0, 1]).

    ``obrien-fleming``: the Lan-DeMets O'Brien-Fleming-type function applied to each side, alpha/2
    per side: 2 * (2 - 2 Phi(z_{alpha/4} / sqrt(t))). This is the convention of gsDesign, rpact and
    EAST, whose two-sided 5% bounds for 5 equal looks are 4.877, 3.357, 2.680, 2.290, 2.031
    (the one-sided form 2 - 2 Phi(z_{alpha/2} / sqrt(t)) used for both sides together would spend
    far more early and give 4.38 ... 1.98 instead).
    ``pocock``: the Lan-DeMets Pocock-type function alpha * ln(1 + (e - 1) t).
    """
    _check(alpha, kind)
    t = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if kind == "pocock":
        return alpha * np.log1p((math.e - 1.0) * t)
    z = stats.norm.isf(alpha / 4.0)
    with np.errstate(divide="ignore"):
        per_side = 2.0 * stats.norm.sf(z / np.sqrt(t))
    return 2.0 * per_side


def group_sequential_bounds(info_fractions: Sequence[float], alpha: float, kind: str) -> np.ndarray:
    """Two-sided critical |z| at each look, so that P(|Z| crosses by look k | H0) = spending(t_k).

    ``info_fractions``: the information fraction actually reached at each look, strictly
    increasing; a look past 1 (an overrun) spends what is left of alpha and no more. A look that
    may spend nothing has bound ``inf``.
    """
    t = _fractions(info_fractions)
    spent = spending(t, alpha, kind)
    steps = np.diff(spent, prepend=0.0)
    bounds = np.empty(len(t))
    grid = _Grid.start()
    for k in range(len(t)):
        bounds[k] = grid.bound_for(t[k], steps[k])
        grid = grid.advance(t[k], bounds[k], _next(t, k))
    return bounds


def crossing_probabilities(info_fractions: Sequence[float], bounds: Sequence[float], drift: float = 0.0) -> np.ndarray:
    """P(first crossing of |Z| >= bound at look k) for each k, when E[Z at t=1] = ``drift``.

    With ``drift`` 0 these are the alpha spent per look; their sum at a drift is the power.
    """
    t = _fractions(info_fractions)
    grid = _Grid.start(drift)
    out = np.empty(len(t))
    for k in range(len(t)):
        out[k] = grid.cross_probability(t[k], float(bounds[k]))
        grid = grid.advance(t[k], float(bounds[k]), _next(t, k))
    return out


@dataclass(frozen=True)
class SequentialLook:
    """The verdict at one look of a group-sequential test."""

    look: int  # 1-based
    info_fraction: float
    z: float
    bound: float  # critical |z| at this look
    alpha_spent: float  # cumulative, two-sided
    crossed: bool  # |z| >= bound: reject the null here (a test stops at its first crossing)


def sequential_test(
    z_values: Sequence[float], info_fractions: Sequence[float], alpha: float, kind: str
) -> list[SequentialLook]:
    """The verdict at each look, given the z statistic and information fraction reached at each."""
    if len(z_values) != len(info_fractions):
        raise ValueError(f"{len(z_values)} z values for {len(info_fractions)} information fractions")
    bounds = group_sequential_bounds(info_fractions, alpha, kind)
    spent = spending(np.asarray(info_fractions, dtype=float), alpha, kind)
    return [
        SequentialLook(k + 1, float(t), float(z), float(b), float(a), bool(abs(z) >= b))
        for k, (z, t, b, a) in enumerate(zip(z_values, info_fractions, bounds, spent, strict=True))
    ]


def two_proportion_z(x1: float, n1: float, x2: float, n2: float) -> tuple[float, float]:
    """Difference p2 - p1 and its z statistic, with the pooled variance of the null p1 = p2."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"both groups need observations, got n1={n1}, n2={n2}")
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    diff = p2 - p1
    return diff, (diff / se if se > 0 else 0.0)


def mean_difference_z(
    mean1: float, var1: float, n1: float, mean2: float, var2: float, n2: float
) -> tuple[float, float]:
    """Difference mean2 - mean1 and its Welch z statistic (unequal variances)."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"both groups need observations, got n1={n1}, n2={n2}")
    se = math.sqrt(var1 / n1 + var2 / n2)
    diff = mean2 - mean1
    return diff, (diff / se if se > 0 else 0.0)


def sample_size_proportions(
    p_control: float, relative_effect: float, alpha: float, power: float, ratio: float = 1.0
) -> tuple[int, int]:
    """(n control, n treatment) for a fixed-sample two-sided test of p_t = p_c (1 + effect).

    The textbook formula with the pooled variance under H0 and the unpooled one under H1 (Fleiss,
    Levin & Paik 2003, eq. 4.14, without continuity correction); ``ratio`` = n_t / n_c.
    """
    p1 = p_control
    p2 = p_control * (1.0 + relative_effect)
    if not (0.0 < p1 < 1.0 and 0.0 < p2 < 1.0):
        raise ValueError(f"rates must lie in (0, 1): control {p1:g}, treatment {p2:g}")
    _check_design(relative_effect, alpha, power, ratio)
    za, zb = stats.norm.isf(alpha / 2.0), stats.norm.isf(1.0 - power)
    pbar = (p1 + ratio * p2) / (1.0 + ratio)
    null = za * math.sqrt(pbar * (1.0 - pbar) * (1.0 + 1.0 / ratio))
    alt = zb * math.sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2) / ratio)
    n_c = ((null + alt) / (p2 - p1)) ** 2
    return _ceil(n_c), _ceil(n_c * ratio)


def sample_size_means(
    mean_control: float, sd: float, relative_effect: float, alpha: float, power: float, ratio: float = 1.0
) -> tuple[int, int]:
    """(n control, n treatment) for a two-sided z test of mean_t = mean_c (1 + effect), both arms
    with standard deviation ``sd``: n_c = (z_{a/2} + z_b)^2 sd^2 (1 + 1/ratio) / delta^2."""
    if sd <= 0 or mean_control == 0:
        raise ValueError(f"need sd > 0 and a non-zero control mean, got sd={sd:g}, mean={mean_control:g}")
    _check_design(relative_effect, alpha, power, ratio)
    delta = mean_control * relative_effect
    n_c = _z_sum(alpha, power) ** 2 * sd**2 * (1.0 + 1.0 / ratio) / delta**2
    return _ceil(n_c), _ceil(n_c * ratio)


def sequential_inflation(looks: int, alpha: float, power: float, kind: str) -> float:
    """How much a group-sequential design with ``looks`` equally spaced looks inflates the
    fixed-sample size for the same power: (drift giving ``power`` / (z_{a/2} + z_b))^2.

    The drift is E[Z] at full information; a fixed-sample test needs z_{a/2} + z_b. The ratio is
    Jennison & Turnbull's R (2000, table 7.6 lists 1.028 for O'Brien-Fleming-type and 1.2 for
    Pocock-type spending at 5 looks, alpha 0.05, power 0.8).
    """
    if looks < 1:
        raise ValueError(f"looks must be at least 1, got {looks}")
    _check_design(1.0, alpha, power, 1.0)
    t = np.arange(1, looks + 1) / looks
    bounds = group_sequential_bounds(t, alpha, kind)
    fixed = _z_sum(alpha, power)

    def shortfall(drift: float) -> float:
        return float(crossing_probabilities(t, bounds, drift).sum()) - power

    drift = optimize.brentq(shortfall, fixed * 0.9, fixed * 2.0, xtol=1e-10)
    return (drift / fixed) ** 2


def ratio_metric_variance(numerators: np.ndarray, denominators: np.ndarray) -> float:
    """Per-unit-of-denominator variance of a ratio metric sum(Y) / sum(N) over randomisation units.

    ``numerators``/``denominators``: per-unit sums (e.g. per card: fraud money lost, payments).
    Cards, not payments, are randomised, so one card's payments are correlated and the payment-level
    variance understates the noise. By the delta method, with R = mean(Y) / mean(N) over m units,
    Var(R) = Var(Y - R N) / (m mean(N)^2); multiplied by the total denominator m mean(N) that is
    Var(Y - R N) / mean(N): the "effective per-payment variance", so that n payments give var / n.
    """
    y = np.asarray(numerators, dtype=float)
    n = np.asarray(denominators, dtype=float)
    if y.shape != n.shape or y.ndim != 1:
        raise ValueError(f"numerators and denominators must be 1-D and alike, got {y.shape} and {n.shape}")
    if len(y) < 2 or n.sum() <= 0:
        raise ValueError("need at least two units and a positive total denominator")
    ratio = y.sum() / n.sum()
    residual = y - ratio * n
    return float(residual.var(ddof=1) / n.mean())


def design_effect(numerators: np.ndarray, denominators: np.ndarray) -> float:
    """Ratio of the clustered (per-card) variance of the ratio to the naive per-payment one.

    The naive variance treats payments as independent Bernoulli draws when the numerator counts
    them (0/1 per payment), so this is meaningful for proportion metrics.
    """
    y = np.asarray(numerators, dtype=float)
    n = np.asarray(denominators, dtype=float)
    p = y.sum() / n.sum()
    naive = p * (1.0 - p)
    return ratio_metric_variance(y, n) / naive if naive > 0 else 1.0


# --- the recursive integration ---------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """The sub-density of S_k = Z_k sqrt(t_k) on the continuation region after look k.

    ``s``: grid points, ``w``: density times Simpson weights (so ``w.sum()`` is the probability of
    not having crossed yet). Before the first look all mass sits at S_0 = 0.
    """

    t: float
    s: np.ndarray
    w: np.ndarray
    drift: float

    @classmethod
    def start(cls, drift: float = 0.0) -> _Grid:
        return cls(0.0, np.zeros(1), np.ones(1), drift)

    def _moments(self, t: float) -> tuple[np.ndarray, float]:
        dt = t - self.t
        return self.s + self.drift * dt, math.sqrt(dt)

    def cross_probability(self, t: float, bound: float) -> float:
        """P(no crossing so far and |Z_k| >= bound at the look at ``t``)."""
        if math.isinf(bound):
            return 0.0
        mean, sd = self._moments(t)
        edge = bound * math.sqrt(t)
        tails = special.ndtr((mean - edge) / sd) + special.ndtr((-edge - mean) / sd)
        return float(self.w @ tails)

    def bound_for(self, t: float, step: float) -> float:
        """The |z| whose crossing probability at ``t`` is ``step``."""
        if step <= _MIN_STEP:
            return math.inf
        if self.cross_probability(t, 0.0) <= step:
            return 0.0  # everything left may be spent: reject at any z
        return optimize.brentq(lambda b: self.cross_probability(t, b) - step, 0.0, 40.0, xtol=1e-10)

    def advance(self, t: float, bound: float, next_t: float | None = None) -> _Grid:
        """The density of S at ``t`` on |Z| < bound, for the next look (at ``next_t``)."""
        mean, sd = self._moments(t)
        reach = min(bound, _Z_CAP + abs(self.drift) * math.sqrt(t)) * math.sqrt(t)
        # Spacing small against both kernels' widths (this step's, which shapes the density, and
        # the next one's, which integrates it) keeps Simpson's rule accurate to ~1e-8.
        width = sd if next_t is None else min(sd, math.sqrt(next_t - t))
        n = min(_MAX_POINTS, max(201, 2 * math.ceil(reach / (width / 12.0)) + 1))
        s = np.linspace(-reach, reach, n)
        h = s[1] - s[0]
        simpson = np.ones(n)
        simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
        x = (s[:, None] - mean[None, :]) / sd
        density = np.exp(-0.5 * x * x) @ self.w / (sd * math.sqrt(2.0 * math.pi))
        return _Grid(t, s, density * simpson * h / 3.0, self.drift)


def _fractions(info_fractions: Sequence[float]) -> np.ndarray:
    t = np.asarray(info_fractions, dtype=float)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError("need at least one information fraction")
    if t[0] <= 0 or np.any(np.diff(t) <= 0):
        raise ValueError(f"information fractions must be positive and strictly increasing, got {t.tolist()}")
    return t


def _next(t: np.ndarray, k: int) -> float | None:
    return float(t[k + 1]) if k + 1 < len(t) else None


def _check(alpha: float, kind: str) -> None:
    if kind not in SPENDING_KINDS:
        raise ValueError(f"spending must be one of {', '.join(SPENDING_KINDS)}, got {kind!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha:g}")


def _check_design(effect: float, alpha: float, power: float, ratio: float) -> None:
    if effect == 0:
        raise ValueError("the effect to detect must not be 0")
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha:g} and {power:g}")
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio:g}")


def _z_sum(alpha: float, power: float) -> float:
    return float(stats.norm.isf(alpha / 2.0) + stats.norm.isf(1.0 - power))


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)  # 100.0000000001 is 100, not 101
