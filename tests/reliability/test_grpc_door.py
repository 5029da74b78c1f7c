"""The gRPC door under hostile input, against a real in-process scorer (real Redis and broker):
each hostile payment in a DecideBatch gets its own error naming the field, every valid one a
decision; a malformed or oversized call is refused whole; the server keeps serving after all of it."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from scoring import ScorerClient
from scoring.proto import fraud_pb2 as pb
from tests.reliability.conftest import running, scorer_service
from tests.reliability.hostile import hostile_batch, valid_fields

pytestmark = pytest.mark.integration

PROTO_FIELDS = {f.name for f in pb.Transaction.DESCRIPTOR.fields}


def proto(fields: dict) -> pb.Transaction:
    return pb.Transaction(**{k: v for k, v in fields.items() if k in PROTO_FIELDS})


@pytest.fixture
def scorer(kafka_bootstrap, topics, redis_client, model):
    service = scorer_service(kafka_bootstrap, topics, redis_client, model, max_message_bytes=256 * 1024)
    with running(service) as target, ScorerClient(target, timeout_s=10) as client:
        client.wait_ready(10)
        yield client, service


def assert_still_serving(client: ScorerClient, n: int = 90_000) -> None:
    (decision,) = client.decide_batch([proto(valid_fields(n))])
    assert decision.outcome in ("approve", "flag", "block") and not decision.error


def test_every_hostile_payment_gets_an_error_naming_its_field_and_every_valid_one_a_decision(scorer):
    client, service = scorer
    calls = []

    @settings(
        max_examples=15,
        deadline=None,
        phases=[Phase.generate],  # a failing batch is reported as drawn (shrinking would call again and again)
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(hostile_batch(per_kind=3, proto_only=True))
    def one_call(batch):
        answers = client.decide_batch([proto(e.fields) for e in batch])
        calls.append(len(batch))
        assert len(answers) == len(batch)
        for event, answer in zip(batch, answers, strict=True):
            assert answer.transaction_id == str(event.fields.get("transaction_id", ""))
            if event.expect is None:
                assert not answer.error, (event.kind, answer.error)
                assert answer.outcome in ("approve", "flag", "block") and answer.model_version
            else:
                assert answer.error.startswith("invalid transaction: "), (event.kind, event.fields)
                assert event.expect in answer.error, (event.kind, answer.error)
                assert not answer.outcome

    one_call()
    assert len(calls) == 15
    invalid = service.engine.metrics.registry.get_sample_value("fraud_invalid_requests_total")
    assert invalid is not None and invalid > 0
    assert_still_serving(client)


def test_a_repeated_transaction_id_in_one_batch_is_an_error_for_the_copy(scorer):
    client, _ = scorer
    first, other = valid_fields(1), valid_fields(2)
    answers = client.decide_batch([proto(first), proto(other), proto({**first, "amount_minor": 999})])
    assert [bool(a.error) for a in answers] == [False, False, True]
    assert "duplicate transaction id" in answers[2].error and "`$.transaction_id`" in answers[2].error
    # the same id in the next call is a retry, decided again
    (again,) = client.decide_batch([proto(first)])
    assert not again.error


def test_a_single_hostile_decide_is_invalid_argument_naming_the_field(scorer):
    client, _ = scorer
    with pytest.raises(grpc.RpcError) as refused:
        client.decide(proto({**valid_fields(3), "currency": "ZZZ"}))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "`$.currency`" in refused.value.details()
    assert_still_serving(client)


def test_bytes_that_are_not_a_request_are_refused_whole(scorer):
    client, _ = scorer
    raw_call = client.channel.unary_unary("/fraud.v1.FraudScorer/DecideBatch")  # bytes in, bytes out
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05\x0a\x03abc\xff", b"\x0a" * 10):
        with pytest.raises(grpc.RpcError) as refused:
            raw_call(garbage, timeout=5)
        assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)
    assert_still_serving(client)


def test_an_oversized_call_is_refused_and_the_next_one_is_served(scorer):
    client, service = scorer
    limit = service.config.max_message_bytes
    big = [proto(valid_fields(n)) for n in range(limit // 100)]  # ~125 bytes each
    assert pb.TransactionBatch(transactions=big).ByteSize() > limit
    with pytest.raises(grpc.RpcError) as refused:
        client.decide_batch(big)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(client)
    assert len(client.decide_batch(big[: limit // 1000])) == limit // 1000  # well under the limit: decided
