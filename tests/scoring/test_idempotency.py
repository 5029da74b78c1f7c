"""Idempotent decisions by transaction id (scoring.idempotency), against a real Redis: a retry gets
the decision already made, on this engine or another; when two attempts race, the first recorded
wins; a repeat within one batch is answered once; without Redis a retry is decided again."""

import dataclasses

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rules_engine import load_rules
from schema import DecisionThresholds, Outcome
from scoring import DecisionEngine, ScorerMetrics
from scoring.idempotency import DECISION_TTL_S
from streaming import OnlineFeatureStore
from tests.factories import txn

pytestmark = pytest.mark.integration


APPROVE_ALL = DecisionThresholds(flag=0.99, block=0.999)  # the tiny model scores these payments ~0.9
FLAG_ALL = DecisionThresholds(flag=0.0, block=0.999)


def engine_for(client, model, thresholds=APPROVE_ALL, store=None):
    metrics = ScorerMetrics()
    store = store or OnlineFeatureStore(client, "idem")
    return DecisionEngine(load_rules(), model, store, thresholds, metrics), metrics


def replays(metrics, how):
    return metrics.registry.get_sample_value("fraud_idempotent_replays_total", {"how": how}) or 0


def same(a, b):
    return (a.outcome, a.score, a.model_version, a.rule_hits, a.decided_at) == (
        b.outcome,
        b.score,
        b.model_version,
        b.rule_hits,
        b.decided_at,
    )


def test_a_retry_gets_the_recorded_decision_from_any_engine_and_is_not_new(redis_client, model):
    first, metrics_a = engine_for(redis_client, model)
    # another scorer, with thresholds that would flag everything: a retry still gets the first answer
    other, metrics_b = engine_for(redis_client, model, FLAG_ALL)
    payments = [txn(i, card=f"card-{i % 3}") for i in range(6)]
    once = first.decide_batch_once(payments)
    assert once.new == [True] * 6 and {d.outcome for d in once.decisions} == {Outcome.APPROVE}

    again = other.decide_batch_once([txn(99, card="card-9"), *payments[::-1]])
    assert again.new == [True] + [False] * 6
    assert again.decisions[0].outcome is Outcome.FLAG  # decided by the other engine's thresholds
    for got, want in zip(again.decisions[1:], once.decisions[::-1], strict=True):
        assert got.transaction_id == want.transaction_id and same(got, want)
    assert replays(metrics_b, "stored") == 6
    assert (
        metrics_b.registry.get_sample_value(
            "fraud_decisions_total", {"outcome": "flag", "model_version": model.version}
        )
        == 1
    )  # replays are not counted as decisions made
    hash_of_first = OnlineFeatureStore(redis_client, "idem").decision_key(
        payments[0].transaction_id, payments[0].event_ts
    )
    ttl = redis_client.ttl(hash_of_first)
    assert DECISION_TTL_S - 100 < ttl <= DECISION_TTL_S


class RacingStore(OnlineFeatureStore):
    """A store whose idempotency lookup always misses: as if this attempt read before the other
    attempt recorded its decision (the race). Features and the record are the real ones."""

    def read_batch(self, transactions, look_up=()):
        read = super().read_batch(transactions, look_up)
        return dataclasses.replace(read, decided=[None] * len(read.decided))


def test_when_two_attempts_race_the_first_recorded_wins_and_the_loser_replies_with_it(redis_client, model):
    winner, _ = engine_for(redis_client, model)
    loser, metrics = engine_for(redis_client, model, FLAG_ALL, RacingStore(redis_client, "idem"))
    payments = [txn(i) for i in range(4)]
    first = winner.decide_batch_once(payments[:2])
    late = loser.decide_batch_once(payments)
    assert late.new == [False, False, True, True]
    assert [d.outcome for d in late.decisions] == [Outcome.APPROVE, Outcome.APPROVE, Outcome.FLAG, Outcome.FLAG]
    assert all(same(a, b) for a, b in zip(late.decisions[:2], first.decisions, strict=True))
    assert replays(metrics, "race") == 2


def test_a_repeated_id_in_one_batch_is_decided_once(redis_client, model):
    engine, metrics = engine_for(redis_client, model)
    a, b = txn(1, card="card-a"), txn(2, card="card-a", minutes=1)
    once = engine.decide_batch_once([a, b, a])
    assert once.new == [True, True, False]
    assert once.decisions[2] is once.decisions[0]
    # the copy is not folded into its card's windows: b sees one earlier payment, not two
    alone = engine_for(redis_client, model)[0].decide_batch([a, b])
    assert once.decisions[1].features == alone[1].features
    assert replays(metrics, "batch") == 1


def test_without_redis_idempotency_degrades_with_the_features(model):
    # nothing listens on port 1; no client-side retries
    client = redis.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))
    engine, _ = engine_for(client, model)
    payments = [txn(1), txn(2)]
    for _ in range(2):  # decided again each time, nothing recorded: every decision is new
        once = engine.decide_batch_once(payments)
        assert once.new == [True, True]
        assert all(d.degraded_reason.startswith("features_unavailable") for d in once.decisions)


def test_a_shed_decision_is_recorded_and_a_shed_retry_gets_the_decision_made_before(redis_client, model):
    engine, metrics = engine_for(redis_client, model)
    decided, later = txn(1), txn(2)
    (full,) = engine.decide_batch_once([decided]).decisions
    shed = engine.shed_once([decided, later], "shed: queued over 50 ms")
    assert shed.new == [False, True]
    assert same(shed.decisions[0], full) and shed.decisions[0].degraded_reason is None
    assert shed.decisions[1].degraded_reason.startswith("shed")
    (again,) = engine.decide_batch_once([later]).decisions  # a retry of the shed payment: the shed answer
    assert same(again, shed.decisions[1]) and again.degraded_reason.startswith("shed")
