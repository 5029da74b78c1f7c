"""Wiring: builds the components from Settings for the CLI and the demo (the composition root)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from redis.cluster import RedisCluster

from fraud.config import MissingService, Settings
from schema import Decision, Label, Transaction, decode_decision, encode
from streaming import connect_redis

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from review_queue import ReviewStore, Verdict

log = logging.getLogger(__name__)


def load_labels(chargebacks: Iterable[Label], review_db: Path | None) -> list[Label]:
    """Every label in the label log: chargebacks plus the review store's labels (if it exists).

    The store also holds the chargebacks its intake read from `labels`, so a chargeback can come
    from both sources: one copy per (transaction, source, author) is kept, the key the store
    itself is unique on. (resolve_labels would reach the same verdicts from duplicates, but a
    caller counting labels would not.)"""
    labels = list(chargebacks)
    if review_db is not None and review_db.exists():
        from review_queue import ReviewStore

        with ReviewStore(review_db) as store:
            labels.extend(store.labels())
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for label in labels:
        key = (label.transaction_id, label.source.value, label.author)
        if key not in seen:
            seen.add(key)
            unique.append(label)
    return unique


def run_retrain(
    settings: Settings,
    transactions: Sequence[Transaction],
    labels: Sequence[Label],
    as_of: datetime | None,
    label_maturity_days: float,
    release: str = "promote",
    canary_share: float = 0.05,
):
    from retrain import ModelRegistry, RetrainPolicy, retrain
    from retrain.thresholds import ThresholdPolicy

    cutoff = as_of or max(t.event_time for t in transactions)
    policy = RetrainPolicy(
        label_maturity=timedelta(days=label_maturity_days),
        threshold_policy=ThresholdPolicy(review_capacity_per_day=settings.review_capacity_per_day),
        release=release,
        canary_share=canary_share,
    )
    return retrain(transactions, labels, ModelRegistry(settings.registry_dir), cutoff, policy)


def redis_client(url: str) -> redis.Redis | RedisCluster:
    """A client for the online store at ``url`` (one server, or ``redis+cluster://``)."""
    # Short timeouts: an authorisation cannot wait for a stalled Redis; the engine falls back.
    return connect_redis(url, socket_timeout=0.25, connect_timeout=0.25)


def build_service(settings: Settings, kafka_door: bool = False):
    """The scorer `fraud serve` runs. ``kafka_door``: it will decide from the transactions topic,
    whose decisions are its replies, so its producer lingers less (``Settings.decision_linger_ms``)."""
    from prometheus_client import start_http_server

    from deploy.kafka import make_producer
    from experiments.store import ExperimentStore
    from retrain import ModelRegistry
    from rules_engine import load_rules
    from scoring import DecisionEngine, DecisionPublisher, FraudScorerService, ScorerMetrics, ServerConfig
    from scoring.experiment import ExperimentRouter, arm_engine_factory
    from scoring.publisher import ExplainingPublisher
    from scoring.release import RegistryRelease
    from scoring.spill import Spill
    from streaming import OnlineFeatureStore

    metrics = ScorerMetrics()
    release = RegistryRelease(
        ModelRegistry(settings.registry_dir),
        on_change=lambda r: (metrics.model_loaded(r.champion.version), metrics.release_events.labels("swap").inc()),
        on_rollback=lambda *_: metrics.release_events.labels("canary_rollback").inc(),
        # a model that cannot serve is refused and logged; the release being served keeps serving
        on_refusal=lambda _version, exc: metrics.model_load_refusals.labels(exc.reason).inc(),
    )
    release.set_thresholds(settings.threshold_override(release.current.champion_thresholds))
    release.watch(settings.release_poll_s)  # promotions, canaries and rollbacks apply without a restart
    # Delivery reports only for failures: a Python callback per delivered decision cost more than
    # the produce itself under load (docs/performance.md); failures are all the publisher counts.
    producer = make_producer(
        settings.require_kafka(),
        delivery_report_only_error=True,
        linger_ms=settings.decision_linger_ms(kafka_door),
        # bounded memory while the broker is away; past it (or past the timeout) the spill takes over
        queue_buffering_max_kbytes=settings.publish_buffer_kbytes,
        message_timeout_ms=int(settings.publish_timeout_s * 1000),
    )
    shadow = DecisionPublisher(producer, settings.topics.shadow_decisions, metrics)
    engine = DecisionEngine(
        rules=load_rules(settings.rules_file),
        model=release,
        store=OnlineFeatureStore(redis_client(settings.require_redis()), settings.key_prefix),
        thresholds=None,
        metrics=metrics,
        on_shadow=shadow.publish,
        explain_inline=False,  # the reply goes out first; reason codes join the published decision
        exploration=settings.exploration(),
        decision_ttl_s=settings.decision_ttl_s,
    )
    # A/B experiments: each card's arm decides its payments (scoring/experiment.py); no experiment
    # running, the engine decides everything as before.
    router = ExperimentRouter(
        engine, arm_engine_factory(release.registry, engine), ExperimentStore(settings.registry_dir)
    )
    router.watch(settings.release_poll_s)
    spill = Spill(settings.spill_dir / settings.topics.decisions, settings.spill_max_bytes)
    publisher = ExplainingPublisher(
        DecisionPublisher(producer, settings.topics.decisions, metrics, spill), router.explain
    )
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)
    config = ServerConfig(
        host=settings.grpc_host, port=settings.grpc_port, max_message_bytes=settings.grpc_max_message_bytes
    )
    return FraudScorerService(router, publisher, config)


