"""The drift schedule: named changes to the simulated world, each starting on a simulated day.

A scenario file (YAML) lists them under ``changes:`` beside the other simulation settings::

    days: 42
    n_customers: 3000
    changes:
      - name: holiday-surge          # covariate drift: customers change, fraud does not
        kind: covariate
        start_day: 24
        end_day: 31                  # exclusive; omit for "until the end"
        amount_factor: 1.5
        volume_factor: 1.3
        category_boost: {electronics: 0.15, travel: 0.05}
      - name: ato-goes-native        # concept drift: a fraud pattern changes its signature
        kind: concept
        start_day: 21
        scenario: account_takeover
        signature: {abroad: false, new_device: false, amount_median_minor: 9000}
      - name: bust-out-wave          # a fraud pattern the model has never seen
        kind: new_pattern
        start_day: 21
        scenario: bust_out
        rate: 6.0

Every change is named, and the ground truth of each transaction lists the changes that touched it
(``GroundTruth.changes``), so an evaluation can tell "the model missed the new pattern" from "the
model got worse at the old ones".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ScenarioName = Literal["card_testing", "account_takeover", "compromised_merchant", "bust_out", "friendly_fraud"]
SCENARIO_NAMES: tuple[str, ...] = ScenarioName.__args__  # type: ignore[attr-defined]
# Category names end up verbatim in JSON and Parquet files: plain lower-case words only.
CATEGORY_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def _check_category_names(names: Iterable[str], where: str) -> None:
    bad = [n for n in names if not CATEGORY_NAME.match(n)]
    if bad:
        raise ValueError(f"{where}: category names must be lower-case words (a-z, 0-9, _), got {bad}")


class FraudSignature(BaseModel):
    """What a fraud pattern looks like. Every field left unset keeps the pattern's own default.

    A concept-drift change overrides some of these for one pattern from its start day on, so that
    the features which separated the old signature (a new device, a foreign merchant, a large
    amount) stop separating the new one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount_median_minor: int | None = Field(None, gt=0, description="Median amount of one fraudulent payment.")
    amount_sigma: float | None = Field(None, ge=0, description="Spread of the amount (lognormal sigma).")
    abroad: bool | None = Field(None, description="Merchants outside the cardholder's home country.")
    new_device: bool | None = Field(None, description="A device the customer never used; else one of theirs.")
    categories: tuple[str, ...] | None = Field(None, min_length=1, description="Merchant categories targeted.")
    payments: tuple[int, int] | None = Field(None, description="Payments per incident, inclusive range.")
    gap_s: tuple[float, float] | None = Field(None, description="Seconds between an incident's payments, range.")

    @model_validator(mode="after")
    def _ranges(self) -> FraudSignature:
        for name in ("payments", "gap_s"):
            value = getattr(self, name)
            if value is not None and not 0 < value[0] <= value[1]:
                raise ValueError(f"{name}: expected 0 < low <= high, got {list(value)}")
        _check_category_names(self.categories or (), "categories")
        return self


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    description: str = ""
    start_day: int = Field(ge=0)
    end_day: int | None = Field(None, gt=0, description="First day no longer affected; None: to the end.")

    @model_validator(mode="after")
    def _order(self) -> _Change:
        if self.end_day is not None and self.end_day <= self.start_day:
            raise ValueError(f"{self.name}: end_day {self.end_day} must be after start_day {self.start_day}")
        return self

    def active(self, day: int) -> bool:
        return self.start_day <= day and (self.end_day is None or day < self.end_day)


class CovariateChange(_Change):
    """Customers change how they pay; fraud does not. Drift alerts fire, the model stays right."""

    kind: Literal["covariate"] = "covariate"
    amount_factor: float = Field(1.0, gt=0, description="Legitimate amounts multiplied by this.")
    volume_factor: float = Field(1.0, gt=0, description="Legitimate payments per day multiplied by this.")
    category_boost: dict[str, float] = Field(
        default_factory=dict,
        description="Share of legitimate payments moved into each category; a name the model does not "
        "know is a new merchant category (its merchants are created on the start day).",
    )
    new_device_share: float = Field(
        0.0, ge=0, le=1, description="Share of customers who switch to a new device on the start day (a phone launch)."
    )
    ecommerce_share: float | None = Field(None, ge=0, le=1, description="Share of payments made online, if set.")

    @model_validator(mode="after")
    def _boost(self) -> CovariateChange:
        if sum(self.category_boost.values()) >= 1 or min(self.category_boost.values(), default=0) < 0:
            raise ValueError(f"{self.name}: category_boost shares must be >= 0 and sum to less than 1")
        _check_category_names(self.category_boost, f"{self.name}: category_boost")
        return self


class ConceptChange(_Change):
    """A fraud pattern changes its signature: old features stop separating it."""

    kind: Literal["concept"] = "concept"
    scenario: ScenarioName
    signature: FraudSignature


class NewPatternChange(_Change):
    """A fraud pattern starts (or surges) on the start day at ``rate``."""

    kind: Literal["new_pattern"] = "new_pattern"
    scenario: ScenarioName
    rate: float = Field(gt=0, description="Incidents per simulated day per 10,000 customers while active.")
    signature: FraudSignature = FraudSignature()


Change = Annotated[CovariateChange | ConceptChange | NewPatternChange, Field(discriminator="kind")]


def check_unique_names(changes: tuple[Change, ...]) -> None:
    names = [c.name for c in changes]
    if len(names) != len(set(names)):
        raise ValueError(f"changes: names must be unique, got {names}")


def check_signature_categories(changes: tuple[Change, ...], known: Iterable[str]) -> None:
    """A signature may only target ``known`` categories or one a covariate change introduces."""
    known = set(known) | {name for c in changes if isinstance(c, CovariateChange) for name in c.category_boost}
    for c in changes:
        targeted = c.signature.categories if isinstance(c, ConceptChange | NewPatternChange) else None
        unknown = sorted(set(targeted or ()) - known)
        if unknown:
            raise ValueError(
                f"{c.name}: signature categories {unknown} are neither merchant categories "
                f"({', '.join(sorted(known))}) nor introduced by a covariate change's category_boost"
            )


__all__ = [
    "SCENARIO_NAMES",
    "Change",
    "ConceptChange",
    "CovariateChange",
    "FraudSignature",
    "NewPatternChange",
    "ScenarioName",
    "check_signature_categories",
    "check_unique_names",
]
