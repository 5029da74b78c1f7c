"""CPU per payment of the feature stream's own steps, without bytewax or Kafka.

``fraud bench-stream`` measures the whole dataflow on a shared machine, where the broker, Redis
and the bytewax engine all take their share and wall-clock rates vary from run to run. This
times only the Python steps the dataflow runs per batch (``streaming.dataflow``): validation,
admission, routing to entity shards, the state update, and the sink's packing and Redis write
(against a real redis-server; its own CPU is not counted), plus the recovery snapshot. It uses
process CPU time and keeps the best of a few repeats, so it is repeatable under other load.

The payments are those ``fraud bench-stream`` generates (the same card, merchant and amount
distributions), with event time advancing at ``--rate`` payments per simulated second (times
``--time-scale``: > 1 fills the long windows, as a long run would).

    fraud bench-stream --steps-only --events 150000 --cards 50000 --merchants 5000
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from bytewax.connectors.kafka import KafkaSourceMessage

from fraud.bench_stream import activity_weights, bench_payment, draw_payments, machine_info
from streaming.checkpoints import BaseFiles
from streaming.dataflow import RedisStateSink, StoreResync, StreamConfig, _AdmissionLogic, _EntityLogic, _Steps
from streaming.metrics import StreamMetrics
from streaming.shards import shard_name

STAGES = ("validate", "admission", "route", "apply", "sink")
KAFKA_BATCH = 1000  # StreamConfig.kafka_batch_size: what one poll of a partition hands the flow
PARTITIONS = 4


def payloads(events: int, cards: int, merchants: int, rate: float, time_scale: float, seed: int = 1) -> list[bytes]:
    """JSON payments as ``fraud bench-stream``'s generator produces them (fraud.bench_stream._generate)."""
    rng = np.random.default_rng(seed)
    n_customers = max(1, int(cards / 1.3))
    card_of, merchant_of, amounts = draw_payments(rng, activity_weights(rng, cards, merchants), events)
    encoder = msgspec.json.Encoder()
    clock0 = time.time() - events / rate * time_scale  # ends now: never ahead of the wall clock
    out = []
    for n in range(events):
        card, merchant = int(card_of[n]), int(merchant_of[n])
        event_ts = clock0 + n / rate * time_scale
        out.append(encoder.encode(bench_payment(seed, n, card, merchant, int(amounts[n]), event_ts, n_customers)))
    return out


def kafka_batches(raws: list[bytes], topic: str) -> Iterator[list[KafkaSourceMessage]]:
    """The payments as the Kafka source hands them over: a batch at a time from one partition."""
    for first in range(0, len(raws), KAFKA_BATCH):
        partition = first // KAFKA_BATCH % PARTITIONS
        yield [
            KafkaSourceMessage(key=None, value=raw, topic=topic, partition=partition, offset=first + i)
            for i, raw in enumerate(raws[first : first + KAFKA_BATCH])
        ]


class _NoLag:
    def processed(self, topic: str, partition: int, offset: int) -> None:
        pass


@dataclass
class Run:
    seconds: dict[str, float]  # CPU seconds per stage
    snapshot_s: float
    events: int
    last_snapshot: tuple[int, int, float] = (0, 0, 0.0)  # entities, bytes, CPU seconds of the last one

    def us_per_event(self, stage: str) -> float:
        return 1e6 * self.seconds[stage] / self.events

    @property
    def total_us(self) -> float:
        return sum(self.us_per_event(s) for s in STAGES)


