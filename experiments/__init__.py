"""Experiments: backtests of policies on history, A/B tests of policies on live cards with
guardrails and sequential tests, and off-policy evaluation from a logged exploration holdout."""

from experiments.config import (
    CONTROL_ARM,
    HOLDOUT_ARM,
    Arm,
    Experiment,
    ExperimentFileError,
    Exploration,
    Guardrails,
    Policy,
    RampStep,
    SequentialTest,
    load_experiment,
    load_policy,
)
from experiments.replay import ReplayedFeatures, ReplayedHistory

__all__ = [
    "CONTROL_ARM",
    "HOLDOUT_ARM",
    "Arm",
    "Experiment",
    "ExperimentFileError",
    "Exploration",
    "Guardrails",
    "Policy",
    "RampStep",
    "ReplayedFeatures",
    "ReplayedHistory",
    "SequentialTest",
    "load_experiment",
    "load_policy",
]
