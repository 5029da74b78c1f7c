"""JSON encoding of the shared types, for Kafka and files. Decoding validates.

Decoders are built once: msgspec compiles a decoder per type, which is what makes validation
cheap enough for the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from schema.types import Decision, Label, Transaction

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_transaction_decoder = msgspec.json.Decoder(Transaction)
_decision_decoder = msgspec.json.Decoder(Decision)
_label_decoder = msgspec.json.Decoder(Label)


class InvalidEvent(ValueError):
    """An event that cannot be accepted; the message names the field and the problem."""


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def _decode(decoder: msgspec.json.Decoder, raw: bytes | str):
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: check it first
        raise InvalidEvent(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}") from exc


def decode_transaction(raw: bytes | str) -> Transaction:
    """Decode and validate one transaction, raising InvalidEvent with the field and the problem."""
    return _decode(_transaction_decoder, raw)


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
    decoder = msgspec.json.Decoder(type_)
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield decoder.decode(line)
                except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
                    raise InvalidEvent(f"{path}:{lineno}: {exc}") from exc
