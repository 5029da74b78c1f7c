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
id), so a replay of the log after a restart makes exactly the same decisions. The stream and the
offline builder decide with the same ``AdmissionTable``.

The table is columnar: at 10,000/s and 300 s of allowed lateness it holds 3 million ids, and a
snapshot of them as Python objects (a dict of ids per card) took the flow ~130 ms per 300,000 ids
to encode, growing with the state (docs/features.md, section 7). Here the ids are 64-bit hashes in
arrays, decided by one compiled call per batch, and a snapshot is a few array copies. Two ids of
one card with equal hashes would make the second a duplicate: with 3 million ids held, about once
in 10^13 payments.
"""

from __future__ import annotations

import time
from enum import StrEnum

import numpy as np
from numba import njit

from schema import Transaction

DEFAULT_ALLOWED_LATENESS_S = 300.0


class Admission(StrEnum):
    ADMITTED = "admitted"
    LATE = "late"
    DUPLICATE = "duplicate"


VERDICTS = (Admission.ADMITTED, Admission.LATE, Admission.DUPLICATE)  # by the kernel's codes 0, 1, 2
_EMPTY = 0  # an unused entry's hash; an id whose hash is 0 is stored as 1
_INITIAL_ENTRIES = 1024  # a power of two


@njit(cache=True, nogil=True)
def _admit(slots, hashes, ts, lateness, newest, table_hash, table_slot, table_ts, room, verdicts):
    """Decide each payment in order, remembering the admitted; returns how many were decided
    (fewer than all once ``room`` new entries are used: the caller makes room and goes on) and how
    many entries that added."""
    mask = len(table_hash) - 1
    inserted = 0
    for i in range(len(slots)):
        slot, h = slots[i], hashes[i]
        horizon = newest[slot] - lateness  # -inf for a card with nothing admitted yet
        pos = h & mask
        found = -1
        while table_hash[pos] != _EMPTY:
            if table_hash[pos] == h and table_slot[pos] == slot:
                found = pos
                break
            pos = (pos + 1) & mask
        if found >= 0 and table_ts[found] >= horizon:
            verdicts[i] = 2
            continue
        if ts[i] < horizon:
            verdicts[i] = 1
            continue
        if found >= 0:  # admitted before, but so long ago that it has expired: remembered anew
            table_ts[found] = ts[i]
        else:
            if inserted == room:
                return i, inserted
            table_hash[pos], table_slot[pos], table_ts[pos] = h, slot, ts[i]
            inserted += 1
        newest[slot] = max(newest[slot], ts[i])
        verdicts[i] = 0
    return len(slots), inserted


@njit(cache=True, nogil=True)
def _insert_all(hashes, slots, ts, table_hash, table_slot, table_ts):
    mask = len(table_hash) - 1
    for i in range(len(hashes)):
        pos = hashes[i] & mask
        while table_hash[pos] != _EMPTY:
            pos = (pos + 1) & mask
        table_hash[pos], table_slot[pos], table_ts[pos] = hashes[i], slots[i], ts[i]


@njit(cache=True, nogil=True)
def _fnv1a(blob, ends, out):
    start = 0
    for i in range(len(ends)):
        h = np.uint64(14695981039346656037)
        for j in range(start, ends[i]):
            h = (h ^ np.uint64(blob[j])) * np.uint64(1099511628211)
        signed = np.int64(h)
        out[i] = signed if signed != _EMPTY else 1
        start = ends[i]


@njit(cache=True, nogil=True)
def _gather(table_hash, table_slot, table_ts, newest, lateness, hashes, slots, ts):
    """The entries of live cards (within their horizon), into the arrays given; returns how many."""
    n = 0
    for pos in range(len(table_hash)):
        if table_hash[pos] != _EMPTY:
            slot = table_slot[pos]
            if newest[slot] > -np.inf and table_ts[pos] >= newest[slot] - lateness:
                hashes[n], slots[n], ts[n] = table_hash[pos], slot, table_ts[pos]
                n += 1
    return n


def id_hashes(transaction_ids: list[str]) -> np.ndarray:
    """A stable 64-bit hash (FNV-1a of the UTF-8) of each id, never ``_EMPTY``: one compiled pass
    over the ids joined, ~0.1 µs an id. Not ``value_hash``: its cache would fill with ids seen once
    and lose the merchants and devices it is there for (blake2b on a miss: ~2.2 µs)."""
    blob = "".join(transaction_ids).encode()
    lengths = map(len, transaction_ids) if len(blob) == sum(map(len, transaction_ids)) else (
        len(i.encode()) for i in transaction_ids
    )  # fmt: skip
    ends = np.cumsum(np.fromiter(lengths, dtype=np.int64, count=len(transaction_ids)))
    out = np.empty(len(transaction_ids), dtype=np.int64)
    _fnv1a(np.frombuffer(blob, dtype=np.uint8), ends, out)
    return out


class AdmissionTable:
    """The admission state of many cards: per card slot its newest admitted event time, and an
    open-addressing table of (id hash, card slot, event time) for the ids admitted. An entry older
    than its card's horizon can never be a duplicate again (the horizon only advances): such
    entries are dropped whenever the table is rebuilt to make room."""

    def __init__(self) -> None:
        self.slot_of: dict[str, int] = {}
        self.cards: list[str | None] = []  # slot -> card id; None: a free slot
        self._free: list[int] = []
        self.newest = np.full(64, -np.inf)
        self.touched = np.zeros(64)  # wall clock of the last payment, for forget_idle
        self.table_hash = np.zeros(_INITIAL_ENTRIES, dtype=np.int64)
        self.table_slot = np.zeros(_INITIAL_ENTRIES, dtype=np.int64)
        self.table_ts = np.zeros(_INITIAL_ENTRIES)
        self.entries = 0

    def __len__(self) -> int:
        return len(self.slot_of)

    def admit_batch(
        self, card_ids: list[str], transaction_ids: list[str], event_ts: list[float], lateness_s: float, now: float
    ) -> list[Admission]:
        """The verdict on each payment, in order; the admitted are remembered."""
        slots = np.array([self._slot(card) for card in card_ids], dtype=np.int64)
        self.touched[slots] = now
        hashes = id_hashes(transaction_ids)
        ts = np.array(event_ts, dtype=np.float64)
        verdicts = np.empty(len(slots), dtype=np.int64)
        done = 0
        while done < len(slots):
            room = len(self.table_hash) // 2 - self.entries
            decided, inserted = _admit(
                slots[done:], hashes[done:], ts[done:], lateness_s, self.newest,
                self.table_hash, self.table_slot, self.table_ts, room, verdicts[done:],
            )  # fmt: skip
            self.entries += inserted
            done += decided
            if done < len(slots):
                self._rebuild(lateness_s)
        return [VERDICTS[v] for v in verdicts.tolist()]

    def newest_ts(self, card_id: str) -> float:
        return float(self.newest[self.slot_of[card_id]])

    def forget(self, card_ids: list[str]) -> None:
        slots = [self.slot_of.pop(card) for card in card_ids if card in self.slot_of]
        for slot in slots:
            self.cards[slot] = None
            self._free.append(slot)
        self.newest[slots] = -np.inf
        if slots:
            self._rebuild(None)  # their ids go with them: a slot is reused by another card

    def forget_idle(self, idle_ttl_s: float, now: float | None = None) -> list[str]:
        """Forget the cards without payments for ``idle_ttl_s`` (wall clock); returns them."""
        horizon = (now if now is not None else time.time()) - idle_ttl_s
        live = np.fromiter(self.slot_of.values(), dtype=np.int64, count=len(self.slot_of))
        idle = [self.cards[slot] for slot in live[self.touched[live] < horizon].tolist()]
        self.forget(idle)  # type: ignore[arg-type]
        return idle  # type: ignore[return-value]

    def live_entries(self, lateness_s: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hash, slot, event time) of the entries held: of live cards, within their horizon
        (all of a live card's when ``lateness_s`` is None)."""
        hashes, slots, ts = (np.empty(self.entries, dtype=dtype) for dtype in (np.int64, np.int64, np.float64))
        lateness = np.inf if lateness_s is None else lateness_s
        n = _gather(self.table_hash, self.table_slot, self.table_ts, self.newest, lateness, hashes, slots, ts)
        return hashes[:n], slots[:n], ts[:n]

    def restore_entries(self, hashes: np.ndarray, slots: np.ndarray, ts: np.ndarray) -> None:
        """Hold exactly these entries, in a table a quarter full at most."""
        size = _INITIAL_ENTRIES
        while size < 4 * len(hashes):
            size *= 2
        self.table_hash = np.zeros(size, dtype=np.int64)
        self.table_slot = np.zeros(size, dtype=np.int64)
        self.table_ts = np.zeros(size)
        _insert_all(hashes, slots, ts, self.table_hash, self.table_slot, self.table_ts)
        self.entries = len(hashes)

    def _rebuild(self, lateness_s: float | None) -> None:
        self.restore_entries(*self.live_entries(lateness_s))

    def _slot(self, card: str) -> int:
        slot = self.slot_of.get(card)
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
            self.cards[slot] = card
        else:
            slot = len(self.cards)
            self.cards.append(card)
            if slot == len(self.newest):
                self.newest = np.concatenate([self.newest, np.full(slot, -np.inf)])
                self.touched = np.concatenate([self.touched, np.zeros(slot)])
        self.slot_of[card] = slot
        return slot


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the table's kernels now, before the first batch."""
    table = AdmissionTable()
    table.admit_batch(["warm-up"], ["warm-up"], [0.0], 1.0, 0.0)
    table.live_entries(1.0)
    table.forget(["warm-up"])


def late_reason(newest_ts: float, txn: Transaction, allowed_lateness_s: float) -> str:
    return (
        f"late: event_time {txn.event_time.isoformat()} is {newest_ts - txn.event_ts:.1f}s behind the newest event "
        f"of card {txn.card_id} (allowed lateness {allowed_lateness_s:.0f}s)"
    )


def admissions_in_arrival_order(
    transactions: list[Transaction], allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S
) -> list[Admission]:
    """The stream's verdict on each transaction when they arrive in the given order (offline replay)."""
    return AdmissionTable().admit_batch(
        [t.card_id for t in transactions],
        [t.transaction_id for t in transactions],
        [t.event_ts for t in transactions],
        allowed_lateness_s,
        now=0.0,
    )


def admitted_in_arrival_order(
    transactions: list[Transaction], allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S
) -> list[Transaction]:
    """The transactions the stream admits when they arrive in the given order."""
    verdicts = admissions_in_arrival_order(transactions, allowed_lateness_s)
    return [t for t, v in zip(transactions, verdicts, strict=True) if v is Admission.ADMITTED]
