"""Backtest: replay history through decision policies and compare them, day by day and in total.

What runs is production code: each policy is a ``scoring.DecisionEngine`` (its rules, its model,
its thresholds, the engine's precedence) deciding every payment of the window from the same
point-in-time features (one replay, ``experiments.replay``), so a difference between two policies
is the policies' and nothing else's.

Assumptions, stated once (docs/experiments.md, "Backtest"):

- review capacity: reviewers work at most ``review_capacity_per_day`` flagged payments a day,
  highest score x amount first (ties in event order); the overflow is never reviewed and goes
  through as if approved: its fraud is missed (amount + chargeback fee) and it costs no review;
- fraud caught: blocked, or flagged and reviewed (the reviewer spots it); missed: approved, or
  flagged but in the overflow;
- cost model: ``retrain.evaluate.CostModel`` applied as ``retrain.evaluate.money_outcome`` does
  (missed fraud: amount + chargeback fee; a review: review cost; a blocked legitimate payment:
  false-block cost); money is counted in whole minor units so every sum is exact;
- fraud status: the label log (``schema.resolve_labels``; unlabelled = legitimate), which the
  historical policy shaped, or the simulator's ground truth (``truth=True``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from experiments.bootstrap import Interval, paired_bootstrap
from experiments.config import Policy
from experiments.replay import DAY_S, ReplayedFeatures, ReplayedHistory
from retrain import ModelRegistry
from retrain.evaluate import CostModel
from retrain.registry import model_thresholds
from rules_engine import load_rules
from schema import Decision, Outcome, resolve_labels
from scoring import DecisionEngine, ScorerMetrics

APPROVE, FLAG, BLOCK = 0, 1, 2
_CODE = {Outcome.APPROVE: APPROVE, Outcome.FLAG: FLAG, Outcome.BLOCK: BLOCK}
_CHUNK = 1000  # payments per decide_batch call, as a scorer's batches

# Summed per payment, then per day or card. Money columns are minor units internally.
COUNTS = (
    "payments",
    "approved",
    "flagged",
    "blocked",
    "reviewed",  # flagged and within the day's review capacity
    "review_overflow",  # flagged beyond it: not reviewed, went through
    "fraud",
    "fraud_caught",
    "fraud_missed",
    "false_blocks",  # legitimate payments blocked
    "false_flags",  # legitimate payments flagged
    "wasted_reviews",  # legitimate payments reviewed: review load spent on nothing
)
MONEY = (
    "fraud_amount",
    "fraud_caught_amount",
    "fraud_missed_amount",
    "chargeback_loss",  # missed fraud amount + chargeback fees
    "review_spend",
    "friction_spend",  # false blocks x false-block cost
    "expected_loss",  # chargeback_loss + review_spend + friction_spend
)
METRICS = COUNTS + MONEY
RATIOS = {  # name: (numerator, denominator), ratios of sums (never means of daily ratios)
    "approval_rate": ("approved", "payments"),
    "fraud_caught_rate": ("fraud_caught", "fraud"),
    "fraud_caught_money_rate": ("fraud_caught_amount", "fraud_amount"),
}
REPORTED = METRICS + tuple(RATIOS)
DEFAULT_COSTS = CostModel()

DecideProgress = Callable[[str, int, int], None]  # (policy name, payments done, total)


class BacktestError(ValueError):
    """A backtest that cannot run as asked (no payments in the window, no ground truth, ...)."""


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy as it ran: the model version ``champion`` meant, the thresholds in force."""

    name: str
    model_version: str
    flag: float
    block: float
    rules: str

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model_version, "flag": self.flag, "block": self.block, "rules": self.rules}


