"""Point-in-time features for a batch of payments, as array operations over packed entity states.

This is the feature computation the system serves and trains on: the decision path calls it once
per batch, and the offline builder once per run of history between two labels, so online and
offline features come from the same code. ``streaming.windows.feature_vector`` is the readable
specification (one payment, one entity at a time, plain Python); a property test holds the two
equal, value for value.

Semantics: the payments are taken in the order given. Payment j sees each of its entities'
stored state plus every earlier payment of the batch on that entity whose ``fold`` flag is set,
exactly as if ``apply_transaction`` had applied those before j was read. So two payments on one
card in one batch see each other as they would in a replay of the log, and a bucket the folded
payments have pushed past retention is gone for j as it would be in the state.

How: each payment has one *reader* per entity kind (card, customer, merchant, device). Every
reader gets a copy of its entity's bucket rows: the stored rows, plus one row per bucket size for
each earlier folded payment of the batch. A row counts in its window when its start lies in the
window and after the retention horizon of the entity's newest event; counts, sums and maxima are
then reduced per (payment, window) with ``bincount`` and ``maximum.at``, for all four kinds at once,
so the number of array operations per batch is fixed (~80) whatever its size. A reader's rows are
bounded by the bucket count of its windows (~120 for a card), not by the entity's history; the
fold adds rows for pairs of payments on one entity, which grows with the square of a busy
merchant's payments per batch (batches are cut to ~20 ms of work, see ``scoring.batcher``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from schema import Channel, Transaction
from streaming.features import MERCHANT_CATEGORIES, MODEL_FEATURES, RATIO_FEATURES, Aggregation
from streaming.packed import FIELD_CODE, PackedStates, parse_packed, value_hash
from streaming.windows import LAYOUTS

COLUMN: dict[str, int] = {name: i for i, name in enumerate(MODEL_FEATURES)}
_CATEGORY_CODE = {name: float(i) for i, name in enumerate(MERCHANT_CATEGORIES)}
_KINDS: tuple[tuple[str, str], ...] = tuple((entity, layout.key_field) for entity, layout in LAYOUTS.items())
K = len(_KINDS)


class _Plans:
    """The feature declaration as index tables: every window of every entity kind is one *plan*
    with a global number, and each feature column knows its plan."""

    def __init__(self) -> None:
        self.resolutions = np.array(sorted({r for lay in LAYOUTS.values() for r, _, _ in lay.resolutions}))
        plan_of = np.full((K, len(self.resolutions)), -1, dtype=np.int64)
        length, retention = [], []
        columns: dict[Aggregation, tuple[list[int], list[int]]] = {a: ([], []) for a in Aggregation}
        distinct: list[tuple[int, int, int]] = []  # (plan, field code, column)
        self.label_rates: list[tuple[int, int, int, int]] = []  # (kind, plan, length, column)
        self.recency: list[tuple[int, float, int]] = []  # (kind, cap, column)
        for kind, layout in enumerate(LAYOUTS.values()):
            for plan in layout.plans:
                number = len(length)
                at = int(np.searchsorted(self.resolutions, plan.resolution_s))
                if plan_of[kind, at] >= 0:  # the row -> window map below relies on this
                    raise ValueError(f"{layout.entity}: two windows with {plan.resolution_s}s buckets")
                plan_of[kind, at] = number
                length.append(plan.length_s)
                retention.append(layout.retention_s[plan.resolution_s])
                for name, aggregation, field in plan.features:
                    if aggregation is Aggregation.DISTINCT:
                        distinct.append((number, FIELD_CODE[field or ""], COLUMN[name]))
                    else:
                        columns[aggregation][0].append(number)
                        columns[aggregation][1].append(COLUMN[name])
                self.label_rates += [(kind, number, plan.length_s, COLUMN[name]) for name in plan.label_rates]
            self.recency += [(kind, f.cap_s, COLUMN[f.name]) for f in layout.recency_features]
        self.plan_of = plan_of
        self.count = len(length)
        self.kind = np.zeros(self.count, dtype=np.int64)
        for k in range(K):
            self.kind[plan_of[k][plan_of[k] >= 0]] = k
        per_kind_plans = [sorted(int(x) for x in plan_of[k] if x >= 0) for k in range(K)]
        most = max(len(p) for p in per_kind_plans)
        self.kind_plans = np.array([p + [0] * (most - len(p)) for p in per_kind_plans], dtype=np.int64)
        self.kind_plan_count = np.array([len(p) for p in per_kind_plans], dtype=np.int64)
        self.length = np.array(length, dtype=np.int64)
        self.retention = np.array(retention, dtype=np.int64)
        self.resolution = np.array([0] * self.count, dtype=np.int64)
        for kind in range(K):
            for at, number in enumerate(plan_of[kind]):
                if number >= 0:
                    self.resolution[number] = self.resolutions[at]
        self.columns = {a: (np.array(p, dtype=np.int64), np.array(c, dtype=np.int64)) for a, (p, c) in columns.items()}
        # Bucket sizes per kind, for the rows a folded payment adds (padded table + counts).
        sizes = [[r for r, _, _ in layout.resolutions] for layout in LAYOUTS.values()]
        self.kind_resolutions = np.array([s + [1] * (len(self.resolutions) - len(s)) for s in sizes], dtype=np.int64)
        self.kind_resolution_count = np.array([len(s) for s in sizes], dtype=np.int64)
        # Distinct-count features: a stored (kind, bucket size, field) row -> feature number.
        self.distinct_plan = np.array([p for p, _, _ in distinct], dtype=np.int64)
        self.distinct_code = np.array([c for _, c, _ in distinct], dtype=np.int64)
        self.distinct_column = np.array([col for _, _, col in distinct], dtype=np.int64)
        self.distinct_of = np.full((K, len(self.resolutions), max(len(FIELD_CODE), 1)), -1, dtype=np.int64)
        per_kind: list[list[int]] = [[] for _ in range(K)]
        for number, (plan, code, _) in enumerate(distinct):
            kind = next(k for k in range(K) if plan in plan_of[k])
            self.distinct_of[kind, int(np.searchsorted(self.resolutions, self.resolution[plan])), code] = number
            per_kind[kind].append(number)
        width = max(1, *(len(p) for p in per_kind))
        self.kind_distinct = np.array([p + [0] * (width - len(p)) for p in per_kind], dtype=np.int64)
        self.kind_distinct_count = np.array([len(p) for p in per_kind], dtype=np.int64)


PLANS = _Plans()


@lru_cache(maxsize=256)
def _layout_of(n: int) -> tuple[np.ndarray, ...]:
    """Index arrays that depend only on the batch size (read-only, cached: batches repeat sizes).

    Returns: each reader's payment and kind; each (payment, plan) cell's payment, plan, reader,
    bucket size and window length and retention.
    """
    readers = np.arange(n * K)
    cell_payment = np.repeat(np.arange(n), PLANS.count)
    cell_plan = np.tile(np.arange(PLANS.count), n)
    arrays = (
        readers // K,
        readers % K,
        cell_payment,
        cell_plan,
        cell_payment * K + PLANS.kind[cell_plan],
        PLANS.resolution[cell_plan],
        PLANS.length[cell_plan],
        PLANS.retention[cell_plan],
    )
    for a in arrays:
        a.flags.writeable = False
    return arrays


_FIELDS_BY_CODE = sorted(FIELD_CODE, key=FIELD_CODE.__getitem__)


def batch_feature_matrix(
    transactions: Sequence[Transaction],
    states: Mapping[tuple[str, str], bytes],
    fold: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """The (payments x MODEL_FEATURES) float64 matrix, rows in the order given.

    Args:
        transactions: the payments, in the order they are decided (event order for a batch).
        states: packed state (``streaming.packed``) per (entity, id) before the batch; a missing
            key is an entity with no history.
        fold: per payment, whether later payments of the batch see it (default: all do). The
            offline builder passes the stream's admission verdicts (late and duplicate payments are
            never applied); the decision path folds every payment.
    """
    n = len(transactions)
    out = np.empty((n, len(MODEL_FEATURES)), dtype=np.float64)
    if n == 0:
        return out
    ts = np.fromiter((t.event_ts for t in transactions), dtype=np.float64, count=n)
    amount = np.fromiter((t.amount_minor for t in transactions), dtype=np.int64, count=n)
    folds = np.ones(n, dtype=bool) if fold is None else np.asarray(fold, dtype=bool)
    _context_columns(transactions, ts, amount, out)
    # One reader per (payment, entity kind), payment-major; each distinct entity parsed once.
    number: dict[tuple[str, str], int] = {}
    entity = np.fromiter(
        (number.setdefault((kind, getattr(t, field)), len(number)) for t in transactions for kind, field in _KINDS),
        dtype=np.int64,
        count=n * K,
    )
    packed = parse_packed([states.get(key) for key in number])
    own = np.array([[value_hash(getattr(t, f)) for f in _FIELDS_BY_CODE] for t in transactions], dtype=np.int64)
    _WindowRead(packed, entity, ts, amount, folds, own.reshape(n, len(_FIELDS_BY_CODE))).into(out)
    for ratio in RATIO_FEATURES:
        mean = out[:, COLUMN[ratio.denominator]]
        column = out[:, COLUMN[ratio.name]]
        column[:] = 1.0
        np.divide(out[:, COLUMN["amount"]], mean, out=column, where=mean > 0)
    return out


def _context_columns(transactions: Sequence[Transaction], ts: np.ndarray, amount: np.ndarray, out: np.ndarray) -> None:
    out[:, COLUMN["amount"]] = amount / 100.0
    out[:, COLUMN["hour_of_day"]] = (ts // 3600.0) % 24.0  # Unix time has no leap seconds: UTC hour
    out[:, COLUMN["is_cross_border"]] = [t.country != t.card_country for t in transactions]
    out[:, COLUMN["is_ecommerce"]] = [t.channel is Channel.ECOMMERCE for t in transactions]
    out[:, COLUMN["merchant_category_code"]] = [_CATEGORY_CODE.get(t.merchant_category, -1.0) for t in transactions]


class _WindowRead:
    """Every windowed, label-rate and recency feature of a batch (see the module docstring)."""

    def __init__(
        self,
        packed: PackedStates,
        entity: np.ndarray,
        ts: np.ndarray,
        amount: np.ndarray,
        folds: np.ndarray,
        own: np.ndarray,
    ) -> None:
        self.packed = packed
        self.entity = entity  # per reader
        self.n = len(ts)
        self.ts = ts
        self.amount = amount
        self.own = own  # (payments, distinct fields): value hashes
        self.layout = _layout_of(self.n)
        self.payment, self.kind = self.layout[0], self.layout[1]
        newest = packed.newest_ts[entity]
        self.has_history = packed.events[entity] > 0
        if packed.size < len(entity):  # some entity has several readers: earlier payments fold
            self.later, self.earlier = _earlier_folded_pairs(entity, folds[self.payment])
            np.maximum.at(newest, self.later, ts[self.payment[self.earlier]])
            self.has_history |= np.bincount(self.later, minlength=len(entity)) > 0
        else:
            self.later = self.earlier = np.empty(0, dtype=np.int64)
        self.newest = newest

    def into(self, out: np.ndarray) -> None:
        self._cell_bounds()
        count, total, largest = self._window_totals()
        for aggregation, (plans, columns) in PLANS.columns.items():
            if aggregation is Aggregation.COUNT:
                out[:, columns] = count[:, plans]
            elif aggregation is Aggregation.SUM:
                out[:, columns] = total[:, plans] / 100.0
            elif aggregation is Aggregation.MEAN:
                out[:, columns] = total[:, plans] / 100.0 / count[:, plans]
            elif aggregation is Aggregation.MAX:
                out[:, columns] = largest[:, plans] / 100.0
        if len(PLANS.distinct_column):
            out[:, PLANS.distinct_column] = self._distinct_counts()
        self._label_rates(count, out)
        for kind, cap, column in PLANS.recency:
            reader = np.arange(self.n) * K + kind
            since = np.minimum(np.maximum(self.ts - self.newest[reader], 0.0), cap)
            out[:, column] = np.where(self.has_history[reader], since, cap)

    def _cell_bounds(self) -> None:
        """For every (payment, plan) cell: its reader and the bucket starts its window counts,
        ``lower < start <= upper``; the lower bound is also the entity's retention horizon, which
        an earlier payment of the batch may have moved on."""
        payment, _, self.cell_reader, resolution, length, retention = self.layout[2:]
        upper = (self.ts[payment] // resolution) * resolution
        horizon = (self.newest[self.cell_reader] // resolution) * resolution - retention
        self.lower = np.maximum(upper - length, horizon).astype(np.int64)
        self.upper = upper.astype(np.int64)

    def _window_totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(payments x plans) count, amount sum and largest amount, each payment counting itself.

        Stored rows are sorted by (entity, bucket size, start), so a cell's window is one range of
        rows, found by binary search and summed from prefix sums; no row is copied per payment.
        """
        rows = self.packed.buckets
        key = _row_key(self.packed.bucket_owner, rows[:, 0], rows[:, 1])
        entity = self.entity[self.cell_reader]
        plan_resolution = self.layout[5]
        low = key.searchsorted(_row_key(entity, plan_resolution, self.lower), side="right")
        high = key.searchsorted(_row_key(entity, plan_resolution, self.upper), side="right")
        high = np.maximum(high, low)  # an empty window: the horizon lies beyond the payment's bucket
        count = _prefix(rows[:, 2])
        count = (count[high] - count[low]).astype(np.float64)
        total = _prefix(rows[:, 3])
        total = (total[high] - total[low]).astype(np.float64)
        ends = np.empty(2 * len(low), dtype=np.int64)
        ends[0::2], ends[1::2] = low, high
        largest = np.maximum.reduceat(np.append(rows[:, 4], 0), ends)[::2]
        largest[high == low] = 0  # reduceat gives the row at ``low`` for an empty range
        if len(self.later):
            self._add_folded(count, total, largest)
        own = np.repeat(self.amount, PLANS.count)
        shape = (self.n, PLANS.count)
        return (1.0 + count).reshape(shape), (own + total).reshape(shape), np.maximum(own, largest).reshape(shape)

    def _add_folded(self, count: np.ndarray, total: np.ndarray, largest: np.ndarray) -> None:
        """Add the earlier folded payments of the batch: one contribution per (pair, plan of the kind)."""
        kind = self.kind[self.later]
        pair, within = _expand(PLANS.kind_plan_count[kind])
        plan = PLANS.kind_plans[kind[pair], within]
        folded = self.payment[self.earlier[pair]]
        cell = self.payment[self.later[pair]] * PLANS.count + plan
        start = (self.ts[folded] // PLANS.resolution[plan]) * PLANS.resolution[plan]
        inside = (start > self.lower[cell]) & (start <= self.upper[cell])
        cell, amount = cell[inside], self.amount[folded[inside]]
        count += np.bincount(cell, minlength=len(count))
        total += np.bincount(cell, weights=amount, minlength=len(total))
        np.maximum.at(largest, cell, amount)

    def _distinct_counts(self) -> np.ndarray:
        """(payments x distinct features): distinct values in the window, the payment's own included."""
        stored = self.packed.distinct
        reader, index = _copy_rows_per_reader(self.entity, *self.packed.offsets(self.packed.distinct_owner))
        at = np.searchsorted(PLANS.resolutions, stored[index, 0])
        feature = PLANS.distinct_of[self.kind[reader], at, stored[index, 1]]
        start, value = stored[index, 2], stored[index, 3]
        if len(self.later):  # earlier folded payments add their own values
            kind = self.kind[self.later]
            pair, within = _expand(PLANS.kind_distinct_count[kind])
            folded_feature = PLANS.kind_distinct[kind[pair], within]
            folded_payment = self.payment[self.earlier[pair]]
            folded_resolution = PLANS.resolution[PLANS.distinct_plan[folded_feature]]
            reader = np.concatenate([reader, self.later[pair]])
            feature = np.concatenate([feature, folded_feature])
            start = np.concatenate([start, (self.ts[folded_payment] // folded_resolution) * folded_resolution])
            value = np.concatenate([value, self.own[folded_payment, PLANS.distinct_code[folded_feature]]])
        known = feature >= 0  # a stored row no declared feature reads
        reader, feature, start, value = reader[known], feature[known], start[known], value[known]
        cell = self.payment[reader] * PLANS.count + PLANS.distinct_plan[feature]
        inside = (start > self.lower[cell]) & (start <= self.upper[cell])
        features = len(PLANS.distinct_column)
        key = np.concatenate([(self.payment[reader] * features + feature)[inside], np.arange(self.n * features)])
        value = np.concatenate([value[inside], self.own[:, PLANS.distinct_code].ravel()])
        order = np.lexsort((value, key))
        key, value = key[order], value[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = (key[1:] != key[:-1]) | (value[1:] != value[:-1])
        return np.bincount(key[first], minlength=self.n * features).reshape(self.n, features).astype(np.float64)

    def _label_rates(self, count: np.ndarray, out: np.ndarray) -> None:
        """Fraud labels known in (t - window, t] per payment's entity, over the window's count."""
        if not len(self.packed.fraud_owner):  # no label known for any entity of the batch
            for _, _, _, column in PLANS.label_rates:
                out[:, column] = 0.0
            return
        reader, index = _copy_rows_per_reader(self.entity, *self.packed.offsets(self.packed.fraud_owner))
        known_at = self.packed.fraud_known_at[index]
        payment = self.payment[reader]
        for kind, plan, length, column in PLANS.label_rates:
            mine = (self.kind[reader] == kind) & (known_at > self.ts[payment] - length) & (known_at <= self.ts[payment])
            out[:, column] = np.bincount(payment[mine], minlength=self.n) / count[:, plan]


def _row_key(entity: np.ndarray, resolution: np.ndarray, start: np.ndarray) -> np.ndarray:
    """A sortable int64 per (entity, bucket size, start): starts are Unix seconds < 2**32."""
    return ((entity * len(PLANS.resolutions) + np.searchsorted(PLANS.resolutions, resolution)) << 32) + start


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(values)])


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``counts[g]`` items: each item's group and its position within the group."""
    group = np.repeat(np.arange(len(counts)), counts)
    return group, np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)


def _copy_rows_per_reader(
    entity: np.ndarray, first_row: np.ndarray, row_count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(reader, row index) for every row of every reader's entity."""
    reader, within = _expand(row_count[entity])
    return reader, first_row[entity][reader] + within


def _earlier_folded_pairs(entity: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(later, earlier) reader pairs on the same entity, the earlier one first in order and folded."""
    order = np.argsort(entity, kind="stable")
    grouped = entity[order]
    repeated = grouped[1:] == grouped[:-1]
    if not repeated.any():  # every reader's entity appears once in the batch: nothing to fold
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    group_start = np.flatnonzero(np.concatenate([[True], ~repeated]))
    rank = np.arange(len(order)) - np.repeat(group_start, np.diff(np.append(group_start, len(order))))
    position, within = _expand(rank)  # each reader, once per earlier reader of its entity
    later = order[position]
    earlier = order[position - rank[position] + within]
    keep = folds[earlier]
    return later[keep], earlier[keep]
