"""Conversion between the gRPC messages and the shared domain types."""

from __future__ import annotations

from schema import Decision, Transaction, transaction_from_fields
from scoring.proto import fraud_pb2 as pb

_FIELDS = (
    "transaction_id",
    "event_time",
    "card_id",
    "customer_id",
    "merchant_id",
    "merchant_category",
    "amount_minor",
    "currency",
    "country",
    "card_country",
    "device_id",
)


def transaction_from_proto(msg: pb.Transaction, now: float | None = None) -> Transaction:
    """Validate a request as the Kafka doors validate an event (schema.transaction_from_fields:
    field types and input limits; ``now``, the door's clock, bounds how far ahead event time may
    be); InvalidEvent names the field and the problem."""
    if msg.channel:  # read from the message's attributes: ~4 µs less than building a dict first
        return transaction_from_fields(msg, now=now, from_attributes=True)
    # proto3 cannot tell an empty string from a missing one; an empty channel means the default.
    return transaction_from_fields({name: getattr(msg, name) for name in _FIELDS}, now=now)


def transaction_to_proto(txn: Transaction) -> pb.Transaction:
    return pb.Transaction(
        transaction_id=txn.transaction_id,
        event_time=txn.event_time.isoformat().replace("+00:00", "Z"),
        card_id=txn.card_id,
        customer_id=txn.customer_id,
        merchant_id=txn.merchant_id,
        merchant_category=txn.merchant_category,
        amount_minor=txn.amount_minor,
        currency=txn.currency,
        country=txn.country,
        card_country=txn.card_country,
        device_id=txn.device_id,
        channel=txn.channel.value,
    )


def decision_to_proto(decision: Decision) -> pb.Decision:
    # Empty fields are left unset (proto3 reads them as their defaults, and the bytes are the
    # same): most decisions are approvals with no rule hits, reasons or degradation, and each
    # keyword costs the constructor time (5.9 -> 2.7 µs per decision).
    optional = {}
    if decision.rule_hits:
        optional["rule_hits"] = [
            pb.RuleHit(rule_id=h.rule_id, action=h.action.value, reason=h.reason, evaluated=h.evaluated)
            for h in decision.rule_hits
        ]
    if decision.reasons:
        optional["reasons"] = [
            pb.ReasonCode(feature=r.feature, value=r.value, contribution=r.contribution, text=r.text)
            for r in decision.reasons
        ]
    if decision.degraded_reason:
        optional["degraded_reason"] = decision.degraded_reason
    score = decision.score
    return pb.Decision(
        transaction_id=decision.transaction.transaction_id,
        outcome=decision.outcome.value,
        score=score or 0.0,
        has_score=score is not None,
        model_version=decision.model_version,
        policy_arm=decision.policy_arm,
        propensity=decision.propensity,
        **optional,
    )
