"""History replayed once, for everything that decides it again offline.

A backtest, a teaching scenario and an off-policy estimate all need each payment's point-in-time
features, the ones the online store would have served at that moment. Computing them is the slow
part (``streaming.feature_matrix``, the online feature code run offline); deciding is cheap. So a
history is replayed once and every policy is decided over the same rows through the production
``scoring.DecisionEngine``, with ``ReplayedFeatures`` standing in for Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from schema import GroundTruth, Label, Transaction
from streaming import BatchFeatures, feature_matrix

DAY_S = 86400.0
Progress = Callable[[int, int], None]


class ReplayedFeatures:
    """The online store's stand-in: each payment's point-in-time features from one replay."""

    def __init__(self, ordered: Sequence[Transaction], matrix: np.ndarray) -> None:
        self.row = {t.transaction_id: i for i, t in enumerate(ordered)}
        self.matrix = matrix

    def features_for_batch(self, transactions: Sequence[Transaction]) -> BatchFeatures:
        rows = [self.row[t.transaction_id] for t in transactions]
        return BatchFeatures(self.matrix[rows].astype(np.float64), stream_watermark=None)


@dataclass(frozen=True)
class ReplayedHistory:
    """A transaction log with its point-in-time features (rows align with ``ordered``), the label
    log, and the ground truth when the log is simulated (None otherwise)."""

    ordered: list[Transaction]
    matrix: np.ndarray
    labels: list[Label]
    truth: dict[str, GroundTruth] | None = None

    @classmethod
    def replay(
        cls,
        transactions: Sequence[Transaction],
        labels: Sequence[Label],
        truth: Sequence[GroundTruth] = (),
        until: datetime | None = None,
        progress: Progress | None = None,
    ) -> ReplayedHistory:
        """Replay the payments before ``until`` (all if None). Features are point in time, so
        the payments after ``until`` cannot change those before it: leaving them out saves their
        replay. Only labels known before ``until`` can move a feature; all are kept for verdicts."""
        kept = [t for t in transactions if until is None or t.event_time < until]
        known = [lb for lb in labels if until is None or lb.known_at < until]
        ordered, matrix = feature_matrix(kept, known, progress=progress)
        return cls(ordered, matrix, list(labels), {g.transaction_id: g for g in truth} or None)

    def day_index(self) -> np.ndarray:
        """Each payment's day: whole days since the UTC midnight before the first payment."""
        ts = np.array([t.event_ts for t in self.ordered], dtype=np.float64)
        if len(ts) == 0:
            return np.zeros(0, dtype=np.int64)
        origin = np.floor(ts[0] / DAY_S) * DAY_S
        return ((ts - origin) // DAY_S).astype(np.int64)
