"""Before launch: how many payments, cards and days an A/B test needs (``fraud experiment plan``).

The base value of the primary metric and its variance come from observed data: the payments and
outcomes of the current policy (a decision log) and the fraud labels of a simulator-shaped data
directory. Cards are the unit of randomisation, so one card's payments are correlated: every
metric is a ratio of per-card sums and its variance is the delta-method one over cards
(``stats.ratio_metric_variance``), never the payment-level one.

Metrics (docs/experiments.md, "Metrics: primary and guardrails"); "stopped" is flagged or blocked
(a flagged payment waits for a reviewer, who is assumed to catch its fraud, as in
``retrain.evaluate.money_outcome``):

- ``fraud_loss_rate``: fraud money approved per payment (major units; a mean metric);
- ``false_positive_rate``: legitimate payments stopped / legitimate payments;
- ``fraud_recall``: fraud payments stopped / fraud payments;
- ``approval_rate``: payments approved / payments.

A payment is fraud when its resolved label says so (``schema.resolve_labels`` over every label in
the file, whenever it became known; unlabelled = legitimate), or, asked for, the simulator's truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from experiments import stats
from experiments.config import CONTROL_ARM, Arm, Experiment, RampStep
from schema import Decision, GroundTruth, Label, Outcome, Transaction, resolve_labels

METRICS = ("fraud_loss_rate", "false_positive_rate", "fraud_recall", "approval_rate")
PROPORTIONS = ("false_positive_rate", "fraud_recall", "approval_rate")
UNITS = {
    "fraud_loss_rate": "payments",
    "false_positive_rate": "legitimate payments",
    "fraud_recall": "fraud payments",
    "approval_rate": "payments",
}
DAY_S = 86_400.0
MIN_CARDS = 20  # cards with a denominator below which a per-card variance means little


class PlanError(ValueError):
    """A plan that cannot be computed from what was given; ``option`` names the input to change."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass(frozen=True)
class BaseRates:
    """What the data say about the primary metric under the current policy."""

    metric: str
    value: float  # the control arm's expected value
    variance: float  # per unit of the denominator, clustered by card: n units give variance / n
    naive_variance: float  # the same as if payments were independent (for proportions p (1 - p))
    units_per_payment: float  # denominator units per payment (legitimate share, fraud share or 1)
    payments: int | None
    cards: int | None
    days: float | None
    source: str  # where the value came from, in words
    # Days from the data's start to each card's first payment, sorted: how many cards a test of a
    # given length meets (a card's payments keep coming, so cards grow slower than payments).
    first_seen_days: np.ndarray | None = field(default=None, repr=False, compare=False)

    def cards_within(self, days: float) -> int | None:
        """Distinct cards paying in the first ``days`` of the data (all of them past its end)."""
        if self.first_seen_days is None:
            return None
        return int(np.searchsorted(self.first_seen_days, days, side="right"))

    @property
    def design_effect(self) -> float:
        return self.variance / self.naive_variance if self.naive_variance > 0 else 1.0

    @property
    def payments_per_card(self) -> float | None:
        return self.payments / self.cards if self.payments and self.cards else None

    @property
    def daily_payments(self) -> float | None:
        return self.payments / self.days if self.payments and self.days else None


@dataclass(frozen=True)
class Plan:
    """The sample size and duration of one A/B test, with everything it was computed from."""

    metric: str
    unit: str
    base_value: float
    effect_relative: float  # signed: the change detected, relative to the base value
    effect_absolute: float
    alpha: float
    power: float
    looks: int
    spending: str
    inflation: float  # maximum sequential sample / fixed sample
    treatment: str
    share_treatment: float  # of all cards, at the step the test holds at
    share_control: float
    fixed_payments: tuple[int, int]  # (control, treatment)
    sequential_payments: tuple[int, int]  # maximum, if no look crosses
    cards: tuple[int, int] | None  # (control, treatment) paying within the sequential sample's days
    daily_payments: float
    fixed_days: float
    sequential_days: float
    schedule: list[tuple[float, float | None]]  # (treatments' traffic, days; None: until done)
    base: BaseRates
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["base"]["design_effect"] = self.base.design_effect
        return out


