"""The compiled loop of the batch feature read (``streaming.batch_features``): numba kernels only.

Kept apart so that importing ``streaming`` does not import numba: only a process that reads
features (a scorer, the offline builder) loads it, on its first batch, and the review console and
the CLI's other commands never pay for it (~0.35 s per process, plus the cache load). The stream's
workers load numba for their own kernel (``streaming.state_kernel``), not this one. Everything the
kernels need reaches them as array arguments (see ``batch_features``); the only globals are the
running-total slots below, which are constants.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# The kernel's running totals per window: bounds of the bucket starts it counts, then its totals.
LOWER, UPPER, COUNT, TOTAL, LARGEST = range(5)


# nogil: the kernel touches no Python object, so the scorer's other threads (gRPC, publishing) run
# beside it.
@njit(cache=True, nogil=True)
def window_features(
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
