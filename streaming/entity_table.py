"""One entity kind's window states in one shard, kept in shared arrays: the stream's form of
``EntityState``.

Why: with an ``EntityState`` object per entity, the stream paid Python work per entity and
payment at every step that touched it: ~7 µs to update (numba's dispatch, growing and cutting the
rows), ~4 µs to pack for Redis, and more to encode in a snapshot (``fraud bench-stream
--steps-only``). Here every state of one kind lives in a few numpy arrays, so a batch is one
compiled update (``update_many``), one compiled pack (``pack_rows``), and a snapshot a few array
copies. The rows and the update are those of ``EntityState`` and ``apply_transaction`` (the same
kernel), and the packed bytes those of ``pack_state``: the tests hold the two byte for byte.

Each entity has a slot. Its rows live in ``rows[0]`` (buckets) and ``rows[1]`` (distinct values)
from ``first`` for ``used`` words, with ``room`` words set aside there. A slot whose payments need
more room moves to the end of the array; the arrays are compacted when they would have to grow.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import msgspec
import numpy as np
import zstandard

from schema import Label
from streaming.packed import MAGIC, pack_fraud_times
from streaming.state_kernel import apply_payments, move_rows, pack_rows
from streaming.windows import LAYOUTS, WARM_UP_PAYMENT, EntityLayout, EntityState, apply_label, value_hash

_INITIAL_SLOTS = 64
_INITIAL_WORDS = 4096


class EntityPayments(NamedTuple):
    """One entity kind's payments in a batch, as the table applies them: parallel columns of the
    entity's id in each payment, its amount and event time, and (for a kind with distinct-value
    features) the payment's value hashes of the layout's ``distinct_fields``, one after another.

    Columns of plain values rather than the transactions: they are what crosses between stream
    processes, and pickling a ``Transaction`` there and back costs ~9.5 µs, these ~0.3 µs."""

    ids: list[str]
    amounts: list[int]
    event_ts: list[float]
    hashes: list[int]


class TableImage(NamedTuple):
    """An ``EntityTable`` gathered into copies: every slot (a free one has no key and no rows), its
    rows end to end in slot order. Taken on the flow's thread (array copies), encoded on any."""

    keys: list[str | None]
    newest_ts: np.ndarray  # float64 per slot
    events: np.ndarray  # int64 per slot
    used: np.ndarray  # int64 (slots, 2): words of buckets and distinct rows
    buckets: np.ndarray  # int64 words
    distinct: np.ndarray
    labels: dict[int, tuple[dict[str, float], float]]  # slot -> (fraud_known, labels_newest_ts)

    def encode(self) -> TableSnapshot:
        """Each part zstd-compressed on its own, straight from the arrays: compression releases the
        GIL, so a thread encoding an image leaves the flow's thread free to go on."""
        compress = zstandard.ZstdCompressor(level=SNAPSHOT_ZSTD_LEVEL).compress  # not thread-safe: one per call
        arrays = (self.newest_ts, self.events, self.used, self.buckets, self.distinct)
        return TableSnapshot(compress(_encoder.encode(self.keys)), *map(compress, arrays), self.labels)


class TableSnapshot(msgspec.Struct, array_like=True):
    """A ``TableImage`` as a snapshot stores it: each part zstd-compressed (the keys as msgpack)."""

    keys: bytes
    newest_ts: bytes
    events: bytes
    used: bytes
    buckets: bytes
    distinct: bytes
    labels: dict[int, tuple[dict[str, float], float]]

    def image(self) -> TableImage:
        decompress = zstandard.ZstdDecompressor().decompress
        keys = _keys_decoder.decode(decompress(self.keys))
        newest_ts, events, used, buckets, distinct = (
            np.frombuffer(decompress(raw), dtype=dtype)
            for raw, dtype in zip(
                (self.newest_ts, self.events, self.used, self.buckets, self.distinct),
                (np.float64, np.int64, np.int64, np.int64, np.int64),
                strict=True,
            )
        )
        return TableImage(keys, newest_ts, events, used.reshape(len(keys), 2), buckets, distinct, self.labels)


SNAPSHOT_ZSTD_LEVEL = 1  # ~0.25 s per 90 MB, to about a sixth of the size
_encoder = msgspec.msgpack.Encoder()
_keys_decoder = msgspec.msgpack.Decoder(list[str | None])


