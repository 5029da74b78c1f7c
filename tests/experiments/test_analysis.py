"""Per-arm A/B metrics as of T: label maturity, the card-clustered comparison, the sequential verdict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from experiments import Arm, Experiment, Policy, stats
from experiments.analysis import DecisionLog, SequentialPlan, snapshot
from schema import Decision, Label, LabelSource, Outcome, Transaction

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def _experiment(**kw) -> Experiment:
    arms = (Arm(name="control"), Arm(name="treatment", policy=Policy(block=0.5)))
    return Experiment(name="t", arms=arms, label_maturity_days=7, **kw)


def _decision(i: int, arm: str, outcome: Outcome, when: datetime, amount: int = 10_000, card: str | None = None):
    txn = Transaction(
        transaction_id=f"tx{i}",
        event_time=when,
        card_id=card or f"card{i}",
        customer_id=f"cu{i}",
        merchant_id="m1",
        merchant_category="grocery",
        amount_minor=amount,
        currency="EUR",
        country="DE",
        card_country="DE",
        device_id="d1",
    )
    return Decision(
        transaction=txn,
        outcome=outcome,
        score=0.5,
        model_version="xgb-0001",
        rule_hits=[],
        features={},
        decided_at=when,
        policy_arm=arm,
    )


def _label(i: int, fraud: bool, known: datetime, source: LabelSource = LabelSource.CHARGEBACK) -> Label:
    return Label(transaction_id=f"tx{i}", is_fraud=fraud, source=source, known_at=known, author="issuer")


def test_a_label_known_after_t_and_an_immature_decision_are_not_counted() -> None:
    at = T0 + timedelta(days=20)
    decisions = [
        _decision(0, "control", Outcome.APPROVE, T0),  # mature, chargeback known before T
        _decision(1, "control", Outcome.APPROVE, T0),  # mature, chargeback known after T
        _decision(2, "control", Outcome.APPROVE, at - timedelta(days=2)),  # immature, label known
        _decision(3, "control", Outcome.FLAG, T0),  # mature, cleared by review
        _decision(4, "treatment", Outcome.BLOCK, T0),
    ]
    labels = [
        _label(0, True, T0 + timedelta(days=5)),
        _label(1, True, at + timedelta(hours=1)),
        _label(2, True, at - timedelta(days=1)),
        _label(3, False, T0 + timedelta(hours=4), LabelSource.REVIEW),
    ]
    snap = snapshot(DecisionLog.from_decisions(decisions), labels, _experiment(), at)
    control = snap.arms["control"]
    assert control.decisions == 4 and control.approval_rate == pytest.approx(0.75)
    assert control.mature_decisions == 3
    assert control.fraud_losses == 1 and control.fraud_loss_money == pytest.approx(100.0)
    assert control.false_positives == 1 and control.review_open == 0
    assert control.labelled_fraud == 1
    assert snap.arms["treatment"].block_rate == 1.0
    assert snap.arms["treatment"].fraud_caught == 0  # blocked fraud is never labelled: unseen
    later = snapshot(DecisionLog.from_decisions(decisions), labels, _experiment(), at + timedelta(days=10))
    assert later.arms["control"].fraud_losses == 3  # the late label and the now mature decision


def test_a_flag_not_yet_reviewed_is_open() -> None:
    decisions = [_decision(0, "control", Outcome.FLAG, T0), _decision(1, "treatment", Outcome.FLAG, T0)]
    labels = [_label(0, True, T0 + timedelta(days=3), LabelSource.REVIEW)]
    snap = snapshot(DecisionLog.from_decisions(decisions), labels, _experiment(), T0 + timedelta(days=1))
    assert snap.review_backlog == 2
    snap = snapshot(DecisionLog.from_decisions(decisions), labels, _experiment(), T0 + timedelta(days=4))
    assert snap.review_backlog == 1


def _random_arms(seed: int, n_cards: int, p_control: float, p_treatment: float) -> list[Decision]:
    """Cards with several payments each; approval probability per arm."""
    rng = np.random.default_rng(seed)
    out, i = [], 0
    for c in range(n_cards):
        arm = "control" if c % 2 else "treatment"
        p = p_control if arm == "control" else p_treatment
        for _ in range(rng.integers(1, 6)):
            outcome = Outcome.APPROVE if rng.random() < p else Outcome.BLOCK
            out.append(_decision(i, arm, outcome, T0, card=f"card{c}"))
            i += 1
    return out


def test_the_comparison_is_card_clustered() -> None:
    experiment = _experiment(primary_metric="approval_rate")
    decisions = _random_arms(1, 400, 0.9, 0.85)
    log = DecisionLog.from_decisions(decisions)
    c = snapshot(log, [], experiment, T0 + timedelta(days=1)).comparisons["treatment"]
    sums = {}
    for arm in ("control", "treatment"):
        rows = log.arm == arm
        cards, idx = np.unique(log.card[rows], return_inverse=True)
        y = np.bincount(idx, (log.outcome[rows] == 0).astype(float))
        n = np.bincount(idx, np.ones(rows.sum()))
        sums[arm] = (y.sum() / n.sum(), stats.ratio_metric_variance(y, n), n.sum())
    diff, z = stats.mean_difference_z(*sums["control"], *sums["treatment"])
    assert c.difference == pytest.approx(diff) and c.z == pytest.approx(z)


def test_the_sequential_verdict_uses_the_stats_boundaries() -> None:
    experiment = _experiment(primary_metric="approval_rate")
    decisions = _random_arms(2, 2000, 0.9, 0.7)  # a big drop in approval: crosses at once
    log = DecisionLog.from_decisions(decisions)
    snap = snapshot(log, [], experiment, T0 + timedelta(days=1), plans={"treatment": SequentialPlan(10_000.0)})
    c = snap.comparisons["treatment"]
    seq = experiment.sequential
    expected = stats.sequential_test([c.z], [c.info_fraction], seq.alpha, seq.spending)[-1]
    assert 0.1 <= c.info_fraction < 1.0 and snap.plans["treatment"].looks == ((c.info_fraction, c.z),)
    assert c.look == 1 and c.bound == pytest.approx(expected.bound)
    assert c.crossed and c.verdict == "worse"


def test_no_look_before_the_first_planned_fraction() -> None:
    experiment = _experiment(primary_metric="approval_rate")
    log = DecisionLog.from_decisions(_random_arms(3, 200, 0.9, 0.7))
    snap = snapshot(log, [], experiment, T0 + timedelta(days=1), plans={"treatment": SequentialPlan(1e9)})
    c = snap.comparisons["treatment"]
    assert c.look is None and not c.crossed and c.verdict == "undecided"
    assert c.info_fraction < 1 / experiment.sequential.looks
