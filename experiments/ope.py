"""Off-policy evaluation: what a candidate policy would have done, estimated from the decisions the
live policy logged with its exploration holdout (docs/experiments.md, "Off-policy evaluation").

Action space: two actions, **approve** and **stop**. A flag is a stop with review (the payment
is held); a block is a stop. The metrics below only depend on whether the money moved, so the
two stops are one action here. (Exploration with ``action: review`` turns blocks into flags: a
stop either way, so it reveals reviewers' verdicts but gives no support for approving.)

Rewards are observed only for approved payments: a chargeback can only come for money that
moved. A stopped payment loses nothing, so the candidate's fraud loss and fraud approved are
sums over the rows it approves, IPS-weighted by ``1 / propensity`` of the logged action:

    IPS   = 1/n  sum_i  w_i r_i           w_i = [candidate_i == logged_i] / propensity_i
    SNIPS = sum_i w_i r_i / sum_i w_i

IPS is unbiased when every action the candidate takes had a logged probability > 0 (support);
SNIPS trades a small bias for much less variance (the weights' noise cancels in the ratio) and
also needs support for the candidate's stops (its normaliser counts them).

Legitimate payments stopped cannot be observed at all (a stopped payment never reveals its
truth), so it is derived: E[legit and candidate stops] = E[legit] - E[legit and candidate
approves], both estimated from approved rows. E[legit] is the value of "approve everything",
estimable only where approval had a chance: over payments no logged policy could approve (a
rule stop, or over the exploration cap) the legitimate share is unknowable, and it is the same
for every candidate with support (they stop those too), so the metric leaves them out: it is the
legitimate payments stopped among those approval was possible for, per payment of the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
from scipy.stats import norm

from experiments.backtest import policy_engine
from experiments.config import Policy
from experiments.exploration import EXPLORATION_RULE
from experiments.replay import ReplayedFeatures
from retrain.registry import ModelRegistry
from schema import Decision, Label, Outcome, resolve_labels
from streaming.features import MODEL_FEATURES

METRICS = ("fraud_loss", "fraud_approved_rate", "legit_stopped_rate")
METRIC_WORDS = {
    "fraud_loss": "fraud loss per payment (money of approved fraud, major units)",
    "fraud_approved_rate": "fraud approved, per payment",
    "legit_stopped_rate": "legitimate payments stopped, per payment (of those approval was possible for)",
}


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its two-sided confidence interval at ``level``."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True)
class MetricEstimates:
    ips: Estimate
    snips: Estimate
    naive: Estimate  # judged on the approved rows alone, unweighted: what a team without exploration sees


@dataclass(frozen=True)
class Support:
    """Where the candidate acts differently from the log and the log's action was certain (p = 1),
    nothing about the candidate's action was observed there."""

    unsupported_approvals: float  # share of rows: candidate approves, the log stopped for sure
    unsupported_stops: float  # share of rows: candidate stops, the log approved for sure

    @property
    def warning(self) -> str | None:
        said = []
        if self.unsupported_approvals > 0:
            said.append(
                f"the candidate approves {self.unsupported_approvals:.2%} of payments the log stopped with "
                "certainty (no exploration there): IPS and SNIPS are biased (that fraud was never observed)"
            )
        if self.unsupported_stops > 0:
            said.append(
                f"the candidate stops {self.unsupported_stops:.2%} of payments the log approved with certainty: "
                "IPS stays unbiased (a stop loses nothing), SNIPS is biased (its normaliser misses them)"
            )
        return "; ".join(said) or None


@dataclass(frozen=True)
class OffPolicyReport:
    n: int  # decisions evaluated
    approved_logged: int  # of them approved by the log (the rows with observable outcomes)
    explored: int  # of them whose logged action had propensity < 1
    excluded: int  # decisions left out: made without the model (fallback), so not re-decidable
    candidate_approval_rate: float  # exact: the candidate is re-run on every row
    effective_sample_size: float  # of the candidate's importance weights
    support: Support
    metrics: dict[str, MetricEstimates] = field(default_factory=dict)