class EntityTable:
    """The states of one entity kind in a shard, keyed ``entity:id`` (see the module docstring)."""

    def __init__(self, layout: EntityLayout) -> None:
        self.layout = layout
        self.slot_of: dict[str, int] = {}
        self.keys: list[str | None] = []  # slot -> key; None: a free slot
        self._free: list[int] = []
        self.first = np.zeros((_INITIAL_SLOTS, 2), dtype=np.int64)
        self.used = np.zeros((_INITIAL_SLOTS, 2), dtype=np.int64)
        self.room = np.zeros((_INITIAL_SLOTS, 2), dtype=np.int64)
        self.newest_ts = np.zeros(_INITIAL_SLOTS)
        self.events = np.zeros(_INITIAL_SLOTS, dtype=np.int64)
        self.touched = np.zeros(_INITIAL_SLOTS)  # wall clock of the last event, for forget_idle
        self.rows = [np.zeros(_INITIAL_WORDS, dtype=np.int64), np.zeros(_INITIAL_WORDS, dtype=np.int64)]
        self.end = np.zeros(2, dtype=np.int64)  # words handed out in each of ``rows``
        self.mark = np.zeros(_INITIAL_SLOTS, dtype=np.int64)  # see ``apply_payments``
        self._token = 0
        self.labels: dict[int, EntityState] = {}  # slot -> its label-rate part (fraud_known)
        self._spare = np.array([len(layout.spare_buckets), len(layout.spare_distinct)], dtype=np.int64) // 8

    def __len__(self) -> int:
        return len(self.slot_of)

    def apply(self, payments: EntityPayments, now: float) -> np.ndarray:
        """Add payments, in order, to the states of their entity ids; returns the slots they changed."""
        n = len(payments.ids)
        slots = np.array(self._slots_for(payments.ids), dtype=np.int64)
        hashes = np.array(payments.hashes, dtype=np.int64).reshape(n, len(self.layout.distinct_fields))
        ts = np.array(payments.event_ts, dtype=np.float64)
        amounts = np.array(payments.amounts, dtype=np.int64)
        changed = np.empty(n, dtype=np.int64)
        self._token += 1
        done = n_changed = 0
        while True:
            applied, marked = apply_payments(
                *self.rows,
                self.end,
                self.first,
                self.used,
                self.room,
                self.newest_ts,
                self.events,
                self.touched,
                self.mark,
                self._token,
                slots[done:],
                ts[done:],
                amounts[done:],
                self.layout.plan,
                self.layout.distinct_codes,
                hashes[done:],
                self._spare,
                now,
                changed[n_changed:],
            )
            done, n_changed = done + applied, n_changed + marked
            if done == n:
                return changed[:n_changed]
            self._compact(n - done)  # a slot had to move and there was no space left

    def apply_label(self, key: str, label: Label, now: float) -> int:
        """Record a label for the state of ``key``; returns its slot."""
        [slot] = self._slots_for([key])
        state = self.labels.get(slot)
        if state is None:
            state = self.labels[slot] = EntityState()
        apply_label(state, self.layout, label)
        self.touched[slot] = now
        return slot

    def pack(self, slots: np.ndarray) -> list[tuple[str, bytes]]:
        """(key, ``pack_state`` bytes) of each slot."""
        if not len(slots):
            return []
        labels = self.labels
        n_fraud = np.zeros(len(slots), dtype=np.int64)
        if labels:
            n_fraud[:] = [len(labels[s].fraud_known) if s in labels else 0 for s in slots.tolist()]
        rows, first, used = self.rows, self.first, self.used
        words, ends = pack_rows(
            rows[0], rows[1], first, used, self.newest_ts.view(np.int64), self.events, n_fraud, slots, MAGIC
        )
        raw = words.tobytes()
        keys = self.keys
        out: list[tuple[str, bytes]] = []
        start = 0
        for slot, end in zip(slots.tolist(), (ends * 8).tolist(), strict=True):
            packed = raw[start:end]
            start = end
            if slot in labels and labels[slot].fraud_known:
                packed += pack_fraud_times(labels[slot].fraud_known)
            out.append((keys[slot], packed))  # type: ignore[arg-type]
        return out

    def live_slots(self) -> np.ndarray:
        return np.fromiter(self.slot_of.values(), dtype=np.int64, count=len(self.slot_of))

    def forget_idle(self, horizon: float) -> list[str]:
        """Free the slots untouched since ``horizon`` (wall clock); returns their keys."""
        live = self.live_slots()
        idle = live[self.touched[live] < horizon]
        forgotten = [self.keys[slot] for slot in idle.tolist()]
        self.forget(forgotten)  # type: ignore[arg-type]
        return forgotten  # type: ignore[return-value]

    def forget(self, keys: list[str]) -> None:
        """Free the slots of ``keys`` (those it has)."""
        slots = [self.slot_of.pop(key) for key in keys if key in self.slot_of]
        for slot in slots:
            self.keys[slot] = None
            self.labels.pop(slot, None)
            self._free.append(slot)
        for array in (self.first, self.used, self.room):
            array[slots] = 0
        self.newest_ts[slots] = 0.0
        self.events[slots] = 0

    def image(self) -> TableImage:
        """The table gathered into copies (``TableImage``): what a snapshot stores, as of now."""
        n = len(self.keys)
        used = self.used[:n].copy()
        gathered = []
        for column in (0, 1):
            out = np.empty(int(used[:, column].sum()), dtype=np.int64)
            to = np.cumsum(used[:, column]) - used[:, column]
            move_rows(self.rows[column], out, self.first[:n].copy(), used, np.arange(n), to, column)
            gathered.append(out)
        return TableImage(
            keys=list(self.keys),
            newest_ts=self.newest_ts[:n].copy(),
            events=self.events[:n].copy(),
            used=used,
            buckets=gathered[0],
            distinct=gathered[1],
            labels={slot: (dict(state.fraud_known), state.labels_newest_ts) for slot, state in self.labels.items()},
        )

    def snapshot(self) -> TableSnapshot:
        return self.image().encode()

    @classmethod
    def restore(cls, layout: EntityLayout, snap: TableSnapshot) -> EntityTable:
        image = snap.image()
        table = cls(layout)
        n = len(image.keys)
        table._grow_slots(n)
        table.keys = list(image.keys)
        table.slot_of = {key: slot for slot, key in enumerate(image.keys) if key is not None}
        table._free = [slot for slot, key in enumerate(image.keys) if key is None]
        table.newest_ts[:n] = image.newest_ts
        table.events[:n] = image.events
        table.used[:n] = image.used
        table.room[:n] = image.used
        table.first[:n] = np.cumsum(image.used, axis=0) - image.used
        table.touched[:n] = time.time()
        for column, words in enumerate((image.buckets, image.distinct)):
            table.rows[column] = np.concatenate([words, np.zeros(max(len(words) // 2, _INITIAL_WORDS), dtype=np.int64)])
            table.end[column] = len(words)
        for slot, (fraud_known, newest) in image.labels.items():
            table.labels[slot] = EntityState(fraud_known=fraud_known, labels_newest_ts=newest)
        return table

    def _slots_for(self, keys: list[str]) -> list[int]:
        """The slot of each key, opening one for a key not seen before."""
        get = self.slot_of.get
        slots = [get(key) for key in keys]
        if None in slots:
            for i, slot in enumerate(slots):
                if slot is None:
                    slot = get(keys[i])  # opened earlier in this batch
                    slots[i] = slot if slot is not None else self._open(keys[i])
        return slots  # type: ignore[return-value]

    def _open(self, key: str) -> int:
        if self._free:
            slot = self._free.pop()
            self.keys[slot] = key
        else:
            slot = len(self.keys)
            if slot == len(self.events):
                self._grow_slots(2 * slot)
            self.keys.append(key)
        self.slot_of[key] = slot
        return slot

    def _grow_slots(self, n: int) -> None:
        if n <= len(self.events):
            return

        def grown(a: np.ndarray) -> np.ndarray:
            out = np.zeros((n, *a.shape[1:]), dtype=a.dtype)
            out[: len(a)] = a
            return out

        self.first, self.used, self.room = grown(self.first), grown(self.used), grown(self.room)
        self.newest_ts, self.events, self.touched = grown(self.newest_ts), grown(self.events), grown(self.touched)
        self.mark = grown(self.mark)

    def _compact(self, payments: int) -> None:
        """Lay the live slots' rows end to end in new arrays, with space after them for the most
        that ``payments`` more payments can need (``_move_to_end``) and for half as many words
        again, to move into before the next compaction."""
        live = self.live_slots()
        for column in (0, 1):
            room = self.room[live, column]
            kept = int(room.sum())
            more = int(self._spare[column]) * payments + int(self.used[live, column].max(initial=0))
            rows = np.zeros(max(kept + kept // 2 + 4 * more, _INITIAL_WORDS), dtype=np.int64)
            move_rows(self.rows[column], rows, self.first, self.used, live, np.cumsum(room) - room, column)
            self.rows[column] = rows
            self.end[column] = kept


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the table's kernels now, before the first batch."""
    for layout in LAYOUTS.values():
        table = EntityTable(layout)
        hashes = [value_hash(v) for v in layout.distinct_values(WARM_UP_PAYMENT)] if layout.distinct_fields else []
        slots = table.apply(EntityPayments(["warm-up"], [1], [WARM_UP_PAYMENT.event_ts], hashes), 0.0)
        table.pack(slots)
        EntityTable.restore(layout, table.snapshot())
