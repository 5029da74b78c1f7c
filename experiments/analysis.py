"""Per-arm metrics of a running A/B test as labels mature, and the sequential verdict so far.

Everything is computed "as of" a time T from two logs: the decision log (every decision carries
its ``policy_arm``) and the label log (a label counts only once ``known_at <= T``). Two kinds of
numbers, kept apart on purpose:

- **immediate** (known the moment a payment is decided): decisions, approval, flag and block
  rates, latency, the open review cases;
- **label-based**, counted only over *mature* decisions, decided at least ``label_maturity_days``
  before T. A young decision's fraud is mostly still unreported (docs/experiments.md, "Why fraud
  A/B tests need delayed-label handling"): counting it would make the arm that grew fastest look
  cleanest. Each label metric comes with the count of mature decisions behind it.

What the label metrics can and cannot see. A blocked payment never happened: no chargeback, no
review, so blocked fraud is almost never labelled. ``fraud_caught`` (stopped and labelled fraud)
therefore counts flagged fraud a reviewer confirmed, and misses nearly all blocked fraud; an arm
that blocks more does not look better on it. ``false_positives`` is what is observable: flagged
and cleared by review; a blocked good customer leaves no label. ``fraud_losses`` (approved and
labelled fraud) is what a chargeback makes visible, so it is the most trustworthy of the three,
and the default primary metric.

The primary-metric comparison is card-clustered: cards are the unit of randomisation and one
card's payments are correlated, so the variance of each arm's ratio metric comes from per-card
sums (``experiments.stats.ratio_metric_variance``). Repeated looks use Lan-DeMets alpha spending
(``experiments.stats.sequential_test``); a look is taken when the information fraction reaches
the next of the ``looks`` planned fractions k/looks, and the planned sample is fixed at the first
look (``SequentialPlan``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from scipy import stats as sps

from experiments import stats
from experiments.config import CONTROL_ARM, HOLDOUT_ARM, Experiment
from experiments.plan import Plan
from schema import Decision, Label, LabelSource, Outcome

APPROVE, FLAG, BLOCK = 0, 1, 2
_CODE = {Outcome.APPROVE: APPROVE, Outcome.FLAG: FLAG, Outcome.BLOCK: BLOCK}

# +1: a higher value is better (the treatment "wins" with z > 0); -1: lower is better.
DIRECTION = {"fraud_loss_rate": -1, "false_positive_rate": -1, "fraud_recall": 1, "approval_rate": 1}
# The denominator each primary metric is a rate of (what "sample" means for it).
UNIT = {
    "fraud_loss_rate": "payments",
    "false_positive_rate": "payments not labelled fraud",
    "fraud_recall": "labelled frauds",
    "approval_rate": "payments",
}


@dataclass(frozen=True)
class DecisionLog:
    """A decision log as columns (one row per decision), whatever it was read from."""

    transaction_id: np.ndarray  # str
    arm: np.ndarray  # str: policy_arm
    outcome: np.ndarray  # APPROVE, FLAG, BLOCK
    amount_minor: np.ndarray  # int
    event_ts: np.ndarray  # float, Unix seconds: when the payment was decided (its event time)
    card: np.ndarray  # str
    score: np.ndarray  # float, nan where the model was not consulted
    model_version: np.ndarray  # str

    @classmethod
    def from_decisions(cls, decisions: Sequence[Decision]) -> DecisionLog:
        """Columns of ``schema.Decision`` records. The decision time is the payment's event time:
        the scorer decides within milliseconds of it, and simulated logs keep wall-clock
        ``decided_at`` stamps that mean nothing for the simulated calendar."""
        return cls(
            transaction_id=np.array([d.transaction_id for d in decisions], dtype=object),
            arm=np.array([d.policy_arm for d in decisions], dtype=object),
            outcome=np.array([_CODE[d.outcome] for d in decisions], dtype=np.int8),
            amount_minor=np.array([d.transaction.amount_minor for d in decisions], dtype=np.int64),
            event_ts=np.array([d.transaction.event_ts for d in decisions], dtype=np.float64),
            card=np.array([d.transaction.card_id for d in decisions], dtype=object),
            score=np.array([np.nan if d.score is None else d.score for d in decisions], dtype=np.float64),
            model_version=np.array([d.model_version for d in decisions], dtype=object),
        )

    def __len__(self) -> int:
        return len(self.transaction_id)

    def take(self, mask: np.ndarray) -> DecisionLog:
        return DecisionLog(**{k: v[mask] for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class LabelsAt:
    """The label log resolved as of T, aligned with a decision log's rows."""

    fraud: np.ndarray  # bool: labelled fraud by T
    cleared: np.ndarray  # bool: a review said "not fraud" by T (and no chargeback since)
    reviewed: np.ndarray  # bool: a review label, either way, known by T

    @classmethod
    def resolve(cls, log: DecisionLog, labels: Sequence[Label], at: datetime) -> LabelsAt:
        # schema.resolve_labels' rule (a chargeback overrides a review; the latest review wins),
        # restricted to the labels known at T.
        verdict: dict[str, Label] = {}
        reviewed: set[str] = set()
        for lb in labels:
            if lb.known_at > at:
                continue
            if lb.source is LabelSource.REVIEW:
                reviewed.add(lb.transaction_id)
            old = verdict.get(lb.transaction_id)
            if old is None or _outranks(lb, old):
                verdict[lb.transaction_id] = lb
        ids = log.transaction_id
        fraud = np.array([(v := verdict.get(t)) is not None and v.is_fraud for t in ids], dtype=bool)
        labelled = np.array([t in verdict for t in ids], dtype=bool)
        return cls(fraud=fraud, cleared=labelled & ~fraud, reviewed=np.array([t in reviewed for t in ids], dtype=bool))


