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

from monitoring import DriftReference
from retrain.dataset import TrainingSet, build_training_set
from retrain.evaluate import fraud_metrics
from retrain.registry import ModelLoadError, ModelRegistry
from retrain.train import TrainingConfig, check_parity, fit, to_onnx
from schema import DecisionThresholds, Label, Transaction
from streaming.features import MODEL_FEATURES


@dataclass(frozen=True)
class RetrainPolicy:
    label_maturity: timedelta = timedelta(days=2)
    eval_window: timedelta = timedelta(days=2)
    min_train_fraud: int = 20  # fewer known frauds than this and a model learns nothing useful
    min_improvement: float = 0.0  # challenger PR-AUC must exceed the champion's by more than this
    thresholds: DecisionThresholds = field(default_factory=DecisionThresholds)
    training: TrainingConfig = field(default_factory=TrainingConfig)


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
    train, evaluation = data.between(None, eval_start), data.between(eval_start, mature_end)
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

    t = policy.thresholds
    challenger_scores = model.predict_proba(evaluation.features)[:, 1]
    challenger_metrics = fraud_metrics(evaluation.labels, challenger_scores, t.flag, t.block)
    train_scores = model.predict_proba(train.features)[:, 1]
    reference = DriftReference.from_samples(
        {**{n: train.features[:, i] for i, n in enumerate(MODEL_FEATURES)}, "score": train_scores}
    )
    metadata: dict[str, Any] = {
        "feature_names": list(MODEL_FEATURES),
        "as_of": as_of.isoformat(),
        "train_rows": len(train),
        "train_fraud": int(train.labels.sum()),
        "eval_rows": len(evaluation),
        "eval_fraud": int(evaluation.labels.sum()),
        "label_maturity_s": policy.label_maturity.total_seconds(),
        "metrics": challenger_metrics,
        "onnx_parity_max_abs_diff": parity,
        "training_config": policy.training.as_dict(),
        "drift_reference": reference.to_dict(),
    }
    challenger = registry.register(onnx_bytes, metadata, native_model=bytes(model.get_booster().save_raw("ubj")))

    champion = registry.champion()
    champion_metrics = _champion_metrics(registry, champion, evaluation, t)
    promoted, reason = _verdict(challenger_metrics, champion_metrics, policy.min_improvement)
    record = {
        "challenger": challenger,
        "champion_before": champion,
        "challenger_pr_auc": challenger_metrics["pr_auc"],
        "champion_pr_auc": None if champion_metrics is None else champion_metrics["pr_auc"],
        "eval_rows": len(evaluation),
        "reason": reason,
    }
    if promoted:
        registry.promote(challenger, record)
    else:
        registry.record({"event": "refuse", "version": challenger, **record})
    return RetrainResult(
        challenger, champion, challenger_metrics, champion_metrics, promoted, reason, len(train), len(evaluation)
    )


def _champion_metrics(
    registry: ModelRegistry, champion: str | None, evaluation: TrainingSet, t: DecisionThresholds
) -> dict[str, float] | None:
    if champion is None:
        return None
    try:
        model = registry.load(champion)
    except ModelLoadError:
        return None  # a champion that can no longer load loses to any valid challenger
    return fraud_metrics(evaluation.labels, model.predict_proba(evaluation.features), t.flag, t.block)


def _verdict(challenger: dict[str, float], champion: dict[str, float] | None, margin: float) -> tuple[bool, str]:
    if champion is None:
        return True, "no serving champion"
    ours, theirs = challenger["pr_auc"], champion["pr_auc"]
    if np.isnan(ours):
        return False, "challenger PR-AUC undefined on the evaluation slice"
    if np.isnan(theirs) or ours > theirs + margin:
        return True, f"challenger PR-AUC {ours:.4f} > champion {theirs:.4f} + {margin}"
    return False, f"challenger PR-AUC {ours:.4f} does not beat champion {theirs:.4f} + {margin}"
