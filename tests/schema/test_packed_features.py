"""Packed features: the scorer's decisions carry their features as float64s under a feature-set
id (schema.features). They must read like the dict they replace, survive the wire exactly, and a
vector this reader cannot place must be refused by name, never misread."""

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from schema import (
    Decision,
    InvalidEvent,
    Outcome,
    PackedFeatures,
    decode_decision,
    encode,
    read_jsonl,
    register_feature_set,
    write_jsonl,
)
from streaming.features import MODEL_FEATURE_SET, MODEL_FEATURES
from tests.factories import txn


def _rows(n: int = 3) -> tuple[list[PackedFeatures], list[dict[str, float]]]:
    matrix = np.random.default_rng(7).random((n, len(MODEL_FEATURES))) * 1000.0
    matrix[:, : len(MODEL_FEATURES) // 2] = np.floor(matrix[:, : len(MODEL_FEATURES) // 2])  # counts
    matrix[0, 1] = 0.1 + 0.2  # a value whose shortest decimal is long: kept to the last bit
    dicts = [dict(zip(MODEL_FEATURES, row, strict=True)) for row in matrix.tolist()]
    return PackedFeatures.rows(MODEL_FEATURE_SET, matrix), dicts


def _decision(features) -> Decision:
    return Decision(
        transaction=txn(),
        outcome=Outcome.FLAG,
        score=0.7,
        model_version="xgb-0001",
        rule_hits=[],
        features=features,
        decided_at=datetime(2026, 11, 28, 12, tzinfo=UTC),
    )


def test_each_row_reads_as_the_mapping_of_its_own_features():
    rows, dicts = _rows()
    for row, as_dict in zip(rows, dicts, strict=True):
        assert list(row) == list(MODEL_FEATURES) == list(row.keys())
        assert len(row) == len(MODEL_FEATURES)
        assert row == as_dict and as_dict == row and dict(row) == as_dict
        assert all(row[name] == as_dict[name] for name in MODEL_FEATURES)
        assert "amount" in row and "no_such_feature" not in row
        assert row.get("no_such_feature", -1.0) == -1.0
        with pytest.raises(KeyError):
            row["no_such_feature"]
        assert row != {**as_dict, "amount": as_dict["amount"] + 1.0}
    assert rows[0] != rows[1]


def test_a_packed_decision_is_smaller_on_the_wire_and_decodes_to_the_same_values_bit_for_bit():
    rows, dicts = _rows()
    packed, named = encode(_decision(rows[0])), encode(_decision(dicts[0]))
    assert len(packed) < len(named) / 2 + 200
    assert json.loads(packed)["features"].startswith(MODEL_FEATURE_SET.id + ":")
    decoded = decode_decision(packed)
    assert isinstance(decoded.features, PackedFeatures)
    assert decoded.features == dicts[0] and list(decoded.features) == list(MODEL_FEATURES)
    assert decoded.features["amount"] == dicts[0]["amount"]
    assert decoded.features[MODEL_FEATURES[1]] == 0.1 + 0.2
    assert decoded == decode_decision(encode(decoded))


def test_a_decision_written_with_names_still_decodes_as_a_dict():
    _, dicts = _rows()
    decoded = decode_decision(encode(_decision(dicts[0])))
    assert type(decoded.features) is dict and decoded.features == dicts[0]
    raw = json.loads(encode(_decision({"amount": 3.0})))
    raw["features"] = {"amount": 3}  # a whole number written without a point is still a value
    assert decode_decision(json.dumps(raw)).features == {"amount": 3.0}


@pytest.mark.parametrize(
    ("features", "says"),
    [
        ("fs-000000000000:AAAAAAAAAAA=", "unknown feature set 'fs-000000000000'"),
        (f"{MODEL_FEATURE_SET.id}:AAAAAAAAAAA=", "got 8 bytes"),
        (f"{MODEL_FEATURE_SET.id}:not base64!", "not base64"),
        ("just text", "expected a mapping of feature values"),
        ({"amount": "12"}, "feature 'amount': expected a number"),
        ([1.0, 2.0], "expected a mapping of feature values or a packed vector"),
    ],
)
def test_features_this_reader_cannot_place_are_refused_naming_the_field(features, says):
    raw = json.loads(encode(_decision({"amount": 3.0})))
    raw["features"] = features
    with pytest.raises(InvalidEvent) as refused:
        decode_decision(json.dumps(raw))
    assert says in str(refused.value) and "$.features" in str(refused.value)


def test_the_set_id_follows_the_names_and_their_order():
    names = ("amount", "card_count_1h")
    assert register_feature_set(names).id == register_feature_set(list(names)).id
    assert register_feature_set(names).id != register_feature_set(names[::-1]).id
    assert register_feature_set(names).id != MODEL_FEATURE_SET.id


def test_packed_decisions_round_trip_through_a_jsonl_file(tmp_path):
    rows, dicts = _rows()
    assert write_jsonl(tmp_path / "d.jsonl", [_decision(r) for r in rows]) == len(rows)
    back = [d.features for d in read_jsonl(tmp_path / "d.jsonl", Decision)]
    assert back == dicts
