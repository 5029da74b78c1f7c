"""The decision core: rules, features, model, thresholds. Both doors (gRPC and Kafka) call it.

Precedence: a rule's action is a floor the model cannot lower (a blocked country stays blocked
whatever the score); the model's threshold outcome can raise it. The final outcome is the most
severe of the two.

Fallback when the online feature store is unreachable (documented in the README): the decision
is made from the transaction alone, rules-only; velocity rules report "not evaluated", the model
is not consulted (its score on empty history would be falsely reassuring), and any amount above
``degraded_flag_amount_minor`` is flagged for review rather than approved. The decision carries
``degraded_reason`` and a metric counts it; the next batch tries the store again, so recovery
needs nothing but the store coming back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import redis

from retrain.registry import RegisteredModel
from rules_engine import RuleSet
from schema import Decision, DecisionThresholds, FeatureVector, Outcome, RuleHit, Transaction
from scoring.metrics import ScorerMetrics
from scoring.reasons import ReasonExplainer
from streaming import OnlineFeatureStore
from streaming.windows import context_features


@dataclass(frozen=True)
class FallbackPolicy:
    degraded_flag_amount_minor: int = 50_000  # 500.00: above this, no-features decisions go to review


class DecisionEngine:
    def __init__(
        self,
        rules: RuleSet,
        model: RegisteredModel,
        store: OnlineFeatureStore,
        thresholds: DecisionThresholds,
        metrics: ScorerMetrics,
        fallback: FallbackPolicy | None = None,
    ) -> None:
        self.rules = rules
        self.model = model
        self.store = store
        self.thresholds = thresholds
        self.metrics = metrics
        self.fallback = fallback or FallbackPolicy()
        self.reasons = ReasonExplainer()  # follows self.model when it is swapped
        metrics.model_loaded(model.version)

    def decide_batch(self, transactions: Sequence[Transaction]) -> list[Decision]:
        if not transactions:
            return []
        started = time.perf_counter()
        try:
            batch = self.store.features_for_batch(transactions)
        except redis.RedisError as exc:
            self.metrics.observe_stage("features", time.perf_counter() - started)
            return self.without_features(transactions, f"features_unavailable: {type(exc).__name__}")
        features_done = time.perf_counter()
        self.metrics.observe_stage("features", features_done - started)

        vectors = batch.vectors
        try:
            scores = self.model.predict_proba(batch.matrix.astype(np.float32))
        except Exception as exc:  # noqa: BLE001 - any model failure must degrade, not fail the payment
            return self.without_features(transactions, f"model_unavailable: {type(exc).__name__}", vectors)
        model_done = time.perf_counter()
        self.metrics.observe_stage("model", model_done - features_done)

        now = datetime.now(UTC)
        decisions = []
        all_hits = self.rules.evaluate_batch(transactions, vectors, batch.column)
        score_list = scores.tolist()
        outcomes = [
            max([self.thresholds.outcome(float(score)), *(h.action for h in hits)], key=_severity)
            for score, hits in zip(score_list, all_hits, strict=True)
        ]
        rules_done = time.perf_counter()
        # Reason codes for flagged and blocked rows only: an all-approve batch never touches the booster.
        explain = [i for i, outcome in enumerate(outcomes) if outcome is not Outcome.APPROVE]
        reasons = self.reasons.reasons_for(self.model, batch.matrix, explain) if explain else {}
        reasons_done = time.perf_counter()
        for i, (txn, vector, score, hits, outcome) in enumerate(
            zip(transactions, vectors, score_list, all_hits, outcomes, strict=True)
        ):
            staleness = None if batch.stream_watermark is None else txn.event_ts - batch.stream_watermark
            if staleness is not None:
                self.metrics.feature_staleness.observe(max(staleness, 0.0))
            decisions.append(
                Decision(
                    transaction=txn,
                    outcome=outcome,
                    score=float(score),
                    model_version=self.model.version,
                    rule_hits=hits,
                    features=vector,
                    decided_at=now,
                    feature_staleness_s=staleness,
                    reasons=reasons.get(i, []),
                )
            )
        if explain:
            self.metrics.observe_stage("reasons", reasons_done - rules_done)
        self.metrics.observe_stage("rules_thresholds", time.perf_counter() - model_done - (reasons_done - rules_done))
        self.metrics.count_decisions(decisions)
        return decisions

    def without_features(
        self, transactions: Sequence[Transaction], reason: str, vectors: Sequence[FeatureVector] | None = None
    ) -> list[Decision]:
        """The documented fallback: rules only, anything large flagged for review; ``reason`` is
        recorded in each decision (``features_unavailable: ...``, ``model_unavailable: ...``,
        ``shed: ...``) and its first word counted in ``fraud_degraded_decisions``."""
        now = datetime.now(UTC)
        decisions = []
        for i, txn in enumerate(transactions):
            vector = vectors[i] if vectors is not None else context_features(txn)
            hits = self.rules.evaluate(txn, vector)
            if txn.amount_minor > self.fallback.degraded_flag_amount_minor:
                hits.append(
                    RuleHit(
                        rule_id="degraded_amount_review@1",
                        action=Outcome.FLAG,
                        reason=f"decided without {_missing(reason)}; "
                        f"amount over {self.fallback.degraded_flag_amount_minor / 100:,.2f} goes to review",
                    )
                )
            outcome = max([Outcome.APPROVE, *(h.action for h in hits)], key=_severity)
            decisions.append(
                Decision(
                    transaction=txn,
                    outcome=outcome,
                    score=None,
                    model_version=self.model.version,
                    rule_hits=hits,
                    features=vector,
                    decided_at=now,
                    degraded_reason=reason,
                )
            )
        self.metrics.count_degraded(reason.split(":")[0], len(decisions))
        self.metrics.count_decisions(decisions)
        return decisions


def _missing(reason: str) -> str:
    kind = reason.split(":")[0]
    return "the model (load shed)" if kind == "shed" else kind.replace("_unavailable", "")


def _severity(outcome: Outcome) -> int:
    return outcome.severity
