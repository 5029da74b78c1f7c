"""DecideStream: many batch messages on one call, against a real in-process scorer (real Redis and
broker). Every message gets one reply with its decisions in order; replies may come in any
order; a bad payment gets its own error; an oversized message ends the stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from scoring.proto import fraud_pb2 as pb
from scoring.proto import fraud_pb2_grpc
from scoring.wire import transaction_to_proto
from tests.factories import txn
from tests.reliability.conftest import running, scorer_service

pytestmark = pytest.mark.integration


def _batch(first: int, n: int) -> pb.TransactionBatch:
    return pb.TransactionBatch(
        transactions=[transaction_to_proto(txn(first + i, card=f"card-{(first + i) % 7:06d}")) for i in range(n)]
    )


async def _stream(target: str, requests: list[pb.TransactionBatch]) -> list[pb.DecisionBatch]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = fraud_pb2_grpc.FraudScorerStub(channel).DecideStream()
        for request in requests:
            await call.write(request)
        await call.done_writing()
        return [reply async for reply in call]


def test_every_message_on_a_stream_gets_its_decisions_in_order(kafka_bootstrap, topics, redis_client, model):
    service = scorer_service(kafka_bootstrap, topics, redis_client, model)
    requests = [_batch(100 * k, 1 + k % 4) for k in range(12)]
    bad = transaction_to_proto(txn(9999))
    bad.amount_minor = -5
    requests.append(pb.TransactionBatch(transactions=[transaction_to_proto(txn(5000)), bad]))
    with running(service) as target:
        replies = asyncio.run(_stream(target, requests))
    assert len(replies) == len(requests)
    asked = {tuple(t.transaction_id for t in r.transactions) for r in requests}
    answered = {tuple(d.transaction_id for d in r.decisions) for r in replies}
    assert answered == asked  # one reply per message, each in its message's order
    decisions = [d for r in replies for d in r.decisions]
    errors = [d for d in decisions if d.error]
    assert [d.transaction_id for d in errors] == [bad.transaction_id] and "amount_minor" in errors[0].error
    assert all(d.outcome in ("approve", "flag", "block") for d in decisions if not d.error)
    assert service.engine.metrics.registry.get_sample_value("fraud_invalid_requests_total") == 1


def test_an_oversized_message_ends_the_stream_as_invalid_argument(kafka_bootstrap, topics, redis_client, model):
    service = scorer_service(kafka_bootstrap, topics, redis_client, model, max_batch=3)
    with running(service) as target:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            asyncio.run(_stream(target, [_batch(0, 2), _batch(10, 4)]))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "max_batch" in refused.value.details()
        assert len(asyncio.run(_stream(target, [_batch(20, 3)]))[0].decisions) == 3  # and it still serves
