"""Fraud patterns. Each draws one day's incidents as columns of payments, from its signature.

A pattern's defaults are in ``DEFAULT_SIGNATURES``; a concept-drift change overrides some fields
while it is active (``simulator.drift``). The docstring of each pattern says what it looks like
and which features should catch it. Rates are in ``ScenarioRates`` (incidents per simulated day
per 10,000 customers; 0 switches a pattern off).

Every incident (one card's fraud spree) is reported as a whole, or not at all: its chargebacks
arrive together, a lognormal delay after its last payment (``_chargebacks``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from simulator.drift import Signature
from simulator.population import ABROAD, HOURLY_RHYTHM, LOCAL, PREFERENCE
from simulator.rows import DAY_MS, NOT_REPORTED, Rows
from simulator.schedule import SCENARIO_NAMES
from simulator.world import FRAUD, NEVER, NEW_PATTERN, World

SCENARIO_CODE = {name: k + 1 for k, name in enumerate(SCENARIO_NAMES)}  # 0 is legitimate

DEFAULT_SIGNATURES: dict[str, Signature] = {
    "card_testing": Signature(
        amount_median_minor=150,
        amount_sigma=0.4,
        abroad=False,
        new_device=True,
        categories=("digital_goods",),
        payments=(5, 30),
        gap_s=(2.0, 45.0),
    ),
    "account_takeover": Signature(
        amount_median_minor=60_000,
        amount_sigma=0.5,
        abroad=True,
        new_device=True,
        categories=("electronics", "jewelry", "travel"),
        payments=(2, 6),
        gap_s=(60.0, 2400.0),
    ),
    "compromised_merchant": Signature(
        amount_median_minor=25_000,
        amount_sigma=0.6,
        abroad=True,
        new_device=True,
        categories=("electronics", "fashion", "digital_goods", "travel"),
        payments=(1, 3),
        gap_s=(120.0, 7200.0),
    ),
    "bust_out": Signature(
        amount_median_minor=90_000,
        amount_sigma=0.5,
        abroad=False,
        new_device=False,
        categories=("electronics", "jewelry", "travel", "fashion"),
        payments=(6, 15),
        gap_s=(1800.0, 14400.0),
    ),
    "friendly_fraud": Signature(
        amount_median_minor=None,
        amount_sigma=None,
        abroad=False,
        new_device=False,
        categories=None,
        payments=(1, 1),
        gap_s=(1.0, 1.0),
    ),
}

CASH_OUT_SHARE = 0.4  # card testing: cards that worked are cashed out with one large purchase
BREACH_VICTIM_SHARE = 0.3  # compromised merchant: share of the cards used there that day that are defrauded
BREACH_MAX_VICTIMS = 40
FRIENDLY_UPLIFT = 2.0  # friendly fraud: a purchase about twice the customer's usual for the category
FRIENDLY_ECOMMERCE_SHARE = 0.8
# Chargebacks: scenario -> (delay multiplier, always reported). A friendly-fraud dispute comes after
# the statement; a bust-out is found when the account goes delinquent, and both are always found.
REPORTING = {"friendly_fraud": (4.0, True), "bust_out": (5.0, True)}
MIN_DELAY_MS = 3_600_000
MAX_AMOUNT = 10**11


def card_testing(world: World, day: int, n: int, sig: Signature, rng: np.random.Generator, legit: Rows) -> Rows:
    """A stolen card is tried with a burst of tiny online payments (default 5-30, a few seconds to
    a minute apart, about 1.50 EUR) at one risky digital-goods merchant, from a fraudster's device;
    40% of the cards that work are cashed out with one large electronics purchase half an hour later.

    Caught by: card velocity (payments in 10 minutes), tiny amounts, a device new to the customer,
    the merchant's risk and fraud rate. The merchant is domestic: the country does not give it away.
    """
    pop = world.pop
    customer = rng.integers(pop.n_customers, size=n)
    card = pop.own_card(customer, rng.random(n))
    incident, ts = _sprees(rng, sig, world.day_start_ms(day) + rng.integers(0, DAY_MS, size=n))
    category = _categories(world, day, rng, sig, "card_testing", customer)
    merchant = pop.pools.pick(category, pop.home_country[customer], _where(sig), rng.random(n), by_risk=True)
    device = _devices(world, day, rng, sig, customer)
    amount = _amounts(world, rng, sig, customer[incident], category[incident])
    online = np.ones(len(ts), dtype=bool)
    tests = Rows.build(ts, customer[incident], card[incident], merchant[incident], amount, device[incident], online)
    cashed, cash_out = _cash_out(world, rng, sig, tests, incident, customer, card, device)
    rows = Rows.concat([tests, cash_out])
    return _finish(world, rng, rows, np.concatenate([incident, cashed]), n, "card_testing")


def account_takeover(world: World, day: int, n: int, sig: Signature, rng: np.random.Generator, legit: Rows) -> Rows:
    """A fraudster logs into the customer's account from a device the customer never used, in
    another country, and makes a few high-value purchases (default 2-6, about 600 EUR each at
    electronics, jewelry and travel merchants abroad) within an hour or two.

    Caught by: a new device for the customer, a merchant country unlike the card's, amounts far
    above the customer's own, the hour of day.
    """
    pop = world.pop
    customer = rng.integers(pop.n_customers, size=n)
    card = pop.own_card(customer, rng.random(n))
    incident, ts = _sprees(rng, sig, world.day_start_ms(day) + rng.integers(0, DAY_MS, size=n))
    return _spree_rows(world, day, rng, sig, "account_takeover", customer, card, incident, ts, online_share=1.0)


def compromised_merchant(world: World, day: int, n: int, sig: Signature, rng: np.random.Generator, legit: Rows) -> Rows:
    """A merchant is breached (risky merchants more likely, among those with at least 5 payments
    that day); 30% of the cards used there that day (at most 40) are defrauded one to five days
    later: 1-3 online purchases abroad, about 250 EUR, from a fraudster's device. The payments at
    the breached merchant itself are genuine.

    Caught by: a new device and a foreign merchant for the card; across cards, a common point of
    purchase (the breached merchant) a few days before - which per-payment features cannot see.
    """
    pop = world.pop
    counts = np.bincount(legit.merchant, minlength=pop.n_merchants)
    eligible = np.flatnonzero(counts >= 5)
    if n == 0 or len(eligible) == 0:
        return Rows.empty()
    risk = pop.merchant_risk[eligible]
    breached = rng.choice(eligible, size=min(n, len(eligible)), replace=False, p=risk / risk.sum())
    customer, card = _victims(legit, breached, pop.n_cards, rng)
    v = len(card)
    start = world.day_start_ms(day) + (rng.uniform(1.0, 5.0, size=v) * DAY_MS).astype(np.int64)
    incident, ts = _sprees(rng, sig, start)
    return _spree_rows(world, day, rng, sig, "compromised_merchant", customer, card, incident, ts, online_share=1.0)


def bust_out(world: World, day: int, n: int, sig: Signature, rng: np.random.Generator, legit: Rows) -> Rows:
    """A customer in good standing (about a week of history) maxes the card out: many high-amount
    purchases (default 6-15, about 900 EUR each, 30 minutes to 4 hours apart, so over one to three
    days) at several domestic merchants, from their own device - then never pays again.

    Caught by: amount and spend velocity against the customer's own history (24-hour sums and
    counts, amount z-score). Not by device or country: both are the customer's own.
    """
    pop = world.pop
    eligible = world.customers_with_history(day, payments=6)
    eligible = eligible[world.gone_from[eligible] == NEVER]  # a card is busted out once
    customer = rng.choice(eligible, size=min(n, len(eligible)), replace=False)
    m = len(customer)
    card = pop.own_card(customer, rng.random(m))
    waking = rng.integers(8 * 3_600_000, 20 * 3_600_000, size=m)
    incident, ts = _sprees(rng, sig, world.day_start_ms(day) + waking)
    rows = _spree_rows(world, day, rng, sig, "bust_out", customer, card, incident, ts, online_share=None)
    world.gone_from[customer] = day + 1  # the account goes quiet: no more ordinary spending
    return rows


def friendly_fraud(world: World, day: int, n: int, sig: Signature, rng: np.random.Generator, legit: Rows) -> Rows:
    """The cardholder's own, genuine-looking purchase - their card and device, their home country,
    one of their favourite categories, at the hour they usually shop, about twice their usual amount,
    mostly online - that they later dispute ("not received", "not me"). Ground truth: fraud.

    Caught by: almost nothing at decision time, by design; a slightly high amount for the customer,
    and merchants or categories with many disputes. It is the floor of what a model can catch, and
    its chargebacks arrive later than others (after the statement).
    """
    pop = world.pop
    eligible = world.customers_with_history(day, payments=2)
    customer = rng.choice(eligible, size=n if len(eligible) else 0)
    m = len(customer)
    card = pop.own_card(customer, rng.random(m))
    hour = (rng.choice(24, size=m, p=HOURLY_RHYTHM) + pop.rhythm_shift[customer]) % 24
    start = world.day_start_ms(day) + hour * 3_600_000 + rng.integers(0, 3_600_000, size=m)
    incident, ts = _sprees(rng, sig, start)
    return _spree_rows(
        world, day, rng, sig, "friendly_fraud", customer, card, incident, ts, online_share=FRIENDLY_ECOMMERCE_SHARE
    )


Pattern = Callable[[World, int, int, Signature, np.random.Generator, Rows], Rows]
PATTERNS: dict[str, Pattern] = {
    "card_testing": card_testing,
    "account_takeover": account_takeover,
    "compromised_merchant": compromised_merchant,
    "bust_out": bust_out,
    "friendly_fraud": friendly_fraud,
}


def fraud_of_the_day(world: World, day: int, legit: Rows) -> list[Rows]:
    """Every pattern's incidents starting on ``day``: at its base rate with its signature of the day
    (concept changes applied), plus those of any active new-pattern change, each tagged."""
    parts = []
    for name in SCENARIO_NAMES:
        signature, bits = world.schedule.signature(name, day, DEFAULT_SIGNATURES[name])
        code = SCENARIO_CODE[name]
        rng = world.rng(FRAUD, day, code)
        n = rng.poisson(world.per_day(getattr(world.config.scenarios, name)))
        parts.append(PATTERNS[name](world, day, n, signature, rng, legit).tagged(bits))
        for j, change in world.schedule.new_patterns(name, day):
            rng = world.rng(NEW_PATTERN, day, j)
            n = rng.poisson(world.per_day(change.rate))
            rows = PATTERNS[name](world, day, n, signature.override(change.signature), rng, legit)
            parts.append(rows.tagged(bits | 1 << j))
    return parts


def _sprees(rng: np.random.Generator, sig: Signature, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Incident number and time (ms) of every payment: each incident makes ``payments`` payments
    from its ``start``, ``gap_s`` apart. Incident numbers are ascending."""
    low, high = sig.payments
    count = rng.integers(low, high + 1, size=len(start))
    incident = np.repeat(np.arange(len(start)), count)
    first = np.cumsum(count) - count
    gaps = rng.uniform(*sig.gap_s, size=len(incident)) * 1000
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first], count)
    return incident, start[incident] + elapsed.astype(np.int64)


