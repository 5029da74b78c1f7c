"""A small registered model and a scorer wired as `fraud serve` wires it, for the doors' tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

from deploy import free_port, make_producer
from retrain import ModelRegistry
from rules_engine import load_rules
from schema import DecisionThresholds
from scoring import DecisionEngine, DecisionPublisher, FraudScorerService, ScorerMetrics, ServerConfig, serve
from streaming import OnlineFeatureStore
from tests.factories import register_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    register_tiny_model(root, lambda x: x[:, 0] > 1.5)
    return ModelRegistry(root).load()


def scorer_service(kafka_bootstrap, topics, redis_client, model, **config) -> FraudScorerService:
    metrics = ScorerMetrics()
    engine = DecisionEngine(
        load_rules(), model, OnlineFeatureStore(redis_client, "reliability"), DecisionThresholds(), metrics
    )
    publisher = DecisionPublisher(make_producer(kafka_bootstrap), topics.decisions, metrics)
    return FraudScorerService(engine, publisher, ServerConfig(port=free_port(), **config))


@contextmanager
def running(service: FraudScorerService) -> Iterator[str]:
    """Serve ``service`` on its own event loop in a thread; yields the target address."""
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    task: list[asyncio.Task] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        task.append(loop.create_task(serve(service, ready)))
        with suppress(asyncio.CancelledError):
            loop.run_until_complete(task[0])
        rest = asyncio.all_tasks(loop)  # the batcher's worker, cancelled by serve() on its way out
        for t in rest:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if ready.is_set():
                break
            threading.Event().wait(0.05)
        assert ready.is_set(), "the scorer did not start"
        yield f"{service.config.host}:{service.config.port}"
    finally:
        loop.call_soon_threadsafe(task[0].cancel)
        thread.join(15)
