"""Settings of a simulation run. Every knob has a default that gives a small, realistic run."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ScenarioRates(BaseModel):
    """How often each fraud scenario starts: events per simulated day per 10,000 customers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    card_testing: float = Field(6.0, ge=0, description="A stolen card tested with bursts of tiny payments.")
    account_takeover: float = Field(8.0, ge=0, description="New device, foreign country, high amounts.")
    compromised_merchant: float = Field(5.0, ge=0, description="A breached merchant's cards defrauded later.")


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
    label_delay_median_days: float = Field(2.0, gt=0)
    label_delay_sigma: float = Field(0.8, ge=0)
    label_delay_max_days: float = Field(30.0, gt=0)
    unreported_fraud_fraction: float = Field(0.1, ge=0, le=1)
    # Covariate drift (e.g. a holiday surge) from this day on: larger amounts, more electronics/travel.
    drift_start_day: int | None = Field(None, ge=0)
    drift_amount_factor: float = Field(1.6, gt=0)

    @model_validator(mode="after")
    def _aware_start(self) -> SimulationConfig:
        if self.start.tzinfo is None:
            raise ValueError("start: must be timezone-aware (UTC)")
        return self

    @property
    def merchants(self) -> int:
        return self.n_merchants or max(50, self.n_customers // 10)