@dataclass(frozen=True)
class Logged:
    """The log as arrays, one row per decision: the binary action, its propensity, what was
    observed where it was approved (amount, fraud), and the candidate's action."""

    logged_approve: np.ndarray  # bool
    propensity: np.ndarray  # P(logged action) under the logging policy
    amount: np.ndarray  # major units
    fraud: np.ndarray  # bool; read only where logged_approve
    candidate_approve: np.ndarray  # bool


# -- estimators --------------------------------------------------------------------------------


def importance_weights(logged_approve: np.ndarray, propensity: np.ndarray, candidate_approve: np.ndarray) -> np.ndarray:
    """[candidate's action == logged action] / P(logged action)."""
    match = np.asarray(logged_approve, dtype=bool) == np.asarray(candidate_approve, dtype=bool)
    return match / np.asarray(propensity, dtype=np.float64)


def ips(
    reward: np.ndarray,
    logged_approve: np.ndarray,
    propensity: np.ndarray,
    candidate_approve: np.ndarray,
    level: float = 0.95,
) -> Estimate:
    """Inverse propensity scoring of the candidate's mean reward per row; CI by the CLT on the
    per-row terms. ``reward``: what was observed for the logged action."""
    value, influence = _ips(importance_weights(logged_approve, propensity, candidate_approve), reward)
    return _interval(value, influence, level)


def snips(
    reward: np.ndarray,
    logged_approve: np.ndarray,
    propensity: np.ndarray,
    candidate_approve: np.ndarray,
    level: float = 0.95,
) -> Estimate:
    """Self-normalised IPS; CI by the delta method."""
    value, influence = _snips(importance_weights(logged_approve, propensity, candidate_approve), reward)
    return _interval(value, influence, level)


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2: how many on-policy rows the weighted rows are worth."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.square(w).sum()) if np.any(w) else 0.0


def _ips(w: np.ndarray, r: np.ndarray) -> tuple[float, np.ndarray]:
    """(estimate, per-row influence): the estimate's variance is var(influence) / n."""
    terms = w * np.asarray(r, dtype=np.float64)
    value = float(terms.mean())
    return value, terms - value


def _snips(w: np.ndarray, r: np.ndarray) -> tuple[float, np.ndarray]:
    mean_w = float(w.mean())
    if mean_w == 0.0:
        return float("nan"), np.zeros_like(w)
    value = float((w * r).sum() / w.sum())
    # delta method for a ratio of means: influence w_i (r_i - V) / mean(w)
    return value, w * (np.asarray(r, dtype=np.float64) - value) / mean_w


def _interval(value: float, influence: np.ndarray, level: float) -> Estimate:
    n = len(influence)
    half = float(norm.ppf(0.5 + level / 2) * influence.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return Estimate(value, value - half, value + half, level)


def _naive(values: np.ndarray, rows: np.ndarray, level: float) -> Estimate:
    """The mean over ``rows`` only, unweighted, CI by the CLT."""
    picked = np.asarray(values, dtype=np.float64)[rows]
    if len(picked) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), level)
    value = float(picked.mean())
    return _interval(value, picked - value, level)


# -- the three metrics -------------------------------------------------------------------------


def estimate(logged: Logged, level: float = 0.95) -> dict[str, MetricEstimates]:
    """IPS, SNIPS and naive estimates of each metric in ``METRICS`` for the candidate."""
    a, p, c = logged.logged_approve.astype(bool), logged.propensity.astype(np.float64), logged.candidate_approve
    c = c.astype(bool)
    fraud = logged.fraud.astype(bool) & a  # observed only where the money moved
    legit = ~logged.fraud.astype(bool) & a
    w = importance_weights(a, p, c)
    out = {}
    for name, reward in (("fraud_loss", logged.amount * fraud), ("fraud_approved_rate", fraud.astype(float))):
        out[name] = MetricEstimates(
            _interval(*_ips(w, reward), level), _interval(*_snips(w, reward), level), _naive(reward * c, a, level)
        )
    out["legit_stopped_rate"] = _legit_stopped(a, p, c, legit, w, level)
    return out


