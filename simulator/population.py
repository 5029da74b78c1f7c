"""Who pays whom: customers with habits, cards and devices; merchants with a category, a country and a risk.

Everything is a numpy column indexed by customer or merchant number, so that a day of payments is
drawn with a handful of vectorised calls. Cards and devices are integer numbers (formatted to
``card-000123`` / ``dev-0000456`` only when a file is written); a customer's cards are the
consecutive numbers ``card_start[c] .. card_start[c] + card_count[c] - 1``, likewise devices.
"""

from __future__ import annotations

from collections.abc import Sequence
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
# A category the drift schedule invents (e.g. "crypto"): amounts at the customer's own level, half online.
NEW_CATEGORY_AMOUNT_SHIFT = 0.0
NEW_CATEGORY_ECOMMERCE_SHARE = 0.5
# Merchants breached or used for card testing are mostly small online shops with weak checks.
RISKY_CATEGORIES = ("digital_goods",)

# Share of a day's payments in each hour: quiet nights, a lunch bump, an evening peak.
HOURLY_RHYTHM = np.array(
    [0.4, 0.2, 0.1, 0.1, 0.1, 0.2, 0.6, 1.2, 2.0, 2.6, 3.0, 3.4, 4.0, 3.8, 3.4, 3.3, 3.6, 4.2, 4.6, 4.4, 3.6, 2.6]
    + [1.6, 0.9]
)
HOURLY_RHYTHM = HOURLY_RHYTHM / HOURLY_RHYTHM.sum()
# Each customer's rhythm is the common one shifted by a few hours: early birds (-) and night owls (+).
RHYTHM_SHIFTS = np.array([-3, -2, -1, 0, 1, 2, 3])
RHYTHM_SHIFT_WEIGHTS = np.array([0.04, 0.1, 0.16, 0.4, 0.16, 0.1, 0.04])
WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.1, 1.2, 0.8])  # Mon..Sun: Friday and Saturday shopping
PREFERENCE = np.array([0.55, 0.3, 0.15])  # how a customer splits spending over their 3 favourite categories

LOCAL, ABROAD, ANYWHERE = 0, 1, 2  # where a merchant is, relative to the cardholder's home country


@dataclass(frozen=True)
class MerchantPools:
    """Weighted merchant choice by (category, country) without a Python loop per group.

    Merchants are sorted by (category, country); each category, and each (category, country)
    within it, is a contiguous block of ``order``. A pick draws a point in the cumulative weight of
    its block and finds the merchant with a binary search.
    """

    order: np.ndarray  # merchant numbers sorted by (category, country)
    category_start: np.ndarray  # block of category c: order[category_start[c]:category_start[c + 1]]
    cell_start: np.ndarray  # block of (c, k): order[cell_start[c * K + k]:cell_start[c * K + k + 1]]
    cum_popularity: np.ndarray  # cumulative weights over ``order``, with a leading 0
    cum_risk: np.ndarray

    @classmethod
    def build(
        cls, category: np.ndarray, country: np.ndarray, popularity: np.ndarray, risk: np.ndarray, n_categories: int
    ) -> MerchantPools:
        key = category * len(COUNTRIES) + country
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        return cls(
            order=order,
            category_start=np.searchsorted(sorted_key, np.arange(n_categories + 1) * len(COUNTRIES)),
            cell_start=np.searchsorted(sorted_key, np.arange(n_categories * len(COUNTRIES) + 1)),
            cum_popularity=np.concatenate([[0.0], np.cumsum(popularity[order])]),
            cum_risk=np.concatenate([[0.0], np.cumsum(risk[order])]),
        )

    def pick(
        self,
        category: np.ndarray,
        home: np.ndarray,
        where: np.ndarray | int,
        u: np.ndarray,
        by_risk: bool = False,
    ) -> np.ndarray:
        """One merchant per row in ``category``: LOCAL (in ``home``), ABROAD (elsewhere) or ANYWHERE,
        in proportion to popularity (ordinary shopping) or risk (fraud looking for weak merchants).
        A row whose block is empty (no foreign jeweller, say) falls back to the whole category."""
        cum = self.cum_risk if by_risk else self.cum_popularity
        where = np.broadcast_to(where, category.shape)
        cat_lo, cat_hi = self.category_start[category], self.category_start[category + 1]
        cell = category * len(COUNTRIES) + home
        cell_lo, cell_hi = self.cell_start[cell], self.cell_start[cell + 1]
        w_cat = cum[cat_hi] - cum[cat_lo]
        w_cell = cum[cell_hi] - cum[cell_lo]
        local = (where == LOCAL) & (w_cell > 0)
        abroad = (where == ABROAD) & (w_cat - w_cell > 0)
        base = np.where(local, cum[cell_lo], cum[cat_lo])
        total = np.where(local, w_cell, np.where(abroad, w_cat - w_cell, w_cat))
        x = base + u * total
        x = np.where(abroad & (x >= cum[cell_lo]), x + w_cell, x)  # jump over the home block
        pos = np.searchsorted(cum, x, side="right") - 1
        return self.order[np.clip(pos, cat_lo, cat_hi - 1)]


