"""The gRPC decision service (grpc.aio): Decide for one transaction, DecideBatch for many,
DecideStream for a gateway's stream of batches.

All go through one ``DecisionBatcher``: concurrent calls (and stream messages) are decided
together, one batch at a time, and requests queued past the latency budget are shed with an
explicit degraded decision.

The server also answers the standard health service (``grpc.health.v1.Health``), for both the
whole server ("") and ``SERVICE_NAME``: NOT_SERVING until it listens with a model loaded, SERVING
while it decides, NOT_SERVING again from the moment it starts shutting down. Kubernetes' ``grpc``
readiness and liveness probes ask it (deploy/k8s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from schema import Decision, InvalidEvent, Transaction
from scoring.batcher import BatchingConfig, DecisionBatcher
from scoring.engine import DecisionEngine
from scoring.experiment import ExperimentRouter
from scoring.proto import fraud_pb2 as pb
from scoring.proto import fraud_pb2_grpc
from scoring.publisher import DecisionPublisher
from scoring.wire import decision_to_proto, fill_decision, transaction_from_proto

log = logging.getLogger(__name__)

# The decision service's full name: what a readiness check asks about (a Kubernetes grpc probe's
# ``service``); the empty name "" stands for the whole server (liveness).
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FraudScorer"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    max_batch: int = 5000  # a larger DecideBatch is refused, so one caller cannot stall everyone
    # A larger request is refused by gRPC itself (RESOURCE_EXHAUSTED) before it is parsed: bounds the
    # memory one call can take. 4 MiB holds a max_batch of transactions (~300 bytes each) 2.5 times.
    max_message_bytes: int = 4 * 1024 * 1024
    batching: BatchingConfig = BatchingConfig()


class FraudScorerService(fraud_pb2_grpc.FraudScorerServicer):
    def __init__(
        self, engine: DecisionEngine | ExperimentRouter, publisher: DecisionPublisher, config: ServerConfig
    ) -> None:
        self.engine = engine
        self.publisher = publisher
        self.config = config
        self.batcher = DecisionBatcher(self._decide_and_publish, self.shed_and_publish, config.batching)

    def serving_model(self) -> str | None:
        """The version of the champion being decided with, None without one (not ready)."""
        champion = self.engine.release.current.champion
        return None if champion is None else champion.version

    def _decide_and_publish(self, transactions: list[Transaction]) -> list[Decision]:
        # Idempotent by transaction id: a retry (after a timeout, a restart, on another scorer) is
        # answered with the decision already made, and only new decisions are published.
        once = self.engine.decide_batch_once(transactions)
        self.publisher.publish([d for d, new in zip(once.decisions, once.new, strict=True) if new])
        return once.decisions

    def shed_and_publish(self, transactions: list[Transaction], reason: str) -> list[Decision]:
        """The batcher's answer to payments queued past the budget: rules only, recorded, published."""
        once = self.engine.shed_once(transactions, reason)  # recorded too: a retry gets the same answer
        self.publisher.publish([d for d, new in zip(once.decisions, once.new, strict=True) if new])
        return once.decisions

    async def Decide(self, request: pb.Transaction, context: grpc.aio.ServicerContext) -> pb.Decision:  # noqa: N802
        started = time.perf_counter()
        await _refuse_malformed(request, context, self.engine.metrics)
        try:
            txn = transaction_from_proto(request, now=time.time())
        except InvalidEvent as exc:
            self.engine.metrics.invalid.inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid transaction: {exc}")
        (decision,) = await self.batcher.decide([txn])
        self.engine.metrics.observe_stage("total", time.perf_counter() - started)
        return decision_to_proto(decision)

    async def DecideBatch(  # noqa: N802
        self, request: pb.TransactionBatch, context: grpc.aio.ServicerContext
    ) -> pb.DecisionBatch:
        started = time.perf_counter()
        await _refuse_malformed(request, context, self.engine.metrics)
        reply = await self._decide_message(request, context)
        self.engine.metrics.observe_stage("total", time.perf_counter() - started)
        return reply

    async def DecideStream(  # noqa: N802
        self, requests: AsyncIterator[pb.TransactionBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecisionBatch]:
        """Each request message answered by one reply, as soon as it is decided: messages are
        decided concurrently (the batcher merges them with every other caller's), so a reply may
        overtake an earlier one. A malformed or oversized message ends the stream (INVALID_ARGUMENT),
        as it would fail a DecideBatch call."""
        replies: asyncio.Queue[asyncio.Task[pb.DecisionBatch] | None] = asyncio.Queue()
        deciding: set[asyncio.Task[pb.DecisionBatch]] = set()  # held: the loop keeps only weak references
        asked = 0  # request messages read so far

        async def answer(request: pb.TransactionBatch, started: float) -> pb.DecisionBatch:
            reply = await self._decide_message(request, context)
            self.engine.metrics.observe_stage("total", time.perf_counter() - started)
            return reply

        async def read() -> None:
            nonlocal asked
            try:
                async for request in requests:
                    await _refuse_malformed(request, context, self.engine.metrics)
                    asked += 1
                    task = asyncio.create_task(answer(request, time.perf_counter()))
                    deciding.add(task)
                    task.add_done_callback(_settled)
                    task.add_done_callback(deciding.discard)
                    task.add_done_callback(replies.put_nowait)
            finally:
                replies.put_nowait(None)  # the client closed its side (or the call ended)

        reader = asyncio.create_task(read())
        answered, closed = 0, False
        try:
            while not closed or answered < asked:
                item = await replies.get()
                if item is None:
                    closed = True
                    reader.result()  # an abort of the reader (malformed message) ends the stream
                    continue
                answered += 1
                yield item.result()
        finally:
            reader.cancel()

    async def _decide_message(
        self, request: pb.TransactionBatch, context: grpc.aio.ServicerContext
    ) -> pb.DecisionBatch:
        """The decisions for one batch message (a DecideBatch call or a DecideStream message)."""
        if len(request.transactions) > self.config.max_batch:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch of {len(request.transactions)} exceeds max_batch {self.config.max_batch}",
            )
        # A malformed transaction gets its own error; it must not cost its neighbours a decision.
        # So does a repeated transaction id: the first is decided, a second copy in the same batch
        # would be folded into its card's windows twice.
        errors: list[tuple[str, str] | None] = []  # per request entry: (id, error), None if valid
        valid: list[Transaction] = []
        seen: set[str] = set()
        now = time.time()
        for msg in request.transactions:
            try:
                if msg.transaction_id in seen:
                    raise InvalidEvent("duplicate transaction id in this batch - at `$.transaction_id`")
                txn = transaction_from_proto(msg, now=now)
                seen.add(txn.transaction_id)
                valid.append(txn)
                errors.append(None)
            except InvalidEvent as exc:
                self.engine.metrics.invalid.inc()
                errors.append((msg.transaction_id, f"invalid transaction: {exc}"))
        decided = iter(await self.batcher.decide(valid) if valid else [])
        reply = pb.DecisionBatch()
        add = reply.decisions.add
        for error in errors:
            if error is None:
                fill_decision(add(), next(decided))
            else:
                add(transaction_id=error[0], error=error[1])
        return reply


