"""What the running experiment should do next, decided from a snapshot of its arms.

``ExperimentController.review`` is a pure function of (state, snapshot, now): no I/O, no clock,
so a simulated run, a daily job and a test get the same answer from the same numbers. ``apply``
carries the answer out on an ``ExperimentStore`` (which every scorer polls).

The order of judgement, first match wins:

1. not running or launched: hold;
2. a guardrail breached by a treatment arm: **halt** at once (everyone back on control). The
   guardrails compare each treatment with its baseline (control; the holdout once the treatments
   take all the traffic), and judge only once both have ``min_decisions``: approval rate lower by
   more than ``max_approval_drop`` plus 3 card-clustered standard errors (``APPROVAL_DROP_SE``);
   decision p99 over ``max_p99_ms`` (once the arm has 100 latencies: a p99 of fewer is only the
   maximum); the review backlog over ``max_review_backlog``
   (the queue is shared: any arm's flags fill it, and halting relieves it);
3. the sequential test: a look whose |z| crossed its bound concludes the test: a treatment
   significantly **worse** on the primary metric halts it; significantly **better** concludes it
   (an operator launches; ``fraud experiment launch``). A last look at full information without a
   crossing concludes "no difference of the planned size";
4. the ramp: the next step once this one has lasted ``min_days``, every arm has
   ``min_decisions`` and every guardrail is inside (2 above). A last step of traffic 1.0 is the
   launch, taken like any other step when configured; after it the treatment vs holdout comparison
   goes on (long-term holdout) and the guardrails keep judging against the holdout;
5. otherwise hold, saying what it waits for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from experiments.analysis import ArmMetrics, Snapshot
from experiments.config import CONTROL_ARM, HOLDOUT_ARM
from experiments.store import LAUNCHED, RUNNING, ExperimentState, ExperimentStore

ADVANCE, HALT, CONCLUDE, HOLD = "advance", "halt", "conclude", "hold"
MIN_LATENCIES = 100  # a p99 over fewer samples is just the maximum
# The approval guardrail halts when the drop exceeds its limit by this many card-clustered
# standard errors: a point estimate alone halted an identical treatment on day 3 of a simulated
# run (a 2.5-point "drop" over 600 payments of 280 cards). One-sided 3 SE is a 0.13% false alarm
# per look, which a daily look keeps small over a test's weeks.
APPROVAL_DROP_SE = 3.0


@dataclass(frozen=True)
class Action:
    kind: str  # advance, halt, conclude, hold
    reason: str  # in words, for the log and the operator


@dataclass(frozen=True)
class ExperimentController:
    """The experiment's rules applied to a snapshot (see the module docstring)."""

    def review(self, state: ExperimentState | None, snapshot: Snapshot, now: datetime) -> Action:
        if state is None or state.status not in (RUNNING, LAUNCHED):
            return Action(HOLD, f"nothing to do: the experiment is {'absent' if state is None else state.status}")
        breaches = self.guardrail_breaches(state, snapshot)
        if breaches:
            return Action(HALT, "guardrail breached: " + "; ".join(breaches))
        if state.status == RUNNING:
            verdict = self._sequential(snapshot)
            if verdict is not None:
                return verdict
            return self._ramp(state, snapshot, now)
        return Action(HOLD, "launched: the treatment vs holdout comparison continues (long-term holdout)")

    def guardrail_breaches(self, state: ExperimentState, snapshot: Snapshot) -> list[str]:
        """Every guardrail a serving treatment arm is outside of, in words (empty: all inside)."""
        g = state.experiment.guardrails
        out: list[str] = []
        base_name = baseline_arm(state)
        base = snapshot.arms.get(base_name)
        for arm in serving_treatments(state):
            m = snapshot.arms.get(arm)
            if m is None:
                continue
            drop = _approval_drop(base, m, g.min_decisions)
            if drop is not None and drop[0] - APPROVAL_DROP_SE * drop[1] > g.max_approval_drop:
                out.append(
                    f"{arm} approves {m.approval_rate:.2%} vs {base_name} {base.approval_rate:.2%}: "
                    f"a drop of {drop[0]:.2%} (± {drop[1]:.2%} s.e.), beyond {g.max_approval_drop:.2%} by over "
                    f"{APPROVAL_DROP_SE:g} s.e. ({m.decisions:,} and {base.decisions:,} decisions)"
                )
            if m.p99_ms is not None and m.latency_samples >= MIN_LATENCIES and m.p99_ms > g.max_p99_ms:
                out.append(f"{arm} decision p99 {m.p99_ms:.1f} ms > {g.max_p99_ms:g} ms")
        if snapshot.review_backlog > g.max_review_backlog:
            out.append(f"review backlog {snapshot.review_backlog:,} cases > {g.max_review_backlog:,}")
        return out

    def _sequential(self, snapshot: Snapshot) -> Action | None:
        worse = [c for c in snapshot.comparisons.values() if c.crossed and c.verdict == "worse"]
        if worse:
            return Action(HALT, "sequential test: " + "; ".join(c.words for c in worse))
        better = [c for c in snapshot.comparisons.values() if c.crossed and c.verdict == "better"]
        if better:
            return Action(CONCLUDE, "sequential test: " + "; ".join(c.words for c in better))
        finished = [c for c in snapshot.comparisons.values() if c.verdict == "no difference"]
        if finished and len(finished) == len(snapshot.comparisons):
            return Action(CONCLUDE, "sequential test: " + "; ".join(c.words for c in finished))
        return None

    def _ramp(self, state: ExperimentState, snapshot: Snapshot, now: datetime) -> Action:
        ramp = state.experiment.ramp
        if state.step + 1 >= len(ramp):
            return Action(HOLD, f"at the last ramp step ({ramp[state.step].traffic:.0%}): waiting for the verdict")
        lasted = now - state.step_started_at
        need = timedelta(days=ramp[state.step].min_days)
        if lasted < need:
            return Action(
                HOLD,
                f"step {state.step + 1} ({ramp[state.step].traffic:.0%}) has lasted {_days(lasted)} of {_days(need)}",
            )
        short = self._short_of_decisions(state, snapshot)
        if short:
            return Action(HOLD, f"too few decisions to judge the guardrails: {short}")
        step = ramp[state.step + 1]
        launch = " (the launch: every card outside the holdout)" if step.traffic >= 1.0 else ""
        return Action(
            ADVANCE,
            f"step {state.step + 1} ({ramp[state.step].traffic:.0%}) lasted {_days(lasted)} with every guardrail "
            f"inside: to {step.traffic:.0%}{launch}",
        )

    def _short_of_decisions(self, state: ExperimentState, snapshot: Snapshot) -> str:
        need = state.experiment.guardrails.min_decisions
        arms = [baseline_arm(state), *serving_treatments(state)]
        short = [
            f"{a} {snapshot.arms[a].decisions:,}"
            for a in arms
            if a in snapshot.arms and snapshot.arms[a].decisions < need
        ]
        return f"{', '.join(short)} of {need:,}" if short else ""