def run_once(
    raws: list[bytes], redis_url: str, snapshot_every: int, bases: Path, gc_like_the_stream: bool = True
) -> Run:
    """Every step of the dataflow over the payments, one Kafka batch at a time, timed per stage;
    snapshots as the stream takes them, their bases written to ``bases`` by the writer threads
    (process CPU: their work counts in the stages it overlaps)."""
    config = StreamConfig(kafka_bootstrap="unused:9092", redis_url=redis_url, key_prefix=f"cpu{time.time_ns()}")
    metrics = StreamMetrics()
    steps = _Steps(config, metrics)
    steps.lag = _NoLag()  # no broker here to ask for high watermarks
    resync = StoreResync()
    sink = RedisStateSink(redis_url, config.key_prefix, metrics, resync).build("online_store", 0, 1)
    admission: dict[str, _AdmissionLogic] = {}
    entities: dict[str, _EntityLogic] = {}
    seconds = dict.fromkeys(STAGES, 0.0)
    snapshot_s = 0.0
    since_snapshot = 0
    last_snapshot = (0, 0, 0.0)
    clock = time.process_time
    if gc_like_the_stream:  # as streaming.dataflow.run_flow sets it
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 1_000_000, 1_000_000)
    # The shards' logics, made once per shard as the dataflow makes them (not once per batch), by
    # the keys the shards travel under.
    for key in (steps.router.key(shard_name(n)) for n in range(config.shards)):
        admission[key] = _AdmissionLogic(steps, None, BaseFiles(bases / "admission"))
        entities[key] = _EntityLogic(None, resync, metrics, BaseFiles(bases / "entity_state"))
    for batch in kafka_batches(raws, config.transactions_topic):
        t0 = clock()
        checked = steps.transactions_by_card_shard(batch)
        t1 = clock()
        judged = [
            admission[shard].on_batch([group])[0][0]
            for shard, group in checked  # bench payments are all valid: no dead letters here
        ]
        t2 = clock()
        routed: dict[str, list] = {}
        for verdicts in judged:
            for shard, events in steps.admitted_by_entity_shard(("", verdicts)):
                routed.setdefault(shard, []).append(events)
        t3 = clock()
        updates = [(shard, entities[shard].on_batch(groups)[0][0]) for shard, groups in routed.items()]
        t4 = clock()
        sink.write_batch(updates)
        sink.flush()  # the writes' own thread: its CPU counts in the sink's stage
        t5 = clock()
        for stage, start, end in zip(STAGES, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True):
            seconds[stage] += end - start
        since_snapshot += len(batch)
        if snapshot_every and since_snapshot >= snapshot_every:
            since_snapshot = 0
            t6 = clock()
            size = sum(len(logic.snapshot()) for logic in (*admission.values(), *entities.values()))
            snapshot_s += clock() - t6
            last_snapshot = (sum(len(e.shard) for e in entities.values()), size, clock() - t6)
    _forget(sink.store.client, config.key_prefix)
    sink.close()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    return Run(seconds, snapshot_s, len(raws), last_snapshot)


def _forget(client, prefix: str) -> None:
    """Delete this run's keys, and only them: --redis-url may name a Redis that holds other data."""
    batch = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def report_steps(
    events: int,
    cards: int,
    merchants: int,
    rate: float,
    time_scale: float,
    repeats: int = 3,
    snapshot_every: int = 40_000,
    redis_url: str | None = None,
) -> None:
    """Measure (``run_once``, ``repeats`` times) and print CPU µs per payment for every stage."""
    print(f"machine: {machine_info()}")
    raws = payloads(events, cards, merchants, rate, time_scale)
    with tempfile.TemporaryDirectory(prefix="bench-stream-cpu-") as work:
        if redis_url:
            runs = [run_once(raws, redis_url, snapshot_every, Path(work) / f"bases{n}") for n in range(repeats)]
        else:
            from deploy.embedded import EmbeddedRedis

            with EmbeddedRedis(Path(work)) as redis_server:
                runs = [
                    run_once(raws, redis_server.url, snapshot_every, Path(work) / f"bases{n}") for n in range(repeats)
                ]
    print(f"{events:,} payments, {cards:,} cards, {merchants:,} merchants; CPU µs per payment:")
    for stage in STAGES:
        _report(stage, [r.us_per_event(stage) for r in runs])
    _report("total", [r.total_us for r in runs])
    _report("snapshots", [1e6 * r.snapshot_s / r.events for r in runs])
    print(f"(snapshots: every {snapshot_every:,} payments, every shard; not in the total)")
    entities, size, cpu_s = runs[-1].last_snapshot
    if entities:
        print(
            f"the last snapshot: {entities:,} entities, {size / 1e3:,.1f} kB of checkpoints (each shard's base, "
            f"its synced log bytes, and its changes not yet synced) in {1000 * cpu_s:.0f} ms of CPU (bytewax then "
            "writes them to its SQLite store while the flow waits; bases and logs are written beside it)"
        )


def _report(what: str, runs: list[float]) -> None:
    print(f"  {what:<10} {min(runs):7.1f}   (runs: {', '.join(f'{us:.1f}' for us in runs)})")
