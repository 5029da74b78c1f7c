"""Small registered ONNX models shared by the scoring tests that need a real engine."""

import numpy as np
import pytest

from retrain import ModelRegistry
from retrain.train import TrainingConfig, fit, to_onnx
from streaming.features import MODEL_FEATURES
from tests.factories import register_tiny_model, set_model_thresholds


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, len(MODEL_FEATURES))).astype(np.float32)
    y = (x[:, 0] > 1.5).astype(np.int8)
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    version = registry.register(
        to_onnx(fit(x, y, TrainingConfig(n_estimators=20)), len(MODEL_FEATURES)),
        {"feature_names": list(MODEL_FEATURES)},
    )
    registry.promote(version, {"reason": "test"})
    return registry.load()


@pytest.fixture
def registry(tmp_path):
    """Two models with opposite tastes, so the one that decided shows in the outcome: the quiet
    champion never flags, the eager one flags every payment (thresholds in their metadata)."""
    quiet = register_tiny_model(tmp_path, lambda x: x[:, 0] > 1.0)
    eager = register_tiny_model(tmp_path, lambda x: x[:, 1] > 1.0)
    set_model_thresholds(tmp_path, quiet, 1.0, 1.0)  # never flags on score
    set_model_thresholds(tmp_path, eager, 0.0, 1.0)  # flags every payment
    registry = ModelRegistry(tmp_path)
    registry.rollback("the quiet model is the champion")
    return registry, quiet, eager
