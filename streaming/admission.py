"""Which transactions the feature stream admits: on time, and once.

Windows follow event time. Events arrive out of order (partitions, retries, a gateway that
batches), so each card keeps the newest event time it has admitted; an event more than the
allowed lateness behind it is *late*: it goes to `dead-letter` with reason ``late`` instead of
silently rewriting windows that the decision path has already read. Within the allowed lateness
an event is counted in the windows of its own event time, whatever order it arrives in.

The same record delivered twice (a producer retry, a rewind) is a *duplicate* and applied once:
each card remembers the ids it admitted within the allowed lateness; an older duplicate is late
by the rule above, so it cannot slip through either.

Admission is decided per card, and a card's events share one partition (they are keyed by card
id), so a replay of the log after a restart makes exactly the same decisions.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from schema import Transaction

DEFAULT_ALLOWED_LATENESS_S = 300.0


class Admission(StrEnum):
    ADMITTED = "admitted"
    LATE = "late"
    DUPLICATE = "duplicate"


class CardAdmission(msgspec.Struct, array_like=True, gc=False):
    """Per card: the newest admitted event time and the ids admitted within the allowed lateness."""

    newest_ts: float | None = None
    recent_ids: dict[str, float] = msgspec.field(default_factory=dict)
    # At most the earliest time in ``recent_ids``: until the horizon passes it no id can expire, so
    # a busy card's ids are not scanned on every payment (that scan made admission quadratic).
    oldest_recent_ts: float = 0.0


def admit(state: CardAdmission, txn: Transaction, allowed_lateness_s: float) -> Admission:
    """Decide on ``txn`` and, if admitted, remember it."""
    if txn.transaction_id in state.recent_ids:
        return Admission.DUPLICATE
    ts = txn.event_ts
    if state.newest_ts is not None and ts < state.newest_ts - allowed_lateness_s:
        return Admission.LATE
    state.recent_ids[txn.transaction_id] = ts
    state.oldest_recent_ts = min(state.oldest_recent_ts, ts)
    if state.newest_ts is None or ts > state.newest_ts:
        state.newest_ts = ts
        horizon = ts - allowed_lateness_s
        if state.oldest_recent_ts < horizon:
            for old in [i for i, at in state.recent_ids.items() if at < horizon]:
                del state.recent_ids[old]
            state.oldest_recent_ts = min(state.recent_ids.values())  # ``ts`` itself is always kept
    return Admission.ADMITTED


def late_reason(state: CardAdmission, txn: Transaction, allowed_lateness_s: float) -> str:
    behind = (state.newest_ts or txn.event_ts) - txn.event_ts
    return (
        f"late: event_time {txn.event_time.isoformat()} is {behind:.1f}s behind the newest event of card "
        f"{txn.card_id} (allowed lateness {allowed_lateness_s:.0f}s)"
    )


def admissions_in_arrival_order(
    transactions: list[Transaction], allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S
) -> list[Admission]:
    """The stream's verdict on each transaction when they arrive in the given order (offline replay)."""
    cards: dict[str, CardAdmission] = {}
    return [admit(cards.setdefault(t.card_id, CardAdmission()), t, allowed_lateness_s) for t in transactions]


def admitted_in_arrival_order(
    transactions: list[Transaction], allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S
) -> list[Transaction]:
    """The transactions the stream admits when they arrive in the given order."""
    verdicts = admissions_in_arrival_order(transactions, allowed_lateness_s)
    return [t for t, v in zip(transactions, verdicts, strict=True) if v is Admission.ADMITTED]
