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
joins the entities' packed states into one int64 buffer; one numba kernel (``_features``) then
walks the payments in order. Per payment and entity it sums each window from one pass over the
entity's bucket rows (sorted by bucket size and start, as the layout stores them; an entity holds
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
disk cache is keyed on this file alone, so a changed declaration elsewhere would be served stale.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import repeat
from operator import attrgetter

import numpy as np
from numba import njit

from schema import Channel, Transaction
from streaming.features import MERCHANT_CATEGORIES, MODEL_FEATURES, RATIO_FEATURES, Aggregation
from streaming.packed import BUCKET_WORDS, DISTINCT_WORDS, FIELD_CODE, HEADER_WORDS, MAGIC, value_hash
from streaming.windows import LAYOUTS

COLUMN: dict[str, int] = {name: i for i, name in enumerate(MODEL_FEATURES)}
_CATEGORY_CODE = {name: float(i) for i, name in enumerate(MERCHANT_CATEGORIES)}
_KINDS: tuple[tuple[str, str], ...] = tuple((entity, layout.key_field) for entity, layout in LAYOUTS.items())
K = len(_KINDS)
_ENTITY_KEYS = tuple((entity, attrgetter(field)) for entity, field in _KINDS)
_DISTINCT_FIELDS = tuple(attrgetter(field) for field in sorted(FIELD_CODE, key=FIELD_CODE.__getitem__))
_EVENT_TS, _AMOUNT, _CATEGORY = attrgetter("event_ts"), attrgetter("amount_minor"), attrgetter("merchant_category")
_AGGREGATION_CODE = {Aggregation.COUNT: 0, Aggregation.SUM: 1, Aggregation.MEAN: 2, Aggregation.MAX: 3}
_BIG_ENDIAN = sys.byteorder == "big"
# The kernel's running totals per window: bounds of the bucket starts it counts, then its totals.
LOWER, UPPER, COUNT, TOTAL, LARGEST = range(5)


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
    entity, words, state_bytes = _entities(transactions, states)
    # A fresh writable array whatever was passed: numba compiles once per argument type.
    folds = np.array([True] * n if fold is None else fold, dtype=np.bool_)  # np.ones costs 4x more
    tables = TABLES
    _features(
        words,
        words.view(np.float64),
        state_bytes,
        entity,
        np.array(list(map(_EVENT_TS, transactions)), dtype=np.float64),
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


def _entities(
    transactions: Sequence[Transaction], states: Mapping[tuple[str, str], bytes]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kinds, payments) entity numbers; the entities' packed states joined, as int64 words; and
    each state's length in bytes (0: no history). Each entity's state is joined once."""
    numbers: list[int] = []
    raws: list[bytes] = []
    for kind, key_of in _ENTITY_KEYS:
        number: dict[str, int] = {}
        first = len(raws)
        numbers += [first + number.setdefault(key, len(number)) for key in map(key_of, transactions)]
        raws += map(states.get, zip(repeat(kind), number), repeat(b""))
    words = np.frombuffer(b"".join(raws), dtype=np.int64)
    if _BIG_ENDIAN:  # the layout is little-endian; numba reads native words only
        words = words.byteswap()
    entity = np.array(numbers, dtype=np.int64).reshape(K, len(transactions))
    return entity, words, np.array(list(map(len, raws)), dtype=np.int64)


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
    payment = Transaction(
        transaction_id="warm-up",
        event_time=datetime.fromtimestamp(0, UTC),
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
    batch_feature_matrix([payment], {})


# --- the kernel -------------------------------------------------------------------------------


# nogil: the kernel touches no Python object, so the scorer's other threads (gRPC, publishing) run
# beside it.
@njit(cache=True, nogil=True)
def _features(
    words,  # every state's int64 words, joined
    floats,  # the same words as float64 (newest_ts, known_at)
    state_bytes,  # per entity: its state's length in bytes (0: no history)
    entity,  # (kinds, payments): entity number
    ts,
    amount,
    folds,
    own,  # (distinct fields, payments): the payment's value hashes
    flags,  # (3, payments): context flags from Python
    plans,  # (kind, bucket size, length, retention) per window
    kind_plans,  # (kinds, most plans): each kind's plans by bucket size
    kind_plan_count,
    aggregates,
    distincts,
    label_rates,
    recency,
    recency_caps,
    ratios,
    context,
    layout,
    out,
):
    """Fill ``out`` row by row, payment j seeing its entities' states and the batch before it."""
    kinds, n = entity.shape
    at, widest = _state_offsets(words, state_bytes, layout)
    earlier = _earlier_folded(entity, folds, len(state_bytes))
    starts = _bucket_starts(ts, plans)
    newest = np.zeros(kinds, dtype=np.float64)
    history = np.zeros(kinds, dtype=np.bool_)
    n_plans = len(plans)
    window = np.zeros((n_plans, 5), dtype=np.int64)  # payment j's windows (LOWER, UPPER, COUNT, ...)
    scratch = np.empty(widest + n, dtype=np.int64)  # one distinct feature's values
    for j in range(n):
        for k in range(kinds):
            state = at[entity[k, j]]
            newest[k], history[k] = _newest(words, floats, state, ts, earlier, j, k)
            for q in range(kind_plan_count[k]):
                p = kind_plans[k, q]
                lower, upper = _window(starts[j, p], newest[k], plans[p, 1], plans[p, 2], plans[p, 3])
                window[p, LOWER], window[p, UPPER] = lower, upper
                window[p, COUNT], window[p, TOTAL], window[p, LARGEST] = 1, amount[j], amount[j]
            _add_stored_rows(words, state, plans, kind_plans, kind_plan_count, k, window, layout)
            _add_folded(amount, earlier, starts, j, k, kind_plans, kind_plan_count, window)
        _write_aggregates(out, j, aggregates, window)
        for d in range(len(distincts)):
            p, code = distincts[d, 0], distincts[d, 1]
            k = plans[p, 0]
            out[j, distincts[d, 2]] = _distinct_count(
                words,
                at[entity[k, j]],
                plans[p, 1],
                code,
                window[p, LOWER],
                window[p, UPPER],
                starts,
                own,
                earlier,
                j,
                k,
                p,
                layout,
                scratch,
            )
        for q in range(len(label_rates)):
            p = label_rates[q, 0]
            frauds = _frauds_known(words, floats, at[entity[plans[p, 0], j]], ts[j] - plans[p, 2], ts[j], layout)
            out[j, label_rates[q, 1]] = frauds / window[p, COUNT]
        for q in range(len(recency)):
            k, cap = recency[q, 0], recency_caps[q]
            out[j, recency[q, 1]] = min(max(ts[j] - newest[k], 0.0), cap) if history[k] else cap
        _write_context(out, j, ts[j], amount[j], flags, context, ratios)


@njit(cache=True)
def _state_offsets(words, state_bytes, layout):
    """Each entity's first word (-1: no history), checking every state is whole and in the layout;
    and the most distinct rows one state holds (the scratch a distinct count needs)."""
    magic, header, bucket_words, distinct_words = layout[0], layout[1], layout[2], layout[3]
    at = np.full(len(state_bytes), -1, dtype=np.int64)
    widest, word = 0, 0
    for e in range(len(state_bytes)):
        size = state_bytes[e] // 8
        if state_bytes[e] == 0:
            continue
        if state_bytes[e] % 8 or size < header or words[word] != magic:
            raise ValueError("online feature state in an unknown format (expected packed layout PCK1)")
        n_buckets, n_distinct, n_fraud = words[word + 3], words[word + 4], words[word + 5]
        if min(n_buckets, n_distinct, n_fraud) < 0:
            raise ValueError("online feature state with negative row counts")
        if header + bucket_words * n_buckets + distinct_words * n_distinct + n_fraud > size:
            raise ValueError("online feature state shorter than its row counts")
        at[e] = word
        widest = max(widest, n_distinct)
        word += size
    return at, widest


@njit(cache=True)
def _earlier_folded(entity, folds, n_entities):
    """(payments, kinds): the latest earlier payment on the same entity whose fold flag is set
    (-1: none). Following the links from a payment visits all its earlier folded payments."""
    kinds, n = entity.shape
    latest = np.full(n_entities, -1, dtype=np.int64)
    earlier = np.empty((n, kinds), dtype=np.int64)
    for j in range(n):
        for k in range(kinds):
            e = entity[k, j]
            earlier[j, k] = latest[e]
            if folds[j]:
                latest[e] = j
    return earlier


@njit(cache=True)
def _bucket_starts(ts, plans):
    """(payments, plans): the start of the bucket each payment falls in, per window's bucket size."""
    starts = np.empty((len(ts), len(plans)), dtype=np.float64)
    for j in range(len(ts)):
        for p in range(len(plans)):
            starts[j, p] = _floor_to(ts[j], plans[p, 1])
    return starts


@njit(cache=True, inline="always")
def _floor_to(t, size):
    """``(t // size) * size``, the specification's bucket start, without the fmod that numba's float
    floor division calls (it was the kernel's largest cost). ``//`` gives the exact floor of t / size
    while q * size is exact (|t| < 2**53), and so does one correction of the rounded quotient."""
    start = np.floor(t / size) * size
    if start > t:
        start -= size
    elif start + size <= t:
        start += size
    return start


@njit(cache=True, inline="always")
def _newest(words, floats, state, ts, earlier, j, k):
    """The entity's newest event time as payment j sees it, and whether it has any event."""
    newest, history = 0.0, False  # an entity without state: as the empty state packs
    if state >= 0:
        newest, history = floats[state + 1], words[state + 2] > 0
    i = earlier[j, k]
    while i >= 0:
        newest = max(newest, ts[i])
        history = True
        i = earlier[i, k]
    return newest, history


@njit(cache=True, inline="always")
def _window(upper, newest, resolution, length, retention):
    """The bucket starts a window counts, ``lower < start <= upper`` (upper: the payment's own
    bucket); the lower bound is also the entity's retention horizon, which the batch's earlier
    payments may have moved on."""
    horizon = _floor_to(newest, resolution) - retention
    return np.int64(max(upper - length, horizon)), np.int64(upper)


@njit(cache=True, inline="always")
def _add_stored_rows(words, state, plans, kind_plans, kind_plan_count, k, window, layout):
    """Add the entity's stored bucket rows to the windows of its kind (``mine``, by bucket size).

    One pass over the rows, merged with the windows: both are sorted by bucket size, and an entity
    holds only what its longest windows reach (~20 rows on average, ~120 at most for a card), so
    this beats a binary search per window."""
    if state < 0:
        return
    first, width = state + layout[1], layout[2]
    q, mine = 0, kind_plan_count[k]
    for word in range(first, first + width * words[state + 3], width):
        resolution, start = words[word], words[word + 1]
        while q < mine and plans[kind_plans[k, q], 1] < resolution:
            q += 1
        for same in range(q, mine):
            p = kind_plans[k, same]
            if plans[p, 1] != resolution:
                break
            if window[p, LOWER] < start <= window[p, UPPER]:
                window[p, COUNT] += words[word + 2]
                window[p, TOTAL] += words[word + 3]
                window[p, LARGEST] = max(window[p, LARGEST], words[word + 4])


@njit(cache=True, inline="always")
def _add_folded(amount, earlier, starts, j, k, kind_plans, kind_plan_count, window):
    """Add the batch's earlier folded payments on payment j's entity of kind k to its windows."""
    i = earlier[j, k]
    while i >= 0:
        for q in range(kind_plan_count[k]):
            p = kind_plans[k, q]
            if window[p, LOWER] < starts[i, p] <= window[p, UPPER]:
                window[p, COUNT] += 1
                window[p, TOTAL] += amount[i]
                window[p, LARGEST] = max(window[p, LARGEST], amount[i])
        i = earlier[i, k]


@njit(cache=True, inline="always")
def _distinct_count(words, state, resolution, code, lower, upper, starts, own, earlier, j, k, p, layout, scratch):
    """Distinct values of one field in the window: the stored ones, the earlier folded payments'
    and payment j's own."""
    scratch[0] = own[code, j]
    m = 1
    if state >= 0:
        first = state + layout[1] + layout[2] * words[state + 3]
        rows, width = words[state + 4], layout[3]
        low = _distinct_rows_after(words, first, rows, width, resolution, code, lower)
        high = _distinct_rows_after(words, first, rows, width, resolution, code, upper)
        for row in range(low, high):
            scratch[m] = words[first + row * width + 3]
            m += 1
    i = earlier[j, k]
    while i >= 0:
        if lower < starts[i, p] <= upper:
            scratch[m] = own[code, i]
            m += 1
        i = earlier[i, k]
    return float(_count_unique(scratch, m))


@njit(cache=True, inline="always")
def _distinct_rows_after(words, first, rows, width, resolution, code, start):
    """The first of the entity's distinct rows, sorted (resolution, code, start, value), that sorts
    after (resolution, code, start): binary search, as a busy card holds hundreds."""
    low, high = 0, rows
    while low < high:
        middle = (low + high) // 2
        word = first + middle * width
        if (words[word], words[word + 1], words[word + 2]) > (resolution, code, start):
            high = middle
        else:
            low = middle + 1
    return low


@njit(cache=True, inline="always")
def _count_unique(values, m):
    """Distinct numbers among ``values[:m]``, sorting them in place: by insertion while few (the
    common case, and numba's quicksort allocates), by quicksort beyond."""
    if m > 32:
        values[:m].sort()  # a view: once per big count only
    else:
        for a in range(1, m):
            v, b = values[a], a - 1
            while b >= 0 and values[b] > v:
                values[b + 1] = values[b]
                b -= 1
            values[b + 1] = v
    unique = min(m, 1)
    for a in range(1, m):
        unique += values[a] != values[a - 1]
    return unique


@njit(cache=True, inline="always")
def _frauds_known(words, floats, state, after, until, layout):
    """Fraud labels of the entity known in (after, until]."""
    if state < 0:
        return 0
    first = state + layout[1] + layout[2] * words[state + 3] + layout[3] * words[state + 4]
    frauds = 0
    for word in range(first, first + words[state + 5]):
        frauds += after < floats[word] <= until
    return frauds


@njit(cache=True, inline="always")
def _write_aggregates(out, j, aggregates, window):
    for a in range(len(aggregates)):
        p, what, column = aggregates[a, 0], aggregates[a, 1], aggregates[a, 2]
        if what == 0:
            out[j, column] = float(window[p, COUNT])
        elif what == 1:
            out[j, column] = window[p, TOTAL] / 100.0
        elif what == 2:
            out[j, column] = window[p, TOTAL] / 100.0 / window[p, COUNT]
        else:
            out[j, column] = window[p, LARGEST] / 100.0


@njit(cache=True, inline="always")
def _write_context(out, j, t, amount, flags, context, ratios):
    """The transaction's own features, then the ratios of its amount to a windowed mean."""
    out[j, context[0]] = amount / 100.0
    out[j, context[1]] = (t // 3600.0) % 24.0  # Unix time has no leap seconds: the UTC hour
    for f in range(3):
        out[j, context[2 + f]] = flags[f, j]
    for r in range(len(ratios)):
        mean = out[j, ratios[r, 0]]
        out[j, ratios[r, 1]] = out[j, context[0]] / mean if mean > 0 else 1.0
