"""`fraud bench-stream`: the feature stream under sustained load.

An open-loop generator process produces synthetic card payments to Kafka at a fixed rate, each
stamped with its event time at the moment it is produced. The bytewax feature dataflow (1 or more
cooperating processes) applies them to Redis. Every few seconds the bench samples: events
applied (from the stream's own progress counter in Redis), feature freshness (from the stream's
Prometheus histogram: seconds from a transaction's event time until its aggregates are visible in
Redis), Redis memory, and each stream worker's RSS and CPU. Percentiles are interpolated within
histogram buckets, so they are exact to the bucket edges (see ``streaming.metrics``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np

from fraud.processes import ChildProcess, wait_for
from streaming import OnlineFeatureStore, connect_redis

CARD_PRESENT, ECOMMERCE = "card_present", "ecommerce"
CATEGORIES = ("grocery", "fuel", "restaurants", "electronics", "travel", "digital_goods", "fashion", "pharmacy")


@dataclass(frozen=True)
class BenchConfig:
    events: int = 300_000
    rate: float = 2_000.0  # transactions per second offered
    processes: int = 1  # bytewax processes
    partitions: int = 4
    cards: int = 50_000
    merchants: int = 5_000
    interval_s: float = 5.0
    warmup_s: float = 15.0
    snapshot_s: float | None = 10.0  # None: recovery off
    time_scale: float = 1.0  # simulated seconds per wall second; > 1 exercises window expiry
    seed: int = 1
    # How long the generator's producer gathers payments into one batch per partition. It counts in
    # freshness (the event time is stamped at produce), and every batch costs the embedded broker on
    # each later fetch (docs/performance.md, the broker alone), so it trades freshness for broker CPU.
    linger_ms: float = 50.0
    # Produce everything before the stream starts and time how fast it drains the backlog: the
    # stream's capacity with the generator off the CPU (freshness is meaningless then).
    preload: bool = False


@dataclass
class Sample:
    elapsed_s: float
    produced: int
    applied: int
    applied_per_s: float
    freshness_p50_s: float | None
    freshness_p99_s: float | None
    redis_used_mb: float
    worker_rss_mb: list[float]
    worker_cpu_pct: list[float]
    broker_cpu_pct: float | None = None  # the embedded broker shares these cores; None when external
    # The longest gap between two batches leaving the flow in the interval, to the bucket bound
    # (streaming.metrics): under load, how long the flow stood still, e.g. for a recovery snapshot.
    longest_batch_interval_s: float | None = None
    # Seconds the stream processes spent encoding recovery snapshots in the interval (the flow
    # stands still for them, and for bytewax's write of what they return).
    snapshot_encode_s: float | None = None


@dataclass
class BenchResult:
    config: BenchConfig
    machine: dict[str, object]
    samples: list[Sample] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)


# --- load generator (its own process) ----------------------------------------------------------


def activity_weights(rng: np.random.Generator, cards: int, merchants: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each card and each merchant pays: skewed (a few see most payments), as in real
    portfolios; Pareto over cards, Zipf over merchants."""
    card_weights = rng.pareto(1.5, cards) + 1
    merchant_weights = 1 / np.arange(1, merchants + 1) ** 0.9
    return card_weights / card_weights.sum(), merchant_weights / merchant_weights.sum()


