"""A seeded simulator of card payments with fraud scenarios and delayed chargebacks."""

from simulator.config import ScenarioRates, SimulationConfig
from simulator.generate import Simulation, read_simulation, simulate, write_simulation

__all__ = ["ScenarioRates", "Simulation", "SimulationConfig", "read_simulation", "simulate", "write_simulation"]
