"""`fraud bench`: the decision path under open-loop load, step by step, with a naive baseline.

For each mode, the scorer runs as ``--server-procs`` `fraud serve` processes; for each rate step a
fresh generator process (``fraud.bench.loadgen``) offers the load and measures every payment's
latency from its scheduled arrival. The CPU of every process on the machine that takes part
(scorers, generator, Redis, the embedded broker) is read from /proc around each step. Then the
naive baseline (``fraud.bench.baseline``) runs the same steps in unary mode, and the model call is
timed alone. Results: a JSON file, a PNG plot, and a table printed as the steps finish.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from redis.cluster import RedisCluster

from fraud.bench.core_speed import CoreSpeedProbe
from fraud.bench.loadgen import MODES, LoadStep, run_step_in_child
from fraud.bench.world import BenchWorld, WorldConfig, prepare_world
from fraud.bench_stream import _proc_stats, machine_info
from fraud.config import Settings
from fraud.processes import ChildProcess, wait_for
from streaming import connect_redis

BASELINE = "baseline"  # the naive service, driven in unary mode


@dataclass(frozen=True)
class DecisionBenchConfig:
    modes: tuple[str, ...] = MODES
    rates: tuple[float, ...] = (50, 250, 1000, 2000, 5000, 10_000, 15_000, 20_000)
    duration_s: float = 30.0
    warmup_s: float = 5.0
    server_procs: int = 1
    window_ms: float = 5.0
    batch_rpc: str = "call"  # batch mode: a DecideBatch call per window, or a DecideStream message ("stream")
    arrivals: str = "poisson"
    timeout_s: float = 2.0
    baseline: bool = True
    model_speed: bool = True
    case_seconds: float = 1.0  # per case of the model-call and feature-read measurements
    # Partitions of the transactions and decisions topics (kafka mode); None: one per scorer process.
    # Every partition costs the embedded broker per request, whatever it carries (docs/performance.md).
    partitions: int | None = None
    budget_ms: float = 100.0  # "sustainable": p99 within this, nothing failed, shed <= max_shed_share
    # Also reported: the highest rate sustained within this tighter p99 (issue 4's second figure).
    tight_budget_ms: float = 50.0
    max_shed_share: float = 0.001
    # Once a step is hopeless (p99 over 10x the budget or over 1% failed) higher rates only repeat
    # the overload; they are skipped to keep the run short.
    skip_after_saturation: bool = True
    world: WorldConfig = field(default_factory=WorldConfig)


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    broker_pid: int | None  # embedded broker: its CPU is reported
    redis_pids: tuple[int, ...] = ()  # redis-servers on this machine (every master of a cluster)


def sustainable(step: dict, config: DecisionBenchConfig, budget_ms: float | None = None) -> bool:
    """Held within the p99 budget (``budget_ms``, default the config's) with nothing failed and at
    most ``max_shed_share`` shed."""
    p99 = step["latency_ms"]["p99"]
    failed = step["errors"] + step["timeouts"] + step["mismatched"]
    return (
        p99 is not None
        and p99 <= (config.budget_ms if budget_ms is None else budget_ms)
        and failed == 0
        and step["decided"] > 0
        and step["shed"] <= config.max_shed_share * step["measured"]
    )


def _saturated(step: dict, config: DecisionBenchConfig) -> bool:
    p99 = step["latency_ms"]["p99"]
    failed = step["errors"] + step["timeouts"] + step["mismatched"]
    return p99 is None or p99 > 10 * config.budget_ms or failed > 0.01 * step["measured"]


def _rates_for(mode: str, config: DecisionBenchConfig, done: list[dict]) -> Iterator[float]:
    """The configured steps, lowest first, until one saturates (``done``: this mode's steps so far).
    The baseline then also steps below them, halving, until one is sustainable (down to 5/s), so
    the ratio has a denominator."""
    for rate in sorted(config.rates):
        yield rate
        if config.skip_after_saturation and _saturated(done[-1], config):
            break
    if mode != BASELINE:
        return
    rate = min(config.rates) / 2
    while rate >= 5 and not best_sustainable_rate(done, config):
        yield rate
        rate /= 2


def best_sustainable_rate(steps: list[dict], config: DecisionBenchConfig, budget_ms: float | None = None) -> float:
    return max((s["achieved_rate"] for s in steps if sustainable(s, config, budget_ms)), default=0.0)


@contextmanager
def _servers(
    mode: str, env: dict[str, str], home: Path, ports: list[int]
) -> Iterator[tuple[list[ChildProcess], list[int]]]:
    """The scorer processes of a mode (one per port), and the Prometheus port of each."""
    from deploy.embedded import free_port

    procs: list[ChildProcess] = []
    metrics_ports: list[int] = []
    args = {"kafka": ["--kafka"], BASELINE: ["--naive"]}.get(mode, [])
    try:
        for i, port in enumerate(ports):
            metrics_ports.append(free_port())
            metrics = ["--metrics-port", str(metrics_ports[-1])]
            procs.append(ChildProcess(f"{mode}-server-{i}", ["serve", "--port", str(port), *metrics, *args], env, home))
        yield procs, metrics_ports
    finally:
        for p in procs:
            p.stop()


def _wait_ready(mode: str, procs: list[ChildProcess], settings: Settings, ports: list[int], world: BenchWorld) -> None:
    def alive() -> None:
        for p in procs:
            p.check_alive()

    if mode != "kafka":
        import grpc

        for port in ports:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            ready = grpc.channel_ready_future(channel)
            try:
                wait_for(ready.done, 120, f"the {mode} scorer on port {port}", 0.2, alive)
            finally:
                ready.cancel()
                channel.close()
        return
    # The Kafka door is ready when its consumers hold partitions: one probe payment, answered.
    # The watcher starts at the end of `decisions`: earlier modes' decisions are not read again.
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    from deploy.kafka import make_producer

    bootstrap, topics = settings.require_kafka(), settings.topics
    probe = f"probe-{uuid.uuid4().hex[:8]}".encode()
    line = world.payments.read_bytes().split(b"\n", 1)[0]
    payload = line.replace(b'"transaction_id":"', b'"transaction_id":"' + probe + b"-", 1)
    producer = make_producer(bootstrap)
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-probe-{probe.decode()}"})
    partitions = watcher.list_topics(topics.decisions, timeout=10).topics[topics.decisions].partitions
    watcher.assign([TopicPartition(topics.decisions, p, OFFSET_END) for p in partitions])

    def answered() -> bool:
        producer.produce(topics.transactions, value=payload)
        producer.flush(5)
        return any((m.key() or b"").startswith(probe) for m in watcher.consume(num_messages=1000, timeout=1.0))

    try:
        wait_for(answered, 120, "the Kafka decision door to join its consumer group", 0.5, alive)
    finally:
        watcher.close()


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: _proc_stats(pid)[1] for name, pid in pids.items()}


# The degraded reasons that mean a decision made by the rules alone (``DecisionEngine.without_features``).
# Other reasons count something else about a decision made in full, e.g. ``reasons_skipped`` (published
# without reason codes under a flood of flags): subtracting those made rows/batch negative under overload.
RULES_ONLY_REASONS = frozenset({"shed", "features_unavailable", "model_unavailable"})


def scorer_counters(metrics_ports: list[int]) -> list[Counter[str]]:
    """Each scorer process's own counters: batches decided with features, gRPC requests, decisions
    and decisions made by the rules alone (a scorer without them, e.g. the naive one, has none)."""
    import urllib.request

    counters: list[Counter[str]] = []
    for port in metrics_ports:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            counters.append(Counter())
            continue
        counters.append(counters_from_exposition(text))
    return counters


def counters_from_exposition(text: str) -> Counter[str]:
    """``scorer_counters`` for one scorer's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if sample.name == "fraud_decision_latency_seconds_count" and stage in ("features", "total"):
                totals["batches" if stage == "features" else "requests"] += sample.value
            elif sample.name == "fraud_decisions_total":
                totals["decisions"] += sample.value
            elif sample.name == "fraud_degraded_decisions_total" and sample.labels["reason"] in RULES_ONLY_REASONS:
                totals["degraded_decisions"] += sample.value
    return totals


def batching_between(before: list[Counter[str]], after: list[Counter[str]]) -> dict:
    """How the scorers batched a step: full (not degraded) decisions per batch, requests per
    batch, and the decisions each process made (how evenly the load was spread)."""
    total_before, total_after = sum(before, Counter()), sum(after, Counter())
    delta = {k: total_after[k] - total_before[k] for k in ("batches", "requests", "decisions", "degraded_decisions")}
    batches = delta["batches"]
    full = delta["decisions"] - delta["degraded_decisions"]
    return {
        **delta,
        "rows_per_batch": round(full / batches, 1) if batches else None,
        "requests_per_batch": round(delta["requests"] / batches, 2) if batches and delta["requests"] else None,
        "decisions_per_process": [a["decisions"] - b["decisions"] for b, a in zip(before, after, strict=True)],
    }


def run_step_measured(step: LoadStep, pids: dict[str, int]) -> dict:
    """One load step in a fresh generator process, with the CPU of every process around it.

    Every process's CPU is counted over the same span as the generator's own: from the moment it
    starts sending (after its imports and set-up, which would otherwise dilute the servers' share
    and inflate its own) to the result."""
    spawn = mp.get_context("spawn")
    out, sending = spawn.Queue(), spawn.Event()
    generator = spawn.Process(target=run_step_in_child, args=(step, out, sending), daemon=True)
    generator.start()
    set_up_s = 600  # generous: spawning, imports and building the messages
    deadline = time.monotonic() + set_up_s
    while not sending.wait(timeout=0.5) and time.monotonic() < deadline:
        if not generator.is_alive():  # it sets the event before its first send, so it failed
            raise RuntimeError(f"the load generator exited before sending (exit code {generator.exitcode})")
    before, started = _cpu(pids), time.monotonic()
    with CoreSpeedProbe() as probe:  # how fast the cores ran meanwhile: comparable across runs
        result = out.get(timeout=step.warmup_s + step.duration_s + step.timeout_s + set_up_s)
    elapsed = time.monotonic() - started
    generator.join(10)
    after = _cpu(pids)
    cpu_pct = {name: round(100 * (after[name] - before[name]) / elapsed, 1) for name in pids}
    scorer_cpu_s = sum(after[n] - before[n] for n in pids if n.startswith("server"))
    answered = result["decided"] * (step.warmup_s + step.duration_s) / step.duration_s
    result["cpu_pct"] = cpu_pct
    result["core_speed"] = probe.summary()
    result["server_cpu_us_per_decision"] = round(1e6 * scorer_cpu_s / answered, 1) if answered else None
    return result


def key_counts(client) -> list[int]:
    """Keys held by each Redis server of the store (every master of a cluster)."""
    if isinstance(client, RedisCluster):
        return [int(client.get_redis_connection(node).dbsize()) for node in client.get_primaries()]
    return [int(client.dbsize())]


def command_time_us(client) -> Counter[str]:
    """Microseconds each Redis command has taken since the server started (``INFO commandstats``),
    summed over every master of a cluster. A script's own commands count twice: inside ``evalsha``
    and under their own names."""
    nodes = (
        [client.get_redis_connection(node) for node in client.get_primaries()]
        if isinstance(client, RedisCluster)
        else [client]
    )
    total: Counter[str] = Counter()
    for node in nodes:
        for name, stats in node.info("commandstats").items():
            total[name.removeprefix("cmdstat_")] += float(stats["usec"])
    return total


def command_cost(before: Counter[str], after: Counter[str], decisions: int) -> dict[str, float]:
    """Redis's time per decision by command over a step, in µs, largest first (those under
    0.05 µs left out): where Redis's share of the machine goes."""
    if not decisions:
        return {}
    cost = {name: (after[name] - before[name]) / decisions for name in after}
    return {name: round(us, 2) for name, us in sorted(cost.items(), key=lambda kv: -kv[1]) if us >= 0.05}


def keyspace_growth(before: list[int], after: list[int]) -> dict:
    """Redis's keys over a step (summed over servers) and the powers of two any server's count
    crossed. A server rehashes its tables as its count passes a power of two: for ~80,000 inserts
    it spent 3-4x its usual CPU per record when each idempotency record was a key, and at 20,000/s
    on 2 cores that was when the scorers shed (docs/performance.md, section 3, "Intel Xeon host").
    The records are now fields of a few hashes (``streaming.online.DECISION_BUCKETS``): a step
    should add few keys, and a count that grows with the load says something else is keyed per
    payment."""
    # b < 2**k <= a exactly for k from b's bit length up to a's, less one
    crossed = {k for b, a in zip(before, after, strict=True) for k in range(max(1, b.bit_length()), a.bit_length())}
    return {"before": sum(before), "after": sum(after), "crossed_powers_of_two": sorted(crossed)}


def run_decision_bench(
    config: DecisionBenchConfig,
    settings: Settings,
    services: Services,
    say: Callable[[str], None] = print,
    on_step: Callable[[dict], None] | None = None,
) -> dict:
    """Prepare the world, run every mode's steps and the baseline; returns the whole result."""
    from deploy.embedded import free_port
    from deploy.kafka import ensure_topics

    client = connect_redis(services.redis_url)
    world = prepare_world(settings, client, config.world, say)
    topics = settings.topics
    ensure_topics(services.kafka_bootstrap, topics.all(), partitions=config.partitions or config.server_procs)
    env = {
        "KAFKA_BOOTSTRAP": services.kafka_bootstrap,
        "REDIS_URL": services.redis_url,
        "FRAUD_HOME": str(settings.home),
        "FRAUD_TOPIC_SUFFIX": settings.topic_suffix,
        "FRAUD_KEY_PREFIX": settings.key_prefix,
    }
    result: dict = {
        "machine": machine_info(),
        "model_version": world.model_version,
        "config": asdict(config),
        "world": {"history_payments": world.history_payments, "entities_in_redis": world.entities},
        "steps": [],
    }
    machine = result["machine"]
    say(f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}")
    say(f"model {world.model_version}; {world.entities:,} entity states in Redis")
    modes = [*config.modes, *([BASELINE] if config.baseline else [])]
    for mode in modes:
        # One port per scorer process, and the generator spreads its calls over them round-robin
        # (client-side balancing): one shared SO_REUSEPORT port balances connections, not calls,
        # and left one process idle while the other saturated (docs/performance.md).
        ports = [free_port() for _ in range(1 if mode == BASELINE else config.server_procs)]
        with _servers(mode, env, settings.home / "logs", ports) as (procs, metrics_ports):
            _wait_ready(mode, procs, settings, ports, world)
            pids = {f"server-{i}": p.proc.pid for i, p in enumerate(procs)}
            pids.update(_service_pids(services))
            mode_steps: list[dict] = []
            for n, rate in enumerate(_rates_for(mode, config, mode_steps)):
                step = LoadStep(
                    mode="unary" if mode == BASELINE else mode,
                    rate=rate,
                    duration_s=config.duration_s,
                    warmup_s=config.warmup_s,
                    payments=world.payments,
                    target=services.kafka_bootstrap if mode == "kafka" else ",".join(f"127.0.0.1:{p}" for p in ports),
                    transactions_topic=topics.transactions,
                    decisions_topic=topics.decisions,
                    step_id=f"{mode[0]}{n}x{uuid.uuid4().hex[:4]}",
                    arrivals=config.arrivals,
                    window_ms=config.window_ms,
                    batch_rpc=config.batch_rpc,
                    timeout_s=config.timeout_s,
                    connections=4 * len(procs),
                    seed=n + 1,
                )
                for p in procs:
                    p.check_alive()
                before, keys_before = scorer_counters(metrics_ports), key_counts(client)
                commands_before = command_time_us(client)
                measured = {**run_step_measured(step, pids), "mode": mode}
                measured["server_batching"] = batching_between(before, scorer_counters(metrics_ports))
                measured["redis_keys"] = keyspace_growth(keys_before, key_counts(client))
                # over the warm-up too, as the decisions it is divided by (server_batching's)
                decided = measured["server_batching"]["decisions"]
                measured["redis_us_per_decision"] = command_cost(commands_before, command_time_us(client), decided)
                mode_steps.append(measured)
                if on_step is not None:
                    on_step(measured)
            result["steps"].extend(mode_steps)
    client.close()
    result["sustainable_rate"] = {
        mode: best_sustainable_rate([s for s in result["steps"] if s["mode"] == mode], config) for mode in modes
    }
    result["sustainable_rate_tight"] = {
        mode: best_sustainable_rate([s for s in result["steps"] if s["mode"] == mode], config, config.tight_budget_ms)
        for mode in modes
    }
    base = result["sustainable_rate"].get(BASELINE)
    result["ratio_to_baseline"] = (
        {m: (round(r / base, 1) if base else None) for m, r in result["sustainable_rate"].items() if m != BASELINE}
        if config.baseline
        else {}
    )
    if config.model_speed:
        from fraud.bench.feature_speed import measure_feature_reads
        from fraud.bench.loadgen import load_payments
        from fraud.bench.model_speed import measure_model_calls
        from streaming import OnlineFeatureStore

        calls = measure_model_calls(settings.registry_dir, seconds_per_case=config.case_seconds)
        result["model_calls"] = [asdict(r) for r in calls]
        store = OnlineFeatureStore(connect_redis(services.redis_url), settings.key_prefix)
        payments = load_payments(world.payments)
        reads = measure_feature_reads(store, payments, seconds_per_case=config.case_seconds)
        result["feature_reads"] = [asdict(r) for r in reads]
        store.client.close()
    return result


def write_result(result: dict, out: Path) -> Path:
    """The JSON result and, beside it, the plot (``.png``); returns the plot's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    png = out.with_suffix(".png")
    plot_latency(result, png)
    return png


def plot_latency(result: dict, path: Path) -> None:
    """p50 / p99 / p99.9 latency against offered load, one colour per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    modes = list(dict.fromkeys(s["mode"] for s in result["steps"]))
    for colour, mode in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], modes, strict=False):
        steps = [s for s in result["steps"] if s["mode"] == mode and s["latency_ms"]["p50"] is not None]
        rates = [s["offered_rate"] for s in steps]
        for q, style in (("p50", ":"), ("p99", "-"), ("p999", "--")):
            ax.plot(rates, [s["latency_ms"][q] for s in steps], style, marker="o", color=colour, label=f"{mode} {q}")
    budget = result["config"]["budget_ms"]
    ax.axhline(budget, color="grey", linewidth=0.8)
    ax.text(ax.get_xlim()[0], budget * 1.05, f"{budget:.0f} ms budget", color="grey", fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="offered load (payments/s)", ylabel="latency from scheduled arrival (ms)")
    machine = result["machine"]
    ax.set_title(
        f"fraud bench: model {result['model_version']}, {machine['cores']} cores, "
        f"{result['config']['server_procs']} scorer process(es)",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=len(modes))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def redis_pids_of(url: str) -> tuple[int, ...]:
    """The pids of the redis-servers behind ``url`` that run on this machine (their CPU is then
    reported): one, or every master of a cluster."""
    from streaming import OnlineFeatureStore

    client = connect_redis(url)
    try:
        if OnlineFeatureStore(client).cluster:
            infos = client.info("server", target_nodes=client.get_primaries())
            found = [int(i["process_id"]) for i in (infos.values() if "process_id" not in infos else [infos])]
        else:
            found = [int(client.info("server")["process_id"])]
    finally:
        client.close()
    return tuple(pid for pid in found if os.path.exists(f"/proc/{pid}"))


