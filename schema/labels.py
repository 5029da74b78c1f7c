"""How several labels for one transaction resolve to one truth, defined once for every reader.

Rule: an issuer chargeback is confirmed fraud and overrides any review verdict; otherwise the
most recent review label wins (a reviewer correcting themselves, or a senior overruling).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from schema.types import Label, LabelSource


def resolve_labels(labels: Iterable[Label], known_at: datetime | None = None) -> dict[str, bool]:
    """One verdict per transaction id from the labels known at ``known_at`` (all if None)."""
    best: dict[str, Label] = {}
    for label in labels:
        if known_at is not None and label.known_at > known_at:
            continue
        current = best.get(label.transaction_id)
        if current is None or _outranks(label, current):
            best[label.transaction_id] = label
    return {tx: label.is_fraud for tx, label in best.items()}


def _outranks(new: Label, old: Label) -> bool:
    new_cb, old_cb = new.source is LabelSource.CHARGEBACK, old.source is LabelSource.CHARGEBACK
    if new_cb != old_cb:
        return new_cb
    return new.known_at >= old.known_at
