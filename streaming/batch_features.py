"""Point-in-time features for a batch of payments, computed by a compiled loop over packed entity states.

This is the feature computation the system serves and trains on: the decision path calls it once
per batch, and the offline builder once per run of history between two labels, so online and
offline features come from the same code. ``streaming.windows.feature_vector`` is the readable
specification (one payment, one entity at a time, plain Python); a property test holds the two
equal, value for value.

Semantics: the payments are taken in the order given. Payment j sees each of its entities'
stored state plus every earlier payment of the batch on that entity whose ``fold`` flag is set,
exactly as if ``apply_transaction`` had applied those before j was read. So two payments on one
card in one batch see each other as they would in a replay of the log, and a bucket the folded
payments have pushed past retention is gone for j as it would be in the state: a bucket counts in
a window when its start lies in the window and after the retention horizon of the entity's newest
event, the folded payments' included. Label rates count the stored fraud labels known in
``(t - window, t]`` over the window's count; recency is measured from that same newest event.

How: Python only turns the payments into a few arrays (event times, amounts, fold flags, one number
per (entity kind, payment) naming its entity, the value hashes of the distinct-counted fields) and
joins the entities' packed states into one int64 buffer; one numba kernel
(``streaming.feature_kernel.window_features``, imported on the first batch) then walks the
payments in order. Per payment and entity it sums each window from one pass over the entity's
bucket rows (sorted by bucket size and start, as the layout stores them; an entity holds
only what its longest windows reach), adds the earlier folded payments of the batch on that entity
(a chain through the batch, so the work is the pairs of payments on one entity, which batches keep
small: ``scoring.batcher`` cuts them to ~20 ms of work), counts distinct values by binary search in
the sorted distinct rows and a sort of the few in the window, and writes the row. Nothing runs per
feature or per batch in Python, so the fixed cost of a batch is a few microseconds plus one call.
Integer totals are exact; every float is computed by the same operations, in the same order, as
the specification, so the two agree bit for bit.

The kernel is compiled on first use and cached on disk (``cache=True``); a server calls
``warm_up`` before it takes traffic. The feature declaration and the packed layout reach the
kernel as array arguments, never as globals: numba freezes globals into the compiled code, and its
disk cache is keyed on the kernel's own file (``streaming/feature_kernel.py``) alone, so a changed
declaration elsewhere would be served stale.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter

import numpy as np

from schema import Channel, Transaction
from streaming.features import MERCHANT_CATEGORIES, MODEL_FEATURES, RATIO_FEATURES, Aggregation
from streaming.packed import BUCKET_WORDS, DISTINCT_WORDS, FIELD_CODE, HEADER_WORDS, MAGIC, value_hash
from streaming.windows import ENTITY_KEY_GETTERS, LAYOUTS, WARM_UP_PAYMENT

COLUMN: dict[str, int] = {name: i for i, name in enumerate(MODEL_FEATURES)}
_CATEGORY_CODE = {name: float(i) for i, name in enumerate(MERCHANT_CATEGORIES)}
K = len(ENTITY_KEY_GETTERS)
_DISTINCT_FIELDS = tuple(attrgetter(field) for field in sorted(FIELD_CODE, key=FIELD_CODE.__getitem__))
_EVENT_TS, _AMOUNT, _CATEGORY = attrgetter("event_ts"), attrgetter("amount_minor"), attrgetter("merchant_category")
_AGGREGATION_CODE = {Aggregation.COUNT: 0, Aggregation.SUM: 1, Aggregation.MEAN: 2, Aggregation.MAX: 3}
_BIG_ENDIAN = sys.byteorder == "big"


class _Tables:
    """The feature declaration as int64 tables the kernel walks: every window of every entity kind
    is one *plan*, and every feature names its plan and its output column."""

    def __init__(self) -> None:
        plans: list[tuple[int, int, int, int]] = []  # (kind, bucket size, length, retention)
        aggregates: list[tuple[int, int, int]] = []  # (plan, aggregation code, column)
        distincts: list[tuple[int, int, int]] = []  # (plan, field code, column)
        label_rates: list[tuple[int, int]] = []  # (plan, column)
        recency: list[tuple[int, int]] = []  # (kind, column)
        caps: list[float] = []
        for kind, layout in enumerate(LAYOUTS.values()):
            for plan in layout.plans:
                number = len(plans)
                if any(p[0] == kind and p[1] == plan.resolution_s for p in plans):  # docs/features.md
                    raise ValueError(f"{layout.entity}: two windows with {plan.resolution_s}s buckets")
                plans.append((kind, plan.resolution_s, plan.length_s, layout.retention_s[plan.resolution_s]))
                for name, aggregation, field in plan.features:
                    if aggregation is Aggregation.DISTINCT:
                        distincts.append((number, FIELD_CODE[field or ""], COLUMN[name]))
                    else:
                        aggregates.append((number, _AGGREGATION_CODE[aggregation], COLUMN[name]))
                label_rates += [(number, COLUMN[name]) for name in plan.label_rates]
            recency += [(kind, COLUMN[f.name]) for f in layout.recency_features]
            caps += [float(f.cap_s) for f in layout.recency_features]
        self.plans = _table(plans, 4)
        # Each kind's plans by bucket size, padded (the kernel merges them with sorted bucket rows).
        mine = [
            sorted((n for n, plan in enumerate(plans) if plan[0] == k), key=lambda n: plans[n][1]) for k in range(K)
        ]
        most = max(map(len, mine))
        self.kind_plans = _table([m + [0] * (most - len(m)) for m in mine], most)
        self.kind_plan_count = np.array([len(m) for m in mine], dtype=np.int64)
        self.aggregates = _table(aggregates, 3)
        self.distincts = _table(distincts, 3)
        self.label_rates = _table(label_rates, 2)
        self.recency = _table(recency, 2)
        self.recency_caps = np.array(caps, dtype=np.float64)
        self.ratios = _table([(COLUMN[r.denominator], COLUMN[r.name]) for r in RATIO_FEATURES], 2)
        # amount, hour of day, then the columns of the context flags Python reads per payment
        context = ("amount", "hour_of_day", "is_cross_border", "is_ecommerce", "merchant_category_code")
        self.context = np.array([COLUMN[name] for name in context], dtype=np.int64)
        self.layout = np.array([MAGIC, HEADER_WORDS, BUCKET_WORDS, DISTINCT_WORDS], dtype=np.int64)
        for table in vars(self).values():
            table.flags.writeable = False


def _table(rows: Sequence[tuple[int, ...]], width: int) -> np.ndarray:
    return np.array(rows, dtype=np.int64).reshape(len(rows), width)


TABLES = _Tables()


@dataclass(frozen=True)
class BatchEntities:
    """The entities a batch of payments touches, each once, and which of them each payment touches.

    A batch's payments share merchants (and cards, on bursts), so a read fetches each entity once
    and the kernel finds it by position."""

    keys: list[tuple[str, str]]  # (kind, id) of each entity, once, kind by kind: what a read fetches
    index: np.ndarray  # (kinds, payments) int64: each payment's entity of each kind, as a position in keys

    def of_payments(self, positions: Sequence[int]) -> BatchEntities:
        """The same entities, indexed for the payments at ``positions`` only, in that order."""
        return BatchEntities(self.keys, self.index[:, positions])


def batch_entities(transactions: Sequence[Transaction]) -> BatchEntities:
    """Number the entities ``transactions`` touch: one pass per kind, each entity once."""
    keys: list[tuple[str, str]] = []
    index: list[int] = []
    for kind, key_of in ENTITY_KEY_GETTERS:
        number: dict[str, int] = {}
        first = len(keys)
        index += [first + number.setdefault(key, len(number)) for key in map(key_of, transactions)]
        keys += zip(repeat(kind), number)
    return BatchEntities(keys, np.array(index, dtype=np.int64).reshape(K, len(transactions)))


def batch_feature_matrix(
    transactions: Sequence[Transaction],
    states: Mapping[tuple[str, str], bytes],
    fold: Sequence[bool] | np.ndarray | None = None,
    event_ts: np.ndarray | None = None,
) -> np.ndarray:
    """The (payments x MODEL_FEATURES) float64 matrix, rows in the order given.

    Args:
        transactions: the payments, in the order they are decided (event order for a batch).
        states: packed state (``streaming.packed``) per (entity, id) before the batch; a missing
            key is an entity with no history.
        fold: per payment, whether later payments of the batch see it (default: all do). The
            offline builder passes the stream's admission verdicts (late and duplicate payments are
            never applied); the decision path folds every payment.
        event_ts: the payments' ``event_ts`` (float64), when the caller has them already.
    """
    entities = batch_entities(transactions)
    packed = [states.get(key, b"") for key in entities.keys]
    return entity_feature_matrix(transactions, entities.index, packed, fold, event_ts)


def entity_feature_matrix(
    transactions: Sequence[Transaction],
    entity: np.ndarray,
    packed: Sequence[bytes],
    fold: Sequence[bool] | np.ndarray | None = None,
    event_ts: np.ndarray | None = None,
) -> np.ndarray:
    """``batch_feature_matrix`` for entities already numbered and read (the decision path's read,
    ``OnlineFeatureStore.read_batch``): ``entity`` is ``BatchEntities.index`` for these payments in
    this order, ``packed`` the state of each of ``BatchEntities.keys`` (b"": no history)."""
    n = len(transactions)
    out = np.empty((n, len(MODEL_FEATURES)), dtype=np.float64)
    if n == 0:
        return out
    words = np.frombuffer(b"".join(packed), dtype=np.int64)
    if _BIG_ENDIAN:  # the layout is little-endian; numba reads native words only
        words = words.byteswap()
    # A fresh writable array whatever was passed: numba compiles once per argument type.
    folds = np.array([True] * n if fold is None else fold, dtype=np.bool_)  # np.ones costs 4x more
    from streaming.feature_kernel import window_features  # numba loads on the first batch, not at import

    tables = TABLES
    window_features(
        words,
        words.view(np.float64),
        np.array(list(map(len, packed)), dtype=np.int64),
        entity,
        np.array(list(map(_EVENT_TS, transactions)), dtype=np.float64) if event_ts is None else event_ts,
        np.array(list(map(_AMOUNT, transactions)), dtype=np.int64),
        folds,
        _value_hashes(transactions),
        _context_flags(transactions),
        tables.plans,
        tables.kind_plans,
        tables.kind_plan_count,
        tables.aggregates,
        tables.distincts,
        tables.label_rates,
        tables.recency,
        tables.recency_caps,
        tables.ratios,
        tables.context,
        tables.layout,
        out,
    )
    return out


def _value_hashes(transactions: Sequence[Transaction]) -> np.ndarray:
    """(distinct fields, payments): each payment's value hashes, as the state keeps its values."""
    hashes = [list(map(value_hash, map(field, transactions))) for field in _DISTINCT_FIELDS]
    return np.array(hashes, dtype=np.int64).reshape(len(_DISTINCT_FIELDS), len(transactions))


def _context_flags(transactions: Sequence[Transaction]) -> np.ndarray:
    """(3, payments): the context features read from the transaction's strings and channel."""
    return np.array(
        [
            [t.country != t.card_country for t in transactions],
            [t.channel is Channel.ECOMMERCE for t in transactions],
            list(map(_CATEGORY_CODE.get, map(_CATEGORY, transactions), repeat(-1.0))),
        ],
        dtype=np.float64,
    )


def warm_up() -> None:
    """Compile (or load from the disk cache) the kernel now, so a server's first batch does not."""
    batch_feature_matrix([WARM_UP_PAYMENT], {})
