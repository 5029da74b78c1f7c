"""The controller: guardrails halt, the ramp advances only when gated, the sequential test decides."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from experiments import Arm, Experiment, Guardrails, Policy, RampStep
from experiments.analysis import ArmMetrics, Comparison, Snapshot
from experiments.controller import ADVANCE, CONCLUDE, HALT, HOLD, ExperimentController, apply
from experiments.store import HALTED, RUNNING, ExperimentState, ExperimentStore

T0 = datetime(2026, 3, 2, tzinfo=UTC)
GUARD = Guardrails(max_approval_drop=0.01, max_p99_ms=100.0, max_review_backlog=500, min_decisions=1000)
EXPERIMENT = Experiment(
    name="t",
    arms=(Arm(name="control"), Arm(name="treatment", policy=Policy(block=0.5))),
    ramp=(RampStep(traffic=0.1, min_days=3), RampStep(traffic=0.5, min_days=7)),
    holdout=0.02,
    guardrails=GUARD,
)
controller = ExperimentController()


def _arm(name: str, decisions: int = 5000, approval: float = 0.97, p99: float | None = 20.0) -> ArmMetrics:
    return ArmMetrics(
        arm=name, decisions=decisions, approval_rate=approval, flag_rate=0.02, block_rate=1 - approval - 0.02,
        review_open=0, mature_decisions=0, labelled_fraud=0, fraud_caught=0, fraud_caught_money=0.0,
        fraud_losses=0, fraud_loss_money=0.0, false_positives=0, expected_loss=0.0, expected_loss_per_1000=None,
        primary=None, primary_denominator=0.0, approval_var=0.03, p99_ms=p99, latency_samples=decisions,
    )  # fmt: skip


def _comparison(verdict: str = "undecided", crossed: bool = False) -> Comparison:
    return Comparison(
        "treatment", "control", "fraud_loss_rate", 0.1, 0.1, 0.0, 0.0, 0.01, 0.0, (0.0, 0.0), 0.3, 1e5, None,
        3.0, 0.001, crossed, verdict, f"verdict {verdict}",
    )  # fmt: skip


def _snap(treatment: ArmMetrics | None = None, backlog: int = 10, comparison: Comparison | None = None) -> Snapshot:
    arms = {"control": _arm("control"), "treatment": treatment or _arm("treatment"), "holdout": _arm("holdout")}
    return Snapshot(T0, arms, {"treatment": comparison or _comparison()}, None, backlog)


def _state(days_in_step: float = 5.0, step: int = 0, status: str = RUNNING) -> ExperimentState:
    now = T0
    return ExperimentState(EXPERIMENT, status, step, now - timedelta(days=30), now - timedelta(days=days_in_step))


@pytest.mark.parametrize(
    ("snap", "words"),
    [
        (_snap(_arm("treatment", approval=0.93)), "approves"),
        (_snap(_arm("treatment", p99=150.0)), "p99"),
        (_snap(backlog=501), "review backlog"),
    ],
    ids=["approval", "latency", "backlog"],
)
def test_each_guardrail_halts_on_its_breach(snap: Snapshot, words: str) -> None:
    action = controller.review(_state(), snap, T0)
    assert action.kind == HALT and words in action.reason


def test_inside_every_guardrail_nothing_halts() -> None:
    edge = _snap(_arm("treatment", approval=0.961, p99=99.0), backlog=500)
    assert controller.review(_state(), edge, T0).kind == ADVANCE


def test_a_drop_within_the_noise_of_clustered_cards_does_not_halt() -> None:
    noisy = replace(_arm("treatment", decisions=1200, approval=0.95), approval_var=0.2)
    assert controller.review(_state(), _snap(noisy), T0).kind == ADVANCE
    sure = replace(noisy, decisions=200_000)
    sure_control = replace(_arm("control", decisions=200_000), approval_var=0.2)
    snap = _snap(sure)
    snap = replace(snap, arms={**snap.arms, "control": sure_control})
    assert controller.review(_state(), snap, T0).kind == HALT


def test_the_approval_guardrail_waits_for_min_decisions() -> None:
    few = _snap(_arm("treatment", decisions=999, approval=0.5))
    action = controller.review(_state(), few, T0)
    assert action.kind == HOLD and "too few decisions" in action.reason


def test_the_ramp_never_advances_before_min_days_or_with_a_guardrail_breached() -> None:
    assert controller.review(_state(days_in_step=2.9), _snap(), T0).kind == HOLD
    assert controller.review(_state(days_in_step=3.0), _snap(), T0).kind == ADVANCE
    breached = _snap(_arm("treatment", p99=101.0))
    assert controller.review(_state(days_in_step=30), breached, T0).kind == HALT
    assert controller.review(_state(days_in_step=30, step=1), _snap(), T0).kind == HOLD  # the last step


def test_the_sequential_test_halts_on_harm_and_concludes_on_efficacy() -> None:
    worse = controller.review(_state(), _snap(comparison=_comparison("worse", crossed=True)), T0)
    assert worse.kind == HALT and "verdict worse" in worse.reason
    better = controller.review(_state(days_in_step=0.5), _snap(comparison=_comparison("better", True)), T0)
    assert better.kind == CONCLUDE
    done = controller.review(_state(days_in_step=0.5), _snap(comparison=_comparison("no difference")), T0)
    assert done.kind == CONCLUDE and "no difference" in done.reason


def test_a_halted_experiment_is_left_alone() -> None:
    breached = _snap(backlog=10_000)
    assert controller.review(_state(status=HALTED), breached, T0).kind == HOLD
    assert controller.review(None, breached, T0).kind == HOLD


def test_after_the_launch_step_the_guardrails_judge_against_the_holdout() -> None:
    launch = EXPERIMENT.model_copy(update={"ramp": (RampStep(traffic=0.5), RampStep(traffic=1.0))})
    state = replace(_state(step=1), experiment=launch)
    snap = _snap(_arm("treatment", approval=0.93))
    snap = replace(snap, arms={**snap.arms, "control": _arm("control", approval=0.5)})
    action = controller.review(state, snap, T0)
    assert action.kind == HALT and "vs holdout" in action.reason


def test_apply_changes_the_store(tmp_path) -> None:
    store = ExperimentStore(tmp_path)
    store.start(EXPERIMENT, now=T0 - timedelta(days=4))
    action = controller.review(store.current(), _snap(), T0)
    state = apply(store, action, T0)
    assert state.step == 1 and state.traffic == 0.5 and state.step_started_at == T0
    state = apply(store, controller.review(state, _snap(backlog=9999), T0), T0)
    assert state.status == HALTED and "backlog" in state.reason
    assert [e["event"] for e in store.history()] == ["start", "advance", "halt"]
