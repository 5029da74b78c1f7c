"""Entity state grouped into a fixed number of shards, the unit the dataflow routes and snapshots.

Why shards rather than one dataflow key per card: bytewax's cost is per item and per key it
touches, and each payment touches four entities (card, customer, merchant, device). Keyed per
entity, the flow spent most of its time in the engine (~2k payments/s per process, measured by
`fraud bench-stream`). Grouping each input batch by shard turns thousands of items into a few
dozen. Within a shard each entity kind's states are one ``EntityTable``: arrays updated by one
compiled call per batch. Admission's state is an ``AdmissionTable`` per shard. Both are
checkpointed by ``streaming.checkpoints``: a base of the whole shard written beside the flow, and
the changes since it (docs/features.md, section 4).

Everything here is plain Python so that it can be tested without a dataflow; `streaming.dataflow`
adapts it to bytewax.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Sequence
from itertools import chain
from typing import NamedTuple

import msgspec
import numpy as np
import zstandard

from schema import Label, Transaction
from streaming.admission import Admission, AdmissionTable
from streaming.entity_table import SNAPSHOT_ZSTD_LEVEL, EntityPayments, EntityTable, TableImage, TableSnapshot
from streaming.placement import placement_key
from streaming.windows import ENTITY_KEY_GETTERS, LAYOUTS, value_hash


class ShardInput(NamedTuple):
    """What one batch brings an entity shard (named ``shard``): payments per entity kind, and labels
    as (entity, entity id, label)."""

    shard: str
    payments: dict[str, EntityPayments]
    labels: list[tuple[str, str, Label]]


def merge_inputs(inputs: Sequence[ShardInput]) -> ShardInput:
    """A shard's inputs of one batch as one, each kind's columns in order. A batch brings an entity
    shard one input from each card shard's admission: up to 16, so concatenated once, not pairwise."""
    if len(inputs) == 1:
        return inputs[0]
    parts: dict[str, list[EntityPayments]] = {}
    for item in inputs:
        for entity, columns in item.payments.items():
            parts.setdefault(entity, []).append(columns)
    payments = {
        entity: columns[0]
        if len(columns) == 1
        else EntityPayments(*(list(chain(*column)) for column in zip(*columns, strict=True)))
        for entity, columns in parts.items()
    }
    return ShardInput(inputs[0].shard, payments, [label for item in inputs for label in item.labels])


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
        self._keys = {shard_name(n): placement_key(shard_name(n), n, shards) for n in range(shards)}
        self.caches: dict[str, dict[str, str]] = {kind: {} for kind in ("admission", *LAYOUTS)}

    def key(self, shard: str) -> str:
        """The key a shard's items travel under in the flow (``streaming.placement``): it sets the
        worker that holds the shard."""
        return self._keys[shard]

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
    """What a batch changed in an admission shard: the admitted payments' card ids, transaction ids
    and event times, in order, under ``allowed_lateness_s``; then the cards forgotten."""

    allowed_lateness_s: float
    cards: list[str]
    transaction_ids: list[str]
    event_ts: list[float]
    forgotten: list[str]


class AdmissionImage(NamedTuple):
    """An ``AdmissionShard`` copied: its cards by slot, their newest event times and its entries."""

    cards: list[str | None]
    newest: np.ndarray
    hashes: np.ndarray
    slots: np.ndarray
    ts: np.ndarray


class AdmissionShard(AdmissionTable):
    """The admission state of the cards in one shard (``streaming.admission.AdmissionTable``),
    checkpointed by ``streaming.checkpoints``: images are array copies, encoded elsewhere."""

    _encoder = msgspec.msgpack.Encoder()
    _parts_decoder = msgspec.msgpack.Decoder(list[bytes])
    _cards_decoder = msgspec.msgpack.Decoder(list[str | None])
    _log_decoder = msgspec.msgpack.Decoder(LoggedAdmissions)

    def admit(self, txn: Transaction, allowed_lateness_s: float, now: float) -> Admission:
        """One payment's verdict (tests; the stream decides a batch at a time)."""
        return self.admit_batch([txn.card_id], [txn.transaction_id], [txn.event_ts], allowed_lateness_s, now)[0]

    @staticmethod
    def log_entry(
        cards: list[str],
        transaction_ids: list[str],
        event_ts: list[float],
        allowed_lateness_s: float,
        forgotten: list[str],
    ) -> bytes:
        """The admitted payments of a batch (columns), as ``replay`` admits them again."""
        logged = LoggedAdmissions(allowed_lateness_s, cards, transaction_ids, event_ts, forgotten)
        return AdmissionShard._encoder.encode(logged)

    def replay(self, entry: bytes, now: float) -> None:
        logged = self._log_decoder.decode(entry)
        self.admit_batch(logged.cards, logged.transaction_ids, logged.event_ts, logged.allowed_lateness_s, now)
        self.forget(logged.forgotten)

    def image(self) -> AdmissionImage:
        n = len(self.cards)
        return AdmissionImage(list(self.cards), self.newest[:n].copy(), *self.live_entries(None))

    @classmethod
    def encode_image(cls, image: AdmissionImage) -> bytes:
        compress = zstandard.ZstdCompressor(level=SNAPSHOT_ZSTD_LEVEL).compress  # not thread-safe: one per call
        return cls._encoder.encode([compress(cls._encoder.encode(image.cards)), *map(compress, image[1:])])

    def encode(self) -> bytes:
        return self.encode_image(self.image())

    @classmethod
    def decode(cls, raw: bytes) -> AdmissionShard:
        decompress = zstandard.ZstdDecompressor().decompress
        cards_raw, *arrays = cls._parts_decoder.decode(raw)
        newest, hashes, slots, ts = (
            np.frombuffer(decompress(part), dtype=dtype)
            for part, dtype in zip(arrays, (np.float64, np.int64, np.int64, np.float64), strict=True)
        )
        shard = cls()
        shard.cards = cls._cards_decoder.decode(decompress(cards_raw))
        shard.slot_of = {card: slot for slot, card in enumerate(shard.cards) if card is not None}
        shard._free = [slot for slot, card in enumerate(shard.cards) if card is None]
        n = len(shard.cards)
        shard.newest = np.concatenate([newest, np.full(max(n, 64), -np.inf)])
        shard.touched = np.full(len(shard.newest), time.time())
        shard.restore_entries(hashes, slots, ts)
        return shard


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
        batch = merge_inputs(inputs)
        changed = {entity: self.tables[entity].apply(columns, now) for entity, columns in batch.payments.items()}
        for entity, entity_id, label in batch.labels:
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
    def log_entry(batch: ShardInput, forgotten: dict[str, list[str]] | None = None) -> bytes | None:
        """A batch (``merge_inputs``) as ``replay`` applies it again (None: it changed nothing)."""
        if not (batch.payments or batch.labels or forgotten):
            return None
        return EntityShard._encoder.encode(LoggedInputs(batch.payments, batch.labels, forgotten or {}))

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
