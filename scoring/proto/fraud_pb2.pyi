from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class Transaction(_message.Message):
    __slots__ = (
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
        "channel",
    )
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    CARD_COUNTRY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    event_time: str
    card_id: str
    customer_id: str
    merchant_id: str
    merchant_category: str
    amount_minor: int
    currency: str
    country: str
    card_country: str
    device_id: str
    channel: str
    def __init__(
        self,
        transaction_id: str | None = ...,
        event_time: str | None = ...,
        card_id: str | None = ...,
        customer_id: str | None = ...,
        merchant_id: str | None = ...,
        merchant_category: str | None = ...,
        amount_minor: int | None = ...,
        currency: str | None = ...,
        country: str | None = ...,
        card_country: str | None = ...,
        device_id: str | None = ...,
        channel: str | None = ...,
    ) -> None: ...

class TransactionBatch(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, transactions: _Iterable[Transaction | _Mapping] | None = ...) -> None: ...

class RuleHit(_message.Message):
    __slots__ = ("rule_id", "action", "reason", "evaluated")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    action: str
    reason: str
    evaluated: bool
    def __init__(
        self,
        rule_id: str | None = ...,
        action: str | None = ...,
        reason: str | None = ...,
        evaluated: bool | None = ...,
    ) -> None: ...

class ReasonCode(_message.Message):
    __slots__ = ("feature", "value", "contribution", "text")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    contribution: float
    text: str
    def __init__(
        self,
        feature: str | None = ...,
        value: float | None = ...,
        contribution: float | None = ...,
        text: str | None = ...,
    ) -> None: ...

class Decision(_message.Message):
    __slots__ = (
        "transaction_id",
        "outcome",
        "score",
        "has_score",
        "model_version",
        "rule_hits",
        "degraded_reason",
        "policy_arm",
        "propensity",
        "error",
        "reasons",
    )
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RULE_HITS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_ARM_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    outcome: str
    score: float
    has_score: bool
    model_version: str
    rule_hits: _containers.RepeatedCompositeFieldContainer[RuleHit]
    degraded_reason: str
    policy_arm: str
    propensity: float
    error: str
    reasons: _containers.RepeatedCompositeFieldContainer[ReasonCode]
    def __init__(
        self,
        transaction_id: str | None = ...,
        outcome: str | None = ...,
        score: float | None = ...,
        has_score: bool | None = ...,
        model_version: str | None = ...,
        rule_hits: _Iterable[RuleHit | _Mapping] | None = ...,
        degraded_reason: str | None = ...,
        policy_arm: str | None = ...,
        propensity: float | None = ...,
        error: str | None = ...,
        reasons: _Iterable[ReasonCode | _Mapping] | None = ...,
    ) -> None: ...

class DecisionBatch(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Iterable[Decision | _Mapping] | None = ...) -> None: ...
