"""`fraud import`: an external transaction log becomes the simulation format, and no row vanishes."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fraud.cli import app
from schema import Channel, GroundTruth, Label, LabelSource, Transaction
from simulator import (
    ImportMapping,
    ImportOptions,
    MappingError,
    TooManyRejects,
    import_transactions,
    read_simulation,
)
from streaming.features import MODEL_FEATURES
from streaming.offline import feature_matrix

HANDBOOK_MAP = (
    "transaction_id=TRANSACTION_ID,time=TX_DATETIME,card=CUSTOMER_ID,merchant=TERMINAL_ID,"
    "amount=TX_AMOUNT,label=TX_FRAUD,scenario=TX_FRAUD_SCENARIO"
)
# The Fraud Detection Handbook's simulated data, with a free-text column whose quoted value spans two
# physical lines (so line numbers after it are not row numbers + 1), out of time order.
HANDBOOK_CSV = """\
TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD,TX_FRAUD_SCENARIO,NOTE
0,2018-04-01 00:00:31,596,3156,57.16,0,0,plain
1,2018-04-01 00:02:10,4961,3412,81.51,1,2,"two
lines"
2,2018-04-01 00:01:00,596,1365,146.005,0,0,
3,2018-04-02 10:00:00,2,8737,0.29,1,1,x
"""


def _import(tmp_path: Path, text: str, mapping: str, **options) -> tuple[Path, object]:
    source = tmp_path / "in.csv"
    source.write_text(text)
    out = tmp_path / "out"
    report = import_transactions(source, out, ImportMapping.parse(mapping), ImportOptions(**options))
    return out, report


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def test_handbook_csv_round_trip_into_the_event_format(tmp_path):
    out, report = _import(tmp_path, HANDBOOK_CSV, HANDBOOK_MAP, assume_tz="UTC", label_delay_days=10)
    sim = read_simulation(out)

    assert (report.rows, report.accepted, report.rejected, report.fraud) == (4, 4, 0, 2)
    assert [t.transaction_id for t in sim.transactions] == ["0", "2", "1", "3"]  # by event time
    first = sim.transactions[0]
    assert first == Transaction(
        transaction_id="0",
        event_time=datetime(2018, 4, 1, 0, 0, 31, tzinfo=UTC),
        card_id="596",
        customer_id="596",  # default: the card
        merchant_id="3156",
        merchant_category="other",
        amount_minor=5716,
        currency="EUR",
        country="DE",
        card_country="DE",
        device_id="dev-of-596",
        channel=Channel.ECOMMERCE,
    )
    # major units x 100, rounded half to even: 146.005 -> 14600 (not 14601), 0.29 -> 29 (not 28.999..)
    assert [t.amount_minor for t in sim.transactions] == [5716, 14600, 8151, 29]
    assert sim.labels == [
        Label(
            transaction_id=tid,
            is_fraud=True,
            source=LabelSource.CHARGEBACK,
            known_at=when + timedelta(days=10),
            author="import",
            merchant_id=merchant,
        )
        for tid, when, merchant in [
            ("1", datetime(2018, 4, 1, 0, 2, 10, tzinfo=UTC), "3412"),
            ("3", datetime(2018, 4, 2, 10, tzinfo=UTC), "8737"),
        ]
    ]
    assert sim.truth == [
        GroundTruth(transaction_id="0", is_fraud=False, scenario=None),
        GroundTruth(transaction_id="2", is_fraud=False, scenario=None),
        GroundTruth(transaction_id="1", is_fraud=True, scenario="2"),
        GroundTruth(transaction_id="3", is_fraud=True, scenario="1"),
    ]
    assert _rejects(out) == []


def test_every_mapped_column_and_time_zones(tmp_path):
    text = (
        "id;ts;card;cust;shop;eur;bad;ctry;home;dev;mcc;cur;chan\n"
        "a;2026-01-05T10:00:00+02:00;c1;u1;m1;12.5;true;fr;DE;d1;grocery;usd;POS\n"
        "b;2026-01-05T08:00:00Z;c2;u2;m2;3;no;NL;NL;d2;travel;EUR;online\n"
        "c;2026-01-05 12:00:00;c3;u3;m3;1.00;0;AT;AT;d3;fuel;EUR;cnp\n"
    )
    mapping = (
        "transaction_id=id,time=ts,card=card,customer=cust,merchant=shop,amount=eur,label=bad,country=ctry,"
        "card_country=home,device=dev,category=mcc,currency=cur,channel=chan"
    )
    out, report = _import(tmp_path, text, mapping, delimiter=";", assume_tz="Europe/Berlin")
    sim = read_simulation(out)

    assert report.rejected == 0
    a, b, c = sorted(sim.transactions, key=lambda t: t.transaction_id)
    assert a.event_time == b.event_time == datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # offsets to UTC
    assert c.event_time == datetime(2026, 1, 5, 11, 0, tzinfo=UTC)  # naive: Berlin (UTC+1 in January)
    stored = [json.loads(line)["event_time"] for line in (out / "transactions.jsonl").read_text().splitlines()]
    assert stored == ["2026-01-05T08:00:00Z", "2026-01-05T08:00:00Z", "2026-01-05T11:00:00Z"]  # in UTC
    assert [t.transaction_id for t in sim.transactions] == ["a", "b", "c"]  # equal times: by id
    assert (a.customer_id, a.device_id, a.merchant_category) == ("u1", "d1", "grocery")
    assert (a.country, a.card_country, a.currency, a.channel) == ("FR", "DE", "USD", Channel.CARD_PRESENT)
    assert (b.channel, c.channel) == (Channel.ECOMMERCE, Channel.ECOMMERCE)
    assert [lb.transaction_id for lb in sim.labels] == ["a"]
    assert sim.labels[0].known_at == a.event_time + timedelta(days=7)  # the default delay


def test_parquet_round_trip_with_native_types(tmp_path):
    table = pa.table(
        {
            "when": pa.array(
                [datetime(2026, 3, 1, 12, 0, 0, 123456), datetime(2026, 3, 1, 11, 0), datetime(2026, 3, 2)] * 2,
                pa.timestamp("ns", tz="UTC"),
            ),
            "card": pa.array([7, 8, 9, 10, 11, 12], pa.int64()),
            "terminal": pa.array([101.0, None, 103.0, 104.0, 105.0, 106.0]),  # a float id with a null, as pandas
            "amount": pa.array([10.1, 20.0, 0.07, float("nan"), 1e-7, 1e22]),
            "fraud": pa.array([False, True, True, False, False, False]),
            "unused": pa.array(["x", "y", "z"] * 2),
        }
    )
    source = tmp_path / "log.parquet"
    pq.write_table(table, source)
    mapping = ImportMapping.parse("time=when,card=card,merchant=terminal,amount=amount,label=fraud")
    out = tmp_path / "out"
    report = import_transactions(source, out, mapping, ImportOptions(max_bad_fraction=0.7))
    sim = read_simulation(out)

    assert (report.format, report.rows, report.accepted, report.rejected) == ("parquet", 6, 2, 4)
    assert [(t.transaction_id, t.card_id, t.merchant_id, t.amount_minor) for t in sim.transactions] == [
        ("imp-000000001", "7", "101", 1010),
        ("imp-000000003", "9", "103", 7),
    ]
    assert sim.transactions[0].event_time == datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert [lb.transaction_id for lb in sim.labels] == ["imp-000000003"]
    # Parquet rejects carry the 1-based row number and the mapped columns' values (numbers as text).
    rejects = _rejects(out)
    assert rejects[0] == {
        "line": 2,
        "field": "merchant",
        "column": "terminal",
        "error": "missing value",
        "row": {"when": "2026-03-01T11:00:00Z", "card": "8", "terminal": None, "amount": "20", "fraud": True},
    }
    assert [(r["line"], r["field"]) for r in rejects[1:]] == [(4, "amount"), (5, "amount"), (6, "amount")]
    assert rejects[1]["error"] == "missing value"  # NaN
    assert "must be > 0" in rejects[2]["error"]  # 1e-7 rounds to 0 minor units
    assert "<= 1000000000000 - at `$.amount_minor`" in rejects[3]["error"]  # the schema's own bound


BAD_CSV = """\
tx,time,card,merchant,amount,fraud,country,note
t1,2026-01-05T10:00:00Z,c1,m1,10.00,0,DE,"a note
over

