"""The feature declaration: every feature the model sees, declared once.

This one declaration drives the bytewax dataflow (which buckets each entity keeps), the online
read in the decision path and the offline builder used for training, so a feature cannot be
computed two different ways. Windowed aggregates are kept as time buckets per entity
(see ``streaming.windows``); contextual features come from the transaction alone.

Window semantics (the same online and offline): a window of length W at resolution r, read at
event time t, covers the buckets whose start lies in ``(floor(t / r) * r - W, floor(t / r) * r]``,
i.e. the last W / r buckets including the current one, so it spans between W - r and W of history
before t. Buckets that start after t are never read: events the store already holds from t's
future do not leak into t's features at bucket granularity.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"  # of the amount, in major units
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
    entity: str  # the transaction field that keys the state: "card" -> card_id
    window: Window
    aggregation: Aggregation
    field: str | None = None  # for DISTINCT: the transaction field whose values are counted


WINDOW_10M = Window("10m", 600, 60)
WINDOW_1H = Window("1h", 3600, 60)
WINDOW_24H = Window("24h", 86400, 3600)

# Entities the online store keeps state for, and the transaction field that names each one.
ENTITY_KEY_FIELD: dict[str, str] = {"card": "card_id"}

WINDOWED_FEATURES: tuple[WindowedFeature, ...] = (
    WindowedFeature("card_txn_count_10m", "card", WINDOW_10M, Aggregation.COUNT),
    WindowedFeature("card_txn_count_1h", "card", WINDOW_1H, Aggregation.COUNT),
    WindowedFeature("card_amount_sum_1h", "card", WINDOW_1H, Aggregation.SUM),
    WindowedFeature("card_txn_count_24h", "card", WINDOW_24H, Aggregation.COUNT),
    WindowedFeature("card_amount_sum_24h", "card", WINDOW_24H, Aggregation.SUM),
    WindowedFeature("card_distinct_merchants_24h", "card", WINDOW_24H, Aggregation.DISTINCT, "merchant_id"),
    WindowedFeature("card_distinct_countries_24h", "card", WINDOW_24H, Aggregation.DISTINCT, "country"),
    WindowedFeature("card_distinct_devices_24h", "card", WINDOW_24H, Aggregation.DISTINCT, "device_id"),
)

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

# Ratios derived from a windowed feature and the transaction.
DERIVED_FEATURES: tuple[str, ...] = ("card_amount_to_mean_24h",)

# The model's input, in column order. Changing it changes the model contract: a model records
# the list it was trained on and the scorer refuses a model whose list differs.
MODEL_FEATURES: tuple[str, ...] = CONTEXT_FEATURES + tuple(f.name for f in WINDOWED_FEATURES) + DERIVED_FEATURES


def feature_by_name(name: str) -> WindowedFeature:
    for feature in WINDOWED_FEATURES:
        if feature.name == name:
            return feature
    raise KeyError(f"no windowed feature named {name!r}; declared: {[f.name for f in WINDOWED_FEATURES]}")