def _service_pids(services: Services) -> dict[str, int]:
    pids = {"broker": services.broker_pid} if services.broker_pid else {}
    if len(services.redis_pids) == 1:
        pids["redis"] = services.redis_pids[0]
    else:
        pids.update({f"redis-{i}": pid for i, pid in enumerate(services.redis_pids)})
    return pids


def scaling_summary(results: list[dict]) -> dict:
    """The scaling curve over runs with 1, 2, ... N scorer processes: per mode, the sustainable
    rate at each count, its speed-up over the fewest processes, and the efficiency (speed-up per
    process added), so the curve is measured, not assumed."""
    counts = [r["config"]["server_procs"] for r in results]
    modes = [m for m in results[0]["sustainable_rate"] if m != BASELINE]
    curve: dict[str, list[dict]] = {}
    for mode in modes:
        rates = [r["sustainable_rate"].get(mode, 0.0) for r in results]
        base_rate, base_n = rates[0], counts[0]
        curve[mode] = [
            {
                "server_procs": n,
                "sustainable_rate": rate,
                "speedup": round(rate / base_rate, 2) if base_rate else None,
                "efficiency": round(rate / base_rate / (n / base_n), 2) if base_rate else None,
                "server_cpu_us_per_decision": _cpu_at_best(r, mode),
            }
            for n, rate, r in zip(counts, rates, results, strict=True)
        ]
    return {"machine": results[0]["machine"], "model_version": results[0]["model_version"], "curve": curve}


def _cpu_at_best(result: dict, mode: str) -> float | None:
    steps = [s for s in result["steps"] if s["mode"] == mode and s["server_cpu_us_per_decision"] is not None]
    return steps[-1]["server_cpu_us_per_decision"] if steps else None