def _legit_stopped(
    a: np.ndarray, p: np.ndarray, c: np.ndarray, legit: np.ndarray, w: np.ndarray, level: float
) -> MetricEstimates:
    """E[legit, approval possible] - E[legit, candidate approves] (module docstring)."""
    reward = legit.astype(np.float64)
    # "approve wherever approval had a chance": weight 1/p on approved rows, 1 on certain stops,
    # 0 on stops that could have been approvals (that policy approves them: not observed)
    w_all = np.where(a, 1.0 / p, np.where(p >= 1.0, 1.0, 0.0))
    v1, i1 = _ips(w_all, reward)
    v2, i2 = _ips(w, reward)
    s1, j1 = _snips(w_all, reward)
    s2, j2 = _snips(w, reward)
    return MetricEstimates(
        _interval(v1 - v2, i1 - i2, level),
        _interval(s1 - s2, j1 - j2, level),
        _naive(reward * ~c, a, level),
    )


def support(logged: Logged) -> Support:
    a, p, c = logged.logged_approve.astype(bool), logged.propensity, logged.candidate_approve.astype(bool)
    certain = p >= 1.0
    return Support(
        unsupported_approvals=float(np.mean(c & ~a & certain)), unsupported_stops=float(np.mean(~c & a & certain))
    )


def true_values(candidate_approve: np.ndarray, fraud: np.ndarray, amount: np.ndarray, approvable: np.ndarray) -> dict:
    """The metrics from ground truth (a simulation knows every payment's truth): what the estimates
    aim at. ``approvable``: rows where the logging policy could have approved (propensity of
    approval > 0), the population ``legit_stopped_rate`` is defined on."""
    c, f = np.asarray(candidate_approve, dtype=bool), np.asarray(fraud, dtype=bool)
    return {
        "fraud_loss": float(np.mean(amount * (c & f))),
        "fraud_approved_rate": float(np.mean(c & f)),
        "legit_stopped_rate": float(np.mean(~c & ~f & np.asarray(approvable, dtype=bool))),
    }


