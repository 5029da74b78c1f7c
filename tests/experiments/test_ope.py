"""Off-policy evaluation on a simulated history, where every payment's truth is known: the
estimates of a looser candidate land within their intervals of the true value, over many
independent exploration draws, while the naive estimate (approved rows only) is biased."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pytest

from experiments import Exploration, Policy, ope
from experiments.exploration import exploration_draws, explore
from retrain import ModelRegistry
from rules_engine import load_rules
from schema import Decision, Label, LabelSource, Outcome
from scoring import DecisionEngine, ScorerMetrics

try:
    from experiments.replay import ReplayedFeatures
except ImportError:  # before the replay moved out of the scenario runner
    from fraud.scenario.runner import ReplayedFeatures

# The logging policy: the champion at its own thresholds, exploring a fifth of the payments its
# score alone would stop, up to 100.00. The candidate raises the flag threshold under the cap
# (from the champion's ~0.001 to 0.01): it differs from the log only where exploration has support.
EXPLORATION = Exploration(rate=0.2, max_amount_minor=10_000, action="approve")
CANDIDATE_FLAG = 0.01
REPLICATIONS = 200


@dataclass(frozen=True)
class Unexplored:
    """The champion's decisions without exploration, as arrays (computed once)."""

    ids: list[str]
    outcomes: list[Outcome]
    hard_stop: np.ndarray
    amount_minor: np.ndarray
    scores: np.ndarray
    fraud: np.ndarray  # ground truth


def _engine(h, exploration: Exploration | None) -> DecisionEngine:
    model = ModelRegistry(h.registry_dir).load(h.model_version)
    store = ReplayedFeatures(h.ordered, h.matrix)
    return DecisionEngine(
        load_rules(), model, store, None, ScorerMetrics(), explain_inline=False, exploration=exploration
    )


@pytest.fixture(scope="module")
def unexplored(simulated_history) -> Unexplored:
    h = simulated_history
    ds = _engine(h, None).decide_batch(h.ordered[h.decide_from :])
    return Unexplored(
        ids=[d.transaction_id for d in ds],
        outcomes=[d.outcome for d in ds],
        hard_stop=np.array([any(r.action is not Outcome.APPROVE for r in d.rule_hits) for d in ds]),
        amount_minor=np.array([d.transaction.amount_minor for d in ds]),
        scores=np.array([d.score for d in ds]),
        fraud=np.array([h.truth[d.transaction_id].is_fraud for d in ds]),
    )


@pytest.fixture(scope="module")
def logged(simulated_history) -> list[Decision]:
    """The log the live scorer writes: the champion with the exploration holdout on."""
    h = simulated_history
    return _engine(h, EXPLORATION).decide_batch(h.ordered[h.decide_from :])


def _mature_labels(h) -> list[Label]:
    """Every fraud's chargeback, as if the log were old enough for all of them to have come."""
    return [
        Label(
            transaction_id=t.transaction_id,
            is_fraud=True,
            source=LabelSource.CHARGEBACK,
            known_at=t.event_time + timedelta(days=30),
            author="issuer",
        )
        for t in h.ordered
        if h.truth[t.transaction_id].is_fraud
    ]


