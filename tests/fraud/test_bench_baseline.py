"""The naive baseline decision service against a real redis-server, a real broker and a real model."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import xgboost as xgb

from deploy import free_port, read_topic
from fraud.bench.baseline import (
    NaiveScorerService,
    naive_key,
    preload_naive_features,
    start_naive_server,
)
from retrain import ModelRegistry
from schema import DecisionThresholds, FeatureVector, Transaction, decode_decision
from scoring.proto import fraud_pb2 as pb
from scoring.proto import fraud_pb2_grpc
from scoring.wire import transaction_to_proto
from streaming import OfflineFeatureBuilder
from streaming.features import CONTEXT_FEATURES, MODEL_FEATURES, RATIO_FEATURES
from streaming.windows import LAYOUTS, EntityState, context_features, entity_features
from tests.factories import register_tiny_model, txn

pytestmark = pytest.mark.integration

PREFIX = "benchtest"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Fraud only where the merchant's fraud rate is high: the test payments (rate 0) score low, so
    # a block among them comes from a rule, not from the model.
    column = MODEL_FEATURES.index("merchant_fraud_rate_30d")
    root = tmp_path_factory.mktemp("registry")
    register_tiny_model(root, lambda x: x[:, column] > 1.5)
    return root


def history() -> list[Transaction]:
    """Two cards of one customer on one device, at three merchants, over 25 minutes.

    The factory's default card, merchant, customer and device are among them: a payment built with
    the defaults finds every one of its entities preloaded.
    """
    return [
        txn(
            i,
            minutes=5 * i,
            card=f"card-00000{1 + i % 2}",
            merchant=f"merch-000{1 + i % 3}",
            amount_minor=1_000 + 700 * i,
        )
        for i in range(6)
    ]


def preload(client) -> tuple[dict[tuple[str, str], EntityState], dict[tuple[str, str], Transaction]]:
    builder = OfflineFeatureBuilder()
    last: dict[tuple[str, str], Transaction] = {}
    for t in history():
        builder.apply(t)
        for entity, layout in LAYOUTS.items():
            last[(entity, layout.key_of(t))] = t
    assert preload_naive_features(client, PREFIX, builder.states, last, chunk=2) == len(builder.states)
    return builder.states, last


def stored_features(client, t: Transaction, fresh: frozenset[str] = frozenset()) -> FeatureVector:
    """The model row for ``t`` from the preloaded hashes (``fresh`` entities: no history)."""
    values = context_features(t)
    for entity, layout in LAYOUTS.items():
        if entity in fresh:
            values.update(entity_features(None, layout, t))
            continue
        stored = client.hgetall(naive_key(PREFIX, entity, layout.key_of(t)))
        assert stored, f"{entity} of {t.transaction_id} was not preloaded"
        values.update({k.decode(): float(v) for k, v in stored.items()})
    for ratio in RATIO_FEATURES:
        mean = values[ratio.denominator]
        values[ratio.name] = values["amount"] / mean if mean > 0 else 1.0
    return {name: values[name] for name in MODEL_FEATURES}


def booster_score(registry_dir: Path, features: FeatureVector) -> float:
    registry = ModelRegistry(registry_dir)
    booster = xgb.Booster(model_file=str(registry.native_model_path(registry.champion())))
    row = np.array([[features[name] for name in MODEL_FEATURES]], dtype=np.float32)
    return float(booster.inplace_predict(row)[0])


@pytest.fixture
def naive(redis_url, redis_client, kafka_bootstrap, topics, registry_dir):
    service = NaiveScorerService.connect(redis_url, kafka_bootstrap, registry_dir, topics.decisions, prefix=PREFIX)
    running = start_naive_server(service, threads=4)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield fraud_pb2_grpc.FraudScorerStub(channel), running
    finally:
        channel.close()
        running.stop()
        service.client.close()


def test_naive_keys_are_hash_tagged_per_entity():
    assert naive_key("fraud", "card", "c-1") == "fraud:naive:{card:c-1}"


def test_preload_writes_one_hash_per_entity_with_all_its_features(redis_client):
    states, last = preload(redis_client)

    assert len(redis_client.keys(f"{PREFIX}:naive:*")) == len(states) == 2 + 1 + 3 + 1
    fields_seen: set[str] = set()
    for (entity, entity_id), state in states.items():
        stored = redis_client.hgetall(naive_key(PREFIX, entity, entity_id))
        expected = entity_features(state, LAYOUTS[entity], last[(entity, entity_id)])
        assert {k.decode(): float(v) for k, v in stored.items()} == expected
        fields_seen |= expected.keys()
    # The hashes and the transaction itself cover the whole model input.
    assert fields_seen | set(CONTEXT_FEATURES) | {r.name for r in RATIO_FEATURES} == set(MODEL_FEATURES)


def test_decide_scores_the_features_it_read_and_publishes_the_decision(
    naive, redis_client, registry_dir, kafka_bootstrap, topics
):
    stub, running = naive
    preload(redis_client)
    payment = txn(100, minutes=40, card="card-000002", merchant="merch-0002", amount_minor=4_200)

    reply = stub.Decide(transaction_to_proto(payment))
    running.service.flush()

    features = stored_features(redis_client, payment)
    assert features["card_txn_count_24h"] > 1  # the preloaded history, not a fresh card, was read
    assert reply.has_score and reply.score == booster_score(registry_dir, features)
    assert reply.model_version == ModelRegistry(registry_dir).champion()
    assert reply.outcome == DecisionThresholds().outcome(reply.score).value
    published = read_topic(kafka_bootstrap, topics.decisions, idle_s=1.0)
    assert [m.key() for m in published] == [payment.transaction_id.encode()]
    decision = decode_decision(published[0].value())
    assert decision.transaction == payment
    assert decision.features == features
    assert decision.score == reply.score


def test_a_payment_from_a_blocked_country_is_blocked_by_the_rule(naive, redis_client):
    stub, _ = naive
    preload(redis_client)

    blocked = stub.Decide(transaction_to_proto(txn(101, minutes=40, country="KP", card_country="DE")))
    twin = stub.Decide(transaction_to_proto(txn(102, minutes=40)))

    assert blocked.outcome == "block"
    assert "blocked_country@1" in [h.rule_id for h in blocked.rule_hits]
    assert blocked.has_score and blocked.score < DecisionThresholds().block  # the rule blocked it, not the model
    assert twin.outcome == "approve"
    assert "blocked_country@1" not in [h.rule_id for h in twin.rule_hits]


@pytest.mark.parametrize(("field", "bad"), [("card_id", ""), ("amount_minor", -500)])
def test_an_invalid_transaction_is_refused_naming_the_field(naive, redis_client, field, bad):
    stub, _ = naive
    request = transaction_to_proto(txn(103))
    setattr(request, field, bad)

    with pytest.raises(grpc.RpcError) as refused:
        stub.Decide(request)

    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in refused.value.details()


def test_decide_batch_decides_each_transaction_and_refuses_only_the_invalid_one(naive, redis_client, registry_dir):
    stub, _ = naive
    preload(redis_client)
    known = txn(104, minutes=40, amount_minor=9_900)
    new_card = txn(105, minutes=40, card="card-never-seen", amount_minor=9_900)
    invalid = transaction_to_proto(txn(106))
    invalid.amount_minor = 0

    batch = stub.DecideBatch(
        pb.TransactionBatch(transactions=[transaction_to_proto(known), invalid, transaction_to_proto(new_card)])
    )

    first, refused, third = batch.decisions
    assert first.score == booster_score(registry_dir, stored_features(redis_client, known))
    assert first.score == stub.Decide(transaction_to_proto(known)).score  # the same path as Decide
    # A card never preloaded is scored as one without history.
    assert third.score == booster_score(registry_dir, stored_features(redis_client, new_card, frozenset({"card"})))
    assert refused.transaction_id == "tx-test-000106" and not refused.outcome
    assert "amount_minor" in refused.error


@pytest.mark.slow  # a fresh interpreter importing xgboost and onnxruntime: several seconds
def test_run_naive_server_serves_until_sigterm_and_exits_cleanly(
    redis_url, redis_client, kafka_bootstrap, topics, registry_dir
):
    preload(redis_client)
    port = free_port()
    code = (
        "import sys; from pathlib import Path; from fraud.bench.baseline import run_naive_server; "
        "run_naive_server(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], '127.0.0.1', int(sys.argv[5]), "
        "prefix=sys.argv[6], threads=2)"
    )
    args = [redis_url, kafka_bootstrap, str(registry_dir), topics.decisions, str(port), PREFIX]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            payment = txn(107, minutes=40)
            reply = fraud_pb2_grpc.FraudScorerStub(channel).Decide(transaction_to_proto(payment))
        assert reply.transaction_id == payment.transaction_id and reply.has_score
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    published = read_topic(kafka_bootstrap, topics.decisions, idle_s=1.0)
    assert [m.key() for m in published] == [payment.transaction_id.encode()]
