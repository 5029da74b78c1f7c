"""Run a teaching scenario day by day through the system's own decision, monitoring and retraining code.

What runs is the production code with the transport taken out, so a run is deterministic and
fits in minutes on two cores:

- features: one point-in-time replay of the whole history (``streaming.feature_matrix``, the
  code the online store and the scorer share), served to the scorer's ``DecisionEngine`` by
  ``experiments.replay.ReplayedFeatures`` in place of Redis;
- decisions: ``DecisionEngine.decide_batch`` (rules, model, thresholds, precedence) with the
  champion from a real ``ModelRegistry``;
- review: flagged payments, highest score x amount first, up to a daily capacity; the verdict is
  the simulator's ground truth, known a few hours later (the stand-in analyst);
- monitoring: KL and PSI per watched feature and for the score against the serving model's
  training reference, sustained alerts, and realised recall from the labels known each day;
- retraining: ``retrain.retrain_on`` with the labels known at that moment (chargebacks that have
  arrived plus review verdicts), champion vs challenger, promotion only if better.

The live loop (Kafka, bytewax, Redis, gRPC) is what ``fraud demo`` runs; the two share every
line of feature, decision and model code.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from experiments.replay import ReplayedFeatures
from fraud.scenario.story import Story, load_story
from monitoring import DriftReference, SustainedAlert, compare, realised_performance
from retrain import ModelRegistry, NotEnoughData, RetrainPolicy, labelled_as_of, retrain_on
from rules_engine import load_rules
from schema import Decision, GroundTruth, Label, LabelSource, Outcome, Transaction
from scoring import DecisionEngine, ScorerMetrics
from simulator import simulate
from streaming import MODEL_FEATURES, WINDOWED_FEATURES, feature_matrix

DAY_S = 86400.0
Say = Callable[[str], None]


@dataclass
class DayRecord:
    day: int
    model_version: str
    payments: int
    outcomes: dict[str, int]
    fraud: int  # ground truth: what the system cannot know
    fraud_stopped: int
    true_recall: float | None
    realised_recall: float | None  # what the monitor saw at the end of the day (labels known then)
    realised_recall_interval: tuple[float, float] | None
    realised_known_fraud: int
    kl: dict[str, float]  # watched features and "score"
    psi: dict[str, float]
    caught_by: dict[str, dict[str, int]]  # fraud scenario -> {fraud, rules, model, review, missed}
    events: list[str] = field(default_factory=list)


@dataclass
class ScenarioRun:
    story: Story
    days: list[DayRecord]
    retrains: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    first_model: str
    timings_s: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """The run's key numbers (what the report leads with and the tests check)."""
        changes = [{"name": c.name, "kind": c.kind, "start_day": c.start_day} for c in self.story.simulation.changes]
        return {
            "story": self.story.name,
            "changes": changes,
            "first_model": self.first_model,
            "alerts": self.alerts,
            "retrains": self.retrains,
            "true_recall_by_day": {d.day: d.true_recall for d in self.days},
            "realised_recall_by_day": {d.day: d.realised_recall for d in self.days},
            "max_kl_by_day": {d.day: max(d.kl.values(), default=0.0) for d in self.days},
            "caught_by": _caught_by_total(self.days),
            "timings_s": self.timings_s,
        }


