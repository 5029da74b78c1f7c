"""Settings of a simulation run. Every knob has a default that gives a small, realistic run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simulator.schedule import Change, check_signature_categories, check_unique_names
from streaming.features import MERCHANT_CATEGORIES


class ScenarioRates(BaseModel):
    """How often each fraud scenario starts: incidents per simulated day per 10,000 customers (0: off).

    The defaults give about 0.5% fraudulent payments (simulator.patterns describes each scenario)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    card_testing: float = Field(2.5, ge=0, description="A stolen card tested with bursts of tiny payments.")
    account_takeover: float = Field(5.0, ge=0, description="New device, foreign country, high amounts.")
    compromised_merchant: float = Field(2.5, ge=0, description="A breached merchant's cards defrauded later.")
    bust_out: float = Field(1.0, ge=0, description="A customer in good standing maxes the card out, then vanishes.")
    friendly_fraud: float = Field(8.0, ge=0, description="A genuine-looking purchase the cardholder disputes.")


class SimulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 7
    days: int = Field(7, gt=0)
    n_customers: int = Field(2000, gt=0)
    n_merchants: int = Field(0, ge=0, description="0: one merchant per 10 customers (at least 50).")
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday
    txns_per_customer_day: float = Field(2.0, gt=0)
    home_market: str = Field("DE", pattern="^[A-Z]{2}$")
    scenarios: ScenarioRates = ScenarioRates()
    # Chargebacks: lognormal delay (median, spread), capped; some fraud is never reported at all.
    # Friendly fraud and bust-outs take longer and are always found (simulator.patterns.REPORTING).
    label_delay_median_days: float = Field(3.0, gt=0)
    label_delay_sigma: float = Field(1.0, ge=0)
    label_delay_max_days: float = Field(60.0, gt=0)
    unreported_fraud_fraction: float = Field(0.1, ge=0, le=1)
    # The drift schedule: named changes by simulated day (simulator.schedule).
    changes: tuple[Change, ...] = ()

    @model_validator(mode="after")
    def _aware_start(self) -> SimulationConfig:
        if self.start.tzinfo is None:
            raise ValueError("start: must be timezone-aware (UTC)")
        check_unique_names(self.changes)
        check_signature_categories(self.changes, MERCHANT_CATEGORIES)
        return self

    @property
    def merchants(self) -> int:
        return self.n_merchants or max(50, self.n_customers // 10)


def load_config(path: Path, **overrides: object) -> SimulationConfig:
    """A simulation from a scenario file (YAML): the settings above, at the top level or under
    ``simulation:`` (so a teaching scenario can keep its own settings beside them).
    ``overrides`` (e.g. ``seed``, ``days``) win over the file; the file's errors name the field."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    settings = data.get("simulation", data)
    return SimulationConfig.model_validate({**settings, **overrides})
