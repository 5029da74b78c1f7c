"""The online feature store in Redis, and the decision path's feature read.

Keys are Redis-Cluster-ready: one hash tag per entity (``fraud:feat:{card:123}``) so an entity's
whole state is one key in one slot. Values are whole packed entity states (``streaming.packed``)
written with SET, so a replayed write is harmless (idempotent) where an INCR would double count.

One server or a Redis Cluster (``connect_redis``: ``redis+cluster://host:port,...``). On one server a
batch is read with one MGET and written with one script call per 500 keys. On a cluster a
multi-key command must stay within one slot, so reads and writes go as one pipeline per node
(redis-py's cluster pipeline), slot by slot: the same values, more commands.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import redis
from redis.cluster import ClusterNode, RedisCluster, key_slot
from redis.exceptions import RedisClusterException

from schema import PackedFeatures, Transaction
from streaming.batch_features import COLUMN, BatchEntities, batch_entities, entity_feature_matrix
from streaming.features import MODEL_FEATURE_SET, MODEL_FEATURES
from streaming.offline import in_event_order
from streaming.packed import pack_state
from streaming.redis_wire import RedisWire
from streaming.windows import LAYOUTS, EntityState

# An entity idle this long (wall clock) after its last update is evicted: its windows are all
# empty by then. One day beyond the entity's longest window.
STATE_TTL_S: dict[str, int] = {
    entity: max((*layout.retention_s.values(), layout.label_retention_s)) + 86400 for entity, layout in LAYOUTS.items()
}


# Idempotency records are fields of a few hashes, not a key per payment: the records are most of
# Redis's keys (rate x TTL), and a keyspace growing by one key per payment rehashes its whole main
# and expires tables at each power of two (2^19 keys and up: 3-4x Redis's CPU per record for ~80,000
# records, the 20,000/s shedding in docs/performance.md). Split over 64 hashes per generation, each
# table grows in small steps that stay in cache. Equal buckets would still cross each power of two
# together (64 x 2^15 fields shed at 20,000/s in a bench run), so bucket b takes a share growing as
# 2^(b/64): the sizes spread evenly over one doubling and the hashes rehash one after another. A
# payment's hash is fixed by its id (the bucket) and its own event time (the generation), so every
# attempt of it, on any scorer whatever its clock, finds the same hash. 64 hashes leave Redis's
# compact small-hash encoding (a linear scan) after ~32,000 payments per generation; more would
# stay in it longer. A generation is 10 minutes of event time; its hash expires once no record has
# been written to it for the decision TTL.
DECISION_BUCKETS = 64
DECISION_GENERATION_S = 600
_BUCKET_WEIGHTS = [2 ** (b / DECISION_BUCKETS) for b in range(DECISION_BUCKETS)]
# the upper ends of the buckets' shares of the 32-bit hash range (the last one is open)
_BUCKET_ENDS = [int(sum(_BUCKET_WEIGHTS[: b + 1]) / sum(_BUCKET_WEIGHTS) * 2**32) for b in range(DECISION_BUCKETS - 1)]


def decision_bucket(transaction_id: str) -> int:
    """Which of the ``DECISION_BUCKETS`` hashes holds this payment's record (bucket b takes a share
    of ids proportional to 2^(b/64))."""
    return bisect.bisect_right(_BUCKET_ENDS, zlib.crc32(transaction_id.encode()))


# What a store call raises when Redis is away, hung or re-sharding: a cluster client that cannot
# reach any node raises RedisClusterException, which is not a RedisError.
STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

CLUSTER_SCHEME = "+cluster"


def connect_redis(
    url: str, socket_timeout: float | None = None, connect_timeout: float | None = None
) -> redis.Redis | RedisCluster:
    """A client for ``url``: ``redis://host:port/db`` for one server; ``redis+cluster://host:port``
    (or ``rediss+cluster://``, TLS) for a Redis Cluster, naming one or more nodes to discover it
    from (comma-separated). The cluster client connects at once to learn the slot map."""
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    startup = cluster_startup(url)
    if startup is None:
        return redis.Redis.from_url(url, **timeouts)
    first, nodes = startup
    return RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in nodes], **timeouts)


def cluster_startup(url: str) -> tuple[str, list[tuple[str, int]]] | None:
    """For a ``redis+cluster://`` URL: a plain URL of its first node (credentials and TLS kept, for
    redis-py) and every node named; None for any other URL."""
    scheme, sep, rest = url.partition("://")
    if not scheme.endswith(CLUSTER_SCHEME):
        return None
    auth, _, hosts = rest.rpartition("@")
    nodes = [h.split("/", 1)[0] for h in hosts.split(",") if h.split("/", 1)[0]]
    if not nodes:
        raise ValueError(f"REDIS_URL: no host:port in the cluster URL {url!r}")
    parsed = []
    for node in nodes:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_URL: {node!r} in {url!r} is not host:port")
        parsed.append((host, int(port)))
    first = f"{scheme.removesuffix(CLUSTER_SCHEME)}{sep}{auth + '@' if auth else ''}{nodes[0]}"
    return first, parsed


def _packed(state: EntityState | bytes) -> bytes:
    return state if isinstance(state, bytes) else pack_state(state)


# Keys per script call: each call runs atomically in Redis, so it is kept short (~1 ms) for readers.
WRITE_CHUNK = 500


@dataclass(frozen=True)
class BatchRead:
    """What one round trip brought back for a batch: entity states, the stream watermark and, per
    transaction id asked for, the decision recorded for it (None: not decided yet)."""

    entities: BatchEntities  # the entities read, and which of them each payment of the batch touches
    states: list[bytes]  # the packed state of each of ``entities.keys`` (b"": no history)
    watermark: float | None
    decided: list[bytes | None]
    decision_keys: list[str]  # the hashes looked in, per payment looked up: where to record them

    def of_payments(self, positions: Sequence[int]) -> BatchRead:
        """This read, for the batch's payments at ``positions`` only (those left to decide)."""
        return replace(self, entities=self.entities.of_payments(positions))


