"""The scorer's standard gRPC health service, which Kubernetes' grpc probes ask (deploy/k8s):
SERVING once a real in-process scorer listens with its model, NOT_SERVING as soon as its shutdown
begins (what SIGTERM starts), nothing listening after; and without a model `fraud serve` never
listens at all, so a readiness probe cannot pass."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from deploy import free_port, make_producer
from fraud.cli import app
from retrain.registry import ModelLoadError
from rules_engine import load_rules
from schema import DecisionThresholds
from scoring import DecisionEngine, DecisionPublisher, FraudScorerService, ScorerMetrics, ServerConfig, serve
from scoring.server import NOT_SERVING, SERVICE_NAME, SERVING
from streaming import OnlineFeatureStore

pytestmark = pytest.mark.integration


def _service(kafka_bootstrap, topics, redis_client, model) -> FraudScorerService:
    metrics = ScorerMetrics()
    engine = DecisionEngine(
        load_rules(), model, OnlineFeatureStore(redis_client, "health"), DecisionThresholds(), metrics
    )
    publisher = DecisionPublisher(make_producer(kafka_bootstrap), topics.decisions, metrics)
    return FraudScorerService(engine, publisher, ServerConfig(port=free_port()))


def _ask(name: str) -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=name)


def test_serving_while_deciding_then_not_serving_from_the_start_of_shutdown(
    kafka_bootstrap, topics, redis_client, model
):
    service = _service(kafka_bootstrap, topics, redis_client, model)
    target = f"{service.config.host}:{service.config.port}"

    async def scenario() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(service, ready, grace_s=2.0))
        await asyncio.wait_for(ready.wait(), 10)
        async with grpc.aio.insecure_channel(target) as channel:
            checks = health_pb2_grpc.HealthStub(channel)
            # what the readiness probe (the decision service) and the liveness probe ("") ask
            assert (await checks.Check(_ask(SERVICE_NAME), timeout=5)).status == SERVING
            assert (await checks.Check(_ask(""), timeout=5)).status == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await checks.Check(_ask("fraud.v1.NoSuchService"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

            watch = checks.Watch(_ask(SERVICE_NAME))
            assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
            task.cancel()  # what SIGTERM does to `fraud serve` (serve_until_signalled)
            assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
            watch.cancel()  # an open Watch would hold the shutdown for the whole grace
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await health_pb2_grpc.HealthStub(channel).Check(_ask(SERVICE_NAME), timeout=2)
            assert gone.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_without_a_model_fraud_serve_refuses_to_start_so_nothing_answers_a_probe(tmp_path):
    """No champion in the registry: `fraud serve` stops before it opens the port (the probe's
    connection is refused, the pod never becomes ready), with a reason naming the fix."""
    port = free_port()
    result = CliRunner().invoke(app, ["serve", "--home", str(tmp_path), "--port", str(port), "--metrics-port", "0"])
    assert isinstance(result.exception, ModelLoadError), result.output
    assert "fraud train" in str(result.exception)
