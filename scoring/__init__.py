"""The scorer: rules + online features + ONNX model + thresholds behind gRPC."""

from scoring.client import ScorerClient
from scoring.engine import DecisionEngine, FallbackPolicy
from scoring.metrics import ScorerMetrics
from scoring.publisher import DecisionPublisher
from scoring.server import FraudScorerService, ServerConfig, serve

__all__ = [
    "DecisionEngine",
    "DecisionPublisher",
    "FallbackPolicy",
    "FraudScorerService",
    "ScorerClient",
    "ScorerMetrics",
    "ServerConfig",
    "serve",
]
