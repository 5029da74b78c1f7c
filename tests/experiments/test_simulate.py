"""A simulated A/B test through the production decision path: a harmful treatment halts by its
guardrail within days, an identical one concludes no difference, the report and the CLI run."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from experiments import Arm, Experiment, Guardrails, Policy, RampStep
from experiments.simulate import AbRun, run_ab
from experiments.store import HALTED, ExperimentStore
from fraud.cli import app
from retrain import ModelRegistry
from retrain.registry import model_thresholds

GUARD = Guardrails(max_approval_drop=0.01, max_p99_ms=1e6, max_review_backlog=5000, min_decisions=300)


def _run(history, tmp: Path, treatment: Policy, last_day: int) -> AbRun:
    experiment = Experiment(
        name="sim",
        arms=(Arm(name="control"), Arm(name="treatment", policy=treatment)),
        ramp=(RampStep(traffic=0.2, min_days=2), RampStep(traffic=0.5, min_days=2)),
        holdout=0.05,
        label_maturity_days=3,
        guardrails=GUARD,
    )
    registry = ModelRegistry(history.registry_dir)
    return run_ab(
        experiment, history.ordered, history.matrix, history.labels, history.truth, registry, tmp,
        history.config.start, 14, last_day, say=lambda _: None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def harmful(simulated_history, tmp_path_factory) -> tuple[AbRun, Path]:
    # Stop far more than the model's own operating point does: approval falls.
    own = model_thresholds(ModelRegistry(simulated_history.registry_dir).metadata(simulated_history.model_version))
    out = tmp_path_factory.mktemp("harmful")
    return _run(simulated_history, out, Policy(flag=own.flag / 8, block=own.flag / 4), 19), out


def test_a_harmful_treatment_halts_by_its_guardrail_within_days(harmful) -> None:
    run, out = harmful
    halts = [s for s in run.snapshots if s["action"]["kind"] == "halt"]
    assert halts and halts[0]["day"] <= 17 and "approves" in halts[0]["action"]["reason"]
    state = ExperimentStore(out / "registry").current()
    assert state.status == HALTED and "guardrail" in state.reason
    halted_day = halts[0]["day"]
    later = [s for s in run.snapshots if s["day"] > halted_day]
    assert later and all(s["traffic"] == 0.0 for s in later)  # everyone back on control
    start = run.decisions[0].transaction.event_time.replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=halted_day - 14 + 1)
    late = [d for d in run.decisions if d.transaction.event_time >= end]
    assert late and {d.policy_arm for d in late} <= {"control", "holdout"}
    assert (out / "experiment" / "decisions.jsonl").exists() and (out / "experiment" / "snapshots.jsonl").exists()


def test_an_identical_treatment_does_not_conclude_a_difference(simulated_history, tmp_path) -> None:
    run = _run(simulated_history, tmp_path, Policy(), 24)
    assert run.final.status != HALTED, run.final.reason
    verdicts = {s["snapshot"]["comparisons"]["treatment"]["verdict"] for s in run.snapshots}
    assert not verdicts & {"better", "worse"}
    assert any(s["action"]["kind"] == "advance" for s in run.snapshots)


def test_the_report_and_status_commands_run(harmful, tmp_path) -> None:
    _, out = harmful
    runner = CliRunner()
    result = runner.invoke(app, ["experiment", "report", "--home", str(out), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    for name in ("report.md", "rates.png", "primary.png", "sequential.png", "guardrails.png", "traffic.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "halted" in report and "guardrail" in report
    result = runner.invoke(app, ["experiment", "status", "--home", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "treatment" in result.output and "halted" in result.output
    summary = json.loads((out / "experiment" / "summary.json").read_text())
    assert summary["status"] == HALTED


def test_the_commands_have_help_with_an_example() -> None:
    for command in ("simulate", "report", "status"):
        result = CliRunner().invoke(app, ["experiment", command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "fraud experiment" in result.output