def _outranks(new: Label, old: Label) -> bool:
    new_cb, old_cb = new.source is LabelSource.CHARGEBACK, old.source is LabelSource.CHARGEBACK
    return new_cb if new_cb != old_cb else new.known_at >= old.known_at


@dataclass(frozen=True)
class ArmMetrics:
    """One arm's numbers as of T. Money in major units."""

    arm: str
    decisions: int
    approval_rate: float | None
    flag_rate: float | None
    block_rate: float | None
    review_open: int  # flagged and not yet reviewed at T
    mature_decisions: int  # decided at least label_maturity_days before T: the label metrics' base
    labelled_fraud: int  # mature decisions labelled fraud by T (any outcome)
    fraud_caught: int  # mature, stopped (flag or block) and labelled fraud: mostly review-confirmed flags
    fraud_caught_money: float
    fraud_losses: int  # mature, approved and labelled fraud (chargebacks)
    fraud_loss_money: float
    false_positives: int  # mature, flagged and cleared by review (blocked good customers are unseen)
    expected_loss: float  # cost model over mature decisions (see ``_expected_loss``)
    expected_loss_per_1000: float | None  # per 1,000 mature decisions
    primary: float | None  # the primary metric over mature decisions (approval_rate: over all)
    primary_denominator: float  # its denominator's total (see UNIT)
    approval_var: float | None  # card-clustered per-payment variance of the approval rate
    p99_ms: float | None  # None: no latencies given
    latency_samples: int = 0


@dataclass(frozen=True)
class Comparison:
    """The primary metric, treatment vs its baseline (control; the holdout after launch)."""

    treatment: str
    baseline: str
    metric: str
    baseline_value: float | None
    treatment_value: float | None
    difference: float | None  # treatment - baseline
    relative: float | None  # difference / baseline value
    se: float | None  # card-clustered standard error of the difference
    z: float | None
    ci95: tuple[float, float] | None  # fixed-sample 95% interval of the difference (for plots)
    info_fraction: float | None  # effective sample / planned sample
    planned: float | None  # planned sample per arm, in UNIT[metric]
    look: int | None  # the sequential look taken now (1-based), None: no look due
    bound: float | None  # the critical |z| of the latest look
    alpha_spent: float | None
    crossed: bool
    verdict: str  # "better", "worse", "no difference", "undecided"
    words: str


