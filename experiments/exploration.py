"""The exploration holdout: a few payments the policy would stop are let through (or sent to review)
at random, so that what happens to payments like them can be observed (docs/experiments.md,
"Off-policy evaluation").

Pure: no I/O, no clock. The decision engine calls ``explore`` after it has computed each
payment's outcome from rules and score; ``experiments.ope`` reads the propensities back.

Propensity (``Decision.propensity``): the probability, under the policy that decided, that the
payment got the outcome it got. Given the payment, rules and score are fixed; the only randomness
is the draw here. So a payment exploration could not have changed has propensity 1, an eligible
one that was explored ``rate``, an eligible one that was not ``1 - rate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experiments.assign import stable_uniform
from experiments.config import Exploration
from schema import Outcome

# The rule hit an explored decision carries, so its audit trail says why it was approved.
EXPLORATION_RULE = "exploration_holdout@1"


@dataclass(frozen=True)
class Explored:
    outcomes: list[Outcome]  # after exploration
    propensity: np.ndarray  # P(this outcome | payment) under the exploring policy
    explored: np.ndarray  # True where exploration changed the outcome


def exploration_draws(transaction_ids: Sequence[str], salt: str) -> np.ndarray:
    """Each payment's draw in [0, 1): uniform, and the same for a retry of the payment (same id),
    in any process, so a retried payment gets the same decision."""
    return stable_uniform(transaction_ids, salt)


def eligible(
    outcomes: Sequence[Outcome], hard_stop: np.ndarray, amounts_minor: np.ndarray, exploration: Exploration
) -> np.ndarray:
    """Where exploration may change the outcome: the score alone stops the payment (flag or block
    for ``approve``, block for ``review``), no rule's action stops it (a blocked country stays
    blocked), and the amount is at or under the cap (what exploration may lose is bounded)."""
    explorable = (Outcome.FLAG, Outcome.BLOCK) if exploration.action == "approve" else (Outcome.BLOCK,)
    by_score = np.fromiter((o in explorable for o in outcomes), dtype=bool, count=len(outcomes))
    return by_score & ~np.asarray(hard_stop, dtype=bool) & (np.asarray(amounts_minor) <= exploration.max_amount_minor)


def explore(
    outcomes: Sequence[Outcome],
    hard_stop: np.ndarray,
    amounts_minor: np.ndarray,
    draws: np.ndarray,
    exploration: Exploration,
) -> Explored:
    """Apply the holdout: an eligible payment whose draw is under ``rate`` is approved (or flagged,
    for ``action: review``) instead; the propensity of every payment's outcome comes with it."""
    can = eligible(outcomes, hard_stop, amounts_minor, exploration)
    explored = can & (np.asarray(draws) < exploration.rate)
    propensity = np.where(can, np.where(explored, exploration.rate, 1.0 - exploration.rate), 1.0)
    to = explored_outcome(exploration)
    new = [to if e else o for o, e in zip(outcomes, explored.tolist(), strict=True)]
    return Explored(new, propensity, explored)


def explored_outcome(exploration: Exploration) -> Outcome:
    return Outcome.APPROVE if exploration.action == "approve" else Outcome.FLAG


def exploration_reason(original: Outcome, exploration: Exploration) -> str:
    """The explored decision's rule-hit reason, in words."""
    instead = "approved" if exploration.action == "approve" else "sent to review"
    return (
        f"exploration holdout: {instead} instead of {original.value} "
        f"(p={exploration.rate:g}, amount under {exploration.max_amount_minor / 100:,.2f}) "
        "for counterfactual evaluation"
    )