def _spree_rows(
    world: World,
    day: int,
    rng: np.random.Generator,
    sig: Signature,
    scenario: str,
    customer: np.ndarray,
    card: np.ndarray,
    incident: np.ndarray,
    ts: np.ndarray,
    online_share: float | None,
) -> Rows:
    """Payments of incidents on one card each, at merchants of the signature's categories; online
    with ``online_share`` (None: the category's own share, as the customer would)."""
    pop = world.pop
    who = customer[incident]
    category = _categories(world, day, rng, sig, scenario, who)
    merchant = pop.pools.pick(category, pop.home_country[who], _where(sig), rng.random(len(ts)))
    amount = _amounts(world, rng, sig, who, category)
    share = pop.category_ecommerce[category] if online_share is None else online_share
    online = rng.random(len(ts)) < share
    device = _devices(world, day, rng, sig, customer)[incident]
    rows = Rows.build(ts, who, card[incident], merchant, amount, device, online)
    return _finish(world, rng, rows, incident, len(customer), scenario)


def _cash_out(
    world: World,
    rng: np.random.Generator,
    sig: Signature,
    tests: Rows,
    incident: np.ndarray,
    customer: np.ndarray,
    card: np.ndarray,
    device: np.ndarray,
) -> tuple[np.ndarray, Rows]:
    """The incidents whose card worked, and their one large electronics purchase each, 5-30
    minutes after the last test payment."""
    pop = world.pop
    cashed = np.flatnonzero(rng.random(len(customer)) < CASH_OUT_SHARE)
    last = np.searchsorted(incident, cashed, side="right") - 1
    ts = tests.ts[last] + rng.integers(300_000, 1_800_000, size=len(cashed))
    electronics = np.full(len(cashed), pop.category_index("electronics"))
    merchant = pop.pools.pick(electronics, pop.home_country[customer[cashed]], _where(sig), rng.random(len(cashed)))
    amount = rng.integers(30_000, 150_001, size=len(cashed))
    online = np.ones(len(cashed), dtype=bool)
    return cashed, Rows.build(ts, customer[cashed], card[cashed], merchant, amount, device[cashed], online)


