"""The domain types every component shares: transaction, decision, rule hit, label, feature vector.

Money is integer minor units plus an ISO 4217 currency; time is a timezone-aware UTC datetime
(RFC 3339 on the wire). Types are msgspec structs so that decoding *is* validation: a wrong type,
a missing field or a constraint violation raises an error naming the field (``$.amount_minor``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import msgspec

from schema.features import FeatureValues

# A feature vector is the named model input for one transaction, in the order of the feature
# declaration (streaming.features.MODEL_FEATURES). What a decision carries is any read-only mapping
# of them (``schema.features.FeatureValues``): a dict, or the scorer's ``PackedFeatures``, which
# travels on `decisions` as float64s under a feature-set id (schema.features says why).
FeatureVector = dict[str, float]

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# Two and three characters; that they are capitals A-Z (and the currency a real one) is checked by
# ``schema.check_transaction``: a msgspec ``pattern`` runs Python's ``re`` for each field, ~1 µs
# apiece, which made these three fields 3 of the ~5 µs that decoding a payment cost at every door
# and in the feature stream.
CountryCode = Annotated[str, msgspec.Meta(min_length=2, max_length=2)]
CurrencyCode = Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
PositiveMinorUnits = Annotated[int, msgspec.Meta(gt=0, le=10**12)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# RFC 3339 with Z or an offset; a naive time is rejected rather than guessed.
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


# Input limits, beyond the field types above, that every door applies (schema.check_transaction,
# called by schema.decode_transaction for Kafka and by the gRPC door): documented in README "Input
# limits". An event outside them is refused with an error naming the field, never half-accepted.
#
# A raw event (one Kafka message value) larger than this is refused before it is parsed. A valid
# transaction is ~400 bytes and at most ~4 KiB (six 128-character ids of 4-byte characters);
# unknown fields are ignored for forward compatibility, and this bounds what they may cost.
MAX_EVENT_BYTES = 16 * 1024
# Event time must fall in [EARLIEST_EVENT_TIME, LATEST_EVENT_TIME): outside it a time is a
# placeholder or garbage (1970-01-01 is epoch zero, 9999-12-31 "never"), not a payment. Fixed, not
# relative to now, so old logs and simulated worlds replay the same way on any day.
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)
# At a live door, event time may run at most this far ahead of the door's wall clock: enough for
# clock skew and any wrong UTC offset (at most 14 h), and no more, because one payment dated far
# ahead would make every later payment of its card "late" in the feature stream.
MAX_AHEAD_S = 86_400.0
# Ids (transaction, card, customer, merchant, category, device) are 1-128 characters and printable
# (str.isprintable: no control, format, line-separator, surrogate or unassigned characters). Any
# script is fine; a NUL, a newline or a bidi override in an id breaks logs, keys and review pages.
ID_FIELDS = ("transaction_id", "card_id", "customer_id", "merchant_id", "merchant_category", "device_id")
# ISO 3166 alpha-2 country codes: two capitals A-Z (the payment's country and the card's).
COUNTRY_FIELDS = ("country", "card_country")
# ISO 4217 currencies a card payment can be in: the active ones plus those withdrawn since 2008
# (for replays of older logs); fund, metal, bond-unit, test (XTS) and no-currency (XXX) codes are not.
_ISO_4217 = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
    BZD CAD CDF CHF CLP CNY COP CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
    GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW
    KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN
    NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK
    SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS
    VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    BYR EEK HRK LTL LVL MRO SKK SLL STD VEF ZMK ZWL
"""
CURRENCIES = frozenset(_ISO_4217.split())


class Channel(StrEnum):
    CARD_PRESENT = "card_present"
    ECOMMERCE = "ecommerce"


class Transaction(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """One card payment authorisation request, as the gateway sends it."""

    transaction_id: NonEmptyStr
    event_time: AwareTime
    card_id: NonEmptyStr
    customer_id: NonEmptyStr
    merchant_id: NonEmptyStr
    merchant_category: NonEmptyStr
    amount_minor: PositiveMinorUnits
    currency: CurrencyCode
    country: CountryCode
    card_country: CountryCode
    device_id: NonEmptyStr
    channel: Channel = Channel.ECOMMERCE

    @property
    def event_ts(self) -> float:
        """Event time as Unix seconds: the clock every window runs on."""
        return self.event_time.timestamp()

    @property
    def amount(self) -> float:
        """Amount in major units (for features only; money is stored as minor units)."""
        return self.amount_minor / 100.0

    def __reduce__(self) -> tuple[Callable[[bytes], Transaction], tuple[bytes]]:
        """Pickled as its JSON: stream processes hand transactions to each other pickled, and
        msgspec's default (field by field, the datetime and the enum as objects) took ~10 µs there
        and back, the JSON ~2.3. JSON keeps the event time's UTC offset as given."""
        return _transaction_from_json, (_JSON.encode(self),)


_JSON = msgspec.json.Encoder()
_JSON_TRANSACTION = msgspec.json.Decoder(Transaction)


def _transaction_from_json(raw: bytes) -> Transaction:
    return _JSON_TRANSACTION.decode(raw)


class Outcome(StrEnum):
    APPROVE = "approve"
    FLAG = "flag"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Outcome.APPROVE: 0, Outcome.FLAG: 1, Outcome.BLOCK: 2}