def observed_rates(
    metric: str,
    decisions: Sequence[Decision],
    labels: Iterable[Label],
    truth: Iterable[GroundTruth] | None = None,
) -> BaseRates:
    """The metric's base value and per-card variance from the current policy's decisions."""
    if not decisions:
        raise PlanError("--decisions", "the decision log has no decisions")
    fraud_ids = _fraud_ids(labels, truth)
    cards = np.unique([d.transaction.card_id for d in decisions], return_inverse=True)[1]
    stopped = np.array([d.outcome is not Outcome.APPROVE for d in decisions])
    fraud = np.array([d.transaction_id in fraud_ids for d in decisions])
    amount = np.array([d.transaction.amount_minor / 100.0 for d in decisions])
    num, den = _per_payment(metric, stopped, fraud, amount)
    times = np.array([d.transaction.event_ts for d in decisions])
    return _rates(metric, num, den, cards, times, _source(truth, "decisions"))


def labelled_rates(
    metric: str, base_rate: float, transactions: Sequence[Transaction] | None, labels: Iterable[Label] = ()
) -> BaseRates:
    """A base value given by hand; the data (if any) give the traffic and the fraud share.

    Without a decision log nothing says which payments the policy stopped, so the per-card
    variance is unknown: payments are taken as independent (design effect 1).
    """
    if metric == "fraud_loss_rate":
        raise PlanError("--decisions", "fraud_loss_rate is money per payment: its variance needs the decision log")
    if metric in PROPORTIONS and not 0.0 < base_rate < 1.0:
        raise PlanError("--base-rate", f"a rate in (0, 1), got {base_rate:g}")
    payments = cards = days = first_seen = None
    share = 1.0
    if transactions:
        times = np.array([t.event_ts for t in transactions])
        ids = np.unique([t.card_id for t in transactions], return_inverse=True)[1]
        payments, cards, days = len(transactions), int(ids.max()) + 1, _span_days(times)
        first_seen = _first_seen(ids, times)
        fraud_ids = _fraud_ids(labels, None)
        fraud = sum(t.transaction_id in fraud_ids for t in transactions) / payments
        share = {"false_positive_rate": 1.0 - fraud, "fraud_recall": fraud}.get(metric, 1.0)
        if share == 0.0:
            raise PlanError("--data", "no payment in the data is labelled fraud")
    elif metric == "fraud_recall":
        raise PlanError("--data", "fraud_recall needs the data's fraud share of payments")
    variance = base_rate * (1.0 - base_rate)
    return BaseRates(
        metric, base_rate, variance, variance, share, payments, cards, days, "--base-rate, given", first_seen
    )


def plan_experiment(
    base: BaseRates,
    experiment: Experiment | None = None,
    *,
    effect: float | None = None,
    alpha: float | None = None,
    power: float | None = None,
    looks: int | None = None,
    spending: str | None = None,
    share: float | None = None,
    daily_payments: float | None = None,
) -> Plan:
    """Payments, cards and days for the experiment's primary metric; keyword overrides win."""
    exp = experiment or default_experiment(base.metric)
    seq = exp.sequential
    effect = exp.minimum_effect if effect is None else effect
    alpha, power = seq.alpha if alpha is None else alpha, seq.power if power is None else power
    looks, spending = seq.looks if looks is None else looks, seq.spending if spending is None else spending
    _check_inputs(effect, alpha, power, looks, spending, share)
    daily = daily_payments if daily_payments is not None else base.daily_payments
    if not daily or daily <= 0:
        raise PlanError("--daily-payments", "give the payments a day (no data to infer it from)")

    schedule = _schedule(exp, share)
    treatment = _slowest_treatment(exp)
    holding = exp.shares_at(schedule[-1][0])
    ratio = holding[treatment] / holding[CONTROL_ARM]  # n_t / n_c at the step the test holds at
    signed, notes = _direction(base, effect)
    fixed = _fixed_units(base, signed, alpha, power, ratio)
    inflation = stats.sequential_inflation(looks, alpha, power, spending)
    fixed_pay = _payments(fixed, base.units_per_payment)
    seq_pay = _payments((fixed[0] * inflation, fixed[1] * inflation), base.units_per_payment)
    seq_days = _days_needed(exp, schedule, treatment, seq_pay, daily)
    seen = base.cards_within(seq_days)
    if base.design_effect == 1.0 and base.metric in PROPORTIONS:
        notes.append("payments taken as independent (no decision log: per-card variance unknown)")
    return Plan(
        metric=base.metric,
        unit=UNITS[base.metric],
        base_value=base.value,
        effect_relative=signed,
        effect_absolute=base.value * signed,
        alpha=alpha,
        power=power,
        looks=looks,
        spending=spending,
        inflation=inflation,
        treatment=treatment,
        share_treatment=holding[treatment],
        share_control=holding[CONTROL_ARM],
        fixed_payments=fixed_pay,
        sequential_payments=seq_pay,
        cards=None if seen is None else (round(seen * holding[CONTROL_ARM]), round(seen * holding[treatment])),
        daily_payments=daily,
        fixed_days=_days_needed(exp, schedule, treatment, fixed_pay, daily),
        sequential_days=seq_days,
        schedule=schedule,
        base=base,
        notes=notes,
    )


