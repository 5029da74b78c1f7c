"""A seeded simulator of card payments with fraud scenarios and delayed chargebacks."""

from simulator.config import ScenarioRates, SimulationConfig, load_config
from simulator.files import iter_transactions
from simulator.generate import (
    DayDone,
    Simulation,
    read_simulation,
    simulate,
    simulate_to_files,
    write_simulation,
)
from simulator.importer import (
    ImportMapping,
    ImportOptions,
    ImportReport,
    MappingError,
    Reject,
    TooManyRejects,
    import_transactions,
)
from simulator.schedule import (
    SCENARIO_NAMES,
    Change,
    ConceptChange,
    CovariateChange,
    FraudSignature,
    NewPatternChange,
)

__all__ = [
    "ImportMapping",
    "ImportOptions",
    "ImportReport",
    "MappingError",
    "Reject",
    "SCENARIO_NAMES",
    "Change",
    "ConceptChange",
    "CovariateChange",
    "DayDone",
    "FraudSignature",
    "NewPatternChange",
    "ScenarioRates",
    "Simulation",
    "SimulationConfig",
    "TooManyRejects",
    "import_transactions",
    "iter_transactions",
    "load_config",
    "read_simulation",
    "simulate",
    "simulate_to_files",
    "write_simulation",
]