def approvable(logged_approve: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """Rows where the logging policy approved with some probability: approved, or stopped with p < 1."""
    return np.asarray(logged_approve, dtype=bool) | (np.asarray(propensity) < 1.0)


def report(logged: Logged, excluded: int = 0, level: float = 0.95) -> OffPolicyReport:
    a = logged.logged_approve.astype(bool)
    w = importance_weights(a, logged.propensity, logged.candidate_approve)
    return OffPolicyReport(
        n=len(a),
        approved_logged=int(a.sum()),
        explored=int(np.sum(logged.propensity < 1.0)),
        excluded=excluded,
        candidate_approval_rate=float(np.mean(logged.candidate_approve)),
        effective_sample_size=effective_sample_size(w),
        support=support(logged),
        metrics=estimate(logged, level),
    )


# -- from logged decisions ---------------------------------------------------------------------


def evaluate_policy(
    decisions: Sequence[Decision],
    labels: Sequence[Label],
    candidate: Policy,
    registry: ModelRegistry,
    labels_as_of: datetime | None = None,
    exploration_action: Literal["approve", "review"] | None = None,
    level: float = 0.95,
) -> OffPolicyReport:
    """Estimate ``candidate`` on logged ``decisions``: its model and rules are re-run on each
    decision's recorded features, its action compared with the logged one.

    Labels: the verdict ``schema.resolve_labels`` gives from those known at ``labels_as_of`` (all
    if None); unlabelled is presumed legitimate, so the cut-off should leave the decisions time
    for their chargebacks. ``exploration_action``: the holdout's action when the log was written
    (None: read from the explored decisions' rule hits; ``approve`` if there are none). Decisions
    made without the model (fallback) are left out: they carry no features to re-decide on.
    """
    kept = model_decisions(decisions)
    logged = logged_arrays(kept, labels, labels_as_of, exploration_action)
    outcomes = candidate_outcomes(kept, candidate, registry)
    candidate_approve = np.array([o is Outcome.APPROVE for o in outcomes], dtype=bool)
    logged = Logged(logged.logged_approve, logged.propensity, logged.amount, logged.fraud, candidate_approve)
    return report(logged, len(decisions) - len(kept), level)


def model_decisions(decisions: Sequence[Decision]) -> list[Decision]:
    """The decisions an evaluation can use: made with the model (a fallback decision has no
    features to re-decide on), the first per transaction id (a retry is one payment)."""
    first: dict[str, Decision] = {}
    for d in decisions:
        if d.score is not None:
            first.setdefault(d.transaction_id, d)
    return list(first.values())


def logged_arrays(
    kept: Sequence[Decision],
    labels: Sequence[Label],
    labels_as_of: datetime | None = None,
    exploration_action: Literal["approve", "review"] | None = None,
) -> Logged:
    """The log (``model_decisions``) as arrays; the candidate is not known yet, so its column
    holds the logged action."""
    if any(d.propensity <= 0.0 for d in kept):
        raise ValueError("a decision with propensity 0 was never acted on (a shadow decision?): not a logged action")
    review = (exploration_action or _exploration_action(kept)) == "review"
    verdicts = resolve_labels(labels, labels_as_of)
    approve = np.array([d.outcome is Outcome.APPROVE for d in kept], dtype=bool)
    # review exploration turns a block into a flag: a stop either way, so the binary action was certain
    propensity = np.ones(len(kept)) if review else np.array([d.propensity for d in kept], dtype=np.float64)
    amount = np.array([d.transaction.amount_minor / 100.0 for d in kept], dtype=np.float64)
    fraud = np.array([verdicts.get(d.transaction_id, False) for d in kept], dtype=bool)
    return Logged(approve, propensity, amount, fraud, approve.copy())


def _exploration_action(decisions: Sequence[Decision]) -> Literal["approve", "review"]:
    actions = {h.action for d in decisions for h in d.rule_hits if h.rule_id == EXPLORATION_RULE}
    if len(actions) > 1:
        raise ValueError("the log mixes exploration actions (approve and review): pass exploration_action")
    return "review" if actions == {Outcome.FLAG} else "approve"


def candidate_outcomes(decisions: Sequence[Decision], candidate: Policy, registry: ModelRegistry) -> list[Outcome]:
    """What ``candidate`` decides for each logged decision, from its recorded features, through the
    production decision engine (its rules, model, thresholds and their precedence)."""
    if not decisions:
        return []
    transactions = [d.transaction for d in decisions]
    matrix = np.array([[d.features[n] for n in MODEL_FEATURES] for d in decisions], dtype=np.float64)
    engine = policy_engine(candidate, registry, ReplayedFeatures(transactions, matrix))
    return [d.outcome for d in engine.decide_batch(transactions)]


def format_report(result: OffPolicyReport) -> str:
    """The report in words and a table, as ``fraud experiment evaluate`` prints it."""
    level = next(iter(result.metrics.values())).ips.level if result.metrics else 0.95
    lines = [
        f"decisions: {result.n:,} evaluated ({result.excluded:,} made without the model left out), "
        f"{result.approved_logged:,} approved by the log, {result.explored:,} with propensity < 1",
        f"candidate approves {result.candidate_approval_rate:.2%} (exact: re-decided on every row); "
        f"effective sample size {result.effective_sample_size:,.0f}",
        f"{'metric':<22}{'IPS':>36}{'SNIPS':>36}{'naive (approved rows)':>36}   ({level:.0%} intervals)",
    ]
    for name, m in result.metrics.items():
        cells = "".join(f" {_cell(e):>35}" for e in (m.ips, m.snips, m.naive))
        lines.append(f"{name:<22}{cells}")
    lines += [f"  {name}: {METRIC_WORDS[name]}" for name in result.metrics]
    warning = result.support.warning
    lines.append(f"SUPPORT WARNING: {warning}" if warning else "support: every action of the candidate was possible")
    return "\n".join(lines)


def _cell(e: Estimate) -> str:
    return f"{e.value:.6g} [{e.low:.4g}, {e.high:.4g}]"
