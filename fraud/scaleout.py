"""The system scaled out on one machine, on its real distributed engines (docs/scaling.md).

``ScaledSystem`` starts, beside the broker and Redis that ``running_services`` provides:

- the feature stream as ``stream_processes`` cooperating bytewax processes (bytewax's own cluster
  mode: every process runs the same flow and bytewax routes each key to one worker);
- ``scorers`` `fraud serve` processes, each on its own port; callers spread calls over them
  round-robin (``scoring.ScorerPool``): one shared SO_REUSEPORT port balances connections, not
  calls (docs/performance.md).

With ``Scale.redis_masters`` >= 3 the online store is a real Redis Cluster, and the topics get
``Scale.partitions`` partitions. Nothing home-made sits between the pieces: the same processes, in
the same roles, run as Kubernetes pods (deploy/k8s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fraud.config import Settings
from fraud.processes import ChildProcess, wait_for


@dataclass(frozen=True)
class Scale:
    """How far to scale out. The defaults are the smallest real cluster of each engine."""

    partitions: int = 4  # of every topic: the unit of parallelism for the stream and the Kafka door
    stream_processes: int = 2
    scorers: int = 2
    redis_masters: int = 3  # 0: one redis-server; a Redis Cluster needs at least 3

    def __post_init__(self) -> None:
        for name in ("partitions", "stream_processes", "scorers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: at least 1, got {getattr(self, name)}")
        if self.redis_masters not in (0, 1) and self.redis_masters < 3:
            raise ValueError(f"redis_masters: 0 or 1 (one server) or at least 3 (a cluster), got {self.redis_masters}")


@dataclass
class ScaledSystem:
    """The running processes: scorer gRPC targets, and every child to watch."""

    scorer_targets: list[str]
    scorer_metrics_ports: list[int]
    stream_metrics_ports: list[int]
    children: list[ChildProcess] = field(default_factory=list)

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()


def child_env(settings: Settings) -> dict[str, str]:
    """What a `fraud` child process needs to find the same services, home and names."""
    return {
        "KAFKA_BOOTSTRAP": settings.require_kafka(),
        "REDIS_URL": settings.require_redis(),
        "FRAUD_HOME": str(settings.home),
        "FRAUD_TOPIC_SUFFIX": settings.topic_suffix,
        "FRAUD_KEY_PREFIX": settings.key_prefix,
        # The stream processes share the one store `scaled_system` makes before they start.
        "FRAUD_STREAM_RECOVERY_LAYOUT": "shared",
    }


@contextmanager
def scaled_system(settings: Settings, scale: Scale, log_dir: Path | None = None) -> Iterator[ScaledSystem]:
    """Start the stream processes and the scorers against ``settings``' services; stop them on exit.

    The services (broker, Redis) must be running and the topics made with ``scale.partitions``
    partitions (``running_services(..., partitions=...)``); a champion model must be registered.
    """
    from deploy.embedded import free_port
    from retrain import ModelRegistry
    from streaming.dataflow import Recovery, StreamConfig, prepare_recovery

    if ModelRegistry(settings.registry_dir).champion() is None:
        raise RuntimeError(
            f"no champion model in {settings.registry_dir}: the scorers need one "
            "(`fraud simulate` then `fraud train`, with the same --home)"
        )
    logs = log_dir or settings.home / "logs"
    env = child_env(settings)
    # Every stream process resumes from one recovery store: made once here, before any starts, so
    # they do not race to replace it (each process's `prepare_recovery` then finds it current).
    topics = settings.topics
    stream_config = StreamConfig(
        kafka_bootstrap=env["KAFKA_BOOTSTRAP"],
        redis_url=env["REDIS_URL"],
        key_prefix=settings.key_prefix,
        transactions_topic=topics.transactions,
        labels_topic=topics.labels,
        dead_letter_topic=topics.dead_letter,
        shards=settings.stream_shards,
    )
    prepare_recovery(Recovery(settings.stream_recovery_dir, settings.snapshot_interval_s), stream_config)
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(scale.stream_processes))
    stream_metrics = free_port() if scale.stream_processes == 1 else _port_run(scale.stream_processes)
    system = ScaledSystem([], [], [stream_metrics + i for i in range(scale.stream_processes)])
    with ExitStack() as stack:
        for i in range(scale.stream_processes):
            cluster = ["--process-id", str(i), "--addresses", addresses] if scale.stream_processes > 1 else []
            stream_env = {**env, "FRAUD_STREAM_METRICS_PORT": str(stream_metrics)}
            system.children.append(_child(stack, f"stream-{i}", ["stream", *cluster], stream_env, logs))
        for i in range(scale.scorers):
            port, metrics = free_port(), free_port()
            args = ["serve", "--port", str(port), "--metrics-port", str(metrics)]
            system.children.append(_child(stack, f"scorer-{i}", args, env, logs))
            system.scorer_targets.append(f"127.0.0.1:{port}")
            system.scorer_metrics_ports.append(metrics)
        # Exit stops every child at once (the callbacks run last-in first): then waits for each.
        stack.callback(lambda: [child.interrupt() for child in system.children])
        for target in system.scorer_targets:
            _wait_serving(target, system)
        yield system


def _child(stack: ExitStack, name: str, args: list[str], env: dict[str, str], logs: Path) -> ChildProcess:
    child = ChildProcess(name, args, env, logs)
    stack.callback(child.stop)
    return child


def _port_run(n: int) -> int:
    """The first of ``n`` consecutive free ports (each stream process serves metrics on base + id)."""
    import socket

    from deploy.embedded import free_port

    for _ in range(50):
        base = free_port()
        socks = []
        try:
            for offset in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no run of {n} free ports for the stream processes' metrics")


def _wait_serving(target: str, system: ScaledSystem) -> None:
    import grpc

    channel = grpc.insecure_channel(target)
    ready = grpc.channel_ready_future(channel)
    try:
        wait_for(ready.done, 120, f"the scorer on {target}", 0.2, system.check_alive)
    finally:
        ready.cancel()
        channel.close()
