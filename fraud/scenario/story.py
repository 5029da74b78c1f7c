"""A teaching scenario: a simulated world with a drift schedule, and how the system watches it.

A story file (YAML, ``fraud/scenario/stories/NAME.yaml``) has three parts: ``title`` and
``teaches`` (printed before the run), ``simulation`` (a ``SimulationConfig``: population, fraud
rates and the drift schedule's ``changes``) and ``story`` (this module's ``StoryConfig``: when the
first model is trained, how drift and performance are watched, what triggers a retrain).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schema import DecisionThresholds
from simulator import SimulationConfig

RetrainTrigger = Literal["performance", "score_drift", "feature_drift"]


class StoryConfig(BaseModel):
    """How the run watches the world. Every field has a default a story may override."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_days: int = Field(14, gt=0, description="The first model is trained at the end of this day.")
    warmup_days: int = Field(
        7, ge=0, description="Days left out of training and drift references: 7-day windows are still filling."
    )
    label_maturity_days: float = Field(3.0, ge=0, description="Newest history a retrain leaves out (labels pending).")
    eval_window_days: float = Field(3.0, gt=0, description="Champion vs challenger slice before the maturity gap.")
    flag_threshold: float = Field(0.7, ge=0, le=1)
    block_threshold: float = Field(0.9, ge=0, le=1)
    # Drift: each watched feature and the score, each simulated day, against the serving model's
    # training reference.
    watched_features: tuple[str, ...] = Field(
        (), description="Features whose drift is alerted on; empty: every feature without a 7-day+ window."
    )
    kl_threshold: float = Field(0.1, gt=0, description="A feature (or the score) drifts above this KL (nats).")
    sustain_days: int = Field(2, gt=0, description="Consecutive days over (under) a threshold to fire (clear).")
    # Performance with delayed labels.
    performance_window_days: int = Field(7, gt=0, description="Trailing days of decisions in realised recall.")
    min_known_fraud: int = Field(10, gt=0, description="Fewer known frauds in the window: no recall figure.")
    recall_floor: float = Field(0.5, ge=0, le=1, description="Realised recall below this is a performance alert.")
    # Action.
    retrain_on: tuple[RetrainTrigger, ...] = Field(
        ("performance",), description="Alerts that request a retrain; covariate (feature) drift alone does not."
    )
    min_days_between_retrains: int = Field(5, ge=1, description="Rate limit on retrain requests.")
    retrain_every_days: int | None = Field(
        None, gt=0, description="Scheduled retrains (production: monthly), besides those the alerts ask for."
    )
    # Review: flagged payments, highest score x amount first, up to capacity per day; each verdict
    # (the simulator's ground truth) is known a few hours after the payment.
    review_capacity_per_day: int = Field(150, ge=0)
    review_delay_hours: float = Field(4.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> StoryConfig:
        if self.warmup_days >= self.train_days:
            raise ValueError(f"warmup_days ({self.warmup_days}) must be before train_days ({self.train_days})")
        DecisionThresholds(flag=self.flag_threshold, block=self.block_threshold)  # raises if inverted
        return self

    @property
    def thresholds(self) -> DecisionThresholds:
        return DecisionThresholds(flag=self.flag_threshold, block=self.block_threshold)


class Story(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    teaches: str
    simulation: SimulationConfig
    story: StoryConfig = StoryConfig()

    @model_validator(mode="after")
    def _room_to_watch(self) -> Story:
        if self.story.train_days >= self.simulation.days:
            raise ValueError(f"train_days ({self.story.train_days}) must be before days ({self.simulation.days})")
        return self


def story_names() -> list[str]:
    """The stories shipped with the package."""
    folder = resources.files("fraud.scenario").joinpath("stories")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_story(name_or_path: str | Path, **simulation_overrides: object) -> Story:
    """A shipped story by name (``concept-drift``) or a story file by path; ``simulation_overrides``
    (e.g. ``n_customers``, ``days``, ``seed``) replace the file's simulation settings."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        text, name = path.read_text(), path.stem
    elif str(name_or_path) in story_names():
        name = str(name_or_path)
        text = resources.files("fraud.scenario").joinpath("stories", f"{name}.yaml").read_text()
    else:
        raise ValueError(f"no story {name_or_path!r}: shipped stories are {story_names()}, or give a .yaml path")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{name_or_path}: expected a mapping with title, teaches, simulation, story")
    overrides = {k: v for k, v in simulation_overrides.items() if v is not None}
    data["simulation"] = {**(data.get("simulation") or {}), **overrides}
    return Story.model_validate({"name": name, **data})