def _finish(world: World, rng: np.random.Generator, rows: Rows, incident: np.ndarray, n: int, scenario: str) -> Rows:
    """Set the scenario code and each payment's chargeback time (per incident)."""
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, incident, rows.ts)
    known_at = _chargebacks(world, rng, last, scenario)[incident]
    return replace(rows, scenario=np.full(len(rows), SCENARIO_CODE[scenario], np.int8), known_at=known_at)


def _chargebacks(world: World, rng: np.random.Generator, last_ts: np.ndarray, scenario: str) -> np.ndarray:
    """When each incident's chargebacks arrive (ms), or NOT_REPORTED: a lognormal delay after its
    last payment, capped; a share of incidents is never reported (except first-party fraud)."""
    config = world.config
    factor, always = REPORTING.get(scenario, (1.0, False))
    n = len(last_ts)
    reported = rng.random(n) >= (0.0 if always else config.unreported_fraud_fraction)
    median = config.label_delay_median_days * factor
    days = np.minimum(rng.lognormal(np.log(median), config.label_delay_sigma, size=n), config.label_delay_max_days)
    delay = np.maximum(MIN_DELAY_MS, (days * DAY_MS).astype(np.int64))
    return np.where(reported, last_ts + delay, NOT_REPORTED)


def _victims(
    legit: Rows, breached: np.ndarray, n_cards: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(customer, card) of the cards to defraud: a share of the distinct cards used at each
    breached merchant that day, at most BREACH_MAX_VICTIMS per merchant."""
    at = np.flatnonzero(np.isin(legit.merchant, breached))
    pair, first = np.unique(legit.merchant[at] * n_cards + legit.card[at], return_index=True)
    merchant, customer, card = pair // n_cards, legit.customer[at][first], pair % n_cards
    shuffle = np.lexsort((rng.random(len(pair)), merchant))
    merchant, customer, card = merchant[shuffle], customer[shuffle], card[shuffle]
    rank = np.arange(len(merchant)) - np.searchsorted(merchant, merchant)
    chosen = (rng.random(len(merchant)) < BREACH_VICTIM_SHARE) & (rank < BREACH_MAX_VICTIMS)
    return customer[chosen], card[chosen]


def _categories(
    world: World, day: int, rng: np.random.Generator, sig: Signature, scenario: str, customer: np.ndarray
) -> np.ndarray:
    """A category per payment: one of the signature's that has merchants that day (else the
    pattern's defaults), or, without categories, one of the customer's favourites."""
    pop = world.pop
    names = sig.categories or DEFAULT_SIGNATURES[scenario].categories
    if names is None:
        return pop.preferred[customer, rng.choice(3, size=len(customer), p=PREFERENCE)]
    open_now = world.schedule.open_categories(day)
    names = [c for c in names if c in open_now] or list(DEFAULT_SIGNATURES[scenario].categories or ())
    index = np.array([pop.category_index(c) for c in names])
    return index[rng.integers(len(index), size=len(customer))]


def _amounts(
    world: World, rng: np.random.Generator, sig: Signature, customer: np.ndarray, category: np.ndarray
) -> np.ndarray:
    """Lognormal around the signature's median (or the customer's own level), cut at 3 sigma."""
    pop = world.pop
    if sig.amount_median_minor is None:
        mu = pop.amount_mu[customer] + pop.category_amount_shift[category] + np.log(FRIENDLY_UPLIFT)
    else:
        mu = np.full(len(customer), np.log(sig.amount_median_minor))
    sigma = pop.amount_sigma[customer] if sig.amount_sigma is None else sig.amount_sigma
    z = np.clip(rng.standard_normal(len(customer)), -3, 3)
    return np.clip(np.round(np.exp(mu + sigma * z)), 50, MAX_AMOUNT).astype(np.int64)


def _devices(world: World, day: int, rng: np.random.Generator, sig: Signature, customer: np.ndarray) -> np.ndarray:
    """One device per incident: a fraudster's (numbered for every incident, used or not, so that
    other patterns' device ids do not depend on this signature) or the customer's own."""
    fraudster = world.new_fraudster_devices(len(customer))
    own, _ = world.current_device(customer, rng.random(len(customer)), day)
    return fraudster if sig.new_device else own


def _where(sig: Signature) -> int:
    return ABROAD if sig.abroad else LOCAL


__all__ = ["DEFAULT_SIGNATURES", "PATTERNS", "SCENARIO_CODE", "fraud_of_the_day"]
