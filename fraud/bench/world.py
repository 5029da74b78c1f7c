"""The world a decision benchmark runs in: a trained model, a warm feature store, payments to send.

A simulated portfolio (``simulator``) supplies ``history_days`` of payments, shifted in time so
that they end now. They train the model (exactly as ``fraud train`` does) and are replayed through
the feature code into Redis, so every payment the benchmark sends finds its card, customer,
merchant and device with days of real window state, as in production. The payments sent are the
simulated day after the history, re-stamped at their scheduled arrival times by the generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import redis

from fraud.config import Settings
from schema import Label, Transaction


@dataclass(frozen=True)
class WorldConfig:
    customers: int = 10_000
    history_days: int = 7
    seed: int = 11


@dataclass(frozen=True)
class BenchWorld:
    model_version: str
    payments: Path  # JSON lines, the payments the generator sends (cycled)
    history_payments: int
    entities: int  # entity states in Redis


def _shift(transactions: list[Transaction], labels: list[Label], delta: timedelta):
    replace = msgspec.structs.replace
    moved = [replace(t, event_time=t.event_time + delta) for t in transactions]
    moved_labels = [replace(lb, known_at=lb.known_at + delta) for lb in labels]
    return moved, moved_labels


def prepare_world(
    settings: Settings, client: redis.Redis, config: WorldConfig, say: Callable[[str], None] = print
) -> BenchWorld:
    """Simulate, train (unless ``settings.registry_dir`` already has a champion), and load Redis."""
    from fraud.bench.baseline import preload_naive_features
    from fraud.lifecycle import run_retrain
    from retrain import ModelRegistry
    from simulator import ScenarioRates, SimulationConfig, simulate
    from streaming import OnlineFeatureStore
    from streaming.offline import OfflineFeatureBuilder
    from streaming.windows import LAYOUTS

    # Fraud about three times the simulator's default and chargebacks a little faster: a few days of
    # history must hold enough known fraud to train a model (the bench measures speed, not recall).
    rates = ScenarioRates(card_testing=6, account_takeover=8, compromised_merchant=5)
    sim = simulate(
        SimulationConfig(
            n_customers=config.customers,
            days=config.history_days + 1,
            seed=config.seed,
            scenarios=rates,
            label_delay_median_days=2.0,
        )
    )
    end = sim.transactions[0].event_time.replace(hour=0, minute=0, second=0) + timedelta(days=config.history_days)
    now = datetime.now(UTC)
    history, labels = _shift(
        [t for t in sim.transactions if t.event_time < end],
        [lb for lb in sim.labels if lb.known_at < end],
        now - end,
    )
    upcoming = [t for t in sim.transactions if t.event_time >= end]
    say(f"simulated {len(history):,} payments of history ({config.customers:,} customers), {len(upcoming):,} to send")

    registry = ModelRegistry(settings.registry_dir)
    if registry.champion() is None:
        say("training the model on the history ...")
        run_retrain(settings, history, labels, as_of=now, label_maturity_days=2.0)
    version = registry.champion()
    if version is None:
        raise RuntimeError(f"training registered no champion in {settings.registry_dir}")

    say("replaying the history into the online feature store ...")
    builder = OfflineFeatureBuilder()
    last: dict[tuple[str, str], Transaction] = {}
    for txn in history:
        builder.apply(txn)
        for entity, layout in LAYOUTS.items():
            last[(entity, layout.key_of(txn))] = txn
    store = OnlineFeatureStore(client, settings.key_prefix)
    states = ((entity, entity_id, state) for (entity, entity_id), state in builder.states.items())
    store.write_states(states, newest_ts=history[-1].event_ts, transactions=len(history))
    preload_naive_features(client, settings.key_prefix, builder.states, last)

    payments = settings.home / "bench" / "payments.jsonl"
    payments.parent.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    payments.write_bytes(b"\n".join(encoder.encode(t) for t in upcoming) + b"\n")
    return BenchWorld(version, payments, len(history), len(builder.states))
