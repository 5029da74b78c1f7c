"""An A/B test run offline on the simulator, day by day, through the production decision path.

The pattern is the teaching scenarios' (``fraud.scenario.runner``): point-in-time features from
one replay (``experiments.replay.ReplayedFeatures`` in place of Redis), decisions by
``scoring.DecisionEngine``. Here every payment goes through ``scoring.experiment.ExperimentRouter``,
which routes its card to an arm by the experiment's state file, exactly as a scorer does; the
controller reviews the arms once a day at midnight and changes that file (ramp, halt, conclude).

The world answers each decision as the real one would, so the labels the analysis sees depend on
what the arms decided:

- approved: the payment happened; if it was fraud, the simulator's chargeback arrives with its
  delay (or never, for the unreported share);
- flagged: held for review. A stand-in analyst works the backlog each day, highest score x amount
  first, up to ``review_capacity`` cases; the verdict (the ground truth) is known
  ``review_delay_hours`` after the review starts. Unreviewed flags stay in the backlog, which is
  the backlog the guardrail watches;
- blocked: it never happened. No chargeback, no review: its fraud is never labelled.

Money and latency: the latency of a decision is the wall time of its arm's batch (up to
``BATCH`` payments), so the p99 is what one scorer process on this machine measures.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from experiments.analysis import DecisionLog, SequentialPlan, Snapshot, snapshot
from experiments.assign import serving_arms
from experiments.config import Experiment
from experiments.controller import HOLD, Action, ExperimentController, apply
from experiments.replay import DAY_S, ReplayedFeatures
from experiments.store import ExperimentState, ExperimentStore
from retrain import ModelRegistry, NotEnoughData, RetrainPolicy, labelled_as_of, retrain_on
from rules_engine import load_rules
from schema import Decision, GroundTruth, Label, LabelSource, Outcome, Transaction, write_jsonl
from scoring import DecisionEngine, ScorerMetrics
from scoring.experiment import ExperimentRouter, arm_engine_factory
from simulator import SimulationConfig, simulate
from streaming import feature_matrix

BATCH = 100  # payments per decide call: a scorer's batch under moderate load
Say = Callable[[str], None]


@dataclass
class AbRun:
    """What a simulated A/B test produced (also written to its directory)."""

    experiment: Experiment
    model_version: str
    decisions: list[Decision]
    labels: list[Label]
    snapshots: list[dict[str, Any]]  # one a day: the snapshot, the state and the action
    final: ExperimentState | None
    days: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        actions = [s["action"] for s in self.snapshots if s["action"]["kind"] != HOLD]
        return {
            "experiment": self.experiment.name,
            "model": self.model_version,
            "decisions": len(self.decisions),
            "labels": len(self.labels),
            "status": None if self.final is None else self.final.status,
            "reason": None if self.final is None else self.final.reason,
            "actions": actions,
        }


@dataclass
class _World:
    """The world's answers so far: the label log, the review backlog, latencies by arm."""

    chargebacks: dict[str, list[Label]]  # by transaction id: what approving it lets happen
    truth: dict[str, GroundTruth]
    review_capacity: int
    review_delay: timedelta
    labels: list[Label] = field(default_factory=list)
    backlog: list[tuple[float, int, Decision]] = field(default_factory=list)  # a heap on -priority
    latencies: dict[str, list[float]] = field(default_factory=dict)
    _seq: int = 0

    def answer(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if d.outcome is Outcome.APPROVE:
                self.labels.extend(self.chargebacks.get(d.transaction_id, ()))
            elif d.outcome is Outcome.FLAG:
                priority = (d.score if d.score is not None else 1.0) * d.transaction.amount_minor
                heapq.heappush(self.backlog, (-priority, self._seq, d))
                self._seq += 1

    def review(self, day_start: datetime) -> int:
        """A day of the analyst's work on the backlog; returns the cases reviewed."""
        done = 0
        while self.backlog and done < self.review_capacity:
            _, _, d = heapq.heappop(self.backlog)
            started = max(d.transaction.event_time, day_start)
            self.labels.append(
                Label(
                    transaction_id=d.transaction_id,
                    is_fraud=self.truth[d.transaction_id].is_fraud,
                    source=LabelSource.REVIEW,
                    known_at=started + self.review_delay,
                    author="stand-in-analyst",
                    merchant_id=d.transaction.merchant_id,
                )
            )
            done += 1
        return done


def run_ab(
    experiment: Experiment,
    ordered: list[Transaction],
    matrix: np.ndarray,
    chargebacks: Sequence[Label],
    truth: dict[str, GroundTruth],
    registry: ModelRegistry,
    out: Path,
    origin: datetime,
    first_day: int,
    last_day: int,
    review_capacity: int = 200,
    review_delay_hours: float = 4.0,
    say: Say = print,
) -> AbRun:
    """Run ``experiment`` from the start of ``first_day`` to the end of ``last_day`` (days since
    ``origin``) over the replayed history; writes the state under ``out/registry`` and the logs,
    snapshots and summary under ``out/experiment``."""
    store = ExperimentStore(out / "registry")
    store.stop("a new simulated run", by="simulate")
    control = DecisionEngine(
        load_rules(), registry.load(), ReplayedFeatures(ordered, matrix), thresholds=None, metrics=ScorerMetrics()
    )
    router = ExperimentRouter(control, arm_engine_factory(registry, control), store)
    by_tx: dict[str, list[Label]] = {}
    for lb in chargebacks:
        by_tx.setdefault(lb.transaction_id, []).append(lb)
    world = _World(by_tx, truth, review_capacity, timedelta(hours=review_delay_hours))
    day_of = ((np.array([t.event_ts for t in ordered]) - origin.timestamp()) // DAY_S).astype(int)
    start = origin + timedelta(days=first_day)
    store.start(experiment, by="simulate", now=start)
    say(_opening(experiment, control.model.version, first_day, last_day))
    controller = ExperimentController()
    decisions: list[Decision] = []
    snapshots: list[dict[str, Any]] = []
    plans: dict[str, SequentialPlan] = {}
    for day in range(first_day, last_day + 1):
        router.poll()
        day_start = origin + timedelta(days=day)
        today = _decide(router, [ordered[i] for i in np.flatnonzero(day_of == day)], world)
        decisions.extend(today)
        world.answer(today)
        reviewed = world.review(day_start)
        end = day_start + timedelta(days=1)
        state = store.current()
        snap = snapshot(
            DecisionLog.from_decisions(decisions),
            world.labels,
            experiment,
            end,
            plans,
            {arm: np.array(v) for arm, v in world.latencies.items()},
            review_backlog=len(world.backlog),
            launched=None if state is None else state.winner,
        )
        plans = snap.plans
        action = controller.review(state, snap, end)
        after = apply(store, action, end, by="simulate")
        snapshots.append(_daily(day, today, reviewed, snap, state, action, after))
        say(_day_line(day, today, snap, state, action))
    run = AbRun(experiment, control.model.version, decisions, world.labels, snapshots, store.current())
    _write(run, out / "experiment")
    return run


def _decide(router: ExperimentRouter, txns: list[Transaction], world: _World) -> list[Decision]:
    """The day's payments in batches, each batch split by arm and timed per arm."""
    out: list[Decision] = []
    state = router.current.state
    for i in range(0, len(txns), BATCH):
        batch = txns[i : i + BATCH]
        arms = serving_arms([t.card_id for t in batch], state)
        decided: dict[str, Decision] = {}
        for arm in dict.fromkeys(arms.tolist()):
            part = [t for t, a in zip(batch, arms, strict=True) if a == arm]
            started = time.perf_counter()
            for d in router.decide_batch(part):
                decided[d.transaction_id] = d
            ms = (time.perf_counter() - started) * 1000.0
            world.latencies.setdefault(arm, []).extend([ms] * len(part))
        out.extend(decided[t.transaction_id] for t in batch)
    return out


def _daily(
    day: int,
    today: list[Decision],
    reviewed: int,
    snap: Snapshot,
    before: ExperimentState | None,
    action: Action,
    after: ExperimentState | None,
) -> dict[str, Any]:
    return {
        "day": day,
        "payments": len(today),
        "reviewed": reviewed,
        "status": None if before is None else before.status,
        "traffic": None if before is None else before.traffic,
        "step": None if before is None else before.step,
        "action": {"kind": action.kind, "reason": action.reason},
        "status_after": None if after is None else after.status,
        "traffic_after": None if after is None else after.traffic,
        "snapshot": snap.to_json(),
    }


def _opening(experiment: Experiment, model: str, first_day: int, last_day: int) -> str:
    arms = ", ".join(f"{a.name} ({_policy_words(a.policy)})" for a in experiment.arms)
    ramp = " -> ".join(f"{s.traffic:.0%} ({s.min_days:g}d)" for s in experiment.ramp)
    return (
        f"experiment {experiment.name}: days {first_day}-{last_day}, model {model}; arms {arms}; "
        f"ramp {ramp}; holdout {experiment.holdout:.0%}; primary {experiment.primary_metric}; "
        f"labels mature after {experiment.label_maturity_days:g} days"
    )


def _policy_words(policy) -> str:
    parts = [policy.model]
    if policy.flag is not None:
        parts.append(f"flag {policy.flag:g}")
    if policy.block is not None:
        parts.append(f"block {policy.block:g}")
    if policy.rules is not None:
        parts.append(f"rules {policy.rules.name}")
    return ", ".join(parts)


def _day_line(day: int, today: list[Decision], snap: Snapshot, state: ExperimentState | None, action: Action) -> str:
    counts: dict[str, int] = {}
    for d in today:
        counts[d.policy_arm] = counts.get(d.policy_arm, 0) + 1
    where = "-" if state is None else f"{state.status} {state.traffic:.0%}"
    arms = "  ".join(f"{name} {counts.get(name, 0):,} (appr {_pct(m.approval_rate)})" for name, m in snap.arms.items())
    tests = "  ".join(
        f"{c.treatment}: z {c.z:+.2f} info {c.info_fraction:.0%}" if c.z is not None else f"{c.treatment}: -"
        for c in snap.comparisons.values()
    )
    line = f"day {day:>3}  {len(today):>6,} payments  [{where}]  {arms}  | backlog {snap.review_backlog:,}  | {tests}"
    return f"{line}\n   {action.kind.upper()}: {action.reason}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _write(run: AbRun, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "decisions.jsonl", run.decisions)
    write_jsonl(out / "labels.jsonl", sorted(run.labels, key=lambda lb: (lb.known_at, lb.transaction_id)))
    with (out / "snapshots.jsonl").open("w") as fh:
        for s in run.snapshots:
            fh.write(json.dumps(s, sort_keys=True) + "\n")
    (out / "summary.json").write_text(json.dumps(run.summary(), indent=2, sort_keys=True))


def simulate_ab(
    experiment: Experiment,
    config: SimulationConfig,
    out: Path,
    train_days: int = 14,
    registry_dir: Path | None = None,
    review_capacity: int = 200,
    say: Say = print,
) -> AbRun:
    """Simulate a world, train the first model on its first ``train_days`` (or serve the champion
    of ``registry_dir``), then run the experiment over the remaining days."""
    if not 0 < train_days < config.days:
        raise ValueError(f"train days ({train_days}) must leave days to experiment on (of {config.days})")
    sim = simulate(config)
    say(f"simulated {len(sim.transactions):,} payments over {config.days} days ({sim.summary()['fraud']} fraud)")
    say("replaying point-in-time features for every payment (the online feature code, offline)...")
    ordered, matrix = feature_matrix(sim.transactions, sim.labels)
    if registry_dir is None:
        registry = ModelRegistry(out / "registry")
        as_of = config.start + timedelta(days=train_days)
        data = labelled_as_of(ordered, matrix, sim.labels, as_of)
        result = retrain_on(data, registry, as_of, RetrainPolicy())
        if not result.promoted:
            raise NotEnoughData(f"the first model was not promoted: {result.reason}")
        say(f"first model {result.serving}: trained on days 0-{train_days - 1} with the labels known then")
    else:
        registry = ModelRegistry(registry_dir)
        say(f"serving the champion of {registry_dir}: {registry.champion()}")
    truth = {g.transaction_id: g for g in sim.truth}
    return run_ab(
        experiment,
        ordered,
        matrix,
        sim.labels,
        truth,
        registry,
        out,
        config.start,
        train_days,
        config.days - 1,
        review_capacity=review_capacity,
        say=say,
    )