@dataclass(frozen=True)
class SequentialPlan:
    """The sequential test's design for one comparison, fixed at its first look."""

    planned: float  # sample per arm in UNIT[metric], as an equal split (the effective sample)
    looks: tuple[tuple[float, float], ...] = ()  # (information fraction, z) of every look taken
    estimated: bool = False  # True: the blinded estimate, re-estimated until the first look

    @classmethod
    def from_plan(cls, plan: Plan) -> SequentialPlan:
        """From ``fraud experiment plan``'s plan: its maximum sequential sample, (control,
        treatment) payments, as the equal split holding the same information."""
        n_c, n_t = plan.sequential_payments
        return cls(2.0 / (1.0 / n_c + 1.0 / n_t) * plan.base.units_per_payment)


@dataclass(frozen=True)
class Snapshot:
    """Everything the controller and the report need at T."""

    at: datetime
    arms: dict[str, ArmMetrics]
    comparisons: dict[str, Comparison]  # by treatment arm
    holdout: Comparison | None  # the long-term comparison: the leading treatment vs the holdout
    review_backlog: int
    plans: dict[str, SequentialPlan] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "arms": {k: asdict(v) for k, v in self.arms.items()},
            "comparisons": {k: asdict(v) for k, v in self.comparisons.items()},
            "holdout": None if self.holdout is None else asdict(self.holdout),
            "review_backlog": self.review_backlog,
            "plans": {k: asdict(p) for k, p in self.plans.items()},
        }


# -- per-arm metrics -----------------------------------------------------------------------------


def arm_metrics(
    log: DecisionLog,
    labels: LabelsAt,
    arm: str,
    experiment: Experiment,
    at: datetime,
    latencies_ms: np.ndarray | None = None,
) -> ArmMetrics:
    """One arm's metrics as of ``at`` (``log`` and ``labels`` already limited to decisions by then)."""
    mine = log.arm == arm
    out = log.outcome[mine]
    n = int(mine.sum())
    mature = mine & (log.event_ts <= (at - timedelta(days=experiment.label_maturity_days)).timestamp())
    m = int(mature.sum())
    o, amount = log.outcome[mature], log.amount_minor[mature]
    fraud, cleared = labels.fraud[mature], labels.cleared[mature]
    caught, lost = fraud & (o != APPROVE), fraud & (o == APPROVE)
    expected = _expected_loss(o, amount, fraud, experiment)
    value, denominator = _primary_value(log, labels, mine, mature, experiment.primary_metric)
    lat = None if latencies_ms is None or len(latencies_ms) == 0 else np.asarray(latencies_ms, dtype=float)
    return ArmMetrics(
        arm=arm,
        decisions=n,
        approval_rate=_rate((out == APPROVE).sum(), n),
        flag_rate=_rate((out == FLAG).sum(), n),
        block_rate=_rate((out == BLOCK).sum(), n),
        review_open=int((mine & (log.outcome == FLAG) & ~labels.reviewed).sum()),
        mature_decisions=m,
        labelled_fraud=int(fraud.sum()),
        fraud_caught=int(caught.sum()),
        fraud_caught_money=float(amount[caught].sum()) / 100.0,
        fraud_losses=int(lost.sum()),
        fraud_loss_money=float(amount[lost].sum()) / 100.0,
        false_positives=int((cleared & (o == FLAG)).sum()),
        expected_loss=expected,
        expected_loss_per_1000=None if m == 0 else 1000.0 * expected / m,
        primary=value,
        primary_denominator=denominator,
        approval_var=_approval_var(log, mine),
        p99_ms=None if lat is None else float(np.percentile(lat, 99)),
        latency_samples=0 if lat is None else len(lat),
    )


