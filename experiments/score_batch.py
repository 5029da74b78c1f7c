"""Offline batch scoring: a file of transactions through the registered model, as the decision path
would decide them (``fraud score-batch``, docs/experiments.md "Batch scoring").

Features are the online code's own: ``streaming.OfflineFeatureBuilder`` replays the file, so each
row's features depend only on the rows before it (and the labels known by then), exactly as the
training sets and the decision path compute them. The outcome is the decision engine's rule: the
most severe of the threshold outcome and the actions of the rules that fired.

How the file is read:

* Parquet or CSV (by suffix) with the simulator's columns (``simulator.files.TRANSACTION_SCHEMA``;
  ``channel`` may be left out, it defaults as in ``schema.Transaction``); extra columns are ignored.
  CSV values are text, ``event_time`` RFC 3339 with ``Z`` or an offset.
* Every row must pass the schema's validation (the msgspec types and ``schema.check_transaction``).
  A bad file is refused, not partly scored: ``BatchInputError`` lists the first problems, each with
  its row number (1-based, header not counted) and column, and no output is left behind. Refusing
  rather than skipping is deliberate: a skipped payment would also be missing from every later
  payment's features, so the scores of the rows kept would not be the ones the system would give.
* A file in event-time order with unique ids (what the simulator and most logs write) is replayed a
  chunk at a time with one builder whose entity states carry over, so memory holds one chunk of
  rows, not the file. Anything else (rows out of order: the stream's admission rule then depends on
  arrival order; a repeated id) is replayed whole, as ``streaming.feature_matrix`` does: same
  features, more memory. The summary says which.

The predictor: the registry keeps each model as ONNX (what the scorer serves) and as XGBoost's own
file. ``auto`` times both on the first chunk's rows and runs the faster; whichever runs, the ONNX
model's probabilities are checked against it on a sample of every chunk, and a difference over
``PARITY_TOLERANCE`` refuses the run (or, under ``auto``, falls back to onnxruntime and says why).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from experiments.config import Policy
from retrain import ModelRegistry, RegisteredModel
from retrain.registry import ModelLoadError, model_thresholds
from rules_engine import RuleSet, load_rules
from schema import DecisionThresholds, InvalidEvent, Label, Outcome, Transaction, check_transaction, read_jsonl
from simulator.files import LABEL_SCHEMA, TRANSACTION_SCHEMA
from streaming import MODEL_FEATURES, OfflineFeatureBuilder
from streaming.batch_features import COLUMN

CHUNK_ROWS = 65_536  # rows per replay chunk and per model call: big enough to amortise, ~25 MB of features
PARITY_TOLERANCE = 1e-4  # |p_xgboost - p_onnx|, as retrain's export check (TrainingConfig.parity_tolerance)
PARITY_SAMPLE = 256  # rows per chunk checked against the ONNX model when XGBoost scores
TIMING_ROWS = 16_384  # rows each predictor scores when ``auto`` picks one
MAX_PROBLEMS = 10  # problems listed when a file is refused
OPTIONAL = {"channel"}  # has a default in schema.Transaction
REQUIRED = [name for name in TRANSACTION_SCHEMA.names if name not in OPTIONAL]
OUTPUT_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("score", pa.float32()),
        ("outcome", pa.string()),
        ("rule_ids", pa.string()),  # ids of the rules that fired, ";"-separated, "" for none
        ("model_version", pa.string()),
    ]
)
_OUTCOMES = [Outcome.APPROVE, Outcome.FLAG, Outcome.BLOCK]  # index = severity
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_AT = re.compile(r"^(.*) - at `\$(?:\[(\d+)\])?\.?([A-Za-z_]*)`$", re.S)

PredictorChoice = Literal["auto", "onnxruntime", "xgboost"]
Progress = Callable[[str, int, int], None]  # (stage, rows done, rows in all)


class BatchInputError(ValueError):
    """A transactions or labels file that cannot be scored; ``problems`` are the first ones found."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{path}: refused, nothing scored:\n  " + "\n  ".join(self.problems))


