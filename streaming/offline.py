"""The offline feature builder: replays history through the online feature code.

For each transaction, in event-time order, the features are read from the entity states as they
stood *before* it (so nothing later can leak in) and then the transaction is applied; each label
is applied at its ``known_at``, so it reaches no feature read before that moment. This is the same
sequence the decision path follows online: read the stored state, fold in the transaction.

The read is the decision path's own (``streaming.batch_features``), over each run of payments
between two labels: within a run, a payment sees the earlier admitted payments of the run exactly
as the decision path's batch does, so runs are a speed-up, not a different computation.

Transactions are given in the order they arrived (a log's order; for a file written in event
order that is the same) so that the stream's admission rule (``streaming.admission``: late and
duplicate events are not applied) picks exactly the events the online store holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from schema import FeatureVector, Label, Transaction
from streaming.admission import DEFAULT_ALLOWED_LATENESS_S, Admission, admissions_in_arrival_order
from streaming.batch_features import batch_feature_matrix
from streaming.features import MODEL_FEATURES
from streaming.packed import pack_state
from streaming.windows import LAYOUTS, EntityState, apply_label, apply_transaction, entity_keys

# Payments read in one batch at most. The in-batch fold costs pairs of payments on one entity, so a
# run through one busy merchant must not grow without bound.
RUN_LENGTH = 256


def event_order(txn: Transaction) -> tuple[float, str]:
    """The one ordering of transactions used everywhere: event time, ties by id."""
    return (txn.event_ts, txn.transaction_id)


def in_event_order(transactions: Sequence[Transaction], event_ts: Sequence[float]) -> list[int]:
    """The indices of ``transactions`` sorted by ``event_order``, given their ``event_ts`` already
    converted (the conversion is what the sort would otherwise pay once per payment)."""
    return sorted(range(len(transactions)), key=lambda i: (event_ts[i], transactions[i].transaction_id))


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
        return dict(zip(MODEL_FEATURES, self._read([txn], [False])[0].tolist(), strict=True))

    def _read(self, transactions: Sequence[Transaction], folds: Sequence[bool]) -> np.ndarray:
        packed = {key: pack_state(self.states[key]) for key in entity_keys(transactions) if key in self.states}
        return batch_feature_matrix(transactions, packed, folds)

    def apply(self, txn: Transaction) -> None:
        ts = txn.event_ts
        for entity, layout in LAYOUTS.items():
            apply_transaction(self.states.setdefault((entity, layout.key_of(txn)), EntityState()), layout, txn, ts)

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
        rows = self.replay_rows(transactions, labels, allowed_lateness_s)
        return {tx: dict(zip(MODEL_FEATURES, row.tolist(), strict=True)) for tx, row in rows.items()}

    def replay_rows(
        self,
        transactions: Sequence[Transaction],
        labels: Iterable[Label] = (),
        allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """As ``replay``, each transaction's features as a row in ``MODEL_FEATURES`` order.
        ``progress(done, total)`` is called after each run of payments (long replays)."""
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
        rows: dict[str, np.ndarray] = {}
        run: list[tuple[Transaction, bool]] = []

        def read_run() -> None:
            matrix = self._read([t for t, _ in run], [admitted for _, admitted in run])
            for (t, admitted), row in zip(run, matrix, strict=True):
                rows.setdefault(t.transaction_id, row)  # a duplicate keeps the first one's features
                if admitted:
                    self.apply(t)
            run.clear()
            if progress is not None:
                progress(len(rows), len(transactions))

        for _, _, _, index, item in timeline:
            if isinstance(item, Label):
                if run:
                    read_run()
                self.apply_label(item, by_id.get(item.transaction_id))
                continue
            run.append((item, verdicts[index] is Admission.ADMITTED))
            if len(run) == RUN_LENGTH:
                read_run()
        if run:
            read_run()
        return rows


def feature_matrix(
    transactions: Iterable[Transaction],
    labels: Iterable[Label] = (),
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Transaction], np.ndarray]:
    """Replay history; returns the transactions in event order and their feature matrix."""
    transactions = list(transactions)
    rows = OfflineFeatureBuilder().replay_rows(transactions, labels, progress=progress)
    ordered = sorted({t.transaction_id: t for t in transactions}.values(), key=event_order)
    matrix = np.array([rows[t.transaction_id] for t in ordered], dtype=np.float32)
    return ordered, matrix.reshape(len(ordered), len(MODEL_FEATURES))
