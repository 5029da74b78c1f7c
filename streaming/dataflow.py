"""The bytewax dataflow that keeps the online feature store current.

    transactions -> validate a batch -+-> invalid ------------------------------+-> dead-letter (reason)
                                      +-> by card shard: admission -+-> late ---+
                                                                    +-> duplicate: counted, dropped
                                                                    +-> admitted -> by entity shard --+
    labels -> validate a batch -> by entity shard (the merchant) -------------------------------------+
                                                                                                      v
                          per entity shard: EntityState of each card/customer/merchant/device -> Redis:
                          whole state per entity, one script call per 500 entities per batch

This is the only module that imports bytewax (STACK-NOTES: the project is community-maintained
now; keep the surface small so it can be swapped). State is grouped into shards
(``streaming.shards``) processed a batch at a time, not one dataflow key per entity: bytewax's
per-item cost made four keyed updates per payment the bottleneck. Windows are time buckets, not
bytewax's windowing operators, which are too slow at card cardinality.

Exactly-once effect in Redis: with recovery on, bytewax snapshots the operator state and the Kafka
offsets together; after a crash it resumes from the last snapshot and replays the events after it.
The state is a deterministic function of the admitted events, and Redis holds whole states
written with SET, so the replay rewrites the same values instead of adding to them. The sink writes
behind the flow, so a resumed shard first rewrites all its states (``_EntityLogic``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import bytewax.operators as op
import numpy as np
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from prometheus_client import Counter

from deploy.lag import ConsumerLag, ProcessedOffsetsLag
from schema import InvalidEvent, Label, Transaction, dead_letter, decode_label, decode_transaction, encode
from streaming.admission import DEFAULT_ALLOWED_LATENESS_S, Admission, late_reason
from streaming.admission import warm_up as warm_up_admission
from streaming.checkpoints import BASE_EVERY, BASES_DIR, BaseFiles, ShardLog, restore
from streaming.entity_table import warm_up
from streaming.metrics import StreamMetrics
from streaming.offline import label_entity_ids
from streaming.online import STATE_TTL_S, STORE_ERRORS, OnlineFeatureStore, connect_redis
from streaming.recovery_registry import PartitionRegistry
from streaming.shards import AdmissionShard, EntityShard, ShardInput, ShardRouter, merge_inputs

log = logging.getLogger(__name__)

RawMessage = KafkaSourceMessage[bytes | None, bytes | None]
Letter = KafkaSinkMessage[bytes | None, bytes]
T = TypeVar("T")


@dataclass(frozen=True)
class StreamConfig:
    kafka_bootstrap: str
    redis_url: str
    transactions_topic: str = "transactions"
    labels_topic: str = "labels"
    dead_letter_topic: str = "dead-letter"
    key_prefix: str = "fraud"
    allowed_lateness_s: float = DEFAULT_ALLOWED_LATENESS_S
    # The stream's own consumer settings; offsets live in bytewax recovery state, not Kafka.
    kafka_batch_size: int = 1000
    fetch_min_bytes: int = 1_000_000
    fetch_wait_ms: int = 50
    # State shards (see streaming.shards); fixed for the life of a recovery store. They bound the
    # workers that can share the stream; each costs a call per batch in every step that holds it
    # (8 instead of 16: freshness p99 0.58-0.63 -> 0.38 s with two processes at 10,000/s).
    shards: int = 8
    # How often fraud_kafka_consumer_lag{consumer="feature-stream"} asks the broker for high watermarks.
    lag_refresh_s: float = 5.0


class Sourced(NamedTuple):
    """A valid transaction and where it was read from (for a dead letter, should it be late)."""

    txn: Transaction
    topic: str
    partition: int
    offset: int


def _letter(reason: str, msg: RawMessage | None, payload: bytes, source: tuple[str, int, int] | None = None) -> Letter:
    topic, partition, offset = source or (msg.topic or "", _or(msg.partition), _or(msg.offset))
    letter = dead_letter(reason, topic, partition, offset, payload)  # cut to a size the topic takes
    return KafkaSinkMessage(key=msg.key if msg is not None else None, value=encode(letter))


def _decode_live(raw: bytes) -> Transaction:
    return decode_transaction(raw, now=time.time())


def _or(value: int | None) -> int:
    return value if value is not None else -1


class _Steps:
    """The per-batch logic of the flow, with the metrics it counts."""

    def __init__(self, config: StreamConfig, metrics: StreamMetrics) -> None:
        self.config = config
        self.metrics = metrics
        # Offsets live in bytewax recovery state, not in a Kafka group: the lag is computed from the
        # offsets validated here against high watermarks fetched off the stream's path.
        self.lag = ProcessedOffsetsLag(
            ConsumerLag(metrics.consumer_lag, "feature-stream"), config.kafka_bootstrap, config.lag_refresh_s
        )
        self.router = ShardRouter(config.shards)

    def _note_offsets(self, topic: str, msgs: list[RawMessage]) -> None:
        """The newest offset per partition of a batch read from ``topic`` (one dict store per
        message, under 1% of validating it)."""
        last: dict[int | None, int | None] = {}
        for msg in msgs:
            last[msg.partition] = msg.offset
        for partition, offset in last.items():
            if partition is not None and offset is not None:
                self.lag.processed(topic, partition, offset)

    def _decode(self, msg: RawMessage, decode: Callable[[bytes], T], seen: Counter) -> T | Letter:
        """The decoded event, or its dead letter (counted in ``seen`` and as a dead letter)."""
        try:
            if msg.value is None:
                raise InvalidEvent("empty message (no value)")
            return decode(msg.value)
        except InvalidEvent as exc:
            seen.labels("invalid").inc()
            self.metrics.dead_letters.labels("invalid").inc()
            return _letter(str(exc), msg, msg.value or b"")

    def validate_transaction(self, msg: RawMessage) -> Sourced | Letter:
        # The wall clock bounds how far ahead event time may run (schema.MAX_AHEAD_S): one payment
        # dated years ahead would otherwise make every later payment of its card late. A replay
        # after a restart reads a later clock, so it refuses nothing that the first run admitted.
        txn = self._decode(msg, _decode_live, self.metrics.transactions)
        if isinstance(txn, Transaction):
            return Sourced(txn, msg.topic or "", _or(msg.partition), _or(msg.offset))
        return txn

    def transactions_by_card_shard(
        self, msgs: list[RawMessage]
    ) -> list[Letter | tuple[str, tuple[str, list[Sourced]]]]:
        """Validate a batch; dead letters for the invalid, the valid grouped by their card's shard
        (keyed by it, and named in the value too: the shard logs its changes under its name)."""
        self._note_offsets(self.config.transactions_topic, msgs)
        out: list[Letter | tuple[str, tuple[str, list[Sourced]]]] = []
        groups: dict[str, list[Sourced]] = {}
        for msg in msgs:
            item = self.validate_transaction(msg)
            if isinstance(item, Sourced):
                groups.setdefault(self.router.card(item.txn.card_id), []).append(item)
            else:
                out.append(item)
        out.extend((self.router.key(shard), (shard, items)) for shard, items in groups.items())
        return out

    def labels_by_entity_shard(self, msgs: list[RawMessage]) -> list[Letter | tuple[str, ShardInput]]:
        self._note_offsets(self.config.labels_topic, msgs)
        out: list[Letter | tuple[str, ShardInput]] = []
        groups: dict[str, ShardInput] = {}
        for msg in msgs:
            label = self._decode(msg, decode_label, self.metrics.labels)
            if not isinstance(label, Label):
                out.append(label)
                continue
            entities = label_entity_ids(label, None)
            self.metrics.labels.labels("applied" if entities else "unattributed").inc()
            for entity, entity_id in entities.items():
                shard = self.router.entity(entity, entity_id)
                groups.setdefault(shard, ShardInput(shard, {}, [])).labels.append((entity, entity_id, label))
        out.extend((self.router.key(shard), item) for shard, item in groups.items())
        return out

    def admitted_by_entity_shard(
        self, keyed: tuple[str, tuple[list[Transaction], list[Letter]]]
    ) -> list[Letter | tuple[str, ShardInput]]:
        """Each admitted payment to the shard of each entity it touches (``ShardRouter.route_payments``)."""
        _, (admitted, letters) = keyed
        routed = self.router.route_payments(admitted)
        return [*letters, *((self.router.key(shard), item) for shard, item in routed.items())]


# The worker forgets a key after as long without events as Redis keeps it: by then every window of
# it is empty, so memory stays flat on an endless stream whose cards come and go.
WORKER_IDLE_TTL_S = float(max(STATE_TTL_S.values()))
IDLE_SWEEP_S = 3600.0


class _ShardLogic(StatefulBatchLogic[Any, Any, bytes]):
    """bytewax adapter for a shard of ``kind``: incremental snapshots (``streaming.checkpoints``)
    when ``bases`` says where base files go; without it (recovery off: bytewax still asks for
    snapshots, and nothing keeps them) empty ones. Sweeps idle keys hourly."""

    kind: type[AdmissionShard] | type[EntityShard]

    def __init__(self, resume: bytes | None, bases: BaseFiles | None, metrics: StreamMetrics, step: str) -> None:
        self.log: ShardLog | None = None
        if resume is not None:
            if bases is None:
                raise ValueError(f"resuming a {step} shard needs its base files (the recovery directory)")
            self.shard, self.log = restore(bases, resume, self.kind, time.time())
        else:
            self.shard = self.kind()
            self.log = ShardLog(bases) if bases is not None else None
        self._next_sweep = datetime.now(UTC) + timedelta(seconds=IDLE_SWEEP_S)
        self._snapshot_seconds = metrics.snapshot_seconds.labels(step)
        self._snapshot_bytes = metrics.snapshot_bytes.labels(step)
        self._base_seconds = metrics.snapshot_base_seconds.labels(step)

    def sweep(self) -> None:
        forgotten = self.shard.forget_idle(WORKER_IDLE_TTL_S)
        if forgotten and self.log is not None and self.log.shard is not None:
            self.log.record(self.log.shard, self.forgotten_entry(forgotten))
        self._next_sweep = datetime.now(UTC) + timedelta(seconds=IDLE_SWEEP_S)

    def forgotten_entry(self, forgotten: Any) -> bytes:
        raise NotImplementedError

    def going_on(self) -> None:
        """The flow goes on from its snapshots (a batch): their bases may be written now."""
        if self.log is not None:
            self.log.files.release()

    def on_notify(self) -> tuple[list[Any], bool]:
        self.sweep()
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return self._next_sweep

    def snapshot(self) -> bytes:
        started = time.perf_counter()
        raw = self.log.snapshot(self.shard) if self.log is not None else b""
        self._snapshot_seconds.inc(time.perf_counter() - started)
        self._snapshot_bytes.inc(len(raw))
        if self.log is not None:
            self._base_seconds.inc(self.log.take_base_seconds())
        return raw


class _AdmissionLogic(_ShardLogic):
    kind = AdmissionShard
    shard: AdmissionShard

    def __init__(self, steps: _Steps, resume: bytes | None, bases: BaseFiles | None) -> None:
        super().__init__(resume, bases, steps.metrics, "admission")
        self.steps = steps

    def on_batch(self, groups: list[tuple[str, list[Sourced]]]) -> tuple[list[Any], bool]:
        self.going_on()
        lateness = self.steps.config.allowed_lateness_s
        metrics = self.steps.metrics
        items = [item for _, group in groups for item in group]
        txns = [item.txn for item in items]
        columns = [t.card_id for t in txns], [t.transaction_id for t in txns], [t.event_ts for t in txns]
        verdicts = self.shard.admit_batch(*columns, lateness, time.time())
        admitted: list[Transaction] = []
        letters: list[Letter] = []
        for item, verdict in zip(items, verdicts, strict=True):
            if verdict is Admission.ADMITTED:
                admitted.append(item.txn)
            elif verdict is Admission.LATE:
                reason = late_reason(self.shard.newest_ts(item.txn.card_id), item.txn, lateness)
                metrics.dead_letters.labels("late").inc()
                letters.append(_letter(reason, None, encode(item.txn), (item.topic, item.partition, item.offset)))
        for verdict in Admission:
            if n := verdicts.count(verdict):
                metrics.transactions.labels(verdict.value).inc(n)
        if self.log is not None and admitted:
            if len(admitted) < len(txns):  # the log holds only what changed the state
                columns = (
                    [t.card_id for t in admitted],
                    [t.transaction_id for t in admitted],
                    [t.event_ts for t in admitted],
                )
            self.log.record(groups[0][0], AdmissionShard.log_entry(*columns, lateness, []))
        return [(admitted, letters)], StatefulBatchLogic.RETAIN

    def forgotten_entry(self, forgotten: list[str]) -> bytes:
        return AdmissionShard.log_entry([], [], [], self.steps.config.allowed_lateness_s, forgotten)


class ShardUpdate(NamedTuple):
    states: list[tuple[str, str, bytes]]  # (entity, id, its state after the batch, packed: ``pack_state``)
    event_times: list[float]  # of the transactions applied (each once, by its card)
    labels: int


class StoreResync:
    """Asks every entity shard to write all its states again (a Redis that came back empty).

    Shared by the sink, which notices the restart, and the shard logics of the same process,
    which re-emit everything on their next batch. Whole-state writes make the rewrite idempotent.
    """

    def __init__(self) -> None:
        self.generation = 0

    def request(self) -> None:
        self.generation += 1


class _EntityLogic(_ShardLogic):
    """An entity shard: applies batches, hands the changed states packed to the sink."""

    kind = EntityShard
    shard: EntityShard

    def __init__(
        self, resume: bytes | None, resync: StoreResync, metrics: StreamMetrics, bases: BaseFiles | None
    ) -> None:
        super().__init__(resume, bases, metrics, "entity_state")
        self.resync = resync
        # Resumed from a snapshot: every state is written again on the first batch (or within
        # RESYNC_POLL_S), because the sink writes behind the flow and the batches still waiting at
        # a crash may have been counted in the snapshot without reaching Redis.
        self._generation = resync.generation if resume is None else -1

    def on_batch(self, groups: list[ShardInput]) -> tuple[list[Any], bool]:
        self.going_on()
        batch = merge_inputs(groups) if groups else ShardInput("", {}, [])
        changed = self.shard.apply([batch], time.time())
        if self.log is not None and groups:
            self.log.record(batch.shard, EntityShard.log_entry(batch))
        if self._generation != self.resync.generation:
            self._generation = self.resync.generation
            packed = self.shard.pack_all()
        else:
            # Packed here, as of this batch: the next batch changes the shard in place while the
            # sink is still sending these.
            packed = self.shard.pack(changed)
        event_times: list[float] = []  # each payment once, by its card
        for group in groups:
            if "card" in group.payments:
                event_times += group.payments["card"].event_ts
        labels = sum(len(group.labels) for group in groups)
        return [ShardUpdate(packed, event_times, labels)], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        # Woken every few seconds as well as for the hourly sweep, so a shard that sees no events
        # still rewrites its states soon after a Redis restart.
        return min(self._next_sweep, datetime.now(UTC) + timedelta(seconds=RESYNC_POLL_S))

    def on_notify(self) -> tuple[list[Any], bool]:
        out: list[Any] = []
        if self._generation != self.resync.generation:
            self._generation = self.resync.generation
            out = [ShardUpdate(self.shard.pack_all(), [], 0)]
        if datetime.now(UTC) >= self._next_sweep:
            self.sweep()
        return out, StatefulBatchLogic.RETAIN

    def forgotten_entry(self, forgotten: dict[str, list[str]]) -> bytes:
        return EntityShard.log_entry(ShardInput("", {}, []), forgotten) or b""


RESYNC_POLL_S = 5.0


class _RedisStatePartition(StatelessSinkPartition[tuple[str, ShardUpdate]]):
    """Writes whole entity states; waits out a Redis outage instead of crashing the flow.

    The states arrive packed (by the shards, on the flow's thread) and are sent by a writer thread
    (``_BackgroundWrites``), so the flow computes the next batch while Redis applies this one:
    waiting for Redis took ~20% of a worker that was falling behind at 8,000/s (`fraud
    bench-stream`). At most ``WRITES_IN_FLIGHT`` batches wait; beyond that the flow waits too.

    While Redis is away the write is retried with backoff (the flow stalls, Kafka keeps the input,
    memory stays flat). If Redis came back with a new ``run_id`` (restarted, probably empty), every
    shard is asked to rewrite all its states. The run_id is also checked every
    ``RESTART_CHECK_S``, so a restart between two writes is noticed too.
    """

    def __init__(self, store: OnlineFeatureStore, metrics: StreamMetrics, resync: StoreResync) -> None:
        self.store = store
        self.metrics = metrics
        self.resync = resync
        self._run_id: frozenset[str] | None = None
        self._next_check = 0.0
        self._writes = _BackgroundWrites(self._send, WRITES_IN_FLIGHT)
        self._last_batch_at: float | None = None

    def write_batch(self, items: list[tuple[str, ShardUpdate]]) -> None:
        now = time.monotonic()
        if self._last_batch_at is not None:
            self.metrics.batch_intervals.observe(now - self._last_batch_at)
        self._last_batch_at = now
        packed: list[tuple[str, str, bytes]] = []
        event_times: list[float] = []
        labels = 0
        for _, update in items:
            packed += update.states  # a later state of a key is written after, and wins
            event_times += update.event_times
            labels += update.labels
        self._writes.submit((packed, event_times, labels))

    def flush(self) -> None:
        """Wait until every batch handed over so far is in Redis."""
        self._writes.drain()

    def _send(self, batch: tuple[list[tuple[str, str, bytes]], list[float], int]) -> None:
        packed, event_times, labels = batch
        self._write(packed, event_times, labels)
        if event_times:
            self.metrics.freshness.observe_many(np.maximum(time.time() - np.asarray(event_times), 0.0))
        self.metrics.redis_writes.inc(len(packed))

    def _write(self, packed: list[tuple[str, str, bytes]], event_times: list[float], labels: int) -> None:
        backoff = 0.05
        while True:
            try:
                if time.monotonic() >= self._next_check:
                    self._check_restart()
                newest = max(event_times, default=None)
                self.store.write_states(packed, newest, transactions=len(event_times), labels=labels)
                return
            except STORE_ERRORS as exc:
                self.metrics.store_retries.inc()
                log.warning("Redis unavailable (%s: %s); retrying in %.2f s", type(exc).__name__, exc, backoff)
                self._next_check = 0.0  # check for a restart as soon as it answers
                time.sleep(backoff)
                backoff = min(backoff * 2, STORE_RETRY_MAX_S)

    def _check_restart(self) -> None:
        run_id = self.store.server_run_ids()
        if self._run_id is not None and run_id != self._run_id:
            log.warning("Redis restarted (run ids %s -> %s): rewriting every entity state", self._run_id, run_id)
            self.metrics.store_resyncs.inc()
            self.resync.request()
        self._run_id = run_id
        self._next_check = time.monotonic() + RESTART_CHECK_S

    def close(self) -> None:
        self._writes.close()
        self.store.client.close()


class _BackgroundWrites:
    """One thread that sends the sink's batches in the order they were handed over.

    A batch that fails with anything but a Redis outage (which ``_RedisStatePartition`` retries)
    is a bug: it is raised in the flow's thread on the next hand-over, so the worker stops as it
    would have without the thread.
    """

    def __init__(self, send: Callable[[Any], None], in_flight: int) -> None:
        self._send = send
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=in_flight)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="redis-state-writes", daemon=True)
        self._thread.start()

    def submit(self, batch: Any) -> None:
        self._raise_failure()
        self._queue.put(batch)  # blocks while ``in_flight`` batches wait: the flow keeps Redis' pace

    def drain(self) -> None:
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_failure()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is _STOP:
                    return
                if self._failure is None:  # after a failure nothing more is sent: order matters
                    self._send(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow's thread
                self._failure = exc
            finally:
                self._queue.task_done()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError("writing entity states to Redis failed") from self._failure


_STOP = object()
WRITES_IN_FLIGHT = 2


STORE_RETRY_MAX_S = 2.0
RESTART_CHECK_S = 5.0


class RedisStateSink(DynamicSink[tuple[str, ShardUpdate]]):
    def __init__(self, redis_url: str, key_prefix: str, metrics: StreamMetrics, resync: StoreResync) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.metrics = metrics
        self.resync = resync

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisStatePartition:
        # Timeouts, so a hung Redis is an error to retry rather than a worker blocked forever.
        client = connect_redis(self.redis_url, socket_timeout=5.0, connect_timeout=2.0)
        return _RedisStatePartition(OnlineFeatureStore(client, self.key_prefix), self.metrics, self.resync)


def _is_letter(item: object) -> bool:
    return isinstance(item, KafkaSinkMessage)


def build_flow(
    config: StreamConfig, metrics: StreamMetrics | None = None, recovery: Recovery | None = None
) -> Dataflow:
    """The feature dataflow for ``config``; run it with ``run_flow`` (with ``recovery``, whose
    directory also holds the shards' base and log files)."""
    metrics = metrics or StreamMetrics()
    steps = _Steps(config, metrics)
    flow = Dataflow("fraud-features")
    kafka = {
        "brokers": [config.kafka_bootstrap],
        "tail": True,
        "batch_size": config.kafka_batch_size,
        # Fetch in chunks rather than message by message: the broker's cost is per fetch request
        # (tansu: ~75% of a core to serve 4k msg/s to a tailing consumer with librdkafka's defaults,
        # ~23% with these). Each partition's fetch returns after fetch_wait_ms unless 1 MB is
        # waiting, so a payment waits up to that long to be read: at 10,000/s over 4 partitions,
        # 200 ms made freshness p50 0.49 s, 50 ms 0.23 s, for ~8% more of a core in the broker.
        "add_config": {"fetch.min.bytes": str(config.fetch_min_bytes), "fetch.wait.max.ms": str(config.fetch_wait_ms)},
    }

    transactions = kop.input("transactions", flow, topics=[config.transactions_topic], **kafka)
    checked = op.branch(
        "invalid", op.flat_map_batch("validate", transactions.oks, steps.transactions_by_card_shard), _is_letter
    )
    bases = recovery.directory / BASES_DIR if recovery is not None else None
    base_every = recovery.base_every if recovery is not None else BASE_EVERY
    admission_bases = BaseFiles(bases / "admission", base_every) if bases is not None else None
    judged = op.stateful_batch(
        "admission", checked.falses, lambda resume: _AdmissionLogic(steps, resume, admission_bases)
    )
    routed = op.branch("late", op.flat_map("by_entity", judged, steps.admitted_by_entity_shard), _is_letter)

    labels = kop.input("labels", flow, topics=[config.labels_topic], **kafka)
    label_checked = op.branch(
        "invalid_label", op.flat_map_batch("validate_labels", labels.oks, steps.labels_by_entity_shard), _is_letter
    )

    dead = op.merge("dead", checked.trues, routed.trues, label_checked.trues)
    kop.output("dead_letters", dead, brokers=[config.kafka_bootstrap], topic=config.dead_letter_topic)
    entity_events = op.merge("entity_events", routed.falses, label_checked.falses)
    resync = StoreResync()
    entity_bases = BaseFiles(bases / "entity_state", base_every) if bases is not None else None
    states = op.stateful_batch(
        "entity_state", entity_events, lambda resume: _EntityLogic(resume, resync, metrics, entity_bases)
    )
    op.output("online_store", states, RedisStateSink(config.redis_url, config.key_prefix, metrics, resync))
    return flow


RecoveryLayout = Literal["shared", "per-process"]
LAYOUT_SETTING = "FRAUD_STREAM_RECOVERY_LAYOUT"  # fraud/config.py: Settings.stream_recovery_layout


@dataclass(frozen=True)
class Recovery:
    """Where bytewax keeps snapshots, and how often it takes them.

    A snapshot stores operator state and Kafka offsets together; after a crash the flow resumes
    from the newest one and replays at most ``snapshot_interval_s`` of input.

    ``layout`` says who sees ``directory``. "shared": every process of the cluster sees this one
    directory, which holds the whole store (one partition), made once before they start. "per-process":
    each process has a directory of its own (a volume per pod) holding its own partition of a store
    of one partition per process; bytewax finds the partitions across the cluster on resume.
    """

    directory: Path
    snapshot_interval_s: float = 10.0
    layout: RecoveryLayout = "shared"
    base_every: int = BASE_EVERY  # a shard's base every this many snapshots (streaming.checkpoints)


class RecoveryStoreError(RuntimeError):
    """The recovery store cannot be resumed as configured; the message says why and what to do."""


MARKER = "stream.json"
_INPUTS = ("kafka_bootstrap", "transactions_topic", "labels_topic", "shards")
# The encoding of the shards' snapshots (``streaming.shards``): a store written in another cannot
# be decoded, so it is made afresh like one of other inputs. Raise it when an entity table, the
# admission table or a checkpoint changes shape. 2: bucket and distinct rows as one byte string each;
# 3: admission without ``oldest_recent_ts``; 4: zstd-compressed; 5: entity states as tables
# (``streaming.entity_table``); 6: the tables keyed by entity id; 7: shards as incremental
# checkpoints (``streaming.checkpoints``), admission as ``AdmissionTable``; 8: changes in log files,
# a base every few snapshots; 9: shards keyed by ``streaming.placement`` keys.
SNAPSHOT_FORMAT = 9


def _start_over(also: str = "") -> str:
    return (
        "To start over instead (the stream then reads Kafka again from the oldest offsets it keeps), delete the "
        f"recovery store of every stream process together (on Kubernetes: their recovery volumes, "
        f"deploy/k8s/README.md){also}."
    )


def prepare_recovery(
    recovery: Recovery,
    config: StreamConfig,
    cluster: Cluster | None = None,
    registry: PartitionRegistry | None = None,
) -> bool:
    """Create the recovery store, or keep the existing one if it belongs to this same stream.

    Recovery state holds Kafka offsets: resumed against another broker (an embedded one restarts
    empty) it would silently skip or misread the log, so a store made for other inputs is
    replaced (so is one made with another shard count: its state would sit in the wrong shards).
    Returns True when an existing store will be resumed.

    With the per-process layout this process creates (or keeps) only its own partition, and
    ``registry`` (required then) records which processes created one. What bytewax cannot resume
    correctly is refused with ``RecoveryStoreError``: another process count than the store was
    made for, a partition that was created and is gone (bytewax would resume without its state),
    a store of the other layout.
    """
    identity = {**{k: v for k, v in asdict(config).items() if k in _INPUTS}, "snapshot_format": SNAPSHOT_FORMAT}
    found = _read_marker(recovery.directory)
    if recovery.layout == "per-process":
        if registry is None:
            raise ValueError("the per-process recovery layout needs a PartitionRegistry")
        return _prepare_own_partition(recovery.directory, identity, cluster or Cluster(0, ("",)), registry, found)
    if found == identity:
        return True
    if found is not None and found.get("layout") == "per-process" and _inputs_of(found) == identity:
        raise RecoveryStoreError(
            f"{recovery.directory} holds partition {found['process_id']} of {found['processes']} of a per-process "
            f"recovery store, which the shared layout cannot resume: set {LAYOUT_SETTING}=per-process as when it was "
            f"made. {_start_over()}"
        )
    _build_store(recovery.directory, 1, 0, identity)
    return False


def _prepare_own_partition(
    directory: Path, identity: dict[str, Any], cluster: Cluster, registry: PartitionRegistry, found: dict | None
) -> bool:
    processes, me = len(cluster.addresses), cluster.process_id
    scope = _scope(identity, processes)
    if found is not None and _inputs_of(found) != identity:
        # Made for other inputs: replaced, as in the shared layout. Its creation is forgotten, so
        # that going back to those inputs later starts a store afresh rather than refusing.
        if found.get("layout") == "per-process":
            registry.unmark_created(_scope(_inputs_of(found), found["processes"]), found["process_id"])
        found = None
    if found is not None and found.get("layout") != "per-process":
        raise RecoveryStoreError(
            f"{directory} holds a recovery store of the shared layout (the whole store in one partition), which "
            f"{LAYOUT_SETTING}=per-process cannot resume: set {LAYOUT_SETTING}=shared as when it was made. "
            f"{_start_over()}"
        )
    if found is not None:
        if (found["processes"], found["process_id"]) != (processes, me):
            raise RecoveryStoreError(
                f"{directory} holds partition {found['process_id']} of a recovery store made for "
                f"{found['processes']} stream processes, one partition each ({LAYOUT_SETTING}=per-process), but "
                f"this is process {me} of {processes} (--process-id, --addresses). A store's partition count is "
                f"fixed: run {found['processes']} processes again to resume it. {_start_over()}"
            )
        if not (directory / f"part-{me}.sqlite3").exists():
            raise _lost(directory, me, registry, scope)
        store = registry.claim_store(scope, found["store"])
        if store != found["store"]:
            raise RecoveryStoreError(
                f"{directory} holds process {me}'s partition of recovery store {found['store']}, but "
                f"{registry.where(scope)} names store {store}: another process created a new partition while this "
                f"store exists (its volume lost while the record was gone too?). Partitions of two stores cannot "
                f"be resumed together. {_start_over(f', and {registry.where(scope)}')}"
            )
        # Once every process has created its partition, this marker says so: should the record be
        # lost (Redis flushed), this process records them all again, not only itself.
        registry.mark_created(scope, range(processes) if found.get("complete") else [me])
        if not found.get("complete") and registry.created(scope) >= set(range(processes)):
            written = directory / f".{MARKER}.new"
            written.write_text(json.dumps({**found, "complete": True}))
            written.replace(directory / MARKER)
        return True
    store = registry.claim_store(scope, uuid.uuid4().hex)
    if me in registry.created(scope):
        raise _lost(directory, me, registry, scope)
    marker = {**identity, "layout": "per-process", "processes": processes, "process_id": me, "store": store}
    _build_store(directory, processes, me, marker)
    registry.mark_created(scope, [me])  # after the partition exists: a crash before leaves it uncreated
    return False


def _lost(directory: Path, me: int, registry: PartitionRegistry, scope: str) -> RecoveryStoreError:
    return RecoveryStoreError(
        f"process {me}'s recovery partition is missing from {directory}, but {registry.where(scope)} records "
        f"that process {me} created it: its volume was lost or emptied. The other processes' partitions cannot "
        f"be resumed without it (bytewax would resume with its share of the state missing): restore the volume. "
        f"{_start_over(f', and {registry.where(scope)}')}"
    )


def _read_marker(directory: Path) -> dict | None:
    marker = directory / MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


def _inputs_of(marker: dict) -> dict[str, Any]:
    # A store from before the format was recorded has no "snapshot_format": its inputs are those
    # it was registered under (``_scope``), and they differ from any identity of today.
    return {k: marker.get(k) for k in (*_INPUTS, "snapshot_format") if k in _INPUTS or k in marker}


def _scope(identity: dict[str, Any], processes: int) -> str:
    key = json.dumps({**identity, "processes": processes}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _build_store(directory: Path, partitions: int, keep: int, marker: dict[str, Any]) -> None:
    """A new store of ``partitions`` partitions in ``directory`` (replacing what is there), of which
    only partition ``keep`` stays. Built beside it and renamed into place, marker included."""
    building = directory.with_name(f".{directory.name}.new")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    init_db_dir(building, partitions)
    for part in building.glob("part-*.sqlite3"):
        if part.name != f"part-{keep}.sqlite3":
            part.unlink()
    (building / MARKER).write_text(json.dumps(marker))
    shutil.rmtree(directory, ignore_errors=True)
    building.rename(directory)


@dataclass(frozen=True)
class Cluster:
    """This process's place in a bytewax cluster: every process runs the same flow, and bytewax
    routes each key to one worker, so per-card state stays in one place."""

    process_id: int
    addresses: tuple[str, ...]


def run_flow(flow: Dataflow, recovery: Recovery | None = None, cluster: Cluster | None = None) -> None:
    """Run the flow in this process until interrupted (Ctrl-C / SIGINT)."""
    # Millions of small long-lived state objects make CPython's cyclic GC the top cost (21% of a
    # worker's time, measured with py-spy). The state holds no reference cycles, so only the
    # youngest generation is collected (short-lived cycles still go), the older ones practically
    # never; bench-stream's RSS series would show a leak if that ever changed.
    gc.freeze()
    gc.set_threshold(100_000, 1_000_000, 1_000_000)
    warm_up()
    warm_up_admission()
    cli_main(
        flow,
        workers_per_process=1,
        process_id=cluster.process_id if cluster else None,
        addresses=list(cluster.addresses) if cluster else None,
        epoch_interval=timedelta(seconds=recovery.snapshot_interval_s) if recovery else None,
        recovery_config=RecoveryConfig(str(recovery.directory)) if recovery else None,
    )
