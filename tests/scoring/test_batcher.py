"""The adaptive batcher: coalescing, order, shedding and failures (pure asyncio, no services)."""

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from schema import Decision, Outcome
from scoring.batcher import BatchingConfig, DecisionBatcher
from tests.factories import txn


def _decision(t, reason=None):
    return Decision(
        transaction=t,
        outcome=Outcome.APPROVE,
        score=None if reason else 0.1,
        model_version="test",
        rule_hits=[],
        features={},
        decided_at=datetime.now(UTC),
        degraded_reason=reason,
    )


class Recorder:
    """decide() blocks on a gate so requests pile up while a batch is running."""

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()

    def decide(self, rows):
        self.gate.wait(5)
        self.batches.append([t.transaction_id for t in rows])
        return [_decision(t) for t in rows]

    def shed(self, rows, reason):
        return [_decision(t, reason) for t in rows]


def test_requests_queued_behind_a_running_batch_are_decided_together_in_order():
    async def main():
        rec = Recorder()
        batcher = DecisionBatcher(rec.decide, rec.shed, BatchingConfig(shed_after_s=10, batch_time_s=10))
        rec.gate.clear()
        first = asyncio.create_task(batcher.decide([txn(0)]))
        await asyncio.sleep(0.05)  # the first batch is now running (blocked on the gate)
        rest = [asyncio.create_task(batcher.decide([txn(i), txn(100 + i)])) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        rec.gate.set()
        answers = await asyncio.gather(first, *rest)
        batcher.close()
        return rec.batches, answers

    batches, answers = asyncio.run(main())
    assert batches[0] == ["tx-test-000000"]
    assert len(batches) == 2 and len(batches[1]) == 10  # five calls, one batch
    for i, answer in enumerate(answers[1:], start=1):  # each caller gets its own rows back, in order
        assert [d.transaction_id for d in answer] == [f"tx-test-{i:06d}", f"tx-test-{100 + i:06d}"]


async def _one_past_the_budget(rec: Recorder, shed):
    """A batcher whose first batch (txn 0) is held on ``rec``'s gate while txn 1 waits in the queue
    past the 50 ms budget."""
    batcher = DecisionBatcher(rec.decide, shed, BatchingConfig(shed_after_s=0.05))
    rec.gate.clear()
    first = asyncio.create_task(batcher.decide([txn(0)]))
    await asyncio.sleep(0.02)
    late = asyncio.create_task(batcher.decide([txn(1)]))
    await asyncio.sleep(0.2)  # txn 1 is queued 200 ms > 50 ms budget
    return batcher, first, late


def test_requests_that_waited_past_the_budget_are_shed_with_a_reason_not_dropped():
    async def main():
        rec = Recorder()
        batcher, first, late = await _one_past_the_budget(rec, rec.shed)
        rec.gate.set()
        out = await asyncio.gather(first, late)
        batcher.close()
        return rec.batches, out

    batches, (first, late) = asyncio.run(main())
    assert first[0].degraded_reason is None
    assert late[0].degraded_reason.startswith("shed")
    assert batches == [["tx-test-000000"]]  # the shed request never reached the model


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    calls = []

    def decide(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [_decision(t) for t in rows]

    async def main():
        batcher = DecisionBatcher(decide, lambda rows, reason: [], BatchingConfig())
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.decide([txn(0)])
        again = await batcher.decide([txn(1)])
        batcher.close()
        return again

    assert [d.transaction_id for d in asyncio.run(main())] == ["tx-test-000001"]


def test_batches_are_cut_to_what_the_worker_decides_within_the_batch_time():
    async def main():
        rec = Recorder()
        batcher = DecisionBatcher(rec.decide, rec.shed, BatchingConfig(shed_after_s=10, batch_time_s=0.05))
        rec.gate.clear()
        first = asyncio.create_task(batcher.decide([txn(0)]))
        await asyncio.sleep(0.2)  # the first row "costs" ~200 ms: one row per batch from now on
        rest = [asyncio.create_task(batcher.decide([txn(i)])) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        rec.gate.set()
        await asyncio.gather(first, *rest)
        batcher.close()
        return rec.batches

    assert [len(b) for b in asyncio.run(main())] == [1, 1, 1, 1]


def test_a_slow_shed_holds_up_neither_the_loop_nor_the_fresh_requests_behind_it():
    shed_gate = threading.Event()

    def slow_shed(rows, reason):  # a shed that takes long (say, Redis is slow to record it)
        shed_gate.wait(3)
        return [_decision(t, reason) for t in rows]

    async def main():
        rec = Recorder()
        batcher, first, late = await _one_past_the_budget(rec, slow_shed)
        fresh = asyncio.create_task(batcher.decide([txn(2)]))
        await asyncio.sleep(0)  # queued
        rec.gate.set()
        await asyncio.wait_for(asyncio.gather(first, fresh), timeout=1.0)
        late_done_before_shed = late.done()
        shed_gate.set()
        shed = await late
        batcher.close()
        return late_done_before_shed, fresh.result(), shed

    late_done_before_shed, fresh, shed = asyncio.run(main())
    assert fresh[0].degraded_reason is None
    assert not late_done_before_shed  # the fresh request was answered while the shed was still running
    assert shed[0].degraded_reason.startswith("shed")


def test_a_failing_shed_fails_its_callers_and_decisions_go_on():
    def broken_shed(rows, reason):
        raise RuntimeError("shed broke")

    async def main():
        rec = Recorder()
        batcher, first, late = await _one_past_the_budget(rec, broken_shed)
        rec.gate.set()
        await first
        with pytest.raises(RuntimeError, match="shed broke"):
            await asyncio.wait_for(late, timeout=2.0)
        again = await asyncio.wait_for(batcher.decide([txn(2)]), timeout=2.0)  # the worker is still alive
        batcher.close()
        return again

    assert asyncio.run(main())[0].degraded_reason is None
