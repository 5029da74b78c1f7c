"""Time-bucketed window state per entity, and the feature computation that reads it.

One ``EntityState`` holds one entity's (e.g. one card's) recent transactions as per-bucket
totals. It is the unit of everything downstream: the dataflow updates it, the online store keeps
it as one whole value per entity (idempotent writes), the decision path reads it and folds in the
transaction being decided, and the offline builder replays history through the very same
functions. Parity between online and offline is therefore a property of the code path, which the
parity tests check end to end.

Why buckets rather than bytewax's sliding windows: those fall to ~3k events/s at 10k keys
(STACK-NOTES), while a bucket update costs one compiled call per entity and event at any cardinality.

The state is order-independent: applying the same set of events in any order gives the same
state (bucket totals and maxima commute, rows stay sorted by bucket start, distinct values are a
sorted set, a label keeps its earliest known time, and expiry only
ever drops what no window can reach from the newest event seen). That is what makes a replay
after a restart converge to the same values.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from operator import attrgetter

import msgspec
import numpy as np

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

# The transaction fields some feature counts distinct values of, and their codes in the state (and
# in the packed layout, ``streaming.packed``).
DISTINCT_FIELDS: tuple[str, ...] = tuple(
    sorted({f.field for f in WINDOWED_FEATURES if f.aggregation is Aggregation.DISTINCT and f.field})
)
FIELD_CODE: dict[str, int] = {field: code for code, field in enumerate(DISTINCT_FIELDS)}


@lru_cache(maxsize=1 << 17)
def value_hash(value: str) -> int:
    """A stable 64-bit hash of a distinct value (Python's ``hash`` differs per process)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little", signed=True)


# One bucket, as a row of the packed layout: (resolution_s, start, count, amount_minor, max_minor),
# and one distinct value seen in a bucket: (resolution_s, field code, bucket start, value hash);
# little-endian int64 words.
ROW = struct.Struct("<5q")
DISTINCT_ROW = struct.Struct("<4q")


class EntityState(msgspec.Struct, array_like=True, gc=False):
    """One entity's recent history, kept as the rows it is stored as (``streaming.packed``).

    ``buckets``: the ``ROW``s of every bucket size of the entity's layout, sorted by (resolution,
    start), so each size's newest bucket is its last row. ``distinct``: the ``DISTINCT_ROW``s, the
    distinct values (hashed) each bucket has seen, for the DISTINCT features, sorted. Both are
    updated in place by one compiled call per payment (``streaming.state_kernel``): no Python
    object per row, and packing a state for Redis is a copy, not a rebuild.
    ``fraud_known``: transaction id -> when it first became known as fraud (label-rate features).
    """

    buckets: bytearray = msgspec.field(default_factory=bytearray)
    distinct: bytearray = msgspec.field(default_factory=bytearray)
    newest_ts: float = 0.0  # newest transaction event time applied
    events: int = 0
    fraud_known: dict[str, float] = msgspec.field(default_factory=dict)
    labels_newest_ts: float = 0.0  # newest label known_at applied


def bucket_rows(state: EntityState) -> Iterator[tuple[int, int, int, int, int]]:
    """The state's bucket rows: (resolution_s, start, count, amount_minor, max_minor)."""
    return ROW.iter_unpack(state.buckets)


def distinct_rows(state: EntityState) -> Iterator[tuple[int, int, int, int]]:
    """The state's distinct rows: (resolution_s, field code, bucket start, value hash)."""
    return DISTINCT_ROW.iter_unpack(state.distinct)


@dataclass(frozen=True)
class WindowPlan:
    """One window of one entity and everything read from it, aggregated in one pass per read."""

    resolution_s: int
    length_s: int
    distinct_fields: tuple[str, ...]
    features: tuple[tuple[str, Aggregation, str | None], ...]  # (name, aggregation, field)
    label_rates: tuple[str, ...]  # label-rate features whose denominator is this window's count


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
    # ``resolutions`` as the compiled update reads them (``streaming.state_kernel``): per bucket
    # size its resolution, retention, and first and number of distinct fields in ``distinct_fields``
    plan: np.ndarray = dataclass_field(compare=False)
    distinct_fields: tuple[str, ...]  # in ``plan`` order
    distinct_codes: np.ndarray = dataclass_field(compare=False)  # their ``FIELD_CODE``s
    # The most rows one payment adds (one per bucket size; one per distinct field), as zero bytes
    spare_buckets: bytes
    spare_distinct: bytes

    @cached_property
    def distinct_values(self) -> Callable[[Transaction], tuple[str, ...]]:
        """A payment's values of ``distinct_fields``, as a tuple."""
        if len(self.distinct_fields) == 1:
            name = self.distinct_fields[0]
            return lambda txn: (getattr(txn, name),)
        return attrgetter(*self.distinct_fields)

    @cached_property
    def hashes_struct(self) -> struct.Struct:
        return struct.Struct(f"<{len(self.distinct_fields)}q")

    def key_of(self, txn: Transaction) -> str:
        return getattr(txn, self.key_field)

    @property
    def retention_s(self) -> dict[int, int]:
        return {r: keep for r, keep, _ in self.resolutions}


def _plan(window: Window, features: list[WindowedFeature], label_features: list[LabelRateFeature]) -> WindowPlan:
    distinct = tuple(sorted({f.field or "" for f in features if f.aggregation is Aggregation.DISTINCT}))
    return WindowPlan(
        resolution_s=window.resolution_s,
        length_s=window.length_s,
        distinct_fields=distinct,
        features=tuple((f.name, f.aggregation, f.field) for f in features),
        label_rates=tuple(f.name for f in label_features),
    )


def _layout(entity: str) -> EntityLayout:
    features = [f for f in WINDOWED_FEATURES if f.entity == entity]
    label_features = [f for f in LABEL_FEATURES if f.entity == entity]
    windows = sorted({f.window for f in features} | {f.window for f in label_features}, key=lambda w: w.length_s)
    retention: dict[int, int] = {}
    for w in windows:
        retention[w.resolution_s] = max(retention.get(w.resolution_s, 0), w.length_s)
    plans = tuple(
        _plan(w, [f for f in features if f.window == w], [f for f in label_features if f.window == w]) for w in windows
    )
    distinct: dict[int, set[str]] = {}
    for plan in plans:
        distinct.setdefault(plan.resolution_s, set()).update(plan.distinct_fields)
    resolutions = tuple((r, keep, tuple(sorted(distinct[r]))) for r, keep in sorted(retention.items()))
    distinct_fields = tuple(f for _, _, fields in resolutions for f in fields)
    return EntityLayout(
        entity=entity,
        key_field=ENTITY_KEY_FIELD[entity],
        plans=plans,
        recency_features=tuple(f for f in RECENCY_FEATURES if f.entity == entity),
        resolutions=resolutions,
        label_retention_s=max((f.window.length_s for f in label_features), default=0),
        plan=_update_plan(resolutions),
        distinct_fields=distinct_fields,
        distinct_codes=np.array([FIELD_CODE[f] for f in distinct_fields], dtype=np.int64),
        spare_buckets=bytes(ROW.size * len(resolutions)),
        spare_distinct=bytes(DISTINCT_ROW.size * len(distinct_fields)),
    )


def _update_plan(resolutions: tuple[tuple[int, int, tuple[str, ...]], ...]) -> np.ndarray:
    plan, first = [], 0
    for resolution, retention, fields in resolutions:
        plan.append((resolution, retention, first, len(fields)))
        first += len(fields)
    return np.array(plan, dtype=np.int64).reshape(-1, 4)


LAYOUTS: dict[str, EntityLayout] = {entity: _layout(entity) for entity in ENTITY_KEY_FIELD}


# (entity, the getter of a payment's id for it), in LAYOUTS order: what a batch read maps over its
# payments and what the stream routes each payment by (an attrgetter per entity, not a method call
# per entity per payment).
ENTITY_KEY_GETTERS = tuple((entity, attrgetter(layout.key_field)) for entity, layout in LAYOUTS.items())


def entity_keys(transactions: Sequence[Transaction]) -> set[tuple[str, str]]:
    """The (entity, id) of every entity the transactions touch: the states a batch reads."""
    return {(entity, key) for entity, key_of in ENTITY_KEY_GETTERS for key in map(key_of, transactions)}


def apply_transaction(state: EntityState, layout: EntityLayout, txn: Transaction, ts: float | None = None) -> None:
    """Add one transaction to an entity's buckets and drop buckets no window can reach any more.

    ``ts``: ``txn.event_ts``, when the caller has it already (a payment updates four entities).

    Per bucket size: the payment's bucket is the newest (add to it), newer (a new row, and rows
    older than the retention go, with the distinct values they saw), an older one still within
    the retention (add to it or open it where it sorts), or older than that (ignored). Expiry is
    relative to the newest event, never to the wall clock, so a replay reproduces the state exactly.
    """
    if ts is None:
        ts = txn.event_ts
    # Bucket starts are whole seconds: int() floors a positive time, as floor division would.
    second, previous = int(ts), int(state.newest_ts)
    if ts > state.newest_ts:
        state.newest_ts = ts
    state.events += 1
    buckets, distinct = state.buckets, state.distinct
    buckets += layout.spare_buckets  # room for the rows this payment can add
    hashes = b""
    if layout.distinct_fields:
        hashes = layout.hashes_struct.pack(*map(value_hash, layout.distinct_values(txn)))
        distinct += layout.spare_distinct
    in_use = _update_rows(
        buckets, distinct, second, previous, txn.amount_minor, layout.plan, layout.distinct_codes, hashes
    )
    del buckets[in_use[0] * 8 :]  # the spare rows it did not use
    del distinct[in_use[1] * 8 :]


# A payment for compiling the kernels before traffic (``warm_up`` here and in ``batch_features``).
WARM_UP_PAYMENT = Transaction(
    transaction_id="warm-up",
    event_time=datetime.fromtimestamp(86400, UTC),
    card_id="c",
    customer_id="u",
    merchant_id="m",
    merchant_category=MERCHANT_CATEGORIES[0],
    amount_minor=1,
    currency="EUR",
    country="DE",
    card_country="DE",
    device_id="d",
)


def warm_up() -> None:
    """Compile (or load from the disk cache) the state update now, so that the stream's first
    batch does not wait for it (~3 s the first time, ~0.8 s from the cache)."""
    for layout in LAYOUTS.values():
        apply_transaction(EntityState(), layout, WARM_UP_PAYMENT)


def _update_rows(*args: object) -> tuple[int, int]:
    """``streaming.state_kernel.update_rows``, which replaces this on the first call: numba loads
    on the first update, not when the scorer or the CLI imports this module."""
    global _update_rows
    from streaming.state_kernel import update_rows

    _update_rows = update_rows
    return update_rows(*args)


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

    The readable specification of the read: the decision path and the offline builder compute the
    same values from packed states (``streaming.batch_features``), and the tests hold them to it.
    """
    ts = txn.event_ts
    values: FeatureVector = {}
    for plan in layout.plans:
        resolution = plan.resolution_s
        newest_start = int(ts // resolution) * resolution
        oldest_excluded = newest_start - plan.length_s
        count, amount, largest = 1, txn.amount_minor, txn.amount_minor
        distinct = {f: {value_hash(getattr(txn, f))} for f in plan.distinct_fields}
        for r, start, n, amount_sum, bucket_max in bucket_rows(state) if state is not None else ():
            if r == resolution and oldest_excluded < start <= newest_start:
                count += n
                amount += amount_sum
                largest = max(largest, bucket_max)
        if plan.distinct_fields and state is not None:
            for r, code, start, value in distinct_rows(state):
                if r == resolution and oldest_excluded < start <= newest_start:
                    distinct[DISTINCT_FIELDS[code]].add(value)
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
