"""Entity state grouped into a fixed number of shards, the unit the dataflow routes and snapshots.

Why shards rather than one dataflow key per card: bytewax's cost is per item and per key it
touches, and each payment touches four entities (card, customer, merchant, device). Keyed per
entity, the flow spent most of its time in the engine (~2k payments/s per process, measured by
`fraud bench-stream`). Grouping each input batch by shard turns thousands of items into a few
dozen. Within a shard each entity kind's states are one ``EntityTable``: arrays updated by one
compiled call per batch. The price: a snapshot writes a touched shard whole, not just the entities
that changed (see docs/features.md).

Everything here is plain Python so that it can be tested without a dataflow; `streaming.dataflow`
adapts it to bytewax.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import numpy as np
import zstandard

from schema import Label, Transaction
from streaming.admission import Admission, CardAdmission, admit, remember
from streaming.entity_table import SNAPSHOT_ZSTD_LEVEL, EntityPayments, EntityTable, TableImage, TableSnapshot
from streaming.windows import ENTITY_KEY_GETTERS, LAYOUTS, value_hash


class ShardInput(NamedTuple):
    """What one batch brings an entity shard (named ``shard``): payments per entity kind, and labels
    as (entity, entity id, label)."""

    shard: str
    payments: dict[str, EntityPayments]
    labels: list[tuple[str, str, Label]]


def shard_of(key: str, shards: int) -> str:
    """A stable shard name for a key: the same in every process and after every restart."""
    return shard_name(zlib.crc32(key.encode()) % shards)


def shard_name(index: int) -> str:
    return f"s{index}"


def state_key(entity: str, entity_id: str) -> str:
    """What an entity's shard is chosen by."""
    return f"{entity}:{entity_id}"


SHARD_CACHE_KEYS = 500_000  # per cache; tens of MB at most (the shards hold the id strings), names interned