three lines"
t2,2026-01-05T10:01:00Z,c1,,10.00,0,DE,missing merchant
t3,yesterday,c1,m1,10.00,0,DE,bad time
t4,2026-01-05T10:03:00Z,c1,m1,-5,0,DE,refund
t5,2026-01-05T10:04:00Z,c1,m1,10.00,0,Germany,bad country

t6,2026-01-05T10:05:00Z,c1,m1,10.00,maybe,DE,bad label
t1,2026-01-05T10:06:00Z,c2,m2,10.00,0,DE,duplicate id
t7,2026-01-05 10:07:00,c1,m1,10.00,0,DE,no offset
t8,2026-01-05T10:08:00Z,c1,m1,10.00,0,DE
t9,1767607680000,c1,m1,1e1,1,DE,epoch in ms
t10,1767607680,c1,m1,abc,1,DE,amount not a number
t11,1767607680,c1,m1,7.5,1,DE,good epoch seconds
"""
BAD_MAP = "transaction_id=tx,time=time,card=card,merchant=merchant,amount=amount,label=fraud,country=country"


def test_bad_rows_are_reported_with_their_physical_line_and_field(tmp_path):
    out, report = _import(tmp_path, BAD_CSV, BAD_MAP, max_bad_fraction=1.0)
    rejects = _rejects(out)

    # The header is line 1; t1's note spans lines 2-5 (a blank line inside quotes); line 10 is blank.
    assert [(r["line"], r["field"]) for r in rejects] == [
        (6, "merchant"),
        (7, "time"),
        (8, "amount"),
        (9, "country"),
        (11, "label"),
        (12, "transaction_id"),
        (13, "time"),
        (14, "record"),
        (15, "time"),
        (16, "amount"),
    ]
    by_line = {r["line"]: r for r in rejects}
    assert by_line[6]["error"] == "missing value" and by_line[6]["column"] == "merchant"
    assert "'yesterday' is not an ISO 8601 time" in by_line[7]["error"]
    assert "must be > 0" in by_line[8]["error"]
    assert "'GERMANY'" in by_line[9]["error"] and "$.country" in by_line[9]["error"]  # the schema's own check
    assert "first seen at line 2" in by_line[12]["error"]
    assert "no UTC offset" in by_line[13]["error"]
    assert "expected 8 fields" in by_line[14]["error"] and by_line[14]["column"] is None
    assert "epoch_ms" in by_line[15]["error"]  # a millisecond value read as seconds is caught, with a hint
    assert by_line[8]["row"] == {
        "tx": "t4",
        "time": "2026-01-05T10:03:00Z",
        "card": "c1",
        "merchant": "m1",
        "amount": "-5",
        "fraud": "0",
        "country": "DE",
        "note": "refund",
    }
    # Nothing silently dropped: every record is either imported or rejected.
    sim = read_simulation(out)
    assert report.rows == 12 and report.accepted + report.rejected == report.rows
    assert [t.transaction_id for t in sim.transactions] == ["t1", "t11"]  # t11 in epoch seconds: 10:08
    assert report.rejects_by_field["time"] == 3 and len(report.first_rejects) == 10


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("major", "12.345", 1234),  # half to even
        ("major", "12.355", 1236),
        ("major", " 1e2 ", 10000),
        ("minor", "1234", 1234),
        ("minor", "1234.0", 1234),
        ("minor", "12.5", None),
        ("major", "0.004", None),  # rounds to 0 minor units: not a payment
        ("major", '"1,234.56"', None),  # quoted: a thousands separator, not a field separator
    ],
)
def test_amount_units(tmp_path, unit, value, expected):
    text = f"t,c,m,a\n2026-01-05T10:00:00Z,c,m,{value}\n"
    out, report = _import(tmp_path, text, "time=t,card=c,merchant=m,amount=a", amount_unit=unit, max_bad_fraction=1)
    if expected is None:
        assert [(r["line"], r["field"]) for r in _rejects(out)] == [(2, "amount")]
    else:
        assert read_simulation(out).transactions[0].amount_minor == expected


def test_epoch_milliseconds_when_asked(tmp_path):
    out, _ = _import(
        tmp_path, "t,c,m,a\n1767607680123,c,m,1\n", "time=t,card=c,merchant=m,amount=a", time_format="epoch_ms"
    )
    assert read_simulation(out).transactions[0].event_time == datetime(2026, 1, 5, 10, 8, 0, 123000, tzinfo=UTC)


def test_without_a_label_column_no_labels_and_no_truth_are_claimed(tmp_path):
    out, report = _import(
        tmp_path,
        HANDBOOK_CSV,
        "time=TX_DATETIME,card=CUSTOMER_ID,merchant=TERMINAL_ID,amount=TX_AMOUNT",
        assume_tz="UTC",
    )
    sim = read_simulation(out)
    assert len(sim.transactions) == 4 and sim.labels == [] and sim.truth == []
    assert report.summary()["fraud"] is None


def test_a_missing_column_is_an_immediate_error_naming_it(tmp_path):
    with pytest.raises(MappingError) as err:
        _import(tmp_path, HANDBOOK_CSV, HANDBOOK_MAP.replace("TX_AMOUNT", "TX_AMNT"))
    message = str(err.value)
    assert "'TX_AMNT' (mapped to amount)" in message and "did you mean 'TX_AMOUNT'" in message
    assert "available columns: TRANSACTION_ID, TX_DATETIME" in message
    assert not (tmp_path / "out").exists()  # nothing read, nothing written


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("time=a,card=b,merchant=c,amount=d,colour=e", "unknown target 'colour'; valid targets: time, card"),
        ("time=a,card=b,amount=d", "required target(s) missing: merchant"),
        ("time=a,card=b,merchant=c,amount", "'amount' is not target=COLUMN"),
        ("time=a,time=b,card=b,merchant=c,amount=d", "target 'time' given twice"),
    ],
)
def test_mapping_mistakes_are_explained(text, complaint):
    with pytest.raises(MappingError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        ImportMapping.parse(text)


def test_a_file_in_another_encoding_or_format_is_an_error_saying_so(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes("t,c,m,a\n2026-01-05T10:00:00Z,Müller,m,1\n".encode("latin-1"))
    mapping = ImportMapping.parse("time=t,card=c,merchant=m,amount=a")
    with pytest.raises(MappingError, match="not utf-8-sig text near line .*--encoding latin-1"):
        import_transactions(source, tmp_path / "out", mapping)
    import_transactions(source, tmp_path / "out", mapping, ImportOptions(encoding="latin-1"))
    assert read_simulation(tmp_path / "out").transactions[0].card_id == "Müller"

    fake = tmp_path / "in.parquet"
    fake.write_text("t,c,m,a\n")
    with pytest.raises(MappingError, match="not a readable Parquet file"):
        import_transactions(fake, tmp_path / "out", mapping)
    with pytest.raises(MappingError, match="cannot tell the format"):
        import_transactions(tmp_path / "in.xlsx", tmp_path / "out", mapping)


def test_too_many_bad_rows_writes_the_rejects_and_leaves_the_events_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "transactions.jsonl").write_text("earlier import\n")
    with pytest.raises(TooManyRejects, match="10 of 12 rows rejected") as err:
        _import(tmp_path, BAD_CSV, BAD_MAP, max_bad_fraction=0.5)
    assert err.value.report.rejected == len(_rejects(out)) == 10
    assert (out / "transactions.jsonl").read_text() == "earlier import\n"
    assert not (out / "labels.jsonl").exists()


def test_imported_data_feeds_the_offline_feature_builder(tmp_path):
    out, _ = _import(tmp_path, HANDBOOK_CSV, HANDBOOK_MAP, assume_tz="UTC")
    sim = read_simulation(out)
    ordered, matrix = feature_matrix(sim.transactions, sim.labels)
    assert matrix.shape == (4, len(MODEL_FEATURES))
    col = {name: i for i, name in enumerate(MODEL_FEATURES)}
    assert [t.transaction_id for t in ordered] == ["0", "2", "1", "3"]
    assert matrix[1, col["card_txn_count_1h"]] == 2  # card 596's second payment within the hour
    assert matrix[0, col["merchant_category_code"]] == -1  # "other" is an unknown category, not an error


def test_cli_imports_and_fails_over_the_bad_fraction(tmp_path):
    runner = CliRunner()
    source = tmp_path / "handbook.csv"
    source.write_text(HANDBOOK_CSV)
    first, rest = HANDBOOK_MAP.split(",amount=")
    ok = runner.invoke(
        app,
        [
            "import",
            str(source),
            "--home",
            str(tmp_path),
            "--assume-tz",
            "UTC",
            "--map",
            first,
            "--map",
            "amount=" + rest,
        ],
        env={"COLUMNS": "200"},
    )
    assert ok.exit_code == 0, ok.output
    assert "'accepted': 4" in ok.output and "rows_per_s" in ok.output
    assert len(read_simulation(tmp_path / "data").transactions) == 4  # default output: HOME/data

    naive = runner.invoke(
        app, ["import", str(source), "--out", str(tmp_path / "x"), "--map", HANDBOOK_MAP], env={"COLUMNS": "200"}
    )
    assert naive.exit_code == 1
    assert "line 3: time (TX_DATETIME)" in naive.output and "--assume-tz UTC" in naive.output
    assert "4 of 4 rows rejected" in naive.output

    unknown = runner.invoke(app, ["import", str(source), "--map", "time=a,when=b"], env={"COLUMNS": "200"})
    assert unknown.exit_code == 2 and "unknown target 'when'" in unknown.output

    source.write_bytes(HANDBOOK_CSV.replace("plain", "café").encode("cp1252"))
    args = ["import", str(source), "--out", str(tmp_path / "y"), "--assume-tz", "UTC", "--map", HANDBOOK_MAP]
    assert runner.invoke(app, args, env={"COLUMNS": "200"}).exit_code == 2  # not UTF-8: said, not garbled
    assert runner.invoke(app, [*args, "--encoding", "cp1252"], env={"COLUMNS": "200"}).exit_code == 0