@dataclass(frozen=True)
class BacktestResult:
    """Per-day sums of every metric for each policy, and the differences from the first policy.

    ``per_day[name]``: (days, METRICS) in the internal units (money in minor units); the public
    views (``totals``, ``day_rows``, ``to_dict``) give money in major units.
    """

    setup: dict[str, Any]
    policies: dict[str, ResolvedPolicy]
    days: list[int]
    dates: list[str]
    per_day: dict[str, np.ndarray]
    review_capacity_per_day: float | None
    differences: dict[str, dict[str, Interval]]  # other policy -> reported metric -> interval
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        return next(iter(self.policies))

    def totals(self, name: str) -> dict[str, float]:
        return _reported(self.per_day[name].sum(0))

    def day_rows(self) -> list[dict[str, Any]]:
        """One row per day and policy, money in major units, with the day's review capacity."""
        rows = []
        for name, sums in self.per_day.items():
            for day, date, values in zip(self.days, self.dates, sums, strict=True):
                cap = self.review_capacity_per_day
                rows.append({"day": day, "date": date, "policy": name, **_reported(values), "review_capacity": cap})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": self.setup,
            "policies": {n: p.as_dict() for n, p in self.policies.items()},
            "notes": self.notes,
            "totals": {n: self.totals(n) for n in self.policies},
            "differences": {
                other: {m: iv.as_dict() for m, iv in by_metric.items()} for other, by_metric in self.differences.items()
            },
            "days": self.day_rows(),
        }

    def to_json(self) -> str:
        """Deterministic: same history, policies and seed, same bytes."""
        return json.dumps(_json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n"


def backtest(
    history: ReplayedHistory,
    policies: Mapping[str, Policy],
    registry: ModelRegistry,
    costs: CostModel = DEFAULT_COSTS,
    review_capacity_per_day: float | None = 200.0,
    from_day: int = 0,
    to_day: int | None = None,
    truth: bool = False,
    bootstrap: str = "days",
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    progress: DecideProgress | None = None,
    on_decisions: Callable[[str, list[Decision]], None] | None = None,
) -> BacktestResult:
    """Decide the payments of days [``from_day``, ``to_day``) under every policy and compare.

    The first policy is the baseline; each other one is reported as its difference from it, with
    a paired cluster bootstrap interval (``bootstrap``: ``days`` or ``cards``) at ``level``.
    ``review_capacity_per_day`` None: unlimited review. ``on_decisions(policy, chunk)`` receives
    every decision as made (a decision log: what ``fraud experiment plan --decisions`` and
    ``fraud experiment evaluate`` read).
    """
    if not policies:
        raise BacktestError("no policies to backtest")
    if bootstrap not in ("days", "cards"):
        raise BacktestError(f"bootstrap over days or cards, not {bootstrap!r}")
    day_of = history.day_index()
    last = int(day_of[-1]) + 1 if len(day_of) else 0
    to_day = last if to_day is None else min(to_day, last)
    rows = np.flatnonzero((day_of >= from_day) & (day_of < to_day))
    if len(rows) == 0:
        raise BacktestError(f"no payments in days [{from_day}, {to_day}); the history has days [0, {last})")
    txns = [history.ordered[i] for i in rows]
    fraud, source_note = _fraud_status(history, txns, truth)
    amount = np.array([t.amount_minor for t in txns], dtype=np.int64)
    day = day_of[rows] - from_day
    n_days = to_day - from_day
    cost_minor = _minor_costs(costs)

    resolved: dict[str, ResolvedPolicy] = {}
    per_row: dict[str, dict[str, np.ndarray]] = {}
    features = ReplayedFeatures(history.ordered, history.matrix)
    for name, policy in policies.items():
        engine, resolved[name] = _engine(name, policy, registry, features)
        outcome, score = _decide(engine, txns, name, progress, on_decisions)
        reviewed = review_mask(outcome, score * amount, day, review_capacity_per_day)
        per_row[name] = payment_metrics(outcome, reviewed, fraud, amount, cost_minor)

    per_day = {name: group_sums(m, day, n_days) for name, m in per_row.items()}
    groups, n_groups = (day, n_days) if bootstrap == "days" else _card_groups(txns)
    clusters = {name: group_sums(m, groups, n_groups) for name, m in per_row.items()}
    baseline = next(iter(policies))
    differences = {
        other: _differences(clusters[baseline], clusters[other], resamples, seed, level) for other in list(policies)[1:]
    }
    origin = _origin(history)
    setup = {
        "days": [from_day, to_day],
        "first_date": _date(origin, from_day),
        "last_date": _date(origin, to_day - 1),
        "payments": len(rows),
        "history_payments": len(history.ordered),
        "fraud_status": "truth" if truth else "labels",
        "fraud": int(fraud.sum()),
        "costs": costs.as_dict(),
        "review_capacity_per_day": review_capacity_per_day,
        "bootstrap": {"over": bootstrap, "clusters": n_groups, "resamples": resamples, "seed": seed, "level": level},
    }
    return BacktestResult(
        setup=setup,
        policies=resolved,
        days=list(range(from_day, to_day)),
        dates=[_date(origin, d) for d in range(from_day, to_day)],
        per_day=per_day,
        review_capacity_per_day=review_capacity_per_day,
        differences=differences,
        notes=[source_note, _capacity_note(review_capacity_per_day), _cost_note(costs), _bootstrap_note(bootstrap)],
    )


# -- the pieces, each testable alone -----------------------------------------------------------


def review_mask(
    outcome: np.ndarray, priority: np.ndarray, day: np.ndarray, capacity_per_day: float | None
) -> np.ndarray:
    """Which flagged payments get reviewed: per day, the ``capacity_per_day`` (rounded down) with
    the highest ``priority``, ties in row order. None: all of them."""
    flagged = outcome == FLAG
    if capacity_per_day is None:
        return flagged
    idx = np.flatnonzero(flagged)
    # Sort flagged rows by day, then priority descending, then row (lexsort: last key first).
    order = idx[np.lexsort((idx, -priority[idx], day[idx]))]
    days_sorted = day[order]
    first_of_day = np.searchsorted(days_sorted, days_sorted, side="left")
    rank = np.arange(len(order)) - first_of_day
    reviewed = np.zeros(len(outcome), dtype=bool)
    reviewed[order[rank < int(np.floor(capacity_per_day))]] = True
    return reviewed


def payment_metrics(
    outcome: np.ndarray, reviewed: np.ndarray, fraud: np.ndarray, amount_minor: np.ndarray, cost_minor: dict[str, int]
) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` per payment (money in minor units), ready to be summed."""
    flagged, blocked = outcome == FLAG, outcome == BLOCK
    caught = fraud & (blocked | reviewed)
    missed = fraud & ~caught
    legit = ~fraud
    m = {
        "payments": np.ones(len(outcome), dtype=np.int64),
        "approved": outcome == APPROVE,
        "flagged": flagged,
        "blocked": blocked,
        "reviewed": reviewed,
        "review_overflow": flagged & ~reviewed,
        "fraud": fraud,
        "fraud_caught": caught,
        "fraud_missed": missed,
        "false_blocks": legit & blocked,
        "false_flags": legit & flagged,
        "wasted_reviews": legit & reviewed,
        "fraud_amount": amount_minor * fraud,
        "fraud_caught_amount": amount_minor * caught,
        "fraud_missed_amount": amount_minor * missed,
        "chargeback_loss": (amount_minor + cost_minor["chargeback_fee"]) * missed,
        "review_spend": cost_minor["review_cost"] * reviewed.astype(np.int64),
        "friction_spend": cost_minor["false_block_cost"] * (legit & blocked).astype(np.int64),
    }
    m["expected_loss"] = m["chargeback_loss"] + m["review_spend"] + m["friction_spend"]
    return m


def group_sums(metrics: dict[str, np.ndarray], group: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, METRICS) sums. float64 holds these integers exactly (below 2**53), so any
    summation order gives the same bits: totals equal the sum of the days, exactly."""
    return np.stack(
        [np.bincount(group, weights=metrics[name].astype(np.float64), minlength=n_groups) for name in METRICS],
        axis=1,
    )


def with_ratios(sums: np.ndarray) -> np.ndarray:
    """(rows, METRICS) sums -> (rows, REPORTED): the sums and the ratios of ``RATIOS`` (NaN when
    the denominator is 0)."""
    col = {name: i for i, name in enumerate(METRICS)}
    ratios = []
    for num, den in RATIOS.values():
        n, d = sums[:, col[num]], sums[:, col[den]]
        ratios.append(np.divide(n, d, out=np.full_like(n, np.nan), where=d > 0))
    return np.column_stack([sums, *ratios])


# -- helpers ------------------------------------------------------------------------------------


def policy_engine(policy: Policy, registry: ModelRegistry, features: ReplayedFeatures) -> DecisionEngine:
    """The production decision engine of ``policy`` over offline features: what a backtest and an
    off-policy candidate decide with."""
    version = registry.champion() if policy.model == "champion" else policy.model
    model = registry.load(version)  # ModelLoadError names the version and the registry
    thresholds = policy.thresholds(model_thresholds(model.metadata))
    # Reasons (TreeSHAP) change no outcome: leave them out, they would only cost time.
    return DecisionEngine(load_rules(policy.rules), model, features, thresholds, ScorerMetrics(), explain_inline=False)


def _engine(
    name: str, policy: Policy, registry: ModelRegistry, features: ReplayedFeatures
) -> tuple[DecisionEngine, ResolvedPolicy]:
    engine = policy_engine(policy, registry, features)
    t = engine.thresholds
    rules_name = str(policy.rules) if policy.rules else "default_rules.yaml (shipped)"
    return engine, ResolvedPolicy(name, engine.model.version, t.flag, t.block, rules_name)


def _decide(
    engine: DecisionEngine,
    txns: list,
    name: str,
    progress: DecideProgress | None,
    on_decisions: Callable[[str, list[Decision]], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    outcome = np.empty(len(txns), dtype=np.int8)
    score = np.empty(len(txns), dtype=np.float64)
    for start in range(0, len(txns), _CHUNK):
        decided = engine.decide_batch(txns[start : start + _CHUNK])
        if on_decisions is not None:
            on_decisions(name, decided)
        for i, d in enumerate(decided, start):
            if d.degraded_reason:  # the engine degrades rather than fail a payment; a backtest must not
                raise BacktestError(f"policy {name}: payment {d.transaction_id} decided degraded: {d.degraded_reason}")
            outcome[i], score[i] = _CODE[d.outcome], d.score
        if progress:
            progress(name, min(start + _CHUNK, len(txns)), len(txns))
    return outcome, score


def _fraud_status(history: ReplayedHistory, txns: list, truth: bool) -> tuple[np.ndarray, str]:
    if truth:
        if history.truth is None:
            raise BacktestError("no ground truth in this history (only simulated histories have a truth file)")
        missing = [t.transaction_id for t in txns if t.transaction_id not in history.truth]
        if missing:
            raise BacktestError(f"{len(missing)} payments have no ground truth, e.g. {missing[0]}")
        fraud = np.array([history.truth[t.transaction_id].is_fraud for t in txns], dtype=bool)
        return fraud, "Fraud status: the simulator's ground truth (complete, unlike any real label log)."
    verdict = resolve_labels(history.labels)
    fraud = np.array([verdict.get(t.transaction_id, False) for t in txns], dtype=bool)
    return fraud, (
        "Fraud status: the label log (a payment is fraud if its labels resolve to fraud; unlabelled = "
        "legitimate). Those labels come from the historical policy and are incomplete: fraud it blocked "
        "never got a chargeback, so a policy that approves what used to be blocked looks better here than it "
        "is (off-policy evaluation from an exploration holdout corrects that), and the last days' fraud is "
        "undercounted until their chargebacks arrive."
    )


def _minor_costs(costs: CostModel) -> dict[str, int]:
    # Whole minor units: exact sums, and so the same bits in any order (determinism).
    return {k: int(round(v * 100)) for k, v in costs.as_dict().items()}


def _card_groups(txns: list) -> tuple[np.ndarray, int]:
    cards, group = np.unique(np.array([t.card_id for t in txns]), return_inverse=True)
    return group, len(cards)


def _differences(
    current: np.ndarray, proposed: np.ndarray, resamples: int, seed: int, level: float
) -> dict[str, Interval]:
    intervals = paired_bootstrap(current, proposed, resamples=resamples, seed=seed, level=level, statistic=with_ratios)
    return {name: _major(name, iv) for name, iv in zip(REPORTED, intervals, strict=True)}


def _reported(sums: np.ndarray) -> dict[str, float]:
    values = with_ratios(np.asarray(sums, dtype=np.float64)[None, :])[0]
    return {name: _major_value(name, float(v)) for name, v in zip(REPORTED, values, strict=True)}


def _major_value(name: str, value: float) -> float:
    if name in MONEY:
        return value / 100
    return int(value) if name in COUNTS else value


def _major(name: str, iv: Interval) -> Interval:
    if name not in MONEY:
        return iv
    return Interval(iv.estimate / 100, iv.low / 100, iv.high / 100)


def _origin(history: ReplayedHistory) -> datetime:
    first = history.ordered[0].event_ts
    return datetime.fromtimestamp(np.floor(first / DAY_S) * DAY_S, UTC)


def _date(origin: datetime, day: int) -> str:
    return (origin + timedelta(days=day)).date().isoformat()


def _json_safe(value: Any) -> Any:
    """NaN (a ratio without denominator, an interval without clusters) as null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _capacity_note(capacity: float | None) -> str:
    if capacity is None:
        return "Review capacity: unlimited (every flagged payment is reviewed)."
    return (
        f"Review capacity: {int(capacity):,} flagged payments a day, highest score x amount first; the "
        "overflow is not reviewed and goes through as approved (its fraud counts as missed, at amount + "
        "chargeback fee, and it costs no review)."
    )


def _cost_note(costs: CostModel) -> str:
    return (
        f"Expected loss = missed fraud amount + {costs.chargeback_fee:g} chargeback fee per missed fraud + "
        f"{costs.review_cost:g} per review + {costs.false_block_cost:g} per blocked legitimate payment "
        "(retrain.evaluate.CostModel). Caught fraud: blocked, or flagged and reviewed."
    )


def _bootstrap_note(unit: str) -> str:
    return (
        f"Intervals: paired percentile bootstrap over {unit} (the same resample for both policies). "
        "An interval that excludes 0 is a difference the history supports; one that spans 0 is not."
    )
