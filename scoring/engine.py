"""The decision core: rules, features, model, thresholds. Both doors (gRPC and Kafka) call it.

Precedence: a rule's action is a floor the model cannot lower (a blocked country stays blocked
whatever the score); the model's threshold outcome can raise it. The final outcome is the most
severe of the two.

Fallback when the online feature store is unreachable or the model fails: the ladder in
``scoring.fallback`` (rules on the payment alone; over a ceiling, review; under it, approve within
a fail-open budget and queue for post-authorisation review). A circuit breaker stops a hung Redis
from costing every batch its timeout; recovery needs nothing but Redis coming back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import numpy as np

from experiments.config import Exploration
from experiments.exploration import EXPLORATION_RULE, exploration_draws, exploration_reason, explore
from retrain.registry import RegisteredModel
from rules_engine import RuleSet
from schema import (
    POST_AUTH_REVIEW_RULE,
    Decision,
    DecisionThresholds,
    FeatureValues,
    Outcome,
    ReasonCode,
    RuleHit,
    Transaction,
)
from scoring.fallback import CircuitBreaker, FailOpenBudget, FallbackPolicy
from scoring.idempotency import DECISION_TTL_S, OnceDecided, encode_record, replayed
from scoring.metrics import ScorerMetrics
from scoring.reasons import ReasonExplainer, needs_reasons
from scoring.release import CANARY_ARM, CHAMPION_ARM, SHADOW_ARM, ModelRelease, ServingRelease, canary_mask
from streaming import STORE_ERRORS, BatchFeatures, OnlineFeatureStore
from streaming.batch_features import warm_up as warm_up_features
from streaming.features import MODEL_FEATURES
from streaming.windows import context_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Scored:
    """Scores of one batch and which arm (model) produced each."""

    scores: np.ndarray
    in_canary: np.ndarray  # True where the canary challenger decided the row
    champion_s: float  # model time per arm, for the canary guard
    canary_s: float


class DecisionEngine:
    """Decides batches of payments with the release being served (see ``scoring.release``).

    ``model`` is either one model (served alone at ``thresholds``, or its own thresholds when
    None) or a ``ModelRelease`` that may carry a shadow or canary challenger and can change
    between batches. Each batch is decided by one snapshot of the release.

    ``exploration``: the random holdout for off-policy evaluation (``experiments.exploration``);
    None or rate 0: off, and free. ``exploration_salt`` seeds its per-payment draws: every scorer
    must use the same one, so a retry decided by another scorer gets the same answer.
    """

    def __init__(
        self,
        rules: RuleSet,
        model: RegisteredModel | ModelRelease,
        store: OnlineFeatureStore,
        thresholds: DecisionThresholds | None,
        metrics: ScorerMetrics,
        fallback: FallbackPolicy | None = None,
        on_shadow: Callable[[list[Decision]], None] | None = None,
        explain_inline: bool = True,
        decision_ttl_s: int = DECISION_TTL_S,
        exploration: Exploration | None = None,
        exploration_salt: str = EXPLORATION_RULE,
        arm: str | None = None,
    ) -> None:
        self.rules = rules
        self.release = model if isinstance(model, ModelRelease) else ModelRelease(model, thresholds)
        self.store = store
        self.metrics = metrics
        self.fallback = fallback = fallback or FallbackPolicy()
        self.redis_circuit = CircuitBreaker(fallback.failures_to_open, fallback.retry_after_s)
        self._rungs: dict[str, _FallbackRungs] = {}  # by what a degraded decision was made without
        self.fail_open = FailOpenBudget(fallback.fail_open_per_s, fallback.fail_open_burst)
        self.on_shadow = on_shadow  # where shadow decisions go (a topic); None: counted only
        self.reasons = ReasonExplainer()  # explains with whichever model decided the row
        # False: decisions leave without reasons and ``explain`` adds them later, off the reply path
        # (``ExplainingPublisher``), so payments batched with a flagged one do not wait for TreeSHAP.
        self.explain_inline = explain_inline
        self.decision_ttl_s = decision_ttl_s  # how long a retry of a payment gets the same decision
        # The A/B arm this engine decides for (``scoring.experiment``): recorded in every decision,
        # fallbacks included, before the idempotency record, so a retry's reply names it too.
        self.arm = arm
        self.exploration = exploration if exploration is not None and exploration.rate > 0.0 else None
        self.exploration_salt = exploration_salt
        # The feature read is compiled (numba): load or build it now, not on the first payment.
        warm_up_features()
        metrics.model_loaded(self.model.version)

    @property
    def model(self) -> RegisteredModel:
        """The champion being served."""
        return self.release.current.champion

    @model.setter
    def model(self, model: RegisteredModel) -> None:
        self.release.set_champion(model)
        self.metrics.model_loaded(model.version)

    @property
    def thresholds(self) -> DecisionThresholds:
        return self.release.current.champion_thresholds

    @thresholds.setter
    def thresholds(self, thresholds: DecisionThresholds | None) -> None:
        self.release.set_thresholds(thresholds)

    def decide_batch(self, transactions: Sequence[Transaction]) -> list[Decision]:
        if not transactions:
            return []
        release = self.release.current  # one snapshot per batch: a swap never splits a batch
        started = time.perf_counter()
        if not self.redis_circuit.allow():
            return self.without_features(transactions, "features_unavailable: circuit open")
        try:
            batch = self.store.features_for_batch(transactions)
        except STORE_ERRORS as exc:
            return self._redis_failed(transactions, exc, started)
        self._redis_answered()
        return self._decide(release, transactions, batch, started)

    def decide_batch_once(self, transactions: Sequence[Transaction]) -> OnceDecided:
        """``decide_batch``, idempotent by transaction id (``scoring.idempotency``): an id decided
        before (by any scorer, within ``decision_ttl_s``) gets that decision back, and so does a
        repeat of an id earlier in this batch; only the rest are decided, then recorded first
        writer wins. ``new`` says which decisions to publish.

        Without Redis (its circuit open, or it fails) idempotency degrades with the features:
        the fallback decisions are neither looked up nor recorded, and a retry is decided again
        (README, "Idempotency and restarts")."""
        if not transactions:
            return OnceDecided([], [])
        release = self.release.current
        started = time.perf_counter()
        first: dict[str, int] = {}  # transaction id -> index of its first occurrence
        unique: list[Transaction] = []
        for t in transactions:
            if t.transaction_id not in first:
                first[t.transaction_id] = len(unique)
                unique.append(t)
        decided, new = self._decide_unique_once(release, unique, started)
        if len(unique) == len(transactions):
            return OnceDecided(decided, new)
        out: list[Decision] = []
        out_new: list[bool] = []
        seen: set[str] = set()
        for t in transactions:
            i = first[t.transaction_id]
            out.append(decided[i])
            out_new.append(new[i] and t.transaction_id not in seen)
            seen.add(t.transaction_id)
        self.metrics.count_replays("batch", len(transactions) - len(unique))
        return OnceDecided(out, out_new)

    def _decide_unique_once(
        self, release: ServingRelease, transactions: list[Transaction], started: float
    ) -> tuple[list[Decision], list[bool]]:
        everything_new = [True] * len(transactions)
        if not self.redis_circuit.allow():
            return self.without_features(transactions, "features_unavailable: circuit open"), everything_new
        try:
            read = self.store.read_batch(transactions, look_up=transactions)
        except STORE_ERRORS as exc:
            return self._redis_failed(transactions, exc, started), everything_new
        self._redis_answered()
        out: list[Decision | None] = [
            None if raw is None else replayed(t, raw) for t, raw in zip(transactions, read.decided, strict=True)
        ]
        new = [d is None for d in out]
        if all(new):
            todo, todo_read, keys = transactions, read, read.decision_keys
        else:
            self.metrics.count_replays("stored", len(new) - sum(new))
            left = [i for i, n in enumerate(new) if n]
            if not left:
                return [d for d in out if d is not None], new
            todo, todo_read = [transactions[i] for i in left], read.of_payments(left)
            keys = [read.decision_keys[i] for i in left]  # the new decisions' hashes, as looked up
        fresh = self._decide(release, todo, self.store.features_for_batch(todo, todo_read), started, count=False)
        kept, kept_new = self._record(fresh, keys)
        self.metrics.count_decisions(d for d, n in zip(kept, kept_new, strict=True) if n)
        slots = iter(i for i, d in enumerate(out) if d is None)
        for d, n in zip(kept, kept_new, strict=True):
            i = next(slots)
            out[i], new[i] = d, n
        return [d for d in out if d is not None], new

    def shed_once(self, transactions: Sequence[Transaction], reason: str) -> OnceDecided:
        """The shed path (``without_features``), recorded like any decision so that a retry of a
        shed payment gets the same answer: no lookup first (shedding must not wait for a read),
        but the first-writer-wins record replaces a shed decision by one made earlier for the same
        id. Skipped while the Redis circuit is open."""
        decisions = self.without_features(transactions, reason)
        if self.redis_circuit.is_open:
            return OnceDecided(decisions, [True] * len(decisions))
        kept, new = self._record(decisions)
        return OnceDecided(kept, new)

    def _record(self, decisions: list[Decision], keys: list[str] | None = None) -> tuple[list[Decision], list[bool]]:
        """Record ``decisions`` first writer wins, in one round trip; where another attempt of a
        payment (or an earlier copy in this batch) recorded first, its decision replaces ours.
        Returns the decisions to answer with and which of them are new (to publish)."""
        started = time.perf_counter()
        try:
            earlier = self.store.record_decisions(
                [(d.transaction, encode_record(d)) for d in decisions], self.decision_ttl_s, keys
            )
        except STORE_ERRORS as exc:  # decided but not recorded: a retry decides again
            log.warning("could not record %d decisions for idempotency: %s", len(decisions), exc)
            self.metrics.count_degraded("idempotency_unrecorded", len(decisions))
            earlier = [None] * len(decisions)
        self.metrics.observe_stage("record", time.perf_counter() - started)
        out = [d if raw is None else replayed(d.transaction, raw) for d, raw in zip(decisions, earlier, strict=True)]
        new = [raw is None for raw in earlier]
        if not all(new):
            self.metrics.count_replays("race", len(new) - sum(new))
        return out, new

    def _redis_failed(self, transactions: Sequence[Transaction], exc: Exception, started: float) -> list[Decision]:
        self.redis_circuit.failure()
        self.metrics.circuit_changed("redis", self.redis_circuit)
        self.metrics.observe_stage("features", time.perf_counter() - started)
        return self.without_features(transactions, f"features_unavailable: {type(exc).__name__}")

    def _redis_answered(self) -> None:
        was_open = self.redis_circuit.is_open  # then this was the half-open trial, and it succeeded
        self.redis_circuit.success()  # closes it, and resets the count of consecutive failures
        if was_open:
            self.metrics.circuit_changed("redis", self.redis_circuit)

    def _decide(
        self,
        release: ServingRelease,
        transactions: Sequence[Transaction],
        batch: BatchFeatures,
        started: float,
        count: bool = True,
    ) -> list[Decision]:
        """Decide a batch whose features are in hand (``started``: when the feature read began)."""
        features_done = time.perf_counter()
        self.metrics.observe_stage("features", features_done - started)

        vectors = batch.vectors
        matrix = batch.matrix.astype(np.float32)
        try:
            scored = self._score(release, transactions, matrix)
        except Exception as exc:  # noqa: BLE001 - any model failure must degrade, not fail the payment
            return self.without_features(
                transactions, f"model_unavailable: {type(exc).__name__}", vectors, count_decisions=count
            )
        model_done = time.perf_counter()
        self.metrics.observe_stage("model", model_done - features_done)

        now = datetime.now(UTC)
        all_hits = self.rules.evaluate_batch(transactions, vectors, batch.column)
        score_list = scored.scores.tolist()
        canary_rows = scored.in_canary.tolist()
        outcomes = _outcomes(release, scored, all_hits)
        explored = self._explore(transactions, outcomes, all_hits)  # before reasons: explored rows are approvals
        rules_done = time.perf_counter()
        reasons = self._explain(release, matrix, outcomes, canary_rows) if self.explain_inline else {}
        reasons_done = time.perf_counter()
        watermark = batch.stream_watermark
        if watermark is None:
            staleness: list[float | None] = [None] * len(transactions)
        else:
            ts = batch.event_ts if batch.event_ts is not None else np.array([t.event_ts for t in transactions])
            lag = ts - watermark
            staleness = lag.tolist()
            self.metrics.feature_staleness.observe_many(np.maximum(lag, 0.0))
        # the card's hash fixes its arm: only exploration makes an outcome uncertain
        propensity = [1.0] * len(transactions) if explored is None else explored.tolist()
        arms = (_arm(release, False, self.arm), _arm(release, True, self.arm))
        decisions = []
        for i, (txn, vector, score, hits, outcome, canary) in enumerate(
            zip(transactions, vectors, score_list, all_hits, outcomes, canary_rows, strict=True)
        ):
            arm, model = arms[canary]
            decisions.append(
                Decision(
                    transaction=txn,
                    outcome=outcome,
                    score=score,
                    model_version=model.version,
                    rule_hits=hits,
                    features=vector,
                    decided_at=now,
                    policy_arm=arm,
                    propensity=propensity[i],
                    feature_staleness_s=staleness[i],
                    reasons=reasons.get(i, []),
                )
            )
        if reasons:
            self.metrics.observe_stage("reasons", reasons_done - rules_done)
        # Rule evaluation, thresholds and assembling the decisions; the reasons stage is not in it.
        self.metrics.observe_stage("rules", time.perf_counter() - model_done - (reasons_done - rules_done))
        if count:
            self.metrics.count_decisions(decisions)
        self._judge_canary(release, outcomes, scored)
        if release.shadow:
            self._shadow(release, matrix, decisions)
        return decisions

    def _explore(
        self, transactions: Sequence[Transaction], outcomes: list[Outcome], all_hits: list[list[RuleHit]]
    ) -> np.ndarray | None:
        """Apply the exploration holdout in place (outcomes and rule hits of the explored rows);
        returns each row's propensity, or None when exploration is off or nothing was stopped
        (then every propensity is 1). Only stopped rows are hashed: most batches cost nothing."""
        exploration = self.exploration
        if exploration is None:
            return None
        stopped = [i for i, o in enumerate(outcomes) if o is not Outcome.APPROVE]
        if not stopped:
            return None
        # a rule's own stop is a floor exploration never lowers (a blocked country stays blocked)
        hard_stop = np.array([any(h.action is not Outcome.APPROVE for h in all_hits[i]) for i in stopped], dtype=bool)
        amounts = np.array([transactions[i].amount_minor for i in stopped], dtype=np.int64)
        draws = exploration_draws([transactions[i].transaction_id for i in stopped], self.exploration_salt)
        result = explore([outcomes[i] for i in stopped], hard_stop, amounts, draws, exploration)
        propensity = np.ones(len(outcomes))
        propensity[stopped] = result.propensity
        for j in np.flatnonzero(result.explored).tolist():
            i = stopped[j]
            hit = RuleHit(
                rule_id=EXPLORATION_RULE, action=result.outcomes[j], reason=exploration_reason(outcomes[i], exploration)
            )
            all_hits[i] = [*all_hits[i], hit]
            outcomes[i] = result.outcomes[j]
        if n := int(result.explored.sum()):
            self.metrics.exploration_decisions.labels(action=exploration.action).inc(n)
        return propensity

    def _score(self, release: ServingRelease, transactions: Sequence[Transaction], matrix: np.ndarray) -> _Scored:
        n = len(transactions)
        if not release.canary:
            return _Scored(release.champion.predict_proba(matrix), np.zeros(n, dtype=bool), 0.0, 0.0)
        assert release.challenger is not None
        in_canary = canary_mask([t.card_id for t in transactions], release.share)
        scores = np.empty(n, dtype=np.float32)
        t0 = time.perf_counter()
        scores[~in_canary] = release.champion.predict_proba(matrix[~in_canary])
        t1 = time.perf_counter()
        try:
            scores[in_canary] = release.challenger.predict_proba(matrix[in_canary])
        except Exception:  # noqa: BLE001 - a failing canary must not cost its payments a score
            log.exception("canary %s failed to score; the champion decides its rows", release.challenger.version)
            self.metrics.count_degraded("canary_failed", int(in_canary.sum()))
            scores[in_canary] = release.champion.predict_proba(matrix[in_canary])
            return _Scored(scores, np.zeros(n, dtype=bool), time.perf_counter() - t0, 0.0)
        return _Scored(scores, in_canary, t1 - t0, time.perf_counter() - t1)

    def _explain(
        self, release: ServingRelease, matrix: np.ndarray, outcomes: list[Outcome], canary_rows: list[bool]
    ) -> dict[int, list[ReasonCode]]:
        """Reason codes for flagged and blocked rows only, each by the model that scored it: an
        all-approve batch never touches the booster."""
        reasons: dict[int, list[ReasonCode]] = {}
        for canary in (False, True):
            rows = [i for i, o in enumerate(outcomes) if o is not Outcome.APPROVE and canary_rows[i] == canary]
            if rows:
                reasons.update(self.reasons.reasons_for(_arm(release, canary)[1], matrix, rows))
        return reasons

    def explain(self, decisions: Sequence[Decision]) -> list[Decision]:
        """``decisions`` with reason codes added to the flagged and blocked ones that had a score,
        by the model that decided each (looked up in the release being served; a decision whose
        model was swapped out meanwhile keeps no reasons and is counted as unexplained). The time
        is the ``reasons`` stage, as when explained inline."""
        started = time.perf_counter()
        release = self.release.current
        models = {m.version: m for m in (release.champion, release.challenger) if m is not None}
        out = list(decisions)
        todo: dict[str, list[int]] = {}
        for i, d in enumerate(out):
            if needs_reasons(d):
                todo.setdefault(d.model_version, []).append(i)
        for version, rows in todo.items():
            if version not in models:
                self.reasons.unexplained += len(rows)
                continue
            matrix = np.array([[out[i].features[n] for n in MODEL_FEATURES] for i in rows], dtype=np.float32)
            found = self.reasons.reasons_for(models[version], matrix, range(len(rows)))
            for n, i in enumerate(rows):
                if n in found:
                    out[i] = msgspec.structs.replace(out[i], reasons=found[n])
        if todo:
            self.metrics.observe_stage("reasons", time.perf_counter() - started)
        return out

    def _judge_canary(self, release: ServingRelease, outcomes: list[Outcome], scored: _Scored) -> None:
        if not release.canary:
            return
        canary = [o for o, c in zip(outcomes, scored.in_canary, strict=True) if c]
        champion = [o for o, c in zip(outcomes, scored.in_canary, strict=True) if not c]
        self.release.observe(release, CANARY_ARM, canary, scored.canary_s)
        self.release.observe(release, CHAMPION_ARM, champion, scored.champion_s)

    def _shadow(self, release: ServingRelease, matrix: np.ndarray, live: list[Decision]) -> None:
        """Score the batch with the shadow challenger and log what it would have decided."""
        assert release.challenger is not None and release.challenger_thresholds is not None
        try:
            scores = release.challenger.predict_proba(matrix).tolist()
        except Exception:  # noqa: BLE001 - the shadow must never affect live decisions
            log.exception("shadow %s failed to score", release.challenger.version)
            self.metrics.count_degraded("shadow_failed", len(live))
            return
        t = release.challenger_thresholds
        shadow = [
            msgspec.structs.replace(
                d,
                # the live decision's exploration hit is not a rule the shadow policy has
                outcome=max(
                    [t.outcome(score), *(h.action for h in d.rule_hits if h.rule_id != EXPLORATION_RULE)],
                    key=_severity,
                ),
                score=score,
                model_version=release.challenger.version,
                policy_arm=SHADOW_ARM,
                propensity=0.0,  # never acted on
                reasons=[],
            )
            for d, score in zip(live, scores, strict=True)
        ]
        self.metrics.count_shadow(shadow)
        if self.on_shadow is not None:
            self.on_shadow(shadow)

    def without_features(
        self,
        transactions: Sequence[Transaction],
        reason: str,
        vectors: Sequence[FeatureValues] | None = None,
        count_decisions: bool = True,
    ) -> list[Decision]:
        """The fallback ladder (``scoring.fallback``); ``reason`` is recorded in each decision
        (``features_unavailable: ...``, ``model_unavailable: ...``, ``shed: ...``) and its first
        word counted in ``fraud_degraded_decisions``."""
        now = datetime.now(UTC)
        rungs = self._fallback_rungs(reason)
        ceiling = self.fallback.degraded_flag_amount_minor
        budget_spent = 0
        decisions = []
        for i, txn in enumerate(transactions):
            vector = vectors[i] if vectors is not None else context_features(txn)
            hits = self.rules.evaluate(txn, vector)
            outcome = max((h.action for h in hits), key=_severity, default=Outcome.APPROVE)
            if outcome is Outcome.APPROVE:  # rungs 2 and 3 of the ladder
                if txn.amount_minor > ceiling:
                    hit = rungs.over_ceiling
                elif self.fail_open.take():
                    hit = rungs.fail_open
                else:
                    hit, budget_spent = rungs.budget_spent, budget_spent + 1
                hits.append(hit)
                outcome = hit.action
            decisions.append(
                Decision(
                    transaction=txn,
                    outcome=outcome,
                    score=None,
                    model_version=self.model.version,
                    rule_hits=hits,
                    features=vector,
                    decided_at=now,
                    policy_arm=self.arm or "default",
                    degraded_reason=reason,
                )
            )
        self.metrics.count_degraded(reason.split(":")[0], len(decisions))
        if budget_spent:
            self.metrics.count_degraded("fail_open_budget_spent", budget_spent)
        if count_decisions:
            self.metrics.count_decisions(decisions)
        return decisions

    def _fallback_rungs(self, reason: str) -> _FallbackRungs:
        """Rungs 2 and 3 of the ladder for a payment the rules would approve, worded for what is
        missing. Built once per kind of reason: the shed path decides whole batches with them, and
        building the hits per payment was a tenth of its cost."""
        without = _missing(reason)
        rungs = self._rungs.get(without)
        if rungs is None:
            ceiling = self.fallback.degraded_flag_amount_minor
            rungs = self._rungs[without] = _FallbackRungs(
                over_ceiling=RuleHit(
                    rule_id=DEGRADED_REVIEW_RULE,
                    action=Outcome.FLAG,
                    reason=f"decided without {without}; amount over {ceiling / 100:,.2f} goes to review",
                ),
                budget_spent=RuleHit(
                    rule_id=DEGRADED_REVIEW_RULE,
                    action=Outcome.FLAG,
                    reason=f"decided without {without}; fail-open budget of {self.fallback.fail_open_per_s:g}/s spent",
                ),
                fail_open=RuleHit(
                    rule_id=POST_AUTH_REVIEW_RULE,
                    action=Outcome.APPROVE,
                    reason=f"approved without {without} (amount under {ceiling / 100:,.2f}); "
                    "queued for post-authorisation review",
                ),
            )
        return rungs


@dataclass(frozen=True)
class _FallbackRungs:
    over_ceiling: RuleHit  # flagged for review: too much to approve blind
    budget_spent: RuleHit  # flagged for review: the fail-open budget is used up
    fail_open: RuleHit  # approved, queued for post-authorisation review


DEGRADED_REVIEW_RULE = "degraded_amount_review@1"


_BY_SEVERITY = sorted(Outcome, key=lambda o: o.severity)


def _outcomes(release: ServingRelease, scored: _Scored, all_hits: list[list[RuleHit]]) -> list[Outcome]:
    """Each row's outcome: the threshold outcome of its score, raised by any rule hit's action
    (``DecisionThresholds.outcome`` and the precedence of the module docstring, for a whole batch)."""
    scores = scored.scores.astype(np.float64)  # compared as the thresholds are: in float64
    champion, canary = _thresholds(release, False), _thresholds(release, True)
    flag = np.where(scored.in_canary, canary.flag, champion.flag)
    block = np.where(scored.in_canary, canary.block, champion.block)
    severity = np.where(scores >= block, Outcome.BLOCK.severity, np.where(scores >= flag, Outcome.FLAG.severity, 0))
    outcomes = [_BY_SEVERITY[k] for k in severity.tolist()]
    for i, hits in enumerate(all_hits):
        if hits:
            outcomes[i] = max([outcomes[i], *(h.action for h in hits)], key=_severity)
    return outcomes


def _thresholds(release: ServingRelease, canary: bool) -> DecisionThresholds:
    if canary and release.challenger_thresholds is not None:
        return release.challenger_thresholds
    return release.champion_thresholds


def _arm(release: ServingRelease, canary: bool, experiment_arm: str | None = None) -> tuple[str, RegisteredModel]:
    """(policy arm, model) of a row: the canary challenger's, or the champion's (named by the A/B arm
    this engine decides for, if any)."""
    if canary and release.challenger is not None:
        return CANARY_ARM, release.challenger
    return experiment_arm or CHAMPION_ARM, release.champion


def _missing(reason: str) -> str:
    kind = reason.split(":")[0]
    return "the model (load shed)" if kind == "shed" else kind.replace("_unavailable", "")


def _severity(outcome: Outcome) -> int:
    return outcome.severity
