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
    msg = pb.Decision()
    fill_decision(msg, decision)
    return msg


def fill_decision(msg: pb.Decision, decision: Decision) -> None:
    """Write ``decision`` into an empty ``msg``: a reply batch's entries are filled where they
    stand (``DecisionBatch.decisions.add()``), since building a message and then adding it copies
    it (4.1 -> 1.9 µs per decision at 60 in a batch). Empty fields stay unset (proto3 reads them as
    their defaults, and the bytes are the same): most decisions are approvals with no rule hits,
    reasons or degradation."""
    msg.transaction_id = decision.transaction.transaction_id
    msg.outcome = decision.outcome  # an Outcome is its str value; .value is an enum lookup
    score = decision.score
    if score is not None:
        msg.score = score
        msg.has_score = True
    msg.model_version = decision.model_version
    msg.policy_arm = decision.policy_arm
    msg.propensity = decision.propensity
    if decision.rule_hits:
        add_hit = msg.rule_hits.add
        for h in decision.rule_hits:
            add_hit(rule_id=h.rule_id, action=h.action.value, reason=h.reason, evaluated=h.evaluated)
    if decision.reasons:
        add_reason = msg.reasons.add
        for r in decision.reasons:
            add_reason(feature=r.feature, value=r.value, contribution=r.contribution, text=r.text)
    if decision.degraded_reason:
        msg.degraded_reason = decision.degraded_reason