def open_review_store(settings: Settings) -> ReviewStore:
    """The review store with the configured claim timeout and SLA."""
    from review_queue import ReviewStore

    return ReviewStore(
        settings.review_db,
        claim_timeout=timedelta(seconds=settings.review_claim_timeout_s),
        sla=timedelta(seconds=settings.review_sla_s),
    )


@dataclass(frozen=True)
class RecordedVerdict:
    """A verdict committed to the review store; ``published``: the outbox is empty again."""

    verdict: Verdict
    label: Label | None  # None for unsure: no training label
    published: bool


def record_review_verdict(
    settings: Settings,
    transaction_id: str,
    verdict: Verdict,
    reviewer: str,
    note: str,
    at: datetime | None = None,
    require_claim: bool = False,
) -> RecordedVerdict:
    """Commit a reviewer's verdict to the review store, then publish the outbox to `labels`.

    The commit comes first and is what makes the verdict true: if the broker is away the label
    waits in the outbox (``published`` False) and the next label or intake publishes it."""
    with open_review_store(settings) as store:
        label = store.record_verdict(transaction_id, verdict, reviewer, note, at=at, require_claim=require_claim)
    pending = publish_pending_labels(settings)
    return RecordedVerdict(verdict, label, published=pending == 0)


def record_review_label(
    settings: Settings, transaction_id: str, is_fraud: bool, reviewer: str, note: str, at: datetime | None = None
) -> Label:
    """Commit a fraud/legitimate label to the review store, then publish it to `labels` (outbox)."""
    from review_queue import Verdict

    recorded = record_review_verdict(
        settings, transaction_id, Verdict.FRAUD if is_fraud else Verdict.LEGITIMATE, reviewer, note, at=at
    )
    assert recorded.label is not None
    return recorded.label


# One publisher at a time per process: two console requests draining the outbox together would
# send the same labels twice. Across processes (the console and `fraud review intake`) duplicates
# remain possible, so `labels` is at-least-once: readers key labels by (transaction, source, author).
_OUTBOX_LOCK = threading.Lock()


def publish_pending_labels(settings: Settings) -> int:
    """Publish every committed, unpublished label to `labels`; returns how many are still pending.

    Never raises for a missing or unreachable broker: the labels stay in the outbox for the next
    try, and the failure is logged."""
    from confluent_kafka import KafkaException

    from deploy.kafka import make_producer, produce_all

    with _OUTBOX_LOCK, open_review_store(settings) as store:
        pending = store.unpublished_labels()
        if not pending:
            return 0
        try:
            producer = make_producer(
                settings.require_kafka(), message_timeout_ms=int(settings.label_publish_timeout_s * 1000)
            )
            produce_all(
                producer,
                settings.topics.labels,
                [(label.transaction_id.encode(), encode(label)) for _, label in pending],
            )
        except (MissingService, KafkaException, RuntimeError) as exc:
            log.warning("%d labels stay in the outbox: %s", len(pending), exc)
            return len(pending)
        store.mark_published([label_id for label_id, _ in pending])
    return 0


def review_console(settings: Settings) -> Starlette:
    """The reviewer console wired to this deployment: the review store, and verdicts that commit
    (the reviewer must hold the claim) and then publish the outbox to `labels`."""
    import secrets
    from functools import partial

    from review_queue.console import ConsoleConfig, create_app

    if settings.review_token is None:
        raise MissingService("no reviewer login token: set FRAUD_REVIEW_TOKEN")
    secret = settings.review_session_secret
    config = ConsoleConfig(
        token=settings.review_token.get_secret_value(),
        # Random per start when unset: sessions end with the process, which is safe, only inconvenient.
        session_secret=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
    )
    return create_app(
        config,
        open_store=partial(open_review_store, settings),
        record=partial(record_review_verdict, settings, require_claim=True),
    )


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
    """Open review cases from `decisions` (a consumer group resumes where it left); returns how many are new.

    Every flagged decision opens a case; approved decisions in the audit sample open audit cases
    (``review_audit_rate``, chosen by a stable hash so a redelivery picks the same ones); every
    decision goes into its card's recent history for the case pages. `decisions` is at least once (a
    scorer's Kafka door re-decides what it read but had not committed when it died): a repeat of a
    transaction already taken in is ignored, the first decision wins (``ReviewStore.intake``)."""
    decisions = read_decisions(settings, idle_s, group="review-intake")
    with open_review_store(settings) as store:  # idempotent by transaction id, first decision wins
        return store.intake(decisions, settings.review_audit_rate, keep=timedelta(days=settings.review_history_days))


def intake_labels(settings: Settings, idle_s: float) -> int:
    """Record labels from `labels` that did not come from review (chargebacks) in the review store,
    so the store is the one label log; returns how many were new. Its own consumer group.

    Review labels on the topic were published from this store's outbox: skipped, not re-recorded."""
    from deploy.kafka import consume_until_idle, make_consumer
    from schema import LabelSource, decode_label

    consumer = make_consumer(settings.require_kafka(), "review-label-intake", [settings.topics.labels])
    try:
        labels = [decode_label(m.value()) for m in consume_until_idle(consumer, idle_s=idle_s)]
    finally:
        consumer.close()
    external = [lb for lb in labels if lb.source is not LabelSource.REVIEW]
    with open_review_store(settings) as store:
        return store.record_external_labels(external)
