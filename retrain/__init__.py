"""Training and retraining: point-in-time training sets, XGBoost -> ONNX with a parity check,
champion/challenger comparison on a later time slice, and the model registry."""

from retrain.dataset import TrainingSet, build_training_set, labelled_as_of
from retrain.evaluate import fraud_metrics
from retrain.pipeline import NotEnoughData, RetrainPolicy, RetrainResult, retrain, retrain_on
from retrain.registry import ModelLoadError, ModelRegistry, RegisteredModel
from retrain.train import OnnxParityError, TrainingConfig, check_parity

__all__ = [
    "ModelLoadError",
    "ModelRegistry",
    "NotEnoughData",
    "OnnxParityError",
    "RegisteredModel",
    "RetrainPolicy",
    "RetrainResult",
    "TrainingConfig",
    "TrainingSet",
    "build_training_set",
    "check_parity",
    "fraud_metrics",
    "labelled_as_of",
    "retrain",
    "retrain_on",
]
