"""Shared types: a transaction survives pickling (how stream processes hand it to each other) as it
was, event time's UTC offset included."""

import pickle
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from schema import Channel, Transaction
from tests.factories import txn


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("offset_h", [0, 2, -5])
def test_a_pickled_transaction_comes_back_equal_field_for_field(channel, offset_h):
    original = msgspec.structs.replace(
        txn(7, amount_minor=123_456, country="FR", card_country="DE", channel=channel),
        event_time=datetime(2026, 3, 29, 1, 30, 15, 250_000, tzinfo=timezone(timedelta(hours=offset_h))),
    )
    back = pickle.loads(pickle.dumps(original, protocol=pickle.HIGHEST_PROTOCOL))
    assert isinstance(back, Transaction) and back == original
    assert msgspec.structs.asdict(back) == msgspec.structs.asdict(original)
    assert back.event_time.utcoffset() == timedelta(hours=offset_h)
    assert type(back.channel) is Channel
