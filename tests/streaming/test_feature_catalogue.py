"""The wider feature set: every entity and window, mean/max, recency, 30-day ratio, label rates."""

from datetime import timedelta

import pytest

from schema import Label, LabelSource
from streaming import OfflineFeatureBuilder
from streaming.features import MODEL_FEATURES, WINDOWED_FEATURES
from streaming.windows import LAYOUTS, EntityState, apply_label, apply_transaction, feature_vector
from tests.factories import T0, txn


def replay(events, labels=()):
    return OfflineFeatureBuilder().replay(events, labels)


def test_every_entity_has_count_sum_mean_max_over_four_windows():
    names = {f.name for f in WINDOWED_FEATURES}
    for entity in ("card", "customer", "merchant", "device"):
        for window in ("1m", "1h", "24h", "7d"):
            assert {
                f"{entity}_txn_count_{window}",
                f"{entity}_amount_sum_{window}",
                f"{entity}_amount_mean_{window}",
                f"{entity}_amount_max_{window}",
            } <= names
    assert len(MODEL_FEATURES) == len(set(MODEL_FEATURES))


def test_mean_and_max_over_the_window_include_the_current_transaction():
    f = replay([txn(1, amount_minor=1000), txn(2, minutes=10, amount_minor=7000), txn(3, minutes=20, amount_minor=100)])
    last = f["tx-test-000003"]
    assert last["card_amount_max_1h"] == 70.0
    assert last["card_amount_mean_1h"] == pytest.approx((10 + 70 + 1) / 3)
    assert last["card_amount_to_mean_30d"] == pytest.approx(1.0 / ((10 + 70 + 1) / 3))


def test_one_minute_window_has_five_second_buckets():
    # Read at 12:01:02 the 1m window covers buckets starting 12:00:05 .. 12:01:00.
    f = replay([txn(1, minutes=0), txn(2, minutes=5 / 60), txn(3, minutes=62 / 60)])
    assert f["tx-test-000003"]["card_txn_count_1m"] == 2.0


def test_entities_are_aggregated_separately():
    other_card_same_merchant = txn(1, card="card-2", device="dev-2")
    f = replay([other_card_same_merchant, txn(2, minutes=1)])["tx-test-000002"]
    assert f["card_txn_count_1h"] == 1.0 and f["device_txn_count_1h"] == 1.0
    assert f["merchant_txn_count_1h"] == 2.0 and f["customer_txn_count_1h"] == 2.0  # factories share the customer


def test_seconds_since_the_cards_previous_transaction():
    f = replay([txn(1), txn(2, minutes=3), txn(3, minutes=3, card="card-2")])
    assert f["tx-test-000002"]["card_seconds_since_previous"] == 180.0
    assert f["tx-test-000003"]["card_seconds_since_previous"] == 30 * 86400


def fraud_label(n, known_after_days, merchant="merch-0001"):
    return Label(
        transaction_id=f"tx-test-{n:06d}",
        is_fraud=True,
        source=LabelSource.CHARGEBACK,
        known_at=T0 + timedelta(days=known_after_days),
        author="issuer",
        merchant_id=merchant,
    )


def test_merchant_fraud_rate_counts_a_label_only_from_when_it_became_known():
    history = [txn(i, minutes=i * 60) for i in range(10)]  # ten payments at one merchant, hourly
    before = txn(100, at=T0 + timedelta(days=2, hours=-1))
    after = txn(101, at=T0 + timedelta(days=2, hours=1))
    f = replay([*history, before, after], [fraud_label(3, known_after_days=2)])
    assert f[before.transaction_id]["merchant_fraud_rate_7d"] == 0.0
    assert f[after.transaction_id]["merchant_fraud_rate_7d"] == pytest.approx(1 / 12)  # 1 label per 12 payments
    assert f[after.transaction_id]["merchant_fraud_rate_30d"] == pytest.approx(1 / 12)


def test_label_rate_window_and_expiry():
    state = EntityState()
    layout = LAYOUTS["merchant"]
    apply_label(state, layout, fraud_label(1, known_after_days=0))
    apply_label(state, layout, fraud_label(1, known_after_days=1))  # the same fraud reported again: counted once
    apply_label(state, layout, fraud_label(2, known_after_days=10))
    apply_label(state, layout, fraud_label(4, known_after_days=10.5))  # in the store, not yet known at the read
    current = txn(9, at=T0 + timedelta(days=10))
    f = feature_vector({"merchant": state}, current)
    assert f["merchant_fraud_rate_7d"] == 1.0 and f["merchant_fraud_rate_30d"] == 2.0  # per payment in window
    apply_label(state, layout, fraud_label(3, known_after_days=39))
    # day 0 has left the 30-day window
    assert set(state.fraud_known) == {"tx-test-000002", "tx-test-000003", "tx-test-000004"}


def test_state_with_labels_is_independent_of_arrival_order():
    import random

    events = [txn(i, minutes=i * 300, amount_minor=100 + i) for i in range(60)]
    labels = [fraud_label(i, known_after_days=i / 5) for i in range(0, 60, 7)]
    layout = LAYOUTS["merchant"]
    a, b = EntityState(), EntityState()
    for t in events:
        apply_transaction(a, layout, t)
    for lb in labels:
        apply_label(a, layout, lb)
    mixed = [*events, *labels]
    random.Random(11).shuffle(mixed)
    for item in mixed:
        (apply_label if isinstance(item, Label) else apply_transaction)(b, layout, item)
    assert a.fraud_known == b.fraud_known and a.buckets == b.buckets


def test_the_read_of_a_long_history_equals_the_offline_replay():
    from streaming.windows import entity_features

    history = [txn(i, minutes=i * 7, amount_minor=100 * (i % 13 + 1)) for i in range(300)]
    state = EntityState()
    for t in history:
        apply_transaction(state, LAYOUTS["merchant"], t)
    now = txn(999, minutes=300 * 7 - 6)  # inside the newest bucket of every resolution
    later = txn(1000, minutes=300 * 7 + 60 * 24 * 3)  # beyond the newest buckets
    for t in (now, later):
        replayed = OfflineFeatureBuilder().replay([*history, t])[t.transaction_id]
        read = entity_features(state, LAYOUTS["merchant"], t)
        assert read == {k: replayed[k] for k in read}
    assert entity_features(state, LAYOUTS["merchant"], now)["merchant_txn_count_7d"] == 301.0