def _looser(logged_approve: np.ndarray, propensity: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The candidate: the log's unexplored action, except that it approves the payments the
    exploration could have approved (propensity < 1) whose score is under ``CANDIDATE_FLAG``."""
    certain = propensity >= 1.0
    return (certain & logged_approve) | (~certain & (scores < CANDIDATE_FLAG))


def test_one_log_estimates_cover_the_truth(simulated_history, logged) -> None:
    h = simulated_history
    kept = ope.model_decisions(logged)
    data = ope.logged_arrays(kept, _mature_labels(h))
    candidate = _looser(data.logged_approve, data.propensity, np.array([d.score for d in kept]))
    data = ope.Logged(data.logged_approve, data.propensity, data.amount, data.fraud, candidate)
    result = ope.report(data)
    fraud = np.array([h.truth[d.transaction_id].is_fraud for d in kept])
    truth = ope.true_values(candidate, fraud, data.amount, ope.approvable(data.logged_approve, data.propensity))
    assert result.support.warning is None
    assert 0 < result.explored < len(kept) and result.effective_sample_size < len(kept)
    for name in ope.METRICS:
        assert result.metrics[name].ips.contains(truth[name]), (name, result.metrics[name].ips, truth[name])
    # One log is one draw: SNIPS's legitimate-stopped interval on this one (the production salt)
    # misses the truth, just (0.0019-0.0050 vs 0.0018): the one-in-twenty a 95% interval allows,
    # not picked away by choosing another salt. The coverage test below is the evidence.
    for name in ("fraud_loss", "fraud_approved_rate"):
        assert result.metrics[name].snips.contains(truth[name]), (name, result.metrics[name].snips, truth[name])


def test_coverage_over_independent_exploration_draws(unexplored) -> None:
    u = unexplored
    base_approve = np.array([o is Outcome.APPROVE for o in u.outcomes])
    stopped = np.flatnonzero(~base_approve)  # exploration only ever touches these
    stopped_outcomes = [u.outcomes[i] for i in stopped]
    stopped_ids = [u.ids[i] for i in stopped]
    amount = u.amount_minor / 100.0
    covered = {(name, how): 0 for name in ope.METRICS for how in ("ips", "snips")}
    naive_outside = dict.fromkeys(ope.METRICS, 0)
    naive_values = {name: [] for name in ope.METRICS}
    truth = None
    for r in range(REPLICATIONS):
        out = explore(
            stopped_outcomes,
            u.hard_stop[stopped],
            u.amount_minor[stopped],
            exploration_draws(stopped_ids, f"replication-{r}"),
            EXPLORATION,
        )
        approve, propensity = base_approve.copy(), np.ones(len(base_approve))
        approve[stopped], propensity[stopped] = out.explored, out.propensity
        candidate = _looser(approve, propensity, u.scores)
        estimates = ope.estimate(ope.Logged(approve, propensity, amount, u.fraud, candidate))
        # the truth depends on the candidate and the payments only, never on the draws
        truth = truth or ope.true_values(candidate, u.fraud, amount, ope.approvable(approve, propensity))
        for name, m in estimates.items():
            covered[name, "ips"] += m.ips.contains(truth[name])
            covered[name, "snips"] += m.snips.contains(truth[name])
            naive_outside[name] += not m.naive.contains(truth[name])
            naive_values[name].append(m.naive.value)
    coverage = {k: v / REPLICATIONS for k, v in covered.items()}
    assert min(coverage.values()) >= 0.88, coverage
    # the naive estimate misses what the looser candidate lets through that was never approved
    assert naive_outside["legit_stopped_rate"] / REPLICATIONS >= 0.9
    assert np.mean(naive_values["legit_stopped_rate"]) < 0.5 * truth["legit_stopped_rate"]
    assert np.mean(naive_values["fraud_approved_rate"]) < 0.9 * truth["fraud_approved_rate"]


def test_evaluate_policy_from_decisions(simulated_history, logged) -> None:
    h = simulated_history
    registry = ModelRegistry(h.registry_dir)
    labels = _mature_labels(h)
    kept = ope.model_decisions(logged)
    fraud = np.array([h.truth[d.transaction_id].is_fraud for d in kept])
    amount = np.array([d.transaction.amount_minor / 100 for d in kept])
    approvable = np.array([d.outcome is Outcome.APPROVE or d.propensity < 1 for d in kept])

    # the champion without exploration: everything it does differently was explored
    same = ope.evaluate_policy(logged, labels, Policy(), registry)
    # its approvals are the log's, bar the explored ones (approved with propensity < 1)
    champion_approves = np.array([d.outcome is Outcome.APPROVE and d.propensity >= 1.0 for d in kept])
    truth = ope.true_values(champion_approves, fraud, amount, approvable)
    assert same.support.warning is None and same.excluded == 0
    assert same.candidate_approval_rate == pytest.approx(champion_approves.mean())
    for name in ope.METRICS:
        assert same.metrics[name].ips.contains(truth[name]), name

    # a flag threshold raised for every amount: over the cap nothing was explored, so no support
    looser = ope.evaluate_policy(logged, labels, Policy(flag=CANDIDATE_FLAG), registry)
    assert looser.support.unsupported_approvals > 0
    assert "biased" in (looser.support.warning or "")


def test_estimators_on_a_known_toy() -> None:
    # two rows approved with certainty, one explored approval (p = 0.25) and one unexplored stop (0.75)
    logged_approve = np.array([True, True, True, False])
    propensity = np.array([1.0, 1.0, 0.25, 0.75])
    reward = np.array([0.0, 1.0, 2.0, 0.0])
    approve_all = np.ones(4, dtype=bool)
    assert ope.ips(reward, logged_approve, propensity, approve_all).value == pytest.approx((1 + 8) / 4)
    assert ope.snips(reward, logged_approve, propensity, approve_all).value == pytest.approx(9 / 6)
    assert ope.effective_sample_size(ope.importance_weights(logged_approve, propensity, approve_all)) == 36 / 18


def test_evaluate_command(simulated_history, logged, tmp_path) -> None:
    from typer.testing import CliRunner

    from fraud.cli import app
    from schema import write_jsonl

    h = simulated_history
    write_jsonl(tmp_path / "decisions.jsonl", logged[:4000])
    write_jsonl(tmp_path / "labels.jsonl", _mature_labels(h))
    (tmp_path / "looser.yaml").write_text(f"flag: {CANDIDATE_FLAG}\n")
    args = ["experiment", "evaluate", "--decisions", str(tmp_path / "decisions.jsonl")]
    args += ["--labels", str(tmp_path / "labels.jsonl"), "--candidate", str(tmp_path / "looser.yaml")]
    result = CliRunner().invoke(app, [*args, "--home", str(h.registry_dir.parent)])
    assert result.exit_code == 0, result.output
    for words in ("setup: 4,000 decisions", "IPS", "SNIPS", "naive", "effective sample size", "SUPPORT WARNING"):
        assert words in result.output
    assert "Example" in CliRunner().invoke(app, ["experiment", "evaluate", "--help"]).output
