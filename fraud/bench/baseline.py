"""The naive baseline: the decision service the way a first version is usually written.

``fraud bench`` drives this service and ours (``scoring/``) with the same load generator over the
same gRPC contract (``FraudScorer``), so the ratio of their sustainable throughputs shows what the
design of ours buys. Everything here is deliberately plain, and each choice is one ours avoids:

- one transaction per call, served by a thread pool (``grpc.server`` over a ``ThreadPoolExecutor``);
  ``DecideBatch`` just loops over the same per-transaction path;
- one Redis round trip per feature (HGET of one field of a per-entity hash), no pipelining: about
  seventy round trips per decision where ours makes one per batch;
- one XGBoost ``inplace_predict`` per transaction, where ours scores a batch in one ONNX call;
- one Kafka ``produce`` and ``poll(0)`` per decision.

What it computes is the same as ours: context features from the transaction, entity window
features, ratio features, the same rules, model, thresholds and precedence (the most severe of the
rules' actions and the threshold outcome), and the same decision record on the decisions topic.

In one respect it does *less* work than ours, and the comparison should say so: it reads finished
feature values precomputed by ``preload_naive_features`` and does not fold the transaction being
decided into the entity windows (ours reads the bucketed state and computes every window at the
transaction's own event time, counting the transaction itself). Its features are therefore those of
the entity's last preloaded transaction, not point-in-time; fine for measuring throughput, wrong
for deciding payments. It also has no fallback: a Redis error fails the call.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import redis
import xgboost as xgb
from confluent_kafka import KafkaError, Message, Producer

from deploy.kafka import make_producer
from retrain.registry import ModelLoadError, ModelRegistry, model_thresholds
from rules_engine import RuleSet, load_rules
from schema import Decision, DecisionThresholds, FeatureVector, InvalidEvent, Outcome, Transaction, encode
from scoring.proto import fraud_pb2 as pb
from scoring.proto import fraud_pb2_grpc
from scoring.wire import decision_to_proto, transaction_from_proto
from streaming import connect_redis
from streaming.features import MODEL_FEATURES, RATIO_FEATURES
from streaming.windows import LAYOUTS, EntityLayout, EntityState, context_features, entity_features

log = logging.getLogger(__name__)

# Entities per pipeline when preloading: bounds the client's buffered commands (the preload is not timed).
PRELOAD_CHUNK = 500


def _entity_feature_names(layout: EntityLayout) -> tuple[str, ...]:
    return (
        *(name for plan in layout.plans for name, _, _ in plan.features),
        *(name for plan in layout.plans for name in plan.label_rates),
        *(f.name for f in layout.recency_features),
    )


# The fields of each entity's hash: every feature ``entity_features`` computes for that entity.
ENTITY_FEATURE_NAMES: dict[str, tuple[str, ...]] = {
    entity: _entity_feature_names(layout) for entity, layout in LAYOUTS.items()
}


def naive_key(prefix: str, entity: str, entity_id: str) -> str:
    """One hash per entity, hash-tagged like ``streaming.online`` so it is Redis-Cluster-ready."""
    return f"{prefix}:naive:{{{entity}:{entity_id}}}"


def preload_naive_features(
    client: redis.Redis,
    prefix: str,
    states: Mapping[tuple[str, str], EntityState],
    last_txn: Mapping[tuple[str, str], Transaction],
    chunk: int = PRELOAD_CHUNK,
) -> int:
    """Write each entity's finished feature values as one Redis hash; returns entities written.

    The values are ``entity_features(state, layout, last_txn[key])``: the entity's windows read at
    that transaction's event time, counting it as ``entity_features`` always counts the transaction
    it is given (so a ``last_txn`` already applied to ``state`` is counted twice; the bench only
    needs realistic values, not point-in-time ones).
    """
    pipe = client.pipeline(transaction=False)
    written = 0
    for (entity, entity_id), state in states.items():
        values = entity_features(state, LAYOUTS[entity], last_txn[(entity, entity_id)])
        pipe.hset(naive_key(prefix, entity, entity_id), mapping=values)
        written += 1
        if written % chunk == 0:
            pipe.execute()
    pipe.execute()
    return written


@dataclass(frozen=True)
class NaiveModel:
    """The champion as a plain XGBoost booster, scored one row at a time."""

    version: str
    booster: xgb.Booster

    @classmethod
    def champion(cls, registry_dir: Path) -> NaiveModel:
        registry = ModelRegistry(registry_dir)
        version = registry.champion()
        if version is None:
            raise ModelLoadError(f"no champion model in {registry_dir}; run `fraud train` first")
        # The same refusal as the ONNX path: a model trained on other features must not serve.
        if tuple(registry.metadata(version).get("feature_names", ())) != MODEL_FEATURES:
            raise ModelLoadError(f"model {version} was not trained on the features this code computes")
        booster = xgb.Booster(model_file=str(registry.native_model_path(version)))
        # One thread per prediction: the server's threads are the parallelism, as in ours.
        booster.set_param({"nthread": 1})
        return cls(version, booster)

    def fraud_probability(self, features: FeatureVector) -> float:
        row = np.array([[features[name] for name in MODEL_FEATURES]], dtype=np.float32)
        return float(self.booster.inplace_predict(row)[0])


class NaiveScorerService(fraud_pb2_grpc.FraudScorerServicer):
    """``FraudScorer`` the plain way: per transaction, per feature, per prediction, per message."""

    def __init__(
        self,
        client: redis.Redis,
        producer: Producer,
        model: NaiveModel,
        decisions_topic: str,
        prefix: str = "fraud",
        rules: RuleSet | None = None,
        thresholds: DecisionThresholds | None = None,
    ) -> None:
        self.client = client
        self.producer = producer
        self.model = model
        self.decisions_topic = decisions_topic
        self.prefix = prefix
        self.rules = rules or load_rules()
        self.thresholds = thresholds or DecisionThresholds()
        self._failures_lock = threading.Lock()
        self.publish_failures = 0

    @classmethod
    def connect(
        cls, redis_url: str, kafka_bootstrap: str, registry_dir: Path, decisions_topic: str, prefix: str = "fraud"
    ) -> NaiveScorerService:
        model = NaiveModel.champion(registry_dir)
        return cls(
            connect_redis(redis_url),
            make_producer(kafka_bootstrap),
            model,
            decisions_topic,
            prefix,
            # The model's own operating thresholds, as the optimised scorer serves them.
            thresholds=model_thresholds(ModelRegistry(registry_dir).metadata(model.version)),
        )

    def entity_values(self, entity: str, layout: EntityLayout, txn: Transaction) -> FeatureVector:
        key = naive_key(self.prefix, entity, layout.key_of(txn))
        values: FeatureVector = {}
        missing: list[str] = []
        for name in ENTITY_FEATURE_NAMES[entity]:
            raw = self.client.hget(key, name)  # one round trip per feature: the naive part
            if raw is None:
                missing.append(name)
            else:
                values[name] = float(raw)
        if missing:
            # An entity that was never preloaded has no history: its features are the transaction's alone.
            fresh = entity_features(None, layout, txn)
            values.update({name: fresh[name] for name in missing})
        return values

    def features(self, txn: Transaction) -> FeatureVector:
        values = context_features(txn)
        for entity, layout in LAYOUTS.items():
            values.update(self.entity_values(entity, layout, txn))
        for ratio in RATIO_FEATURES:
            mean = values[ratio.denominator]
            values[ratio.name] = values["amount"] / mean if mean > 0 else 1.0
        return {name: values[name] for name in MODEL_FEATURES}

    def decide(self, txn: Transaction) -> Decision:
        features = self.features(txn)
        score = self.model.fraud_probability(features)
        hits = self.rules.evaluate(txn, features)
        outcome = max([self.thresholds.outcome(score), *(h.action for h in hits)], key=_severity)
        decision = Decision(
            transaction=txn,
            outcome=outcome,
            score=score,
            model_version=self.model.version,
            rule_hits=hits,
            features=features,
            decided_at=datetime.now(UTC),
        )
        self.publish(decision)
        return decision

    def publish(self, decision: Decision) -> None:
        try:
            self.producer.produce(
                self.decisions_topic,
                key=decision.transaction_id.encode(),
                value=encode(decision),
                on_delivery=self._delivered,
            )
        except BufferError:  # a full local queue is dropped and counted, as ours does: never fail the payment
            self._count_failure()
        self.producer.poll(0)

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._count_failure()

    def _count_failure(self) -> None:
        with self._failures_lock:  # delivery callbacks run on whichever server thread polls
            self.publish_failures += 1

    def flush(self, timeout: float = 10.0) -> int:
        return self.producer.flush(timeout)

    def Decide(self, request: pb.Transaction, context: grpc.ServicerContext) -> pb.Decision:  # noqa: N802
        try:
            txn = transaction_from_proto(request)
        except InvalidEvent as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid transaction: {exc}")  # raises
        return decision_to_proto(self.decide(txn))

    def DecideBatch(self, request: pb.TransactionBatch, context: grpc.ServicerContext) -> pb.DecisionBatch:  # noqa: N802
        # A malformed transaction gets its own error, as in ours; the others are decided one by one.
        decisions = []
        for msg in request.transactions:
            try:
                txn = transaction_from_proto(msg)
            except InvalidEvent as exc:
                decisions.append(pb.Decision(transaction_id=msg.transaction_id, error=f"invalid transaction: {exc}"))
                continue
            decisions.append(decision_to_proto(self.decide(txn)))
        return pb.DecisionBatch(decisions=decisions)


def _severity(outcome: Outcome) -> int:
    return outcome.severity


@dataclass(frozen=True)
class NaiveServer:
    """A started naive server and the port it bound (useful when asked for port 0)."""

    server: grpc.Server
    service: NaiveScorerService
    port: int

    def stop(self, grace: float = 5.0) -> None:
        """Finish in-flight calls, then hand every published decision to the broker."""
        self.server.stop(grace).wait()
        self.service.flush()


def start_naive_server(
    service: NaiveScorerService, host: str = "127.0.0.1", port: int = 0, threads: int = 16
) -> NaiveServer:
    server = grpc.server(ThreadPoolExecutor(max_workers=threads))
    fraud_pb2_grpc.add_FraudScorerServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return NaiveServer(server, service, bound)


def run_naive_server(
    redis_url: str,
    kafka_bootstrap: str,
    registry_dir: Path,
    decisions_topic: str,
    host: str,
    port: int,
    prefix: str = "fraud",
    threads: int = 16,
) -> None:
    """Serve the naive baseline until SIGTERM or SIGINT, then flush the decisions still queued."""
    service = NaiveScorerService.connect(redis_url, kafka_bootstrap, registry_dir, decisions_topic, prefix)
    running = start_naive_server(service, host, port, threads)
    log.info("naive baseline serving on %s:%d with model %s", host, running.port, service.model.version)
    try:
        _wait_for_stop_signal()
    finally:
        running.stop()
        service.client.close()


def _wait_for_stop_signal() -> None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):  # a timeout, so the wait never depends on a signal interrupting it
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
