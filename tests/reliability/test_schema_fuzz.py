"""Property tests of the event schema that both doors share (schema.decode_transaction for Kafka,
schema.transaction_from_fields for gRPC): a hostile event is either a valid transaction that
round-trips and keeps the input limits, or an InvalidEvent naming the field. Nothing else escapes."""

from __future__ import annotations

import re
import time

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schema import InvalidEvent, Transaction, decode_transaction, encode, transaction_from_fields
from schema.types import CURRENCIES, EARLIEST_EVENT_TIME, ID_FIELDS, LATEST_EVENT_TIME, MAX_AHEAD_S
from tests.reliability.hostile import KINDS, Hostile, hostile_event

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_invariants(t: Transaction, now: float) -> None:
    """What every accepted transaction satisfies, whichever door it came through."""
    assert type(t.amount_minor) is int and 0 < t.amount_minor <= 10**12
    assert t.currency in CURRENCIES
    assert all(re.fullmatch("[A-Z]{2}", code) for code in (t.country, t.card_country))
    for name in ID_FIELDS:
        value = getattr(t, name)
        assert 1 <= len(value) <= 128 and value.isprintable(), name
    assert t.event_time.tzinfo is not None
    assert EARLIEST_EVENT_TIME <= t.event_time < LATEST_EVENT_TIME
    assert t.event_ts <= now + MAX_AHEAD_S
    assert decode_transaction(encode(t), now=now) == t  # round-trips unchanged


def check(event: Hostile, decoded: Transaction | InvalidEvent, now: float) -> None:
    if event.expect is None:
        assert isinstance(decoded, Transaction), f"{event.kind}: refused a valid event: {decoded}"
        assert_invariants(decoded, now)
    else:
        assert isinstance(decoded, InvalidEvent), f"{event.kind}: accepted {event.raw[:200]!r}"
        assert event.expect in str(decoded), f"{event.kind}: {decoded} does not name {event.expect}"


def decode_or_error(decode, *args, **kwargs) -> Transaction | InvalidEvent:
    try:
        return decode(*args, **kwargs)
    except InvalidEvent as exc:
        return exc


@FAST
@given(hostile_event())
def test_a_kafka_event_is_accepted_whole_or_refused_naming_the_field(event):
    now = time.time()
    check(event, decode_or_error(decode_transaction, event.raw, now=now), now)


@FAST
@given(hostile_event().filter(lambda e: e.fields is not None))
def test_a_grpc_request_is_validated_exactly_as_a_kafka_event(event):
    now = time.time()
    from_fields = decode_or_error(transaction_from_fields, event.fields, now=now)
    check(event, from_fields, now)
    from_json = decode_or_error(decode_transaction, event.raw, now=now)
    assert type(from_fields) is type(from_json) and str(from_fields) == str(from_json)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
            max_leaves=20,
        ).map(lambda v: msgspec.json.encode(v) if v == v else b"NaN"),
    )
)
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(raw):
    try:
        decode_transaction(raw, now=time.time())
    except InvalidEvent as exc:
        assert str(exc)


def test_every_kind_of_hostile_event_is_generated():
    assert len(KINDS) == len(set(KINDS)) >= 15
