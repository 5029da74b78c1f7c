"""The compiled state update of ``streaming.windows.apply_transaction``: one numba kernel.

Why compiled: the stream applies every payment to four entities, each kept at four to six bucket
sizes. As Python over ``struct`` rows that was ~50 µs per payment, half the stream's CPU
(``fraud bench-stream --steps-only``). Here one call per entity does every bucket size.

The kernel works in place on the state's two byte strings, which the caller has lengthened by the
most rows one payment can add (one bucket row per bucket size, one distinct row per distinct
field); it returns how many words of each are in use and the caller cuts the rest. The layout
reaches it as an array argument, never as a global: numba freezes globals into the compiled code,
and its disk cache is keyed on this file alone.

Rows, in int64 words (the packed layout, ``streaming.packed``):
    bucket   (resolution_s, start, count, amount_minor, max_minor), sorted by (resolution, start)
    distinct (resolution_s, field_code, start, value_hash), sorted
"""

from __future__ import annotations

import numpy as np
from numba import njit

BUCKET, DISTINCT = 5, 4  # words per row
HEADER = 6  # words before a packed state's rows (``streaming.packed``)
# Columns of the plan, one row per bucket size of an entity (``EntityLayout.plan``).
RESOLUTION, RETENTION, FIRST_FIELD, FIELDS = range(4)


@njit(cache=True, nogil=True)
def update_rows(buckets, distinct, second, previous, amount, plan, codes, hashes):  # pragma: no cover - compiled
    """Add one payment to an entity's rows; returns the words in use of (buckets, distinct).

    buckets, distinct: the state's rows, followed by the spare rows the caller appended.
    second, previous: the payment's event time and the entity's newest before it, whole seconds.
    plan: (bucket sizes, 4) int64: resolution, retention, first and number of distinct fields.
    codes: int64, the code of each distinct field the plan names.
    hashes: the payment's value hash of each of those fields, int64 as bytes.
    """
    b = np.frombuffer(buckets, dtype=np.int64)
    d = np.frombuffer(distinct, dtype=np.int64)
    h = np.frombuffer(hashes, dtype=np.int64)
    return _update(
        b, d, len(b) - BUCKET * plan.shape[0], len(d) - DISTINCT * len(h), second, previous, amount, plan, codes, h
    )


@njit(cache=True, nogil=True)
def _update(b, d, used_b, used_d, second, previous, amount, plan, codes, h):  # pragma: no cover - compiled
    """``update_rows`` on int64 views with the words in use given (room for one payment after them)."""
    lo = 0  # the first word of this resolution's rows
    for i in range(plan.shape[0]):
        resolution, retention = plan[i, RESOLUTION], plan[i, RETENTION]
        hi = lo
        while hi < used_b and b[hi] == resolution:
            hi += BUCKET
        start = second // resolution * resolution
        newest = previous // resolution * resolution  # the last row's start (0: no rows yet)
        if start == newest and hi > lo:  # the newest bucket: the common case
            _add_to_row(b, hi - BUCKET, amount)
        elif start > newest:
            # A new newest bucket. Expire relative to the newest event, never to wall-clock time:
            # the state must depend on the events alone so that a replay reproduces it exactly.
            used_b = _insert_row(b, used_b, hi, resolution, start, amount)
            hi += BUCKET
            horizon = start - retention
            expired = lo
            while expired < hi and b[expired + 1] <= horizon:
                expired += BUCKET
            used_b = _remove(b, used_b, lo, expired)
            hi -= expired - lo
            if plan[i, FIELDS]:
                used_d = _expire_distinct(d, used_d, resolution, horizon)
        elif start > newest - retention:  # behind the newest, within the allowed lateness
            at = lo
            while at < hi and b[at + 1] < start:
                at += BUCKET
            if at < hi and b[at + 1] == start:
                _add_to_row(b, at, amount)
            else:
                used_b = _insert_row(b, used_b, at, resolution, start, amount)
                hi += BUCKET
        else:  # older than any window can reach from the newest event
            lo = hi
            continue
        first = plan[i, FIRST_FIELD]
        for j in range(first, first + plan[i, FIELDS]):
            used_d = _add_distinct(d, used_d, resolution, codes[j], start, h[j])
        lo = hi
    return used_b, used_d


@njit(cache=True, nogil=True)
def _add_to_row(b, at, amount):  # pragma: no cover - compiled
    b[at + 2] += 1
    b[at + 3] += amount
    if amount > b[at + 4]:
        b[at + 4] = amount


@njit(cache=True, nogil=True)
def _insert_row(b, used, at, resolution, start, amount):  # pragma: no cover - compiled
    """Open a bucket row at word ``at`` (rows after it move up one); returns the words in use."""
    for w in range(used - 1, at - 1, -1):
        b[w + BUCKET] = b[w]
    b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4] = resolution, start, 1, amount, amount
    return used + BUCKET


@njit(cache=True, nogil=True)
def _remove(words, used, lo, hi):  # pragma: no cover - compiled
    """Drop words [lo, hi) (what follows moves down); returns the words in use."""
    gap = hi - lo
    if gap:
        for w in range(hi, used):
            words[w - gap] = words[w]
    return used - gap


@njit(cache=True, nogil=True)
def _expire_distinct(d, used, resolution, horizon):  # pragma: no cover - compiled
    """Drop the distinct rows of ``resolution`` whose bucket starts at or before ``horizon``."""
    kept = 0
    for r in range(0, used, DISTINCT):
        if d[r] == resolution and d[r + 2] <= horizon:
            continue
        for w in range(DISTINCT):
            d[kept + w] = d[r + w]
        kept += DISTINCT
    return kept


