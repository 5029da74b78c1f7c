"""Scorer metrics: the batch histogram observe exports what per-value observes would."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from scoring.metrics import observe_many

BOUNDS = (0.01, 0.1, 1.0, 10.0)


def _samples(histogram_values, batch: bool) -> dict:
    registry = CollectorRegistry()
    histogram = Histogram("staleness_seconds", "test", buckets=BOUNDS, registry=registry)
    values = np.asarray(histogram_values, dtype=np.float64)
    if batch:
        observe_many(histogram, values)
    else:
        for v in values.tolist():
            histogram.observe(v)
    (family,) = [m for m in registry.collect() if m.name == "staleness_seconds"]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples if "created" not in s.name}


def test_observe_many_exports_the_buckets_count_and_sum_of_per_value_observes():
    # values on every bound (le is inclusive), between bounds, past the last one, and repeats
    values = [0.0, 0.01, 0.011, 0.1, 0.5, 1.0, 1.0, 9.99, 10.0, 10.01, 3600.0]
    rng = np.random.default_rng(3)
    values += rng.exponential(2.0, 500).tolist()
    # counts exactly; the sum to rounding (numpy sums pairwise, observe one value at a time)
    assert _samples(values, batch=True) == pytest.approx(_samples(values, batch=False), rel=1e-12)


def test_observe_many_of_nothing_exports_nothing():
    assert _samples([], batch=True) == _samples([], batch=False)
