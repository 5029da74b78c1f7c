"""The state one simulation run carries from day to day, and its random streams.

Every random draw comes from a stream named by (seed, purpose, day, ...), never from one generator
threaded through the run. So a day's ordinary spending is the same whatever happened on other days
or to fraud, and a change in the drift schedule alters only the days and the parts it touches:
compare two runs that differ in one change and everything else is identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.config import SimulationConfig
from simulator.drift import Schedule
from simulator.population import Population, build_population
from simulator.rows import DAY_MS

# Stream purposes (the second number of every stream's seed); population.py uses 1-3.
SPENDING, COVARIATE, FRAUD, NEW_PATTERN = 10, 11, 20, 30
NEVER = np.iinfo(np.int64).max


@dataclass
class World:
    config: SimulationConfig
    schedule: Schedule
    pop: Population
    switches: dict[int, np.ndarray]  # covariate change index -> each customer's new device, or -1
    n_devices: int  # customers' devices, the new ones included
    gone_from: np.ndarray  # per customer: first day without ordinary spending (after a bust-out), or NEVER
    fraudster_devices: int = 0
    seed: tuple[int, ...] = field(default=())

    @classmethod
    def create(cls, config: SimulationConfig) -> World:
        seed = (config.seed & 0xFFFF_FFFF_FFFF_FFFF,)  # numpy seeds must be non-negative
        schedule = Schedule(config.changes)
        pop = build_population(config, schedule.new_categories, seed)
        switches, n_devices = schedule.device_switches(pop, seed)
        gone_from = np.full(pop.n_customers, NEVER, dtype=np.int64)
        return cls(config, schedule, pop, switches, n_devices, gone_from, seed=seed)

    def rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, *stream])

    @property
    def start_ms(self) -> int:
        return round(self.config.start.timestamp() * 1000)

    def day_start_ms(self, day: int) -> int:
        return self.start_ms + day * DAY_MS

    def weekday(self, day: int) -> int:
        return (self.config.start.weekday() + day) % 7

    def per_day(self, rate_per_10k: float) -> float:
        """Expected incidents per day at a rate per 10,000 customers."""
        return rate_per_10k * self.pop.n_customers / 10_000

    def current_device(self, customer: np.ndarray, u: np.ndarray, day: int) -> tuple[np.ndarray, list]:
        """Each customer's device for a payment on ``day``: one of their own (picked by ``u``), or the
        new one of an active device switch. Also (change index, rows switched) for the ground truth."""
        device = self.pop.own_device(customer, u)
        switched = []
        for j, change in self.schedule.covariate(day):
            if j in self.switches and change.new_device_share > 0:
                new = self.switches[j][customer]
                moved = new >= 0
                device[moved] = new[moved]
                switched.append((j, moved))
        return device, switched

    def new_fraudster_devices(self, n: int) -> np.ndarray:
        """Codes of ``n`` devices no customer ever used (see ``Rows.device``)."""
        first = self.fraudster_devices
        self.fraudster_devices += n
        return -(first + np.arange(n, dtype=np.int64) + 1)

    def customers_with_history(self, day: int, payments: float) -> np.ndarray:
        """Customers still here who would have made about ``payments`` ordinary payments before
        ``day``. Decided from their habits, not from the payments drawn, so that a change to
        ordinary spending does not change who commits first-party fraud."""
        return np.flatnonzero((self.pop.activity * day >= payments) & (self.gone_from > day))
