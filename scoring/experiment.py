"""A/B experiments on the decision path: each card's payments decided by its arm's policy.

The running experiment is a file (``experiments.ExperimentStore``) every scorer polls. For each
arm the router keeps a ``DecisionEngine`` of that arm's policy (model, thresholds, rules), all on
the one online store and one metrics registry; a batch is split by the cards' arms
(``experiments.assign.serving_arms``), each part decided by its arm's engine, and the decisions
put back in order. The control arm (and the holdout, which is control's policy) is the scorer's
own engine, with its hot-swapped champion and any canary, unless control's policy names its own
model, thresholds or rules. Each engine stamps its arm on its decisions before they are recorded
for idempotency, so a retried payment is answered with the arm that decided it.

Without an experiment, or with one halted or concluded, the control engine decides everything
(the holdout still records itself as ``holdout``); a state change is picked up by a background
poll and the arms' models are loaded there, never on the decision path. A policy whose model
cannot load is refused (logged, counted) and its cards stay on control.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from experiments import CONTROL_ARM, HOLDOUT_ARM, Policy
from experiments.assign import serving_arms
from experiments.store import ExperimentState, ExperimentStore
from retrain.registry import ModelLoadError, ModelRegistry, RegisteredModel, model_thresholds
from rules_engine import RuleFileError, load_rules
from schema import Decision, FeatureValues, Transaction
from scoring.engine import DecisionEngine
from scoring.idempotency import OnceDecided
from scoring.release import ModelRelease, poll_in_background

log = logging.getLogger(__name__)

EngineFactory = Callable[[str, Policy], DecisionEngine]


@dataclass(frozen=True)
class ServingArms:
    """One snapshot of the experiment as served: its state and an engine per arm."""

    state: ExperimentState | None
    engines: dict[str, DecisionEngine]  # every arm that decides, control and holdout included
    policies: dict[str, Policy]  # the policy each arm's engine was built for (to reuse it)


class ExperimentRouter:
    """Routes each payment to its card's arm; the door-facing surface of ``DecisionEngine``."""

    def __init__(self, control: DecisionEngine, arm_engine: EngineFactory, store: ExperimentStore | None) -> None:
        self.control = control
        self.arm_engine = arm_engine  # builds (and loads) an engine for an arm's policy
        self.store = store
        self.refused: dict[str, str] = {}  # "experiment/arm" -> why its policy could not serve
        self._stamp = -1
        self._stop = threading.Event()
        self.current = ServingArms(None, {CONTROL_ARM: control}, {})
        self.poll()

    # -- what the doors use, as on DecisionEngine -----------------------------------------------
    @property
    def metrics(self):
        return self.control.metrics

    @property
    def release(self) -> ModelRelease:
        return self.control.release

    @property
    def model(self) -> RegisteredModel:
        return self.control.model

    @property
    def explain_inline(self) -> bool:
        return self.control.explain_inline

    # Without an experiment each call goes straight to the control engine: the decision path pays
    # nothing for the router (no split, no copies of the batch).
    def decide_batch(self, transactions: Sequence[Transaction]) -> list[Decision]:
        if self._alone():
            return self.control.decide_batch(transactions)
        return self._routed(transactions, lambda engine, part: engine.decide_batch(part))

    def decide_batch_once(self, transactions: Sequence[Transaction]) -> OnceDecided:
        if self._alone():
            return self.control.decide_batch_once(transactions)
        return self._routed_once(transactions, lambda engine, part: engine.decide_batch_once(part))

    def shed_once(self, transactions: Sequence[Transaction], reason: str) -> OnceDecided:
        if self._alone():
            return self.control.shed_once(transactions, reason)
        return self._routed_once(transactions, lambda engine, part: engine.shed_once(part, reason))

    def without_features(
        self,
        transactions: Sequence[Transaction],
        reason: str,
        vectors: Sequence[FeatureValues] | None = None,
        count_decisions: bool = True,
    ) -> list[Decision]:
        if self._alone():
            return self.control.without_features(transactions, reason, vectors, count_decisions)

        def decide(engine: DecisionEngine, part: list[int]) -> list[Decision]:
            part_vectors = None if vectors is None else [vectors[i] for i in part]
            return engine.without_features([transactions[i] for i in part], reason, part_vectors, count_decisions)

        return self._split(transactions, decide)

    def explain(self, decisions: Sequence[Decision]) -> list[Decision]:
        """Reason codes by the engine of the arm that decided each (it knows that arm's model)."""
        if self._alone():
            return self.control.explain(decisions)
        engines = self.current.engines
        out = list(decisions)
        by_arm: dict[str, list[int]] = {}
        for i, d in enumerate(out):
            by_arm.setdefault(d.policy_arm if d.policy_arm in engines else CONTROL_ARM, []).append(i)
        for arm, rows in by_arm.items():
            for i, d in zip(rows, engines[arm].explain([out[i] for i in rows]), strict=True):
                out[i] = d
        return out

    # -- routing -----------------------------------------------------------------------------
    def _alone(self) -> bool:
        """True when the control engine decides everything (no experiment being served)."""
        return self.current.state is None

    def _split(self, transactions: Sequence[Transaction], decide: Callable) -> list:
        serving = self.current
        arms = serving_arms([t.card_id for t in transactions], serving.state)
        out: list = [None] * len(transactions)
        for arm in dict.fromkeys(arms.tolist()):
            rows = np.flatnonzero(arms == arm).tolist()
            engine = serving.engines.get(arm, serving.engines[CONTROL_ARM])
            started = time.perf_counter()
            results = decide(engine, rows)
            self.metrics.arm_latency.labels(arm=engine.arm or CONTROL_ARM).observe(time.perf_counter() - started)
            for i, result in zip(rows, results, strict=True):
                out[i] = result
        return out

    def _routed(self, transactions: Sequence[Transaction], decide: Callable) -> list[Decision]:
        return self._split(transactions, lambda engine, rows: decide(engine, [transactions[i] for i in rows]))

    def _routed_once(self, transactions: Sequence[Transaction], decide: Callable) -> OnceDecided:
        def part(engine: DecisionEngine, rows: list[int]) -> list[tuple[Decision, bool]]:
            once = decide(engine, [transactions[i] for i in rows])
            return list(zip(once.decisions, once.new, strict=True))

        pairs = self._split(transactions, part)
        return OnceDecided([d for d, _ in pairs], [n for _, n in pairs])

    # -- following the experiment file ----------------------------------------------------------
    def poll(self) -> bool:
        """Serve the experiment file's state if it changed; True when it did."""
        if self.store is None:
            return False
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        state = self.store.current()
        self.current = self._serving(state)
        name = "none" if state is None else f"{state.experiment.name} {state.status} traffic {state.traffic:g}"
        log.info("experiment: %s; arms %s", name, sorted(self.current.engines))
        return True

    def _serving(self, state: ExperimentState | None) -> ServingArms:
        if state is None:
            return ServingArms(None, {CONTROL_ARM: self.control}, {})
        shares = state.shares()
        control = state.experiment.control.policy
        wanted = [(CONTROL_ARM, control), (HOLDOUT_ARM, control)]
        wanted += [(a.name, a.policy) for a in state.experiment.treatments if shares.get(a.name, 0.0) > 0.0]
        engines: dict[str, DecisionEngine] = {}
        policies: dict[str, Policy] = {}
        for arm, policy in wanted:
            engine = self._engine(state, arm, policy)
            if engine is not None:
                engines[arm], policies[arm] = engine, policy
        engines.setdefault(CONTROL_ARM, self.control)  # control's own policy refused: the scorer's
        return ServingArms(state, engines, policies)

    def _engine(self, state: ExperimentState, arm: str, policy: Policy) -> DecisionEngine | None:
        """This arm's engine, reused while its policy is unchanged; None: it cannot serve (its
        cards go to control's engine, and their decisions say control)."""
        old = self.current
        if (
            old.policies.get(arm) == policy
            and old.state is not None
            and old.state.experiment.name == state.experiment.name
        ):
            return old.engines[arm]
        key = f"{state.experiment.name}/{arm}"
        if key in self.refused:
            return None
        try:
            return self.arm_engine(arm, policy)
        except (ModelLoadError, RuleFileError, OSError, ValueError) as exc:
            self.refused[key] = str(exc)
            log.error("experiment %s: arm %s cannot serve (%s); its cards go to control", *key.split("/"), exc)
            self.metrics.count_degraded("experiment_arm_refused", 1)
            return None

    def watch(self, interval_s: float = 1.0) -> threading.Thread:
        return poll_in_background(self.poll, interval_s, self._stop, "experiment")

    def stop(self) -> None:
        self._stop.set()


def arm_engine_factory(registry: ModelRegistry, control: DecisionEngine) -> EngineFactory:
    """Builds an arm's engine like ``control`` (same store, metrics, fallback, exploration) for the
    arm's policy. The default policy shares control's release, so it follows champion swaps and
    canaries; a policy naming a model or thresholds pins them when the arm is built."""

    def build(arm: str, policy: Policy) -> DecisionEngine:
        if policy.model == "champion" and policy.flag is None and policy.block is None:
            model: ModelRelease = control.release
        else:
            champion = control.release.current.champion
            loaded = champion if policy.model in ("champion", champion.version) else registry.load(policy.model)
            model = ModelRelease(loaded, policy.thresholds(model_thresholds(loaded.metadata)))
        return DecisionEngine(
            rules=control.rules if policy.rules is None else load_rules(policy.rules),
            model=model,
            store=control.store,
            thresholds=None,
            metrics=control.metrics,
            fallback=control.fallback,
            explain_inline=control.explain_inline,
            decision_ttl_s=control.decision_ttl_s,
            exploration=control.exploration,
            exploration_salt=control.exploration_salt,
            arm=arm,
        )

    return build
