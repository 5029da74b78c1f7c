"""The feature declaration: every feature the model sees, declared once.

This one declaration drives the bytewax dataflow (which entities keep state, which buckets and for
how long), the online read in the decision path and the offline builder used for training, so a
feature cannot be computed two different ways. Windowed aggregates are kept as time buckets per
entity (see ``streaming.windows``); contextual features come from the transaction alone.

Window semantics (the same online and offline): a window of length W at resolution r, read at
event time t, covers the buckets whose start lies in ``(floor(t / r) * r - W, floor(t / r) * r]``,
i.e. the last W / r buckets including the current one, so it spans between W - r and W of history
before t. A feature read at t counts the transaction at t itself. The online store is read before
the transaction is applied, and the stream applies events in event time, so events after t are
not in the buckets read for t (``docs/features.md`` gives the exact guarantee and its limits).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schema.features import register_feature_set


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"  # of the amount, in major units
    MEAN = "mean"  # of the amount
    MAX = "max"  # of the amount
    DISTINCT = "distinct"  # number of distinct values of a transaction field


@dataclass(frozen=True)
class Window:
    """A sliding window over event time, read from buckets of ``resolution_s`` seconds."""

    name: str
    length_s: int
    resolution_s: int

    def __post_init__(self) -> None:
        if self.length_s % self.resolution_s:
            raise ValueError(f"window {self.name}: length {self.length_s}s is not a multiple of its bucket")


@dataclass(frozen=True)
class WindowedFeature:
    """An aggregate over one entity's transactions in a sliding window."""

    name: str
    entity: str  # a key of ENTITY_KEY_FIELD: "card" -> card_id
    window: Window
    aggregation: Aggregation
    field: str | None = None  # for DISTINCT: the transaction field whose values are counted


@dataclass(frozen=True)
class LabelRateFeature:
    """Fraud labels that became known in the window, per transaction of the entity in the window.

    A label counts from its ``known_at`` on, never before: the chargeback for a payment made today
    arrives weeks later, and until then no feature may know about it (label delay respected).
    """

    name: str
    entity: str
    window: Window


@dataclass(frozen=True)
class RecencyFeature:
    """Seconds since the entity's previous transaction; ``cap_s`` when it has none."""

    name: str
    entity: str
    cap_s: float


@dataclass(frozen=True)
class RatioFeature:
    """The transaction's amount divided by a windowed mean (1.0 when the mean is zero)."""

    name: str
    denominator: str  # the name of a MEAN WindowedFeature


WINDOW_1M = Window("1m", 60, 5)
WINDOW_10M = Window("10m", 600, 60)
WINDOW_1H = Window("1h", 3600, 300)
WINDOW_24H = Window("24h", 86400, 3600)
WINDOW_7D = Window("7d", 7 * 86400, 6 * 3600)
WINDOW_30D = Window("30d", 30 * 86400, 86400)

# Entities the online store keeps state for, and the transaction field that names each one.
ENTITY_KEY_FIELD: dict[str, str] = {
    "card": "card_id",
    "customer": "customer_id",
    "merchant": "merchant_id",
    "device": "device_id",
}

AMOUNT_WINDOWS: tuple[Window, ...] = (WINDOW_1M, WINDOW_1H, WINDOW_24H, WINDOW_7D)
AMOUNT_AGGREGATIONS: tuple[Aggregation, ...] = (Aggregation.COUNT, Aggregation.SUM, Aggregation.MEAN, Aggregation.MAX)


def _amount_feature(entity: str, window: Window, aggregation: Aggregation) -> WindowedFeature:
    what = "txn_count" if aggregation is Aggregation.COUNT else f"amount_{aggregation}"
    return WindowedFeature(f"{entity}_{what}_{window.name}", entity, window, aggregation)


