"""Admission: late events beyond the allowed lateness and duplicates are not applied."""

from streaming import OfflineFeatureBuilder
from streaming.admission import Admission, CardAdmission, admit, admitted_in_arrival_order, late_reason
from tests.factories import txn


def test_out_of_order_within_allowed_lateness_is_admitted_and_counted_in_its_own_window():
    state = CardAdmission()
    assert admit(state, txn(1, minutes=10), 300) is Admission.ADMITTED
    assert admit(state, txn(2, minutes=6), 300) is Admission.ADMITTED  # 4 min behind, 5 allowed
    assert admit(state, txn(3, minutes=4), 300) is Admission.LATE  # 6 min behind
    assert "late" in late_reason(state, txn(3, minutes=4), 300) and "360.0s behind" in late_reason(
        state, txn(3, minutes=4), 300
    )


def test_duplicates_are_applied_once():
    state = CardAdmission()
    first = txn(1)
    assert admit(state, first, 300) is Admission.ADMITTED
    assert admit(state, first, 300) is Admission.DUPLICATE
    assert admit(state, txn(2, minutes=20), 300) is Admission.ADMITTED
    assert admit(state, first, 300) is Admission.LATE  # an old duplicate is late, never applied again


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


def test_verdicts_are_those_of_a_scan_of_every_id_on_every_payment():
    import random

    def reference(recent: dict, newest: list, t, lateness):  # the rule, scanning every time
        if t.transaction_id in recent:
            return Admission.DUPLICATE
        if newest and t.event_ts < newest[0] - lateness:
            return Admission.LATE
        recent[t.transaction_id] = t.event_ts
        if not newest or t.event_ts > newest[0]:
            newest[:] = [t.event_ts]
            for old in [i for i, at in recent.items() if at < t.event_ts - lateness]:
                del recent[old]
        return Admission.ADMITTED

    rng = random.Random(7)
    events = [txn(rng.randint(0, 300), minutes=i * 0.5 + rng.uniform(-8, 2)) for i in range(2000)]
    state, recent, newest = CardAdmission(), {}, []
    stale_most = 0
    for t in events:
        assert admit(state, t, 300) is reference(recent, newest, t, 300)
        live = {i: at for i, at in state.recent_ids.items() if at >= newest[0] - 300}
        assert live == recent  # the ids within the lateness: exactly the scan's
        stale_most = max(stale_most, len(state.recent_ids) - len(live))
    assert stale_most > 0  # late arrivals outstay their horizon until they reach the front...
    assert len(state.recent_ids) < 50  # ...but ids do expire: 2,000 were admitted