# The hit a fail-open approval carries (scoring/fallback.py): approved without features, to be
# reviewed after authorisation. The review queue opens a ``post_auth`` case for each.
POST_AUTH_REVIEW_RULE = "degraded_post_auth_review@1"


class RuleHit(msgspec.Struct, frozen=True, kw_only=True):
    """A rule that fired (or could not be evaluated) for one transaction."""

    rule_id: str  # versioned, e.g. "velocity_card_10m@1"
    action: Outcome  # what the rule asks for; APPROVE for an informational hit
    reason: str  # human words: "7 transactions on this card in 10 min (limit 5)"
    evaluated: bool = True  # False: a feature it needs was missing; reason says which


class ReasonCode(msgspec.Struct, frozen=True, kw_only=True):
    """One feature's push on the model's score, in words an analyst reads.

    ``contribution`` is XGBoost's per-feature contribution (SHAP value, in log-odds): positive
    pushed towards fraud. Computed only for flagged and blocked decisions.
    """

    feature: str  # e.g. "card_count_1h"
    value: float  # the feature's value for this transaction
    contribution: float  # log-odds pushed onto the score
    text: str  # "7 payments on this card in the last hour (usual: 1)"


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What the scorer decided for one transaction, with everything needed to audit it later."""

    transaction: Transaction
    outcome: Outcome
    score: Probability | None  # None when the model could not be consulted
    model_version: str
    rule_hits: list[RuleHit]
    features: FeatureValues
    decided_at: AwareTime
    policy_arm: str = "default"
    # P(this outcome | transaction) under the policy that decided (its arm). The arm is fixed by a
    # hash of the card, so the only randomness is the exploration holdout (experiments.exploration):
    # 1.0 where exploration could not have changed the outcome, its rate where it did, 1 - rate
    # where it could have and did not. Off-policy evaluation weights by it (experiments.ope).
    propensity: Probability = 1.0
    degraded_reason: str | None = None  # set when a dependency was unavailable
    feature_staleness_s: float | None = None  # event time minus the newest event in the stored aggregates
    reasons: list[ReasonCode] = []  # top feature contributions, strongest first (flag and block only)

    @property
    def transaction_id(self) -> str:
        return self.transaction.transaction_id


class LabelSource(StrEnum):
    REVIEW = "review"  # an analyst's verdict on a flagged case
    CHARGEBACK = "chargeback"  # the issuer's report, days to weeks later


class Label(msgspec.Struct, frozen=True, kw_only=True):
    """Ground truth about one transaction, and when it became known."""

    transaction_id: NonEmptyStr
    is_fraud: bool
    source: LabelSource
    known_at: AwareTime
    author: NonEmptyStr
    note: str = ""
    # The labelled transaction's merchant, set by whoever publishes the label, so the feature stream
    # can update merchant fraud rates without looking the transaction up.
    merchant_id: str | None = None


class GroundTruth(msgspec.Struct, frozen=True, kw_only=True):
    """What really happened to a transaction: known to the simulator, never to the decision path.

    Used only to evaluate (fraud caught vs missed) and to play the stand-in reviewer.
    """

    transaction_id: str
    is_fraud: bool
    scenario: str | None = None  # e.g. "card_testing"; None for legitimate traffic
    changes: tuple[str, ...] = ()  # names of the drift-schedule changes that shaped this transaction


class DecisionThresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Score cut-offs that turn a fraud probability into an outcome: [flag, block) flags, >= block blocks."""

    flag: Probability = 0.7
    block: Probability = 0.9

    def __post_init__(self) -> None:
        if not self.flag <= self.block:
            raise ValueError(f"thresholds: flag ({self.flag}) must not exceed block ({self.block})")

    def outcome(self, score: float) -> Outcome:
        if score >= self.block:
            return Outcome.BLOCK
        if score >= self.flag:
            return Outcome.FLAG
        return Outcome.APPROVE


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An event that could not be accepted, kept with why, so that nothing vanishes."""

    reason: str  # names the field and the problem, e.g. "Expected `int` >= 1 - at `$.amount_minor`"
    source_topic: str
    partition: int
    offset: int
    payload: str  # the raw bytes as UTF-8 (invalid bytes replaced) so the record itself is valid JSON
    received_at: AwareTime
    # Set when ``payload`` holds only the first bytes of a larger event (schema.codec.dead_letter):
    # the original size in bytes.
    payload_bytes: int | None = None
