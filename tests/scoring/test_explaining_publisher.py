"""Reason codes off the reply path: decisions reply without them, and reach `decisions` with them;
a full explanation queue publishes without reasons rather than holding or losing a decision."""

import threading

import pytest

from deploy.kafka import make_producer, read_topic
from fraud.processes import wait_for
from retrain import ModelRegistry
from rules_engine import load_rules
from schema import DecisionThresholds, Outcome, decode_decision
from scoring import DecisionEngine, DecisionPublisher, ScorerMetrics
from scoring.publisher import ExplainingPublisher
from streaming import OnlineFeatureStore
from tests.factories import register_tiny_model, txn

pytestmark = pytest.mark.integration

FLAG_MOST = DecisionThresholds(flag=0.0, block=1.0)


def _engine(tmp_path, redis_client, inline):
    register_tiny_model(tmp_path, lambda x: x[:, 0] > 1.0)
    model = ModelRegistry(tmp_path).load()
    store = OnlineFeatureStore(redis_client, f"explain-{inline}")
    return DecisionEngine(load_rules(), model, store, FLAG_MOST, ScorerMetrics(), explain_inline=inline)


def _payments(n):
    return [txn(i, minutes=i * 0.1, card=f"card-{i:04d}") for i in range(n)]


def test_published_decisions_carry_the_reasons_the_reply_went_without(tmp_path, redis_client, kafka_bootstrap, topics):
    deferred = _engine(tmp_path / "a", redis_client, inline=False)
    inline = _engine(tmp_path / "b", redis_client, inline=True)
    replies = deferred.decide_batch(_payments(40))
    assert all(d.outcome is Outcome.FLAG for d in replies) and all(d.reasons == [] for d in replies)

    publisher = ExplainingPublisher(
        DecisionPublisher(make_producer(kafka_bootstrap), topics.decisions, deferred.metrics), deferred.explain
    )
    publisher.publish(replies)
    assert publisher.flush() == 0
    published = {
        d.transaction_id: d
        for d in map(decode_decision, (m.value() for m in read_topic(kafka_bootstrap, topics.decisions, idle_s=1.0)))
    }
    expected = {d.transaction_id: d.reasons for d in inline.decide_batch(_payments(40))}
    assert set(published) == set(expected)
    assert all(1 <= len(published[t].reasons) <= 3 for t in published)
    assert {t: published[t].reasons for t in published} == expected  # the same words as inline

    # Every stage is timed, those on the publisher's worker too (reasons, then the hand-over to Kafka).
    for engine in (deferred, inline):
        stages = ("features", "model", "rules", "reasons", "publish") if engine is deferred else ("reasons",)
        for stage in stages:
            count = engine.metrics.registry.get_sample_value("fraud_decision_latency_seconds_count", {"stage": stage})
            assert count == 1, stage  # one batch decided, explained, published


def test_a_full_queue_publishes_without_reasons_and_loses_nothing(tmp_path, redis_client, kafka_bootstrap, topics):
    engine = _engine(tmp_path, redis_client, inline=False)
    release = threading.Event()

    def slow_explain(decisions):
        release.wait(10)
        return engine.explain(decisions)

    inner = DecisionPublisher(make_producer(kafka_bootstrap), topics.decisions, engine.metrics)
    # collect_s=0: the worker takes one batch at a time, so the second waits and the third overflows
    publisher = ExplainingPublisher(inner, slow_explain, max_pending_batches=1, collect_s=0.0)
    batches = [engine.decide_batch(_payments(30)[i : i + 10]) for i in range(0, 30, 10)]
    publisher.publish(batches[0])
    wait_for(lambda: publisher._queue.qsize() == 0, 10, "the worker to take the first batch")
    publisher.publish(batches[1])  # waits in the queue
    publisher.publish(batches[2])  # overflows: published at once, without reasons
    release.set()
    publisher.flush()
    published = [decode_decision(m.value()) for m in read_topic(kafka_bootstrap, topics.decisions, idle_s=1.0)]
    assert sorted(d.transaction_id for d in published) == sorted(d.transaction_id for b in batches for d in b)
    assert sum(d.reasons == [] for d in published) == 10
    skipped = engine.metrics.registry.get_sample_value("fraud_degraded_decisions_total", {"reason": "reasons_skipped"})
    assert skipped == 10


def test_flagged_batches_arriving_together_are_explained_in_one_call(tmp_path, redis_client, kafka_bootstrap, topics):
    """TreeSHAP's cost is mostly per call: batches that arrive within ``collect_s`` of one another
    are explained together, and each decision still reaches the topic with its own reasons."""
    engine = _engine(tmp_path, redis_client, inline=False)
    calls: list[int] = []

    def counting_explain(decisions):
        calls.append(len(decisions))
        return engine.explain(decisions)

    inner = DecisionPublisher(make_producer(kafka_bootstrap), topics.decisions, engine.metrics)
    publisher = ExplainingPublisher(inner, counting_explain, collect_s=2.0, collect_rows=25)
    batches = [engine.decide_batch(_payments(40)[i : i + 5]) for i in range(0, 40, 5)]
    for batch in batches:
        publisher.publish(batch)
    assert publisher.flush() == 0
    assert calls == [25, 15]  # five batches up to collect_rows, then the rest when the window closed
    published = [decode_decision(m.value()) for m in read_topic(kafka_bootstrap, topics.decisions, idle_s=1.0)]
    assert sorted(d.transaction_id for d in published) == sorted(d.transaction_id for b in batches for d in b)
    assert all(1 <= len(d.reasons) <= 3 for d in published)
