"""Fit an XGBoost classifier, export it to ONNX, and prove onnxruntime reproduces it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import xgboost as xgb
from onnxmltools import convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

from retrain.registry import _session


class OnnxParityError(RuntimeError):
    """onnxruntime's probabilities differ from XGBoost's beyond tolerance: the export is wrong."""


@dataclass(frozen=True)
class TrainingConfig:
    n_estimators: int = 200
    max_depth: int = 5
    learning_rate: float = 0.1
    subsample: float = 0.9
    min_child_weight: float = 1.0
    seed: int = 7
    # Fraud is well under 1% of rows. Weighting positives by sqrt(negatives / positives) rather than
    # the full ratio keeps scores usable as probabilities for the thresholds while still stopping
    # the trees from ignoring the minority class.
    positive_weight: str = "sqrt_ratio"
    parity_tolerance: float = 1e-4

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def fit(features: np.ndarray, labels: np.ndarray, config: TrainingConfig) -> xgb.XGBClassifier:
    positives = max(int(labels.sum()), 1)
    negatives = max(len(labels) - positives, 1)
    weight = math.sqrt(negatives / positives) if config.positive_weight == "sqrt_ratio" else 1.0
    model = xgb.XGBClassifier(
        n_estimators=config.n_estimators,
        max_depth=config.max_depth,
        learning_rate=config.learning_rate,
        subsample=config.subsample,
        min_child_weight=config.min_child_weight,
        scale_pos_weight=weight,
        objective="binary:logistic",
        tree_method="hist",
        random_state=config.seed,
        n_jobs=2,
    )
    # Plain numpy, no column names: the ONNX converter rejects boosters with named features
    # (STACK-NOTES); the names live in the registry metadata instead.
    model.fit(features, labels)
    return model


def to_onnx(model: xgb.XGBClassifier, n_features: int) -> bytes:
    onnx_model = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, n_features]))], target_opset=15)
    return onnx_model.SerializeToString()


def check_parity(model: xgb.XGBClassifier, onnx_bytes: bytes, features: np.ndarray, tolerance: float) -> float:
    """Max |p_onnx - p_xgboost| over ``features``; raises OnnxParityError above ``tolerance``."""
    expected = model.predict_proba(features)[:, 1]
    got = _session(onnx_bytes).run(["probabilities"], {"input": features.astype(np.float32)})[0][:, 1]
    diff = float(np.max(np.abs(expected - got))) if len(features) else 0.0
    if not diff <= tolerance:
        raise OnnxParityError(f"ONNX export differs from XGBoost by {diff:.2e} (tolerance {tolerance:.0e})")
    return diff
