"""The gRPC door's conversions: a request validates as a Kafka event would, and a reply carries
every field of the decision (empty ones left at proto3's defaults)."""

from datetime import UTC, datetime

import pytest

from schema import Channel, Decision, InvalidEvent, Outcome, ReasonCode, RuleHit
from scoring.proto import fraud_pb2 as pb
from scoring.wire import decision_to_proto, transaction_from_proto, transaction_to_proto
from tests.factories import txn

DECIDED_AT = datetime(2026, 11, 27, 12, tzinfo=UTC)


@pytest.mark.parametrize("channel", list(Channel))
def test_a_request_converts_back_to_the_transaction(channel):
    t = txn(3, channel=channel)
    assert transaction_from_proto(transaction_to_proto(t)) == t


def test_an_empty_channel_means_the_default():
    msg = transaction_to_proto(txn(3))
    msg.channel = ""
    assert transaction_from_proto(msg).channel is Channel.ECOMMERCE


@pytest.mark.parametrize("channel", ["", "ecommerce"])
@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("card_id", "", "$.card_id"),
        ("amount_minor", 0, "$.amount_minor"),
        ("country", "de", "$.country"),
        ("card_country", "ÄB", "$.card_country"),  # capitals, but not A-Z
        ("currency", "ZZZ", "$.currency"),
        ("event_time", "2026-11-27T12:00:00", "$.event_time"),  # no offset
        ("device_id", "dev\n1", "$.device_id"),
    ],
)
def test_a_bad_field_is_named_whichever_path_reads_it(channel, field, value, where):
    msg = transaction_to_proto(txn(3))
    msg.channel = channel
    setattr(msg, field, value)
    with pytest.raises(InvalidEvent, match=rf"at `\{where}`"):
        transaction_from_proto(msg)


def _decision(**overrides) -> Decision:
    fields = dict(
        transaction=txn(5), outcome=Outcome.APPROVE, score=0.02, model_version="xgb-0007", rule_hits=[],
        features={}, decided_at=DECIDED_AT, policy_arm="champion", propensity=0.9,
    )  # fmt: skip
    return Decision(**{**fields, **overrides})


def _fields(message: pb.Decision) -> dict:
    reply = pb.Decision.FromString(message.SerializeToString())
    return {
        "transaction_id": reply.transaction_id,
        "outcome": reply.outcome,
        "score": reply.score if reply.has_score else None,
        "model_version": reply.model_version,
        "rule_hits": [(h.rule_id, h.action, h.reason, h.evaluated) for h in reply.rule_hits],
        "degraded_reason": reply.degraded_reason or None,
        "policy_arm": reply.policy_arm,
        "propensity": reply.propensity,
        "reasons": [(r.feature, r.value, r.contribution, r.text) for r in reply.reasons],
    }


def test_a_plain_approval_carries_its_score_model_arm_and_propensity():
    assert _fields(decision_to_proto(_decision())) == {
        "transaction_id": "tx-test-000005",
        "outcome": "approve",
        "score": pytest.approx(0.02),
        "model_version": "xgb-0007",
        "rule_hits": [],
        "degraded_reason": None,
        "policy_arm": "champion",
        "propensity": pytest.approx(0.9),
        "reasons": [],
    }


def test_hits_reasons_and_a_degradation_all_reach_the_reply():
    d = _decision(
        outcome=Outcome.FLAG,
        score=None,
        rule_hits=[
            RuleHit(rule_id="velocity_card_10m@1", action=Outcome.FLAG, reason="7 in 10 min"),
            RuleHit(rule_id="amount_ceiling@1", action=Outcome.APPROVE, reason="no amount", evaluated=False),
        ],
        reasons=[ReasonCode(feature="card_txn_count_1h", value=7.0, contribution=1.5, text="7 payments")],
        degraded_reason="model_unavailable: RuntimeError",
    )
    fields = _fields(decision_to_proto(d))
    assert fields["outcome"] == "flag" and fields["score"] is None
    assert fields["rule_hits"] == [
        ("velocity_card_10m@1", "flag", "7 in 10 min", True),
        ("amount_ceiling@1", "approve", "no amount", False),
    ]
    assert fields["reasons"] == [("card_txn_count_1h", 7.0, 1.5, "7 payments")]
    assert fields["degraded_reason"] == "model_unavailable: RuntimeError"


def test_a_batch_reply_filled_in_place_is_the_message_built_whole():
    """``fill_decision`` writes into ``DecisionBatch.decisions.add()``; the bytes must be those of
    the same decision built with every field given to the constructor."""
    from scoring.wire import fill_decision

    plain = _decision()
    rich = _decision(
        outcome=Outcome.BLOCK,
        score=None,
        rule_hits=[RuleHit(rule_id="blocked_country@1", action=Outcome.BLOCK, reason="KP")],
        reasons=[ReasonCode(feature="amount", value=9.0, contribution=0.5, text="large")],
        degraded_reason="shed: queued over 50 ms",
    )
    reply = pb.DecisionBatch()
    for d in (plain, rich):
        fill_decision(reply.decisions.add(), d)
    whole = pb.DecisionBatch(
        decisions=[
            pb.Decision(
                transaction_id="tx-test-000005", outcome="approve", score=0.02, has_score=True,
                model_version="xgb-0007", policy_arm="champion", propensity=0.9,
            ),
            pb.Decision(
                transaction_id="tx-test-000005", outcome="block", model_version="xgb-0007", policy_arm="champion",
                propensity=0.9, degraded_reason="shed: queued over 50 ms",
                rule_hits=[pb.RuleHit(rule_id="blocked_country@1", action="block", reason="KP", evaluated=True)],
                reasons=[pb.ReasonCode(feature="amount", value=9.0, contribution=0.5, text="large")],
            ),
        ]
    )  # fmt: skip
    assert reply.SerializeToString() == whole.SerializeToString()
