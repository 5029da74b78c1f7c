from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transaction(_message.Message):
    __slots__ = ("transaction_id", "event_time", "card_id", "customer_id", "merchant_id", "merchant_category", "amount_minor", "currency", "country", "card_country", "device_id", "channel")
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
    def __init__(self, transaction_id: _Optional[str] = ..., event_time: _Optional[str] = ..., card_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., merchant_id: _Optional[str] = ..., merchant_category: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., country: _Optional[str] = ..., card_country: _Optional[str] = ..., device_id: _Optional[str] = ..., channel: _Optional[str] = ...) -> None: ...

class TransactionBatch(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

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
    def __init__(self, rule_id: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., evaluated: _Optional[bool] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("transaction_id", "outcome", "score", "has_score", "model_version", "rule_hits", "degraded_reason", "policy_arm", "propensity", "error")
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
    def __init__(self, transaction_id: _Optional[str] = ..., outcome: _Optional[str] = ..., score: _Optional[float] = ..., has_score: _Optional[bool] = ..., model_version: _Optional[str] = ..., rule_hits: _Optional[_Iterable[_Union[RuleHit, _Mapping]]] = ..., degraded_reason: _Optional[str] = ..., policy_arm: _Optional[str] = ..., propensity: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class DecisionBatch(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...
