"""``fraud score-batch``: a file scored offline gets the served model's scores on the point-in-time
features the replay computes, and the decision engine's outcomes; bad files are refused by name."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from experiments import score_batch as sb
from fraud.cli import app
from retrain import ModelRegistry
from rules_engine import load_rules
from schema import Transaction
from scoring.engine import DecisionEngine
from scoring.metrics import ScorerMetrics
from simulator.files import LABEL_SCHEMA, TRANSACTION_SCHEMA
from streaming import BatchFeatures

ROWS = 2000  # a prefix of the history: its features need only the rows before it


def _table(transactions: list[Transaction]) -> pa.Table:
    rows = [msgspec.structs.asdict(t) for t in transactions]
    return pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA)


def _as_csv(table: pa.Table, path: Path) -> Path:
    times = [t.isoformat().replace("+00:00", "Z") for t in table.column("event_time").to_pylist()]
    pacsv.write_csv(table.set_column(1, "event_time", pa.array(times)), path)
    return path


@pytest.fixture(scope="module")
def files(simulated_history, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("score-batch")
    table = _table(simulated_history.ordered[:ROWS])
    pq.write_table(table, root / "in.parquet")
    _as_csv(table, root / "in.csv")
    labels = pa.Table.from_pylist(
        [{**msgspec.structs.asdict(lb), "source": lb.source.value} for lb in simulated_history.labels],
        schema=LABEL_SCHEMA,
    )
    pq.write_table(labels, root / "labels.parquet")
    return {"parquet": root / "in.parquet", "csv": root / "in.csv", "labels": root / "labels.parquet", "root": root}


class _ReplayedStore:
    """The decision path's feature read, answered with the history's point-in-time features."""

    def __init__(self, ids: list[str], matrix: np.ndarray) -> None:
        self.row = {tx: i for i, tx in enumerate(ids)}
        self.matrix = matrix

    def features_for_batch(self, transactions):
        return BatchFeatures(self.matrix[[self.row[t.transaction_id] for t in transactions]], None)


def test_scores_and_outcomes_are_the_decision_paths(simulated_history, files, monkeypatch, tmp_path):
    monkeypatch.setattr(sb, "CHUNK_ROWS", 700)  # several chunks, labels falling between them
    out = tmp_path / "scores.parquet"
    summary = sb.score_batch(files["parquet"], out, simulated_history.registry_dir, labels_path=files["labels"])
    assert summary.rows == ROWS and summary.replay.startswith("chunked")
    assert summary.model_version == simulated_history.model_version
    scored = pq.read_table(out).to_pydict()
    txns, matrix = simulated_history.ordered[:ROWS], simulated_history.matrix[:ROWS]
    assert scored["transaction_id"] == [t.transaction_id for t in txns]

    model = ModelRegistry(simulated_history.registry_dir).load()
    np.testing.assert_allclose(scored["score"], model.predict_proba(matrix.astype(np.float32)), atol=1e-5)

    store = _ReplayedStore([t.transaction_id for t in txns], matrix.astype(np.float64))
    engine = DecisionEngine(load_rules(), model, store, None, ScorerMetrics(), explain_inline=False)
    decisions = engine.decide_batch(txns)
    assert scored["outcome"] == [d.outcome.value for d in decisions]
    assert scored["rule_ids"] == [";".join(h.rule_id for h in d.rule_hits) for d in decisions]
    assert sum(summary.outcomes.values()) == ROWS and summary.outcomes["flag"] > 0  # not a trivial policy
    assert set(scored["model_version"]) == {simulated_history.model_version}


def test_csv_and_parquet_inputs_give_the_same_scores(simulated_history, files, tmp_path):
    outputs = {}
    for kind, suffix in (("parquet", ".csv"), ("csv", ".parquet")):
        out = tmp_path / f"from-{kind}{suffix}"
        sb.score_batch(
            files[kind], out, simulated_history.registry_dir, labels_path=files["labels"], predictor="onnxruntime"
        )
        if suffix == ".csv":
            options = pacsv.ConvertOptions(column_types=sb.OUTPUT_SCHEMA, strings_can_be_null=False)
            outputs[kind] = pacsv.read_csv(out, convert_options=options)
        else:
            outputs[kind] = pq.read_table(out)
    assert outputs["csv"].equals(outputs["parquet"])


def test_a_repeated_id_replays_the_whole_file_and_scores_every_row(simulated_history, files, tmp_path):
    txns = simulated_history.ordered[:600]
    pq.write_table(_table([*txns[:300], txns[299], *txns[300:]]), tmp_path / "dup.parquet")
    summary = sb.score_batch(tmp_path / "dup.parquet", tmp_path / "dup.out.parquet", simulated_history.registry_dir)
    assert summary.rows == 601 and summary.replay.startswith("whole file")
    scores = pq.read_table(tmp_path / "dup.out.parquet").column("score").to_numpy()
    model = ModelRegistry(simulated_history.registry_dir).load()
    # No labels given: the fraud-rate features read zero, so compare with a replay without labels.
    from streaming import feature_matrix

    _, matrix = feature_matrix(txns)
    expected = model.predict_proba(matrix.astype(np.float32))
    np.testing.assert_allclose(np.delete(scores, 300), expected, atol=1e-5)
    assert scores[300] == pytest.approx(scores[299])  # the repeat keeps its first copy's features


def _bad_csv(simulated_history, tmp_path: Path, column: str, row: int, value: str) -> Path:
    table = _table(simulated_history.ordered[:20])
    path = _as_csv(table, tmp_path / "bad.csv")
    text = pacsv.read_csv(path, convert_options=sb._csv_options())
    values = text.column(column).to_pylist()
    values[row - 1] = value
    pacsv.write_csv(text.set_column(text.schema.get_field_index(column), column, pa.array(values)), path)
    return path


@pytest.mark.parametrize(
    ("column", "row", "value"),
    [
        ("amount_minor", 5, "12.50"),
        ("amount_minor", 3, "-4"),
        ("event_time", 7, "yesterday"),
        ("event_time", 2, "2026-01-05T10:00:00"),  # no offset: a naive time is refused, not guessed
        ("currency", 9, "XXX"),  # schema.check_transaction: not a payment currency
        ("card_id", 4, ""),
    ],
)
def test_a_bad_value_is_refused_naming_its_row_and_column(simulated_history, tmp_path, column, row, value):
    path = _bad_csv(simulated_history, tmp_path, column, row, value)
    out = tmp_path / "out.parquet"
    with pytest.raises(sb.BatchInputError) as refused:
        sb.score_batch(path, out, simulated_history.registry_dir)
    assert f"row {row}, column {column}:" in str(refused.value)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_a_missing_column_or_a_wrong_type_is_refused_by_name(simulated_history, tmp_path):
    table = _table(simulated_history.ordered[:20])
    pq.write_table(table.drop_columns(["merchant_id"]), tmp_path / "missing.parquet")
    with pytest.raises(sb.BatchInputError, match="missing column 'merchant_id'"):
        sb.score_batch(tmp_path / "missing.parquet", tmp_path / "o.parquet", simulated_history.registry_dir)
    amounts = table.column("amount_minor").cast(pa.float64())
    pq.write_table(table.set_column(6, "amount_minor", amounts), tmp_path / "float.parquet")
    with pytest.raises(sb.BatchInputError, match="column 'amount_minor': expected integers"):
        sb.score_batch(tmp_path / "float.parquet", tmp_path / "o.parquet", simulated_history.registry_dir)


def test_the_command_scores_a_file_and_prints_rows_per_second(simulated_history, files, tmp_path):
    pq.write_table(_table(simulated_history.ordered[:500]), tmp_path / "few.parquet")
    policy = tmp_path / "policy.yaml"
    policy.write_text("flag: 0.5\nblock: 0.9\n")
    out = tmp_path / "scores.csv"
    args = ["score-batch", str(tmp_path / "few.parquet"), "--out", str(out), "--labels", str(files["labels"])]
    args += ["--policy", str(policy), "--home", str(simulated_history.registry_dir.parent)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "rows/s: read" in result.output and "predictor: " in result.output
    assert "flag >= 0.5, block >= 0.9" in result.output
    assert pacsv.read_csv(out).num_rows == 500

    help_text = CliRunner().invoke(app, ["score-batch", "--help"], env={"COLUMNS": "120"}).output
    assert "Usage:" in help_text and "Examples:" in help_text

    result = CliRunner().invoke(app, [*args[:2], "--home", str(tmp_path), "--no-rules"])
    assert result.exit_code == 1 and "no champion" in result.output