def draw_payments(
    rng: np.random.Generator, weights: tuple[np.ndarray, np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` payments' card, merchant and amount (minor units, lognormal) draws."""
    card_weights, merchant_weights = weights
    cards = rng.choice(len(card_weights), n, p=card_weights)
    merchants = rng.choice(len(merchant_weights), n, p=merchant_weights)
    return cards, merchants, np.maximum(1, rng.lognormal(8.0, 1.1, n)).astype(int)


def bench_payment(
    seed: int, n: int, card: int, merchant: int, amount_minor: int, event_ts: float, n_customers: int
) -> dict[str, object]:
    """The bench's n-th synthetic payment as the JSON fields a gateway sends (the stream validates them)."""
    return {
        "transaction_id": f"bench-{seed}-{n}",
        "event_time": datetime.fromtimestamp(event_ts, UTC).isoformat(),
        "card_id": f"card-{card}",
        "customer_id": f"cust-{card % n_customers}",
        "merchant_id": f"merch-{merchant}",
        "merchant_category": CATEGORIES[merchant % len(CATEGORIES)],
        "amount_minor": amount_minor,
        "currency": "EUR",
        "country": "DE" if card % 17 else "FR",
        "card_country": "DE",
        "device_id": f"dev-{card}-{n % 2 if card % 5 == 0 else 0}",
        "channel": ECOMMERCE if card % 3 == 0 else CARD_PRESENT,
    }


MIN_SLEEP_S = 0.001


def _generate(bootstrap: str, topic: str, config: BenchConfig, produced: mp.Value, behind: mp.Value) -> None:
    """Produce ``config.events`` payments at ``config.rate``, open loop: the schedule never waits
    for the system under test. ``behind`` records the worst lag behind schedule, in seconds."""
    from confluent_kafka import Producer

    from deploy.embedded import die_with_parent

    die_with_parent()  # a bench stopped by Ctrl-C or kill must not leave a generator producing
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": config.linger_ms,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",  # as every producer of ours (deploy.kafka.make_producer)
        }
    )
    rng = np.random.default_rng(config.seed)
    n_customers = max(1, int(config.cards / 1.3))
    weights = activity_weights(rng, config.cards, config.merchants)
    encoder = msgspec.json.Encoder()
    start_wall = time.time()
    # Sped-up simulated time starts as far back as the run will advance it, so no event is dated
    # ahead of the wall clock (the doors refuse events more than schema MAX_AHEAD_S ahead).
    clock0 = start_wall - config.events / config.rate * max(config.time_scale - 1, 0.0)
    sent, worst = 0, 0.0
    chunk = 2048
    while sent < config.events:
        cards, merchants, amounts = draw_payments(rng, weights, chunk)
        for j in range(chunk):
            if sent >= config.events:
                break
            due = start_wall + sent / config.rate if not config.preload else 0.0
            now = time.time()
            if config.preload:
                pass
            elif due > now:
                # Whole milliseconds at least: a sleep per payment cost the generator a third of a
                # core at 10,000/s, taken from the stream it measures. Each payment is still
                # stamped when it is sent.
                time.sleep(max(due - now, MIN_SLEEP_S))
                now = time.time()
            else:
                worst = max(worst, now - due)
            card = int(cards[j])
            event_ts = clock0 + (now - start_wall) * config.time_scale
            payload = bench_payment(config.seed, sent, card, int(merchants[j]), int(amounts[j]), event_ts, n_customers)
            while True:
                try:
                    producer.produce(topic, key=payload["card_id"].encode(), value=encoder.encode(payload))
                    break
                except BufferError:
                    producer.poll(0.01)
            sent += 1
            if sent % 1000 == 0:
                producer.poll(0)
                produced.value = sent
                behind.value = worst
    producer.flush(60)
    produced.value = sent
    behind.value = worst


# --- measurements ------------------------------------------------------------------------------

_BUCKET = re.compile(r'^(fraud_\w+)_bucket\{le="([^"]+)"\} (\S+)$', re.M)
FRESHNESS = "fraud_feature_freshness_seconds"
BATCH_INTERVAL = "fraud_stream_batch_interval_seconds"


def _until_next_sample(interval_s: float, drained: Callable[[], bool]) -> None:
    """Sleep until the next sample is due, or until the stream has applied everything produced:
    the last interval then ends when the drain does, so the steady rate is not diluted by idle time."""
    deadline = time.monotonic() + interval_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.05, left))
        if drained():
            return


def _drained(store: OnlineFeatureStore, produced: int) -> bool:
    return store.counts().get("events", 0) >= produced


Histograms = dict[str, dict[float, float]]


def _scrape(ports: list[int]) -> list[str]:
    """Each stream process's metrics, as Prometheus text (one request each per sample)."""
    return [urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode() for port in ports]


def _histograms(texts: list[str]) -> Histograms:
    """The stream's freshness and batch-interval histograms, each summed over the stream
    processes: name -> cumulative {upper bound: count}."""
    total: Histograms = {FRESHNESS: {}, BATCH_INTERVAL: {}}
    for text in texts:
        for name, le, count in _BUCKET.findall(text):
            if name in total:
                bound = float("inf") if le == "+Inf" else float(le)
                total[name][bound] = total[name].get(bound, 0.0) + float(count)
    return total


_SNAPSHOT_SECONDS = re.compile(r'^fraud_stream_snapshot_seconds_total\{step="[^"]+"\} (\S+)$', re.M)
_BASE_SECONDS = re.compile(r'^fraud_stream_snapshot_base_seconds_total\{step="[^"]+"\} (\S+)$', re.M)


def _snapshot_seconds(texts: list[str], metric: re.Pattern[str] = _SNAPSHOT_SECONDS) -> float:
    """Seconds the flows spent taking recovery snapshots so far (or, with ``_BASE_SECONDS``, their
    base writers beside them), summed over steps and stream processes."""
    return sum(float(v) for text in texts for v in metric.findall(text))


def longest_observed(cumulative: dict[float, float]) -> float | None:
    """The upper bound of the bucket holding a histogram's largest observation (inf past the last)."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    return next(b for b in bounds if cumulative[b] >= cumulative[bounds[-1]])


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly within its bucket."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    target = q * cumulative[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= target:
            if bound == float("inf"):
                return lower_bound
            share = (target - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + share * (bound - lower_bound)
        lower_bound, lower_count = bound, count
    return lower_bound


def _delta(now: Histograms, before: Histograms) -> Histograms:
    return {name: {b: c - before.get(name, {}).get(b, 0.0) for b, c in h.items()} for name, h in now.items()}


def _proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds used) of a process, from /proc."""
    rss_kb = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss_kb = float(line.split()[1])
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, cpu_s


def machine_info() -> dict[str, object]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    import bytewax  # noqa: F401 - version below

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "redis_py": version("redis"),
        "confluent_kafka": version("confluent-kafka"),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --- the run -----------------------------------------------------------------------------------


@contextmanager
def _stream_cluster(config: BenchConfig, env: dict[str, str], home: Path, metrics_port: int) -> Iterator[list]:
    from deploy.embedded import free_port

    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(config.processes))
    procs = []
    snapshot = ["--snapshot-s", str(config.snapshot_s)] if config.snapshot_s else ["--no-recovery"]
    try:
        for i in range(config.processes):
            cluster = ["--process-id", str(i), "--addresses", addresses] if config.processes > 1 else []
            procs.append(
                ChildProcess(
                    f"stream-{i}",
                    ["stream", *snapshot, *cluster],
                    {**env, "FRAUD_STREAM_METRICS_PORT": str(metrics_port)},
                    home / "logs",
                )
            )
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def run_bench(
    config: BenchConfig,
    kafka_bootstrap: str,
    redis_url: str,
    report: Callable[[Sample], None] | None = None,
    broker_pid: int | None = None,
) -> BenchResult:
    """Run the stream benchmark against the given broker and Redis; returns every sample.

    The stream processes work in a temporary home (recovery store, logs): removed after a run,
    kept after a failure for its logs (the error says where)."""
    home = Path(tempfile.mkdtemp(prefix="fraud-bench-"))
    try:
        result = _run_bench(config, kafka_bootstrap, redis_url, home, report, broker_pid)
    except BaseException as exc:
        exc.add_note(f"the stream processes' logs are kept in {home / 'logs'}")
        raise
    shutil.rmtree(home, ignore_errors=True)
    return result


def _run_bench(
    config: BenchConfig,
    kafka_bootstrap: str,
    redis_url: str,
    home: Path,
    report: Callable[[Sample], None] | None,
    broker_pid: int | None,
) -> BenchResult:
    from deploy.embedded import free_port
    from deploy.kafka import ensure_topics
    from streaming.dataflow import Recovery, StreamConfig, prepare_recovery

    run_id = uuid.uuid4().hex[:8]
    suffix, prefix = f"-bench-{run_id}", f"bench{run_id}"
    topics = {name: f"{name}{suffix}" for name in ("transactions", "labels", "dead-letter", "decisions")}
    ensure_topics(kafka_bootstrap, topics.values(), partitions=config.partitions)
    env = {
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "FRAUD_HOME": str(home),
        "FRAUD_TOPIC_SUFFIX": suffix,
        "FRAUD_KEY_PREFIX": prefix,
        "FRAUD_STREAM_RECOVERY_LAYOUT": "shared",  # the processes share the store made here
        "FRAUD_STREAM_SHARDS": str(StreamConfig.shards),  # as in the store made here
    }
    if config.snapshot_s:  # made once here: the processes must not race to create it
        stream_config = StreamConfig(
            kafka_bootstrap=kafka_bootstrap,
            redis_url=redis_url,
            transactions_topic=topics["transactions"],
            labels_topic=topics["labels"],
        )
        prepare_recovery(Recovery(home / "recovery" / f"stream{suffix}", config.snapshot_s), stream_config)
    metrics_port = free_port()
    ports = [metrics_port + i for i in range(config.processes)]
    store = OnlineFeatureStore(connect_redis(redis_url), prefix)
    result = BenchResult(config=config, machine=machine_info())

    spawn = mp.get_context("spawn")  # a clean interpreter: no inherited client threads
    produced, behind = spawn.Value("q", 0), spawn.Value("d", 0.0)
    generator = spawn.Process(
        target=_generate, args=(kafka_bootstrap, topics["transactions"], config, produced, behind), daemon=True
    )
    if config.preload:
        generator.start()
        generator.join()
    with _stream_cluster(config, env, home, metrics_port) as procs:

        def alive() -> None:
            for p in procs:
                p.check_alive()

        def serving() -> bool:
            try:
                _scrape(ports)
                return True
            except OSError:
                return False

        wait_for(serving, 120, "the stream processes' metrics endpoints", poll_s=0.2, alive=alive)
        started = time.monotonic()
        if not config.preload:
            time.sleep(2.0)  # let the Kafka sources get their partitions
            started = time.monotonic()
            generator.start()
        texts = _scrape(ports)
        previous = (started, 0, _histograms(texts), [_proc_stats(p.proc.pid)[1] for p in procs])
        snapshot_s = first_snapshot_s = _snapshot_seconds(texts)
        first_base_s = _snapshot_seconds(texts, _BASE_SECONDS)
        broker_cpu = _proc_stats(broker_pid)[1] if broker_pid else 0.0
        steady_from: tuple[float, int, Histograms] | None = (started, 0, previous[2]) if config.warmup_s <= 0 else None
        while True:
            _until_next_sample(config.interval_s, lambda: not generator.is_alive() and _drained(store, produced.value))
            alive()
            now = time.monotonic()
            applied = store.counts().get("events", 0)
            texts = _scrape(ports)
            buckets = _histograms(texts)
            stats = [_proc_stats(p.proc.pid) for p in procs]
            interval = _delta(buckets, previous[2])
            snapshot_s, snapshot_before = _snapshot_seconds(texts), snapshot_s
            sample = Sample(
                elapsed_s=round(now - started, 1),
                produced=int(produced.value),
                applied=applied,
                applied_per_s=round((applied - previous[1]) / (now - previous[0]), 1),
                freshness_p50_s=_round(histogram_quantile(0.5, interval[FRESHNESS])) if _timely(config) else None,
                freshness_p99_s=_round(histogram_quantile(0.99, interval[FRESHNESS])) if _timely(config) else None,
                longest_batch_interval_s=longest_observed(interval[BATCH_INTERVAL]),
                snapshot_encode_s=round(snapshot_s - snapshot_before, 3),
                redis_used_mb=round(store.memory_used_bytes() / 2**20, 1),
                worker_rss_mb=[round(rss, 1) for rss, _ in stats],
                worker_cpu_pct=[
                    round(100 * (cpu - before) / (now - previous[0]), 1)
                    for (_, cpu), before in zip(stats, previous[3], strict=True)
                ],
            )
            if broker_pid:
                used = _proc_stats(broker_pid)[1]
                sample.broker_cpu_pct = round(100 * (used - broker_cpu) / (now - previous[0]), 1)
                broker_cpu = used
            result.samples.append(sample)
            if report is not None:
                report(sample)
            if steady_from is None and now - started >= config.warmup_s:
                steady_from = (now, applied, buckets)
            previous = (now, applied, buckets, [cpu for _, cpu in stats])
            done_producing = not generator.is_alive()
            if done_producing and applied >= produced.value:
                break
            if done_producing and now - started > config.events / config.rate * 3 + 120:
                raise TimeoutError(f"the stream applied {applied} of {produced.value} events")
        generator.join()

    end = now  # the last sample: taken as the drain completed (within ~50 ms), not a full interval later
    steady = steady_from or (started, 0, {})
    steady_hist = _delta(buckets, steady[2])
    producing = [s for s in result.samples if s.produced < config.events]
    result.summary = {
        "events": int(produced.value),
        "offered_rate": config.rate,
        "generator_max_behind_schedule_s": round(behind.value, 3),
        "applied_rate_steady": round((result.samples[-1].applied - steady[1]) / max(end - steady[0], 1e-9), 1),
        "applied_rate_while_producing": round(
            float(np.mean([s.applied_per_s for s in producing if s.elapsed_s >= config.warmup_s] or [0.0])), 1
        ),
        "freshness_s": {
            q: _round(histogram_quantile(v, steady_hist[FRESHNESS])) if _timely(config) else None
            for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
        },
        # The flow's longest standstill (to the histogram's bucket bound), e.g. a recovery snapshot.
        "longest_batch_interval_s": longest_observed(steady_hist[BATCH_INTERVAL]),
        "snapshot_encode_s_total": round(snapshot_s - first_snapshot_s, 3),
        # Beside the flow: the base writers compressing and writing the state (streaming.checkpoints).
        "snapshot_base_s_total": round(_snapshot_seconds(texts, _BASE_SECONDS) - first_base_s, 3),
        "redis_used_mb_last": result.samples[-1].redis_used_mb,
        "worker_rss_mb_last": result.samples[-1].worker_rss_mb,
        "broker_cpu_pct_mean": (
            round(float(np.mean([s.broker_cpu_pct for s in result.samples])), 1) if broker_pid else None
        ),
        "worker_cpu_pct_mean": [
            round(float(np.mean([s.worker_cpu_pct[i] for s in result.samples])), 1) for i in range(config.processes)
        ],
    }
    store.client.close()
    return result


def _timely(config: BenchConfig) -> bool:
    """Whether event time tracks the wall clock, so that freshness means something."""
    return config.time_scale == 1 and not config.preload


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def write_result(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2, default=str))
