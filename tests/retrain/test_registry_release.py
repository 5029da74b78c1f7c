"""The registry's release records: lineage hashes, champion rollback, shadow and canary challengers."""

import json

import numpy as np
import pytest

from retrain import ModelLoadError, ModelRegistry
from retrain.registry import data_fingerprint, feature_list_hash, model_thresholds
from schema import DecisionThresholds
from streaming.features import MODEL_FEATURES
from tests.factories import register_tiny_model, txn


def _three_models(root):
    return [register_tiny_model(root, lambda x, i=i: x[:, i] > 1.0) for i in range(3)]


def test_rollback_walks_back_the_champion_stack_and_never_forward(tmp_path):
    v1, v2, v3 = _three_models(tmp_path)
    registry = ModelRegistry(tmp_path)
    assert registry.champion() == v3
    assert registry.rollback("bad release") == v2
    assert registry.rollback("still bad") == v1
    with pytest.raises(ModelLoadError, match="nothing to roll back"):
        registry.rollback("again")
    events = [(e["event"], e["version"]) for e in registry.history()]
    assert events[-2:] == [("rollback", v2), ("rollback", v1)]


def test_challenger_lifecycle_is_recorded_and_promotion_ends_it(tmp_path):
    v1, v2, _ = _three_models(tmp_path)
    registry = ModelRegistry(tmp_path)
    registry.rollback("make v2 champion")
    before = registry.release_stamp()
    registry.start_challenger(v1, "canary", share=0.1, guard={"min_decisions": 100})
    assert registry.challenger()["share"] == 0.1 and registry.release_stamp() != before
    registry.promote(v1, {"reason": "canary held"})
    assert registry.champion() == v1 and registry.challenger() is None
    assert [e["event"] for e in registry.history()][-2:] == ["start_canary", "promote"]


@pytest.mark.parametrize(
    ("mode", "share", "message"),
    [("canary", 0.0, "share"), ("canary", 1.0, "share"), ("blue-green", 0.5, "mode")],
)
def test_a_challenger_with_an_impossible_release_is_refused(tmp_path, mode, share, message):
    v1, _, _ = _three_models(tmp_path)
    with pytest.raises(ValueError, match=message):
        ModelRegistry(tmp_path).start_challenger(v1, mode, share=share)


def test_a_challenger_that_cannot_serve_is_refused_before_it_reaches_any_scorer(tmp_path):
    v1, _, _ = _three_models(tmp_path)
    registry = ModelRegistry(tmp_path)
    (tmp_path / "models" / v1 / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="corrupt"):
        registry.start_challenger(v1, "shadow")
    assert registry.challenger() is None


def test_a_model_whose_feature_hash_disagrees_is_refused(tmp_path):
    (v1,) = [register_tiny_model(tmp_path, lambda x: x[:, 0] > 1.0)]
    meta_path = tmp_path / "models" / v1 / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["feature_list_hash"] = feature_list_hash(MODEL_FEATURES)
    meta_path.write_text(json.dumps(meta))
    assert ModelRegistry(tmp_path).load(v1).version == v1
    meta["feature_list_hash"] = "0" * 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="feature list hash"):
        ModelRegistry(tmp_path).load(v1)


def test_fingerprints_change_with_the_data_and_the_order_of_features():
    rows = [txn(i, minutes=i) for i in range(5)]
    labels = np.array([0, 1, 0, 0, 0])
    assert data_fingerprint(rows, labels) == data_fingerprint(list(rows), labels.copy())
    assert data_fingerprint(rows, labels) != data_fingerprint(rows, np.array([0, 0, 0, 0, 1]))
    assert data_fingerprint(rows, labels) != data_fingerprint(rows[:4], labels[:4])
    assert feature_list_hash(["a", "b"]) != feature_list_hash(["b", "a"])


def test_served_thresholds_come_from_the_model_and_default_for_older_models():
    assert model_thresholds({"operating_point": {"flag": 0.31, "block": 0.77}}) == DecisionThresholds(
        flag=0.31, block=0.77
    )
    assert model_thresholds({}) == DecisionThresholds()
