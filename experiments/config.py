"""What an experiment is, declared once: the policies it compares, how traffic is split and
ramped, what halts it, and what a decision costs.

A **policy** is everything that turns a payment into an outcome: a model version, its thresholds
and a rule set. A backtest replays history through two policies; an A/B test assigns live cards
to arms (one policy each) by a stable hash of the card id; off-policy evaluation estimates a
policy nobody served from the exploration the live policy logged.

Experiment files are YAML (docs/experiments.md); a wrong field is refused with its path named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from retrain.evaluate import CostModel
from schema import DecisionThresholds

CONTROL_ARM = "control"
HOLDOUT_ARM = "holdout"


class ExperimentFileError(ValueError):
    """An experiment or policy file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(_Strict):
    """A decision policy: model + thresholds + rules.

    ``model``: a registry version (``xgb-0004``) or ``champion`` (whatever the registry serves when
    the policy is resolved). ``flag``/``block`` unset: the model's own operating thresholds.
    ``rules``: a rule file; unset: the rules shipped.
    """

    model: str = "champion"
    flag: float | None = Field(None, ge=0.0, le=1.0)
    block: float | None = Field(None, ge=0.0, le=1.0)
    rules: Path | None = None

    def thresholds(self, model_own: DecisionThresholds) -> DecisionThresholds:
        """This policy's thresholds, the unset one taken from the model's own."""
        return DecisionThresholds(
            flag=model_own.flag if self.flag is None else self.flag,
            block=model_own.block if self.block is None else self.block,
        )


class Arm(_Strict):
    """One arm of an A/B test: a name and its policy. ``weight`` splits the treatments' traffic
    between several treatment arms (ignored for control, which takes what the ramp leaves)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    policy: Policy = Policy()
    weight: float = Field(1.0, gt=0.0)


class RampStep(_Strict):
    """One step of the ramp: the treatments together decide ``traffic`` of the cards outside the
    holdout, for at least ``min_days`` with every guardrail inside its bound before the next step
    may start. A last step of 1.0 is the launch: everyone outside the holdout on the treatment."""

    traffic: float = Field(gt=0.0, le=1.0)
    min_days: float = Field(1.0, ge=0.0)


class Guardrails(_Strict):
    """Bounds that halt the experiment when a treatment arm crosses them (docs/experiments.md).

    Rates are compared with the control arm's: a halt needs the treatment's approval rate lower
    than control's by more than ``max_approval_drop`` (absolute), its decision p99 over
    ``max_p99_ms``, or the review backlog over ``max_review_backlog`` cases.
    """

    max_approval_drop: float = Field(0.01, ge=0.0, le=1.0)
    max_p99_ms: float = Field(100.0, gt=0.0)
    max_review_backlog: int = Field(500, ge=0)
    min_decisions: int = Field(1000, ge=0)  # per arm before a rate guardrail judges


class SequentialTest(_Strict):
    """The significance test for repeated looks: Lan-DeMets alpha spending (``obrien-fleming`` or
    ``pocock``) over ``looks`` planned analyses, two-sided at ``alpha``."""

    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    power: float = Field(0.8, gt=0.0, lt=1.0)
    looks: int = Field(10, ge=1, le=100)
    spending: Literal["obrien-fleming", "pocock"] = "obrien-fleming"


class Exploration(_Strict):
    """The random exploration holdout that makes counterfactual evaluation possible. One setting
    of the whole decision path (FRAUD_EXPLORATION_*), not of an experiment: it is the logging
    policy every arm shares.

    A payment the policy would flag or block on its score alone (no hard rule stopping it), at or
    under ``max_amount_minor``, is let through (``action: approve``) or sent to review instead of
    blocked (``action: review``) with probability ``rate``. The draw is a stable hash of the
    transaction id, so a retry gets the same answer; the decision records the probability of the
    outcome it took (``Decision.propensity``) and a rule hit ``exploration_holdout@1``.
    """

    rate: float = Field(0.0, ge=0.0, le=0.5)
    max_amount_minor: int = Field(5_000, ge=0)
    action: Literal["approve", "review"] = "approve"


class Experiment(_Strict):
    """An A/B test of policies on live cards. The first arm, named ``control``, is the baseline."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    arms: tuple[Arm, ...]
    primary_metric: Literal["fraud_loss_rate", "false_positive_rate", "fraud_recall", "approval_rate"] = (
        "fraud_loss_rate"
    )
    minimum_effect: float = Field(0.2, gt=0.0, description="relative change of the primary metric worth detecting")
    ramp: tuple[RampStep, ...] = (RampStep(traffic=0.01), RampStep(traffic=0.1), RampStep(traffic=0.5))
    # Cards kept on control's policy for the experiment's whole life, launch included: the
    # long-term comparison once the treatment decides everyone else.
    holdout: float = Field(0.0, ge=0.0, lt=0.5, description="share of cards kept on control for good")
    label_maturity_days: float = Field(30.0, ge=0.0, description="a decision's labels count once this old")
    guardrails: Guardrails = Guardrails()
    sequential: SequentialTest = SequentialTest()
    costs: CostModel = CostModel()  # retrain.evaluate's: the one model selection uses too

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: tuple[Arm, ...]) -> tuple[Arm, ...]:
        names = [a.name for a in arms]
        if len(arms) < 2:
            raise ValueError("an experiment needs at least two arms")
        if names[0] != CONTROL_ARM:
            raise ValueError(f"the first arm must be named {CONTROL_ARM!r}, got {names[0]!r}")
        if len(set(names)) != len(names) or HOLDOUT_ARM in names:
            raise ValueError(f"arm names must be unique and not {HOLDOUT_ARM!r}: {names}")
        return arms

    @model_validator(mode="after")
    def _ramp_increases(self) -> Experiment:
        traffic = [s.traffic for s in self.ramp]
        if not traffic or traffic != sorted(traffic):
            raise ValueError(f"ramp: at least one step, traffic never decreasing, got {traffic}")
        return self

    @property
    def control(self) -> Arm:
        return self.arms[0]

    @property
    def treatments(self) -> tuple[Arm, ...]:
        return self.arms[1:]

    def treatment_weights(self) -> dict[str, float]:
        """Each treatment's part of the treatments' traffic (weights normalised to 1)."""
        total = sum(a.weight for a in self.treatments)
        return {a.name: a.weight / total for a in self.treatments}

    def shares_at(self, traffic: float) -> dict[str, float]:
        """Each arm's share of all cards when the treatments decide ``traffic`` of the cards outside
        the holdout (0: everyone on control, bar the holdout)."""
        live = 1.0 - self.holdout
        shares = {name: live * traffic * w for name, w in self.treatment_weights().items()}
        shares = {CONTROL_ARM: live * (1.0 - traffic), **shares}
        if self.holdout:
            shares[HOLDOUT_ARM] = self.holdout
        return shares


def load_experiment(path: Path) -> Experiment:
    """Read and validate an experiment file (YAML)."""
    return _load(path, Experiment)


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file (YAML): ``model``, ``flag``, ``block``, ``rules``. A
    relative ``rules`` path is taken from the policy file's folder."""
    policy = _load(path, Policy)
    if policy.rules is not None and not policy.rules.is_absolute():
        policy = policy.model_copy(update={"rules": (path.parent / policy.rules).resolve()})
    return policy


def _load(path: Path, kind: type[_Strict]):
    try:
        data = yaml.safe_load(Path(path).read_text())
        return kind.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ExperimentFileError(f"{path}: {problems}") from exc
    except yaml.YAMLError as exc:
        raise ExperimentFileError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ExperimentFileError(f"{path}: {exc.strerror}") from exc
