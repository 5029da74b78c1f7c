"""Hypothesis strategies for hostile transaction events: a valid transaction, then one mutation.

Each event knows what a door must do with it: ``expect`` is None when the event is still valid
(an unknown extra field, a unicode id, an amount in range) and otherwise a text the refusal must
contain, the field's path (``$.amount_minor``) wherever the event has one. The raw JSON form feeds
the Kafka doors; ``proto_fields`` gives the same mutation as gRPC request fields where the proto
can carry it (a string or an int64; no NaN, no missing field but an empty one, no extra field).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from schema import encode
from schema.types import CURRENCIES, ID_FIELDS, MAX_EVENT_BYTES
from tests.factories import txn

REQUIRED = (*ID_FIELDS, "event_time", "amount_minor", "currency", "country", "card_country")


@dataclass(frozen=True)
class Hostile:
    kind: str
    raw: bytes  # the Kafka message value
    expect: str | None  # None: valid; else a text the refusal names
    fields: dict | None  # the same event as gRPC request fields, when the proto can carry it


def valid_fields(n: int, card: str | None = None) -> dict:
    """A valid transaction as its JSON object (a recent event time, so a door's clock accepts it)."""
    recent = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return json.loads(encode(txn(n, at=recent, card=card or f"card-h{n % 7}")))


def _at(field: str) -> str:
    return f"`$.{field}`"


def _event(kind: str, data: dict, expect: str | None, proto: bool = True) -> Hostile:
    raw = json.dumps(data, ensure_ascii=False, allow_nan=True).encode("utf-8", errors="surrogatepass")
    return Hostile(kind, raw, expect, dict(data) if proto else None)


_CONTROL = st.sampled_from(["\x00", "\x07", "\n", "\r", "\t", "\x1b[31m", "\x7f", "\x85", "\u202e", "\u2028", "\ufeff"])
_PRINTABLE_UNICODE = st.text(
    st.characters(categories=("L", "N", "P", "S"), exclude_characters='\\"'), min_size=1, max_size=40
)
_WRONG_TYPES = st.sampled_from([None, True, 12, 1.5, [], {}, ["a"], {"a": 1}])


@st.composite
def hostile_event(draw: st.DrawFn, n: int = 0, kind: str | None = None) -> Hostile:
    """One valid transaction (id ``n``) with one mutation of ``kind`` (drawn when None)."""
    kind = kind or draw(st.sampled_from(KINDS))
    data = valid_fields(n)
    field = draw(st.sampled_from(REQUIRED))
    idf = draw(st.sampled_from(ID_FIELDS))
    if kind == "valid":
        return _event(kind, data, None)
    if kind == "missing field":
        del data[field]
        return _event(kind, data, f"missing required field `{field}`", proto=False)
    if kind == "empty field":  # what a missing field looks like over gRPC (proto3 has no absence)
        data[field] = "" if field != "amount_minor" else 0
        return _event(kind, data, _at(field))
    if kind == "unknown field":  # ignored: producers may be newer than this consumer
        data[draw(st.sampled_from(["risk_hint", "x", "amount", "__proto__"]))] = draw(_WRONG_TYPES)
        return _event(kind, data, None, proto=False)
    if kind == "wrong type":
        data[field] = draw(_WRONG_TYPES.filter(lambda v: not (field == "amount_minor" and type(v) is int)))
        return _event(kind, data, _at(field), proto=False)
    if kind == "amount not a number":  # NaN and Infinity are not JSON at all
        data["amount_minor"] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        return _event(kind, data, _at("amount_minor"), proto=False)
    if kind == "amount out of range":
        data["amount_minor"] = draw(
            st.one_of(st.integers(-(2**63), 0), st.integers(10**12 + 1, 2**63 - 1))  # int64, for the proto
        )
        return _event(kind, data, _at("amount_minor"))
    if kind == "amount huge or fractional":
        data["amount_minor"] = draw(st.sampled_from([1e30, 1e300, 2.5, 100.0, -0.0, 10**40]))
        return _event(kind, data, _at("amount_minor"), proto=False)
    if kind == "amount in range":
        data["amount_minor"] = draw(st.integers(min_value=1, max_value=10**12))
        return _event(kind, data, None)
    if kind == "unknown currency":
        data["currency"] = draw(
            st.one_of(
                st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3).filter(lambda c: c not in CURRENCIES),
                st.sampled_from(["eur", "EURO", "€", "", "XXX", "XTS", "XAU"]),
            )
        )
        return _event(kind, data, _at("currency"))
    if kind == "bad country code":  # two capitals A-Z, nothing else (not lower case, not Ä)
        field = draw(st.sampled_from(["country", "card_country"]))
        data[field] = draw(
            st.one_of(
                st.sampled_from(["de", "De", "D", "DEU", "D1", "ÄB", "ΑΒ", "", "  ", "D\n"]),
                st.text(min_size=2, max_size=2).filter(lambda c: not (c.isascii() and c.isalpha() and c.isupper())),
            )
        )
        return _event(kind, data, _at(field))
    if kind == "event time out of range":
        data["event_time"] = draw(
            st.sampled_from(
                [
                    "1970-01-01T00:00:00Z",
                    "1999-12-31T23:59:59Z",
                    "2999-01-01T00:00:00Z",
                    "9999-12-31T23:59:59Z",
                    "2100-01-01T00:00:00+00:00",
                ]
            )
        )
        return _event(kind, data, _at("event_time"))
    if kind == "event time ahead of the clock":
        ahead = draw(st.floats(min_value=1.1, max_value=3000.0))
        data["event_time"] = datetime.fromtimestamp(time.time() + ahead * 86_400, UTC).isoformat()
        return _event(kind, data, _at("event_time"))
    if kind == "event time garbage":
        data["event_time"] = draw(
            st.one_of(
                st.sampled_from(["", "yesterday", "2026-13-01T00:00:00Z", "2026-01-05T12:00:00", "1767614400"]),
                st.text(max_size=30).filter(lambda t: not t[:4].isdigit()),
            )
        )
        return _event(kind, data, _at("event_time"))
    if kind == "control character in id":
        value = str(data[idf])
        cut = draw(st.integers(0, len(value)))
        data[idf] = value[:cut] + draw(_CONTROL) + value[cut:]
        return _event(kind, data, _at(idf))
    if kind == "unicode id":  # any script is a fine id
        data[idf] = draw(_PRINTABLE_UNICODE) + (f"-{n}" if idf == "transaction_id" else "")
        return _event(kind, data, None)
    if kind == "long id":
        data[idf] = draw(st.sampled_from(["x", "é", "😀"])) * draw(st.integers(129, 3000))  # under the size limit
        return _event(kind, data, _at(idf))
    if kind == "oversized":
        data[draw(st.sampled_from(["padding", "transaction_id"]))] = "p" * draw(
            st.integers(MAX_EVENT_BYTES, 4 * MAX_EVENT_BYTES)
        )
        return _event(kind, data, "oversized", proto=False)
    if kind == "not an object":
        raw = draw(st.sampled_from([b"[]", b"null", b"42", b'"transaction"', b"[{}]", b"true"]))
        return Hostile(kind, raw, "`$`", None)
    if kind == "malformed JSON":
        good = encode(txn(n))
        raw = draw(
            st.one_of(
                st.just(good[: draw(st.integers(0, len(good) - 1))]),
                st.just(good.replace(b'"card_id":"', b'"card_id":"\xff\xfe')),
                st.just(b"{" + good),
                st.binary(max_size=64).filter(_not_json),
            )
        )
        return Hostile(kind, raw, "malformed JSON", None)
    raise AssertionError(kind)


def _not_json(data: bytes) -> bool:
    """Bytes that are malformed from their first value on (a typed decoder may refuse b'""x' as
    "Expected `object`" before it sees the trailing byte)."""
    start = data.lstrip(b" \t\r\n")[:1]
    return not (start and start in b'{["-0123456789tfn')


KINDS = (
    "valid",
    "missing field",
    "empty field",
    "unknown field",
    "wrong type",
    "amount not a number",
    "amount out of range",
    "amount huge or fractional",
    "amount in range",
    "unknown currency",
    "bad country code",
    "event time out of range",
    "event time ahead of the clock",
    "event time garbage",
    "control character in id",
    "unicode id",
    "long id",
    "oversized",
    "not an object",
    "malformed JSON",
)


@st.composite
def hostile_batch(draw: st.DrawFn, per_kind: int = 2, proto_only: bool = False) -> list[Hostile]:
    """Every kind ``per_kind`` times, shuffled, each built on its own valid transaction id."""
    events = []
    n = 0
    for kind in KINDS:
        for _ in range(per_kind):
            event = draw(hostile_event(n, kind))
            if proto_only and event.fields is None:
                continue
            events.append(event)
            n += 1
    return draw(st.permutations(events))
