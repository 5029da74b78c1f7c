"""A seeded simulator of card payments with fraud scenarios and delayed chargebacks."""

from simulator.config import ScenarioRates, SimulationConfig
from simulator.generate import Simulation, read_simulation, simulate, write_simulation
from simulator.importer import (
    ImportMapping,
    ImportOptions,
    ImportReport,
    MappingError,
    Reject,
    TooManyRejects,
    import_transactions,
)

__all__ = [
    "ImportMapping",
    "ImportOptions",
    "ImportReport",
    "MappingError",
    "Reject",
    "ScenarioRates",
    "Simulation",
    "SimulationConfig",
    "TooManyRejects",
    "import_transactions",
    "read_simulation",
    "simulate",
    "write_simulation",
]
