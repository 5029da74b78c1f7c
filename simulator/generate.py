"""Generate a simulation: ordinary spending, fraud scenarios, delayed chargebacks, ground truth."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from schema import Channel, GroundTruth, Label, LabelSource, Transaction, read_jsonl, write_jsonl
from simulator.config import SimulationConfig
from simulator.population import (
    CATEGORIES,
    CATEGORY_AMOUNT_SHIFT,
    COUNTRIES,
    ECOMMERCE_SHARE,
    HOURLY_RHYTHM,
    Population,
    build_population,
    customer_id,
    merchant_id,
)
from simulator.scenarios import DAY, Row, _Devices, account_takeover, card_testing, compromised_merchant

PREFERENCE = np.array([0.55, 0.3, 0.15])  # how a customer splits spending over their 3 categories
WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.1, 1.2, 0.8])  # Mon..Sun


@dataclass(frozen=True)
class Simulation:
    transactions: list[Transaction]  # sorted by (event_time, transaction_id)
    labels: list[Label]  # chargebacks, sorted by known_at
    truth: list[GroundTruth]  # one per transaction, same order

    def summary(self) -> dict[str, object]:
        fraud = Counter(g.scenario for g in self.truth if g.is_fraud)
        n = len(self.transactions)
        return {
            "transactions": n,
            "fraud": sum(fraud.values()),
            "fraud_rate": round(sum(fraud.values()) / n, 5) if n else 0.0,
            "fraud_by_scenario": dict(sorted(fraud.items())),
            "chargebacks": len(self.labels),
        }


def simulate(config: SimulationConfig) -> Simulation:
    """A reproducible simulation: the same config (seed included) gives the same output."""
    rng = np.random.default_rng(config.seed)
    pop = build_population(config, rng)
    t0 = config.start.timestamp()
    legit = _ordinary_spending(pop, config, t0, rng)
    devices = _Devices()
    rates = config.scenarios
    fraud = (
        card_testing(pop, rates.card_testing, config.days, t0, rng, devices)
        + account_takeover(pop, rates.account_takeover, config.days, t0, rng, devices)
        + compromised_merchant(pop, legit, rates.compromised_merchant, config.days, t0, rng, devices)
    )
    rows = sorted(legit + fraud, key=lambda r: (r.ts, r.card, r.merchant, r.amount_minor))
    transactions = [_transaction(i, row, pop, config) for i, row in enumerate(rows)]
    truth = [
        GroundTruth(transaction_id=t.transaction_id, is_fraud=r.scenario is not None, scenario=r.scenario)
        for t, r in zip(transactions, rows, strict=True)
    ]
    return Simulation(transactions, _chargebacks(transactions, truth, config, rng), truth)


def _ordinary_spending(pop: Population, config: SimulationConfig, t0: float, rng: np.random.Generator) -> list[Row]:
    weekday = (config.start.weekday() + np.arange(config.days)) % 7
    counts = rng.poisson(np.outer(pop.activity, WEEKDAY_FACTOR[weekday]))  # customers x days
    cust = np.repeat(np.arange(pop.n_customers), counts.sum(axis=1))
    day = np.concatenate([np.repeat(np.arange(config.days), row) for row in counts])
    n = len(cust)
    ts = t0 + day * DAY + rng.choice(24, size=n, p=HOURLY_RHYTHM) * 3600.0 + rng.uniform(0, 3600, size=n)
    ts = np.round(ts, 3)
    category = pop.preferred[cust, rng.choice(3, size=n, p=PREFERENCE)]
    factor = np.ones(n)
    if config.drift_start_day is not None:
        drifted = day >= config.drift_start_day
        factor[drifted] = config.drift_amount_factor
        shift = drifted & (rng.random(n) < 0.2)
        category[shift] = rng.choice([CATEGORIES.index("electronics"), CATEGORIES.index("travel")], size=shift.sum())
    amount = np.exp(rng.normal(pop.amount_mu[cust] + CATEGORY_AMOUNT_SHIFT[category], pop.amount_sigma[cust]))
    amount = np.maximum(50, np.round(amount * factor)).astype(np.int64)
    ecommerce = rng.random(n) < ECOMMERCE_SHARE[category]
    merchant = _pick_merchants(pop, category, pop.home_country[cust], rng)
    card_pick = rng.random(n)
    device_pick = rng.random(n)
    return [
        Row(
            float(ts[i]),
            int(c),
            pop.cards[c][int(card_pick[i] * len(pop.cards[c]))],
            int(merchant[i]),
            int(amount[i]),
            pop.devices[c][int(device_pick[i] * len(pop.devices[c]))],
            bool(ecommerce[i]),
        )
        for i, c in enumerate(cust)
    ]


def _pick_merchants(pop: Population, category: np.ndarray, home: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mostly merchants in the customer's own country, sometimes anywhere (travel, online)."""
    merchant = np.empty(len(category), dtype=np.int64)
    local = rng.random(len(category)) < 0.92
    for c in np.unique(category):
        for h in np.unique(home[category == c]):
            idx = np.flatnonzero((category == c) & (home == h) & local)
            pool = pop.merchants_by_category_country.get((int(c), int(h)), pop.merchants_by_category[int(c)])
            merchant[idx] = rng.choice(pool, size=len(idx))
        idx = np.flatnonzero((category == c) & ~local)
        merchant[idx] = rng.choice(pop.merchants_by_category[int(c)], size=len(idx))
    return merchant