def _approval_var(log: DecisionLog, mine: np.ndarray) -> float | None:
    """Per-payment variance of the approval rate with cards as the unit (stats.ratio_metric_variance):
    one card's payments are approved or stopped together more often than independent draws."""
    cards, index = np.unique(log.card[mine], return_inverse=True)
    if len(cards) < 2:
        return None
    approved = np.bincount(index, (log.outcome[mine] == APPROVE).astype(float), len(cards))
    return stats.ratio_metric_variance(approved, np.bincount(index, minlength=len(cards)).astype(float))


def _expected_loss(o: np.ndarray, amount: np.ndarray, fraud: np.ndarray, experiment: Experiment) -> float:
    """The cost model over what the labels show: approved labelled fraud loses its amount plus the
    chargeback fee; every flag costs a review; every block not labelled fraud counts as a false
    block. That last term is an upper bound (blocked fraud is rarely labelled), the same for both
    arms only when they block alike: read it with the block rates beside it."""
    c = experiment.costs
    lost = fraud & (o == APPROVE)
    money = amount[lost].sum() / 100.0 + c.chargeback_fee * lost.sum()
    money += c.review_cost * (o == FLAG).sum() + c.false_block_cost * ((o == BLOCK) & ~fraud).sum()
    return float(money)


def _unit_sums(log: DecisionLog, labels: LabelsAt, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-payment numerator and denominator of ``metric`` (summed per card for the variance).

    The definitions are ``experiments.plan``'s, so a plan's sample is in the same units, with
    "fraud" meaning labelled fraud by T (unlabelled = legitimate, as plan reads a label log)."""
    o, fraud = log.outcome, labels.fraud
    stopped = o != APPROVE
    if metric == "fraud_loss_rate":  # fraud money approved (major units) per payment
        return np.where(fraud & ~stopped, log.amount_minor / 100.0, 0.0), np.ones(len(o))
    if metric == "false_positive_rate":  # stopped among the payments not labelled fraud
        return (stopped & ~fraud).astype(float), (~fraud).astype(float)
    if metric == "fraud_recall":  # stopped among the labelled frauds (what labels can show)
        return (stopped & fraud).astype(float), fraud.astype(float)
    if metric == "approval_rate":
        return (~stopped).astype(float), np.ones(len(o))
    raise ValueError(f"unknown primary metric {metric!r}")


def _primary_rows(log: DecisionLog, mine: np.ndarray, mature: np.ndarray, metric: str) -> np.ndarray:
    # Approval needs no label: every decision counts at once.
    return mine if metric == "approval_rate" else mature


def _primary_value(
    log: DecisionLog, labels: LabelsAt, mine: np.ndarray, mature: np.ndarray, metric: str
) -> tuple[float | None, float]:
    y, n = _unit_sums(log, labels, metric)
    rows = _primary_rows(log, mine, mature, metric)
    total = float(n[rows].sum())
    return (float(y[rows].sum()) / total if total > 0 else None), total


def _card_sums(log: DecisionLog, labels: LabelsAt, rows: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    y, n = _unit_sums(log, labels, metric)
    cards, index = np.unique(log.card[rows], return_inverse=True)
    return np.bincount(index, y[rows], len(cards)), np.bincount(index, n[rows], len(cards))


def _rate(x: float, n: int) -> float | None:
    return float(x) / n if n else None


# -- the comparison and the sequential test --------------------------------------------------------


@dataclass(frozen=True)
class _Estimate:
    value: float
    var: float  # effective per-unit variance (stats.ratio_metric_variance)
    total: float  # denominator total


def _estimate(log: DecisionLog, labels: LabelsAt, arm: str, experiment: Experiment, at: datetime) -> _Estimate | None:
    mine = log.arm == arm
    mature = mine & (log.event_ts <= (at - timedelta(days=experiment.label_maturity_days)).timestamp())
    rows = _primary_rows(log, mine, mature, experiment.primary_metric)
    y, n = _card_sums(log, labels, rows, experiment.primary_metric)
    if len(y) < 2 or n.sum() <= 0:
        return None
    return _Estimate(float(y.sum() / n.sum()), stats.ratio_metric_variance(y, n), float(n.sum()))


def planned_sample(base: _Estimate, experiment: Experiment, alphas: float) -> float:
    """Sample per arm (in the metric's unit) to detect ``minimum_effect`` with the configured power
    at ``alphas`` two-sided, inflated for the sequential design (stats.sequential_inflation)."""
    seq = experiment.sequential
    if base.value <= 0 or base.var <= 0:
        return math.inf
    n, _ = stats.sample_size_means(base.value, math.sqrt(base.var), experiment.minimum_effect, alphas, seq.power)
    return n * _inflation(seq.looks, alphas, seq.power, seq.spending)


@functools.lru_cache(maxsize=64)
def _inflation(looks: int, alpha: float, power: float, kind: str) -> float:
    return stats.sequential_inflation(looks, alpha, power, kind)  # a root search: once per design


def compare(
    log: DecisionLog,
    labels: LabelsAt,
    treatment: str,
    baseline: str,
    experiment: Experiment,
    at: datetime,
    plan: SequentialPlan | None,
    alpha: float,
    sequential: bool = True,
) -> tuple[Comparison, SequentialPlan | None]:
    """Treatment vs baseline on the primary metric as of ``at``; a sequential look when one is due.

    The information fraction is the effective sample 2 / (1/n_b + 1/n_t) (what an equal split of
    the same information would hold) over the planned sample per arm. The plan is estimated from
    both arms pooled (blind to which arm did better) until the first look, and fixed from then on.
    """
    metric = experiment.primary_metric
    b = _estimate(log, labels, baseline, experiment, at)
    t = _estimate(log, labels, treatment, experiment, at)
    if b is None or t is None:
        why = f"not enough mature data yet for {metric} ({baseline}: {_n(b)}, {treatment}: {_n(t)} {UNIT[metric]})"
        undecided = Comparison(
            treatment,
            baseline,
            metric,
            b and b.value,
            t and t.value,
            *[None] * 6,
            plan and plan.planned,
            None,
            None,
            None,
            False,
            "undecided",
            why,
        )
        return undecided, plan
    diff, z = stats.mean_difference_z(b.value, b.var, b.total, t.value, t.var, t.total)
    se = math.sqrt(b.var / b.total + t.var / t.total)
    half = float(sps.norm.isf(0.025)) * se
    if plan is None or (plan.estimated and not plan.looks):
        plan = SequentialPlan(planned_sample(_pooled(b, t), experiment, alpha), estimated=True)
    effective = 2.0 / (1.0 / b.total + 1.0 / t.total)
    info = effective / plan.planned if math.isfinite(plan.planned) and plan.planned > 0 else 0.0
    seq = experiment.sequential
    look = None
    bound = spent = None
    crossed = False
    if sequential and _look_due(plan, info, seq.looks):
        plan = replace(plan, looks=(*plan.looks, (info, z)))
        result = stats.sequential_test([z for _, z in plan.looks], [f for f, _ in plan.looks], alpha, seq.spending)[-1]
        look, bound, spent, crossed = result.look, result.bound, result.alpha_spent, result.crossed
    elif plan.looks:
        last = stats.sequential_test([z for _, z in plan.looks], [f for f, _ in plan.looks], alpha, seq.spending)[-1]
        look, bound, spent = None, last.bound, last.alpha_spent
    verdict, words = _verdict(metric, treatment, baseline, z, info, crossed, look, bound, plan)
    relative = diff / b.value if b.value else None
    comparison = Comparison(
        treatment,
        baseline,
        metric,
        b.value,
        t.value,
        diff,
        relative,
        se,
        z,
        (diff - half, diff + half),
        info,
        plan.planned,
        look,
        bound,
        spent,
        crossed,
        verdict,
        words,
    )
    return comparison, plan


def _n(e: _Estimate | None) -> str:
    return "0" if e is None else f"{e.total:,.0f}"


def _pooled(b: _Estimate, t: _Estimate) -> _Estimate:
    total = b.total + t.total
    value = (b.value * b.total + t.value * t.total) / total
    # Within-arm variance pooled by weight, plus the between-arm part: blind to the sign of the
    # difference, so fixing the plan from it does not favour either arm.
    var = (b.var * b.total + t.var * t.total) / total
    return _Estimate(value, var, total)


def _look_due(plan: SequentialPlan, info: float, looks: int) -> bool:
    """A look at each planned fraction k/looks the information has reached; one at full
    information at most (after it the test has spent its alpha)."""
    done = len(plan.looks)
    if done and plan.looks[-1][0] >= 1.0:
        return False
    return info >= (done + 1) / looks and (not done or info > plan.looks[-1][0])


def _verdict(
    metric: str,
    treatment: str,
    baseline: str,
    z: float,
    info: float,
    crossed: bool,
    look: int | None,
    bound: float | None,
    plan: SequentialPlan,
) -> tuple[str, str]:
    better = z * DIRECTION[metric] > 0
    where = f"{metric} z = {z:+.2f}, information {info:.0%} of the plan"
    if crossed:
        verdict = "better" if better else "worse"
        return (
            verdict,
            f"{treatment} is significantly {verdict} than {baseline}: {where}, bound {bound:.2f} at look {look}",
        )
    if plan.looks and plan.looks[-1][0] >= 1.0:
        return "no difference", (
            f"no difference of the planned size between {treatment} and {baseline}: {where}, "
            f"the last look's bound {bound:.2f} not crossed"
        )
    return "undecided", f"{where}{'' if bound is None else f', bound {bound:.2f}'}: keep collecting"


# -- the snapshot ----------------------------------------------------------------------------------


def snapshot(
    log: DecisionLog,
    labels: Sequence[Label],
    experiment: Experiment,
    at: datetime,
    plans: Mapping[str, SequentialPlan] | None = None,
    latencies_ms: Mapping[str, np.ndarray] | None = None,
    review_backlog: int | None = None,
    launched: str | None = None,
    sequential: bool = True,
) -> Snapshot:
    """Every arm's metrics and every treatment's comparison with control as of ``at``.

    ``plans``: each treatment's plan and looks so far (None: none yet). ``review_backlog``: the
    open review cases (None: the flagged decisions in the log not yet reviewed at ``at``).
    ``launched``: the treatment launched, if any: it is then compared with the holdout.
    """
    log = log.take(log.event_ts <= at.timestamp())
    resolved = LabelsAt.resolve(log, labels, at)
    names = [a.name for a in experiment.arms] + ([HOLDOUT_ARM] if experiment.holdout else [])
    latencies_ms = latencies_ms or {}
    arms = {n: arm_metrics(log, resolved, n, experiment, at, latencies_ms.get(n)) for n in names}
    # Several treatments share alpha (Bonferroni): each is tested at alpha / treatments.
    alpha = experiment.sequential.alpha / len(experiment.treatments)
    plans = dict(plans or {})
    comparisons: dict[str, Comparison] = {}
    for arm in experiment.treatments:
        comparisons[arm.name], plan = compare(
            log, resolved, arm.name, CONTROL_ARM, experiment, at, plans.get(arm.name), alpha, sequential
        )
        if plan is not None:
            plans[arm.name] = plan
    holdout = None
    if experiment.holdout:
        leader = launched or _leader(comparisons, experiment)
        holdout, _ = compare(log, resolved, leader, HOLDOUT_ARM, experiment, at, None, alpha, sequential=False)
    backlog = sum(a.review_open for a in arms.values()) if review_backlog is None else review_backlog
    return Snapshot(at, arms, comparisons, holdout, backlog, plans)


def _leader(comparisons: Mapping[str, Comparison], experiment: Experiment) -> str:
    """The treatment doing best on the primary metric so far (the first one without data)."""
    sign = DIRECTION[experiment.primary_metric]
    scored = [(sign * c.z, name) for name, c in comparisons.items() if c.z is not None]
    return max(scored)[1] if scored else experiment.treatments[0].name
