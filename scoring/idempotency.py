"""Idempotent decisions by transaction id: the record the scorer keeps of each decision it made.

A payment authorisation may be retried (a timeout, a scorer restart, another replica). The gRPC
door answers a retry with the decision already made for that transaction id, on any scorer, for
``DECISION_TTL_S``, and publishes only the first. The engine looks the batch's ids up in the same
round trip as its features (``OnlineFeatureStore.read_batch``), decides only the new ones, then
records them first-writer-wins in one script call (``OnlineFeatureStore.record_decisions``): when
two attempts race, the later one replies with the first one's decision and publishes nothing.
The records are fields of a few hashes, by id and event time (``OnlineFeatureStore.decision_key``).

The record is what the reply needs, not the audit record (that is on `decisions`): no features,
no transaction, no reason codes (``fraud serve`` replies before explaining). About 60 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

from schema import Decision, Outcome, RuleHit, Transaction

# How long a retry at least gets the same decision: well past a gateway's retries of an
# authorisation (seconds to minutes). Redis holds rate x (TTL + up to 10 minutes) records, ~144
# bytes each as a hash field with a UUID transaction id (redis 6.2, measured): ~5-6 GB at 10,000
# payments/s for an hour, where 24 hours (the first default) would be ~130 GB. A retry later than
# this may be decided again, and consumers keep the first decision per id (README, "Idempotency
# and restarts"). `FRAUD_DECISION_TTL_S` sets it.
DECISION_TTL_S = 3600


class DecisionRecord(msgspec.Struct, array_like=True, frozen=True):
    outcome: Outcome
    score: float | None
    model_version: str
    rule_hits: list[RuleHit]
    decided_at: datetime
    policy_arm: str
    propensity: float
    degraded_reason: str | None
    feature_staleness_s: float | None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(DecisionRecord)


def encode_record(d: Decision) -> bytes:
    return _encoder.encode(
        DecisionRecord(
            d.outcome,
            d.score,
            d.model_version,
            d.rule_hits,
            d.decided_at,
            d.policy_arm,
            d.propensity,
            d.degraded_reason,
            d.feature_staleness_s,
        )
    )


def replayed(txn: Transaction, raw: bytes) -> Decision:
    """The recorded decision for ``txn``, as the reply to a retry (no features: they are on the
    first decision's record in `decisions`)."""
    r = _decoder.decode(raw)
    return Decision(
        transaction=txn,
        outcome=r.outcome,
        score=r.score,
        model_version=r.model_version,
        rule_hits=r.rule_hits,
        features={},
        decided_at=r.decided_at,
        policy_arm=r.policy_arm,
        propensity=r.propensity,
        degraded_reason=r.degraded_reason,
        feature_staleness_s=r.feature_staleness_s,
    )


@dataclass(frozen=True)
class OnceDecided:
    """Decisions for a batch, in order; ``new[i]`` False where decision i is a replay (recorded
    earlier, lost the race to another attempt, or a repeat of an id earlier in the batch): the
    caller publishes only the new ones."""

    decisions: list[Decision]
    new: list[bool]
