"""Where the store keeps the decision path's idempotency records: fields of a few hashes, one per
bucket of ids per generation of event time, not a key per payment (a keyspace growing by a key per
payment rehashes at each power of two: docs/performance.md, section 3)."""

from collections import Counter
from datetime import timedelta

import pytest

from streaming import OnlineFeatureStore
from streaming.online import DECISION_BUCKETS, DECISION_GENERATION_S, decision_bucket
from tests.factories import T0, txn


def _record(store, payments, ttl_s=60):
    for start in range(0, len(payments), 60):  # batch-sized calls, as the scorer makes them
        assert store.record_decisions(
            [(t, t.transaction_id.encode()) for t in payments[start : start + 60]], ttl_s
        ) == [None] * len(payments[start : start + 60])


def test_thousands_of_records_take_a_few_hashes_and_each_is_found_again(redis_client):
    store = OnlineFeatureStore(redis_client, prefix="records")
    payments = [txn(n, minutes=n / 100) for n in range(3000)]  # 30 minutes of event time
    _record(store, payments)
    hashes = list(redis_client.scan_iter("records:dec:*", count=1000))
    generations = {int(t.event_ts // DECISION_GENERATION_S) for t in payments}
    assert len(generations) >= 3 and len(hashes) <= DECISION_BUCKETS * len(generations)
    assert sum(redis_client.hlen(h) for h in hashes) == 3000
    assert store.find_decisions(payments) == [t.transaction_id.encode() for t in payments]
    assert store.find_decisions([txn(9999)]) == [None]


def test_a_payment_s_hash_follows_its_own_event_time_not_the_clock(redis_client):
    # A retry keeps the payment's event time, so any scorer, whatever its clock, finds the record.
    # T0 starts a generation: minute 9 is in the same one, minute 10 in the next.
    store = OnlineFeatureStore(redis_client, prefix="records-clock")
    payment = txn(1, minutes=9)
    _record(store, [payment])
    retry = txn(1, minutes=9)
    same_id_next_generation = txn(1, at=T0 + timedelta(seconds=DECISION_GENERATION_S))
    assert store.find_decisions([retry, same_id_next_generation]) == [payment.transaction_id.encode(), None]
    assert store.decision_key("tx-test-000001", T0.timestamp()) == store.decision_key(
        "tx-test-000001", payment.event_ts
    )


def test_each_write_restarts_its_hash_s_ttl_so_a_record_lives_at_least_the_ttl(redis_client):
    store = OnlineFeatureStore(redis_client, prefix="records-ttl")
    first = txn(1)
    key = store.decision_key(first.transaction_id, first.event_ts)
    same_hash = next(
        t for t in (txn(n) for n in range(2, 2000)) if store.decision_key(t.transaction_id, t.event_ts) == key
    )
    _record(store, [first], ttl_s=600)
    redis_client.expire(key, 5)  # as if 595 s had passed since the first record
    _record(store, [same_hash], ttl_s=600)
    assert 590 < redis_client.ttl(key) <= 600


def test_bucket_sizes_spread_over_one_doubling_so_the_hashes_rehash_one_after_another():
    # Equal buckets would all cross each power of two at once (Redis rehashes them together).
    counts = Counter(decision_bucket(f"tx-{n:08d}") for n in range(200_000))
    assert set(counts) == set(range(DECISION_BUCKETS))
    shares = [counts[b] / counts[0] for b in range(DECISION_BUCKETS)]
    expected = [2 ** (b / DECISION_BUCKETS) for b in range(DECISION_BUCKETS)]
    assert shares == pytest.approx(expected, rel=0.1)
