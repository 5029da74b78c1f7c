"""experiments.plan and ``fraud experiment plan``: base rates from a decision log, sample size with
the per-card variance, days through the ramp; the clustered plan checked by simulation."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from experiments import stats
from experiments.config import Arm, Experiment, RampStep
from experiments.plan import BaseRates, PlanError, labelled_rates, observed_rates, plan_experiment
from fraud.cli import app
from schema import Decision, Outcome
from schema.codec import write_jsonl
from simulator import SimulationConfig, read_simulation, simulate, write_simulation

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-day simulation and a decision log of a made-up policy: it stops 70% of fraud and 2.5%
    of legitimate payments (a card-level coin, so one card's outcomes are correlated)."""
    root = tmp_path_factory.mktemp("plan")
    sim = simulate(SimulationConfig(days=3, n_customers=300, seed=5))
    write_simulation(sim, root / "data")
    fraud = {g.transaction_id: g.is_fraud for g in sim.truth}
    rng = np.random.default_rng(1)
    # sorted: a set of strings iterates in a per-process order (hash randomisation), and so would the draws
    strict = {c: rng.random() < 0.05 for c in sorted({t.card_id for t in sim.transactions})}
    decisions = []
    for t in sim.transactions:
        u = rng.random()
        stop = u < 0.7 if fraud[t.transaction_id] else u < (0.31 if strict[t.card_id] else 0.01)
        outcome = (Outcome.BLOCK if u < 0.005 else Outcome.FLAG) if stop else Outcome.APPROVE
        decisions.append(
            Decision(
                transaction=t,
                outcome=outcome,
                score=0.5,
                model_version="xgb-0001",
                rule_hits=[],
                features={},
                decided_at=t.event_time + timedelta(milliseconds=3),
            )
        )
    write_jsonl(root / "decisions.jsonl", decisions)
    return root


def _decisions(root: Path) -> list[Decision]:
    from schema import read_jsonl

    return list(read_jsonl(root / "decisions.jsonl", Decision))


def test_observed_rates_are_ratios_of_sums(tiny):
    sim, decisions = read_simulation(tiny / "data"), _decisions(tiny)
    labelled = {lb.transaction_id for lb in sim.labels if lb.is_fraud}
    stopped = np.array([d.outcome is not Outcome.APPROVE for d in decisions])
    fraud = np.array([d.transaction_id in labelled for d in decisions])
    approval = observed_rates("approval_rate", decisions, sim.labels)
    assert approval.value == pytest.approx(1 - stopped.mean())
    assert approval.payments == len(decisions) and approval.units_per_payment == 1.0
    fpr = observed_rates("false_positive_rate", decisions, sim.labels)
    assert fpr.value == pytest.approx((stopped & ~fraud).sum() / (~fraud).sum())
    assert fpr.units_per_payment == pytest.approx((~fraud).mean())
    # The strict cards: one card's payments are stopped together. Without them the design effect of
    # this log is noise around 1 (0.89-1.17 over five seeds); with them 1.4-2.7.
    assert fpr.design_effect > 1.3
    assert "labels" in fpr.source
    assert "ground truth" in observed_rates("approval_rate", decisions, sim.labels, sim.truth).source


def test_plan_arithmetic_and_ramp_days():
    base = BaseRates("approval_rate", 0.9, 0.09 * 2, 0.09, 1.0, 10_000, 2_000, 10.0, "given")
    exp = Experiment(
        name="t",
        arms=(Arm(name="control"), Arm(name="treatment")),
        ramp=(RampStep(traffic=0.02, min_days=2), RampStep(traffic=0.2, min_days=1), RampStep(traffic=1.0)),
    )
    plan = plan_experiment(base, exp, effect=0.05, looks=5, spending="pocock")
    n_c, n_t = stats.sample_size_proportions(0.9, 0.05, 0.05, 0.8, ratio=0.2 / 0.8)
    assert plan.fixed_payments == (math.ceil(2 * n_c), math.ceil(2 * n_t))  # design effect 2
    inflation = stats.sequential_inflation(5, 0.05, 0.8, "pocock")
    assert plan.sequential_payments[1] == math.ceil(2 * n_t * inflation)
    assert plan.cards is None  # no data: no card arrivals to count
    assert plan.schedule == [(0.02, 2.0), (0.2, None)]  # the launch step (1.0) is no part of the test
    # Treatment: 2% of 1,000 a day for 2 days, then 20% a day; control is never the slower arm here.
    n = plan.sequential_payments[1]
    assert plan.sequential_days == pytest.approx(2 + (n - 40) / 200)
    assert plan.effect_absolute == pytest.approx(0.9 * 0.05)


def test_a_rate_that_cannot_rise_is_planned_as_a_decrease():
    base = BaseRates("approval_rate", 0.97, 0.0291, 0.0291, 1.0, 1000, 500, 1.0, "given")
    plan = plan_experiment(base, effect=0.1, share=0.5)
    assert plan.effect_relative == pytest.approx(-0.1) and "decrease" in plan.notes[0]
    with pytest.raises(PlanError, match="--effect"):
        plan_experiment(base, effect=1.5)


def test_the_clustered_plan_has_its_power_by_simulation():
    """Cards with very uneven fraud rates: the plan from the per-card variance reaches 80% power,
    one from the payment-level variance would plan for far fewer cards."""
    rng = np.random.default_rng(17)

    def cards(sims: int, m: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        """(sims, m) fraud counts and payments; the treatment adds ``shift`` to every card's risk."""
        payments = rng.poisson(5, (sims, m)) + 1
        return rng.binomial(payments, np.clip(rng.beta(0.5, 9.5, (sims, m)) + shift, 0, 1)), payments

    y, n = cards(1, 200_000, 0.0)
    p = y.sum() / n.sum()
    base = BaseRates("fraud_recall", p, stats.ratio_metric_variance(y[0], n[0]), p * (1 - p), 1.0, n.sum(), 1, 1, "")
    plan = plan_experiment(base, effect=0.5, looks=1, share=0.5, daily_payments=1e6)
    assert base.design_effect > 1.3
    m = math.ceil(plan.fixed_payments[0] / 6)  # cards per arm: 6 payments a card on average

    def ratio_and_variance(y: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = y.sum(1) / n.sum(1)  # the delta method of stats.ratio_metric_variance, for every row
        return r, (y - r[:, None] * n).var(1, ddof=1) / n.mean(1) / n.sum(1)

    (r1, v1), (r2, v2) = ratio_and_variance(*cards(2000, m, 0.0)), ratio_and_variance(*cards(2000, m, 0.5 * p))
    z = (r2 - r1) / np.sqrt(v1 + v2)
    assert (np.abs(z) >= 1.959964).mean() == pytest.approx(0.8, abs=0.03)
    assert m / base.design_effect < 0.77 * m  # planning as if payments were independent: far fewer cards


def test_base_rate_given_by_hand(tiny):
    sim = read_simulation(tiny / "data")
    base = labelled_rates("false_positive_rate", 0.03, sim.transactions, sim.labels)
    assert base.design_effect == 1.0 and base.daily_payments == pytest.approx(len(sim.transactions) / base.days)
    with pytest.raises(PlanError, match="--decisions"):
        labelled_rates("fraud_loss_rate", 0.5, sim.transactions)
    with pytest.raises(PlanError, match="--daily-payments"):
        plan_experiment(labelled_rates("approval_rate", 0.9, None))


def _plan(*args: str):
    return runner.invoke(app, ["experiment", "plan", *args], env={"COLUMNS": "200"})


def test_the_command_prints_the_setup_and_the_answer(tiny):
    result = _plan(
        "--data", str(tiny / "data"), "--decisions", str(tiny / "decisions.jsonl"),
        "--metric", "false_positive_rate", "--effect", "0.2", "--share", "0.1", "--looks", "10",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "false_positive_rate" in out and "design effect" in out and "10 looks" in out
    assert "Needs " in out and "cards" in out and "days" in out and "O'Brien-Fleming adds +" in out


def test_an_experiment_file_sets_the_plan(tiny, tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text(
        "name: fpr-test\narms: [{name: control}, {name: stricter}]\nprimary_metric: approval_rate\n"
        "minimum_effect: 0.01\nsequential: {looks: 4, spending: pocock}\n"
    )
    data = ["--data", str(tiny / "data"), "--decisions", str(tiny / "decisions.jsonl")]
    result = _plan("--experiment", str(spec), *data)
    assert result.exit_code == 0, result.output
    assert "approval_rate" in result.output and "4 looks, pocock" in result.output and "stricter" in result.output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ([], "--decisions"),
        (["--metric", "loss", "--base-rate", "0.1"], "--metric"),
        (["--base-rate", "0.1", "--metric", "approval_rate", "--effect", "0"], "--effect"),
        (["--base-rate", "0.1", "--metric", "approval_rate", "--spending", "linear"], "--spending"),
        (["--base-rate", "0.1", "--metric", "approval_rate"], "--daily-payments"),
        (["--base-rate", "0.1", "--metric", "fraud_loss_rate", "--daily-payments", "10"], "--decisions"),
        (["--data", "/nonexistent/folder", "--base-rate", "0.1"], "--data"),
        (["--experiment", "/nonexistent.yaml"], "--experiment"),
    ],
)
def test_errors_name_the_option(args, option):
    result = _plan(*args)
    assert result.exit_code == 2, result.output
    assert option in result.output
