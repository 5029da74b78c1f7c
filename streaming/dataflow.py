"""The bytewax dataflow that keeps the online feature store current.

    transactions (Kafka) -> validate -+-> invalid -> dead-letter (Kafka), with the reason
                                      +-> valid -> per entity key: EntityState (stateful_map)
                                                -> Redis: whole state per entity, one pipeline per batch

This is the only module that imports bytewax (STACK-NOTES: the project is community-maintained
now; keep the surface small so it can be swapped). Per-entity state uses ``stateful_map`` with
time buckets, not bytewax's windowing operators, which are too slow at card cardinality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import bytewax.operators as op
import redis
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

from schema import DeadLetter, InvalidEvent, Transaction, decode_transaction, encode
from streaming.online import OnlineFeatureStore
from streaming.windows import LAYOUTS, EntityState, apply_transaction, encode_state

RawMessage = KafkaSourceMessage[bytes | None, bytes | None]


@dataclass(frozen=True)
class StreamConfig:
    kafka_bootstrap: str
    redis_url: str
    transactions_topic: str = "transactions"
    dead_letter_topic: str = "dead-letter"
    key_prefix: str = "fraud"
    # The stream's own consumer settings; offsets live in bytewax recovery state, not Kafka.
    kafka_batch_size: int = 1000


def _validate(msg: RawMessage) -> Transaction | KafkaSinkMessage[bytes | None, bytes]:
    """A valid transaction, or the dead-letter record explaining why not."""
    try:
        if msg.value is None:
            raise InvalidEvent("empty message (no value)")
        return decode_transaction(msg.value)
    except InvalidEvent as exc:
        letter = DeadLetter(
            reason=str(exc),
            source_topic=msg.topic or "",
            partition=msg.partition if msg.partition is not None else -1,
            offset=msg.offset if msg.offset is not None else -1,
            payload=(msg.value or b"").decode("utf-8", errors="replace"),
            received_at=datetime.now(UTC),
        )
        return KafkaSinkMessage(key=msg.key, value=encode(letter))


def _by_entity(txn: Transaction) -> list[tuple[str, tuple[str, Transaction]]]:
    # One routed copy per entity the transaction touches; the key doubles as the Redis hash tag.
    return [(f"{entity}:{layout.key_of(txn)}", (entity, txn)) for entity, layout in LAYOUTS.items()]


def _apply(state: EntityState | None, routed: tuple[str, Transaction]) -> tuple[EntityState, tuple[float, bytes]]:
    entity, txn = routed
    state = state or EntityState()
    apply_transaction(state, LAYOUTS[entity], txn)
    return state, (txn.event_ts, encode_state(state))


class _RedisStatePartition(StatelessSinkPartition[tuple[str, tuple[float, bytes]]]):
    def __init__(self, store: OnlineFeatureStore) -> None:
        self.store = store

    def write_batch(self, items: list[tuple[str, tuple[float, bytes]]]) -> None:
        # Coalesce: within a batch only each entity's latest state needs writing.
        latest: dict[str, bytes] = {}
        newest = None
        for key, (ts, blob) in items:
            latest[key] = blob
            newest = ts if newest is None or ts > newest else newest
        states = ((k.split(":", 1)[0], k.split(":", 1)[1], blob) for k, blob in latest.items())
        self.store.write_states(states, newest, applied=len(items))

    def close(self) -> None:
        self.store.client.close()


class RedisStateSink(DynamicSink[tuple[str, tuple[float, bytes]]]):
    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisStatePartition:
        return _RedisStatePartition(OnlineFeatureStore(redis.Redis.from_url(self.redis_url), self.key_prefix))


def build_flow(config: StreamConfig, on_dead_letter: Callable[[], None] | None = None) -> Dataflow:
    """The feature dataflow for ``config``; run it with ``run_flow``."""
    flow = Dataflow("fraud-features")
    source = kop.input(
        "transactions",
        flow,
        brokers=[config.kafka_bootstrap],
        topics=[config.transactions_topic],
        tail=True,
        batch_size=config.kafka_batch_size,
    )
    checked = op.map("validate", source.oks, _validate)
    split = op.branch("is_valid", checked, lambda item: isinstance(item, Transaction))
    invalid = split.falses
    if on_dead_letter is not None:
        invalid = op.inspect("count_dead_letters", invalid, lambda _step, _item: on_dead_letter())
    kop.output("dead_letters", invalid, brokers=[config.kafka_bootstrap], topic=config.dead_letter_topic)
    keyed = op.flat_map("by_entity", split.trues, _by_entity)
    states = op.stateful_map("entity_windows", keyed, _apply)
    op.output("online_store", states, RedisStateSink(config.redis_url, config.key_prefix))
    return flow


def run_flow(flow: Dataflow) -> None:
    """Run the flow in this process until interrupted (Ctrl-C / SIGINT)."""
    cli_main(flow, workers_per_process=1)
