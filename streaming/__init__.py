"""Streaming features: the feature declaration, windowed state, the online store, the offline
builder and the bytewax dataflow that keeps the store current.

Online and offline, features are computed by one function, ``batch_feature_matrix``, over packed
entity states (``pack_state``); ``feature_vector`` is its one-payment-at-a-time specification.

Bytewax is imported only by ``streaming.dataflow``, so the engine could be swapped in one place.
"""

from streaming.batch_features import batch_feature_matrix
from streaming.features import MODEL_FEATURES, WINDOWED_FEATURES, Aggregation, Window, WindowedFeature
from streaming.offline import OfflineFeatureBuilder, event_order, feature_matrix
from streaming.online import STORE_ERRORS, BatchFeatures, OnlineFeatureStore, connect_redis
from streaming.packed import pack_state
from streaming.windows import EntityState, apply_transaction, feature_vector

__all__ = [
    "MODEL_FEATURES",
    "WINDOWED_FEATURES",
    "Aggregation",
    "BatchFeatures",
    "EntityState",
    "OfflineFeatureBuilder",
    "OnlineFeatureStore",
    "STORE_ERRORS",
    "Window",
    "WindowedFeature",
    "apply_transaction",
    "batch_feature_matrix",
    "connect_redis",
    "event_order",
    "feature_matrix",
    "feature_vector",
    "pack_state",
]
