"""Shared domain types and their wire encoding."""

from schema.codec import (
    InvalidEvent,
    decode_decision,
    decode_label,
    decode_transaction,
    encode,
    read_jsonl,
    write_jsonl,
)
from schema.labels import resolve_labels
from schema.types import (
    Channel,
    DeadLetter,
    Decision,
    DecisionThresholds,
    FeatureVector,
    GroundTruth,
    Label,
    LabelSource,
    Outcome,
    ReasonCode,
    RuleHit,
    Transaction,
)

__all__ = [
    "Channel",
    "DeadLetter",
    "Decision",
    "DecisionThresholds",
    "FeatureVector",
    "GroundTruth",
    "InvalidEvent",
    "Label",
    "LabelSource",
    "Outcome",
    "ReasonCode",
    "RuleHit",
    "Transaction",
    "decode_decision",
    "decode_label",
    "decode_transaction",
    "encode",
    "read_jsonl",
    "resolve_labels",
    "write_jsonl",
]
