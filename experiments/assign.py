"""Which arm a card is in: a stable hash of the experiment's name and the card id.

Each card maps to a bucket in [0, 1). The bucket line is laid out once, at full ramp:

    [0, holdout)                      holdout: control's policy, for the experiment's whole life
    then each treatment arm's region  its weight's part of (1 - holdout), in the order declared

and when the treatments decide ``traffic`` of the cards outside the holdout, each occupies the
first ``traffic`` of its region; control has the rest. So ramping up only ever
moves cards from control into a treatment (a card in the 1% step stays in the treatment at 10%),
a halt moves everyone back to control, and the holdout never sees a treatment. Salting the hash
with the experiment's name keeps one experiment's treatment cards from being the next one's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from experiments.config import CONTROL_ARM, HOLDOUT_ARM, Experiment
from experiments.store import LAUNCHED, ExperimentState


def stable_uniform(ids: Sequence[str], salt: str) -> np.ndarray:
    """A number in [0, 1) per id from a salted BLAKE2 hash: uniform, and the same for the same id
    and salt in any process, on any day (a card's arm, a payment's exploration draw)."""
    prefix = salt.encode() + b"\x00"
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(prefix + i.encode(), digest_size=8).digest(), "big") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    ) / np.float64(2**64)


def card_buckets(card_ids: Sequence[str], salt: str) -> np.ndarray:
    """Each card's bucket in [0, 1): uniform, stable across processes and restarts."""
    return stable_uniform(card_ids, salt)


def arm_regions(experiment: Experiment, traffic: float) -> list[tuple[str, float, float]]:
    """(arm, start, end) of every bucket region that is not control, at ramp ``traffic``."""
    live = 1.0 - experiment.holdout
    regions = [(HOLDOUT_ARM, 0.0, experiment.holdout)] if experiment.holdout else []
    start = experiment.holdout
    for name, weight in experiment.treatment_weights().items():
        full = weight * live
        regions.append((name, start, start + full * traffic))
        start += full
    return regions


def assign_arms(card_ids: Sequence[str], experiment: Experiment, traffic: float) -> np.ndarray:
    """The arm of every card when the treatments decide ``traffic`` of the cards outside the holdout."""
    buckets = card_buckets(card_ids, experiment.name)
    arms = np.full(len(card_ids), CONTROL_ARM, dtype=object)
    for name, start, end in arm_regions(experiment, traffic):
        arms[(buckets >= start) & (buckets < end)] = name
    return arms


def serving_arms(card_ids: Sequence[str], state: ExperimentState | None) -> np.ndarray:
    """The arm deciding each card as the experiment stands (no experiment: control for all)."""
    if state is None:
        return np.full(len(card_ids), CONTROL_ARM, dtype=object)
    arms = assign_arms(card_ids, state.experiment, state.traffic)
    if state.status == LAUNCHED and state.winner is not None:
        arms[(arms != HOLDOUT_ARM)] = state.winner  # launch: every card outside the holdout
    return arms
