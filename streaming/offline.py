"""The offline feature builder: replays history through the online feature code.

For each transaction, in event-time order, the features are read from the entity states as they
stood *before* it (so nothing later can leak in) and then the transaction is applied; each label
is applied at its ``known_at``, so it reaches no feature read before that moment. This is the same
sequence the decision path follows online: read the stored state, fold in the transaction.

Transactions are given in the order they arrived (a log's order; for a file written in event
order that is the same) so that the stream's admission rule (``streaming.admission``: late and
duplicate events are not applied) picks exactly the events the online store holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from schema import FeatureVector, Label, Transaction
from streaming.admission import DEFAULT_ALLOWED_LATENESS_S, Admission, admissions_in_arrival_order
from streaming.features import MODEL_FEATURES
from streaming.windows import LAYOUTS, EntityState, apply_label, apply_transaction, feature_vector


def event_order(txn: Transaction) -> tuple[float, str]:
    """The one ordering of transactions used everywhere: event time, ties by id."""
    return (txn.event_ts, txn.transaction_id)


def label_entity_ids(label: Label, transaction: Transaction | None) -> dict[str, str]:
    """The entities a label updates: the labelled transaction's merchant (from the label or the log)."""
    merchant = label.merchant_id or (transaction.merchant_id if transaction is not None else None)
    return {"merchant": merchant} if merchant else {}


class OfflineFeatureBuilder:
    """Point-in-time feature replay over a transaction history and its label log."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], EntityState] = {}

    def features(self, txn: Transaction) -> FeatureVector:
        """Features as of ``txn``: the history before it, plus itself."""
        before = {entity: self.states.get((entity, layout.key_of(txn))) for entity, layout in LAYOUTS.items()}
        return feature_vector(before, txn)

    def apply(self, txn: Transaction) -> None:
        for entity, layout in LAYOUTS.items():
            apply_transaction(self.states.setdefault((entity, layout.key_of(txn)), EntityState()), layout, txn)

    def apply_label(self, label: Label, transaction: Transaction | None = None) -> None:
        for entity, entity_id in label_entity_ids(label, transaction).items():
            apply_label(self.states.setdefault((entity, entity_id), EntityState()), LAYOUTS[entity], label)

    def replay(
        self,
        transactions: Sequence[Transaction],
        labels: Iterable[Label] = (),
        allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S,
    ) -> dict[str, FeatureVector]:
        """Point-in-time features for every transaction, by transaction id.

        Args:
            transactions: in arrival order; every one gets features, the admitted ones are applied.
            labels: the label log; each label counts from its ``known_at`` on.
            allowed_lateness_s: the stream's admission setting.
        """
        transactions = list(transactions)
        verdicts = admissions_in_arrival_order(transactions, allowed_lateness_s)
        by_id = {t.transaction_id: t for t in transactions}
        # (time, kind, id, arrival index, event). Labels known at t go before transactions at t: a
        # label counts from its known_at on.
        timeline: list[tuple[float, int, str, int, Transaction | Label]] = [
            (lb.known_at.timestamp(), 0, lb.transaction_id, i, lb) for i, lb in enumerate(labels)
        ]
        timeline += [(t.event_ts, 1, t.transaction_id, i, t) for i, t in enumerate(transactions)]
        timeline.sort(key=lambda item: item[:4])
        vectors: dict[str, FeatureVector] = {}
        for _, _, _, index, item in timeline:
            if isinstance(item, Label):
                self.apply_label(item, by_id.get(item.transaction_id))
                continue
            vectors.setdefault(item.transaction_id, self.features(item))
            if verdicts[index] is Admission.ADMITTED:
                self.apply(item)
        return vectors


def feature_matrix(
    transactions: Iterable[Transaction], labels: Iterable[Label] = ()
) -> tuple[list[Transaction], np.ndarray]:
    """Replay history; returns the transactions in event order and their feature matrix."""
    transactions = list(transactions)
    vectors = OfflineFeatureBuilder().replay(transactions, labels)
    ordered = sorted({t.transaction_id: t for t in transactions}.values(), key=event_order)
    matrix = np.empty((len(ordered), len(MODEL_FEATURES)), dtype=np.float32)
    for i, txn in enumerate(ordered):
        vector = vectors[txn.transaction_id]
        matrix[i] = [vector[name] for name in MODEL_FEATURES]
    return ordered, matrix