class PredictorMismatch(RuntimeError):
    """XGBoost's predictor and the served ONNX model disagree beyond ``PARITY_TOLERANCE``."""


@dataclass
class BatchSummary:
    """What one run did and how fast; ``format_summary`` prints it."""

    input: Path
    output: Path
    rows: int
    model_version: str
    thresholds: DecisionThresholds
    rules: str  # "none" or the rule file and its rule count
    predictor: str
    predictor_note: str  # why this predictor (timings, or the fallback reason)
    parity_max_abs_diff: float | None  # worst |p - p_onnx| seen on the samples (None: ONNX scored)
    replay: str  # "chunked" or "whole file", and why
    labels: int
    seconds: dict[str, float]  # read, features, score, write, total
    outcomes: dict[str, int]
    rules_fired: dict[str, int]
    machine: dict[str, object] = field(default_factory=dict)

    def rate(self, stage: str) -> float:
        seconds = self.seconds.get(stage, 0.0)
        return self.rows / seconds if seconds > 0 else float("inf")


# ---------------------------------------------------------------------------------- reading


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise BatchInputError(path, [f"unknown file type {suffix!r}: expected .parquet or .csv"])


def _csv_options() -> pacsv.ConvertOptions:
    # Every known column as text: the checks below, not the CSV reader's guesses, decide what a value is.
    names = set(TRANSACTION_SCHEMA.names) | set(LABEL_SCHEMA.names)
    return pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False)


def _batches(path: Path, kind: str) -> Iterator[pa.RecordBatch]:
    if kind == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS)
    else:
        yield from pacsv.open_csv(path, convert_options=_csv_options())


