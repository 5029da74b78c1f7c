"""Train a challenger, compare it with the champion on a later time slice, promote only if better.

Time layout for a run as of T (all event time)::

    ... train ...........](.... evaluate ....](... label maturity ...]T
                       eval_start          mature_end

Labels are those known at T; transactions after ``mature_end`` are too recent for their
chargebacks to have arrived and are used for neither. Both models are scored on the same
evaluation slice with the same labels, and both scores are recorded whatever the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from monitoring import DriftReference, ScoreCalibration
from retrain.dataset import TrainingSet, build_training_set
from retrain.evaluate import CostModel, fraud_metrics, money_outcome
from retrain.registry import ModelLoadError, ModelRegistry, data_fingerprint, feature_list_hash, model_thresholds
from retrain.thresholds import OperatingPoint, ThresholdPolicy, choose_thresholds, operating_point
from retrain.train import TrainingConfig, check_parity, fit, to_onnx
from schema import DecisionThresholds, Label, Transaction
from streaming.features import CATEGORICAL_FEATURES, MODEL_FEATURES


@dataclass(frozen=True)
class RetrainPolicy:
    label_maturity: timedelta = timedelta(days=2)
    eval_window: timedelta = timedelta(days=2)
    # How far back training reaches from the evaluation slice (None: all history). Old fraud
    # patterns fade; a bounded window also bounds training time as history grows.
    train_window: timedelta | None = None
    min_train_fraud: int = 20  # fewer known frauds than this and a model learns nothing useful
    min_improvement: float = 0.0  # challenger PR-AUC must exceed the champion's by more than this
    # Operating thresholds: chosen per model for the review capacity, unless fixed here (the
    # teaching scenarios fix them so every model in a story is judged at the same cut-offs).
    threshold_policy: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    fixed_thresholds: DecisionThresholds | None = None
    cost: CostModel = field(default_factory=CostModel)
    # What a challenger that beats the champion does: "promote" at once, or start as a "shadow"
    # or a "canary" (``canary_share`` of cards) for an operator, or the guard, to finish.
    release: str = "promote"
    canary_share: float = 0.05
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if self.release not in ("promote", "shadow", "canary"):
            raise ValueError(f"release: expected promote, shadow or canary, got {self.release!r}")


@dataclass(frozen=True)
class RetrainResult:
    challenger: str
    champion_before: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    promoted: bool
    reason: str
    train_rows: int
    eval_rows: int

    @property
    def serving(self) -> str | None:
        return self.challenger if self.promoted else self.champion_before


class NotEnoughData(ValueError):
    """The history up to the cut-off cannot train a model; the message says what is missing."""


def _split(data: TrainingSet, as_of: datetime, policy: RetrainPolicy) -> tuple[TrainingSet, TrainingSet]:
    mature_end = as_of - policy.label_maturity
    eval_start = mature_end - policy.eval_window
    train_start = None if policy.train_window is None else eval_start - policy.train_window
    train, evaluation = data.between(train_start, eval_start), data.between(eval_start, mature_end)
    if int(train.labels.sum()) < policy.min_train_fraud:
        raise NotEnoughData(
            f"only {int(train.labels.sum())} known frauds before {eval_start:%Y-%m-%d %H:%M} "
            f"(need {policy.min_train_fraud}); simulate more days or lower label maturity"
        )
    if len(evaluation) == 0 or evaluation.labels.sum() == 0:
        raise NotEnoughData(f"no labelled fraud in the evaluation slice {eval_start:%F} .. {mature_end:%F}")
    return train, evaluation


def retrain(
    transactions: Sequence[Transaction],
    labels: Sequence[Label],
    registry: ModelRegistry,
    as_of: datetime,
    policy: RetrainPolicy,
) -> RetrainResult:
    """Train a challenger from history known at ``as_of``; promote it if it beats the champion."""
    return retrain_on(build_training_set(transactions, labels, as_of), registry, as_of, policy)


def retrain_on(data: TrainingSet, registry: ModelRegistry, as_of: datetime, policy: RetrainPolicy) -> RetrainResult:
    """``retrain`` from a training set already labelled as of ``as_of`` (``labelled_as_of``)."""
    train, evaluation = _split(data, as_of, policy)
    model = fit(train.features, train.labels, policy.training)
    onnx_bytes = to_onnx(model, len(MODEL_FEATURES))
    parity = check_parity(model, onnx_bytes, evaluation.features, policy.training.parity_tolerance)

    challenger_scores = model.predict_proba(evaluation.features)[:, 1]
    operating = _operating_point(evaluation, challenger_scores, policy)
    challenger_metrics = _metrics(evaluation, challenger_scores, operating.thresholds, policy.cost)
    champion = registry.champion()
    metadata = {
        **_lineage(train, evaluation, as_of, policy, champion),
        "metrics": challenger_metrics,
        "operating_point": operating.as_dict(),
        "threshold_policy": None if policy.fixed_thresholds else policy.threshold_policy.as_dict(),
        "cost_model": policy.cost.as_dict(),
        "onnx_parity_max_abs_diff": parity,
        "training_config": policy.training.as_dict(),
        "drift_reference": _reference(train, model.predict_proba(train.features)[:, 1]).to_dict(),
        # Platt map from score to fraud probability, fitted on the evaluation slice: the monitor
        # estimates recall from it before labels arrive (monitoring/estimate.py).
        "calibration": ScoreCalibration.fit(challenger_scores, evaluation.labels).as_dict(),
    }
    challenger = registry.register(
        onnx_bytes,
        metadata,
        native_model=bytes(model.get_booster().save_raw("ubj")),
        golden_rows=evaluation.features,  # its golden set: checked at every load (retrain.registry)
    )

    champion_metrics = _champion_metrics(registry, champion, evaluation, policy.cost)
    promoted, reason = _verdict(challenger_metrics, champion_metrics, policy.min_improvement)
    record = {
        "challenger": challenger,
        "champion_before": champion,
        "challenger_pr_auc": challenger_metrics["pr_auc"],
        "champion_pr_auc": None if champion_metrics is None else champion_metrics["pr_auc"],
        "eval_rows": len(evaluation),
        "reason": reason,
    }
    if promoted and policy.release != "promote":
        registry.start_challenger(challenger, policy.release, share=policy.canary_share, by="retrain")
        promoted, reason = False, f"{reason}; started as {policy.release}, not promoted"
    elif promoted:
        registry.promote(challenger, record)
    else:
        registry.record({"event": "refuse", "version": challenger, **record})
    return RetrainResult(
        challenger, champion, challenger_metrics, champion_metrics, promoted, reason, len(train), len(evaluation)
    )


def _operating_point(evaluation: TrainingSet, scores: np.ndarray, policy: RetrainPolicy) -> OperatingPoint:
    days = policy.eval_window.total_seconds() / 86_400
    if policy.fixed_thresholds is None:
        return choose_thresholds(evaluation.labels, scores, days, policy.threshold_policy)
    return operating_point(evaluation.labels, scores, days, policy.fixed_thresholds)


def _metrics(evaluation: TrainingSet, scores: np.ndarray, t: DecisionThresholds, cost: CostModel) -> dict[str, float]:
    amounts = evaluation.features[:, MODEL_FEATURES.index("amount")].astype(np.float64)
    return {
        **fraud_metrics(evaluation.labels, scores, t.flag, t.block),
        **money_outcome(evaluation.labels, scores, amounts, t.flag, t.block, cost),
    }


def _lineage(
    train: TrainingSet, evaluation: TrainingSet, as_of: datetime, policy: RetrainPolicy, parent: str | None
) -> dict[str, Any]:
    """Where a model came from: enough to reproduce it and to audit what it could have known."""

    def span(rows: TrainingSet) -> list[str | None]:
        if len(rows) == 0:
            return [None, None]
        return [rows.transactions[0].event_time.isoformat(), rows.transactions[-1].event_time.isoformat()]

    return {
        "feature_names": list(MODEL_FEATURES),
        "feature_list_hash": feature_list_hash(MODEL_FEATURES),
        "as_of": as_of.isoformat(),
        "label_cutoff": as_of.isoformat(),  # no label known after this entered training or evaluation
        "training_window": span(train),
        "evaluation_window": span(evaluation),
        "parent_version": parent,
        "data_fingerprint": data_fingerprint(
            [*train.transactions, *evaluation.transactions], np.concatenate([train.labels, evaluation.labels])
        ),
        "train_rows": len(train),
        "train_fraud": int(train.labels.sum()),
        "eval_rows": len(evaluation),
        "eval_fraud": int(evaluation.labels.sum()),
        "label_maturity_s": policy.label_maturity.total_seconds(),
    }


def _reference(train: TrainingSet, train_scores: np.ndarray) -> DriftReference:
    return DriftReference.from_samples(
        {**{n: train.features[:, i] for i, n in enumerate(MODEL_FEATURES)}, "score": train_scores},
        categorical=CATEGORICAL_FEATURES,
    )


def _champion_metrics(
    registry: ModelRegistry, champion: str | None, evaluation: TrainingSet, cost: CostModel
) -> dict[str, float] | None:
    """The champion on the same slice and labels, at its own operating thresholds."""
    if champion is None:
        return None
    try:
        model = registry.load(champion)
    except ModelLoadError:
        return None  # a champion that can no longer load loses to any valid challenger
    return _metrics(evaluation, model.predict_proba(evaluation.features), model_thresholds(model.metadata), cost)


def _verdict(challenger: dict[str, float], champion: dict[str, float] | None, margin: float) -> tuple[bool, str]:
    if champion is None:
        return True, "no serving champion"
    ours, theirs = challenger["pr_auc"], champion["pr_auc"]
    if np.isnan(ours):
        return False, "challenger PR-AUC undefined on the evaluation slice"
    if np.isnan(theirs) or ours > theirs + margin:
        return True, f"challenger PR-AUC {ours:.4f} > champion {theirs:.4f} + {margin}"
    return False, f"challenger PR-AUC {ours:.4f} does not beat champion {theirs:.4f} + {margin}"
