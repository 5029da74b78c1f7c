"""The offline feature builder: replays history through the online feature code.

For each transaction, in event-time order, the features are read from the entity states as they
stood *before* it (so nothing later can leak in) and then the transaction is applied. This is the
same sequence the decision path follows online: read the stored state, fold in the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from schema import FeatureVector, Transaction
from streaming.features import MODEL_FEATURES
from streaming.windows import LAYOUTS, EntityState, apply_transaction, feature_vector


def event_order(txn: Transaction) -> tuple[float, str]:
    """The one ordering of transactions used everywhere: event time, ties by id."""
    return (txn.event_ts, txn.transaction_id)


class OfflineFeatureBuilder:
    """Point-in-time feature replay over a transaction history."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], EntityState] = {}

    def features_then_apply(self, txn: Transaction) -> FeatureVector:
        """Features as of ``txn`` (history before it, plus itself), then record ``txn``."""
        before = {entity: self.states.get((entity, layout.key_of(txn))) for entity, layout in LAYOUTS.items()}
        vector = feature_vector(before, txn)
        for entity, layout in LAYOUTS.items():
            state = self.states.setdefault((entity, layout.key_of(txn)), EntityState())
            apply_transaction(state, layout, txn)
        return vector

    def replay(self, transactions: Iterable[Transaction]) -> dict[str, FeatureVector]:
        """Point-in-time features for every transaction, by transaction id."""
        return {t.transaction_id: self.features_then_apply(t) for t in sorted(transactions, key=event_order)}


def feature_matrix(transactions: Iterable[Transaction]) -> tuple[list[Transaction], np.ndarray]:
    """Replay history; returns the transactions in event order and their feature matrix."""
    ordered = sorted(transactions, key=event_order)
    builder = OfflineFeatureBuilder()
    matrix = np.empty((len(ordered), len(MODEL_FEATURES)), dtype=np.float32)
    for i, txn in enumerate(ordered):
        vector = builder.features_then_apply(txn)
        matrix[i] = [vector[name] for name in MODEL_FEATURES]
    return ordered, matrix
