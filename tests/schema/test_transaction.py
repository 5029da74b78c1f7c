"""The transaction's cached event time is derived state: never encoded, compared or carried stale."""

from datetime import timedelta

import msgspec

from schema import Transaction
from tests.factories import T0, txn


def test_cached_event_time_follows_the_field_and_stays_out_of_the_encoding():
    payment = txn(1)
    assert payment.event_ts == T0.timestamp()
    moved = msgspec.structs.replace(payment, event_time=payment.event_time + timedelta(hours=1))
    assert moved.event_ts == payment.event_ts + 3600  # not the cached value of the original
    assert payment == txn(1)  # equality ignores the cache
    decoded = msgspec.json.decode(msgspec.json.encode(payment), type=Transaction)
    assert "event_ts" not in msgspec.json.decode(msgspec.json.encode(payment))
    assert decoded == payment and decoded.event_ts == payment.event_ts
