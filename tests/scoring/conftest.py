"""A small registered ONNX model shared by the scoring tests that need a real engine."""

import numpy as np
import pytest

from retrain import ModelRegistry
from retrain.train import TrainingConfig, fit, to_onnx
from streaming.features import MODEL_FEATURES


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
