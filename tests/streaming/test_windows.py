"""Window boundaries, expiry, order independence and point-in-time replay of the feature code."""

import random

from streaming import OfflineFeatureBuilder
from streaming.windows import LAYOUTS, EntityState, apply_transaction, bucket_rows, distinct_rows, feature_vector
from tests.factories import T0, txn

CARD = LAYOUTS["card"]


def features_after(history, current):
    state = EntityState()
    for t in history:
        apply_transaction(state, CARD, t)
    return feature_vector({"card": state}, current)


def test_first_transaction_counts_itself():
    f = feature_vector({}, txn(amount_minor=1234))
    assert f["card_txn_count_1h"] == 1.0 and f["card_amount_sum_24h"] == 12.34
    assert f["card_distinct_merchants_24h"] == 1.0 and f["card_amount_to_mean_30d"] == 1.0
    assert f["card_seconds_since_previous"] == 30 * 86400  # no previous transaction: the cap
    assert f["merchant_fraud_rate_7d"] == 0.0 and f["device_txn_count_1m"] == 1.0


def test_ten_minute_window_boundary_is_bucket_aligned():
    # T0 is 12:00:00. The 10m window read at 12:10:30 covers buckets starting 12:01..12:10.
    at_start_of_excluded_bucket = txn(1, minutes=0)
    at_start_of_included_bucket = txn(2, minutes=1)
    now = txn(3, minutes=10.5)
    f = features_after([at_start_of_excluded_bucket, at_start_of_included_bucket], now)
    assert f["card_txn_count_10m"] == 2.0  # minute-1 event + the current one
    assert f["card_txn_count_1h"] == 3.0


def test_24h_window_expires_old_days_and_sums_amounts():
    history = [txn(1, minutes=0, amount_minor=1000), txn(2, minutes=60 * 20, amount_minor=2000)]
    f_same_day = features_after(history, txn(3, minutes=60 * 22, amount_minor=500))
    assert f_same_day["card_txn_count_24h"] == 3.0 and f_same_day["card_amount_sum_24h"] == 35.0
    f_next_day = features_after(history, txn(3, minutes=60 * 25, amount_minor=500))
    assert f_next_day["card_txn_count_24h"] == 2.0 and f_next_day["card_amount_sum_24h"] == 25.0


def bucket_starts(state, resolution):
    return [start for r, start, *_ in bucket_rows(state) if r == resolution]


def test_expired_buckets_are_dropped_from_state():
    state = EntityState()
    apply_transaction(state, CARD, txn(1, minutes=0, merchant="m-day-0"))
    apply_transaction(state, CARD, txn(2, minutes=60 * 24 * 3))
    assert min(bucket_starts(state, 3600)) > T0.timestamp()  # the 24h window's day-0 buckets are gone
    assert min(bucket_starts(state, 86400)) <= T0.timestamp()  # the 30-day window still reaches day 0
    assert all(start > T0.timestamp() for _, _, start, _ in distinct_rows(state))  # and the merchants they saw
    assert state.events == 2


def test_rows_stay_sorted_by_bucket_start_whatever_the_arrival_order():
    state = EntityState()
    for minutes in (30, 10, 20, 10.5, 31, 0):
        apply_transaction(state, CARD, txn(int(minutes * 10), minutes=minutes, amount_minor=100 + int(minutes)))
    rows = list(bucket_rows(state))
    assert [row[:2] for row in rows] == sorted(row[:2] for row in rows)
    assert len({row[:2] for row in rows}) == len(rows)  # one row per bucket
    five_minutes = {start: (n, amount, largest) for r, start, n, amount, largest in rows if r == 300}
    t0 = int(T0.timestamp())
    assert five_minutes == {
        t0: (1, 100, 100),
        t0 + 600: (2, 220, 110),
        t0 + 1200: (1, 120, 120),
        t0 + 1800: (2, 261, 131),
    }


def test_distinct_counts_merchants_countries_devices():
    history = [
        txn(1, merchant="m1", country="DE", device="d1"),
        txn(2, minutes=5, merchant="m2", country="FR", device="d1"),
        txn(3, minutes=6, merchant="m1", country="DE", device="d2"),
    ]
    f = features_after(history, txn(4, minutes=7, merchant="m3", country="DE", device="d2"))
    assert f["card_distinct_merchants_24h"] == 3.0
    assert f["card_distinct_countries_24h"] == 2.0
    assert f["card_distinct_devices_24h"] == 2.0


def test_state_is_independent_of_arrival_order():
    events = [txn(i, minutes=i * 37, merchant=f"m{i % 4}", amount_minor=100 + i) for i in range(80)]
    in_order, shuffled = EntityState(), EntityState()
    for t in events:
        apply_transaction(in_order, CARD, t)
    mixed = events[:]
    random.Random(3).shuffle(mixed)
    for t in mixed:
        apply_transaction(shuffled, CARD, t)

    assert in_order == shuffled


def test_offline_replay_never_sees_the_future():
    present = txn(1, minutes=0, amount_minor=1000)
    future = txn(2, minutes=5, amount_minor=999_999, merchant="merch-future")
    with_future = OfflineFeatureBuilder().replay([future, present])  # given out of order on purpose
    without = OfflineFeatureBuilder().replay([present])
    assert with_future[present.transaction_id] == without[present.transaction_id]
    assert with_future[future.transaction_id]["card_txn_count_10m"] == 2.0


def test_other_cards_do_not_leak_into_a_cards_features():
    other = [txn(i, minutes=i, card="card-999999") for i in range(10)]
    f = OfflineFeatureBuilder().replay([*other, txn(100, minutes=11)])
    assert f["tx-test-000100"]["card_txn_count_1h"] == 1.0


def test_in_event_order_sorts_as_event_order_does_ties_by_id():
    import random

    from streaming.offline import event_order, in_event_order
    from tests.factories import txn

    rng = random.Random(3)
    payments = [txn(n, minutes=rng.choice([0.0, 0.5, 1.0])) for n in rng.sample(range(100), 30)]
    order = in_event_order(payments, [t.event_ts for t in payments])
    assert [payments[i] for i in order] == sorted(payments, key=event_order)
