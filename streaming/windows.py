"""Time-bucketed window state per entity, and the feature computation that reads it.

One ``EntityState`` holds one entity's (e.g. one card's) recent transactions as per-bucket
totals. It is the unit of everything downstream: the dataflow updates it, the online store keeps
it as one whole value per entity (idempotent writes), the decision path reads it and folds in the
transaction being decided, and the offline builder replays history through the very same
functions. Parity between online and offline is therefore a property of the code path, which the
parity tests check end to end.

Why buckets rather than bytewax's sliding windows: those fall to ~3k events/s at 10k keys
(STACK-NOTES), while bucket totals cost a few dict operations per event at any cardinality.

The state is order-independent: applying the same set of events in any order gives the same
state (bucket totals and maxima commute, a label keeps its earliest known time, and expiry only
ever drops what no window can reach from the newest event seen). That is what makes a replay
after a restart converge to the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC

import msgspec

from schema import Channel, FeatureVector, Label, Transaction
from streaming.features import (
    ENTITY_KEY_FIELD,
    LABEL_FEATURES,
    MERCHANT_CATEGORIES,
    MODEL_FEATURES,
    RATIO_FEATURES,
    RECENCY_FEATURES,
    WINDOWED_FEATURES,
    Aggregation,
    LabelRateFeature,
    RecencyFeature,
    Window,
    WindowedFeature,
)


class Bucket(msgspec.Struct, array_like=True, gc=False):
    count: int = 0
    amount_minor: int = 0
    max_minor: int = 0
    distinct: dict[str, list[str]] = msgspec.field(default_factory=dict)


class EntityState(msgspec.Struct, array_like=True, gc=False):
    """One entity's recent history.

    ``buckets``: resolution (s) -> bucket start (Unix s) -> totals of the transactions in it.
    ``fraud_known``: transaction id -> when it first became known as fraud (label-rate features).
    """

    buckets: dict[int, dict[int, Bucket]] = msgspec.field(default_factory=dict)
    # resolution -> the sum of its buckets (count, amount, max): the window read at the newest
    # bucket, the common case, without a pass over the buckets. A function of ``buckets`` alone.
    totals: dict[int, Bucket] = msgspec.field(default_factory=dict)
    newest_ts: float = 0.0  # newest transaction event time applied
    events: int = 0
    fraud_known: dict[str, float] = msgspec.field(default_factory=dict)
    labels_newest_ts: float = 0.0  # newest label known_at applied


@dataclass(frozen=True)
class WindowPlan:
    """One window of one entity and everything read from it, aggregated in one pass per read."""

    resolution_s: int
    length_s: int
    distinct_fields: tuple[str, ...]
    features: tuple[tuple[str, Aggregation, str | None], ...]  # (name, aggregation, field)
    label_rates: tuple[str, ...]  # label-rate features whose denominator is this window's count
    uses_totals: bool  # the window is the longest at its resolution and counts nothing distinct


@dataclass(frozen=True)
class EntityLayout:
    """What state one entity needs and how it is read, derived from the feature declaration."""

    entity: str
    key_field: str
    plans: tuple[WindowPlan, ...]
    recency_features: tuple[RecencyFeature, ...]
    # (resolution, retention = longest window at it, fields kept distinct) for each bucket size
    resolutions: tuple[tuple[int, int, tuple[str, ...]], ...]
    label_retention_s: int  # longest label window; 0 when the entity has no label features

    def key_of(self, txn: Transaction) -> str:
        return getattr(txn, self.key_field)

    @property
    def retention_s(self) -> dict[int, int]:
        return {r: keep for r, keep, _ in self.resolutions}


def _plan(
    window: Window, features: list[WindowedFeature], label_features: list[LabelRateFeature], retention: int
) -> WindowPlan:
    distinct = tuple(sorted({f.field or "" for f in features if f.aggregation is Aggregation.DISTINCT}))
    return WindowPlan(
        resolution_s=window.resolution_s,
        length_s=window.length_s,
        distinct_fields=distinct,
        features=tuple((f.name, f.aggregation, f.field) for f in features),
        label_rates=tuple(f.name for f in label_features),
        uses_totals=window.length_s == retention and not distinct,
    )


def _layout(entity: str) -> EntityLayout:
    features = [f for f in WINDOWED_FEATURES if f.entity == entity]
    label_features = [f for f in LABEL_FEATURES if f.entity == entity]
    windows = sorted({f.window for f in features} | {f.window for f in label_features}, key=lambda w: w.length_s)
    retention: dict[int, int] = {}
    for w in windows:
        retention[w.resolution_s] = max(retention.get(w.resolution_s, 0), w.length_s)
    plans = tuple(
        _plan(
            w,
            [f for f in features if f.window == w],
            [f for f in label_features if f.window == w],
            retention[w.resolution_s],
        )
        for w in windows
    )
    distinct: dict[int, set[str]] = {}
    for plan in plans:
        distinct.setdefault(plan.resolution_s, set()).update(plan.distinct_fields)
    return EntityLayout(
        entity=entity,
        key_field=ENTITY_KEY_FIELD[entity],
        plans=plans,
        recency_features=tuple(f for f in RECENCY_FEATURES if f.entity == entity),
        resolutions=tuple((r, keep, tuple(sorted(distinct[r]))) for r, keep in sorted(retention.items())),
        label_retention_s=max((f.window.length_s for f in label_features), default=0),
    )


LAYOUTS: dict[str, EntityLayout] = {entity: _layout(entity) for entity in ENTITY_KEY_FIELD}


def entity_keys(transactions: Iterable[Transaction]) -> set[tuple[str, str]]:
    """The (entity, id) of every entity the transactions touch: the states a batch reads."""
    return {(entity, layout.key_of(t)) for t in transactions for entity, layout in LAYOUTS.items()}


def apply_transaction(state: EntityState, layout: EntityLayout, txn: Transaction) -> None:
    """Add one transaction to an entity's buckets and drop buckets no window can reach any more."""
    ts = txn.event_ts
    previous_newest = state.newest_ts
    state.newest_ts = max(state.newest_ts, ts)
    state.events += 1
    amount = txn.amount_minor
    for resolution, retention, distinct_fields in layout.resolutions:
        by_start = state.buckets.get(resolution)
        if by_start is None:
            by_start = state.buckets[resolution] = {}
            state.totals[resolution] = Bucket()
        total = state.totals[resolution]
        newest_start = int(state.newest_ts // resolution) * resolution
        horizon = newest_start - retention
        # Expire relative to the newest event, never to wall-clock time: the state must depend on
        # the events alone so that a replay reproduces it exactly. Only a crossed bucket boundary
        # can expire anything, so most events skip the scan.
        if newest_start != int(previous_newest // resolution) * resolution:
            _expire(by_start, total, horizon)
        start = int(ts // resolution) * resolution
        if start <= horizon:
            continue  # older than any window can reach from the newest event
        bucket = by_start.get(start)
        if bucket is None:
            bucket = by_start[start] = Bucket()
        bucket.count += 1
        bucket.amount_minor += amount
        total.count += 1
        total.amount_minor += amount
        if amount > bucket.max_minor:
            bucket.max_minor = amount
            if amount > total.max_minor:
                total.max_minor = amount
        for field in distinct_fields:
            values = bucket.distinct.setdefault(field, [])
            value = getattr(txn, field)
            if value not in values:
                values.append(value)


def _expire(by_start: dict[int, Bucket], total: Bucket, horizon: int) -> None:
    expired = [s for s in by_start if s <= horizon]
    if not expired:
        return
    lost_max = False
    for start in expired:
        old = by_start.pop(start)
        total.count -= old.count
        total.amount_minor -= old.amount_minor
        lost_max = lost_max or old.max_minor >= total.max_minor
    if lost_max:  # only then can the maximum have changed
        total.max_minor = max((b.max_minor for b in by_start.values()), default=0)


def apply_label(state: EntityState, layout: EntityLayout, label: Label) -> None:
    """Record a fraud label for an entity's label-rate features (non-fraud labels change nothing)."""
    if not layout.label_retention_s or not label.is_fraud:
        return
    known = label.known_at.timestamp()
    state.labels_newest_ts = max(state.labels_newest_ts, known)
    horizon = state.labels_newest_ts - layout.label_retention_s
    earlier = state.fraud_known.get(label.transaction_id)
    if known > horizon and (earlier is None or known < earlier):
        state.fraud_known[label.transaction_id] = known
    for tx in [tx for tx, at in state.fraud_known.items() if at <= horizon]:
        del state.fraud_known[tx]


def entity_features(state: EntityState | None, layout: EntityLayout, txn: Transaction) -> FeatureVector:
    """One entity's features at ``txn``'s event time, from its state before ``txn``, counting ``txn``.

    This runs for every entity of every decision: one pass over each window's buckets, no
    intermediate objects.
    """
    ts = txn.event_ts
    values: FeatureVector = {}
    for plan in layout.plans:
        resolution = plan.resolution_s
        newest_start = int(ts // resolution) * resolution
        oldest_excluded = newest_start - plan.length_s
        count, amount, largest = 1, txn.amount_minor, txn.amount_minor
        distinct = {f: {getattr(txn, f)} for f in plan.distinct_fields}
        buckets = state.buckets.get(resolution) if state is not None else None
        if buckets and plan.uses_totals and newest_start == int(state.newest_ts // resolution) * resolution:
            # Read at the newest bucket: the window is every bucket kept, already summed.
            total = state.totals[resolution]
            count += total.count
            amount += total.amount_minor
            largest = max(largest, total.max_minor)
        elif buckets:
            for start, b in buckets.items():
                if oldest_excluded < start <= newest_start:
                    count += b.count
                    amount += b.amount_minor
                    if b.max_minor > largest:
                        largest = b.max_minor
                    for f in plan.distinct_fields:
                        distinct[f].update(b.distinct.get(f, ()))
        for name, aggregation, field in plan.features:
            if aggregation is Aggregation.COUNT:
                values[name] = float(count)
            elif aggregation is Aggregation.SUM:
                values[name] = amount / 100.0
            elif aggregation is Aggregation.MEAN:
                values[name] = amount / 100.0 / count
            elif aggregation is Aggregation.MAX:
                values[name] = largest / 100.0
            else:
                values[name] = float(len(distinct[field or ""]))
        if plan.label_rates:
            known = state.fraud_known.values() if state is not None else ()
            frauds = sum(1 for at in known if ts - plan.length_s < at <= ts)
            for name in plan.label_rates:
                values[name] = frauds / count
    for f in layout.recency_features:
        has_history = state is not None and state.events > 0
        values[f.name] = min(max(ts - state.newest_ts, 0.0), f.cap_s) if has_history else f.cap_s
    return values


_CATEGORY_CODE = {name: float(i) for i, name in enumerate(MERCHANT_CATEGORIES)}


def context_features(txn: Transaction) -> FeatureVector:
    """Features of the transaction alone."""
    return {
        "amount": txn.amount_minor / 100.0,
        "hour_of_day": float(txn.event_time.astimezone(UTC).hour),
        "is_cross_border": float(txn.country != txn.card_country),
        "is_ecommerce": float(txn.channel is Channel.ECOMMERCE),
        "merchant_category_code": _CATEGORY_CODE.get(txn.merchant_category, -1.0),
    }


def feature_vector(states: Mapping[str, EntityState | None], txn: Transaction) -> FeatureVector:
    """The full model input for one transaction, in ``MODEL_FEATURES`` order.

    Args:
        states: each entity's state *before* this transaction (None: no history), by entity name.
        txn: the transaction being decided; it is counted in its own windows.
    """
    values = context_features(txn)
    for entity, layout in LAYOUTS.items():
        values.update(entity_features(states.get(entity), layout, txn))
    for ratio in RATIO_FEATURES:
        mean = values[ratio.denominator]
        values[ratio.name] = values["amount"] / mean if mean > 0 else 1.0
    return {name: values[name] for name in MODEL_FEATURES}
