"""Decision builders for the review queue's tests (plain functions, not fixtures)."""

from __future__ import annotations

from datetime import timedelta

from schema import Decision, Outcome, ReasonCode, RuleHit
from tests.factories import T0, txn


def decision(
    n: int,
    score: float = 0.8,
    amount_minor: int = 10_000,
    outcome: Outcome = Outcome.FLAG,
    card: str = "card-000001",
    seconds: float | None = None,
) -> Decision:
    """A decision on payment ``n``, decided ``seconds`` (default n) after T0."""
    at = T0 + timedelta(seconds=n if seconds is None else seconds)
    return Decision(
        transaction=txn(n, at=at, amount_minor=amount_minor, card=card),
        outcome=outcome,
        score=score,
        model_version="xgb-0001",
        rule_hits=[RuleHit(rule_id="velocity_card_10m@1", action=Outcome.FLAG, reason="9 transactions in 10m")]
        if outcome is not Outcome.APPROVE
        else [],
        features={"amount": amount_minor / 100},
        decided_at=at,
        reasons=[
            ReasonCode(
                feature="card_txn_count_1h",
                value=7.0,
                contribution=1.25,
                text="7 payments on this card in the last hour",
            )
        ]
        if outcome is not Outcome.APPROVE
        else [],
    )
