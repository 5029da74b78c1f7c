"""Training features are point-in-time: nothing from after a transaction reaches its features."""

from datetime import timedelta

import numpy as np

from retrain.dataset import build_training_set, labelled_as_of
from schema import Label, LabelSource
from streaming import feature_matrix
from streaming.features import MODEL_FEATURES
from tests.factories import T0, txn


def fraud_label(tx_id, known_at):
    return Label(
        transaction_id=tx_id,
        is_fraud=True,
        source=LabelSource.CHARGEBACK,
        known_at=known_at,
        author="issuer",
        merchant_id="merch-0001",
    )


def row(training_set, tx_id):
    index = [t.transaction_id for t in training_set.transactions].index(tx_id)
    return training_set.features[index], training_set.labels[index]


def test_future_events_and_not_yet_known_labels_do_not_leak_into_training_features():
    history = [txn(i, minutes=i * 30, card=f"card-{i % 3}") for i in range(40)]
    target = txn(100, minutes=24 * 60)
    as_of = T0 + timedelta(days=5)
    clean = build_training_set([*history, target], [], as_of)

    future_event = txn(101, minutes=24 * 60 + 5, amount_minor=900_000)  # same card and merchant, 5 min later
    label_after_target = fraud_label("tx-test-000004", target.event_time + timedelta(minutes=2))
    label_after_cutoff = fraud_label("tx-test-000100", as_of + timedelta(days=1))
    planted = build_training_set([future_event, *history, target], [label_after_target, label_after_cutoff], as_of)

    clean_features, _ = row(clean, target.transaction_id)
    planted_features, planted_y = row(planted, target.transaction_id)
    np.testing.assert_array_equal(clean_features, planted_features)
    assert planted_y == 0  # its chargeback arrives after the cut-off: not a training label yet

    # The planted label is real once known: the future event, 3 minutes after it, does see it.
    future_features, _ = row(planted, future_event.transaction_id)
    assert future_features[MODEL_FEATURES.index("merchant_fraud_rate_7d")] > 0
    assert clean_features[MODEL_FEATURES.index("card_txn_count_1h")] == 1.0  # only itself: card-1 has no history


def test_one_replay_of_a_longer_history_gives_the_training_set_of_any_earlier_cut_off():
    # Scenarios retrain many times from one replay (labelled_as_of); that is only sound if a
    # longer history changes nothing before the cut-off: features, labels and rows.
    history = [txn(i, minutes=i * 47, card=f"card-{i % 4}", amount_minor=1_000 + 97 * i) for i in range(80)]
    labels = [
        fraud_label("tx-test-000010", T0 + timedelta(hours=20)),
        fraud_label("tx-test-000020", T0 + timedelta(days=3)),
    ]
    as_of = T0 + timedelta(hours=36)
    direct = build_training_set(history, labels, as_of)

    ordered, features = feature_matrix(history, labels)
    cut = labelled_as_of(ordered, features, labels, as_of)

    assert [t.transaction_id for t in cut.transactions] == [t.transaction_id for t in direct.transactions]
    assert len(cut) < len(history)  # the cut-off really cut
    np.testing.assert_array_equal(cut.features, direct.features)
    np.testing.assert_array_equal(cut.labels, direct.labels)
    assert cut.labels.sum() == 1  # the label known at the cut-off counts, the later one does not
