"""Metrics that fit fraud: precision and recall at the operating thresholds, PR-AUC, and recall
at a fixed false-positive budget. ROC-AUC is reported too but never used to choose: at well under
1% fraud it looks excellent for models that would bury reviewers in false positives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as average precision)."""
    positives = int(y_true.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    hits = y_true[order].astype(np.float64)
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at_k * hits).sum() / positives)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    from scipy.stats import rankdata

    positives = int(y_true.sum())
    negatives = len(y_true) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y_true == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def precision_recall_at(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = scores >= threshold
    tp = int((predicted & (y_true == 1)).sum())
    precision = tp / int(predicted.sum()) if predicted.any() else float("nan")
    recall = tp / int(y_true.sum()) if y_true.any() else float("nan")
    return precision, recall


def recall_at_fpr(y_true: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Share of fraud caught when at most ``max_fpr`` of legitimate payments may be stopped."""
    negatives = np.sort(scores[y_true == 0])[::-1]
    if len(negatives) == 0 or not y_true.any():
        return float("nan")
    allowed = int(np.floor(max_fpr * len(negatives)))
    threshold = negatives[allowed] if allowed < len(negatives) else -np.inf
    return float((scores[y_true == 1] > threshold).mean())


def fraud_metrics(y_true: np.ndarray, scores: np.ndarray, flag: float, block: float) -> dict[str, float]:
    """The metrics recorded with every model and used to compare champion and challenger."""
    flag_p, flag_r = precision_recall_at(y_true, scores, flag)
    block_p, block_r = precision_recall_at(y_true, scores, block)
    return {
        "rows": float(len(y_true)),
        "fraud_rows": float(y_true.sum()),
        "pr_auc": average_precision(y_true, scores),
        "roc_auc": roc_auc(y_true, scores),
        "precision_at_flag": flag_p,
        "recall_at_flag": flag_r,
        "precision_at_block": block_p,
        "recall_at_block": block_r,
        "recall_at_fpr_0.5pct": recall_at_fpr(y_true, scores, 0.005),
    }


@dataclass(frozen=True)
class CostModel:
    """What each outcome costs, in major units, for the money view of a model.

    The stated model (defaults are illustrative; set them from your own finance team's numbers):
    a fraud that is approved loses its amount (the chargeback) plus a chargeback fee; a blocked
    fraud loses nothing; a flagged fraud is caught by the reviewer (it costs one review); a
    legitimate payment that is flagged costs one review, one that is blocked costs the customer's
    friction (a declined good customer, some of whom leave).
    """

    review_cost: float = 4.0  # analyst time per flagged case
    false_block_cost: float = 15.0  # friction of declining a good customer
    chargeback_fee: float = 20.0  # issuer/scheme fee on top of the lost amount

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def money_outcome(
    y_true: np.ndarray, scores: np.ndarray, amounts: np.ndarray, flag: float, block: float, cost: CostModel
) -> dict[str, float]:
    """Money saved and lost at the operating thresholds under ``cost`` (major units).

    ``saved`` is the fraud amount stopped (blocked, or flagged and caught in review); ``lost`` what
    approved fraud costs; ``spent`` the reviews and false-block friction; ``net`` = saved - spent
    - lost. ``net_vs_no_model`` compares with approving everything (which loses all fraud).
    """
    fraud = y_true == 1
    flagged = (scores >= flag) & (scores < block)
    blocked = scores >= block
    approved = ~(flagged | blocked)
    saved = float(amounts[fraud & (flagged | blocked)].sum())
    lost = float(amounts[fraud & approved].sum() + cost.chargeback_fee * (fraud & approved).sum())
    spent = float(cost.review_cost * flagged.sum() + cost.false_block_cost * (blocked & ~fraud).sum())
    all_fraud_loss = float(amounts[fraud].sum() + cost.chargeback_fee * fraud.sum())
    return {
        "money_saved": saved,
        "money_lost": lost,
        "money_spent": spent,
        "money_net": saved - spent - lost,
        "money_net_vs_no_model": all_fraud_loss - lost - spent,
    }
