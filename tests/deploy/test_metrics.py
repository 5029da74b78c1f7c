"""A histogram observed a batch at a time exposes exactly what prometheus_client's Histogram would,
for each of the project's batch-observed histograms (the stream's freshness, the scorer's staleness)."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from scoring.metrics import STALENESS_BUCKETS, ScorerMetrics
from streaming.metrics import FRESHNESS_BUCKETS, StreamMetrics

CASES = [
    pytest.param(StreamMetrics, "freshness", "fraud_feature_freshness_seconds", FRESHNESS_BUCKETS, id="stream"),
    pytest.param(ScorerMetrics, "feature_staleness", "fraud_feature_staleness_seconds", STALENESS_BUCKETS, id="scorer"),
]


def _exposition(registry: CollectorRegistry, name: str) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if line.startswith(name) and "_created" not in line and "_sum" not in line]


def _observed_one_by_one(name: str, buckets: tuple[float, ...], values: list[float]) -> CollectorRegistry:
    reference = CollectorRegistry()
    histogram = Histogram(name, "reference", buckets=buckets, registry=reference)
    for value in values:
        histogram.observe(value)
    return reference


@pytest.mark.parametrize(("metrics_class", "attribute", "name", "buckets"), CASES)
def test_batches_observed_read_as_the_same_values_observed_one_by_one(metrics_class, attribute, name, buckets):
    rng = np.random.default_rng(3)
    # the bounds themselves (a value equal to a bound counts in that bucket), zero, beyond the last bound
    values = [*buckets, 0.0, 1e6, *rng.exponential(0.5, 500)]
    metrics = metrics_class()
    getattr(metrics, attribute).observe_many(values[:7])
    getattr(metrics, attribute).observe_many(np.asarray(values[7:]))

    reference = _observed_one_by_one(name, buckets, values)
    assert _exposition(metrics.registry, name) == _exposition(reference, name)
    assert metrics.registry.get_sample_value(f"{name}_count") == len(values)
    # the sum to rounding: numpy sums pairwise, observe one value at a time
    assert metrics.registry.get_sample_value(f"{name}_sum") == pytest.approx(sum(values), rel=1e-12)


@pytest.mark.parametrize(("metrics_class", "attribute", "name", "buckets"), CASES)
def test_an_empty_batch_exposes_an_empty_histogram(metrics_class, attribute, name, buckets):
    metrics = metrics_class()
    getattr(metrics, attribute).observe_many(np.array([]))
    assert _exposition(metrics.registry, name) == _exposition(_observed_one_by_one(name, buckets, []), name)
    assert metrics.registry.get_sample_value(f"{name}_sum") == 0.0
