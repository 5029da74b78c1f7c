"""Ordinary spending: one simulated day of legitimate payments, reshaped by active covariate changes.

A day is drawn in two steps. First the random numbers of every payment (who, when, favourite
category, amount noise, and uniforms for channel, card, device and merchant) from the day's own
stream; then the values, after the covariate changes have had their say. A change draws from its
own stream, so the payments it does not touch are exactly those of a run without it.

What a covariate change touches (the payment's ground truth lists the change's name):
- ``volume_factor`` > 1: the extra payments it adds; < 1 drops payments (nothing left to tag);
- ``category_boost``: payments it moved into a different category;
- ``amount_factor`` != 1: every payment that day (all amounts are scaled);
- ``ecommerce_share``: payments whose channel it flipped;
- ``new_device_share``: payments of switched customers, made from their new device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from simulator.population import ANYWHERE, HOURLY_RHYTHM, LOCAL, PREFERENCE, WEEKDAY_FACTOR
from simulator.rows import Rows
from simulator.schedule import CovariateChange
from simulator.world import COVARIATE, SPENDING, World

LOCAL_SHARE = 0.92  # payments at merchants in the customer's home country; the rest anywhere
MIN_AMOUNT = 50


@dataclass(frozen=True)
class Draws:
    """A day's payments before their values are decided: one entry per payment."""

    customer: np.ndarray
    ts: np.ndarray
    category: np.ndarray
    z_amount: np.ndarray  # standard normal noise of the amount
    u: np.ndarray  # 5 x n uniforms: channel, card, device, local-or-not, merchant
    changes: np.ndarray

    def take(self, index: np.ndarray) -> Draws:
        return Draws(*(getattr(self, f.name)[..., index] for f in fields(self)))

    @classmethod
    def concat(cls, a: Draws, b: Draws) -> Draws:
        return cls(*(np.concatenate([getattr(a, f.name), getattr(b, f.name)], axis=-1) for f in fields(cls)))


def ordinary_spending(world: World, day: int) -> Rows:
    """The legitimate payments of ``day``, in no particular order."""
    pop = world.pop
    rate = pop.activity * WEEKDAY_FACTOR[world.weekday(day)] * (world.gone_from > day)
    draws = _draw(world, rate, day, world.rng(SPENDING, day))
    active = world.schedule.covariate(day)
    streams = {j: world.rng(COVARIATE, day, j) for j, _ in active}
    for j, change in active:
        draws = _volume(world, draws, rate, day, j, change, streams[j])
    for j, change in active:
        if change.category_boost:
            draws = _boost(world, draws, j, change, streams[j])
    return _values(world, draws, day, active)


def _draw(world: World, rate: np.ndarray, day: int, rng: np.random.Generator) -> Draws:
    pop = world.pop
    customer = np.repeat(np.arange(pop.n_customers), rng.poisson(rate))
    n = len(customer)
    hour = (rng.choice(24, size=n, p=HOURLY_RHYTHM) + pop.rhythm_shift[customer]) % 24
    ts = world.day_start_ms(day) + hour * 3_600_000 + rng.integers(0, 3_600_000, size=n)
    category = pop.preferred[customer, rng.choice(3, size=n, p=PREFERENCE)]
    return Draws(customer, ts, category, rng.standard_normal(n), rng.random((5, n)), np.zeros(n, dtype=np.int64))


def _volume(
    world: World, draws: Draws, rate: np.ndarray, day: int, j: int, change: CovariateChange, rng: np.random.Generator
) -> Draws:
    if change.volume_factor < 1:
        return draws.take(rng.random(len(draws.ts)) < change.volume_factor)
    if change.volume_factor > 1:
        extra = _draw(world, rate * (change.volume_factor - 1), day, rng)
        return Draws.concat(draws, replace(extra, changes=extra.changes | 1 << j))
    return draws


def _boost(world: World, draws: Draws, j: int, change: CovariateChange, rng: np.random.Generator) -> Draws:
    """Move a share of payments into the boosted categories (a new one included)."""
    targets = np.array([world.pop.category_index(name) for name in change.category_boost])
    edges = np.cumsum(list(change.category_boost.values()))
    u = rng.random(len(draws.ts))
    moved = np.flatnonzero(u < edges[-1])
    target = targets[np.searchsorted(edges, u[moved], side="right")]
    changed = moved[target != draws.category[moved]]
    category = draws.category.copy()
    category[moved] = target
    changes = draws.changes.copy()
    changes[changed] |= 1 << j
    return replace(draws, category=category, changes=changes)


def _values(world: World, draws: Draws, day: int, active: list[tuple[int, CovariateChange]]) -> Rows:
    pop = world.pop
    customer, category, changes = draws.customer, draws.category, draws.changes.copy()
    u_channel, u_card, u_device, u_local, u_merchant = draws.u
    factor = 1.0
    for j, change in active:
        if change.amount_factor != 1:
            factor *= change.amount_factor
            changes |= 1 << j
    level = pop.amount_mu[customer] + pop.category_amount_shift[category] + pop.amount_sigma[customer] * draws.z_amount
    amount = np.maximum(MIN_AMOUNT, np.round(np.exp(level) * factor)).astype(np.int64)
    ecommerce = u_channel < pop.category_ecommerce[category]
    for j, change in active:
        if change.ecommerce_share is not None:
            online = u_channel < change.ecommerce_share
            changes[online != ecommerce] |= 1 << j
            ecommerce = online
    device, switched = world.current_device(customer, u_device, day)
    for j, moved in switched:
        changes[moved] |= 1 << j
    where = np.where(u_local < LOCAL_SHARE, LOCAL, ANYWHERE)
    merchant = pop.pools.pick(category, pop.home_country[customer], where, u_merchant)
    card = pop.own_card(customer, u_card)
    return Rows.build(draws.ts, customer, card, merchant, amount, device, ecommerce, changes=changes)
