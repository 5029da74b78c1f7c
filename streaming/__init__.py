"""Streaming features: the feature declaration, windowed state, the online store, the offline
builder and the bytewax dataflow that keeps the store current.

Bytewax is imported only by ``streaming.dataflow``, so the engine could be swapped in one place.
"""

from streaming.features import MODEL_FEATURES, WINDOWED_FEATURES, Aggregation, Window, WindowedFeature
from streaming.offline import OfflineFeatureBuilder, event_order, feature_matrix
from streaming.online import BatchFeatures, OnlineFeatureStore
from streaming.windows import EntityState, apply_transaction, feature_vector

__all__ = [
    "MODEL_FEATURES",
    "WINDOWED_FEATURES",
    "Aggregation",
    "BatchFeatures",
    "EntityState",
    "OfflineFeatureBuilder",
    "OnlineFeatureStore",
    "Window",
    "WindowedFeature",
    "apply_transaction",
    "event_order",
    "feature_matrix",
    "feature_vector",
]