def _settled(task: asyncio.Task) -> None:
    """Mark a finished task's exception as seen: a stream that ended early (its reader aborted)
    never reads the replies still queued, and asyncio would log each failure as never retrieved."""
    if not task.cancelled():
        task.exception()


class MalformedRequest:
    """What a request that is not the method's protobuf message deserialises to: the handler then
    refuses the call with INVALID_ARGUMENT (grpc's own answer would be UNKNOWN, "Unexpected ...")."""

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(parse):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as exc:
            return MalformedRequest(str(exc))

    return deserialize


async def _refuse_malformed(request: object, context: grpc.aio.ServicerContext, metrics) -> None:
    if isinstance(request, MalformedRequest):
        metrics.invalid.inc()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")


def add_to_server(service: FraudScorerService, server: grpc.aio.Server) -> None:
    """fraud_pb2_grpc.add_FraudScorerServicer_to_server, with requests that fail to parse refused
    as INVALID_ARGUMENT by the handler instead of UNKNOWN by grpc."""
    handlers = {
        "Decide": grpc.unary_unary_rpc_method_handler(
            service.Decide,
            request_deserializer=_lenient(pb.Transaction.FromString),
            response_serializer=pb.Decision.SerializeToString,
        ),
        "DecideBatch": grpc.unary_unary_rpc_method_handler(
            service.DecideBatch,
            request_deserializer=_lenient(pb.TransactionBatch.FromString),
            response_serializer=pb.DecisionBatch.SerializeToString,
        ),
        "DecideStream": grpc.stream_stream_rpc_method_handler(
            service.DecideStream,
            request_deserializer=_lenient(pb.TransactionBatch.FromString),
            response_serializer=pb.DecisionBatch.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def _add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """The standard health service on ``server``, NOT_SERVING for "" and SERVICE_NAME until told."""
    checks = health.aio.HealthServicer()
    for name in (health.OVERALL_HEALTH, SERVICE_NAME):
        await checks.set(name, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    return checks


async def serve(service: FraudScorerService, ready: asyncio.Event | None = None, grace_s: float = 5.0) -> None:
    """Run until cancelled; on cancellation report NOT_SERVING, stop accepting calls, finish the
    calls in flight (up to ``grace_s``), then flush the decisions to Kafka.

    Health: NOT_SERVING until the server listens with a model loaded, then SERVING (before
    ``ready`` is set). A scorer never listens without a model: ``fraud serve`` refuses to start
    when the registry has none that loads (``scoring.release.RegistryRelease``), so until then a
    probe finds nothing listening and fails as well."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", service.config.max_message_bytes)])
    add_to_server(service, server)
    checks = await _add_health(server)
    address = f"{service.config.host}:{service.config.port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    version = service.serving_model()
    if version is not None:
        for name in (health.OVERALL_HEALTH, SERVICE_NAME):
            await checks.set(name, SERVING)
    log.info("serving decisions on %s with model %s", address, version)
    if ready is not None:
        ready.set()
    try:
        # Wait on a future of our own: cancelling ``server.wait_for_termination()`` cancels the
        # server's shutdown future with it, and ``server.stop(grace)`` then returns at once,
        # cancelling the calls in flight instead of letting them finish (grpcio 1.85).
        await asyncio.get_running_loop().create_future()
    finally:
        # NOT_SERVING first (for good: later sets are ignored), so health watchers and probes see
        # the drain before the listener closes. A client holding a Health.Watch stream keeps
        # server.stop waiting until the grace runs out (its stream never ends by itself).
        await checks.enter_graceful_shutdown()
        log.info("stopping: no new calls, finishing those in flight (up to %.0f s)", grace_s)
        await server.stop(grace=grace_s)
        service.batcher.close()
        left = service.publisher.flush()
        log.info("stopped; %d decisions left undelivered to Kafka", left or 0)


async def serve_until_signalled(service: FraudScorerService, grace_s: float = 5.0) -> None:
    """``serve`` until SIGTERM or SIGINT, then shut down gracefully (as ``serve`` does when
    cancelled): what a rolling restart sends. Main thread only (signal handlers)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(service, grace_s=grace_s)
