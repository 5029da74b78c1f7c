"""Import an external transaction log (CSV or Parquet) into the simulator's event format.

The output is the directory a simulation writes (transactions.jsonl, labels.jsonl, truth.jsonl),
so everything that reads a simulation (``read_simulation``, ``fraud train/retrain --data``, the
offline feature builder) runs on imported data unchanged. A row that cannot become a valid
``Transaction`` is never dropped quietly: it goes to rejected.jsonl with its line number, the
field and the problem.

Line numbers: for CSV the physical line where the record starts (the header is line 1, so a quoted
field holding a newline makes later records skip a number); for Parquet the 1-based row number.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schema import (
    Channel,
    GroundTruth,
    InvalidEvent,
    Label,
    LabelSource,
    Transaction,
    check_transaction,
    decode_transaction,
    encode,
)
from simulator.generate import FILES

REJECTS_FILE = "rejected.jsonl"
REQUIRED_TARGETS = ("time", "card", "merchant", "amount")
OPTIONAL_TARGETS = (
    "customer",
    "label",
    "country",
    "card_country",
    "device",
    "category",
    "currency",
    "channel",
    "transaction_id",
    "scenario",
)
TARGETS = REQUIRED_TARGETS + OPTIONAL_TARGETS
# Transaction field -> mapping target, to name the user's column when schema validation fails.
_FIELD_TARGET = {
    "transaction_id": "transaction_id",
    "event_time": "time",
    "card_id": "card",
    "customer_id": "customer",
    "merchant_id": "merchant",
    "merchant_category": "category",
    "amount_minor": "amount",
    "currency": "currency",
    "country": "country",
    "card_country": "card_country",
    "device_id": "device",
    "channel": "channel",
}
_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n"})
_CHANNELS = {
    "ecommerce": Channel.ECOMMERCE,
    "e-commerce": Channel.ECOMMERCE,
    "online": Channel.ECOMMERCE,
    "cnp": Channel.ECOMMERCE,
    "card_not_present": Channel.ECOMMERCE,
    "card_present": Channel.CARD_PRESENT,
    "cp": Channel.CARD_PRESENT,
    "pos": Channel.CARD_PRESENT,
    "in_store": Channel.CARD_PRESENT,
}
# Above this an "epoch seconds" value is past the year 5000: almost surely milliseconds.
_EPOCH_S_LIMIT = 1e11
_HUNDRED = Decimal(100)
# Checking the ISO code patterns is 3/4 of msgspec's validation time, and the codes repeat on nearly
# every row: so rows are checked against Transaction's own field types minus those patterns, and
# each distinct (currency, country, card_country) once against the schema's pattern types.
_CODE_FIELDS = ("currency", "country", "card_country")
_Unpatterned = msgspec.defstruct(
    "_Unpatterned",
    [
        (f.name, str if f.name in _CODE_FIELDS else f.type, *(() if f.default is msgspec.NODEFAULT else (f.default,)))
        for f in msgspec.structs.fields(Transaction)
    ],
    kw_only=True,
)
_Codes = msgspec.defstruct(
    "_Codes", [(f.name, f.type) for f in msgspec.structs.fields(Transaction) if f.name in _CODE_FIELDS]
)
_FIRST_REJECTS = 10


class MappingError(ValueError):
    """The file cannot be imported as asked (unknown target, missing column, wrong encoding or format).

    Nothing was imported: the event files are untouched."""


class ImportMapping(BaseModel):
    """Which source column feeds each field of the event format; None: use the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: str
    card: str
    merchant: str  # a terminal id in some datasets
    amount: str
    customer: str | None = None  # default: the card column's value
    label: str | None = None  # 0/1, true/false, yes/no; default: unlabelled data
    country: str | None = None  # merchant country (ISO 3166 alpha-2)
    card_country: str | None = None  # default: the row's country (a domestic payment)
    device: str | None = None  # default: one device per card, dev-of-<card>
    category: str | None = None
    currency: str | None = None
    channel: str | None = None  # ecommerce/online/cnp or card_present/pos/cp
    transaction_id: str | None = None  # default: imp-<line, 9 digits>
    scenario: str | None = None  # fraud rows only: the truth's scenario (default "imported")

    @classmethod
    def parse(cls, text: str) -> ImportMapping:
        """From ``target=COLUMN,target=COLUMN``, as the command line takes it."""
        pairs: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            target, sep, column = (s.strip() for s in part.partition("="))
            if not sep or not target or not column:
                raise MappingError(f"mapping: {part!r} is not target=COLUMN")
            if target not in TARGETS:
                raise MappingError(f"mapping: unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
            if target in pairs:
                raise MappingError(f"mapping: target {target!r} given twice")
            pairs[target] = column
        missing = [t for t in REQUIRED_TARGETS if t not in pairs]
        if missing:
            raise MappingError(
                f"mapping: required target(s) missing: {', '.join(missing)} (required: time, card, merchant, amount)"
            )
        return cls(**pairs)

    def columns(self) -> dict[str, str]:
        """Mapped targets only, target -> source column."""
        return {t: c for t in TARGETS if (c := getattr(self, t)) is not None}


class ImportOptions(BaseModel):
    """How to read values, and the defaults for targets the mapping leaves out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["csv", "parquet"] | None = None  # None: from the file suffix
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8-sig"  # CSV text encoding; -sig: spreadsheet exports often start with a BOM
    # major: 12.34 -> 1234 (x100, rounded half to even); minor: the value is already 1234.
    amount_unit: Literal["major", "minor"] = "major"
    # auto: a number is epoch seconds, anything else ISO 8601.
    time_format: Literal["auto", "iso", "epoch_s", "epoch_ms"] = "auto"
    # The zone of times without an offset; None rejects them (the schema never guesses a zone).
    assume_tz: str | None = None
    # Public datasets say which payments were fraud, not when that became known: an assumption.
    label_delay_days: float = Field(7.0, ge=0)
    currency: str = Field("EUR", pattern="^[A-Z]{3}$")
    country: str = Field("DE", pattern="^[A-Z]{2}$")
    category: str = Field("other", min_length=1)
    channel: Channel = Channel.ECOMMERCE
    max_bad_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, name: str) -> str:
        codecs.lookup(name)  # LookupError -> a validation error naming the option
        return name

    @field_validator("assume_tz")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None and name.upper() != "UTC":
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {name!r} (use an IANA name such as UTC or Europe/Berlin)") from exc
        return name

    def zone(self) -> tzinfo | None:
        if self.assume_tz is None:
            return None
        return UTC if self.assume_tz.upper() == "UTC" else ZoneInfo(self.assume_tz)


@dataclass(frozen=True)
class Reject:
    """One source row that was not imported, and why."""

    line: int  # CSV: physical line where the record starts (header = 1); Parquet: 1-based row
    field: str  # the mapping target (e.g. "amount"), or "record" for a malformed CSV record
    column: str | None  # the source column, None when the value was a default
    error: str
    row: dict[str, Any]  # the raw values as read


@dataclass
class ImportReport:
    source: Path
    format: str
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    fraud: int = 0
    labelled: bool = False
    rejects_by_field: Counter[str] = field(default_factory=Counter)
    first_rejects: list[Reject] = field(default_factory=list)
    elapsed_s: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)  # what was written, rejects included

    @property
    def bad_fraction(self) -> float:
        return self.rejected / self.rows if self.rows else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_field": dict(self.rejects_by_field.most_common()),
            "fraud": self.fraud if self.labelled else None,  # None: no label column, unknown
            "chargebacks": self.fraud,
            "seconds": round(self.elapsed_s, 2),
            "rows_per_s": round(self.rows_per_s),
        }


class TooManyRejects(ValueError):
    """More rows were bad than allowed: no events were written, only the rejects file."""

    def __init__(self, report: ImportReport, max_bad_fraction: float) -> None:
        self.report = report
        super().__init__(
            f"{report.rejected} of {report.rows} rows rejected ({report.bad_fraction:.2%}), more than the "
            f"allowed {max_bad_fraction:.2%}; no events written, rejects in {report.paths.get('rejected')}"
        )


class _Bad(Exception):
    def __init__(self, target: str, error: str) -> None:
        self.target = target
        self.error = error


def import_transactions(
    source: Path, out_dir: Path, mapping: ImportMapping, options: ImportOptions | None = None
) -> ImportReport:
    """Convert ``source`` into transactions/labels/truth JSONL in ``out_dir``; rejects go to rejected.jsonl.

    Raises MappingError before reading any row if a mapped column is absent, and TooManyRejects
    (after writing the rejects file, without touching the event files) if more than
    ``options.max_bad_fraction`` of the rows are bad.
    """
    options = options or ImportOptions()
    source, out_dir = Path(source), Path(out_dir)
    started = time.perf_counter()
    fmt = options.format or _format_from_suffix(source)
    if fmt == "csv":
        header, records = _open_csv(source, mapping, options.delimiter, options.encoding)
    else:
        header, records = _open_parquet(source, mapping)
    report = ImportReport(source=source, format=fmt, labelled=mapping.label is not None)
    builder = _RowBuilder(mapping, options, header)
    accepted: list[tuple[datetime, str, bytes, str | None]] = []  # (time, id, encoded, scenario if fraud)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.paths["rejected"] = out_dir / REJECTS_FILE
    with report.paths["rejected"].open("wb") as rejects:
        for line, fields, problem in records:
            report.rows += 1
            try:
                if problem is not None:
                    raise _Bad("record", problem)
                accepted.append(builder.build(line, fields))
            except _Bad as bad:
                _reject(
                    report,
                    rejects,
                    Reject(line, bad.target, builder.column(bad.target), bad.error, _raw(header, fields)),
                )
    report.accepted = len(accepted)
    report.fraud = sum(1 for *_, scenario in accepted if scenario is not None)
    if report.bad_fraction > options.max_bad_fraction:
        report.elapsed_s = time.perf_counter() - started
        raise TooManyRejects(report, options.max_bad_fraction)
    report.paths.update(_write_events(out_dir, accepted, mapping.label is not None, options.label_delay_days))
    report.elapsed_s = time.perf_counter() - started
    return report


def _format_from_suffix(source: Path) -> str:
    suffixes = [s.lower() for s in source.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".csv" in suffixes:
        return "csv"
    raise MappingError(f"{source}: cannot tell the format from the suffix; say csv or parquet")


def _reject(report: ImportReport, fh, reject: Reject) -> None:
    report.rejected += 1
    report.rejects_by_field[reject.field] += 1
    if len(report.first_rejects) < _FIRST_REJECTS:
        report.first_rejects.append(reject)
    fh.write(
        encode(
            {
                "line": reject.line,
                "field": reject.field,
                "column": reject.column,
                "error": reject.error,
                "row": reject.row,
            }
        )
    )
    fh.write(b"\n")


def _raw(header: Sequence[str], fields: Sequence[Any]) -> dict[str, Any]:
    raw = dict(zip(header, fields, strict=False))
    if len(fields) > len(header):
        raw["_extra"] = list(fields[len(header) :])
    return raw


# ---- reading ----------------------------------------------------------------------------------

Records = Iterator[tuple[int, Sequence[Any], str | None]]  # (line, fields, problem with the record)


def _check_columns(source: Path, mapping: ImportMapping, available: Sequence[str]) -> None:
    seen = Counter(available)
    for target, column in mapping.columns().items():
        if seen[column] == 0:
            hint = difflib.get_close_matches(column, available, n=1)
            raise MappingError(
                f"{source}: column {column!r} (mapped to {target}) is not in the file"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; available columns: {', '.join(available)}"
            )
        if seen[column] > 1:
            raise MappingError(
                f"{source}: column {column!r} (mapped to {target}) appears {seen[column]} times in the header"
            )


def _open_csv(source: Path, mapping: ImportMapping, delimiter: str, encoding: str) -> tuple[list[str], Records]:
    fh = source.open(newline="", encoding=encoding)
    reader = csv.reader(fh, delimiter=delimiter)
    try:
        header = next(reader, None)
    except UnicodeDecodeError as exc:
        fh.close()
        raise _not_decodable(source, encoding, 1, exc) from None
    if not header:
        fh.close()
        raise MappingError(f"{source}: empty file, expected a header line naming the columns")
    header = [name.strip() for name in header]
    try:
        _check_columns(source, mapping, header)
    except MappingError:
        fh.close()
        raise
    return header, _csv_records(source, fh, reader, len(header))


def _not_decodable(source: Path, encoding: str, line: int, exc: UnicodeDecodeError) -> MappingError:
    # Text is decoded a block at a time, so the line is where reading stood, not the exact byte.
    return MappingError(
        f"{source}: not {encoding} text near line {line} ({exc.reason}); "
        "give the file's encoding (CLI: --encoding latin-1, or cp1252)"
    )


def _csv_records(source: Path, fh, reader, width: int) -> Records:
    with fh:
        end = reader.line_num
        while True:
            start = end + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise _not_decodable(source, fh.encoding, start, exc) from None
            except csv.Error as exc:
                end = reader.line_num
                yield start, [], f"unreadable CSV record: {exc}"
                continue
            end = reader.line_num
            if not fields:  # a blank line is not a record
                continue
            if len(fields) != width:
                span = f" (the record spans lines {start}-{end}: an unclosed quote?)" if end > start else ""
                yield start, fields, f"expected {width} fields as in the header, found {len(fields)}{span}"
            else:
                yield start, fields, None


def _open_parquet(source: Path, mapping: ImportMapping) -> tuple[list[str], Records]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise MappingError(f"{source}: not a readable Parquet file: {exc}") from None
    _check_columns(source, mapping, parquet.schema_arrow.names)
    # Only the mapped columns are read: a reject shows those, and wide files stay cheap.
    header = list(dict.fromkeys(mapping.columns().values()))
    return header, _parquet_records(parquet, header)


def _parquet_records(parquet, header: list[str]) -> Records:
    row = 0
    for batch in parquet.iter_batches(batch_size=65_536, columns=header):
        columns = [_python_values(column) for column in batch.columns]
        for fields in zip(*columns, strict=True):
            row += 1
            yield row, fields, None


def _python_values(column) -> list[Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
        # Python datetimes hold microseconds; without the cast to_pylist refuses sub-us values.
        column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        # Numbers become text in Arrow, in bulk, so rows take the CSV fast path (ids, amounts, epochs):
        # Arrow writes the shortest round-trip form, as repr does (57.16, not 57.159999...).
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)  # NaN: missing
        column = column.cast(pa.string())
    return column.to_pylist()


# ---- building events --------------------------------------------------------------------------


class _RowBuilder:
    """Turns one row's raw values into a validated, encoded Transaction (or raises _Bad).

    The per-row path is written out by hand (indices resolved once, str fast paths) because it runs
    millions of times; generic per-target lookups cost more than the parsing itself.
    """

    def __init__(self, mapping: ImportMapping, options: ImportOptions, header: Sequence[str]) -> None:
        self.options = options
        self.zone = options.zone()
        self.mapped = mapping.columns()
        at = {target: header.index(column) for target, column in self.mapped.items()}
        self.i_time, self.i_card, self.i_merchant, self.i_amount = (at[t] for t in REQUIRED_TARGETS)
        self.i_customer, self.i_label, self.i_country, self.i_card_country = (
            at.get(t) for t in ("customer", "label", "country", "card_country")
        )
        self.i_device, self.i_category, self.i_currency, self.i_channel = (
            at.get(t) for t in ("device", "category", "currency", "channel")
        )
        self.i_id, self.i_scenario = at.get("transaction_id"), at.get("scenario")
        self.seen_ids: dict[str, int] = {}
        self.codes_seen: set[tuple[str, str, str]] = set()

    def column(self, target: str) -> str | None:
        return self.mapped.get(target)

    def build(self, line: int, fields: Sequence[Any]) -> tuple[datetime, str, bytes, str | None]:
        opt = self.options
        card = _text(fields[self.i_card], "card")
        country = opt.country if self.i_country is None else _text(fields[self.i_country], "country").upper()
        values = {
            "transaction_id": f"imp-{line:09d}" if self.i_id is None else _text(fields[self.i_id], "transaction_id"),
            "event_time": _time(fields[self.i_time], opt.time_format, self.zone),
            "card_id": card,
            "customer_id": card if self.i_customer is None else _text(fields[self.i_customer], "customer"),
            "merchant_id": _text(fields[self.i_merchant], "merchant"),
            "merchant_category": opt.category
            if self.i_category is None
            else _text(fields[self.i_category], "category"),
            "amount_minor": _amount_minor(fields[self.i_amount], opt.amount_unit),
            "currency": opt.currency if self.i_currency is None else _text(fields[self.i_currency], "currency").upper(),
            "country": country,
            "card_country": country
            if self.i_card_country is None
            else _text(fields[self.i_card_country], "card_country").upper(),
            "device_id": f"dev-of-{card}" if self.i_device is None else _text(fields[self.i_device], "device"),
            "channel": opt.channel if self.i_channel is None else _channel(fields[self.i_channel]),
        }
        scenario = None  # the truth's scenario: set for fraud rows only, as the simulator does
        if self.i_label is not None and _flag(fields[self.i_label]):
            scenario = "imported" if self.i_scenario is None else _text(fields[self.i_scenario], "scenario")
        txn = _validate(values, self.codes_seen)
        if self.i_id is not None:  # a generated id is unique by construction
            first = self.seen_ids.setdefault(txn.transaction_id, line)
            if first != line:
                raise _Bad(
                    "transaction_id", f"duplicate transaction id {txn.transaction_id!r}, first seen at line {first}"
                )
        return txn.event_time, txn.transaction_id, encode(txn), scenario


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value != value  # NaN != NaN


def _text(value: Any, target: str) -> str:
    if value.__class__ is str:  # CSV: always; the fast path
        text = value.strip()
        if text:
            return text
    elif not _missing(value):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))  # an id column that a NaN-capable writer stored as float: 12.0 -> "12"
        return str(value)
    raise _Bad(target, "missing value")


def _validate(values: dict[str, Any], codes_seen: set[tuple[str, str, str]]) -> Transaction:
    """The schema's own checks (non-empty ids, amount range, aware time, country/currency codes)."""
    _convert(values, _Unpatterned)
    codes = (values["currency"], values["country"], values["card_country"])
    if codes not in codes_seen:
        _convert(dict(zip(_CODE_FIELDS, codes, strict=True)), _Codes)
        codes_seen.add(codes)
    txn = Transaction(**values)  # checked above: the constructor itself does not validate
    try:
        return check_transaction(txn)  # and the doors' input limits (printable ids, known currency, time range)
    except InvalidEvent as exc:
        found = re.search(r"`\$\.(\w+)`", str(exc))
        name = found.group(1) if found else ""
        raise _Bad(_FIELD_TARGET.get(name, "record"), str(exc)) from None


def _convert(values: dict[str, Any], type_: type) -> None:
    try:
        msgspec.convert(values, type_)
    except msgspec.ValidationError as exc:
        found = re.search(r"`\$\.(\w+)`", str(exc))
        name = found.group(1) if found else ""
        shown = f"{values[name]!r}: " if name in values else ""
        raise _Bad(_FIELD_TARGET.get(name, "record"), f"{shown}{exc}") from None


def _time(value: Any, time_format: str, zone: tzinfo | None) -> datetime:
    if value.__class__ is str and time_format != "epoch_s" and time_format != "epoch_ms":
        dt = _time_text(value, time_format)
    elif isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    elif _missing(value):
        raise _Bad("time", "missing value")
    elif time_format in ("epoch_s", "epoch_ms"):
        dt = _epoch(value, 1000.0 if time_format == "epoch_ms" else 1.0, checked=False)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        dt = _epoch(value, 1.0, checked=time_format == "auto")
    else:
        raise _Bad("time", f"{value!r} is not a time")
    if dt.tzinfo is None:
        if zone is None:
            raise _Bad(
                "time", f"{str(value)!r} has no UTC offset; set assume_tz (CLI: --assume-tz UTC) to say its zone"
            )
        # The constructor, not dt.replace(tzinfo=...): replace is ~3x slower on CPython 3.11.
        dt = datetime(dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond, zone, fold=dt.fold)
        if zone is UTC:
            return dt
    return dt.astimezone(UTC)


def _time_text(value: str, time_format: str) -> datetime:
    text = value.strip()
    if not text:
        raise _Bad("time", "missing value")
    if time_format == "auto" and text.isdigit():
        return _epoch(text, 1.0, checked=True)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        if time_format == "auto" and _is_number(text):  # e.g. 1522540831.5 or a negative epoch
            return _epoch(text, 1.0, checked=True)
        raise _Bad(
            "time", f"{text!r} is not an ISO 8601 time (e.g. 2018-04-01 00:00:31 or 2018-04-01T00:00:31Z)"
        ) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _epoch(value: Any, per_second: float, checked: bool) -> datetime:
    try:
        seconds = float(value) / per_second
    except (TypeError, ValueError):
        raise _Bad(
            "time", f"{value!r} is not a number of epoch {'milliseconds' if per_second > 1 else 'seconds'}"
        ) from None
    if checked and abs(seconds) >= _EPOCH_S_LIMIT:
        raise _Bad("time", f"{value!r} as epoch seconds is past the year 5000; milliseconds? (time_format epoch_ms)")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise _Bad("time", f"{value!r} is out of range as an epoch time") from None


def _amount_minor(value: Any, unit: str) -> int:
    try:
        if value.__class__ is str:
            amount = Decimal(value)  # Decimal, not float: 0.29 * 100 must be 29, not 28.999...
        elif isinstance(value, Decimal):
            amount = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            amount = Decimal(repr(value))  # the shortest repr: 57.16, not the binary 57.159999...
        else:
            raise InvalidOperation
    except InvalidOperation:
        if _missing(value):
            raise _Bad("amount", "missing value") from None
        raise _Bad("amount", f"{value!r} is not a number (plain digits with a '.' decimal point)") from None
    if not amount.is_finite():
        raise _Bad("amount", f"{value!r} is not a finite number")
    if unit == "major":
        amount = (amount * _HUNDRED).to_integral_value(ROUND_HALF_EVEN)
    elif amount != amount.to_integral_value():
        raise _Bad("amount", f"{value!r} is not a whole number of minor units (amount unit is minor)")
    if amount <= 0:
        raise _Bad("amount", f"{value!r}: amount must be > 0 (refunds and zero-amount checks are not imported)")
    return int(amount)


def _flag(value: Any) -> bool:
    text = value.strip().lower() if value.__class__ is str else str(value).lower()  # True -> "true", 1 -> "1"
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _missing(value):
        raise _Bad("label", "missing value")
    raise _Bad("label", f"{value!r} is not a fraud flag (1/0, true/false, yes/no)")


def _channel(value: Any) -> Channel:
    text = str(value).strip().lower() if value is not None else ""
    try:
        return _CHANNELS[text]
    except KeyError:
        known = ", ".join(_CHANNELS)
        raise _Bad("channel", f"{value!r} is not a channel ({known})") from None


# ---- writing ----------------------------------------------------------------------------------


def _write_events(
    out_dir: Path, accepted: list[tuple[datetime, str, bytes, str | None]], labelled: bool, delay_days: float
) -> dict[str, Path]:
    accepted.sort()  # (event_time, transaction_id): ids are unique, so the bytes never decide
    delay = timedelta(days=delay_days)
    labels = sorted(
        (event_time + delay, tid, encode(_chargeback(tid, event_time + delay, payload)))
        for event_time, tid, payload, scenario in accepted
        if scenario is not None
    )
    truth = (
        (
            encode(GroundTruth(transaction_id=tid, is_fraud=scenario is not None, scenario=scenario))
            for _, tid, _, scenario in accepted
        )
        if labelled
        else ()  # no label column: nothing is known about fraud, so no truth is claimed
    )
    paths = {name: out_dir / file for name, file in FILES.items()}
    _write_lines(paths["transactions"], (payload for _, _, payload, _ in accepted))
    _write_lines(paths["labels"], (payload for _, _, payload in labels))
    _write_lines(paths["truth"], truth)
    return paths


def _chargeback(transaction_id: str, known_at: datetime, payload: bytes) -> Label:
    merchant = decode_transaction(payload).merchant_id  # only fraud rows get here: decoding again is cheap
    return Label(
        transaction_id=transaction_id,
        is_fraud=True,
        source=LabelSource.CHARGEBACK,
        known_at=known_at,
        author="import",
        merchant_id=merchant,
    )


def _write_lines(path: Path, lines) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half-written file behind."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        for line in lines:
            fh.write(line)
            fh.write(b"\n")
    os.replace(tmp, path)