class ShardRouter:
    """Which shard each card (admission) and each entity (state) belongs to: ``shard_of`` of its
    key, remembered per entity kind by id. A dict hit is ~0.1 µs where hashing the key is ~0.7, and
    every payment is routed five times (its card, then its four entities). The caches start over
    rather than grow without end."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.caches: dict[str, dict[str, str]] = {kind: {} for kind in ("admission", *LAYOUTS)}

    def card(self, card_id: str) -> str:
        """The admission shard of a card."""
        return self.caches["admission"].get(card_id) or self._miss("admission", card_id, card_id)

    def entity(self, entity: str, entity_id: str) -> str:
        """The state shard of an entity."""
        return self.caches[entity].get(entity_id) or self._miss(entity, entity_id, state_key(entity, entity_id))

    def route_payments(self, transactions: Sequence[Transaction]) -> dict[str, ShardInput]:
        """Each payment to the shard of each entity it touches, as per-kind columns in arrival order."""
        times = [t.event_ts for t in transactions]  # once per payment, not per entity (~0.6 µs each)
        amounts = [t.amount_minor for t in transactions]
        inputs: dict[str, ShardInput] = {}
        for entity, key_of in ENTITY_KEY_GETTERS:
            ids = list(map(key_of, transactions))
            layout = LAYOUTS[entity]
            for shard, at in self._by_shard(entity, ids).items():
                hashes = []
                if layout.distinct_fields:
                    values = layout.distinct_values
                    hashes = [value_hash(v) for n in at for v in values(transactions[n])]
                columns = EntityPayments([ids[n] for n in at], [amounts[n] for n in at], [times[n] for n in at], hashes)
                item = inputs.get(shard)
                if item is None:
                    item = inputs[shard] = ShardInput(shard, {}, [])
                item.payments[entity] = columns
        return inputs

    def _by_shard(self, entity: str, ids: list[str]) -> dict[str, list[int]]:
        """The positions of ``ids`` by the shard of their entity, in order."""
        cache, miss = self.caches[entity], self._miss
        where: dict[str, list[int]] = {}
        for n, entity_id in enumerate(ids):
            shard = cache.get(entity_id) or miss(entity, entity_id, state_key(entity, entity_id))
            at = where.get(shard)
            if at is None:
                where[shard] = [n]
            else:
                at.append(n)
        return where

    def _miss(self, kind: str, entity_id: str, key: str) -> str:
        cache = self.caches[kind]
        if len(cache) >= SHARD_CACHE_KEYS:
            cache.clear()
        shard = cache[entity_id] = sys.intern(shard_of(key, self.shards))
        return shard


def shard_input(transactions: Sequence[Transaction]) -> ShardInput:
    """The payments as the input of one shard that holds every entity they touch (tests)."""
    whole = ShardRouter(1).route_payments(transactions)
    return next(iter(whole.values()), ShardInput(shard_name(0), {}, []))


class LoggedAdmissions(NamedTuple):
    """What a batch changed in an admission shard: the admitted payments as (card, transaction id,
    event time), in order, under ``allowed_lateness_s``; then the cards forgotten."""

    allowed_lateness_s: float
    admitted: list[tuple[str, str, float]]
    forgotten: list[str]


class AdmissionShard:
    """The admission state of the cards in one shard (``CardAdmission`` by card id), with the
    wall-clock last use of each card so that cards idle longer than their TTL can be forgotten.

    Checkpointed (``streaming.checkpoints``): ``image`` copies the state on the flow's thread, and
    ``encode_image`` encodes it elsewhere in chunks of cards, so the thread holds the GIL only a few
    milliseconds at a time."""

    _encoder = msgspec.msgpack.Encoder()
    _chunk_decoder = msgspec.msgpack.Decoder(list[tuple[str, CardAdmission]])
    _chunks_decoder = msgspec.msgpack.Decoder(list[bytes])
    _log_decoder = msgspec.msgpack.Decoder(LoggedAdmissions)
    CARDS_PER_CHUNK = 500

    def __init__(self, entries: dict[str, CardAdmission] | None = None) -> None:
        self.entries: dict[str, CardAdmission] = entries or {}
        self.touched = dict.fromkeys(self.entries, time.time())

    def admit(self, txn: Transaction, allowed_lateness_s: float, now: float) -> Admission:
        state = self.entries.get(txn.card_id)
        if state is None:
            state = self.entries[txn.card_id] = CardAdmission()
        self.touched[txn.card_id] = now
        return admit(state, txn, allowed_lateness_s)

    def state_of(self, card_id: str) -> CardAdmission:
        return self.entries[card_id]

    def forget_idle(self, idle_ttl_s: float, now: float | None = None) -> list[str]:
        horizon = (now if now is not None else time.time()) - idle_ttl_s
        idle = [k for k, at in self.touched.items() if at < horizon]
        self.forget(idle)
        return idle

    def forget(self, cards: list[str]) -> None:
        for card in cards:
            self.touched.pop(card, None)
            self.entries.pop(card, None)

    @staticmethod
    def log_entry(admitted: list[tuple[str, str, float]], allowed_lateness_s: float, forgotten: list[str]) -> bytes:
        return AdmissionShard._encoder.encode(LoggedAdmissions(allowed_lateness_s, admitted, forgotten))

    def replay(self, entry: bytes, now: float) -> None:
        logged = self._log_decoder.decode(entry)
        for card, transaction_id, ts in logged.admitted:
            state = self.entries.get(card)
            if state is None:
                state = self.entries[card] = CardAdmission()
            self.touched[card] = now
            remember(state, transaction_id, ts, logged.allowed_lateness_s)
        self.forget(logged.forgotten)

    def image(self) -> list[tuple[str, CardAdmission]]:
        """A copy of every card's state (its ids' dict copied: C speed, ~10 ns an id)."""
        return [(card, CardAdmission(s.newest_ts, s.recent_ids.copy())) for card, s in self.entries.items()]

    @classmethod
    def encode_image(cls, image: list[tuple[str, CardAdmission]]) -> bytes:
        compress = zstandard.ZstdCompressor(level=SNAPSHOT_ZSTD_LEVEL).compress  # not thread-safe: one per call
        step = cls.CARDS_PER_CHUNK
        return cls._encoder.encode(
            [compress(cls._encoder.encode(image[at : at + step])) for at in range(0, len(image), step)]
        )

    def encode(self) -> bytes:
        return self.encode_image(self.image())

    @classmethod
    def decode(cls, raw: bytes) -> AdmissionShard:
        decompress = zstandard.ZstdDecompressor().decompress
        entries: dict[str, CardAdmission] = {}
        for chunk in cls._chunks_decoder.decode(raw):
            entries.update(cls._chunk_decoder.decode(decompress(chunk)))
        return cls(entries)


class LoggedInputs(NamedTuple):
    """One batch as an entity shard applied it, then the states forgotten after it (ids by kind)."""

    payments: dict[str, EntityPayments]
    labels: list[tuple[str, str, Label]]
    forgotten: dict[str, list[str]]


class EntityShard:
    """The window state of the entities (of every kind) in one shard: an ``EntityTable`` per kind,
    keyed by entity id; snapshots are the tables' ``TableSnapshot``, in msgpack."""

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder(dict[str, TableSnapshot])
    _log_decoder = msgspec.msgpack.Decoder(LoggedInputs)

    def __init__(self, tables: dict[str, EntityTable] | None = None) -> None:
        self.tables = tables or {entity: EntityTable(layout) for entity, layout in LAYOUTS.items()}

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables.values())

    def apply(self, inputs: Sequence[ShardInput], now: float) -> dict[str, np.ndarray]:
        """Apply a batch's inputs, payments in order; returns the slots they changed, per entity kind.

        Each kind's payments are applied together, labels after them: a state's payment and label
        parts do not depend on each other."""
        payments: dict[str, EntityPayments] = {}
        for item in inputs:
            for entity, columns in item.payments.items():
                have = payments.get(entity)
                payments[entity] = columns if have is None else have + columns  # two inputs in a batch: rare
        changed = {entity: self.tables[entity].apply(columns, now) for entity, columns in payments.items()}
        for item in inputs:
            for entity, entity_id, label in item.labels:
                slot = self.tables[entity].apply_label(entity_id, label, now)
                changed[entity] = np.union1d(changed.get(entity, np.empty(0, dtype=np.int64)), [slot])
        return changed

    def pack(self, changed: dict[str, np.ndarray]) -> list[tuple[str, str, bytes]]:
        """(entity, entity id, ``pack_state`` bytes) of the changed states."""
        return [(entity, *packed) for entity, slots in changed.items() for packed in self.tables[entity].pack(slots)]

    def pack_all(self) -> list[tuple[str, str, bytes]]:
        return self.pack({entity: table.live_slots() for entity, table in self.tables.items()})

    def forget_idle(self, idle_ttl_s: float, now: float | None = None) -> dict[str, list[str]]:
        """Forget the states untouched for ``idle_ttl_s`` (wall clock); returns their ids by entity kind."""
        horizon = (now if now is not None else time.time()) - idle_ttl_s
        forgotten = {entity: table.forget_idle(horizon) for entity, table in self.tables.items()}
        return {entity: ids for entity, ids in forgotten.items() if ids}

    def forget(self, forgotten: dict[str, list[str]]) -> None:
        """Forget these states (ids by entity kind): what ``forget_idle`` did, done again on replay."""
        for entity, ids in forgotten.items():
            self.tables[entity].forget(ids)

    @staticmethod
    def log_entry(inputs: Sequence[ShardInput], forgotten: dict[str, list[str]] | None = None) -> bytes | None:
        """A batch as ``replay`` applies it again (None: it changed nothing)."""
        payments: dict[str, EntityPayments] = {}
        labels: list[tuple[str, str, Label]] = []
        for item in inputs:
            for entity, columns in item.payments.items():
                have = payments.get(entity)
                payments[entity] = columns if have is None else have + columns
            labels += item.labels
        if not (payments or labels or forgotten):
            return None
        return EntityShard._encoder.encode(LoggedInputs(payments, labels, forgotten or {}))

    def replay(self, entry: bytes, now: float) -> None:
        logged = self._log_decoder.decode(entry)
        self.apply([ShardInput("", logged.payments, logged.labels)], now)
        self.forget(logged.forgotten)

    def image(self) -> dict[str, TableImage]:
        """Every table gathered into copies, to encode off the flow's thread (``encode_image``)."""
        return {entity: table.image() for entity, table in self.tables.items()}

    @classmethod
    def encode_image(cls, image: dict[str, TableImage]) -> bytes:
        # Each table's parts are compressed on their own (``TableImage.encode``), not the whole.
        return cls._encoder.encode({entity: table.encode() for entity, table in image.items()})

    def encode(self) -> bytes:
        return self.encode_image(self.image())

    @classmethod
    def decode(cls, raw: bytes) -> EntityShard:
        snapshot = cls._decoder.decode(raw)
        return cls({entity: EntityTable.restore(LAYOUTS[entity], snapshot[entity]) for entity in LAYOUTS})