def _transaction(i: int, row: Row, pop: Population, config: SimulationConfig) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{config.seed}-{i:09d}",
        event_time=datetime.fromtimestamp(row.ts, UTC),
        card_id=row.card,
        customer_id=customer_id(row.customer),
        merchant_id=merchant_id(row.merchant),
        merchant_category=CATEGORIES[int(pop.merchant_category[row.merchant])],
        amount_minor=row.amount_minor,
        currency="EUR",
        country=COUNTRIES[int(pop.merchant_country[row.merchant])],
        card_country=COUNTRIES[int(pop.home_country[row.customer])],
        device_id=row.device,
        channel=Channel.ECOMMERCE if row.ecommerce else Channel.CARD_PRESENT,
    )


def _chargebacks(
    transactions: list[Transaction], truth: list[GroundTruth], config: SimulationConfig, rng: np.random.Generator
) -> list[Label]:
    labels = []
    for txn, g in zip(transactions, truth, strict=True):
        if not g.is_fraud or rng.random() < config.unreported_fraud_fraction:
            continue
        delay_days = min(
            rng.lognormal(np.log(config.label_delay_median_days), config.label_delay_sigma), config.label_delay_max_days
        )
        labels.append(
            Label(
                transaction_id=txn.transaction_id,
                is_fraud=True,
                source=LabelSource.CHARGEBACK,
                known_at=txn.event_time + timedelta(days=float(delay_days)),
                author="issuer",
                merchant_id=txn.merchant_id,
            )
        )
    return sorted(labels, key=lambda lb: (lb.known_at, lb.transaction_id))


FILES = {"transactions": "transactions.jsonl", "labels": "labels.jsonl", "truth": "truth.jsonl"}


def write_simulation(sim: Simulation, out_dir: Path) -> dict[str, Path]:
    paths = {name: Path(out_dir) / file for name, file in FILES.items()}
    write_jsonl(paths["transactions"], sim.transactions)
    write_jsonl(paths["labels"], sim.labels)
    write_jsonl(paths["truth"], sim.truth)
    return paths


def read_simulation(out_dir: Path) -> Simulation:
    out_dir = Path(out_dir)
    if not (out_dir / FILES["transactions"]).exists():
        raise FileNotFoundError(f"no simulation in {out_dir}: run `fraud simulate` first")
    return Simulation(
        list(read_jsonl(out_dir / FILES["transactions"], Transaction)),
        list(read_jsonl(out_dir / FILES["labels"], Label)),
        list(read_jsonl(out_dir / FILES["truth"], GroundTruth)),
    )
