"""The compiled state update (``streaming.state_kernel``) against a plain-Python statement of the
bucket rules, over random histories with late, out-of-order, too-old and repeated events."""

import random
import struct

import pytest

from streaming.windows import FIELD_CODE, LAYOUTS, ROW, EntityState, apply_transaction, value_hash
from tests.factories import T0, txn

DISTINCT_ROW = struct.Struct("<4q")


def reference_rows(events, layout) -> tuple[bytes, bytes]:
    """The rows the rules give, written for reading rather than speed: per bucket size, a payment
    in the newest bucket or a later one is added (a later one expires rows at or before its start
    minus the retention, with their distinct values); one older but within the retention of the
    newest bucket is added where it sorts; one older than that changes nothing at that size."""
    buckets = {resolution: {} for resolution, _, _ in layout.resolutions}
    distinct = set()
    newest = 0.0
    for t in events:
        second, previous = int(t.event_ts), int(newest)
        newest = max(newest, t.event_ts)
        for resolution, retention, fields in layout.resolutions:
            rows = buckets[resolution]
            start, last = second // resolution * resolution, previous // resolution * resolution
            if start > last:
                horizon = start - retention
                for old in [s for s in rows if s <= horizon]:
                    del rows[old]
                distinct -= {d for d in distinct if d[0] == resolution and d[2] <= horizon}
            elif start <= last - retention:
                continue
            count, amount, largest = rows.get(start, (0, 0, t.amount_minor))
            rows[start] = (count + 1, amount + t.amount_minor, max(largest, t.amount_minor))
            for name in fields:
                distinct.add((resolution, FIELD_CODE[name], start, value_hash(getattr(t, name))))
    packed_buckets = b"".join(
        ROW.pack(resolution, start, *totals)
        for resolution, rows in sorted(buckets.items())
        for start, totals in sorted(rows.items())
    )
    return packed_buckets, b"".join(DISTINCT_ROW.pack(*row) for row in sorted(distinct))


def random_history(seed: int, n: int = 300):
    """Mostly forward in time, with jumps of days, late events of minutes to weeks, and repeats."""
    rng = random.Random(seed)
    minutes, events = 0.0, []
    for i in range(n):
        step = rng.choice([0.0, 0.01, 0.5, 3, 20, 61, 60 * 7, 60 * 30])
        minutes += step * rng.random()
        at = minutes - rng.choice([0, 0, 0, 0.3, 5, 60 * 3, 60 * 30, 60 * 24 * 9]) * rng.random()
        events.append(
            txn(
                i,
                minutes=max(at, 0.0),
                amount_minor=rng.randint(1, 500_000),
                merchant=f"m{rng.randint(0, 6)}",
                country=rng.choice(["DE", "FR", "NL"]),
                device=f"d{rng.randint(0, 3)}",
            )
        )
    return events


@pytest.mark.parametrize("entity", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", range(6))
def test_compiled_update_keeps_the_rows_the_rules_give(entity, seed):
    layout = LAYOUTS[entity]
    events = random_history(seed)
    state = EntityState()
    for t in events:
        apply_transaction(state, layout, t)
    buckets, distinct = reference_rows(events, layout)
    assert bytes(state.buckets) == buckets
    assert bytes(state.distinct) == distinct
    assert state.events == len(events) and state.newest_ts == max(t.event_ts for t in events)


def test_a_payment_in_the_newest_bucket_only_adds_to_it():
    state = EntityState()
    apply_transaction(state, LAYOUTS["merchant"], txn(1, amount_minor=100))
    apply_transaction(state, LAYOUTS["merchant"], txn(2, minutes=0.01, amount_minor=700))
    rows = list(ROW.iter_unpack(state.buckets))
    assert len(rows) == len(LAYOUTS["merchant"].resolutions)  # still one row per bucket size
    assert all(row[2:] == (2, 800, 700) for row in rows)
    assert rows[0][1] == int(T0.timestamp())