def baseline_arm(state: ExperimentState) -> str:
    """What the treatments are judged against: control, or the holdout once they take everyone else."""
    return HOLDOUT_ARM if state.traffic >= 1.0 and state.experiment.holdout else CONTROL_ARM


def serving_treatments(state: ExperimentState) -> list[str]:
    shares = state.shares()
    return [a.name for a in state.experiment.treatments if shares.get(a.name, 0.0) > 0.0]


def _approval_drop(base: ArmMetrics | None, arm: ArmMetrics, min_decisions: int) -> tuple[float, float] | None:
    """(baseline - arm approval, its card-clustered standard error); None until both have enough."""
    if base is None or base.approval_rate is None or arm.approval_rate is None:
        return None
    if min(base.decisions, arm.decisions) < max(1, min_decisions):
        return None
    var = (base.approval_var or 0.0) / base.decisions + (arm.approval_var or 0.0) / arm.decisions
    return base.approval_rate - arm.approval_rate, math.sqrt(var)


def _days(d: timedelta) -> str:
    return f"{d.total_seconds() / 86400:.1f} days"


def apply(store: ExperimentStore, action: Action, now: datetime, by: str = "controller") -> ExperimentState | None:
    """Carry ``action`` out on the store; returns the state after it."""
    if action.kind == HALT:
        return store.halt(action.reason, by=by)
    if action.kind == CONCLUDE:
        return store.conclude(action.reason, by=by)
    if action.kind == ADVANCE:
        return store.advance(action.reason, by=by, now=now)
    return store.current()
