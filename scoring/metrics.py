"""Prometheus metrics of the decision path, on a registry passed in (no import-time globals)."""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from deploy.lag import consumer_lag_gauge
from deploy.metrics import BatchHistogram
from schema import Decision

if TYPE_CHECKING:
    from scoring.fallback import CircuitBreaker

STALENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ScorerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "fraud_decisions", "Decisions made, by outcome and model version", ["outcome", "model_version"], registry=r
        )
        self.degraded = Counter(
            "fraud_degraded_decisions", "Decisions made without a dependency, by reason", ["reason"], registry=r
        )
        self.replays = Counter(
            "fraud_idempotent_replays",
            "Requests answered with the decision already made for their transaction id, not published again "
            "(how: stored = decided earlier, race = another attempt recorded first, batch = repeated in one batch)",
            ["how"],
            registry=r,
        )
        self.invalid = Counter("fraud_invalid_requests", "Transactions refused as malformed", registry=r)
        self.exploration_decisions = Counter(
            "fraud_exploration_decisions",
            "Decisions the exploration holdout changed (action: approve = let through instead of stopped, "
            "review = flagged instead of blocked), for off-policy evaluation",
            ["action"],
            registry=r,
        )
        self.latency = Histogram(
            "fraud_decision_latency_seconds",
            "Server-side time per request (stage=total) and per batch stage "
            "(features, model, rules: rules and thresholds, reasons, record: recording decisions for retries, "
            "publish: handing decisions to Kafka)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.arm_latency = Histogram(
            "fraud_experiment_arm_seconds",
            "Per A/B arm: time to decide its part of a batch (features, model, rules, record), for the "
            "experiment's latency guardrail (docs/experiments.md)",
            ["arm"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.feature_staleness = BatchHistogram(
            "fraud_feature_staleness_seconds",
            "Per decision: the payment's event time minus the newest event the feature stream had applied "
            "(how far the stored aggregates lag the payment; the payment itself is always folded in)",
            STALENESS_BUCKETS,
            r,
        )
        self.model_info = Gauge("fraud_model_info", "1 for the model version being served", ["version"], registry=r)
        self.shadow_decisions = Counter(
            "fraud_shadow_decisions",
            "What a shadow challenger would have decided (never acted on), by outcome and model version",
            ["outcome", "model_version"],
            registry=r,
        )
        self.release_events = Counter(
            "fraud_release_events",
            "Release changes applied by this scorer (swap, canary_rollback)",
            ["event"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "fraud_dependency_circuit_open",
            "1 while the circuit to a dependency is open (the decision path skips it)",
            ["dependency"],
            registry=r,
        )
        self.circuit_opens = Counter(
            "fraud_dependency_circuit_opens", "Times the circuit to a dependency opened", ["dependency"], registry=r
        )
        self._circuit_opens: dict[str, int] = {}
        # Labelled children, looked up once: ``labels()`` takes a lock and validates its arguments
        # (~3 µs), and the decision path observes five stages and counts outcomes every batch.
        self._stage_children: dict[str, Histogram] = {}
        self._decision_children: dict[tuple[str, str], Counter] = {}
        self.model_load_refusals = Counter(
            "fraud_model_load_refusals",
            "Model versions this scorer refused to serve, by reason (corrupt, features, golden, missing); "
            "the release it was serving kept serving",
            ["reason"],
            registry=r,
        )
        self.decisions_spilled = Counter(
            "fraud_decisions_spilled",
            "Decisions the broker could not take in time, written to the disk spill",
            registry=r,
        )
        self.decisions_replayed = Counter(
            "fraud_decisions_replayed", "Spilled decisions delivered once the broker was back", registry=r
        )
        self.publish_failures = Counter(
            "fraud_decision_publish_failures", "Decisions that could not be handed to Kafka", registry=r
        )
        # The Kafka door's consumer="scorer" (scoring.kafka_door)
        self.consumer_lag = consumer_lag_gauge(r)
        self.dead_letters = Counter(
            "fraud_dead_letters",
            "Messages the Kafka door sent to dead-letter, by reason (invalid)",
            ["reason"],
            registry=r,
        )

    def circuit_changed(self, dependency: str, breaker: CircuitBreaker) -> None:
        self.circuit_open.labels(dependency=dependency).set(1.0 if breaker.is_open else 0.0)
        seen = self._circuit_opens.get(dependency, 0)
        if breaker.opens > seen:
            self.circuit_opens.labels(dependency=dependency).inc(breaker.opens - seen)
            self._circuit_opens[dependency] = breaker.opens

    def model_loaded(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def observe_stage(self, stage: str, seconds: float) -> None:
        child = self._stage_children.get(stage)
        if child is None:
            child = self._stage_children[stage] = self.latency.labels(stage=stage)
        child.observe(seconds)

    def count_decisions(self, decisions: Iterable[Decision]) -> None:
        tally: dict[tuple[str, str], int] = {}
        for d in decisions:
            key = (d.outcome, d.model_version)  # an Outcome is its str value: no enum lookup per decision
            tally[key] = tally.get(key, 0) + 1
        children = self._decision_children
        for key, n in tally.items():
            child = children.get(key)
            if child is None:
                child = children[key] = self.decisions.labels(outcome=key[0], model_version=key[1])
            child.inc(n)

    def count_shadow(self, decisions: Iterable[Decision]) -> None:
        tally = _Tally((d.outcome.value, d.model_version) for d in decisions)
        for (outcome, version), n in tally.items():
            self.shadow_decisions.labels(outcome=outcome, model_version=version).inc(n)

    def count_replays(self, how: str, n: int) -> None:
        self.replays.labels(how=how).inc(n)

    def count_degraded(self, reason: str, n: int) -> None:
        self.degraded.labels(reason=reason).inc(n)
