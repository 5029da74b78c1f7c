"""The scorer: rules + online features + ONNX model + thresholds behind gRPC."""

from scoring.client import ScorerClient, ScorerPool
from scoring.engine import DecisionEngine
from scoring.fallback import CircuitBreaker, FallbackPolicy
from scoring.metrics import ScorerMetrics
from scoring.publisher import DecisionPublisher
from scoring.server import FraudScorerService, ServerConfig, serve

__all__ = [
    "DecisionEngine",
    "DecisionPublisher",
    "CircuitBreaker",
    "FallbackPolicy",
    "FraudScorerService",
    "ScorerClient",
    "ScorerPool",
    "ScorerMetrics",
    "ServerConfig",
    "serve",
]
