"""The bench's batch mode over DecideStream (`fraud bench --batch-rpc stream`) against a real
in-process scorer: every payment sent on the streams is answered, matched by its transaction id,
and the step's figures read like those of DecideBatch calls."""

from __future__ import annotations

from pathlib import Path

import pytest

from fraud.bench import loadgen
from fraud.bench.loadgen import LoadStep, _index_of, run_step
from retrain import ModelRegistry
from schema import encode
from tests.factories import register_tiny_model, txn
from tests.reliability.conftest import running, scorer_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    register_tiny_model(root, lambda x: x[:, 0] > 1.5)
    return ModelRegistry(root).load()


def payments_file(tmp_path) -> Path:
    """200 payments over 50 cards, as JSON lines: what a step sends, cycled."""
    path = tmp_path / "payments.jsonl"
    path.write_bytes(b"\n".join(encode(txn(i, card=f"card-{i % 50:06d}")) for i in range(200)))
    return path


def result_so_far(service) -> int:
    """Decisions the scorer has made so far."""
    registry = service.engine.metrics.registry
    return int(sum(s.value for m in registry.collect() if m.name == "fraud_decisions" for s in m.samples
                   if s.name == "fraud_decisions_total"))  # fmt: skip


def test_index_of_reads_only_this_steps_ids():
    assert _index_of("b3x1a2-17", "b3x1a2-", 20) == 17
    assert _index_of("b3x1a2-20", "b3x1a2-", 20) is None  # past the schedule
    assert _index_of("other-17", "b3x1a2-", 20) is None
    assert _index_of("b3x1a2-1e3", "b3x1a2-", 2000) is None


@pytest.mark.parametrize("batch_rpc", ["stream", "call"])
def test_every_payment_of_a_batch_step_is_answered(batch_rpc, kafka_bootstrap, topics, redis_client, model, tmp_path):
    payments = payments_file(tmp_path)
    service = scorer_service(kafka_bootstrap, topics, redis_client, model)
    with running(service) as target:
        step = LoadStep(
            mode="batch", rate=400, duration_s=1.5, warmup_s=0.5, payments=payments, target=target,
            step_id=f"t-{batch_rpc}", batch_rpc=batch_rpc, connections=2, timeout_s=5.0,
        )  # fmt: skip
        starts = []
        result = run_step(step, on_start=lambda: starts.append(result_so_far(service)))
        assert result_so_far(service) >= result.measured  # the count read at the start is a real one
    # sending started once, after the set-up and before any payment reached the scorer: the span
    # over which `fraud bench` counts every process's CPU
    assert starts == [0]
    assert result.generator_cpu_pct > 0
    assert result.measured > 400 and result.decided == result.measured, result
    assert result.errors == result.timeouts == result.mismatched == 0 and not result.error_codes, result
    assert 0 < result.calls < result.sent  # windows, not payments
    assert result.latency_ms["p50"] is not None and result.latency_ms["p50"] <= result.latency_ms["max"]


@pytest.mark.parametrize("batch_rpc", ["stream", "call"])
def test_a_window_with_more_due_than_a_message_may_carry_goes_in_several(
    batch_rpc, kafka_bootstrap, topics, redis_client, model, tmp_path, monkeypatch
):
    # A generator that fell behind once sent 5,900 payments in one stream message: over the
    # scorer's max_batch, refused, and the stream (and every payment after) lost with it.
    monkeypatch.setattr(loadgen, "MAX_PAYMENTS_PER_MESSAGE", 7)
    payments = payments_file(tmp_path)
    service = scorer_service(kafka_bootstrap, topics, redis_client, model)
    with running(service) as target:
        step = LoadStep(
            mode="batch", rate=200, duration_s=1.0, warmup_s=0.2, payments=payments, target=target,
            step_id=f"cap-{batch_rpc}", batch_rpc=batch_rpc, window_ms=400, timeout_s=5.0,
        )  # fmt: skip
        result = run_step(step)
    assert result.decided == result.measured > 100 and not result.error_codes, result
    # ~80 payments per 400 ms window: without the cap ~3 messages in all, with it at least sent / 7
    assert result.calls >= result.sent / 7


def test_joined_framed_payments_parse_as_the_batch_request():
    from fraud.bench.loadgen import _serialised
    from scoring.proto import fraud_pb2 as pb
    from scoring.wire import transaction_to_proto

    # ids long enough that an entry's length needs a two-byte varint (over 127 bytes)
    messages = [transaction_to_proto(txn(i, card=f"card-{i:06d}")) for i in range(3)]
    for i, m in enumerate(messages):
        m.transaction_id = f"step-{i}-" + "x" * 100 * i
    wire = _serialised(messages, ["2026-11-27T18:00:00.000001Z", "2026-11-27T18:00:01Z", "2026-11-27T18:00:02Z"])
    assert max(map(len, wire.alone)) > 127
    parsed = pb.TransactionBatch.FromString(wire.batch([2, 0]))
    assert list(parsed.transactions) == [messages[2], messages[0]]
    assert parsed.transactions[1].event_time == "2026-11-27T18:00:00.000001Z"
    assert pb.Transaction.FromString(wire.alone[1]) == messages[1]
    assert wire.ids == [m.transaction_id for m in messages]


def test_a_generator_that_dies_before_sending_fails_the_step_at_once(tmp_path):
    """The bench waits for the generator to start sending before it counts anyone's CPU; a
    generator that fails in its set-up (here: no payments file) must fail the step, not leave the
    bench waiting out the set-up allowance."""
    from fraud.bench.run import run_step_measured

    step = LoadStep(mode="batch", rate=10, duration_s=1, warmup_s=0, payments=tmp_path / "missing.jsonl",
                    target="127.0.0.1:1")  # fmt: skip
    with pytest.raises(RuntimeError, match="exited before sending"):
        run_step_measured(step, {})


def test_shedding_is_told_by_the_second_it_was_scheduled_in():
    import numpy as np

    from fraud.bench.loadgen import shed_by_second

    offsets = np.array([0.1, 0.5, 1.2, 2.9, 2.95, 3.99])
    shed = np.array([True, False, True, True, True, False])
    assert shed_by_second(offsets, shed, duration_s=4) == [1, 1, 2, 0]
    assert shed_by_second(offsets, np.zeros(6, dtype=bool), duration_s=4) == [0, 0, 0, 0]
