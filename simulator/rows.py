"""Payments as numpy columns: the simulator's working form, turned into strings only when written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

DAY_MS = 86_400_000
NOT_REPORTED = -1  # known_at of a payment no chargeback will ever be filed for (legitimate or unreported)


@dataclass(frozen=True)
class Rows:
    """One column per field, all the same length.

    ``device``: a customer's device number (>= 0), or a fraudster's device ``k`` stored as ``-(k + 1)``.
    ``scenario``: 0 for a legitimate payment, else 1 + the index in ``simulator.schedule.SCENARIO_NAMES``.
    ``changes``: bit ``j`` set when change ``j`` of the drift schedule shaped the payment.
    ``known_at``: when the chargeback arrives (ms), or NOT_REPORTED.
    """

    ts: np.ndarray  # event time, Unix milliseconds
    customer: np.ndarray
    card: np.ndarray
    merchant: np.ndarray
    amount: np.ndarray  # minor units
    device: np.ndarray
    ecommerce: np.ndarray
    scenario: np.ndarray
    changes: np.ndarray
    known_at: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, index: np.ndarray) -> Rows:
        return Rows(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    @classmethod
    def empty(cls) -> Rows:
        return cls.build(*(np.zeros(0, dtype=np.int64) for _ in range(7)))

    @classmethod
    def build(
        cls,
        ts: np.ndarray,
        customer: np.ndarray,
        card: np.ndarray,
        merchant: np.ndarray,
        amount: np.ndarray,
        device: np.ndarray,
        ecommerce: np.ndarray,
        scenario: int = 0,
        changes: np.ndarray | int = 0,
        known_at: np.ndarray | int = NOT_REPORTED,
    ) -> Rows:
        n = len(ts)
        return cls(
            ts=np.asarray(ts, dtype=np.int64),
            customer=np.asarray(customer, dtype=np.int64),
            card=np.asarray(card, dtype=np.int64),
            merchant=np.asarray(merchant, dtype=np.int64),
            amount=np.asarray(amount, dtype=np.int64),
            device=np.asarray(device, dtype=np.int64),
            ecommerce=np.asarray(ecommerce, dtype=bool),
            scenario=np.full(n, scenario, dtype=np.int8),
            changes=np.broadcast_to(np.asarray(changes, dtype=np.int64), (n,)).copy(),
            known_at=np.broadcast_to(np.asarray(known_at, dtype=np.int64), (n,)).copy(),
        )

    def tagged(self, bits: int) -> Rows:
        """The same rows with ``bits`` added to every row's changes."""
        if not bits:
            return self
        return Rows(**{f.name: getattr(self, f.name) for f in fields(self)} | {"changes": self.changes | bits})

    def in_time_order(self) -> Rows:
        """Sorted by event time; ties by card, merchant, amount, then generation order (stable)."""
        return self.take(np.lexsort((self.amount, self.merchant, self.card, self.ts)))
