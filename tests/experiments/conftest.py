"""One small simulated history shared by the experiment tests: the simulator's files, every
payment's point-in-time features (one replay), and a model trained on the first two weeks with
the labels known then, registered and promoted as champion."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from retrain import ModelRegistry, RetrainPolicy, TrainingConfig, labelled_as_of, retrain_on
from schema import GroundTruth, Label, Transaction
from simulator import SimulationConfig, simulate, write_simulation
from streaming import feature_matrix

TRAIN_DAYS = 14


@dataclass(frozen=True)
class SimulatedHistory:
    data_dir: Path  # transactions, labels, truth as the simulator writes them (JSON lines)
    registry_dir: Path  # a registry whose champion is ``model_version``
    model_version: str
    config: SimulationConfig
    ordered: list[Transaction]  # every payment in event order
    matrix: np.ndarray  # their point-in-time features (rows align with ``ordered``)
    labels: list[Label]  # the chargebacks
    truth: dict[str, GroundTruth]  # by transaction id

    @property
    def decide_from(self) -> int:
        """Index in ``ordered`` of the first payment after the training period."""
        cut = (self.config.start + timedelta(days=TRAIN_DAYS)).timestamp()
        return int(np.searchsorted([t.event_ts for t in self.ordered], cut))


@pytest.fixture(scope="session")
def simulated_history(tmp_path_factory: pytest.TempPathFactory) -> SimulatedHistory:
    root = tmp_path_factory.mktemp("experiments-history")
    config = SimulationConfig(seed=23, days=28, n_customers=1500, txns_per_customer_day=1.0)
    sim = simulate(config)
    write_simulation(sim, root / "data")
    ordered, matrix = feature_matrix(sim.transactions, sim.labels)
    as_of = config.start + timedelta(days=TRAIN_DAYS)
    registry = ModelRegistry(root / "registry")
    policy = RetrainPolicy(training=TrainingConfig(n_estimators=80))
    result = retrain_on(labelled_as_of(ordered, matrix, sim.labels, as_of), registry, as_of, policy)
    assert result.promoted, result.reason
    return SimulatedHistory(
        data_dir=root / "data",
        registry_dir=root / "registry",
        model_version=result.serving,
        config=config,
        ordered=ordered,
        matrix=matrix,
        labels=sim.labels,
        truth={g.transaction_id: g for g in sim.truth},
    )
