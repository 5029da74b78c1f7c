"""Entity state as the online store keeps it: one flat array of little-endian int64 words.

Why not the msgpack ``EntityState``: the decision path reads four entities per payment, and
decoding msgpack into Python objects cost ~40 µs per entity, the largest share of the scorer's CPU
(docs/performance.md). Packed words are read for a whole batch with one ``np.frombuffer`` and the
windows are summed as array operations (``streaming.batch_features``), with no Python object per
bucket. The stream keeps the mutable ``EntityState`` in its shards and packs it when it writes.

Layout, in int64 words:

    header  MAGIC, newest_ts (float64 bits), events, n_buckets, n_distinct, n_fraud
    n_buckets  x (resolution_s, start, count, amount_minor, max_minor)
    n_distinct x (resolution_s, field_code, start, value_hash)
    n_fraud    x known_at (float64 bits)

Distinct values are kept as 64-bit hashes (a collision between two of one card's merchants in a
day has odds of about 1e-18). Rows are sorted, so two states with the same content pack to the
same bytes: the exactly-once tests compare what the store holds byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# The codes and the hash of distinct values belong to the state, which keeps them hashed.
from streaming.windows import FIELD_CODE as FIELD_CODE
from streaming.windows import EntityState
from streaming.windows import value_hash as value_hash

MAGIC = 0x31_4B_43_50  # "PCK1"; a new layout gets a new magic, so a reader refuses what it cannot read
HEADER_WORDS = 6
BUCKET_WORDS = 5
DISTINCT_WORDS = 4

_WORD = np.dtype("<i8")
_FLOAT = np.dtype("<f8")


_HEADER = struct.Struct("<qdqqqq")  # MAGIC, newest_ts, events, n_buckets, n_distinct, n_fraud


@lru_cache(maxsize=1024)
def _floats(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}d")


def pack_state(state: EntityState) -> bytes:
    """The packed form of one entity's state (see the module docstring).

    The state keeps its rows as this layout stores them, in order: packing copies them rather than
    looping over rows in Python (it runs for every entity a batch changes)."""
    n_buckets = len(state.buckets) // (BUCKET_WORDS * _WORD.itemsize)
    n_distinct = len(state.distinct) // (DISTINCT_WORDS * _WORD.itemsize)
    header = _HEADER.pack(MAGIC, state.newest_ts, state.events, n_buckets, n_distinct, len(state.fraud_known))
    if not state.fraud_known:  # most entities have no labels
        return b"".join((header, state.buckets, state.distinct))
    return b"".join((header, state.buckets, state.distinct, pack_fraud_times(state.fraud_known)))


def pack_fraud_times(fraud_known: dict[str, float]) -> bytes:
    """The layout's last part: when each fraud became known, sorted (empty without labels)."""
    fraud = sorted(fraud_known.values())
    return _floats(len(fraud)).pack(*fraud)


EMPTY_STATE = pack_state(EntityState())


@dataclass(frozen=True)
class PackedStates:
    """Many packed states parsed at once; rows carry the index of the state they belong to."""

    newest_ts: np.ndarray  # float64, per state
    events: np.ndarray  # int64, per state
    buckets: np.ndarray  # (rows, 5): resolution, start, count, amount, max
    bucket_owner: np.ndarray
    distinct: np.ndarray  # (rows, 4): resolution, field code, start, value hash
    distinct_owner: np.ndarray
    fraud_known_at: np.ndarray  # float64
    fraud_owner: np.ndarray

    @property
    def size(self) -> int:
        return len(self.events)

    def offsets(self, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first row, row count) per state, for rows sorted by owner (as parsed)."""
        counts = np.bincount(owner, minlength=self.size)
        return np.cumsum(counts) - counts, counts


def parse_packed(raws: Sequence[bytes | None]) -> PackedStates:
    """Parse packed states (None: an entity with no history) without a Python loop per row."""
    raws = [EMPTY_STATE if raw is None else raw for raw in raws]
    words = np.frombuffer(b"".join(raws), dtype=_WORD)
    sizes = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws)) // _WORD.itemsize
    starts = np.cumsum(sizes) - sizes
    header = words[starts[:, None] + np.arange(HEADER_WORDS)] if len(raws) else np.empty((0, HEADER_WORDS), _WORD)
    if len(header) and (header[:, 0] != MAGIC).any():
        raise ValueError("online feature state in an unknown format (expected packed layout PCK1)")
    n_buckets, n_distinct, n_fraud = header[:, 3], header[:, 4], header[:, 5]
    bucket_base = starts + HEADER_WORDS
    distinct_base = bucket_base + BUCKET_WORDS * n_buckets
    fraud_base = distinct_base + DISTINCT_WORDS * n_distinct
    bucket_owner, bucket_rows = ragged_rows(bucket_base, n_buckets, BUCKET_WORDS)
    distinct_owner, distinct_rows = ragged_rows(distinct_base, n_distinct, DISTINCT_WORDS)
    fraud_owner, fraud_rows = ragged_rows(fraud_base, n_fraud, 1)
    return PackedStates(
        newest_ts=header[:, 1].copy().view(_FLOAT),
        events=header[:, 2].copy(),
        buckets=words[bucket_rows],
        bucket_owner=bucket_owner,
        distinct=words[distinct_rows],
        distinct_owner=distinct_owner,
        fraud_known_at=words[fraud_rows[:, 0]].copy().view(_FLOAT),
        fraud_owner=fraud_owner,
    )


def ragged_rows(base: np.ndarray, counts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``counts[g]`` rows of ``width`` words starting at ``base[g]``: each row's group
    and a (rows, width) index of its words."""
    if not counts.any():
        return np.empty(0, dtype=np.int64), np.empty((0, width), dtype=np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)
    within = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    first_word = np.repeat(base, counts) + within * width
    return owner, first_word[:, None] + np.arange(width)
