"""Shared fixtures: real servers (tansu broker, redis-server) started once per test session on free
loopback ports and stopped afterwards. KAFKA_BOOTSTRAP / REDIS_URL, if set, are used instead.
A server that cannot start is an error, never a skip."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from deploy import EmbeddedKafka, EmbeddedRedis, EmbeddedRedisCluster, Topics, ensure_topics

FAULT_TESTS = "reliability"
# As `fraud` sets it (fraud/cli.py main): XGBoost's OpenMP threads sleep instead of spinning while
# they wait, or in-process fits crawl whenever the servers keep the other core busy. Children inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/reliability break things for real (kill, hang, corrupt, fuzz): they carry
    the ``fault`` marker, run by `make test-faults` (CI runs it after `make test`)."""
    for item in items:
        if FAULT_TESTS in item.path.parts:
            item.add_marker(pytest.mark.fault)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    with EmbeddedKafka(tmp_path_factory.mktemp("kafka"), os.environ.get("CALF_TANSU_BIN")) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis Cluster of 3 masters (``redis-cli --cluster create``); REDIS_CLUSTER_URL, if set,
    names an external one instead (``redis+cluster://host:port``)."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """Topics of this test only (uuid-suffixed), created on the session broker."""
    suffix = uuid.uuid4().hex[:8]
    named = Topics(
        transactions=f"transactions-{suffix}",
        decisions=f"decisions-{suffix}",
        dead_letter=f"dead-letter-{suffix}",
        labels=f"labels-{suffix}",
        shadow_decisions=f"decisions-shadow-{suffix}",
    )
    ensure_topics(kafka_bootstrap, named.all())
    return named
