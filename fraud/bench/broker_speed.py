"""The broker alone: what one produce -> consume hop costs, and how that changes as the log grows.

`fraud bench --mode kafka` crosses the broker twice (payments in, decisions out), so its ceiling
can be the broker's rather than the scorer's. This probe takes the scorer out: one producer (in
this process) writes ``payload_bytes`` messages to a fresh one-partition topic at ``rate`` per
second, lingering ``linger_ms`` as the bench's generator does, and one consumer reads them with
the decision door's fetch settings. Every ``window_s`` it reports the messages in the topic so
far, the broker's CPU over the window (when its pid is known, i.e. the embedded broker) and the
hop latency (produce call to consume) of the messages read in it.

A broker whose per-request cost grows with its log shows rising CPU at a constant rate; that is
what the embedded tansu broker (memory storage) does here, and why kafka mode's numbers are the
broker's (docs/performance.md). Numbers are for this machine at this moment; rerun, don't quote.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from deploy.kafka import ensure_topics
from fraud.bench_stream import _proc_stats

STAMP_BYTES = 20  # the send time, as fixed-width text at the head of each message


@dataclass(frozen=True)
class BrokerWindow:
    """One reporting window of :func:`measure_broker_hop`."""

    rate: float
    elapsed_s: float
    messages_in_log: int
    read: int
    broker_cpu_pct: float | None
    hop_p50_ms: float | None
    hop_p99_ms: float | None


@dataclass(frozen=True)
class BrokerProbe:
    bootstrap: str
    topic: str
    broker_pid: int | None = None
    payload_bytes: int = 1000
    linger_ms: float = 5.0
    fetch_wait_ms: int = 10  # the Kafka decision door's setting
    window_s: float = 10.0


def measure_broker_hop(probe: BrokerProbe, rate: float, duration_s: float) -> list[BrokerWindow]:
    """Offer ``rate`` messages/s for ``duration_s`` through one topic; one row per window."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got rate={rate}, duration={duration_s}")
    ensure_topics(probe.bootstrap, [probe.topic], partitions=1)
    producer = Producer({"bootstrap.servers": probe.bootstrap, "linger.ms": probe.linger_ms})
    consumer = Consumer(
        {
            "bootstrap.servers": probe.bootstrap,
            "group.id": f"{probe.topic}-reader",
            "fetch.wait.max.ms": probe.fetch_wait_ms,
        }
    )
    consumer.assign([TopicPartition(probe.topic, 0, OFFSET_END)])
    consumer.consume(num_messages=1, timeout=1.0)  # the assignment takes effect before the clock starts
    hops: list[tuple[float, float]] = []  # (read at, latency s)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for msg in consumer.consume(num_messages=2000, timeout=0.02):
                now = time.time()
                hops.append((now, now - float((msg.value() or b"0")[:STAMP_BYTES])))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        return _offer(probe, producer, rate, duration_s, hops)
    finally:
        stop.set()
        reader.join(5)
        consumer.close()


def _offer(
    probe: BrokerProbe, producer: Producer, rate: float, duration_s: float, hops: list[tuple[float, float]]
) -> list[BrokerWindow]:
    filler = b"x" * max(probe.payload_bytes - STAMP_BYTES, 0)
    windows: list[BrokerWindow] = []
    start = window_start = time.time()
    cpu_before = _broker_cpu_s(probe)
    sent = 0
    while (now := time.time()) - start < duration_s:
        for _ in range(int((now - start) * rate) - sent):
            producer.produce(probe.topic, value=b"%20.6f" % time.time() + filler)
            sent += 1
        producer.poll(0)
        if now - window_start >= probe.window_s:
            cpu_now = _broker_cpu_s(probe)
            windows.append(_window(rate, start, window_start, now, sent, cpu_before, cpu_now, hops))
            window_start, cpu_before = now, cpu_now
        time.sleep(0.001)
    if now - window_start >= probe.window_s / 2:  # the run's last stretch, if it is a fair sample
        windows.append(_window(rate, start, window_start, now, sent, cpu_before, _broker_cpu_s(probe), hops))
    producer.flush(30)
    return windows


def _window(
    rate: float,
    start: float,
    window_start: float,
    now: float,
    sent: int,
    cpu_before: float | None,
    cpu_now: float | None,
    hops: list[tuple[float, float]],
) -> BrokerWindow:
    latencies = np.array([lat for at, lat in list(hops) if window_start <= at < now]) * 1000
    cpu = None if cpu_before is None or cpu_now is None else 100 * (cpu_now - cpu_before) / (now - window_start)
    return BrokerWindow(
        rate=rate,
        elapsed_s=round(now - start, 1),
        messages_in_log=sent,
        read=len(latencies),
        broker_cpu_pct=None if cpu is None else round(cpu, 1),
        hop_p50_ms=round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        hop_p99_ms=round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
    )


def _broker_cpu_s(probe: BrokerProbe) -> float | None:
    return None if probe.broker_pid is None else _proc_stats(probe.broker_pid)[1]


def format_broker_windows(windows: list[BrokerWindow]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f}"

    lines = [f"{'rate/s':>8} {'at s':>6} {'in log':>10} {'read':>8} {'broker CPU %':>13} {'hop p50 ms':>11} {'p99':>8}"]
    lines += [
        f"{w.rate:>8,.0f} {w.elapsed_s:>6.0f} {w.messages_in_log:>10,} {w.read:>8,} {num(w.broker_cpu_pct):>13} "
        f"{num(w.hop_p50_ms):>11} {num(w.hop_p99_ms):>8}"
        for w in windows
    ]
    return "\n".join(lines)
