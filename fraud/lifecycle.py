"""Wiring: builds the components from Settings for the CLI and the demo (the composition root)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import redis

from fraud.config import Settings
from schema import Decision, Label, Transaction, decode_decision, encode


def load_labels(chargebacks: Iterable[Label], review_db: Path | None) -> list[Label]:
    """Every label in the label log: chargebacks plus reviewers' labels (if a review store exists)."""
    labels = list(chargebacks)
    if review_db is not None and review_db.exists():
        from review_queue import ReviewStore

        with ReviewStore(review_db) as store:
            labels.extend(store.labels())
    return labels


def run_retrain(
    settings: Settings,
    transactions: Sequence[Transaction],
    labels: Sequence[Label],
    as_of: datetime | None,
    label_maturity_days: float,
):
    from retrain import ModelRegistry, RetrainPolicy, retrain

    cutoff = as_of or max(t.event_time for t in transactions)
    policy = RetrainPolicy(label_maturity=timedelta(days=label_maturity_days), thresholds=settings.thresholds)
    return retrain(transactions, labels, ModelRegistry(settings.registry_dir), cutoff, policy)


def redis_client(url: str) -> redis.Redis:
    # Short timeouts: an authorisation cannot wait for a stalled Redis; the engine falls back.
    return redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)


def build_service(settings: Settings):
    from prometheus_client import start_http_server

    from deploy.kafka import make_producer
    from retrain import ModelRegistry
    from rules_engine import load_rules
    from scoring import DecisionEngine, DecisionPublisher, FraudScorerService, ScorerMetrics, ServerConfig
    from streaming import OnlineFeatureStore

    metrics = ScorerMetrics()
    engine = DecisionEngine(
        rules=load_rules(settings.rules_file),
        model=ModelRegistry(settings.registry_dir).load(),
        store=OnlineFeatureStore(redis_client(settings.require_redis()), settings.key_prefix),
        thresholds=settings.thresholds,
        metrics=metrics,
    )
    # Delivery reports only for failures: a Python callback per delivered decision cost more than
    # the produce itself under load (docs/performance.md); failures are all the publisher counts.
    producer = make_producer(settings.require_kafka(), delivery_report_only_error=True)
    publisher = DecisionPublisher(producer, settings.topics.decisions, metrics)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=metrics.registry)
    return FraudScorerService(engine, publisher, ServerConfig(host=settings.grpc_host, port=settings.grpc_port))


def record_review_label(
    settings: Settings, transaction_id: str, is_fraud: bool, reviewer: str, note: str, at: datetime | None = None
) -> Label:
    """Commit the label to the review store, then publish it to `labels`."""
    from deploy.kafka import make_producer, produce_all
    from review_queue import ReviewStore

    with ReviewStore(settings.review_db) as store:
        label = store.record_label(transaction_id, is_fraud, reviewer, note, at=at)
        case = store.get_case(transaction_id)
    if case is not None:  # the stream attributes the label to the merchant without a lookup
        label = msgspec.structs.replace(label, merchant_id=case.decision.transaction.merchant_id)
    produce_all(
        make_producer(settings.require_kafka()),
        settings.topics.labels,
        [(label.transaction_id.encode(), encode(label))],
    )
    return label


def read_decisions(settings: Settings, idle_s: float, group: str | None = None) -> list[Decision]:
    """Decisions on `decisions`: all of them (no group), or those new to consumer ``group``."""
    from deploy.kafka import consume_until_idle, make_consumer, read_topic

    topic = settings.topics.decisions
    if group is None:
        return [decode_decision(m.value()) for m in read_topic(settings.require_kafka(), topic, idle_s)]
    consumer = make_consumer(settings.require_kafka(), group, [topic])
    try:
        return [decode_decision(m.value()) for m in consume_until_idle(consumer, idle_s=idle_s)]
    finally:
        consumer.close()


def intake_decisions(settings: Settings, idle_s: float) -> int:
    """Open review cases for flagged decisions on `decisions` (a consumer group resumes where it left)."""
    from review_queue import ReviewStore
    from schema import Outcome

    decisions = read_decisions(settings, idle_s, group="review-intake")
    with ReviewStore(settings.review_db) as store:
        return store.add_cases([d for d in decisions if d.outcome is Outcome.FLAG])


def decision_samples(decisions: Sequence[Decision]) -> dict[str, np.ndarray]:
    """Feature and score columns from decisions that had the model's full input."""
    from streaming.features import MODEL_FEATURES

    full = [d for d in decisions if d.score is not None]
    samples = {name: np.array([d.features[name] for d in full], dtype=np.float64) for name in MODEL_FEATURES}
    samples["score"] = np.array([d.score for d in full], dtype=np.float64)
    return samples


def drift_report(settings: Settings, threshold: float, metrics_port: int, decisions: Sequence[Decision] | None = None):
    from monitoring import DriftGauges, DriftReference, compare, export_drift
    from retrain import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    meta = registry.metadata(registry.champion() or "")
    reference = DriftReference.from_dict(meta["drift_reference"])
    if decisions is None:
        decisions = read_decisions(settings, idle_s=2.0)
    results = compare(reference, decision_samples(decisions), threshold=threshold)
    if metrics_port:
        import time

        from prometheus_client import CollectorRegistry, start_http_server

        prom = CollectorRegistry()
        export_drift(results, DriftGauges(prom))
        start_http_server(metrics_port, addr="127.0.0.1", registry=prom)
        while True:  # serve the gauges until interrupted
            time.sleep(3600)
    return results
