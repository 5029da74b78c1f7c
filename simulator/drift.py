"""The drift schedule at work: which changes are active on a simulated day, and what each one does.

Change ``j`` (its position in ``SimulationConfig.changes``) owns bit ``1 << j`` of a payment's
``changes`` column; the ground truth turns the bits back into names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from simulator.population import CATEGORIES, Population
from simulator.schedule import Change, ConceptChange, CovariateChange, FraudSignature, NewPatternChange

MAX_CHANGES = 63  # one bit each in an int64


@dataclass(frozen=True)
class Signature:
    """A fraud pattern's signature with every field decided (see ``FraudSignature``).

    ``amount_median_minor``/``amount_sigma`` None: the cardholder's own level and spread (friendly
    fraud looks like the customer). ``categories`` None: the cardholder's own favourite categories.
    """

    amount_median_minor: int | None
    amount_sigma: float | None
    abroad: bool
    new_device: bool
    categories: tuple[str, ...] | None
    payments: tuple[int, int]
    gap_s: tuple[float, float]

    def override(self, change: FraudSignature) -> Signature:
        """This signature with every field the change sets replaced."""
        given = {f.name: getattr(change, f.name) for f in fields(self) if getattr(change, f.name) is not None}
        return replace(self, **given)


class Schedule:
    """The changes of one run, resolved against its population."""

    def __init__(self, changes: tuple[Change, ...]) -> None:
        if len(changes) > MAX_CHANGES:
            raise ValueError(f"changes: at most {MAX_CHANGES} changes per run, got {len(changes)}")
        self.changes = changes
        self.new_categories = _new_categories(changes)

    def covariate(self, day: int) -> list[tuple[int, CovariateChange]]:
        """(index, change) of the covariate changes active on ``day``, in file order."""
        return [(j, c) for j, c in enumerate(self.changes) if isinstance(c, CovariateChange) and c.active(day)]

    def signature(self, scenario: str, day: int, default: Signature) -> tuple[Signature, int]:
        """The scenario's signature on ``day``: its default, overridden by each active concept change
        in file order; and the bits of those changes (they shaped every payment of the pattern)."""
        bits = 0
        for j, c in enumerate(self.changes):
            if isinstance(c, ConceptChange) and c.scenario == scenario and c.active(day):
                default = default.override(c.signature)
                bits |= 1 << j
        return default, bits

    def new_patterns(self, scenario: str, day: int) -> list[tuple[int, NewPatternChange]]:
        """(index, change) of the new-pattern changes of ``scenario`` active on ``day``."""
        return [
            (j, c)
            for j, c in enumerate(self.changes)
            if isinstance(c, NewPatternChange) and c.scenario == scenario and c.active(day)
        ]

    def open_categories(self, day: int) -> frozenset[str]:
        """Categories with merchants taking payments on ``day``: the model's own, plus any new
        category while a change that introduces it is active."""
        opened = {name for _, c in self.covariate(day) for name in c.category_boost if name not in CATEGORIES}
        return frozenset(CATEGORIES) | opened

    def device_switches(self, pop: Population, seed: tuple[int, ...]) -> tuple[dict[int, np.ndarray], int]:
        """Per covariate change (by index) with ``new_device_share``: each customer's new device
        number, or -1; and the number of devices in all.

        New devices are numbered after every existing one, change by change, so the customers'
        original devices keep their ids whatever the schedule."""
        switches, next_device = {}, pop.n_devices
        for j, c in enumerate(self.changes):
            if isinstance(c, CovariateChange) and c.new_device_share > 0:
                rng = np.random.default_rng([*seed, 3, j])
                switched = rng.random(pop.n_customers) < c.new_device_share
                numbers = next_device + np.cumsum(switched) - 1
                switches[j] = np.where(switched, numbers, -1)
                next_device += int(switched.sum())
        return switches, next_device

    def names(self, bits: int) -> tuple[str, ...]:
        return tuple(c.name for j, c in enumerate(self.changes) if bits >> j & 1)


def _new_categories(changes: tuple[Change, ...]) -> list[tuple[str, float]]:
    """(name, largest share any change gives it) of each category the schedule invents, in order of
    first appearance."""
    shares: dict[str, float] = {}
    for c in changes:
        if isinstance(c, CovariateChange):
            for name, share in c.category_boost.items():
                if name not in CATEGORIES:
                    shares[name] = max(shares.get(name, 0.0), share)
    return list(shares.items())
