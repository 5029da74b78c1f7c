"""FeatureRow: the scorer's decisions carry their features as a struct built from the batch's
matrix row; it must read like the dict it replaced and put the same bytes on the wire."""

from datetime import UTC, datetime

import numpy as np
import pytest

from schema import Decision, Outcome, decode_decision, encode
from streaming.features import MODEL_FEATURES, FeatureRow
from tests.factories import txn


def _row() -> tuple[FeatureRow, dict[str, float]]:
    values = np.random.default_rng(7).random(len(MODEL_FEATURES)) * 1000.0
    values[: len(values) // 2] = np.floor(values[: len(values) // 2])  # counts are whole numbers
    as_list = values.tolist()
    return FeatureRow(*as_list), dict(zip(MODEL_FEATURES, as_list, strict=True))


def test_a_row_reads_as_the_mapping_of_its_features():
    row, as_dict = _row()
    assert list(row) == list(MODEL_FEATURES) == list(row.keys())
    assert len(row) == len(MODEL_FEATURES)
    assert row == as_dict and as_dict == row and dict(row) == as_dict and dict(row.items()) == as_dict
    assert all(row[name] == as_dict[name] for name in MODEL_FEATURES)
    assert "amount" in row and "no_such_feature" not in row
    assert row.get("no_such_feature", -1.0) == -1.0
    with pytest.raises(KeyError):
        row["no_such_feature"]
    with pytest.raises(KeyError):
        row["keys"]  # a method's name is not a feature
    assert row != {**as_dict, "amount": as_dict["amount"] + 1.0}
    assert row != {name: as_dict[name] for name in MODEL_FEATURES[:-1]}


def test_a_decision_with_a_row_encodes_to_the_bytes_of_one_with_a_dict_and_decodes_to_the_dict():
    row, as_dict = _row()
    common = dict(
        transaction=txn(),
        outcome=Outcome.FLAG,
        score=0.7,
        model_version="xgb-0001",
        rule_hits=[],
        decided_at=datetime(2026, 11, 27, 12, tzinfo=UTC),
    )
    with_row, with_dict = Decision(features=row, **common), Decision(features=as_dict, **common)
    assert encode(with_row) == encode(with_dict)
    decoded = decode_decision(encode(with_row))
    assert type(decoded.features) is dict and decoded.features == as_dict
    assert list(decoded.features) == list(MODEL_FEATURES)  # the declaration's order on the wire
