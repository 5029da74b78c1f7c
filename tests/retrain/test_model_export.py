"""XGBoost -> ONNX export, the parity check, and the registry's refusal of models that must not serve."""

import json

import numpy as np
import pytest

from retrain import ModelLoadError, ModelRegistry, OnnxParityError, TrainingConfig, check_parity
from retrain.evaluate import average_precision, recall_at_fpr
from retrain.train import fit, to_onnx
from streaming.features import MODEL_FEATURES

N_FEATURES = len(MODEL_FEATURES)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, N_FEATURES)).astype(np.float32)
    y = ((x[:, 0] + 0.5 * x[:, 5] + rng.normal(scale=0.5, size=3000)) > 2.0).astype(np.int8)
    model = fit(x, y, TrainingConfig(n_estimators=40, max_depth=4))
    return model, to_onnx(model, N_FEATURES), x


def test_onnxruntime_reproduces_xgboost_probabilities(trained):
    model, onnx_bytes, x = trained
    assert check_parity(model, onnx_bytes, x, tolerance=1e-4) < 1e-4


def test_parity_check_catches_a_wrong_export(trained):
    model, _, x = trained
    y_other = (x[:, 1] > 0).astype(np.int8)
    other_onnx = to_onnx(fit(x, y_other, TrainingConfig(n_estimators=10)), N_FEATURES)
    with pytest.raises(OnnxParityError, match="differs"):
        check_parity(model, other_onnx, x, tolerance=1e-4)


def test_registry_serves_the_promoted_version(tmp_path, trained):
    model, onnx_bytes, x = trained
    registry = ModelRegistry(tmp_path)
    version = registry.register(onnx_bytes, {"feature_names": list(MODEL_FEATURES)})
    assert registry.champion() is None
    registry.promote(version, {"reason": "test"})
    loaded = registry.load()
    assert loaded.version == version == "xgb-0001"
    np.testing.assert_allclose(loaded.predict_proba(x[:50]), model.predict_proba(x[:50])[:, 1], atol=1e-4)
    assert registry.history()[-1]["version"] == version


def test_registry_refuses_a_model_built_for_other_features(tmp_path, trained):
    _, onnx_bytes, _ = trained
    registry = ModelRegistry(tmp_path)
    version = registry.register(onnx_bytes, {"feature_names": list(reversed(MODEL_FEATURES))})
    with pytest.raises(ModelLoadError, match="trained on features"):
        registry.load(version)


def test_registry_refuses_a_corrupt_model(tmp_path, trained):
    _, onnx_bytes, _ = trained
    registry = ModelRegistry(tmp_path)
    version = registry.register(onnx_bytes, {"feature_names": list(MODEL_FEATURES)})
    (tmp_path / "models" / version / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="corrupt"):
        registry.load(version)
    meta = json.loads((tmp_path / "models" / version / "metadata.json").read_text())
    assert meta["version"] == version


def test_average_precision_and_recall_at_fpr():
    y = np.array([1, 0, 1, 0, 0, 0])
    perfect = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.05])
    assert average_precision(y, perfect) == pytest.approx(1.0)
    inverted = -perfect
    assert average_precision(y, inverted) < 0.5
    assert recall_at_fpr(y, perfect, 0.0) == 1.0


def test_native_model_path_only_for_versions_registered_with_their_xgboost_file(tmp_path, trained):
    import xgboost as xgb

    model, onnx_bytes, x = trained
    registry = ModelRegistry(tmp_path)
    without = registry.register(onnx_bytes, {"feature_names": list(MODEL_FEATURES)})
    with pytest.raises(ModelLoadError, match="no XGBoost file"):
        registry.native_model_path(without)
    with_native = registry.register(
        onnx_bytes, {"feature_names": list(MODEL_FEATURES)}, native_model=bytes(model.get_booster().save_raw("ubj"))
    )
    booster = xgb.Booster(model_file=str(registry.native_model_path(with_native)))
    np.testing.assert_allclose(booster.inplace_predict(x[:50]), model.predict_proba(x[:50])[:, 1], atol=1e-6)