def default_experiment(metric: str) -> Experiment:
    """Control and one treatment, the declaration's defaults otherwise (ramp 1% → 10% → 50%)."""
    return Experiment(name="plan", arms=(Arm(name=CONTROL_ARM), Arm(name="treatment")), primary_metric=metric)


# --- base rates -----------------------------------------------------------------------------


def _fraud_ids(labels: Iterable[Label], truth: Iterable[GroundTruth] | None) -> set[str]:
    if truth is not None:
        return {g.transaction_id for g in truth if g.is_fraud}
    return {tx for tx, is_fraud in resolve_labels(labels).items() if is_fraud}


def _source(truth: object, what: str) -> str:
    fraud = "the simulator's ground truth" if truth is not None else "the labels (every one in the file)"
    return f"{what}; fraud by {fraud}"


def _per_payment(
    metric: str, stopped: np.ndarray, fraud: np.ndarray, amount: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) of the metric for each payment."""
    ones = np.ones(len(stopped))
    if metric == "fraud_loss_rate":
        return np.where(fraud & ~stopped, amount, 0.0), ones
    if metric == "false_positive_rate":
        return (stopped & ~fraud).astype(float), (~fraud).astype(float)
    if metric == "fraud_recall":
        return (stopped & fraud).astype(float), fraud.astype(float)
    if metric == "approval_rate":
        return (~stopped).astype(float), ones
    raise PlanError("--metric", f"one of {', '.join(METRICS)}, got {metric!r}")


def _rates(
    metric: str, num: np.ndarray, den: np.ndarray, cards: np.ndarray, times: np.ndarray, source: str
) -> BaseRates:
    if den.sum() == 0:
        raise PlanError("--data", f"no {UNITS[metric]} in the data: {metric} is undefined")
    y, n = np.bincount(cards, num), np.bincount(cards, den)
    value = float(num.sum() / den.sum())
    if value == 0.0:
        raise PlanError("--data", f"{metric} is 0 in the data: a relative effect on 0 is 0")
    contributing = int((n > 0).sum())
    if contributing < MIN_CARDS:
        raise PlanError(
            "--data", f"only {contributing} cards have {UNITS[metric]}: too few for a per-card variance (< {MIN_CARDS})"
        )
    variance = stats.ratio_metric_variance(y, n)
    if variance <= 0:
        raise PlanError("--data", f"{metric} does not vary between cards in the data: no variance to plan with")
    naive = value * (1.0 - value) if metric in PROPORTIONS else float(num[den > 0].var(ddof=1))
    first_seen = _first_seen(cards, times)
    units = float(den.mean())
    return BaseRates(metric, value, variance, naive, units, len(num), len(y), _span_days(times), source, first_seen)


def _first_seen(cards: np.ndarray, times: np.ndarray) -> np.ndarray:
    first = np.full(int(cards.max()) + 1, np.inf)
    np.minimum.at(first, cards, times)
    return np.sort((first - times.min()) / DAY_S)


def _span_days(times: Sequence[float]) -> float:
    return max((max(times) - min(times)) / DAY_S, 1.0 / 24.0)


# --- sample size and duration ---------------------------------------------------------------


def _check_inputs(effect: float, alpha: float, power: float, looks: int, spending: str, share: float | None) -> None:
    if not effect > 0:
        raise PlanError("--effect", f"a relative change > 0 (0.2 = 20%), got {effect:g}")
    if not 0.0 < alpha < 0.5:
        raise PlanError("--alpha", f"in (0, 0.5), got {alpha:g}")
    if not 0.0 < power < 1.0:
        raise PlanError("--power", f"in (0, 1), got {power:g}")
    if not 1 <= looks <= 100:
        raise PlanError("--looks", f"1 to 100, got {looks}")
    if spending not in stats.SPENDING_KINDS:
        raise PlanError("--spending", f"one of {', '.join(stats.SPENDING_KINDS)}, got {spending!r}")
    if share is not None and not 0.0 < share < 1.0:
        raise PlanError("--share", f"the treatments' share of traffic, in (0, 1), got {share:g}")


def _direction(base: BaseRates, effect: float) -> tuple[float, list[str]]:
    """The signed relative change planned for: an increase, unless a rate would pass 1."""
    if base.metric in PROPORTIONS and base.value * (1.0 + effect) >= 1.0:
        if effect >= 1.0:
            raise PlanError("--effect", f"{base.metric} is {base.value:.4g}: a change of {effect:.0%} leaves [0, 1]")
        return -effect, [f"planned for a decrease: {base.metric} {base.value:.4g} cannot rise by {effect:.0%}"]
    return effect, []


def _fixed_units(base: BaseRates, effect: float, alpha: float, power: float, ratio: float) -> tuple[float, float]:
    """(control, treatment) denominator units for a fixed-sample test, clustering included."""
    if base.metric in PROPORTIONS:
        n_c, n_t = stats.sample_size_proportions(base.value, effect, alpha, power, ratio)
        return n_c * base.design_effect, n_t * base.design_effect
    return stats.sample_size_means(base.value, math.sqrt(base.variance), effect, alpha, power, ratio)


def _payments(units: tuple[float, float], units_per_payment: float) -> tuple[int, int]:
    return math.ceil(units[0] / units_per_payment - 1e-9), math.ceil(units[1] / units_per_payment - 1e-9)


def _schedule(exp: Experiment, share: float | None) -> list[tuple[float, float | None]]:
    """The ramp steps the test runs through, (traffic, days), the last one held until done.

    A step of traffic 1.0 is the launch, when control has no cards left: it is no part of the test.
    ``share`` replaces the step held at; steps at or above it are dropped.
    """
    steps: list[RampStep] = [s for s in exp.ramp if s.traffic < (1.0 if share is None else share)]
    hold = share if share is not None else (steps.pop().traffic if steps else None)
    if hold is None:
        raise PlanError("--share", "the ramp has no step before launch (1.0): give the treatments' share")
    return [(s.traffic, s.min_days) for s in steps] + [(hold, None)]


def _slowest_treatment(exp: Experiment) -> str:
    weights = exp.treatment_weights()
    return min(weights, key=weights.__getitem__)


def _days_needed(
    exp: Experiment,
    schedule: list[tuple[float, float | None]],
    treatment: str,
    needed: tuple[int, int],
    daily: float,
) -> float:
    """Days until control and the treatment both have their payments: a ramp step of traffic f
    held d days gives an arm its share at f times the daily payments times d."""
    return max(_arm_days(exp, schedule, arm, n, daily) for arm, n in zip((CONTROL_ARM, treatment), needed, strict=True))


def _arm_days(exp: Experiment, schedule: list[tuple[float, float | None]], arm: str, n: int, daily: float) -> float:
    elapsed, have = 0.0, 0.0
    for traffic, days in schedule:
        rate = exp.shares_at(traffic)[arm] * daily
        if days is None or have + rate * days >= n:
            return elapsed + (n - have) / rate
        elapsed, have = elapsed + days, have + rate * days
    raise AssertionError("the last step is held until done")


def describe(plan: Plan) -> Mapping[str, str]:
    """The plan's setup in words, for the command's printout."""
    b = plan.base
    return {
        "metric": f"{plan.metric} (per {plan.unit})",
        "base value": _value(plan.metric, plan.base_value) + f"  [{b.source}]",
        "effect": f"{plan.effect_relative:+.1%} relative = {_value(plan.metric, plan.effect_absolute, signed=True)}",
        "test": f"two-sided alpha {plan.alpha:g}, power {plan.power:g}, {plan.looks} looks, {plan.spending} spending",
        "variance": f"per-card (delta method): design effect {b.design_effect:.2f} over independent payments",
        "traffic": f"{plan.daily_payments:,.0f} payments a day"
        + ("" if b.daily_payments is None else f" (observed over {b.days:.1f} days)"),
        "ramp": " → ".join(f"{t:.0%}" + (f" {d:g}d" if d is not None else " held") for t, d in plan.schedule),
        "arms": f"{plan.treatment} {plan.share_treatment:.1%} of cards, control {plan.share_control:.1%}",
    }


def _value(metric: str, value: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if metric == "fraud_loss_rate":
        return f"{value:{sign}.4f} money per payment"
    return f"{value:{sign}.4%}"