@njit(cache=True, nogil=True)
def _add_distinct(d, used, resolution, code, start, value):  # pragma: no cover - compiled
    """Insert the row where it sorts, once (binary search); returns the words in use."""
    key = (resolution, code, start, value)
    lo, hi = 0, used // DISTINCT
    while lo < hi:
        mid = (lo + hi) // 2
        w = mid * DISTINCT
        if (d[w], d[w + 1], d[w + 2], d[w + 3]) < key:
            lo = mid + 1
        else:
            hi = mid
    at = lo * DISTINCT
    if at < used and (d[at], d[at + 1], d[at + 2], d[at + 3]) == key:
        return used
    for w in range(used - 1, at - 1, -1):
        d[w + DISTINCT] = d[w]
    d[at], d[at + 1], d[at + 2], d[at + 3] = resolution, code, start, value
    return used + DISTINCT


@njit(cache=True, nogil=True)
def move_rows(source, target, first, used, slots, to, column):  # pragma: no cover - compiled
    """Copy each slot's words in use (``first``/``used`` column ``column``) from ``source`` to
    ``target`` at ``to[k]``, and make that its first word. ``target`` may be ``source`` when the
    new places do not overlap any slot's words in use."""
    for k in range(len(slots)):
        s = slots[k]
        start, at = first[s, column], to[k]
        for w in range(used[s, column]):
            target[at + w] = source[start + w]
        first[s, column] = at


@njit(cache=True, nogil=True)
def pack_rows(
    buckets, distinct, first, used, newest_bits, events, n_fraud, slots, magic
):  # pragma: no cover - compiled
    """The packed states (``streaming.packed``) of ``slots``, end to end, without their fraud
    times (``n_fraud`` of them per slot, appended by the caller); returns (words, each one's end)."""
    total = 0
    for k in range(len(slots)):
        total += HEADER + used[slots[k], 0] + used[slots[k], 1]
    out = np.empty(total, dtype=np.int64)
    ends = np.empty(len(slots), dtype=np.int64)
    at = 0
    for k in range(len(slots)):
        s = slots[k]
        nb, nd = used[s, 0], used[s, 1]
        out[at], out[at + 1], out[at + 2] = magic, newest_bits[s], events[s]
        out[at + 3], out[at + 4], out[at + 5] = nb // BUCKET, nd // DISTINCT, n_fraud[k]
        at += HEADER
        start = first[s, 0]
        for w in range(nb):
            out[at + w] = buckets[start + w]
        at += nb
        start = first[s, 1]
        for w in range(nd):
            out[at + w] = distinct[start + w]
        at += nd
        ends[k] = at
    return out, ends


@njit(cache=True, nogil=True)
def apply_payments(
    buckets,
    distinct,
    end,
    first,
    used,
    room,
    newest_ts,
    events,
    touched,
    mark,
    token,
    slots,
    event_ts,
    amounts,
    plan,
    codes,
    hashes,
    spare,
    now,
    changed,
):  # pragma: no cover - compiled
    """``update_rows`` for payments of many entities kept in shared arrays (``EntityTable``), in
    order: payment i to slot ``slots[i]``, making room as it goes.

    A slot without room after its rows for one more payment's (``spare``: words of bucket and
    distinct rows) moves to ``end`` (``_move_to_end``). Also kept per slot: the newest event
    time, the payment count, ``touched`` (set to ``now``), and ``mark``: a slot first changed by
    this call (``mark`` != ``token``) is appended to ``changed``. Returns (payments applied,
    slots appended); fewer than all when a slot must move and its array is full: the caller
    makes space and calls again with the rest.
    """
    n_changed = 0
    for i in range(len(slots)):
        s = slots[i]
        if used[s, 0] + spare[0] > room[s, 0] and not _move_to_end(buckets, end, first, used, room, s, 0, spare[0]):
            return i, n_changed
        if used[s, 1] + spare[1] > room[s, 1] and not _move_to_end(distinct, end, first, used, room, s, 1, spare[1]):
            return i, n_changed
        ts = event_ts[i]
        used[s, 0], used[s, 1] = _update(
            buckets[first[s, 0] :],
            distinct[first[s, 1] :],
            used[s, 0],
            used[s, 1],
            int(ts),  # truncates as Python's int() does for the one-payment update's callers
            int(newest_ts[s]),
            amounts[i],
            plan,
            codes,
            hashes[i],
        )
        if ts > newest_ts[s]:
            newest_ts[s] = ts
        events[s] += 1
        touched[s] = now
        if mark[s] != token:
            mark[s] = token
            changed[n_changed] = s
            n_changed += 1
    return len(slots), n_changed


@njit(cache=True, nogil=True)
def _move_to_end(words, end, first, used, room, s, column, spare):  # pragma: no cover - compiled
    """Move slot ``s``'s rows to the end of ``words``, with room to grow by half (at least two
    payments' worth) so that a growing state moves rarely; False if they do not fit."""
    size = used[s, column] + spare + max(used[s, column] // 2, spare)
    at = end[column]
    if at + size > len(words):
        return False
    start = first[s, column]
    for w in range(used[s, column]):
        words[at + w] = words[start + w]
    first[s, column] = at
    room[s, column] = size
    end[column] = at + size
    return True