@dataclass(frozen=True)
class Population:
    categories: tuple[str, ...]  # the model's categories, then any the drift schedule invents
    category_amount_shift: np.ndarray
    category_ecommerce: np.ndarray
    # per customer
    home_country: np.ndarray  # index into COUNTRIES
    amount_mu: np.ndarray  # log of a typical payment in minor units
    amount_sigma: np.ndarray
    activity: np.ndarray  # mean payments per day
    rhythm_shift: np.ndarray  # hours added to the common daily rhythm
    preferred: np.ndarray  # 3 category indices, most preferred first
    card_start: np.ndarray
    card_count: np.ndarray
    device_start: np.ndarray
    device_count: np.ndarray
    # per merchant
    merchant_category: np.ndarray
    merchant_country: np.ndarray
    merchant_risk: np.ndarray  # 0..1; raises the chance of being breached or used for card testing
    pools: MerchantPools

    @property
    def n_customers(self) -> int:
        return len(self.home_country)

    @property
    def n_cards(self) -> int:
        return int(self.card_start[-1] + self.card_count[-1])

    @property
    def n_devices(self) -> int:
        return int(self.device_start[-1] + self.device_count[-1])

    @property
    def n_merchants(self) -> int:
        return len(self.merchant_category)

    def category_index(self, name: str) -> int:
        return self.categories.index(name)

    def own_card(self, customer: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.card_start[customer] + (u * self.card_count[customer]).astype(np.int64)

    def own_device(self, customer: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.device_start[customer] + (u * self.device_count[customer]).astype(np.int64)


def build_population(
    config: SimulationConfig, new_categories: Sequence[tuple[str, float]] = (), seed: Sequence[int] = ()
) -> Population:
    """Customers and merchants for ``config``. ``new_categories`` are (name, share of payments) the
    drift schedule introduces; their merchants are drawn from a separate random stream, so a run
    with them has exactly the same customers and other merchants as one without."""
    rng = np.random.default_rng([*seed, 1])
    n = config.n_customers
    home_idx = COUNTRIES.index(config.home_market) if config.home_market in COUNTRIES else 0
    home = np.where(rng.random(n) < 0.85, home_idx, rng.choice(len(COUNTRIES), size=n, p=_foreign(home_idx)))
    card_count = 1 + (rng.random(n) < 0.3).astype(np.int64)
    device_count = 1 + (rng.random(n) < 0.4).astype(np.int64)
    customers = {
        "home_country": home,
        "amount_mu": rng.normal(np.log(3500), 0.4, size=n),
        "amount_sigma": rng.uniform(0.5, 0.9, size=n),
        "activity": rng.gamma(2.0, config.txns_per_customer_day / 2.0, size=n),
        "rhythm_shift": rng.choice(RHYTHM_SHIFTS, size=n, p=RHYTHM_SHIFT_WEIGHTS),
        "preferred": _favourite_categories(n, rng),
        "card_start": np.cumsum(card_count) - card_count,
        "card_count": card_count,
        "device_start": np.cumsum(device_count) - device_count,
        "device_count": device_count,
    }
    base_category = rng.choice(len(CATEGORIES), size=config.merchants, p=CATEGORY_WEIGHTS)
    at_home, abroad = _cover_every_category(base_category)
    m_category, m_country, m_risk, m_popularity = _merchants(base_category, home_idx, rng)
    m_country[at_home] = home_idx
    m_country[abroad] = rng.choice(len(COUNTRIES), size=abroad.stop - abroad.start, p=_foreign(home_idx))
    categories = CATEGORIES + tuple(name for name, _ in new_categories)
    for k, (_, share) in enumerate(new_categories):
        extra_rng = np.random.default_rng([*seed, 2, k])
        count = max(5, round(config.merchants * share))
        extra = _merchants(np.full(count, len(CATEGORIES) + k), home_idx, extra_rng)
        m_category, m_country, m_risk, m_popularity = (
            np.concatenate([a, b]) for a, b in zip((m_category, m_country, m_risk, m_popularity), extra, strict=True)
        )
    n_new = len(new_categories)
    return Population(
        categories=categories,
        category_amount_shift=np.concatenate([CATEGORY_AMOUNT_SHIFT, np.full(n_new, NEW_CATEGORY_AMOUNT_SHIFT)]),
        category_ecommerce=np.concatenate([ECOMMERCE_SHARE, np.full(n_new, NEW_CATEGORY_ECOMMERCE_SHARE)]),
        merchant_category=m_category,
        merchant_country=m_country,
        merchant_risk=m_risk,
        pools=MerchantPools.build(m_category, m_country, m_popularity, m_risk, len(categories)),
        **customers,
    )


def _cover_every_category(category: np.ndarray) -> tuple[slice, slice]:
    """Make the first merchants one per category, twice (when there are enough merchants): the
    first set is placed at home, the second abroad, so that a small population still has a foreign
    jeweller for fraud to use. Returns the two sets."""
    k = len(CATEGORIES)
    home = min(len(category), k)
    abroad = min(len(category) - home, k)
    category[:home] = np.arange(home)
    category[home : home + abroad] = np.arange(abroad)
    return slice(0, home), slice(home, home + abroad)


def _favourite_categories(n: int, rng: np.random.Generator) -> np.ndarray:
    """Three distinct categories per customer, drawn in proportion to CATEGORY_WEIGHTS (Gumbel top-k:
    the same distribution as drawing without replacement, without a loop over customers)."""
    keys = np.log(CATEGORY_WEIGHTS) + rng.gumbel(size=(n, len(CATEGORIES)))
    return np.argsort(-keys, axis=1)[:, :3]


def _merchants(
    category: np.ndarray, home_idx: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Category (given), country, risk and popularity of merchants."""
    m = len(category)
    country = np.where(rng.random(m) < 0.75, home_idx, rng.choice(len(COUNTRIES), size=m, p=_foreign(home_idx)))
    risky = np.isin(category, [CATEGORIES.index(c) for c in RISKY_CATEGORIES])
    # Most merchants are safe (mean risk 0.1); digital-goods shops much less so (mean 0.4).
    risk = np.where(risky, rng.beta(4.0, 6.0, size=m), rng.beta(1.5, 13.5, size=m))
    popularity = rng.lognormal(0.0, 1.0, size=m)  # a few big merchants take much of the spending
    return category, country, risk, popularity


def _foreign(home_idx: int) -> np.ndarray:
    weights = FOREIGN_WEIGHTS.copy()
    weights[0] = 0.05  # the default home market's slot, used when home is elsewhere
    weights[home_idx] = 0.0
    return weights / weights.sum()


def customer_id(i: int) -> str:
    return f"cust-{i:06d}"


def merchant_id(i: int) -> str:
    return f"merch-{i:04d}"
