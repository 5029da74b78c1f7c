"""The live monitor: decisions and labels in, drift windows, daily performance and alerts out.

It runs on **event time**: a window closes when decisions ``lateness_s`` past its end have been
seen, so a replay of last month's log and a live tail give the same windows and the same alerts.

Alerts and what they ask for (``MonitorPolicy.retrain_on``):

- ``covariate``: a model feature's distribution moved (KL over threshold, sustained). The world
  changed; the model may cope. No retrain by default (docs/monitoring.md explains why).
- ``score``: the score's distribution moved: the model now sees the world differently enough to
  change decisions. Retrain by default.
- ``concept``: on payments reviewers have judged, the frauds found differ from the frauds the
  model's calibrated probabilities expect, by more than ``concept_z`` standard deviations over the
  trailing ``performance_days``. The relation between features and fraud moved (concept drift).
  Reviewer verdicts arrive within hours, so this is the first label-based signal; chargebacks are
  not used for it because they only ever say "fraud" (a one-sided sample). Retrain by default.
- ``performance``: realised recall over the trailing ``performance_days``, from the labels known
  so far, stayed under ``recall_floor``. The concept moved or the model decays. Retrain by default.

Retrain requests are rate-limited (at most one per ``retrain_gap_s`` of event time) and carry the
alert's reason; the retrain job reads them (``fraud retrain --if-due``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitoring.alerts import SustainedAlert
from monitoring.detector import DriftDetector, DriftPolicy, WindowDrift
from monitoring.drift import DriftReference
from monitoring.estimate import EstimatedPerformance, ScoreCalibration, estimate_performance, label_maturity
from monitoring.metrics import MonitorMetrics
from monitoring.performance import realised_performance, wilson_interval
from schema import Decision, Label, LabelSource, Outcome

DAY_S = 86_400.0
MAX_HELD_LABELS = 200_000
ALERT_KINDS = ("covariate", "score", "concept", "performance")


@dataclass(frozen=True)
class MonitorPolicy:
    window_s: float = 3600.0  # drift window length, event time
    lateness_s: float = 300.0  # how long after a window's end its late decisions are still counted
    drift: DriftPolicy = field(default_factory=DriftPolicy)
    recall_floor: float = 0.5
    min_known_fraud: int = 10  # fewer known frauds in the trailing days: no recall, no verdict
    performance_days: int = 7  # trailing days pooled for the performance alert
    performance_sustain: int = 2  # consecutive days under the floor to fire
    label_horizon_days: float = 60.0  # a payment this old has all the labels it will ever get
    concept_z: float = 3.0  # |observed - expected| frauds among reviewed payments, in standard deviations
    min_reviewed: int = 30  # fewer reviewed payments in the trailing days: no concept verdict
    retrain_on: tuple[str, ...] = ("concept", "performance")
    retrain_gap_s: float = DAY_S  # at most one retrain request per this much event time
    # Features that follow the clock: any window shorter than a day differs from the whole-day
    # training mix by construction (the night has other hours than the day), so they are compared
    # only when windows are a day or longer.
    seasonal: tuple[str, ...] = ("hour_of_day",)

    def __post_init__(self) -> None:
        unknown = set(self.retrain_on) - set(ALERT_KINDS)
        if unknown:
            raise ValueError(f"retrain_on: unknown alert kinds {sorted(unknown)}; known: {list(ALERT_KINDS)}")
        if self.window_s <= 0 or self.lateness_s < 0:
            raise ValueError("window_s must be > 0 and lateness_s >= 0")


@dataclass(frozen=True)
class DayPerformance:
    day: str  # ISO date (UTC) of the payments
    decisions: int
    stopped: int
    known_fraud: int
    labelled_stopped: int
    realised_recall: float | None
    realised_recall_interval: tuple[float, float] | None
    realised_precision: float | None  # among stopped payments that have a label
    realised_precision_interval: tuple[float, float] | None
    maturity: float | None  # expected share of the day's fraud labels already known
    estimated: EstimatedPerformance

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "estimated"}
        return {**d, "estimated": self.estimated.as_dict()}


@dataclass
class _Payments:
    """What performance needs per decision: when, stopped or not, fraud probability, label."""

    index: dict[str, int] = field(default_factory=dict)
    event_ts: list[float] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    probability: list[float] = field(default_factory=list)
    fraud_known_at: dict[int, float] = field(default_factory=dict)  # row -> when a fraud label arrived
    reviewed: dict[int, tuple[float, bool]] = field(default_factory=dict)  # row -> (verdict time, is fraud)
    legit_known: set[int] = field(default_factory=set)

    def add(self, decision: Decision, probability: float) -> bool:
        """Record a decision; False when its transaction was seen before: the first decision counts,
        as for every consumer of `decisions` (docs/architecture.md, delivery at least once)."""
        if decision.transaction_id in self.index:
            return False
        stopped = decision.outcome is not Outcome.APPROVE
        self.index[decision.transaction_id] = len(self.event_ts)
        self.event_ts.append(decision.transaction.event_ts)
        self.stopped.append(stopped)
        self.probability.append(probability)
        return True


class Monitor:
    """Feed it decisions and labels in roughly event-time order; read alerts, windows and days."""

    def __init__(
        self,
        reference: DriftReference,
        calibration: ScoreCalibration | None = None,
        policy: MonitorPolicy | None = None,
        on_retrain: Callable[[str], None] | None = None,
        metrics: MonitorMetrics | None = None,
    ) -> None:
        self.policy = policy or MonitorPolicy()
        self.detector = DriftDetector(reference, self.policy.drift)
        self.calibration = calibration or ScoreCalibration()
        self.on_retrain = on_retrain
        self.metrics = metrics
        seasonal = set(self.policy.seasonal) if self.policy.window_s < DAY_S else set()
        self.names = [n for n in reference.features if n != "score" and n not in seasonal]
        self.windows: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.late_for_drift = 0
        self.labels_unmatched = 0  # labels dropped without ever seeing their decision
        self._held: OrderedDict[str, list[Label]] = OrderedDict()
        self._open: dict[int, list[Decision]] = {}
        self._closed_up_to = -math.inf  # windows with index < this are closed
        self._watermark = -math.inf
        self._payments = _Payments()
        self._label_delays: list[tuple[float, float]] = []  # (payment time, delay) of fraud labels
        self._last_request = -math.inf
        self._last_day_judged: int | None = None
        self._first_day = 10**9
        self._next_close = -math.inf
        sustain = self.policy.drift.sustain
        self._feature_alerts = {n: SustainedAlert(n, 0.5, sustain) for n in self.names}
        self._score_alert = SustainedAlert("score", 0.5, sustain)
        self.concept_checks: list[dict[str, Any]] = []
        self._concept_alert = SustainedAlert("calibration gap", self.policy.concept_z, self.policy.performance_sustain)
        self._performance_alert = SustainedAlert(
            "realised recall", 1 - self.policy.recall_floor, self.policy.performance_sustain
        )

    # -- input -------------------------------------------------------------------------------
    def observe(self, decisions: Iterable[Decision]) -> None:
        decisions = list(decisions)
        scores = np.array([math.nan if d.score is None else d.score for d in decisions], dtype=np.float64)
        probabilities = self.calibration.probability(scores).tolist()  # one call per batch; NaN stays NaN
        for d, p in zip(decisions, probabilities, strict=True):
            ts = d.transaction.event_ts
            if not self._payments.add(d, p):
                continue  # a redelivery: counted once in drift
            for label in self._held.pop(d.transaction_id, ()):
                self._apply(self._payments.index[d.transaction_id], label)
            w = int(ts // self.policy.window_s)
            if w < self._closed_up_to:
                self.late_for_drift += 1
            elif d.score is not None:
                self._open.setdefault(w, []).append(d)
            self._first_day = min(self._first_day, int(ts // DAY_S))
            if ts > self._watermark:
                self._watermark = ts
                if ts - self.policy.lateness_s >= self._next_close:  # once per window, not per decision
                    self._advance()

    def _advance(self, final: bool = False) -> None:
        self._close_windows(math.inf if final else self._watermark - self.policy.lateness_s)
        self._judge_days(final)
        self._next_close = (int((self._watermark - self.policy.lateness_s) // self.policy.window_s) + 1) * (
            self.policy.window_s
        ) + self.policy.lateness_s

    def observe_labels(self, labels: Iterable[Label]) -> None:
        for label in labels:
            if self.metrics:
                self.metrics.count_label(label, self._payment_time(label))
            row = self._payments.index.get(label.transaction_id)
            if row is None:
                self._hold(label)
            else:
                self._apply(row, label)

    def _hold(self, label: Label) -> None:
        """Keep a label whose decision has not been seen (two topics read at once need not interleave
        in time); the oldest go first beyond ``MAX_HELD_LABELS``, e.g. chargebacks for payments
        from before the monitor's history."""
        self._held.setdefault(label.transaction_id, []).append(label)
        while len(self._held) > MAX_HELD_LABELS:
            self._held.popitem(last=False)
            self.labels_unmatched += 1

    def _apply(self, row: int, label: Label) -> None:
        pay = self._payments
        known = label.known_at.timestamp()
        if label.source is LabelSource.REVIEW:
            pay.reviewed[row] = (known, label.is_fraud)
        if label.is_fraud:
            pay.fraud_known_at[row] = min(known, pay.fraud_known_at.get(row, math.inf))
            pay.legit_known.discard(row)
            self._label_delays.append((pay.event_ts[row], known - pay.event_ts[row]))
        elif row not in pay.fraud_known_at:
            pay.legit_known.add(row)

    def flush(self) -> None:
        """End of input: close every open window and judge the last (partial) day."""
        if not math.isinf(self._watermark):
            self._advance(final=True)

    # -- drift -------------------------------------------------------------------------------
    def _close_windows(self, up_to_ts: float) -> None:
        limit = math.inf if math.isinf(up_to_ts) else int(up_to_ts // self.policy.window_s)
        for w in sorted(k for k in self._open if k < limit):
            self._close(w, self._open.pop(w))
        if not math.isinf(limit):
            self._closed_up_to = max(self._closed_up_to, limit)
        elif self.windows:
            self._closed_up_to = int(self.windows[-1]["window"]) + 1

    def _close(self, w: int, decisions: list[Decision]) -> None:
        values = {n: np.array([d.features.get(n, math.nan) for d in decisions], dtype=np.float64) for n in self.names}
        values["score"] = np.array([d.score for d in decisions], dtype=np.float64)
        stats = self.detector.window(values, [*self.names, "score"])
        start = w * self.policy.window_s
        at = _iso(start + self.policy.window_s)
        self.windows.append(
            {
                "window": w,
                "start": _iso(start),
                "n": len(decisions),
                "stats": [s.as_dict() for s in stats],
                "score_counts": self.detector.reference.features["score"].histogram(values["score"]).tolist(),
            }
        )
        for s in stats:
            alert = self._score_alert if s.feature == "score" else self._feature_alerts[s.feature]
            kind = "score" if s.feature == "score" else "covariate"
            self._observe_alert(at, kind, alert, None if s.kl is None else float(s.over), s.kl)
        if self.metrics:
            self.metrics.window_closed(stats, self._firing())

    # -- performance -------------------------------------------------------------------------
    def _judge_days(self, final: bool = False) -> None:
        """Once a day is over (event time), judge realised recall over the trailing days."""
        last = int(self._watermark // DAY_S) if final else int((self._watermark - self.policy.lateness_s) // DAY_S) - 1
        first = self._first_day if self._last_day_judged is None else self._last_day_judged + 1
        for day in range(first, last + 1):
            self._judge(day)
            self._last_day_judged = day

    def _judge(self, day: int) -> None:
        n = self.policy.performance_days
        now = (day + 1) * DAY_S
        perf = self._pooled(day - n + 1, day + 1, now=now)
        miss = None if perf.recall is None else 1 - perf.recall
        self._observe_alert(_iso(now), "performance", self._performance_alert, miss, perf.recall)
        gap = self._calibration_gap(day - n + 1, day + 1, now)
        self._observe_alert(_iso(now), "concept", self._concept_alert, None if gap is None else abs(gap), gap)
        if self.metrics:
            self.metrics.performance_judged(self.daily(now_ts=now)[-1:], self._performance_alert.firing)
            self.metrics.concept_judged(gap, self._concept_alert.firing)

    def _calibration_gap(self, first_day: int, end_day: int, now: float) -> float | None:
        """(frauds reviewers found - frauds the probabilities expect) / sd, over reviewed payments."""
        pay = self._payments
        rows = [
            (pay.probability[row], fraud)
            for row, (known, fraud) in pay.reviewed.items()
            if known <= now and first_day * DAY_S <= pay.event_ts[row] < end_day * DAY_S
        ]
        p = np.array([r[0] for r in rows], dtype=np.float64)
        keep = ~np.isnan(p)
        if keep.sum() < self.policy.min_reviewed:
            return None
        p, found = p[keep], np.array([r[1] for r in rows])[keep]
        expected, sd = p.sum(), math.sqrt(max((p * (1 - p)).sum(), 1e-9))
        z = float((found.sum() - expected) / sd)
        self.concept_checks.append(
            {"at": _iso(now), "reviewed": int(keep.sum()), "found": int(found.sum()), "expected": expected, "z": z}
        )
        return z

    def _pooled(self, first_day: int, end_day: int, now: float):
        ts, stopped, fraud_at = self._arrays()
        rows = (ts >= first_day * DAY_S) & (ts < end_day * DAY_S)
        known_fraud = fraud_at <= now
        return realised_performance(stopped[rows], known_fraud[rows], self.policy.min_known_fraud)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pay = self._payments
        fraud_at = np.full(len(pay.event_ts), math.inf)
        if pay.fraud_known_at:
            rows = np.fromiter(pay.fraud_known_at.keys(), dtype=np.int64)
            fraud_at[rows] = np.fromiter(pay.fraud_known_at.values(), dtype=np.float64)
        return np.asarray(pay.event_ts), np.asarray(pay.stopped, dtype=bool), fraud_at

    def daily(self, now_ts: float | None = None) -> list[DayPerformance]:
        """Per payment day: realised figures from the labels known at ``now_ts``, and the estimate."""
        ts, stopped, fraud_at = self._arrays()
        if not len(ts):
            return []
        now = self._watermark if now_ts is None else now_ts
        probability = np.asarray(self._payments.probability)
        legit = np.zeros(len(ts), dtype=bool)
        if self._payments.legit_known:
            legit[list(self._payments.legit_known)] = True
        maturity = self._maturity_curve(now)
        days = np.floor(ts / DAY_S).astype(np.int64)
        result = []
        for day in range(int(days.min()), int(min(days.max(), now // DAY_S)) + 1):
            rows = (days == day) & (ts <= now)
            if rows.any():
                age = now - (day + 0.5) * DAY_S
                known = fraud_at[rows] <= now
                result.append(self._day(day, stopped[rows], known, legit[rows], probability[rows], maturity(age)))
        return result

    def _day(self, day, stopped, known_fraud, legit, probability, maturity) -> DayPerformance:
        realised = realised_performance(stopped, known_fraud, self.policy.min_known_fraud)
        labelled_stopped = int((stopped & (known_fraud | legit)).sum())
        caught = int((stopped & known_fraud).sum())
        precision = caught / labelled_stopped if labelled_stopped >= self.policy.min_known_fraud else None
        scored = ~np.isnan(probability)
        return DayPerformance(
            day=_iso(day * DAY_S)[:10],
            decisions=len(stopped),
            stopped=int(stopped.sum()),
            known_fraud=realised.known_fraud,
            labelled_stopped=labelled_stopped,
            realised_recall=realised.recall,
            realised_recall_interval=realised.recall_interval,
            realised_precision=precision,
            realised_precision_interval=None if precision is None else wilson_interval(caught, labelled_stopped),
            maturity=maturity,
            estimated=estimate_performance(probability[scored], stopped[scored]),
        )

    def _maturity_curve(self, now: float) -> Callable[[float], float | None]:
        horizon = self.policy.label_horizon_days * DAY_S
        complete = [delay for paid, delay in self._label_delays if paid <= now - horizon]
        delays = np.array(complete, dtype=np.float64)

        def at(age: float) -> float | None:
            curve = label_maturity(delays, np.array([max(age, 0.0)]), horizon)
            return None if curve is None else float(curve[0])

        return at

    def _payment_time(self, label: Label) -> float | None:
        row = self._payments.index.get(label.transaction_id)
        return None if row is None else self._payments.event_ts[row]

    # -- alerts and action -------------------------------------------------------------------
    def _observe_alert(
        self, at: str, kind: str, alert: SustainedAlert, value: float | None, statistic: float | None
    ) -> None:
        change = alert.observe(value)
        if change is None:
            return
        self.alerts.append({"at": at, "kind": kind, "name": alert.name, "event": change, "value": statistic})
        if change == "fire" and kind in self.policy.retrain_on:
            self._request_retrain(at, f"{kind} alert: {alert.name} ({_num(statistic)})")

    def _request_retrain(self, at: str, reason: str) -> None:
        ts = datetime.fromisoformat(at).timestamp()
        if ts - self._last_request < self.policy.retrain_gap_s:
            self.requests.append({"at": at, "reason": reason, "status": "rate-limited"})
            return
        self._last_request = ts
        self.requests.append({"at": at, "reason": reason, "status": "sent" if self.on_retrain else "not acting"})
        if self.on_retrain:
            self.on_retrain(reason)
            if self.metrics:
                self.metrics.retrain_requested(reason.split(" alert")[0])

    def _firing(self) -> dict[tuple[str, str], bool]:
        firing = {("covariate", n): a.firing for n, a in self._feature_alerts.items()}
        return {**firing, ("score", "score"): self._score_alert.firing}

    def firing(self) -> list[str]:
        """Names of the alerts firing now, e.g. ["covariate:amount", "performance"]."""
        names = [f"{kind}:{name}" for (kind, name), on in self._firing().items() if on]
        names += ["concept"] if self._concept_alert.firing else []
        return names + (["performance"] if self._performance_alert.firing else [])

    def history(self) -> dict[str, Any]:
        """Everything the report draws, as plain JSON-able data."""
        return {
            "policy": {
                "window_s": self.policy.window_s,
                "kl_threshold": self.policy.drift.kl_threshold,
                "false_alarm_rate": self.policy.drift.false_alarm_rate,
                "sustain": self.policy.drift.sustain,
                "recall_floor": self.policy.recall_floor,
                "retrain_on": list(self.policy.retrain_on),
            },
            "windows": self.windows,
            "days": [d.as_dict() for d in self.daily()],
            "alerts": self.alerts,
            "requests": self.requests,
            "concept_checks": self.concept_checks,
            "firing": self.firing(),
            "late_for_drift": self.late_for_drift,
            "reference_score_counts": self.detector.reference.features["score"].counts.tolist(),
            "score_edges": self.detector.reference.features["score"].edges.tolist(),
        }


def latest_window(windows: Sequence[dict[str, Any]]) -> list[WindowDrift]:
    """The statistics of the newest window that had enough decisions for any (a last partial hour may not)."""
    for window in reversed(windows):
        if any(s["kl"] is not None for s in window["stats"]):
            return [WindowDrift(**s) for s in window["stats"]]
    return []


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