WINDOWED_FEATURES: tuple[WindowedFeature, ...] = (
    *(
        _amount_feature(entity, window, aggregation)
        for entity in ENTITY_KEY_FIELD
        for window in AMOUNT_WINDOWS
        for aggregation in AMOUNT_AGGREGATIONS
    ),
    # The card-testing velocity rule reads this one.
    WindowedFeature("card_txn_count_10m", "card", WINDOW_10M, Aggregation.COUNT),
    WindowedFeature("card_amount_mean_30d", "card", WINDOW_30D, Aggregation.MEAN),
    WindowedFeature("card_distinct_merchants_24h", "card", WINDOW_24H, Aggregation.DISTINCT, "merchant_id"),
    WindowedFeature("card_distinct_countries_24h", "card", WINDOW_24H, Aggregation.DISTINCT, "country"),
    WindowedFeature("card_distinct_devices_24h", "card", WINDOW_24H, Aggregation.DISTINCT, "device_id"),
)

LABEL_FEATURES: tuple[LabelRateFeature, ...] = (
    LabelRateFeature("merchant_fraud_rate_7d", "merchant", WINDOW_7D),
    LabelRateFeature("merchant_fraud_rate_30d", "merchant", WINDOW_30D),
)

RECENCY_FEATURES: tuple[RecencyFeature, ...] = (RecencyFeature("card_seconds_since_previous", "card", 30 * 86400.0),)

RATIO_FEATURES: tuple[RatioFeature, ...] = (RatioFeature("card_amount_to_mean_30d", "card_amount_mean_30d"),)

# Merchant categories the model knows; anything else is encoded as -1 ("unknown"), never an error,
# because a new category appearing in live traffic must not stop payments.
MERCHANT_CATEGORIES: tuple[str, ...] = (
    "grocery",
    "fuel",
    "restaurants",
    "electronics",
    "travel",
    "digital_goods",
    "fashion",
    "pharmacy",
    "entertainment",
    "jewelry",
)

CONTEXT_FEATURES: tuple[str, ...] = (
    "amount",
    "hour_of_day",
    "is_cross_border",
    "is_ecommerce",
    "merchant_category_code",
)

# Context features whose values are categories, not magnitudes: drift compares their category
# frequencies (with an "other" bucket) rather than quantile bins.
CATEGORICAL_FEATURES: tuple[str, ...] = ("hour_of_day", "is_cross_border", "is_ecommerce", "merchant_category_code")

# The model's input, in column order. Changing it changes the model contract: a model records
# the list it was trained on and the scorer refuses a model whose list differs.
MODEL_FEATURES: tuple[str, ...] = (
    CONTEXT_FEATURES
    + tuple(f.name for f in WINDOWED_FEATURES)
    + tuple(f.name for f in RECENCY_FEATURES)
    + tuple(f.name for f in RATIO_FEATURES)
    + tuple(f.name for f in LABEL_FEATURES)
)


# Registered so that a decision's packed features (schema.features) decode by this set's id.
MODEL_FEATURE_SET = register_feature_set(MODEL_FEATURES)


def feature_by_name(name: str) -> WindowedFeature:
    for feature in WINDOWED_FEATURES:
        if feature.name == name:
            return feature
    raise KeyError(f"no windowed feature named {name!r}; declared: {[f.name for f in WINDOWED_FEATURES]}")


def _check_declaration() -> None:
    names = list(MODEL_FEATURES)
    if len(names) != len(set(names)):
        raise ValueError(f"feature names declared twice: {sorted({n for n in names if names.count(n) > 1})}")
    windowed = {f.name: f for f in WINDOWED_FEATURES}
    for ratio in RATIO_FEATURES:
        if windowed.get(ratio.denominator) is None or windowed[ratio.denominator].aggregation != "mean":
            raise ValueError(f"{ratio.name}: denominator {ratio.denominator!r} is not a declared mean")
    for feature in (*WINDOWED_FEATURES, *LABEL_FEATURES, *RECENCY_FEATURES):
        if feature.entity not in ENTITY_KEY_FIELD:
            raise ValueError(f"{feature.name}: unknown entity {feature.entity!r}")


_check_declaration()