@dataclass(frozen=True)
class BatchFeatures:
    matrix: np.ndarray  # (payments x MODEL_FEATURES) float64, in the order the payments were given
    stream_watermark: float | None  # newest event time the feature stream has applied
    event_ts: np.ndarray | None = None  # the payments' event times (Unix s), when the reader had them

    def column(self, name: str) -> np.ndarray | None:
        """One feature's values for the whole batch (None: not a model feature)."""
        index = COLUMN.get(name)
        return None if index is None else self.matrix[:, index]

    @property
    def vectors(self) -> list[PackedFeatures]:
        """The rows as named feature vectors (what rules read and decisions record), packed: one
        copy of the matrix for the batch, and 8 bytes a value on `decisions` (schema.features)."""
        return PackedFeatures.rows(MODEL_FEATURE_SET, self.matrix)


class OnlineFeatureStore:
    """Entity states in Redis: written by the feature stream, read by the decision path."""

    def __init__(self, client: redis.Redis | RedisCluster, prefix: str = "fraud") -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = isinstance(client, RedisCluster)
        # The decision path's two commands per batch (``read_batch``'s MGET, ``record_decisions``)
        # and the stream's state writes are framed by hand where the server allows
        # (``streaming.redis_wire``); everything else goes through redis-py.
        self._wire = RedisWire.for_client(client)
        self._watermark_key = f"{prefix}:stream:watermark"
        self._bucket_keys = [f"{prefix}:dec:{{dec:{b}}}:" for b in range(DECISION_BUCKETS)]
        self._counter_key = f"{prefix}:stream:counts"
        # One script call writes many whole states with their TTLs: per-command overhead in the
        # Python client, not Redis, was the stream's largest cost (one SET per entity per batch).
        # Keys of one call may sit in different slots: fine on one server only (a cluster
        # rejects cross-slot scripts); on a cluster the writes are plain SETs per node.
        self._set_many = client.register_script(
            "for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[2*i-1], 'EX', ARGV[2*i]) end return #KEYS"
        )
        # Keep the greatest watermark ever written: workers and replays may report older times.
        # Record decisions first-writer-wins: HSETNX per payment in its hash (``decision_key``);
        # where the field is already set (another attempt of the same payment decided first),
        # return the recorded value instead; then restart each written hash's TTL, once per hash.
        # KEYS: each payment's hash; ARGV: the TTL, then (id, record) per payment.
        self._record = client.register_script(
            "local out, seen = {}, {} for i, key in ipairs(KEYS) do local id = ARGV[2*i] "
            "if redis.call('HSETNX', key, id, ARGV[2*i+1]) == 1 then out[i] = false "
            "else out[i] = redis.call('HGET', key, id) end "
            "if not seen[key] then seen[key] = true redis.call('EXPIRE', key, ARGV[1]) end end return out"
        )
        # The records of ids (ARGV), each in its hash (KEYS, one per id): the lookup before deciding.
        self._find = client.register_script(
            "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, ARGV[i]) end return out"
        )
        self._advance = client.register_script(
            "local cur = tonumber(redis.call('GET', KEYS[1]) or '-1') "
            "if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end return 1"
        )

    def key(self, entity: str, entity_id: str) -> str:
        return f"{self.prefix}:feat:{{{entity}:{entity_id}}}"

    def decision_key(self, transaction_id: str, event_ts: float) -> str:
        """The hash that holds the decision recorded for a payment (its field is the transaction
        id): one of ``DECISION_BUCKETS`` by id, per ``DECISION_GENERATION_S`` of event time. The
        bucket is the hash tag, so on a cluster a bucket's generations share a slot."""
        return self._bucket_keys[decision_bucket(transaction_id)] + str(int(event_ts // DECISION_GENERATION_S))

    def decision_keys(self, transactions: Sequence[Transaction]) -> list[str]:
        """``decision_key`` of each payment (a batch's are computed once: read, then recorded)."""
        return [self.decision_key(t.transaction_id, t.event_ts) for t in transactions]

    def record_decisions(
        self, items: Sequence[tuple[Transaction, bytes]], ttl_s: int, keys: Sequence[str] | None = None
    ) -> list[bytes | None]:
        """Record (payment, encoded decision) pairs, first writer wins; each hash written lives
        ``ttl_s`` after its latest write, so a record lives at least ``ttl_s``. ``keys``: the
        payments' ``decision_keys`` where the caller has them (``BatchRead.decision_keys``).

        Returns, per item, None where this call recorded it, or the value recorded earlier (by
        another attempt of the same payment, on this scorer or another) where it did not. One
        round trip (on a cluster, a second one for the ids already recorded, which are rare)."""
        if not items:
            return []
        ids = [t.transaction_id for t, _ in items]
        keys = list(keys) if keys is not None else self.decision_keys([t for t, _ in items])
        payloads = [payload for _, payload in items]
        if not self.cluster:
            args: list[Any] = [ttl_s]
            for txn_id, payload in zip(ids, payloads, strict=True):
                args += (txn_id, payload)
            found = self._run_record(keys, args)
            # A value equal to ours is our own write (a command sent again after its connection
            # failed): the payload holds the decision time to the microsecond.
            return [None if raw == payload else raw for raw, payload in zip(found, payloads, strict=True)]
        pipe = self.client.pipeline()
        for key, txn_id, payload in zip(keys, ids, payloads, strict=True):
            pipe.hsetnx(key, txn_id, payload)
        for key in dict.fromkeys(keys):
            pipe.expire(key, ttl_s)
        recorded = pipe.execute()[: len(keys)]
        lost = [i for i, ok in enumerate(recorded) if not ok]
        earlier = dict(zip(lost, self._find_cluster([keys[i] for i in lost], [ids[i] for i in lost]), strict=True))
        return [earlier.get(i) for i in range(len(keys))]

    def find_decisions(
        self, transactions: Sequence[Transaction], keys: Sequence[str] | None = None
    ) -> list[bytes | None]:
        """The decisions recorded for these payments (None where there is none), in order;
        ``keys``: their ``decision_keys``, where the caller has them."""
        if not transactions:
            return []
        keys = list(keys) if keys is not None else self.decision_keys(transactions)
        ids = [t.transaction_id for t in transactions]
        if self.cluster:
            return self._find_cluster(keys, ids)
        if self._wire is not None:
            return self._run_script(self._find, keys, ids)
        return list(self._find(keys=keys, args=ids))

    def _find_cluster(self, keys: list[str], ids: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        pipe = self.client.pipeline()
        for key, txn_id in zip(keys, ids, strict=True):
            pipe.hget(key, txn_id)
        return pipe.execute()

    def _run_record(self, keys: list[str], args: list[Any]) -> list[bytes | None]:
        if self._wire is None:
            return list(self._record(keys=keys, args=args))
        return self._run_script(self._record, keys, args)

    def _run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return self._wire.execute(*command)
        except redis.ResponseError as exc:
            self._load_missing_scripts(exc, script)
            return self._wire.execute(*command)

    def _load_missing_scripts(self, exc: redis.ResponseError, *scripts: Any) -> None:
        """After a NOSCRIPT reply to a hand-framed script call (a new or restarted server), load the
        scripts so the call can be sent again; any other error reply is raised."""
        if not str(exc).startswith("NOSCRIPT"):
            raise exc
        for script in scripts:
            self.client.script_load(script.script)

    def write_states(
        self,
        states: Iterable[tuple[str, str, EntityState | bytes]],
        newest_ts: float | None,
        transactions: int = 0,
        labels: int = 0,
    ) -> int:
        """Write whole entity states in one pipeline, advance the watermark, count progress.

        Args:
            states: (entity, entity id, state or its ``pack_state`` bytes); a later item for a key
                wins. The stream packs on its own thread and writes on another (the state changes).
            newest_ts: newest transaction event time among the events these states include.
            transactions, labels: how many of each the batch applied (progress counters that
                operators and the paced gateway read; not used by any feature).
        """
        if self.cluster:
            return self._write_states_cluster(states, newest_ts, transactions, labels)
        chunks: list[tuple[list[str], list[bytes | int]]] = []
        keys: list[str] = []
        values: list[bytes | int] = []
        n = 0
        for entity, entity_id, state in states:
            n += 1
            keys.append(self.key(entity, entity_id))
            values += (_packed(state), STATE_TTL_S[entity])
            if len(keys) == WRITE_CHUNK:
                chunks.append((keys, values))
                keys, values = [], []
        if keys:
            chunks.append((keys, values))
        if self._wire is not None:
            self._write_by_wire(self._wire, chunks, newest_ts, transactions, labels)
            return n
        pipe = self.client.pipeline(transaction=False)
        for chunk_keys, chunk_values in chunks:
            self._set_many(keys=chunk_keys, args=chunk_values, client=pipe)
        if newest_ts is not None:
            self._advance(keys=[self._watermark_key], args=[repr(newest_ts)], client=pipe)
        self._count_progress(pipe, transactions, labels)
        pipe.execute()
        return n

    def _write_by_wire(
        self,
        wire: RedisWire,
        chunks: list[tuple[list[str], list[bytes | int]]],
        newest_ts: float | None,
        transactions: int,
        labels: int,
    ) -> None:
        """``write_states``' pipeline framed by hand: the script calls by their SHA, loaded first
        when the server does not know them (a new or restarted Redis)."""
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", self._set_many.sha, len(keys), *keys, *values) for keys, values in chunks
        ]
        if newest_ts is not None:
            commands.append(("EVALSHA", self._advance.sha, 1, self._watermark_key, repr(newest_ts)))
        for field, count in (("events", transactions), ("labels", labels)):
            if count:
                commands.append(("HINCRBY", self._counter_key, field, count))
        try:
            wire.pipeline(commands)
        except redis.ResponseError as exc:
            self._load_missing_scripts(exc, self._set_many, self._advance)
            # Only the script calls again: the counters were incremented, and the state writes and
            # the watermark's compare-and-set are idempotent whichever of them ran.
            wire.pipeline([c for c in commands if c[0] == "EVALSHA"])

    def _write_states_cluster(
        self,
        states: Iterable[tuple[str, str, EntityState | bytes]],
        newest_ts: float | None,
        transactions: int,
        labels: int,
    ) -> int:
        writes = {
            self.key(entity, entity_id): (_packed(state), STATE_TTL_S[entity]) for entity, entity_id, state in states
        }
        try:
            for node, slots in self._by_node(list(writes)):
                pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
                for key in (k for slot_keys in slots.values() for k in slot_keys):
                    pipe.execute_command("SET", key, writes[key][0], "EX", writes[key][1])
                pipe.execute()
        except redis.ResponseError:  # a stale slot map: the cluster client refreshes it (SETs are idempotent)
            pipe = self.client.pipeline()
            for key, (value, ttl) in writes.items():
                pipe.set(key, value, ex=ttl)
            pipe.execute()
        pipe = self.client.pipeline()
        self._count_progress(pipe, transactions, labels)
        pipe.execute()
        # After the states, so the watermark never runs ahead of what readers can see. redis-py's
        # cluster pipeline takes no scripts: the watermark's compare-and-set is its own call.
        if newest_ts is not None:
            self._advance(keys=[self._watermark_key], args=[repr(newest_ts)])
        return len(writes)

    def _count_progress(self, pipe: redis.client.Pipeline, transactions: int, labels: int) -> None:
        if transactions:
            pipe.hincrby(self._counter_key, "events", transactions)
        if labels:
            pipe.hincrby(self._counter_key, "labels", labels)

    def count(self, field: str, n: int = 1) -> None:
        """Progress counters of the stream (events applied, dead letters) for operators and tests."""
        self.client.hincrby(self._counter_key, field, n)

    def counts(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(self._counter_key).items()}

    def watermark(self) -> float | None:
        raw = self.client.get(self._watermark_key)
        return float(raw) if raw is not None else None

    def read_states(self, keys: Sequence[tuple[str, str]]) -> tuple[dict[tuple[str, str], bytes], float | None]:
        """Packed states for the given (entity, id) keys, plus the stream watermark, in one round trip."""
        *raws, watermark = self._mget([*(self.key(e, i) for e, i in keys), self._watermark_key])
        states = {k: raw for k, raw in zip(keys, raws, strict=True) if raw is not None}
        return states, float(watermark) if watermark is not None else None

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        # One MGET, not a pipeline of GETs: redis-py's cost is per command (STACK-NOTES). A cluster
        # takes one MGET per slot (``_mget_cluster``).
        if self._wire is not None:
            return self._wire.execute("MGET", *keys)
        return self._mget_cluster(keys) if self.cluster else self.client.mget(keys)

    def _mget_cluster(self, keys: list[str]) -> list[bytes | None]:
        """One MGET per slot, sent as a plain pipeline per master: about half the client CPU of
        redis-py's cluster pipeline (``mget_nonatomic``), which is the fallback when the slot map
        is stale (a MOVED or ASK during resharding, a failover): it refreshes the map and retries."""
        found: dict[str, bytes | None] = {}
        try:
            for node, slots in self._by_node(keys):
                pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
                for slot_keys in slots.values():
                    pipe.execute_command("MGET", *slot_keys)
                for slot_keys, values in zip(slots.values(), pipe.execute(), strict=True):
                    found.update(zip(slot_keys, values, strict=True))
        except redis.ResponseError:
            return self.client.mget_nonatomic(keys)
        return [found[k] for k in keys]

    def _by_node(self, keys: list[str]) -> Iterable[tuple[ClusterNode, dict[int, list[str]]]]:
        """The keys grouped by the master that holds their slot (per the client's slot map), then by slot."""
        by_node: dict[str, tuple[ClusterNode, dict[int, list[str]]]] = {}
        slot_node = self.client.nodes_manager.get_node_from_slot
        for key in keys:
            slot = key_slot(key.encode())
            node = slot_node(slot)
            by_node.setdefault(node.name, (node, {}))[1].setdefault(slot, []).append(key)
        return by_node.values()

    def server_run_ids(self) -> frozenset[str]:
        """The run ids of the servers holding the store (every master of a cluster): a new one
        means a server restarted, and with no persistence its keys are gone."""
        if not self.cluster:
            return frozenset({self.client.info("server")["run_id"]})
        infos = self.client.info("server", target_nodes=RedisCluster.PRIMARIES)
        # A cluster of one master answers for itself, not per node.
        return frozenset(i["run_id"] for i in (infos.values() if "run_id" not in infos else [infos]))

    def memory_used_bytes(self) -> int:
        """Memory the servers holding the store use, summed over every master of a cluster."""
        if not self.cluster:
            return int(self.client.info("memory")["used_memory"])
        infos = self.client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return sum(int(i["used_memory"]) for i in (infos.values() if "used_memory" not in infos else [infos]))

    def read_batch(self, transactions: Sequence[Transaction], look_up: Sequence[Transaction] = ()) -> BatchRead:
        """The batch's entity states, the watermark and the decisions recorded for the payments
        ``look_up``, in one round trip on one server (an ``MGET`` and the lookup script,
        pipelined: the idempotency lookup rides on the feature read)."""
        entities = batch_entities(transactions)
        mget = [*(self.key(e, i) for e, i in entities.keys), self._watermark_key]
        hashes = self.decision_keys(look_up)
        if self._wire is not None and look_up:
            values, found = self._read_with_lookup(mget, look_up, hashes)
        else:
            values, found = self._mget(mget), self.find_decisions(look_up, hashes)
        watermark = values.pop()
        states = [b"" if raw is None else raw for raw in values]
        return BatchRead(entities, states, float(watermark) if watermark is not None else None, found, hashes)

    def _read_with_lookup(
        self, mget: list[str], look_up: Sequence[Transaction], hashes: list[str]
    ) -> tuple[list[bytes | None], list[bytes | None]]:
        """The ``MGET``'s values and the lookup's, sent in one write."""
        ids = [t.transaction_id for t in look_up]
        commands = [("MGET", *mget), ("EVALSHA", self._find.sha, len(hashes), *hashes, *ids)]
        try:
            values, found = self._wire.pipeline(commands)
        except redis.ResponseError as exc:
            self._load_missing_scripts(exc, self._find)
            values, found = self._wire.pipeline(commands)
        return values, found

    def features_for_batch(self, transactions: Sequence[Transaction], read: BatchRead | None = None) -> BatchFeatures:
        """Point-in-time features for a batch, as the offline builder would compute them.

        The payments are read in event order and each counts in the windows of the later ones on
        the same card, merchant or device (``streaming.batch_features``), so two payments on one
        card in one batch see each other exactly as they would in a replay of the log. ``read``:
        the batch already read (``read_batch``; for a part of it, ``BatchRead.of_payments``);
        None reads it.
        """
        if read is None:
            read = self.read_batch(transactions)
        ts = [t.event_ts for t in transactions]  # once: each is a datetime conversion
        order = in_event_order(transactions, ts)
        event_ts = np.array(ts, dtype=np.float64)
        matrix = np.empty((len(transactions), len(MODEL_FEATURES)), dtype=np.float64)
        matrix[order] = entity_feature_matrix(
            [transactions[i] for i in order], read.entities.index[:, order], read.states, event_ts=event_ts[order]
        )
        return BatchFeatures(matrix, read.watermark, event_ts)
