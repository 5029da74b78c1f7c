"""Backtest: production decisions over one replay, per-day and total metrics, paired bootstrap
intervals; checked on the shared simulated history and on hand-built cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from experiments import Policy, ReplayedFeatures, ReplayedHistory
from experiments.backtest import (
    APPROVE,
    BLOCK,
    COUNTS,
    FLAG,
    MONEY,
    REPORTED,
    BacktestError,
    backtest,
    group_sums,
    payment_metrics,
    review_mask,
)
from experiments.bootstrap import paired_bootstrap
from fraud.cli import app
from retrain import ModelRegistry
from retrain.evaluate import CostModel, money_outcome
from schema import Outcome, decode_decision

FROM_DAY = 14  # the champion was trained on days 0-13
CURRENT = Policy(flag=0.3, block=0.9)
LOWER_BLOCK = Policy(flag=0.3, block=0.5)


@pytest.fixture(scope="module")
def history(simulated_history) -> ReplayedHistory:
    h = simulated_history
    return ReplayedHistory(h.ordered, h.matrix, h.labels, h.truth)


@pytest.fixture(scope="module")
def registry(simulated_history) -> ModelRegistry:
    return ModelRegistry(simulated_history.registry_dir)


@pytest.fixture(scope="module")
def lower_block(history, registry):
    policies = {"current": CURRENT, "proposed": LOWER_BLOCK}
    return backtest(history, policies, registry, from_day=FROM_DAY, truth=True, resamples=500)


def test_the_scenario_runner_serves_features_from_the_shared_replay():
    from fraud.scenario import runner

    assert runner.ReplayedFeatures is ReplayedFeatures


def test_same_input_same_output_byte_for_byte(history, registry):
    policies = {"current": CURRENT, "proposed": LOWER_BLOCK}
    runs = [
        backtest(history, policies, registry, from_day=FROM_DAY, to_day=17, bootstrap="cards", resamples=300, seed=5)
        for _ in range(2)
    ]
    assert runs[0].to_json() == runs[1].to_json()
    other_seed = backtest(
        history, policies, registry, from_day=FROM_DAY, to_day=17, bootstrap="cards", resamples=300, seed=6
    )
    assert other_seed.to_json() != runs[0].to_json()  # the seed is what makes it repeatable


def test_identical_policies_differ_by_exactly_zero(history, registry):
    result = backtest(history, {"a": CURRENT, "b": CURRENT}, registry, from_day=FROM_DAY, to_day=19, resamples=300)
    for metric, iv in result.differences["b"].items():
        assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0), metric
    assert result.totals("a") == result.totals("b")


def test_a_lower_block_threshold_blocks_and_catches_at_least_as_much_every_day(lower_block):
    days = {(r["policy"], r["day"]): r for r in lower_block.day_rows()}
    assert lower_block.policies["proposed"].block == 0.5 and lower_block.policies["current"].block == 0.9
    for day in lower_block.days:
        now, lower = days["current", day], days["proposed", day]
        assert lower["blocked"] >= now["blocked"], day
        assert lower["fraud_caught"] >= now["fraud_caught"], day
        assert lower["fraud_caught_amount"] >= now["fraud_caught_amount"], day
    totals = lower_block.totals("proposed"), lower_block.totals("current")
    assert totals[0]["blocked"] > totals[1]["blocked"]  # the threshold bites on this history


def test_totals_are_the_sums_of_the_days(lower_block):
    rows = lower_block.day_rows()
    assert [r["day"] for r in rows if r["policy"] == "current"] == list(range(FROM_DAY, 28))
    for name in lower_block.policies:
        totals = lower_block.totals(name)
        mine = [r for r in rows if r["policy"] == name]
        for metric in COUNTS:
            assert totals[metric] == sum(r[metric] for r in mine), metric
        for metric in MONEY:
            assert totals[metric] == pytest.approx(sum(r[metric] for r in mine), abs=1e-6), metric
        assert totals["payments"] == totals["approved"] + totals["flagged"] + totals["blocked"]
        assert totals["fraud"] == totals["fraud_caught"] + totals["fraud_missed"]
        assert totals["expected_loss"] == pytest.approx(
            totals["chargeback_loss"] + totals["review_spend"] + totals["friction_spend"]
        )
    assert lower_block.setup["payments"] == totals["payments"]


def test_result_json_has_setup_notes_and_every_difference(lower_block):
    data = json.loads(lower_block.to_json())
    assert set(data["differences"]["proposed"]) == set(REPORTED)
    assert data["setup"]["fraud_status"] == "truth" and data["setup"]["bootstrap"]["over"] == "days"
    assert any("ground truth" in note for note in data["notes"])
    assert data["policies"]["current"]["model"] == lower_block.policies["current"].model_version


def test_the_label_log_is_the_default_fraud_status_and_says_it_is_incomplete(history, registry):
    result = backtest(history, {"a": CURRENT}, registry, from_day=FROM_DAY, to_day=16)
    assert result.setup["fraud_status"] == "labels" and result.differences == {}
    assert any("incomplete" in note and "blocked" in note for note in result.notes)
    no_truth = ReplayedHistory(history.ordered, history.matrix, history.labels, None)
    with pytest.raises(BacktestError, match="no ground truth"):
        backtest(no_truth, {"a": CURRENT}, registry, from_day=FROM_DAY, truth=True)
    with pytest.raises(BacktestError, match="no payments"):
        backtest(history, {"a": CURRENT}, registry, from_day=40)


# -- the arithmetic, by hand --------------------------------------------------------------------

COSTS = {"review_cost": 400, "false_block_cost": 1500, "chargeback_fee": 2000}  # minor units


def test_cost_arithmetic_on_a_hand_built_day():
    #            approve  flag   flag   block  block  approve
    outcome = np.array([APPROVE, FLAG, FLAG, BLOCK, BLOCK, APPROVE])
    fraud = np.array([True, True, False, False, True, False])
    amount = np.array([10_000, 5_000, 3_000, 2_000, 7_000, 1_000])
    reviewed = review_mask(outcome, amount.astype(float), np.zeros(6, dtype=int), None)
    m = group_sums(payment_metrics(outcome, reviewed, fraud, amount, COSTS), np.zeros(6, dtype=int), 1)[0]
    got = dict(zip(COUNTS + MONEY, m, strict=True))
    assert got["fraud_caught"] == 2 and got["fraud_missed"] == 1  # flagged+reviewed and blocked fraud
    assert got["false_blocks"] == 1 and got["false_flags"] == 1 and got["wasted_reviews"] == 1
    assert got["fraud_caught_amount"] == 12_000 and got["fraud_missed_amount"] == 10_000
    assert got["chargeback_loss"] == 10_000 + 2000  # the approved fraud and its fee
    assert got["review_spend"] == 2 * 400 and got["friction_spend"] == 1500
    assert got["expected_loss"] == 12_000 + 800 + 1500


def test_with_unlimited_review_the_loss_is_retrains_money_outcome():
    rng = np.random.default_rng(3)
    scores = rng.random(500)
    fraud = rng.random(500) < 0.2
    amount = rng.integers(100, 50_000, 500)
    outcome = np.where(scores >= 0.9, BLOCK, np.where(scores >= 0.6, FLAG, APPROVE))
    reviewed = review_mask(outcome, scores, np.zeros(500, dtype=int), None)
    m = group_sums(payment_metrics(outcome, reviewed, fraud, amount, COSTS), np.zeros(500, dtype=int), 1)[0]
    got = dict(zip(COUNTS + MONEY, m, strict=True))
    money = money_outcome(fraud.astype(int), scores, amount / 100, 0.6, 0.9, CostModel())
    assert got["expected_loss"] / 100 == pytest.approx(money["money_lost"] + money["money_spent"])
    assert got["fraud_caught_amount"] / 100 == pytest.approx(money["money_saved"])


def test_review_overflow_is_per_day_highest_priority_first_and_counts_as_missed():
    # day 0: three flags for a capacity of two; day 1: one flag (capacity does not carry over)
    outcome = np.array([FLAG, FLAG, FLAG, FLAG, APPROVE])
    day = np.array([0, 0, 0, 1, 1])
    fraud = np.array([True, False, True, True, False])
    amount = np.array([1_000, 9_000, 5_000, 100, 100])
    priority = np.array([0.9, 0.5, 0.6, 0.1, 0.0]) * amount  # 900, 4500, 3000, 10
    reviewed = review_mask(outcome, priority, day, 2.0)
    assert reviewed.tolist() == [False, True, True, True, False]  # the 900 one overflowed
    sums = group_sums(payment_metrics(outcome, reviewed, fraud, amount, COSTS), day, 2)
    d0 = dict(zip(COUNTS + MONEY, sums[0], strict=True))
    assert d0["reviewed"] == 2 and d0["review_overflow"] == 1
    assert d0["fraud_missed"] == 1 and d0["fraud_missed_amount"] == 1_000  # unreviewed fraud goes through
    assert d0["review_spend"] == 2 * 400  # the overflow costs no review
    assert d0["expected_loss"] == 1_000 + 2000 + 800
    assert review_mask(outcome, priority, day, 0.0).sum() == 0
    assert review_mask(outcome, priority, day, 2.9).tolist() == reviewed.tolist()  # whole cases only


# -- the bootstrap ------------------------------------------------------------------------------


def test_bootstrap_interval_matches_the_normal_approximation_and_covers_the_truth():
    rng = np.random.default_rng(11)
    n, mu, sigma = 400, 0.5, 1.0
    current = rng.normal(10.0, 3.0, (n, 1))
    proposed = current + rng.normal(mu, sigma, (n, 1))
    (iv,) = paired_bootstrap(current, proposed, resamples=4000, seed=1)
    diff = (proposed - current)[:, 0]
    half = 1.96 * diff.std(ddof=1) * np.sqrt(n)  # normal approximation for a sum of n clusters
    assert iv.estimate == pytest.approx(diff.sum())
    assert iv.low < n * mu < iv.high
    assert (iv.high - iv.low) == pytest.approx(2 * half, rel=0.1)
    assert (iv.low + iv.high) / 2 == pytest.approx(diff.sum(), abs=0.1 * half)


def test_bootstrap_coverage_is_near_nominal_and_pairing_cancels_shared_noise():
    rng = np.random.default_rng(12)
    n, mu, covered = 60, 0.3, 0
    for rep in range(200):
        base = rng.normal(0.0, 50.0, (n, 1))  # day-to-day noise both policies share
        (iv,) = paired_bootstrap(base, base + rng.normal(mu, 1.0, (n, 1)), resamples=400, seed=rep)
        covered += iv.low <= n * mu <= iv.high
        assert iv.high - iv.low < 2 * 1.96 * 1.5 * np.sqrt(n)  # not the shared noise's width (~1500)
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_ratios_and_shape_errors():
    current = np.array([[1.0, 10.0], [3.0, 10.0]])
    proposed = np.array([[2.0, 10.0], [4.0, 10.0]])
    ratio = lambda s: s[:, :1] / s[:, 1:]  # noqa: E731 - a statistic is any function of the totals
    (iv,) = paired_bootstrap(current, proposed, resamples=200, statistic=ratio)
    assert iv.estimate == pytest.approx(0.1) and iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap(current, proposed[:1])


# -- the command --------------------------------------------------------------------------------


def test_the_command_runs_end_to_end_on_the_files_and_matches_the_api(simulated_history, history, registry, tmp_path):
    home = simulated_history.data_dir.parent  # data/ and registry/ side by side
    args = ["backtest", "--home", str(home), "--from-day", "3", "--to-day", "5", "--proposed-block", "0.5"]
    args += ["--truth", "--resamples", "200", "--out", str(tmp_path), "--review-capacity", "150", "--decision-log"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for text in ("machine:", "current: model", "proposed: model", "expected loss", "95% interval"):
        assert text in result.output
    logs = {"decisions-current.jsonl", "decisions-proposed.jsonl"}
    assert {p.name for p in tmp_path.iterdir()} == {"backtest.json", "backtest_days.csv", "backtest.png"} | logs
    written = json.loads((tmp_path / "backtest.json").read_text())
    assert written["setup"]["days"] == [3, 5] and written["policies"]["proposed"]["block"] == 0.5
    assert len((tmp_path / "backtest_days.csv").read_text().splitlines()) == 1 + 2 * 2
    # The command replays only up to its last day (features are point in time): the same result as
    # deciding those days from the replay of the whole history.
    same = backtest(
        history,
        {"current": Policy(), "proposed": Policy(block=0.5)},
        registry,
        review_capacity_per_day=150,
        from_day=3,
        to_day=5,
        truth=True,
        resamples=200,
    )
    expected = json.loads(same.to_json())
    for policy, block in (("current", None), ("proposed", 0.5)):  # the decision logs are the decisions made
        logged = [decode_decision(line) for line in (tmp_path / f"decisions-{policy}.jsonl").open("rb")]
        assert len(logged) == same.totals(policy)["payments"]
        assert sum(d.outcome is Outcome.BLOCK for d in logged) == same.totals(policy)["blocked"]
        assert block is None or all(d.outcome is Outcome.BLOCK for d in logged if d.score >= block)
    assert written["setup"].pop("history_payments") < expected["setup"].pop("history_payments")
    assert written == expected


def test_a_bad_policy_file_is_refused_naming_the_field(simulated_history, tmp_path):
    home = simulated_history.data_dir.parent
    for text, field in (("block: 1.5\n", "block"), ("blok: 0.5\n", "blok")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        result = CliRunner().invoke(app, ["backtest", "--home", str(home), "--proposed", str(bad)])
        assert result.exit_code == 2, result.output
        assert "bad.yaml" in result.output and field in result.output


def test_help_explains_with_examples():
    result = CliRunner().invoke(app, ["backtest", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for text in ("Examples:", "--proposed-block", "--truth", "--bootstrap", "--review-capacity", "docs/experiments.md"):
        assert text in result.output