def _column_names(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        return pq.read_schema(path).names
    with pacsv.open_csv(path, convert_options=_csv_options()) as reader:
        return reader.schema.names


def _check_columns(path: Path, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [n for n in required if n not in names]
    if missing:
        raise BatchInputError(
            path, [f"missing column {n!r} (the file has: {', '.join(names) or 'no columns'})" for n in missing]
        )


@dataclass(frozen=True)
class _Prescan:
    rows: int
    chunked: bool
    why: str


def _prescan(path: Path, kind: str) -> _Prescan:
    """Row count, and whether the file may be replayed a chunk at a time (event order, unique ids).
    Reads two columns only; a time Arrow cannot parse just means "replay whole" (the main pass
    names the bad value if the schema refuses it too)."""
    if kind == "parquet":
        table = pq.read_table(path, columns=["transaction_id", "event_time"])
    else:
        options = pacsv.ConvertOptions(
            column_types={"transaction_id": pa.string(), "event_time": pa.string()},
            include_columns=["transaction_id", "event_time"],
            strings_can_be_null=False,
        )
        table = pacsv.read_csv(path, convert_options=options)
    rows = table.num_rows
    try:
        ts = _micros(table.column("event_time"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
        return _Prescan(rows, False, "whole file: event_time not machine-readable in bulk")
    if rows and np.any(np.diff(ts) < 0):
        return _Prescan(rows, False, "whole file: rows are not in event-time order")
    if pc.count_distinct(table.column("transaction_id")).as_py() != rows:
        return _Prescan(rows, False, "whole file: some transaction ids repeat")
    return _Prescan(rows, True, f"chunked: {CHUNK_ROWS:,} rows at a time, in event-time order")


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Event times as int64 microseconds since the epoch; text is parsed as RFC 3339 (offset required)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.timestamp("us", tz="UTC"))
    elif not pa.types.is_timestamp(column.type) or column.type.tz is None:
        raise TypeError(f"expected a timestamp with a time zone, got {column.type}")
    return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def _typed(batch: pa.RecordBatch, path: Path, schema: pa.Schema) -> pa.RecordBatch | None:
    """The batch with its known columns in the schema's types, or None when some value does not
    convert in bulk (the row-by-row pass then names it). A column of the wrong kind is refused here."""
    arrays, names = [], []
    for name in schema.names:
        if name not in batch.schema.names:
            continue
        column, want = batch.column(name), schema.field(name).type
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.dictionary_decode(), kind.value_type
        text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        if pa.types.is_timestamp(want):
            if pa.types.is_timestamp(kind) and kind.tz is None:
                raise BatchInputError(path, [f"column {name!r}: timestamps without a time zone ({kind}); need UTC"])
            if not (text or pa.types.is_timestamp(kind)):
                raise BatchInputError(path, [f"column {name!r}: expected timestamps or RFC 3339 text, got {kind}"])
            want = pa.timestamp("us", tz="UTC")
        elif pa.types.is_integer(want) and not (text or pa.types.is_integer(kind)):
            raise BatchInputError(path, [f"column {name!r}: expected integers, got {kind}"])
        elif pa.types.is_boolean(want) and not (text or pa.types.is_boolean(kind)):
            raise BatchInputError(path, [f"column {name!r}: expected true/false, got {kind}"])
        elif pa.types.is_string(want) and not text:
            raise BatchInputError(path, [f"column {name!r}: expected text, got {kind}"])
        if pa.types.is_boolean(want) and text:
            return None  # "true"/"false" text: msgspec's lax conversion reads it row by row
        try:
            arrays.append(column.cast(want))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _python_columns(batch: pa.RecordBatch) -> list[tuple[str, list]]:
    columns = []
    for name in batch.schema.names:
        column = batch.column(name)
        if pa.types.is_timestamp(column.type):  # exact to the microsecond, as simulator.files.to_objects
            micros = pc.cast(column, pa.int64()).to_pylist()
            values = [None if us is None else _EPOCH + timedelta(microseconds=us) for us in micros]
        else:
            values = column.to_pylist()
        columns.append((name, values))
    return columns


def _problem(row: int, message: str) -> str:
    """'row N, column C: what' from a msgspec or InvalidEvent message ending in ' - at `$.C`'."""
    found = _AT.match(message)
    if not found:
        return f"row {row}: {message}"
    return f"row {row}, column {found.group(3) or '?'}: {found.group(1)}"


def _objects(batch: pa.RecordBatch, first_row: int, path: Path, type_: type, check: Callable | None) -> list:
    """The rows of one batch as validated schema objects; BatchInputError names the bad rows."""
    typed = _typed(batch, path, TRANSACTION_SCHEMA if type_ is Transaction else LABEL_SCHEMA)
    source = typed if typed is not None else batch
    names, columns = zip(*_python_columns(source), strict=True) if source.num_columns else ((), ())
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    del columns
    try:
        # Typed columns convert strictly; text (a CSV value Arrow could not convert) leniently, so
        # that "100" is an amount and "abc" is refused with its row named.
        objects = msgspec.convert(rows, list[type_], strict=typed is not None)
        if check is not None:
            for obj in objects:
                check(obj)
        return objects
    except (msgspec.ValidationError, InvalidEvent):
        pass
    problems = []  # the slow path, only for a file about to be refused: every row on its own
    for i, row in enumerate(rows):
        try:
            obj = msgspec.convert(row, type_, strict=False)
            if check is not None:
                check(obj)
        except (msgspec.ValidationError, InvalidEvent) as exc:
            problems.append(_problem(first_row + i, str(exc)))
            if len(problems) == MAX_PROBLEMS:
                break
    if not problems:  # only the strict bulk pass objected: the lenient one accepts every row
        return msgspec.convert(rows, list[type_], strict=False)
    raise BatchInputError(path, problems)


def read_labels(path: Path, transactions_path: Path | None = None) -> list[Label]:
    """A label file (the simulator's: Parquet, JSON lines or CSV), validated, by ``known_at``.

    A label without ``merchant_id`` gets its transaction's merchant from ``transactions_path``: a
    chunked replay no longer holds the transaction when the label arrives."""
    kind = _kind(path)
    if kind == "jsonl":
        labels = list(read_jsonl(path, Label))
    else:
        _check_columns(path, _column_names(path, kind), ["transaction_id", "is_fraud", "source", "known_at", "author"])
        labels, first = [], 1
        for batch in _batches(path, kind):
            labels += _objects(batch, first, path, Label, None)
            first += batch.num_rows
    if transactions_path is not None and any(lb.merchant_id is None for lb in labels):
        labels = _with_merchants(labels, transactions_path)
    return sorted(labels, key=lambda lb: lb.known_at)


def _with_merchants(labels: list[Label], transactions_path: Path) -> list[Label]:
    kind = _kind(transactions_path)
    columns = ["transaction_id", "merchant_id"]
    if kind == "parquet":
        table = pq.read_table(transactions_path, columns=columns)
    else:
        options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(columns, pa.string()), include_columns=columns, strings_can_be_null=False
        )
        table = pacsv.read_csv(transactions_path, convert_options=options)
    wanted = pa.array([lb.transaction_id for lb in labels if lb.merchant_id is None], pa.string())
    at = pc.index_in(wanted, value_set=table.column("transaction_id")).to_pylist()
    merchants = table.column("merchant_id").to_pylist()
    found = iter(None if i is None else merchants[i] for i in at)
    return [msgspec.structs.replace(lb, merchant_id=next(found)) if lb.merchant_id is None else lb for lb in labels]


# ---------------------------------------------------------------------------------- model


@dataclass
class _Scorer:
    """The model as it will score: the chosen predictor, with the ONNX model to check it against."""

    model: RegisteredModel
    onnx: ort.InferenceSession  # all cores: a batch job, not the one-thread serving session
    booster: object | None  # xgboost.Booster, or None without the native file
    choice: PredictorChoice
    name: str = ""
    note: str = ""
    worst_diff: float | None = None

    def onnx_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self.onnx.run(["probabilities"], {"input": matrix})[0][:, 1]

    def xgb_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(matrix)  # type: ignore[union-attr]

    def pick(self, matrix: np.ndarray) -> None:
        """Choose the predictor on the first chunk (``auto``: time both on the same rows)."""
        if self.booster is None:
            if self.choice == "xgboost":
                raise PredictorMismatch(f"model {self.model.version} has no XGBoost file in the registry")
            self.name, self.note = "onnxruntime", "the registry has no XGBoost file for this version"
            return
        if self.choice != "auto":
            self.name, self.note = self.choice, "chosen with --predictor"
            return
        sample = matrix[:TIMING_ROWS]
        onnx_s, xgb_s = _best_time(self.onnx_proba, sample), _best_time(self.xgb_proba, sample)
        self.name = "xgboost" if xgb_s < onnx_s else "onnxruntime"
        self.note = (
            f"faster on {len(sample):,} rows of this file: onnxruntime {len(sample) / onnx_s:,.0f} rows/s, "
            f"xgboost {len(sample) / xgb_s:,.0f} rows/s ({os.cpu_count()} threads each)"
        )

    def score(self, matrix: np.ndarray) -> np.ndarray:
        if self.name == "onnxruntime":
            return self.onnx_proba(matrix)
        scores = np.asarray(self.xgb_proba(matrix), dtype=np.float32)
        sample = np.linspace(0, len(matrix) - 1, min(PARITY_SAMPLE, len(matrix))).astype(np.int64)
        diff = float(np.max(np.abs(scores[sample] - self.onnx_proba(matrix[sample])))) if len(sample) else 0.0
        self.worst_diff = max(self.worst_diff or 0.0, diff)
        if diff <= PARITY_TOLERANCE:
            return scores
        message = f"xgboost differs from the served ONNX model by {diff:.2e} (tolerance {PARITY_TOLERANCE:.0e})"
        if self.choice == "xgboost":
            raise PredictorMismatch(message)
        self.name, self.note = "onnxruntime", f"fell back: {message}"
        return self.onnx_proba(matrix)


def _best_time(call: Callable[[np.ndarray], object], matrix: np.ndarray) -> float:
    call(matrix[:64])  # warm-up: first-call allocation is not the rate
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        call(matrix)
        best = min(best, time.perf_counter() - started)
    return max(best, 1e-9)


def _scorer(registry: ModelRegistry, version: str | None, choice: PredictorChoice) -> _Scorer:
    model = registry.load(version)  # refuses a corrupt model or one whose features differ from this code's
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    onnx_file = registry.root / "models" / model.version / "model.onnx"  # the registry's layout (its docstring)
    onnx = ort.InferenceSession(onnx_file.read_bytes(), options, providers=["CPUExecutionProvider"])
    booster = None
    if choice != "onnxruntime":
        try:
            import xgboost as xgb

            booster = xgb.Booster(model_file=str(registry.native_model_path(model.version)))
            booster.set_param({"nthread": os.cpu_count() or 1})
        except ModelLoadError:
            booster = None
    return _Scorer(model, onnx, booster, choice)


# ---------------------------------------------------------------------------------- deciding


class _Vectors(Sequence[Mapping[str, float]]):
    """Named feature rows built only for the rows a rule looks at (most payments fire none)."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def __len__(self) -> int:
        return len(self.matrix)

    def __getitem__(self, i):  # type: ignore[override]
        return dict(zip(MODEL_FEATURES, self.matrix[i].tolist(), strict=True))


def decide(
    transactions: Sequence[Transaction],
    matrix: np.ndarray,
    scores: np.ndarray,
    thresholds: DecisionThresholds,
    rules: RuleSet | None,
) -> tuple[np.ndarray, list[str]]:
    """Outcome severity per row (0 approve, 1 flag, 2 block) and the ids of the rules that fired:
    the decision engine's rule (scoring/engine.py): the rules are a floor the score can raise."""
    severity = (scores >= thresholds.flag).astype(np.int8) + (scores >= thresholds.block).astype(np.int8)
    fired = [""] * len(transactions)
    if rules is None:
        return severity, fired
    column: Callable[[str], np.ndarray | None] = lambda name: (  # noqa: E731
        matrix[:, COLUMN[name]] if name in COLUMN else None
    )
    for i, hits in enumerate(rules.evaluate_batch(transactions, _Vectors(matrix), column)):
        if hits:
            fired[i] = ";".join(h.rule_id for h in hits if h.evaluated)
            severity[i] = max(int(severity[i]), *(h.action.severity for h in hits))
    return severity, fired


# ---------------------------------------------------------------------------------- the run


@dataclass
class _Run:
    scorer: _Scorer
    thresholds: DecisionThresholds
    rules: RuleSet | None
    writer: pq.ParquetWriter | pacsv.CSVWriter
    total: int
    progress: Progress | None
    seconds: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    fired: Counter = field(default_factory=Counter)
    done: int = 0

    def features(self, builder: OfflineFeatureBuilder, txns: list[Transaction], labels: list[Label]) -> np.ndarray:
        started = time.perf_counter()
        progress = None
        if self.progress is not None and len(txns) > CHUNK_ROWS:  # a whole-file replay: report as it goes
            progress = lambda done, _: self.progress("features", done, self.total)  # noqa: E731
        rows = builder.replay_rows(txns, labels, progress=progress)
        matrix = np.array([rows[t.transaction_id] for t in txns], dtype=np.float64)
        self.seconds["features"] += time.perf_counter() - started
        return matrix

    def score_and_write(self, txns: list[Transaction], matrix: np.ndarray) -> None:
        started = time.perf_counter()
        model_input = matrix.astype(np.float32)  # the decision path's cast (scoring/engine.py)
        if not self.scorer.name:
            self.scorer.pick(model_input)
        scores = self.scorer.score(model_input)
        severity, fired = decide(txns, matrix, scores, self.thresholds, self.rules)
        scored = time.perf_counter()
        self.seconds["score"] += scored - started
        outcomes = pa.array([o.value for o in _OUTCOMES]).take(pa.array(severity))
        self.writer.write_batch(
            pa.RecordBatch.from_arrays(
                [
                    pa.array([t.transaction_id for t in txns], pa.string()),
                    pa.array(scores, pa.float32()),
                    outcomes,
                    pa.array(fired, pa.string()),
                    pa.array([self.scorer.model.version] * len(txns), pa.string()),
                ],
                schema=OUTPUT_SCHEMA,
            )
        )
        self.seconds["write"] += time.perf_counter() - scored
        for level, n in enumerate(np.bincount(severity, minlength=3).tolist()):
            self.outcomes[_OUTCOMES[level].value] += n
        self.fired.update(rule for ids in fired if ids for rule in ids.split(";"))
        self.done += len(txns)
        if self.progress is not None:
            self.progress("scoring", self.done, self.total)


def _labels_before(labels: list[Label], start: int, boundary: float) -> tuple[list[Label], int]:
    """The labels from ``start`` known before ``boundary`` (Unix seconds), and where the next begin."""
    end = start
    while end < len(labels) and labels[end].known_at.timestamp() < boundary:
        end += 1
    return labels[start:end], end


def _cut(pending: list[Transaction], at_end: bool) -> int:
    """Where to end the next chunk: at ``CHUNK_ROWS`` rows, moved past rows sharing the last time
    (rows at one instant and the labels known then must be replayed together); 0: wait for more."""
    if len(pending) < CHUNK_ROWS:
        return len(pending) if at_end else 0
    cut = CHUNK_ROWS
    while cut < len(pending) and pending[cut].event_ts == pending[cut - 1].event_ts:
        cut += 1
    return cut if cut < len(pending) or at_end else 0


def score_batch(
    input_path: Path,
    out: Path,
    registry_dir: Path,
    policy: Policy | None = None,
    labels_path: Path | None = None,
    use_rules: bool = True,
    predictor: PredictorChoice = "auto",
    progress: Progress | None = None,
) -> BatchSummary:
    """Score every transaction of ``input_path`` into ``out`` (.parquet or .csv); see the module docstring.

    Args:
        policy: model version and thresholds (unset: the champion at its own thresholds) and rule
            file (unset: the rules shipped); ``use_rules=False`` decides on the score alone.
        labels_path: the label log, for the merchant fraud-rate features (none: no label known).
        progress: called with (stage, rows done, rows in all) as chunks finish.

    Raises:
        BatchInputError: a bad input file (nothing is written); ModelLoadError: no such model;
        PredictorMismatch: ``--predictor xgboost`` disagrees with the served model.
    """
    began = time.perf_counter()
    policy = policy or Policy()
    input_path, out = Path(input_path), Path(out)
    kind, out_kind = _kind(input_path), _kind(out)
    if kind == "jsonl" or out_kind == "jsonl":
        raise BatchInputError(input_path if kind == "jsonl" else out, ["expected a .parquet or .csv file"])
    _check_columns(input_path, _column_names(input_path, kind), REQUIRED)
    registry = ModelRegistry(registry_dir)
    scorer = _scorer(registry, None if policy.model == "champion" else policy.model, predictor)
    thresholds = policy.thresholds(model_thresholds(scorer.model.metadata))
    rules = load_rules(policy.rules) if use_rules else None
    started = time.perf_counter()
    labels = read_labels(labels_path, input_path) if labels_path is not None else []
    scan = _prescan(input_path, kind)
    setup_read = time.perf_counter() - started

    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = (
        pq.ParquetWriter(partial, OUTPUT_SCHEMA, compression="zstd")
        if out_kind == "parquet"
        else pacsv.CSVWriter(partial, OUTPUT_SCHEMA)
    )
    run = _Run(scorer, thresholds, rules, writer, scan.rows, progress)
    run.seconds["read"] += setup_read
    try:
        (_chunked if scan.chunked else _whole)(run, input_path, kind, labels)
        writer.close()
        partial.replace(out)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    run.seconds["total"] = time.perf_counter() - began
    return BatchSummary(
        input=input_path,
        output=out,
        rows=run.done,
        model_version=scorer.model.version,
        thresholds=thresholds,
        rules="none (--no-rules)" if rules is None else f"{policy.rules or 'shipped rules'} ({len(rules.rules)} rules)",
        predictor=scorer.name or "none (no rows)",
        predictor_note=scorer.note,
        parity_max_abs_diff=scorer.worst_diff,
        replay=scan.why,
        labels=len(labels),
        seconds=dict(run.seconds),
        outcomes={o.value: run.outcomes[o.value] for o in _OUTCOMES},
        rules_fired=dict(run.fired.most_common()),
        machine=_machine(),
    )


def _read(run: _Run, path: Path, kind: str) -> Iterator[list[Transaction]]:
    """Validated transactions, a batch of the file at a time (reading time counted as "read")."""
    first = 1
    batches = _batches(path, kind)
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        txns = _objects(batch, first, path, Transaction, check_transaction)
        first += batch.num_rows
        run.seconds["read"] += time.perf_counter() - started
        yield txns


def _chunked(run: _Run, path: Path, kind: str, labels: list[Label]) -> None:
    """One builder over the whole file, a chunk at a time: its entity states carry the history."""
    builder = OfflineFeatureBuilder()
    pending: list[Transaction] = []
    next_label = 0

    def flush(at_end: bool) -> None:
        nonlocal pending, next_label
        while cut := _cut(pending, at_end):
            chunk, pending = pending[:cut], pending[cut:]
            # Labels known before the next chunk's first payment belong to this one: the replay
            # puts each among this chunk's payments by its known_at (a label at a payment's time first).
            boundary = pending[0].event_ts if pending else float("inf")
            known, next_label = _labels_before(labels, next_label, boundary)
            run.score_and_write(chunk, run.features(builder, chunk, known))

    for batch in _read(run, path, kind):
        pending += batch
        flush(at_end=False)
    flush(at_end=True)


def _whole(run: _Run, path: Path, kind: str, labels: list[Label]) -> None:
    """The whole file at once, in file (arrival) order: the replay decides admission as the stream would."""
    txns = [t for batch in _read(run, path, kind) for t in batch]
    matrix = run.features(OfflineFeatureBuilder(), txns, labels)
    for start in range(0, len(txns), CHUNK_ROWS):
        run.score_and_write(txns[start : start + CHUNK_ROWS], matrix[start : start + CHUNK_ROWS])


def _machine() -> dict[str, object]:
    from fraud.bench_stream import machine_info

    return machine_info()


def format_summary(s: BatchSummary) -> str:
    """The summary as the CLI prints it."""
    total = max(s.rows, 1)
    outcomes = ", ".join(f"{name} {n:,} ({n / total:.2%})" for name, n in s.outcomes.items())
    fired = ", ".join(f"{rule} {n:,}" for rule, n in s.rules_fired.items()) or "none"
    parity = "" if s.parity_max_abs_diff is None else f"; max |p - p_onnx| on samples {s.parity_max_abs_diff:.1e}"
    m = s.machine
    lines = [
        f"scored {s.rows:,} rows of {s.input} -> {s.output}",
        f"model: {s.model_version} (flag >= {s.thresholds.flag:g}, block >= {s.thresholds.block:g}); rules: {s.rules}",
        f"predictor: {s.predictor} ({s.predictor_note}{parity})",
        f"replay: {s.replay}; labels: {s.labels:,}",
        f"outcomes: {outcomes}",
        f"rules fired: {fired}",
        "rows/s: " + ", ".join(f"{stage} {s.rate(stage):,.0f}" for stage in ("read", "features", "score", "total")),
        "seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in s.seconds.items()),
        f"machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, Python {m.get('python', '?')}",
    ]
    return "\n".join(lines)
