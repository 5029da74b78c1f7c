"""Admission: late events beyond the allowed lateness and duplicates are not applied."""

import random

import numpy as np

from streaming import OfflineFeatureBuilder
from streaming.admission import Admission, AdmissionTable, admitted_in_arrival_order, id_hashes, late_reason
from tests.factories import txn


def admit(table, t, lateness, now=0.0):
    return table.admit_batch([t.card_id], [t.transaction_id], [t.event_ts], lateness, now)[0]


def test_out_of_order_within_allowed_lateness_is_admitted_and_counted_in_its_own_window():
    table = AdmissionTable()
    assert admit(table, txn(1, minutes=10), 300) is Admission.ADMITTED
    assert admit(table, txn(2, minutes=6), 300) is Admission.ADMITTED  # 4 min behind, 5 allowed
    assert admit(table, txn(3, minutes=4), 300) is Admission.LATE  # 6 min behind
    reason = late_reason(table.newest_ts("card-000001"), txn(3, minutes=4), 300)
    assert "late" in reason and "360.0s behind" in reason


def test_duplicates_are_applied_once():
    table = AdmissionTable()
    first = txn(1)
    assert admit(table, first, 300) is Admission.ADMITTED
    assert admit(table, first, 300) is Admission.DUPLICATE
    assert admit(table, txn(2, minutes=20), 300) is Admission.ADMITTED
    assert admit(table, first, 300) is Admission.LATE  # an old duplicate is late, never applied again


def test_cards_are_judged_separately():
    events = [txn(1, minutes=30), txn(2, minutes=0, card="card-2"), txn(3, minutes=1)]
    assert [t.transaction_id for t in admitted_in_arrival_order(events, 300)] == ["tx-test-000001", "tx-test-000002"]


def test_offline_replay_applies_the_streams_admission():
    on_time = [txn(1, minutes=0), txn(2, minutes=30)]
    late = txn(3, minutes=1)  # arrives after minute 30: 29 min behind, not applied
    after = txn(4, minutes=31)
    builder = OfflineFeatureBuilder()
    f = builder.replay([*on_time, late, after, after])  # the same object twice: a duplicate delivery
    assert f[after.transaction_id]["card_txn_count_1h"] == 3.0  # minutes 0, 30 and itself; not the late one
    assert f[late.transaction_id]["card_txn_count_1h"] == 2.0  # it was still decided: minute 0 and itself
    assert builder.states[("card", "card-000001")].events == 3


class Reference:
    """The rule, per card, scanning every id on every payment."""

    def __init__(self):
        self.recent: dict[str, dict[str, float]] = {}
        self.newest: dict[str, float] = {}

    def admit(self, t, lateness):
        recent = self.recent.setdefault(t.card_id, {})
        newest = self.newest.get(t.card_id)
        if t.transaction_id in recent:
            return Admission.DUPLICATE
        if newest is not None and t.event_ts < newest - lateness:
            return Admission.LATE
        recent[t.transaction_id] = t.event_ts
        if newest is None or t.event_ts > newest:
            self.newest[t.card_id] = t.event_ts
            for old in [i for i, at in recent.items() if at < t.event_ts - lateness]:
                del recent[old]
        return Admission.ADMITTED


def history(rng, n, cards, spread_min=8.0):
    """Payments of a few cards, out of order, with redeliveries of recent and old ones."""
    events = []
    for i in range(n):
        if events and rng.random() < 0.15:
            events.append(rng.choice(events[-50:] if rng.random() < 0.7 else events))
        else:
            events.append(txn(i, minutes=i * 0.5 + rng.uniform(-spread_min, 2), card=f"c{rng.randrange(cards)}"))
    return events


def test_verdicts_are_those_of_a_scan_of_every_id_on_every_payment_in_batches_of_any_size():
    rng = random.Random(7)
    events = history(rng, 3000, cards=7)
    table, reference = AdmissionTable(), Reference()
    at = 0
    while at < len(events):
        batch = events[at : at + rng.choice([1, 2, 5, 40, 300])]
        verdicts = table.admit_batch(
            [t.card_id for t in batch], [t.transaction_id for t in batch], [t.event_ts for t in batch], 300, 0.0
        )
        assert verdicts == [reference.admit(t, 300) for t in batch]
        assert table.entries == np.count_nonzero(table.table_hash)  # what a snapshot gathers into: exact
        at += len(batch)
    assert {Admission.ADMITTED, Admission.LATE, Admission.DUPLICATE} <= set(reference_verdicts(events))
    hashes, _, _ = table.live_entries(300)
    assert len(hashes) == sum(map(len, reference.recent.values()))  # the ids within the lateness, exactly
    assert len(table.table_hash) <= 4096  # ids expire: 3,000 went through a table that stayed small


def reference_verdicts(events):
    reference = Reference()
    return [reference.admit(t, 300) for t in events]


def test_a_forgotten_card_comes_back_fresh_and_its_slot_keeps_no_ids_for_the_next_card():
    table = AdmissionTable()
    assert admit(table, txn(1, minutes=60, card="a"), 300) is Admission.ADMITTED
    table.forget(["a"])
    assert admit(table, txn(1, minutes=0, card="b"), 300) is Admission.ADMITTED  # a's slot, a's id: not b's
    assert admit(table, txn(1, minutes=0, card="a"), 300) is Admission.ADMITTED  # nothing of a is left
    assert table.forget_idle(idle_ttl_s=10.0, now=5.0) == []
    assert sorted(table.forget_idle(idle_ttl_s=10.0, now=11.0)) == ["a", "b"]
    assert len(table) == 0 and not len(table.live_entries(None)[0])


def test_a_table_growing_past_its_room_mid_batch_decides_as_one_that_never_grows():
    events = [txn(i, minutes=i / 100, card=f"c{i % 3}") for i in range(5000)]
    events += events[-100:]  # redelivered: duplicates after the growth
    verdicts = AdmissionTable().admit_batch(
        [t.card_id for t in events], [t.transaction_id for t in events], [t.event_ts for t in events], 300, 0.0
    )
    assert verdicts == reference_verdicts(events)
    assert verdicts[-100:] == [Admission.DUPLICATE] * 100


def test_id_hashes_are_fnv1a_of_the_utf8_whatever_the_characters():
    def fnv1a(text):
        h = 0xCBF29CE484222325
        for byte in text.encode():
            h = ((h ^ byte) * 0x100000001B3) % 2**64
        return h - 2**64 if h >= 2**63 else h

    ids = ["a", "tx-000001", "tx-ünïcödé-€", "", "tx-000001"]
    assert id_hashes(ids).tolist() == [fnv1a(i) for i in ids]
    assert fnv1a("a") == 0xAF63DC4C8601EC8C - 2**64  # the published test vector
    assert id_hashes(["tx-ünïcödé-€", "b"]).tolist() == [fnv1a("tx-ünïcödé-€"), fnv1a("b")]  # offsets in bytes
