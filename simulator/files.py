"""Simulation files: columns of payments to Arrow tables, to Parquet or JSON lines, and back.

Strings are built by Arrow compute, never per row in Python: ids are formatted once per run
(``card-000123``) and taken by number; JSON lines are concatenated column by column into exactly
the bytes ``msgspec`` writes for the schema types (field order, ``true``/``null``, times as
``2026-01-05T10:00:00.123000Z``), so a JSONL file from here and one written from the objects are
the same file. That is safe without escaping because every string is an id, a country, a
currency, or a category or change name the schedule restricts to plain words.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schema import GroundTruth, Label, Transaction, read_jsonl
from simulator.population import COUNTRIES
from simulator.rows import DAY_MS, Rows
from simulator.schedule import SCENARIO_NAMES
from simulator.world import World

T = TypeVar("T")
FORMATS = ("jsonl", "parquet")
KINDS = {"transactions": Transaction, "labels": Label, "truth": GroundTruth}
TIME = pa.timestamp("ms", tz="UTC")
TRANSACTION_SCHEMA = pa.schema(
    [("transaction_id", pa.string()), ("event_time", TIME)]
    + [(name, pa.string()) for name in ("card_id", "customer_id", "merchant_id", "merchant_category")]
    + [("amount_minor", pa.int64())]
    + [(name, pa.string()) for name in ("currency", "country", "card_country", "device_id", "channel")]
)
LABEL_SCHEMA = pa.schema(
    [("transaction_id", pa.string()), ("is_fraud", pa.bool_()), ("source", pa.string()), ("known_at", TIME)]
    + [("author", pa.string()), ("note", pa.string()), ("merchant_id", pa.string())]
)
TRUTH_SCHEMA = pa.schema(
    [("transaction_id", pa.string()), ("is_fraud", pa.bool_()), ("scenario", pa.string())]
    + [("changes", pa.list_(pa.string()))]
)
JSON_SLICE = 250_000  # rows rendered at once: keeps each string buffer far below Arrow's 2 GiB
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def id_strings(prefix: str, width: int, numbers: np.ndarray) -> pa.Array:
    """``prefix`` + the number zero-padded to at least ``width`` digits, for every number."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _constant(value: object, n: int) -> pa.Array:
    return pa.array([value]).take(pa.array(np.zeros(n, dtype=np.int32)))


class Formatter:
    """Rows of one run to tables shaped like the schema types, ids formatted as strings."""

    def __init__(self, world: World) -> None:
        pop = world.pop
        self.tx_prefix = f"tx-{world.config.seed}-"
        self.customers = id_strings("cust-", 6, np.arange(pop.n_customers))
        self.cards = id_strings("card-", 6, np.arange(pop.n_cards))
        self.devices = id_strings("dev-", 7, np.arange(world.n_devices))
        self.merchants = id_strings("merch-", 4, np.arange(pop.n_merchants))
        self.merchant_category = pa.array(pop.categories).take(pa.array(pop.merchant_category))
        self.merchant_country = pa.array(COUNTRIES).take(pa.array(pop.merchant_country))
        self.card_country = pa.array(COUNTRIES).take(pa.array(pop.home_country))
        self.scenarios = pa.array([None, *SCENARIO_NAMES], pa.string())
        self.schedule = world.schedule

    def transaction_ids(self, index: np.ndarray) -> pa.Array:
        return id_strings(self.tx_prefix, 9, index)

    def transactions(self, rows: Rows, ids: pa.Array) -> pa.Table:
        merchant, customer = pa.array(rows.merchant), pa.array(rows.customer)
        columns = [
            ids,
            pa.array(rows.ts, TIME),
            self.cards.take(pa.array(rows.card)),
            self.customers.take(customer),
            self.merchants.take(merchant),
            self.merchant_category.take(merchant),
            pa.array(rows.amount),
            _constant("EUR", len(rows)),
            self.merchant_country.take(merchant),
            self.card_country.take(customer),
            self._device_ids(rows.device),
            pa.array(["card_present", "ecommerce"]).take(pa.array(rows.ecommerce.astype(np.int8))),
        ]
        return pa.Table.from_arrays(columns, schema=TRANSACTION_SCHEMA)

    def truth(self, rows: Rows, ids: pa.Array) -> pa.Table:
        masks, inverse = np.unique(rows.changes, return_inverse=True)
        names = pa.array([list(self.schedule.names(int(m))) for m in masks], pa.list_(pa.string()))
        columns = [
            ids,
            pa.array(rows.scenario > 0),
            self.scenarios.take(pa.array(rows.scenario)),
            names.take(pa.array(inverse.reshape(-1))),
        ]
        return pa.Table.from_arrays(columns, schema=TRUTH_SCHEMA)

    def labels(self, index: np.ndarray, known_at: np.ndarray, merchant: np.ndarray) -> pa.Table:
        """Issuer chargebacks (every one says: fraud) for the payments numbered ``index``."""
        n = len(index)
        columns = [
            self.transaction_ids(index),
            _constant(True, n),
            _constant("chargeback", n),
            pa.array(known_at, TIME),
            _constant("issuer", n),
            _constant("", n),
            self.merchants.take(pa.array(merchant)),
        ]
        return pa.Table.from_arrays(columns, schema=LABEL_SCHEMA)

    def _device_ids(self, device: np.ndarray) -> pa.Array:
        own = self.devices.take(pa.array(np.maximum(device, 0)))
        fraudster = device < 0
        if not fraudster.any():
            return own
        return pc.replace_with_mask(own, pa.array(fraudster), id_strings("dev-x-", 6, -device[fraudster] - 1))


