"""The decision path's batch read equals the offline replay, payment by payment, also when one
batch holds several payments of the same card, merchant or device (they must see each other)."""

import random

import pytest

from streaming import OnlineFeatureStore
from streaming.offline import OfflineFeatureBuilder
from tests.factories import txn

pytestmark = pytest.mark.integration


def _history_and_batch(seed: int):
    rng = random.Random(seed)
    cards = [f"card-{i}" for i in range(6)]
    merchants = [f"merch-{i}" for i in range(3)]

    def payment(n: int, minutes: float):
        card = rng.choice(cards)
        return txn(
            n,
            minutes=minutes,
            card=card,
            merchant=rng.choice(merchants),
            device=f"dev-{card}-{rng.randint(0, 1)}",
            amount_minor=rng.randint(100, 90_000),
            country=rng.choice(["DE", "DE", "FR"]),
        )

    history = [payment(n, rng.uniform(0, 3 * 24 * 60)) for n in range(300)]
    history.sort(key=lambda t: t.event_ts)
    end = max(t.event_ts for t in history)
    offset = (end - history[0].event_ts) / 60
    # The batch: a few minutes after the history, shuffled (arrival order is not event order).
    batch = [payment(1000 + n, offset + rng.uniform(0, 3)) for n in range(40)]
    rng.shuffle(batch)
    return history, batch


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_features_equal_the_offline_replay_for_every_payment(redis_client, seed):
    history, batch = _history_and_batch(seed)
    offline = OfflineFeatureBuilder()
    for t in history:
        offline.apply(t)
    store = OnlineFeatureStore(redis_client, "t")
    store.write_states(((e, i, s) for (e, i), s in offline.states.items()), history[-1].event_ts)

    expected = {}
    for t in sorted(batch, key=lambda t: (t.event_ts, t.transaction_id)):
        expected[t.transaction_id] = offline.features(t)
        offline.apply(t)

    got = store.features_for_batch(batch)
    assert len({t.card_id for t in batch}) < len(batch)  # cards repeat within the batch
    for t, vector in zip(batch, got.vectors, strict=True):
        assert vector == pytest.approx(expected[t.transaction_id], rel=1e-9, abs=1e-9), t.transaction_id


def test_the_part_of_a_read_left_to_decide_gets_the_features_of_reading_that_part_alone(redis_client):
    """After the idempotency lookup, only the payments not decided before are decided, from the
    read already made (``BatchRead.of_payments``): each must get exactly the features a read of
    those payments alone would give (its own entities, the others' payments not folded in)."""
    history, batch = _history_and_batch(4)
    offline = OfflineFeatureBuilder()
    for t in history:
        offline.apply(t)
    store = OnlineFeatureStore(redis_client, "t")
    store.write_states(((e, i, s) for (e, i), s in offline.states.items()), history[-1].event_ts)

    read = store.read_batch(batch, look_up=batch)
    left = [i for i in range(len(batch)) if i % 3 != 1]  # as if every third had been decided before
    part = [batch[i] for i in left]
    from_read = store.features_for_batch(part, read.of_payments(left)).matrix
    alone = store.features_for_batch(part).matrix
    assert from_read.tolist() == alone.tolist()
    whole = store.features_for_batch(batch, read).matrix
    assert whole[left].tolist() != from_read.tolist()  # the decided payments do change the others' windows