def run_scenario(story: Story, workdir: Path, say: Say = print) -> ScenarioRun:
    """Simulate the story's world, train on its first weeks, then decide, watch and retrain day by day."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    sim = simulate(story.simulation)
    timings["simulate"] = time.perf_counter() - started
    fraud = sim.summary()["fraud"]
    say(f"simulated {len(sim.transactions):,} payments over {story.simulation.days} days ({fraud} fraud)")
    for change in story.simulation.changes:
        say(f"  scheduled: day {change.start_day}: {change.kind} change '{change.name}'. {change.description}".rstrip())

    started = time.perf_counter()
    say("replaying point-in-time features for every payment (the online feature code, offline)...")
    ordered, matrix = feature_matrix(sim.transactions, sim.labels, progress=_every_tenth(say))
    timings["features"] = time.perf_counter() - started

    world = _World(story, workdir, ordered, matrix, sim.labels, {g.transaction_id: g for g in sim.truth}, say)
    started = time.perf_counter()
    days = world.run()
    timings["decide_watch_retrain"] = time.perf_counter() - started
    return ScenarioRun(story, days, world.retrains, world.alerts, world.first_model, timings)


class _World:
    """The day loop's state: the serving model, the label log as it grows, the alerts."""

    def __init__(
        self,
        story: Story,
        workdir: Path,
        ordered: list[Transaction],
        matrix: np.ndarray,
        chargebacks: list[Label],
        truth: dict[str, GroundTruth],
        say: Say,
    ) -> None:
        self.story, self.cfg, self.say = story, story.story, say
        self.ordered, self.matrix, self.truth = ordered, matrix, truth
        self.chargebacks = chargebacks
        self.reviews: list[Label] = []
        self.reviewed: set[str] = set()  # transaction ids of self.reviews
        self.t0 = story.simulation.start.timestamp()
        self.event_ts = np.array([t.event_ts for t in ordered])
        self.day_of = ((self.event_ts - self.t0) // DAY_S).astype(int)
        shutil.rmtree(workdir / "registry", ignore_errors=True)
        self.registry = ModelRegistry(workdir / "registry")
        self.policy = RetrainPolicy(
            label_maturity=timedelta(days=self.cfg.label_maturity_days),
            eval_window=timedelta(days=self.cfg.eval_window_days),
            fixed_thresholds=self.cfg.thresholds,
        )
        self.watched = self.cfg.watched_features or _short_window_features()
        self.retrains: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self.decided: dict[str, Decision] = {}
        self.first_model = ""

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> list[DayRecord]:
        cfg = self.cfg
        first = self._retrain(cfg.train_days - 1, "first model: the history up to the end of the training period")
        if first is None:
            raise NotEnoughData("the first model could not be trained: more days or customers, or higher fraud rates")
        self.first_model = first
        self.say(self.retrains[-1]["story"][0])
        self.engine = DecisionEngine(
            load_rules(),
            self.registry.load(first),
            ReplayedFeatures(self.ordered, self.matrix),
            cfg.thresholds,
            ScorerMetrics(),
        )
        self._reset_monitor()
        records = []
        for day in range(cfg.train_days, self.story.simulation.days):
            for change in self.story.simulation.changes:
                if change.start_day == day:
                    self.say(f"== day {day}: '{change.name}' begins ({change.kind}). {change.description}".rstrip())
            records.append(self._one_day(day))
        return records

    def _one_day(self, day: int) -> DayRecord:
        idx = np.flatnonzero(self.day_of == day)
        txns = [self.ordered[i] for i in idx]
        decisions = [d for chunk in _chunks(txns, 1000) for d in self.engine.decide_batch(chunk)]
        for d in decisions:
            self.decided[d.transaction_id] = d
        self._review(day, decisions)
        record = self._record(day, idx, decisions)
        self._watch(day, record)
        self.say(_day_line(record))
        for event in record.events:
            self.say(f"   {event}")
        return record

    # -- review -----------------------------------------------------------------------------
    def _review(self, day: int, decisions: list[Decision]) -> None:
        flagged = [d for d in decisions if d.outcome is Outcome.FLAG]
        flagged.sort(key=lambda d: -(d.score or 0.0) * d.transaction.amount_minor)
        delay = timedelta(hours=self.cfg.review_delay_hours)
        for d in flagged[: self.cfg.review_capacity_per_day]:
            self.reviewed.add(d.transaction_id)
            self.reviews.append(
                Label(
                    transaction_id=d.transaction_id,
                    is_fraud=self.truth[d.transaction_id].is_fraud,
                    source=LabelSource.REVIEW,
                    known_at=d.transaction.event_time + delay,
                    author="stand-in-analyst",
                    merchant_id=d.transaction.merchant_id,
                )
            )

    def _labels_known_at(self, ts: float) -> list[Label]:
        return [lb for lb in (*self.chargebacks, *self.reviews) if lb.known_at.timestamp() <= ts]

    # -- the day's numbers ---------------------------------------------------------------------
    def _record(self, day: int, idx: np.ndarray, decisions: list[Decision]) -> DayRecord:
        stopped = np.array([d.outcome is not Outcome.APPROVE for d in decisions], dtype=bool)
        fraud = np.array([self.truth[d.transaction_id].is_fraud for d in decisions], dtype=bool)
        scores = np.array([d.score if d.score is not None else np.nan for d in decisions])
        samples = {name: self.matrix[idx, MODEL_FEATURES.index(name)] for name in self.watched}
        drift = compare(self.reference, {**samples, "score": scores[~np.isnan(scores)]}, self.cfg.kl_threshold)
        realised = self._realised(day)
        return DayRecord(
            day=day,
            model_version=self.engine.model.version,
            payments=len(decisions),
            outcomes=dict(Counter(d.outcome.value for d in decisions)),
            fraud=int(fraud.sum()),
            fraud_stopped=int((fraud & stopped).sum()),
            true_recall=float((fraud & stopped).sum() / fraud.sum()) if fraud.any() else None,
            realised_recall=realised.recall,
            realised_recall_interval=realised.recall_interval,
            realised_known_fraud=realised.known_fraud,
            kl={r.feature: r.kl for r in drift if r.kl is not None},
            psi={r.feature: r.psi for r in drift if r.psi is not None},
            caught_by=self._caught_by(decisions),
        )

    def _realised(self, day: int):
        end = self.t0 + (day + 1) * DAY_S
        window = [
            self.decided[t.transaction_id]
            for i in np.flatnonzero((self.day_of > day - self.cfg.performance_window_days) & (self.day_of <= day))
            if (t := self.ordered[i]).transaction_id in self.decided
        ]
        # Judge the serving model on its own decisions only: after a swap, the old model's misses
        # would keep the alert firing for a window's length.
        window = [d for d in window if d.model_version == self.engine.model.version]
        known = {lb.transaction_id for lb in self._labels_known_at(end) if lb.is_fraud}
        stopped = np.array([d.outcome is not Outcome.APPROVE for d in window], dtype=bool)
        known_fraud = np.array([d.transaction_id in known for d in window], dtype=bool)
        return realised_performance(stopped, known_fraud, self.cfg.min_known_fraud)

    def _caught_by(self, decisions: list[Decision]) -> dict[str, dict[str, int]]:
        tally: dict[str, Counter] = {}
        for d in decisions:
            truth = self.truth[d.transaction_id]
            if not truth.is_fraud:
                continue
            c = tally.setdefault(truth.scenario or "unknown", Counter())
            c["fraud"] += 1
            by_rule = any(h.action is not Outcome.APPROVE for h in d.rule_hits)
            by_model = d.score is not None and d.score >= self.cfg.flag_threshold
            c["rules"] += by_rule
            c["model"] += by_model and not by_rule
            c["review"] += d.transaction_id in self.reviewed
            c["missed"] += d.outcome is Outcome.APPROVE
        return {k: dict(v) for k, v in tally.items()}

    # -- monitoring and action ---------------------------------------------------------------
    def _reset_monitor(self) -> None:
        meta = self.registry.metadata(self.engine.model.version)
        self.reference = DriftReference.from_dict(
            {k: v for k, v in meta["drift_reference"].items() if k in (*self.watched, "score")}
        )
        sustain = self.cfg.sustain_days
        self.feature_alerts = {n: SustainedAlert(n, self.cfg.kl_threshold, sustain) for n in self.watched}
        self.score_alert = SustainedAlert("score", self.cfg.kl_threshold, sustain)
        self.performance_alert = SustainedAlert("realised recall", 1 - self.cfg.recall_floor, sustain)

    def _watch(self, day: int, record: DayRecord) -> None:
        """Feed the day's statistics to the alerts, narrate what changed, and act on the policy."""
        fired: list[tuple[str, str]] = []  # (kind, why)
        self._watch_features(day, record, fired)
        score_kl = record.kl.get("score")
        what = f"KL score {_num(score_kl)} vs threshold {self.cfg.kl_threshold}"
        if self._observe(day, self.score_alert, score_kl, "score_drift", record, what) == "fire":
            fired.append(("score_drift", "the score distribution drifted"))
        recall = record.realised_recall
        miss = None if recall is None else 1 - recall
        what = f"realised recall {_num(recall)} vs floor {self.cfg.recall_floor}"
        if self._observe(day, self.performance_alert, miss, "performance", record, what) == "fire":
            fired.append(("performance", f"realised recall {recall:.2f} < {self.cfg.recall_floor}"))
        triggers = set(self.cfg.retrain_on)
        wanted = [why for kind, why in fired if kind in triggers]
        still = sorted(self._firing_kinds() & triggers)
        if not wanted and still:
            wanted = [f"{still[0]} alert still firing"]
        every = self.cfg.retrain_every_days
        if not wanted and every and day - self.retrains[-1]["day"] >= every:
            wanted = [f"scheduled, every {every} days"]
        if wanted:
            self._request_retrain(day, record, "; ".join(wanted))
        elif fired:
            kinds = ", ".join(sorted({kind for kind, _ in fired}))
            record.events.append(f"no retrain: {kinds} alone does not ask for one (retrain on: {', '.join(triggers)})")

    def _watch_features(self, day: int, record: DayRecord, fired: list[tuple[str, str]]) -> None:
        """Per-feature alerts, narrated as one line per day (a shift moves many features at once)."""
        changes = {"fire": [], "clear": []}
        for name, alert in self.feature_alerts.items():
            change = self._observe(day, alert, record.kl.get(name), "feature_drift")
            if change:
                changes[change].append(name)
        if changes["fire"]:
            top = sorted(changes["fire"], key=lambda n: -record.kl[n])
            shown = ", ".join(f"{n} {record.kl[n]:.2f}" for n in top[:4])
            more = f" and {len(top) - 4} more" if len(top) > 4 else ""
            record.events.append(
                f"ALERT feature_drift: {len(top)} features over KL {self.cfg.kl_threshold} for "
                f"{self.cfg.sustain_days} days: {shown}{more}"
            )
            fired.append(("feature_drift", f"feature drift on {top[0]}"))
        if changes["clear"]:
            record.events.append(f"cleared feature_drift on {len(changes['clear'])} features")

    def _firing_kinds(self) -> set[str]:
        kinds = {"feature_drift"} if any(a.firing for a in self.feature_alerts.values()) else set()
        kinds |= {"score_drift"} if self.score_alert.firing else set()
        return kinds | ({"performance"} if self.performance_alert.firing else set())

    def _observe(
        self,
        day: int,
        alert: SustainedAlert,
        value: float | None,
        kind: str,
        record: DayRecord | None = None,
        what: str = "",
    ) -> str | None:
        """Feed one alert; log a state change in ``alerts`` (and narrate it when ``record`` is given)."""
        change = alert.observe(value)
        if change is None:
            return None
        self.alerts.append({"day": day, "kind": kind, "name": alert.name, "event": change, "value": value})
        if record is not None and change == "fire":
            record.events.append(f"ALERT {kind}: {what}, {alert.sustain} days running")
        elif record is not None:
            record.events.append(f"cleared {kind}: {what}")
        return change

    def _request_retrain(self, day: int, record: DayRecord, reason: str) -> None:
        last = max((r["day"] for r in self.retrains), default=-(10**9))
        if day - last < self.cfg.min_days_between_retrains:
            record.events.append(f"retrain wanted ({reason}) but rate-limited: last one on day {last}")
            return
        version = self._retrain(day, reason)
        record.events.extend(self.retrains[-1]["story"])
        if version is not None and version != self.engine.model.version:
            self.engine.model = self.registry.load(version)
            self._reset_monitor()

    def _retrain(self, day: int, reason: str) -> str | None:
        """Train as of the end of ``day`` on the labels known then; the serving version after it."""
        as_of_ts = self.t0 + (day + 1) * DAY_S
        as_of = self.story.simulation.start + timedelta(days=day + 1)
        labels = self._labels_known_at(as_of_ts)
        start = int(np.searchsorted(self.event_ts, self.t0 + self.cfg.warmup_days * DAY_S))
        data = labelled_as_of(self.ordered[start:], self.matrix[start:], labels, as_of)
        entry: dict[str, Any] = {"day": day, "reason": reason, "known_labels": len(labels)}
        try:
            result = retrain_on(data, self.registry, as_of, self.policy)
        except NotEnoughData as exc:
            entry.update(
                promoted=False, verdict=str(exc), story=[f"RETRAIN requested ({reason}): not enough data: {exc}"]
            )
            self.retrains.append(entry)
            return None
        entry.update(
            challenger=result.challenger,
            promoted=result.promoted,
            verdict=result.reason,
            train_rows=result.train_rows,
            challenger_pr_auc=result.challenger_metrics["pr_auc"],
            champion_pr_auc=None if result.champion_metrics is None else result.champion_metrics["pr_auc"],
        )
        outcome = "promoted, serving from tomorrow" if result.promoted else "refused"
        entry["story"] = [f"RETRAIN requested ({reason}): {result.challenger} {outcome}: {result.reason}"]
        self.retrains.append(entry)
        return result.serving


def _short_window_features() -> tuple[str, ...]:
    """Default watched features: all but those over 7-day-plus windows, which keep filling for a
    month after any history starts (window warm-up) and would alert on that alone."""
    long = {f.name for f in WINDOWED_FEATURES if f.window.length_s >= 7 * 86400}
    long |= {"card_amount_to_mean_30d", "merchant_fraud_rate_7d", "merchant_fraud_rate_30d"}
    return tuple(n for n in MODEL_FEATURES if n not in long)


def _every_tenth(say: Say) -> Callable[[int, int], None]:
    """A replay progress callback that speaks at each tenth of the way."""
    spoken = [0]

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth > spoken[0]:
            spoken[0] = tenth
            say(f"  features: {done:,} of {total:,} payments")

    return progress


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _day_line(r: DayRecord) -> str:
    o = r.outcomes
    recall = "-" if r.realised_recall is None else f"{r.realised_recall:.2f}"
    true = "-" if r.true_recall is None else f"{r.true_recall:.2f}"
    feature_kl = max((v for k, v in r.kl.items() if k != "score"), default=0.0)
    return (
        f"day {r.day:>3}  {r.payments:>6,} payments  flag {o.get('flag', 0):>4}  block {o.get('block', 0):>4}  "
        f"| realised recall {recall:>4} ({r.realised_known_fraud} known)  true {true:>4}  "
        f"| KL score {r.kl.get('score', 0.0):.3f}  max feature KL {feature_kl:.3f}"
        f"  | {r.model_version}"
    )


def _caught_by_total(days: list[DayRecord]) -> dict[str, dict[str, int]]:
    total: dict[str, Counter] = {}
    for d in days:
        for scenario, counts in d.caught_by.items():
            total.setdefault(scenario, Counter()).update(counts)
    return {k: dict(v) for k, v in total.items()}


def run_quietly(
    name_or_path: str | Path, workdir: Path, **simulation_overrides: object
) -> tuple[ScenarioRun, list[str]]:
    """Run a story without printing; returns the run and its narration. A module-level function, so
    stories can run in parallel worker processes (tests, notebooks)."""
    lines: list[str] = []
    run = run_scenario(load_story(name_or_path, **simulation_overrides), workdir, say=lines.append)
    return run, lines
