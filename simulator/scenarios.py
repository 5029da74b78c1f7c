"""Fraud scenarios. Each returns rows of fraudulent payments tagged with the scenario's name.

- card_testing: a stolen card is tried with a burst of tiny online payments at digital-goods
  merchants from a fraudster's device, sometimes followed by one large purchase.
- account_takeover: a never-seen device in a foreign country makes a few high-value purchases
  (electronics, jewelry, travel) within an hour or two.
- compromised_merchant: a merchant is breached; some cards used there that day are defrauded
  abroad one to five days later. The payments at the merchant itself are genuine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from simulator.population import CATEGORIES, COUNTRIES, Population

DAY = 86400.0


@dataclass(frozen=True)
class Row:
    """One payment before it becomes a Transaction (ids are assigned after sorting by time)."""

    ts: float
    customer: int
    card: str
    merchant: int
    amount_minor: int
    device: str
    ecommerce: bool
    scenario: str | None = None


class _Devices:
    """Fraudsters' devices: ids never used by any customer."""

    def __init__(self) -> None:
        self.n = 0

    def new(self) -> str:
        self.n += 1
        return f"dev-x-{self.n:06d}"


def _events(rate_per_10k: float, n_customers: int, days: int, rng: np.random.Generator) -> Iterator[int]:
    """The day of each scenario event."""
    for day in range(days):
        for _ in range(rng.poisson(rate_per_10k * n_customers / 10_000)):
            yield day


def _merchant_in(pop: Population, category: str, rng: np.random.Generator, not_country: int | None = None) -> int:
    c = CATEGORIES.index(category)
    candidates = pop.merchants_by_category[c]
    if not_country is not None:
        abroad = candidates[pop.merchant_country[candidates] != not_country]
        candidates = abroad if len(abroad) else candidates
    return int(rng.choice(candidates))


def card_testing(
    pop: Population, rate: float, days: int, t0: float, rng: np.random.Generator, devices: _Devices
) -> list[Row]:
    rows = []
    for day in _events(rate, pop.n_customers, days, rng):
        cust = int(rng.integers(pop.n_customers))
        card = str(rng.choice(pop.cards[cust]))
        device = devices.new()
        ts = t0 + day * DAY + rng.uniform(0, DAY)
        for _ in range(int(rng.integers(5, 31))):
            merchant = _merchant_in(pop, "digital_goods", rng)
            rows.append(Row(ts, cust, card, merchant, int(rng.integers(50, 301)), device, True, "card_testing"))
            ts += rng.exponential(20.0) + 1.0
        if rng.random() < 0.4:  # the card works: cash it out
            merchant = _merchant_in(pop, "electronics", rng)
            amount = int(rng.uniform(30_000, 150_000))
            rows.append(Row(ts + rng.uniform(300, 1800), cust, card, merchant, amount, device, True, "card_testing"))
    return rows


def account_takeover(
    pop: Population, rate: float, days: int, t0: float, rng: np.random.Generator, devices: _Devices
) -> list[Row]:
    rows = []
    for day in _events(rate, pop.n_customers, days, rng):
        cust = int(rng.integers(pop.n_customers))
        card = str(rng.choice(pop.cards[cust]))
        device = devices.new()
        home = int(pop.home_country[cust])
        ts = t0 + day * DAY + rng.uniform(0, DAY)
        for _ in range(int(rng.integers(2, 7))):
            category = str(rng.choice(["electronics", "jewelry", "travel"]))
            merchant = _merchant_in(pop, category, rng, not_country=home)
            amount = int(np.clip(rng.lognormal(np.log(60_000), 0.5), 10_000, 400_000))
            rows.append(Row(ts, cust, card, merchant, amount, device, True, "account_takeover"))
            ts += rng.uniform(60, 2400)
    return rows


def compromised_merchant(
    pop: Population,
    legit: Sequence[Row],
    rate: float,
    days: int,
    t0: float,
    rng: np.random.Generator,
    devices: _Devices,
) -> list[Row]:
    by_merchant_day: dict[tuple[int, int], list[Row]] = {}
    for row in legit:
        by_merchant_day.setdefault((row.merchant, int((row.ts - t0) // DAY)), []).append(row)
    rows = []
    for day in _events(rate, pop.n_customers, days, rng):
        candidates = [k for k in by_merchant_day if k[1] == day and len(by_merchant_day[k]) >= 5]
        if not candidates:
            continue
        breached = by_merchant_day[candidates[int(rng.integers(len(candidates)))]]
        victims = {r.card: r.customer for r in breached if rng.random() < 0.3}
        for card, cust in victims.items():
            ts = t0 + (day + rng.uniform(1, 5)) * DAY
            if ts >= t0 + days * DAY:
                continue
            device = devices.new()
            home = int(pop.home_country[cust])
            for _ in range(int(rng.integers(1, 4))):
                category = str(rng.choice(["electronics", "fashion", "digital_goods", "travel"]))
                merchant = _merchant_in(pop, category, rng, not_country=home)
                amount = int(np.clip(rng.lognormal(np.log(25_000), 0.6), 2_000, 300_000))
                rows.append(Row(ts, cust, card, merchant, amount, device, True, "compromised_merchant"))
                ts += rng.uniform(120, 7200)
    return rows


__all__ = ["COUNTRIES", "Row", "account_takeover", "card_testing", "compromised_merchant"]
