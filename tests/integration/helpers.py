"""Helpers for tests that run the system's real processes."""

from __future__ import annotations

import os
from pathlib import Path

from deploy import Topics, free_port
from fraud.processes import ChildProcess


def fraud_env(kafka_bootstrap: str, redis_url: str, topics: Topics, home: Path, **extra: str) -> dict[str, str]:
    suffix = topics.transactions.removeprefix("transactions")
    env = {
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "FRAUD_TOPIC_SUFFIX": suffix,
        "FRAUD_HOME": str(home),
        "FRAUD_STREAM_METRICS_PORT": str(free_port()),
        **extra,
    }
    assert all(v for v in env.values()), env
    return env


def start(name: str, args: list[str], env: dict[str, str], home: Path) -> ChildProcess:
    return ChildProcess(name, args, {**env, "PYTHONUNBUFFERED": "1", "PATH": os.environ["PATH"]}, home / "logs")
