"""JSON encoding of the shared types, for Kafka and files. Decoding validates.

Decoders are built once: msgspec compiles a decoder per type, which is what makes validation
cheap enough for the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from schema.features import FeatureValues, PackedFeatures, features_from_wire
from schema.types import (
    COUNTRY_FIELDS,
    CURRENCIES,
    EARLIEST_EVENT_TIME,
    ID_FIELDS,
    LATEST_EVENT_TIME,
    MAX_AHEAD_S,
    MAX_EVENT_BYTES,
    DeadLetter,
    Decision,
    Label,
    Transaction,
)

T = TypeVar("T")


def _enc_hook(obj: object) -> object:
    if isinstance(obj, PackedFeatures):
        return obj.to_wire()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(type_: type, obj: object) -> object:
    if type_ is FeatureValues:
        return features_from_wire(obj)
    raise NotImplementedError(f"cannot decode {type_}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_transaction_decoder = msgspec.json.Decoder(Transaction)
_decision_decoder = msgspec.json.Decoder(Decision, dec_hook=_dec_hook)
_label_decoder = msgspec.json.Decoder(Label)


class InvalidEvent(ValueError):
    """An event that cannot be accepted; the message names the field and the problem."""


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def _decode(decoder: msgspec.json.Decoder, raw: bytes | str):
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: check it first
        raise InvalidEvent(_located(str(exc))) from exc
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}{_near(raw, str(exc))}") from exc
    except UnicodeDecodeError as exc:  # msgspec lets a string's invalid UTF-8 through as this
        where = f"(byte {_bad_utf8_at(raw)})"
        raise InvalidEvent(f"malformed JSON: invalid UTF-8 {where}{_near(raw, where)}") from exc


def _located(error: str) -> str:
    """msgspec leaves the path out for the top level (``Expected `object`, got `array```)."""
    return error if " - at `$" in error else f"{error} - at `$`"


def _bad_utf8_at(raw: bytes | str) -> int:
    try:
        (raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)).decode("utf-8")
    except UnicodeError as exc:
        return exc.start
    return 0


_BYTE = re.compile(r"\(byte (\d+)\)")
_KEY = re.compile(rb'"([A-Za-z_][A-Za-z0-9_]{0,63})"\s*:')


def _near(raw: bytes | str, error: str) -> str:
    """Where malformed JSON broke, as the last key before the bad byte (``NaN`` for an amount is
    not JSON; the reason still names the field): `` - near `$.amount_minor```, or "" if unknown."""
    found = _BYTE.search(error)
    data = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    head = data[: int(found.group(1))] if found else data
    keys = _KEY.findall(head[-4096:])
    return f" - near `$.{keys[-1].decode()}`" if keys else ""


def decode_transaction(raw: bytes | str, *, now: float | None = None) -> Transaction:
    """Decode and validate one transaction, raising InvalidEvent with the field and the problem.

    Applies the field types and ``check_transaction``'s input limits; a door passes its wall clock
    as ``now`` (Unix seconds) to refuse events dated too far ahead of it as well.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"oversized event: {len(raw)} bytes (limit {MAX_EVENT_BYTES}) - at `$`")
    return check_transaction(_decode(_transaction_decoder, raw), now=now)


def transaction_from_fields(
    fields: Mapping[str, Any] | object, *, now: float | None = None, from_attributes: bool = False
) -> Transaction:
    """Validate a transaction given as field values (the gRPC door's request), exactly as
    ``decode_transaction`` validates one from JSON. ``from_attributes``: ``fields`` is an object
    whose attributes are the fields (a protobuf message), not a mapping."""
    try:
        txn = msgspec.convert(fields, Transaction, from_attributes=from_attributes)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(_located(str(exc))) from exc
    return check_transaction(txn, now=now)


def check_transaction(txn: Transaction, *, now: float | None = None) -> Transaction:
    """The input limits the field types cannot say (schema.types): printable ids, a known currency,
    country codes of capitals A-Z, an event time in range and, given the door's clock ``now``, not
    too far ahead of it.
    Returns ``txn``; raises InvalidEvent naming the field in msgspec's style (``- at `$.field```)."""
    for name in ID_FIELDS:
        if not getattr(txn, name).isprintable():
            raise InvalidEvent(
                "Expected `str` of printable characters (no control or format characters) - at `$." + name + "`"
            )
    if txn.currency not in CURRENCIES:
        raise InvalidEvent(f"Unknown currency {txn.currency!r} (not an ISO 4217 payment currency) - at `$.currency`")
    for name in COUNTRY_FIELDS:
        code = getattr(txn, name)  # two characters, by its type
        if not (code.isascii() and code.isalpha() and code.isupper()):
            raise InvalidEvent(f"Expected `str` matching regex '^[A-Z]{{2}}$' - at `$.{name}`")
    at = txn.event_time
    if not EARLIEST_EVENT_TIME <= at < LATEST_EVENT_TIME:
        raise InvalidEvent(
            f"event time {at.isoformat()} is outside [{EARLIEST_EVENT_TIME:%Y-%m-%d}, {LATEST_EVENT_TIME:%Y-%m-%d})"
            " - at `$.event_time`"
        )
    if now is not None and at.timestamp() > now + MAX_AHEAD_S:
        raise InvalidEvent(
            f"event time {at.isoformat()} is more than {MAX_AHEAD_S / 3600:.0f} h ahead of this door's clock "
            f"({datetime.fromtimestamp(now, UTC).isoformat(timespec='seconds')}) - at `$.event_time`"
        )
    return txn


# A dead letter keeps at most this much of the refused payload: an oversized message must not make
# its own dead letter too large for the topic (the broker's default limit is 1 MB).
DEAD_LETTER_PAYLOAD_MAX = 64 * 1024


def dead_letter(reason: str, source_topic: str, partition: int, offset: int, payload: bytes) -> DeadLetter:
    """The dead letter for a refused raw event: the payload as UTF-8 (invalid bytes replaced),
    cut to ``DEAD_LETTER_PAYLOAD_MAX`` bytes with the original size recorded when longer."""
    size = len(payload)
    cut = size > DEAD_LETTER_PAYLOAD_MAX
    return DeadLetter(
        reason=reason,
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        payload=(payload[:DEAD_LETTER_PAYLOAD_MAX] if cut else payload).decode("utf-8", errors="replace"),
        received_at=datetime.now(UTC),
        payload_bytes=size if cut else None,
    )


def decode_decision(raw: bytes | str) -> Decision:
    return _decode(_decision_decoder, raw)


def decode_label(raw: bytes | str) -> Label:
    return _decode(_label_decoder, raw)


def write_jsonl(path: Path, items: Iterable[object]) -> int:
    """Write one JSON document per line; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("wb") as fh:
        for item in items:
            fh.write(_encoder.encode(item))
            fh.write(b"\n")
            n += 1
    return n


def read_jsonl(path: Path, type_: type[T]) -> Iterator[T]:
    """Read a JSONL file of one type, validating every line."""
    decoder = msgspec.json.Decoder(type_, dec_hook=_dec_hook)
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield decoder.decode(line)
                except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
                    raise InvalidEvent(f"{path}:{lineno}: {exc}") from exc
