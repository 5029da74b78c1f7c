"""Who pays whom: customers with habits, their cards and devices, and merchants."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.config import SimulationConfig
from streaming.features import MERCHANT_CATEGORIES

COUNTRIES = ("DE", "FR", "NL", "AT", "PL", "ES", "IT", "BE", "GB", "US")
FOREIGN_WEIGHTS = np.array([0.0, 0.2, 0.15, 0.12, 0.1, 0.12, 0.12, 0.08, 0.06, 0.05])

CATEGORIES = MERCHANT_CATEGORIES
CATEGORY_WEIGHTS = np.array([0.22, 0.1, 0.16, 0.06, 0.04, 0.08, 0.12, 0.08, 0.1, 0.04])
# Typical amount of a category relative to the customer's own level (log scale offsets).
CATEGORY_AMOUNT_SHIFT = np.log(np.array([1.0, 1.4, 0.9, 4.0, 6.0, 0.4, 1.8, 0.6, 1.0, 5.0]))
ECOMMERCE_SHARE = np.array([0.1, 0.0, 0.15, 0.6, 0.8, 1.0, 0.5, 0.2, 0.4, 0.3])

# Share of a day's payments in each UTC hour: quiet nights, a lunch bump, an evening peak.
HOURLY_RHYTHM = np.array(
    [
        0.4,
        0.2,
        0.1,
        0.1,
        0.1,
        0.2,
        0.6,
        1.2,
        2.0,
        2.6,
        3.0,
        3.4,
        4.0,
        3.8,
        3.4,
        3.3,
        3.6,
        4.2,
        4.6,
        4.4,
        3.6,
        2.6,
        1.6,
        0.9,
    ]
)
HOURLY_RHYTHM = HOURLY_RHYTHM / HOURLY_RHYTHM.sum()


@dataclass(frozen=True)
class Population:
    home_country: np.ndarray  # per customer: index into COUNTRIES
    amount_mu: np.ndarray  # per customer: log of a typical payment in cents
    amount_sigma: np.ndarray
    activity: np.ndarray  # per customer: mean payments per day
    preferred: np.ndarray  # per customer: 3 category indices, most preferred first
    cards: list[list[str]]  # per customer
    devices: list[list[str]]  # per customer
    merchant_category: np.ndarray  # per merchant
    merchant_country: np.ndarray  # per merchant
    merchants_by_category_country: dict[tuple[int, int], np.ndarray]
    merchants_by_category: dict[int, np.ndarray]

    @property
    def n_customers(self) -> int:
        return len(self.home_country)


def customer_id(i: int) -> str:
    return f"cust-{i:06d}"


def merchant_id(i: int) -> str:
    return f"merch-{i:04d}"


def build_population(config: SimulationConfig, rng: np.random.Generator) -> Population:
    n = config.n_customers
    home_idx = COUNTRIES.index(config.home_market) if config.home_market in COUNTRIES else 0
    home = np.where(rng.random(n) < 0.85, home_idx, rng.choice(len(COUNTRIES), size=n, p=_foreign(home_idx)))
    preferred = np.stack([rng.choice(len(CATEGORIES), size=3, replace=False, p=CATEGORY_WEIGHTS) for _ in range(n)])
    card_counts = 1 + (rng.random(n) < 0.3)
    device_counts = 1 + (rng.random(n) < 0.4)
    cards, devices, next_card, next_device = [], [], 0, 0
    for i in range(n):
        cards.append([f"card-{next_card + k:06d}" for k in range(card_counts[i])])
        devices.append([f"dev-{next_device + k:07d}" for k in range(device_counts[i])])
        next_card += card_counts[i]
        next_device += device_counts[i]

    m = config.merchants
    m_category = rng.choice(len(CATEGORIES), size=m, p=CATEGORY_WEIGHTS)
    m_category[: len(CATEGORIES)] = np.arange(len(CATEGORIES))  # every category has a merchant
    m_country = np.where(rng.random(m) < 0.75, home_idx, rng.choice(len(COUNTRIES), size=m, p=_foreign(home_idx)))
    by_cc: dict[tuple[int, int], np.ndarray] = {}
    for j in range(m):
        by_cc.setdefault((int(m_category[j]), int(m_country[j])), []).append(j)
    return Population(
        home_country=home,
        amount_mu=rng.normal(np.log(3500), 0.4, size=n),
        amount_sigma=rng.uniform(0.5, 0.9, size=n),
        activity=rng.gamma(2.0, config.txns_per_customer_day / 2.0, size=n),
        preferred=preferred,
        cards=cards,
        devices=devices,
        merchant_category=m_category,
        merchant_country=m_country,
        merchants_by_category_country={k: np.array(v) for k, v in by_cc.items()},
        merchants_by_category={c: np.flatnonzero(m_category == c) for c in range(len(CATEGORIES))},
    )


def _foreign(home_idx: int) -> np.ndarray:
    weights = FOREIGN_WEIGHTS.copy()
    weights[0] = 0.05  # the default home market's slot, used when home is elsewhere
    weights[home_idx] = 0.0
    return weights / weights.sum()
