"""Training sets that are point-in-time correct twice over: features from the history before
each transaction (the offline builder), and labels only as they were known at the cut-off.

Unlabelled transactions count as legitimate: that is how a card issuer sees them (no chargeback
yet). Because that is wrong for recent fraud whose chargeback has not arrived, the newest
``label_maturity`` of history is left out of training and evaluation (the delay-aware split of
the Fraud Detection Handbook).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from schema import Label, Transaction, resolve_labels
from streaming import feature_matrix


@dataclass(frozen=True)
class TrainingSet:
    transactions: list[Transaction]  # in event order
    features: np.ndarray  # float32, rows aligned with transactions, columns MODEL_FEATURES
    labels: np.ndarray  # 1 = fraud known at the cut-off, 0 otherwise
    event_ts: np.ndarray

    def between(self, start: datetime | None, end: datetime) -> TrainingSet:
        """Rows with event time in ``(start, end]``."""
        lo = -np.inf if start is None else start.timestamp()
        mask = (self.event_ts > lo) & (self.event_ts <= end.timestamp())
        idx = np.flatnonzero(mask)
        return TrainingSet(
            [self.transactions[i] for i in idx], self.features[idx], self.labels[idx], self.event_ts[idx]
        )

    def __len__(self) -> int:
        return len(self.transactions)


def build_training_set(transactions: Iterable[Transaction], labels: Iterable[Label], as_of: datetime) -> TrainingSet:
    """Features and labels for every transaction up to ``as_of``, using only what was known then."""
    history = [t for t in transactions if t.event_time <= as_of]
    known = [lb for lb in labels if lb.known_at <= as_of]
    ordered, features = feature_matrix(history, known)  # label-rate features: each label from its known_at
    return labelled_as_of(ordered, features, known, as_of)


def labelled_as_of(
    ordered: list[Transaction], features: np.ndarray, labels: Iterable[Label], as_of: datetime
) -> TrainingSet:
    """The training set as of ``as_of`` from features already replayed over a longer history.

    Point-in-time features of a transaction depend only on what came before it, so one replay of
    a whole history serves every cut-off (a scenario retrains many times); only the labels and
    the rows after the cut-off must be cut here.

    Args:
        ordered: transactions in event order; ``features`` rows align with them.
        labels: the label log; only labels known at ``as_of`` count.
    """
    end = int(np.searchsorted([t.event_ts for t in ordered], as_of.timestamp(), side="right"))
    ordered, features = ordered[:end], features[:end]
    verdicts = resolve_labels(labels, known_at=as_of)
    y = np.fromiter((verdicts.get(t.transaction_id, False) for t in ordered), dtype=np.int8, count=len(ordered))
    ts = np.fromiter((t.event_ts for t in ordered), dtype=np.float64, count=len(ordered))
    return TrainingSet(ordered, features, y, ts)
