"""Sharded state: stable routing, the same states as entity-by-entity application, snapshots, idle eviction."""

from schema import Label, LabelSource
from streaming import OfflineFeatureBuilder
from streaming.admission import Admission
from streaming.packed import pack_state
from streaming.shards import AdmissionShard, EntityShard, merge_inputs, shard_input, shard_of
from tests.factories import txn


def test_shard_names_are_stable_and_spread():
    assert shard_of("card:card-1", 16) == shard_of("card:card-1", 16)  # crc32, not Python's salted hash()
    assert shard_of("card:card-1", 16) == "s" + str(__import__("zlib").crc32(b"card:card-1") % 16)
    assert len({shard_of(f"card:card-{i}", 16) for i in range(500)}) == 16


def packed(builder):
    return {key: pack_state(state) for key, state in builder.states.items()}


def by_key(packed_states):
    return {(entity, entity_id): raw for entity, entity_id, raw in packed_states}


def test_entity_shard_builds_the_same_states_as_the_offline_builder():
    history = [txn(i, minutes=i * 3, card=f"card-{i % 4}", merchant=f"m{i % 3}", device=f"d{i % 5}") for i in range(60)]
    shard = EntityShard()
    changed = {}
    for t in history:
        changed.update(by_key(shard.pack(shard.apply([shard_input([t])], now=0.0))))
    builder = OfflineFeatureBuilder()
    builder.replay(history)
    assert by_key(shard.pack_all()) == packed(builder) == changed


def test_snapshots_round_trip_and_idle_keys_are_forgotten():
    shard = EntityShard()
    shard.apply([shard_input([txn(1)])], now=1000.0)
    shard.apply([shard_input([txn(2, card="card-2", device="d2")])], now=5000.0)
    restored = EntityShard.decode(shard.encode())
    assert by_key(restored.pack_all()) == by_key(shard.pack_all())
    forgotten = shard.forget_idle(idle_ttl_s=2000.0, now=6000.0)
    assert forgotten == {"card": ["card-000001"], "device": ["dev-0000001"]}
    assert set(by_key(shard.pack_all())) == {
        ("card", "card-2"),
        ("customer", "cust-000001"),
        ("merchant", "merch-0001"),
        ("device", "d2"),
    }


def test_a_shard_resumed_from_its_snapshot_goes_on_as_the_original():
    history = [txn(i, minutes=i * 2.5, card=f"c{i % 3}", merchant=f"m{i % 4}", device=f"d{i % 2}") for i in range(40)]
    original = EntityShard()
    for t in history[:25]:
        original.apply([shard_input([t])], now=0.0)
    resumed = EntityShard.decode(original.encode())
    for t in history[25:]:  # updated in place after the restore, late ones included
        original.apply([shard_input([t])], now=0.0)
        resumed.apply([shard_input([t])], now=0.0)
    late = txn(99, minutes=55, card="c1", merchant="m-late")  # behind the newest buckets
    original.apply([shard_input([late])], now=0.0)
    resumed.apply([shard_input([late])], now=0.0)
    assert by_key(resumed.pack_all()) == by_key(original.pack_all())


def test_admission_shard_round_trips_and_keeps_judging_the_same_way():
    shard = AdmissionShard()
    assert shard.admit(txn(1, minutes=10), 300, now=0.0) is Admission.ADMITTED
    restored = AdmissionShard.decode(shard.encode())
    assert restored.admit(txn(1, minutes=10), 300, now=0.0) is Admission.DUPLICATE
    assert restored.admit(txn(2, minutes=0), 300, now=0.0) is Admission.LATE


def test_a_batch_of_many_inputs_is_applied_as_they_would_be_one_after_another():
    # An entity shard gets one input per card shard in a batch: merged once, in order, labels too.
    history = [txn(i, minutes=i % 7, card=f"c{i % 5}", merchant=f"m{i % 3}", device=f"d{i % 4}") for i in range(60)]
    label = Label(
        transaction_id=history[3].transaction_id,
        is_fraud=True,
        source=LabelSource.REVIEW,
        known_at=history[3].event_time,
        author="analyst",
        merchant_id="m0",
    )
    inputs = [shard_input(history[at : at + 6]) for at in range(0, 60, 6)]
    inputs[4].labels.append(("merchant", "m0", label))
    one_by_one, all_at_once = EntityShard(), EntityShard()
    for item in inputs:
        one_by_one.apply([item], now=0.0)
    merged = merge_inputs(inputs)
    assert merged.payments["card"].ids == [t.card_id for t in history]
    all_at_once.apply([merged], now=0.0)
    assert by_key(all_at_once.pack_all()) == by_key(one_by_one.pack_all())
