"""The batch feature read (a compiled loop over packed states) equals the readable specification
(``streaming.windows.feature_vector``, one payment at a time, folding each into plain states),
for random histories, batches, labels and fold flags, value for value; and for batches cut from a
simulated portfolio, with the states and batch sizes the scorer sees."""

from __future__ import annotations

import copy
import random
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schema import Label, LabelSource
from simulator import ScenarioRates, SimulationConfig, simulate
from streaming.batch_features import batch_feature_matrix, warm_up
from streaming.features import MODEL_FEATURES
from streaming.offline import OfflineFeatureBuilder
from streaming.packed import EMPTY_STATE, pack_state, parse_packed
from streaming.windows import LAYOUTS, EntityState, apply_transaction, feature_vector
from tests.factories import T0, txn

# Time scales that cross every bucket size, from 5 s buckets to 30-day windows.
SCALES_MIN = (0.05, 1.0, 20.0, 240.0, 3000.0, 20000.0)


def _world(seed: int):
    rng = random.Random(seed)
    cards = [f"card-{i}" for i in range(rng.randint(1, 5))]
    merchants = [f"m-{i}" for i in range(rng.randint(1, 3))]
    clock = [0.0]

    def payment(n: int, jitter: float = 0.0):
        clock[0] += rng.choice(SCALES_MIN) * rng.random()
        card = rng.choice(cards)
        return txn(
            n,
            minutes=clock[0] + jitter,
            card=card,
            merchant=rng.choice(merchants),
            device=f"dev-{rng.randint(0, 3)}",
            amount_minor=rng.randint(1, 200_000),
            country=rng.choice(["DE", "FR", "US"]),
            category=rng.choice(["grocery", "travel", "unheard-of"]),
        )

    history = [payment(n) for n in range(rng.randint(0, 120))]
    labels = [
        Label(
            transaction_id=t.transaction_id,
            is_fraud=rng.random() < 0.7,
            source=LabelSource.CHARGEBACK,
            known_at=t.event_time + timedelta(minutes=rng.choice(SCALES_MIN) * rng.random()),
            author="test",
            merchant_id=t.merchant_id,
        )
        for t in history
        if rng.random() < 0.3
    ]
    # Some batch payments go back in time: the stored state may be newer than the payment.
    back_in_time = (0.0, 0.0, 3.0, 500.0)
    batch = [payment(1000 + n, jitter=-rng.choice(back_in_time) * rng.random()) for n in range(rng.randint(1, 40))]
    folds = [rng.random() < 0.85 for _ in batch]
    return history, labels, batch, folds


def _stored_states(history, labels) -> dict[tuple[str, str], EntityState]:
    builder = OfflineFeatureBuilder()
    for t in history:
        builder.apply(t)
    for label in labels:
        builder.apply_label(label)
    return builder.states


def _specification(states, batch, folds) -> np.ndarray:
    states = copy.deepcopy(states)
    rows = []
    for t, fold in zip(batch, folds, strict=True):
        keys = {entity: (entity, layout.key_of(t)) for entity, layout in LAYOUTS.items()}
        vector = feature_vector({entity: states.get(key) for entity, key in keys.items()}, t)
        rows.append([vector[name] for name in MODEL_FEATURES])
        if fold:
            for entity, key in keys.items():
                apply_transaction(states.setdefault(key, EntityState()), LAYOUTS[entity], t)
    return np.array(rows, dtype=np.float64)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_batch_read_equals_the_specification_payment_by_payment(seed):
    history, labels, batch, folds = _world(seed)
    states = _stored_states(history, labels)
    packed = {key: pack_state(state) for key, state in states.items()}

    got = batch_feature_matrix(batch, packed, folds)
    expected = _specification(states, batch, folds)

    mismatched = [(MODEL_FEATURES[c], r) for r, c in zip(*np.nonzero(got != expected), strict=True)]
    assert not mismatched, f"first mismatches (feature, row): {mismatched[:5]}"


