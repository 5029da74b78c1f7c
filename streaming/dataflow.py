"""The bytewax dataflow that keeps the online feature store current.

    transactions -> validate -+-> invalid ----------------------------------+-> dead-letter (reason)
                              +-> by card: admission -+-> late -------------+
                                                      +-> duplicate: counted, dropped (applied once already)
                                                      +-> admitted -> one copy per entity --+
    labels -> validate -> by merchant ------------------------------------------------------+
                                                                                            v
                             per entity key: EntityState (stateful_map) -> Redis: whole state per entity,
                                                                           one pipeline per batch

This is the only module that imports bytewax (STACK-NOTES: the project is community-maintained
now; keep the surface small so it can be swapped). Per-entity state uses ``stateful_map`` with
time buckets, not bytewax's windowing operators, which are too slow at card cardinality.

Exactly-once effect in Redis: with recovery on, bytewax snapshots the operator state and the Kafka
offsets together; after a crash it resumes from the last snapshot and replays the events after it.
The state is a deterministic function of the admitted events, and Redis holds whole states
written with SET, so the replay rewrites the same values instead of adding to them.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import bytewax.operators as op
import msgspec
import redis
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from schema import DeadLetter, InvalidEvent, Label, Transaction, decode_label, decode_transaction, encode
from streaming.admission import DEFAULT_ALLOWED_LATENESS_S, Admission, CardAdmission, admit, late_reason
from streaming.metrics import StreamMetrics
from streaming.offline import label_entity_ids
from streaming.online import STATE_TTL_S, OnlineFeatureStore
from streaming.windows import LAYOUTS, EntityState, apply_label, apply_transaction, decode_state, encode_state

RawMessage = KafkaSourceMessage[bytes | None, bytes | None]
Letter = KafkaSinkMessage[bytes | None, bytes]
EntityEvent = tuple[str, Transaction | Label]  # (entity, event)
StateUpdate = tuple[Transaction | Label, EntityState]  # (event, state after it)


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
    fetch_wait_ms: int = 200


class Sourced(NamedTuple):
    """A valid transaction and where it was read from (for a dead letter, should it be late)."""

    txn: Transaction
    topic: str
    partition: int
    offset: int


def _letter(reason: str, msg: RawMessage | None, payload: bytes, source: tuple[str, int, int] | None = None) -> Letter:
    topic, partition, offset = source or (msg.topic or "", _or(msg.partition), _or(msg.offset))
    letter = DeadLetter(
        reason=reason,
        source_topic=topic,
        partition=partition,
        offset=offset,
        payload=payload.decode("utf-8", errors="replace"),
        received_at=datetime.now(UTC),
    )
    return KafkaSinkMessage(key=msg.key if msg is not None else None, value=encode(letter))


def _or(value: int | None) -> int:
    return value if value is not None else -1


class _Steps:
    """The per-item logic of the flow, with the metrics it counts."""

    def __init__(self, config: StreamConfig, metrics: StreamMetrics) -> None:
        self.config = config
        self.metrics = metrics

    def validate_transaction(self, msg: RawMessage) -> Sourced | Letter:
        try:
            if msg.value is None:
                raise InvalidEvent("empty message (no value)")
            return Sourced(decode_transaction(msg.value), msg.topic or "", _or(msg.partition), _or(msg.offset))
        except InvalidEvent as exc:
            self.metrics.transactions.labels("invalid").inc()
            self.metrics.dead_letters.labels("invalid").inc()
            return _letter(str(exc), msg, msg.value or b"")

    def admission(
        self, state: CardAdmission | None, item: Sourced
    ) -> tuple[CardAdmission, tuple[Admission, Sourced, str | None]]:
        state = state or CardAdmission()
        verdict = admit(state, item.txn, self.config.allowed_lateness_s)
        self.metrics.transactions.labels(verdict.value).inc()
        reason = late_reason(state, item.txn, self.config.allowed_lateness_s) if verdict is Admission.LATE else None
        return state, (verdict, item, reason)

    def late_letter(self, keyed: tuple[str, tuple[Admission, Sourced, str | None]]) -> Letter:
        _, (_, item, reason) = keyed
        self.metrics.dead_letters.labels("late").inc()
        return _letter(reason or "late", None, encode(item.txn), (item.topic, item.partition, item.offset))

    def validate_label(self, msg: RawMessage) -> Label | Letter:
        try:
            if msg.value is None:
                raise InvalidEvent("empty message (no value)")
            return decode_label(msg.value)
        except InvalidEvent as exc:
            self.metrics.labels.labels("invalid").inc()
            self.metrics.dead_letters.labels("invalid").inc()
            return _letter(str(exc), msg, msg.value or b"")

    def label_items(self, label: Label) -> list[tuple[str, EntityEvent]]:
        entities = label_entity_ids(label, None)
        self.metrics.labels.labels("applied" if entities else "unattributed").inc()
        return [(f"{entity}:{entity_id}", (entity, label)) for entity, entity_id in entities.items()]


def _transaction_items(keyed: tuple[str, tuple[Admission, Sourced, str | None]]) -> list[tuple[str, EntityEvent]]:
    # One routed copy per entity the transaction touches; the key doubles as the Redis hash tag.
    _, (_, item, _) = keyed
    txn = item.txn
    return [(f"{entity}:{layout.key_of(txn)}", (entity, txn)) for entity, layout in LAYOUTS.items()]


def _apply(state: EntityState | None, event: EntityEvent) -> tuple[EntityState, StateUpdate]:
    entity, item = event
    state = state or EntityState()
    if isinstance(item, Transaction):
        apply_transaction(state, LAYOUTS[entity], item)
    else:
        apply_label(state, LAYOUTS[entity], item)
    # The state itself goes downstream, not a copy: the sink encodes each key's newest state once
    # per batch, which is all Redis needs.
    return state, (item, state)


# The worker forgets a key after as long without events as Redis keeps it: by then every window of
# it is empty, so memory stays flat on an endless stream whose cards come and go.
WORKER_IDLE_TTL_S = float(max(STATE_TTL_S.values()))


class _ExpiringState(StatefulLogic[Any, Any, bytes]):
    """Per-key state for ``op.stateful``: a mapper like ``stateful_map``'s, snapshots as compact
    msgpack bytes (cheaper than the deep copy ``stateful_map`` makes), dropped after idling."""

    def __init__(self, mapper, encode_fn, state: Any, idle_ttl_s: float) -> None:
        self.mapper = mapper
        self.encode_fn = encode_fn
        self.state = state
        self.idle_ttl_s = idle_ttl_s
        self._refreshed = time.monotonic()
        self._expires_at = self._expiry()

    def _expiry(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.idle_ttl_s, UTC)

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        self.state, out = self.mapper(self.state, value)
        # Push the expiry out at most once an hour: exact to the hour is plenty for a 31-day TTL,
        # and it spares a datetime per event.
        now = time.monotonic()
        if now - self._refreshed > 3600:
            self._refreshed = now
            self._expires_at = self._expiry()
        return [out], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Any], bool]:
        return [], StatefulLogic.DISCARD

    def notify_at(self) -> datetime:
        return self._expires_at

    def snapshot(self) -> bytes:
        return self.encode_fn(self.state)


_admission_codec = (msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder(CardAdmission).decode)


class _RedisStatePartition(StatelessSinkPartition[tuple[str, StateUpdate]]):
    def __init__(self, store: OnlineFeatureStore, metrics: StreamMetrics) -> None:
        self.store = store
        self.metrics = metrics

    def write_batch(self, items: list[tuple[str, StateUpdate]]) -> None:
        latest: dict[str, EntityState] = {}
        event_times: list[float] = []
        labels = 0
        for key, (event, state) in items:
            latest[key] = state
            if isinstance(event, Label):
                labels += 1
            elif key.startswith("card:"):  # each transaction once, by its card copy
                event_times.append(event.event_ts)
        states = ((*key.split(":", 1), state) for key, state in latest.items())
        self.store.write_states(
            states, max(event_times, default=None), transactions=len(event_times), labels=labels
        )
        visible = time.time()
        for ts in event_times:
            self.metrics.freshness.observe(max(visible - ts, 0.0))
        self.metrics.redis_writes.inc(len(latest))

    def close(self) -> None:
        self.store.client.close()


class RedisStateSink(DynamicSink[tuple[str, StateUpdate]]):
    def __init__(self, redis_url: str, key_prefix: str, metrics: StreamMetrics) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.metrics = metrics

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisStatePartition:
        client = redis.Redis.from_url(self.redis_url)
        return _RedisStatePartition(OnlineFeatureStore(client, self.key_prefix), self.metrics)


def build_flow(config: StreamConfig, metrics: StreamMetrics | None = None) -> Dataflow:
    """The feature dataflow for ``config``; run it with ``run_flow``."""
    metrics = metrics or StreamMetrics()
    steps = _Steps(config, metrics)
    flow = Dataflow("fraud-features")
    kafka = {
        "brokers": [config.kafka_bootstrap],
        "tail": True,
        "batch_size": config.kafka_batch_size,
        # Fetch in chunks rather than message by message: the broker's cost is per fetch request
        # (tansu: ~75% of a core to serve 4k msg/s to a tailing consumer with librdkafka's defaults,
        # ~23% with these), for at most fetch_wait_ms of added freshness lag when traffic is thin.
        "add_config": {"fetch.min.bytes": str(config.fetch_min_bytes), "fetch.wait.max.ms": str(config.fetch_wait_ms)},
    }

    transactions = kop.input("transactions", flow, topics=[config.transactions_topic], **kafka)
    checked = op.branch(
        "is_valid", op.map("validate", transactions.oks, steps.validate_transaction), lambda x: isinstance(x, Sourced)
    )
    by_card = op.key_on("by_card", checked.trues, lambda item: item.txn.card_id)
    judged = op.stateful(
        "admission",
        by_card,
        lambda resume: _ExpiringState(
            steps.admission,
            _admission_codec[0],
            _admission_codec[1](resume) if resume is not None else None,
            WORKER_IDLE_TTL_S,
        ),
    )
    admitted = op.filter("admitted", judged, lambda kv: kv[1][0] is Admission.ADMITTED)
    late = op.map("late", op.filter("is_late", judged, lambda kv: kv[1][0] is Admission.LATE), steps.late_letter)
    txn_items = op.flat_map("by_entity", admitted, _transaction_items)

    labels = kop.input("labels", flow, topics=[config.labels_topic], **kafka)
    label_checked = op.branch(
        "label_is_valid", op.map("validate_label", labels.oks, steps.validate_label), lambda x: isinstance(x, Label)
    )
    label_items = op.flat_map("label_by_entity", label_checked.trues, steps.label_items)

    dead = op.merge("dead", checked.falses, late, label_checked.falses)
    kop.output("dead_letters", dead, brokers=[config.kafka_bootstrap], topic=config.dead_letter_topic)
    entity_events = op.merge("entity_events", txn_items, label_items)
    states = op.stateful(
        "entity_state",
        entity_events,
        lambda resume: _ExpiringState(
            _apply, encode_state, decode_state(resume) if resume is not None else None, WORKER_IDLE_TTL_S
        ),
    )
    op.output("online_store", states, RedisStateSink(config.redis_url, config.key_prefix, metrics))
    return flow


@dataclass(frozen=True)
class Recovery:
    """Where bytewax keeps snapshots, and how often it takes them.

    A snapshot stores operator state and Kafka offsets together; after a crash the flow resumes
    from the newest one and replays at most ``snapshot_interval_s`` of input.
    """

    directory: Path
    snapshot_interval_s: float = 10.0


def prepare_recovery(recovery: Recovery, config: StreamConfig) -> bool:
    """Create the recovery store, or keep the existing one if it belongs to this same stream.

    Recovery state holds Kafka offsets: resumed against another broker (an embedded one restarts
    empty) it would silently skip or misread the log, so a store made for other inputs is
    replaced. Returns True when an existing store will be resumed.
    """
    inputs = ("kafka_bootstrap", "transactions_topic", "labels_topic")
    identity = {k: v for k, v in asdict(config).items() if k in inputs}
    marker = recovery.directory / "stream.json"
    if marker.exists() and json.loads(marker.read_text()) == identity:
        return True
    shutil.rmtree(recovery.directory, ignore_errors=True)
    recovery.directory.mkdir(parents=True)
    init_db_dir(recovery.directory, 1)
    marker.write_text(json.dumps(identity))
    return False


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
    cli_main(
        flow,
        workers_per_process=1,
        process_id=cluster.process_id if cluster else None,
        addresses=list(cluster.addresses) if cluster else None,
        epoch_interval=timedelta(seconds=recovery.snapshot_interval_s) if recovery else None,
        recovery_config=RecoveryConfig(str(recovery.directory)) if recovery else None,
    )