# ---------------------------------------------------------------------------------- JSON lines


def json_lines(table: pa.Table) -> Iterator[pa.Buffer]:
    """The table as JSON lines, in buffers to write one after the other."""
    for start in range(0, table.num_rows, JSON_SLICE):
        yield _text(_render(table.slice(start, JSON_SLICE)))


def _render(table: pa.Table) -> pa.Array:
    parts: list[object] = []
    literal = "{"
    for k, name in enumerate(table.column_names):
        literal += ("," if k else "") + f'"{name}":'
        value, quoted = _json_value(table.column(name).combine_chunks())
        if quoted:
            parts += [literal + '"', value]
            literal = '"'
        else:
            parts += [literal, value]
            literal = ""
    return pc.binary_join_element_wise(*parts, literal + "}\n", "")


def _json_value(column: pa.Array) -> tuple[pa.Array, bool]:
    """A column's JSON text, and whether it still needs quotes around it."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        return _iso_times(column), True
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "true", "false"), False
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.string()), False
    if pa.types.is_list(kind):
        joined = pc.binary_join_element_wise('["', pc.binary_join(column, '","'), '"]', "")
        return pc.if_else(pc.equal(pc.list_value_length(column), 0), "[]", joined), False
    if column.null_count:
        return pc.fill_null(pc.binary_join_element_wise('"', column, '"', ""), "null"), False
    return column, True


def _iso_times(column: pa.Array) -> pa.Array:
    """RFC 3339 in UTC as msgspec writes it: no fraction on a whole second, else microseconds."""
    ms = pc.cast(column.cast(pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy()
    day, ms_of_day = np.divmod(ms, DAY_MS)
    days, which = np.unique(day, return_inverse=True)
    dates = pa.array([(EPOCH + timedelta(days=int(d))).strftime("%Y-%m-%dT") for d in days])
    return pc.binary_join_element_wise(
        dates.take(pa.array(which.reshape(-1))),
        _clock().take(pa.array(ms_of_day // 1000)),
        _fractions().take(pa.array(ms_of_day % 1000)),
        "Z",
        "",
    )


@cache
def _clock() -> pa.Array:
    return pa.array([f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)])


@cache
def _fractions() -> pa.Array:
    return pa.array([""] + [f".{ms:03d}000" for ms in range(1, 1000)])


def _text(chunk: pa.Array) -> pa.Buffer:
    """The characters of a string array with no nulls: its data buffer, without copying."""
    offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
    if len(chunk) == 0:
        return pa.py_buffer(b"")
    return chunk.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


# ---------------------------------------------------------------------------------- files


def paths(out_dir: Path, fmt: str) -> dict[str, Path]:
    return {kind: Path(out_dir) / f"{kind}.{fmt}" for kind in KINDS}


def detect_format(out_dir: Path) -> str:
    """The format of the simulation in ``out_dir``; the newer one if both are there."""
    found = [(p.stat().st_mtime, fmt) for fmt in FORMATS if (p := Path(out_dir) / f"transactions.{fmt}").exists()]
    if not found:
        raise FileNotFoundError(f"no simulation in {out_dir}: run `fraud simulate` first")
    return max(found)[1]


class Sink:
    """The three files of a simulation in one format, written a table at a time.

    Files of the other format in the same directory are removed: a reader would otherwise find
    an older simulation beside the new one."""

    def __init__(self, out_dir: Path, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for other in FORMATS:
            if other != fmt:
                for path in paths(out_dir, other).values():
                    path.unlink(missing_ok=True)
        self.fmt = fmt
        self.paths = paths(out_dir, fmt)
        schemas = {"transactions": TRANSACTION_SCHEMA, "labels": LABEL_SCHEMA, "truth": TRUTH_SCHEMA}
        if fmt == "parquet":
            self._files = {k: pq.ParquetWriter(p, schemas[k], compression="zstd") for k, p in self.paths.items()}
        else:
            self._files = {k: p.open("wb") for k, p in self.paths.items()}

    def write(self, kind: str, table: pa.Table) -> None:
        if self.fmt == "parquet":
            self._files[kind].write_table(table)
        else:
            for buffer in json_lines(table):
                self._files[kind].write(buffer)

    def close(self) -> None:
        for file in self._files.values():
            file.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_objects(table: pa.Table, type_: type[T]) -> list[T]:
    """Rows of a table as schema objects, validated by msgspec (times exact to the microsecond)."""
    names = table.column_names
    columns = []
    for name in names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            micros = pc.cast(column.cast(pa.timestamp("us", tz="UTC")), pa.int64()).to_pylist()
            columns.append([EPOCH + timedelta(microseconds=us) for us in micros])
        else:
            columns.append(column.to_pylist())
    return msgspec.convert(
        [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)], list[type_]
    )


def read_kind(out_dir: Path, kind: str, fmt: str | None = None) -> list:
    fmt = fmt or detect_format(out_dir)
    path = paths(out_dir, fmt)[kind]
    if fmt == "parquet":
        return to_objects(pq.read_table(path), KINDS[kind])
    return list(read_jsonl(path, KINDS[kind]))


def iter_transactions(out_dir: Path, batch_rows: int = 65_536) -> Iterator[Transaction]:
    """The transactions of a simulation directory in time order, a batch at a time (any size of run)."""
    fmt = detect_format(out_dir)
    path = paths(out_dir, fmt)["transactions"]
    if fmt == "jsonl":
        yield from read_jsonl(path, Transaction)
        return
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield from to_objects(pa.Table.from_batches([batch]), Transaction)