def test_batches_of_a_simulated_portfolio_equal_the_specification():
    # Card-testing bursts and busy merchants: long runs of one entity in a batch, and states with
    # many rows of every bucket size, which the small hypothesis worlds above rarely reach.
    rates = ScenarioRates(card_testing=40, account_takeover=20, compromised_merchant=20)
    config = SimulationConfig(n_customers=300, days=3, seed=3, scenarios=rates, label_delay_median_days=0.5)
    sim = simulate(config)
    cut = len(sim.transactions) * 2 // 3
    history, upcoming = sim.transactions[:cut], sim.transactions[cut:]
    labels = [lb for lb in sim.labels if lb.known_at.timestamp() <= history[-1].event_ts]
    states = _stored_states(history, labels)
    packed = {key: pack_state(state) for key, state in states.items()}
    rng = random.Random(11)
    for size in (1, 25, 200, len(upcoming)):
        start = rng.randrange(0, len(upcoming) - size + 1)
        batch = upcoming[start : start + size]
        for folds in ([True] * size, [rng.random() < 0.8 for _ in batch]):
            got = batch_feature_matrix(batch, packed, folds)
            assert np.array_equal(got, _specification(states, batch, folds)), f"batch of {size}"


def test_a_card_with_many_distinct_values_in_its_window_counts_each_once():
    # More values in one window than the kernel sorts by insertion: the large-count path.
    history = [txn(n, minutes=n, merchant=f"m-{n % 45}", device=f"d-{n % 7}") for n in range(120)]
    batch = [txn(1000 + n, minutes=120 + n, merchant=f"m-{n}") for n in range(3)]
    states = _stored_states(history, [])
    packed = {key: pack_state(state) for key, state in states.items()}
    folds = [True] * len(batch)

    got = batch_feature_matrix(batch, packed, folds)

    assert np.array_equal(got, _specification(states, batch, folds))
    assert got[:, MODEL_FEATURES.index("card_distinct_merchants_24h")].tolist() == [45.0, 45.0, 45.0]


def test_a_payment_sees_an_earlier_folded_payment_of_its_card_and_not_an_unfolded_one():
    first, second, third = (txn(n, minutes=n, card="card-A", amount_minor=1000 * (n + 1)) for n in range(3))
    column = MODEL_FEATURES.index("card_txn_count_1h")

    seen = batch_feature_matrix([first, second, third], {}, [True, False, True])[:, column]

    assert seen.tolist() == [1.0, 2.0, 2.0]  # the third sees the first and itself, not the second


def test_equal_states_pack_to_equal_bytes_whatever_the_order_events_were_applied_in():
    events = [txn(n, minutes=7 * n % 50, merchant=f"m-{n % 3}", device=f"d-{n % 4}") for n in range(30)]
    forward, backward = EntityState(), EntityState()
    for t in events:
        apply_transaction(forward, LAYOUTS["card"], t)
    for t in reversed(events):
        apply_transaction(backward, LAYOUTS["card"], t)

    assert pack_state(forward) == pack_state(backward)


def test_parsing_packed_states_keeps_each_row_with_its_entity():
    busy = EntityState()
    for n in range(5):
        apply_transaction(busy, LAYOUTS["card"], txn(n, minutes=n * 90, amount_minor=100 + n))

    parsed = parse_packed([EMPTY_STATE, pack_state(busy), None])

    assert parsed.events.tolist() == [0, 5, 0]
    assert set(parsed.bucket_owner.tolist()) == {1}
    assert parsed.newest_ts[1] == (T0 + timedelta(minutes=360)).timestamp()


@pytest.mark.parametrize(
    "damage",
    [lambda raw: b"\x00" * 48, lambda raw: raw[:-8], lambda raw: raw[:40]],
    ids=["foreign", "truncated rows", "truncated header"],
)
def test_the_batch_read_refuses_a_damaged_state(damage):
    busy = EntityState()
    for n in range(5):
        apply_transaction(busy, LAYOUTS["card"], txn(n, minutes=n * 90))
    payment = txn(99, minutes=500)

    with pytest.raises(ValueError, match="online feature state"):
        batch_feature_matrix([payment], {("card", payment.card_id): damage(pack_state(busy))})


def test_warming_up_the_read_leaves_it_ready():
    warm_up()

    assert batch_feature_matrix([txn(1)], {}).shape == (1, len(MODEL_FEATURES))


def test_a_value_in_an_unknown_format_is_refused_with_a_clear_error():
    try:
        parse_packed([b"\x00" * 48])
    except ValueError as exc:
        assert "unknown format" in str(exc)
    else:
        raise AssertionError("a foreign value was parsed as entity state")
