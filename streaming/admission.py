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
    """Per card: the newest admitted event time and the ids admitted within the allowed lateness.

    ``recent_ids`` is in arrival order, and expires from its front: constant work per payment,
    amortised. A scan of every id on every payment (what a busy card needs when its oldest id
    expires with each new one) was 5% of the worker after a few minutes at 10,000/s. An id that
    arrived late within the lateness can outstay its horizon behind newer ones until it reaches
    the front, so a hit is a duplicate only if its time is still within the horizon.
    """

    newest_ts: float | None = None
    recent_ids: dict[str, float] = msgspec.field(default_factory=dict)


def admit(state: CardAdmission, txn: Transaction, allowed_lateness_s: float) -> Admission:
    """Decide on ``txn`` and, if admitted, remember it."""
    recent = state.recent_ids
    seen = recent.get(txn.transaction_id)
    horizon = state.newest_ts - allowed_lateness_s if state.newest_ts is not None else None
    if seen is not None and horizon is not None and seen >= horizon:
        return Admission.DUPLICATE
    ts = txn.event_ts
    if horizon is not None and ts < horizon:
        return Admission.LATE
    remember(state, txn.transaction_id, ts, allowed_lateness_s)
    return Admission.ADMITTED


def remember(state: CardAdmission, transaction_id: str, ts: float, allowed_lateness_s: float) -> None:
    """What admitting a transaction changes (also how a recovery log is replayed)."""
    recent = state.recent_ids
    recent.pop(transaction_id, None)  # an expired id not yet dropped goes to the back with its new time
    recent[transaction_id] = ts
    if state.newest_ts is None or ts > state.newest_ts:
        state.newest_ts = ts
        horizon = ts - allowed_lateness_s
        while recent[first := next(iter(recent))] < horizon:  # stops at ``ts`` at the latest
            del recent[first]


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
