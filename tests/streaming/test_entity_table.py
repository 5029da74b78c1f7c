"""The stream's entity tables (``streaming.entity_table``) hold exactly the states that
``apply_transaction``/``apply_label`` give one payment at a time, packed byte for byte as
``pack_state`` packs them, through batches, moves, compaction, snapshots and forgetting."""

import random

import pytest

from streaming.entity_table import EntityPayments, EntityTable
from streaming.packed import pack_state
from streaming.windows import LAYOUTS, EntityState, apply_label, apply_transaction, value_hash
from tests.factories import txn
from tests.streaming.test_feature_catalogue import fraud_label
from tests.streaming.test_state_kernel import random_history


def expected_packed(layout, histories):
    states = {}
    for key, item in histories:
        state = states.setdefault(key, EntityState())
        if hasattr(item, "amount_minor"):
            apply_transaction(state, layout, item)
        else:
            apply_label(state, layout, item)
    return {key: pack_state(state) for key, state in states.items()}


def interleaved(seed, entities=12):
    """Payments of many entities shuffled together (each entity's own order kept at random too)."""
    rng = random.Random(seed)
    items = [(f"e{k}", t) for k in range(entities) for t in random_history(seed * 100 + k, n=rng.randint(1, 60))]
    rng.shuffle(items)
    return items


def columns(layout, items):
    """(entity id, payment) pairs as the table's input."""
    txns = [t for _, t in items]
    hashes = [value_hash(v) for t in txns for v in layout.distinct_values(t)] if layout.distinct_fields else []
    return EntityPayments([k for k, _ in items], [t.amount_minor for t in txns], [t.event_ts for t in txns], hashes)


def apply_in_batches(table, items, rng, now=0.0):
    changed = set()
    at = 0
    while at < len(items):
        size = rng.choice([1, 3, 17, 80])
        batch = items[at : at + size]
        at += size
        slots = table.apply(columns(table.layout, batch), now)
        changed |= {table.keys[s] for s in slots.tolist()}
    return changed


@pytest.mark.parametrize("entity", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", range(4))
def test_a_table_packs_what_one_payment_at_a_time_gives(entity, seed):
    layout = LAYOUTS[entity]
    items = interleaved(seed)
    table = EntityTable(layout)
    changed = apply_in_batches(table, items, random.Random(seed))
    expected = expected_packed(layout, items)
    assert changed == set(expected)
    assert dict(table.pack(table.live_slots())) == expected


@pytest.mark.parametrize("entity", sorted(LAYOUTS))
def test_a_table_restored_from_its_snapshot_goes_on_as_the_original(entity):
    layout = LAYOUTS[entity]
    items = interleaved(7)
    half = len(items) // 2
    original = EntityTable(layout)
    apply_in_batches(original, items[:half], random.Random(1))
    restored = EntityTable.restore(layout, original.snapshot())
    for table in (original, restored):
        apply_in_batches(table, items[half:], random.Random(2))
    expected = expected_packed(layout, items)
    assert dict(restored.pack(restored.live_slots())) == expected == dict(original.pack(original.live_slots()))


def test_labels_are_packed_after_the_rows_and_survive_a_snapshot():
    layout = LAYOUTS["merchant"]
    items = [
        ("m1", txn(1, amount_minor=500)),
        ("m1", fraud_label(1, known_after_days=1)),
        ("m1", fraud_label(2, known_after_days=0.5)),
        ("m2", fraud_label(3, known_after_days=2)),  # a merchant known only from a label
        ("m1", txn(3, minutes=2)),
    ]
    table = EntityTable(layout)
    for key, item in items:
        if hasattr(item, "amount_minor"):
            table.apply(columns(layout, [(key, item)]), 0.0)
        else:
            table.apply_label(key, item, 0.0)
    expected = expected_packed(layout, items)
    assert dict(table.pack(table.live_slots())) == expected
    restored = EntityTable.restore(layout, table.snapshot())
    assert dict(restored.pack(restored.live_slots())) == expected


def test_forgotten_entities_free_their_slots_and_the_rest_are_untouched():
    layout = LAYOUTS["card"]
    table = EntityTable(layout)
    old = [(f"old{k}", txn(k, card=f"old{k}")) for k in range(50)]
    new = [(f"new{k}", txn(100 + k, card=f"new{k}", minutes=k)) for k in range(50)]
    for now, items in ((1000.0, old), (5000.0, new)):
        table.apply(columns(layout, items), now)
    assert sorted(table.forget_idle(horizon=3000.0)) == sorted(k for k, _ in old)
    assert len(table) == 50
    table = EntityTable.restore(layout, table.snapshot())  # the free slots survive a snapshot
    again = [(f"again{k}", txn(200 + k, card=f"again{k}")) for k in range(50)]  # reuses the freed slots
    table.apply(columns(layout, again), 6000.0)
    assert len(table.keys) == 100
    assert dict(table.pack(table.live_slots())) == expected_packed(layout, new + again)


def test_rows_that_outgrow_their_room_move_and_the_arrays_compact_without_losing_any():
    layout = LAYOUTS["card"]
    table = EntityTable(layout)
    # Each entity's rows grow payment after payment (a new bucket every 2 hours): slots keep moving
    # to the end, and the arrays fill with moved-away words until they are compacted.
    items = [(f"c{k}", txn(n * 40 + k, card=f"c{k}", minutes=n * 120)) for n in range(40) for k in range(40)]
    grown = []
    for at in range(0, len(items), 40):
        batch = items[at : at + 40]
        table.apply(columns(layout, batch), 0.0)
        grown.append(len(table.rows[0]))
    assert grown[-1] > grown[0]  # it had to grow, so it compacted on the way
    assert dict(table.pack(table.live_slots())) == expected_packed(layout, items)
