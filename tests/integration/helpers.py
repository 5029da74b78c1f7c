"""Helpers for tests that run the system's real processes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from deploy import Topics, free_port
from fraud.processes import ChildProcess
from scoring import ScorerClient
from tests.factories import txn


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


class SteadyCaller(threading.Thread):
    """Calls Decide back to back until halted, each call a new payment of this worker's own (ids
    unique across workers, ``cards`` cards); keeps ``keep(started, latency_s, decision)`` of every
    answer in ``answers`` and the status code of every failed call in ``errors``."""

    def __init__(
        self,
        target: str,
        worker: int,
        keep: Callable[[float, float, Any], Any],
        timeout_s: float = 5.0,
        cards: int = 31,
    ) -> None:
        super().__init__(daemon=True)
        self.client = ScorerClient(target, timeout_s=timeout_s)
        self.worker, self.keep, self.cards = worker, keep, cards
        self.answers: list[Any] = []
        self.errors: list[grpc.StatusCode] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            i += 1
            card = f"card-{self.worker}-{i % self.cards:03d}"
            payment = txn(self.worker * 10_000_000 + i, card=card, amount_minor=1500)
            started = time.monotonic()
            try:
                decision = self.client.decide(payment)
                self.answers.append(self.keep(started, time.monotonic() - started, decision))
            except grpc.RpcError as exc:
                self.errors.append(exc.code())
        self.client.close()
