"""Which bytewax worker holds each state shard: keys chosen so the shards spread evenly.

bytewax sends a keyed item to worker ``SipHash-1-3(key) % workers`` (Rust's ``DefaultHasher`` with
zero keys, over the key's UTF-8 bytes and a 0xff terminator: bytewax 0.21, ``PartitionFn``). Keyed
by their names, 16 shards fell 7, 7 and 2 over three workers, and 4, 4, 5 and 3 over four; 8 shards
fell 5 and 3 over two. The worker with the most shards sets the pace of all of them.

So each shard travels under a *placement key*: its name and a suffix, the first whose hash is the
shard's index modulo the largest power of two up to the shard count. For any worker count that
divides that power of two (1, 2, 4, 8, ...), shard ``i`` then lands on worker ``i % workers``: as
even as it gets. Other worker counts get a spread like any hash's.

Only the balance depends on bytewax's hash: were it to change, the keys would still be stable and
distinct, so routing stays correct (``tests/streaming/test_placement.py`` runs bytewax to check the
placement itself).
"""

from __future__ import annotations

from functools import cache

_MASK = (1 << 64) - 1


def placement_key(shard: str, index: int, shards: int) -> str:
    """The key under which shard ``shard`` (number ``index`` of ``shards``) travels in the flow."""
    span = 1 << (shards.bit_length() - 1)  # the largest power of two <= shards
    return _search(shard, index % span, span)


@cache
def _search(shard: str, target: int, span: int) -> str:
    suffix = 0
    while bytewax_hash(key := f"{shard}~{suffix}") % span != target:
        suffix += 1
    return key


def bytewax_worker(key: str, workers: int) -> int:
    """The worker bytewax routes ``key`` to, out of ``workers``."""
    return bytewax_hash(key) % workers


def bytewax_hash(key: str) -> int:
    """SipHash-1-3 with zero keys of the key as Rust hashes a ``String``: its bytes, then 0xff."""
    data = key.encode() + b"\xff"
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573
    whole = len(data) - len(data) % 8
    words = [int.from_bytes(data[at : at + 8], "little") for at in range(0, whole, 8)]
    words.append(((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little"))
    for word in words:
        v3 ^= word
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= word
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK
