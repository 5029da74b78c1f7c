"""The stream's batch-observed histogram exposes exactly what prometheus_client's Histogram would."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streaming.metrics import FRESHNESS_BUCKETS, StreamMetrics

NAME = "fraud_feature_freshness_seconds"


def exposition(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if line.startswith(NAME) and "_created" not in line]


def test_batches_observed_read_as_the_same_values_observed_one_by_one():
    rng = np.random.default_rng(3)
    # bucket bounds themselves (a value equal to a bound counts in that bucket), zero, and beyond the last bound
    values = [*FRESHNESS_BUCKETS, 0.0, 1e6, *rng.exponential(0.5, 500)]
    metrics = StreamMetrics()
    metrics.freshness.observe_many(values[:7])
    metrics.freshness.observe_many(np.asarray(values[7:]))
    reference = CollectorRegistry()
    histogram = Histogram(
        NAME,
        "Seconds from a transaction's event time until its aggregates are visible in Redis.",
        buckets=FRESHNESS_BUCKETS,
        registry=reference,
    )
    for value in values:
        histogram.observe(value)
    ours, theirs = exposition(metrics.registry), exposition(reference)
    assert [line for line in ours if "_sum" not in line] == [line for line in theirs if "_sum" not in line]
    assert metrics.registry.get_sample_value(f"{NAME}_count") == len(values)
    assert metrics.registry.get_sample_value(f"{NAME}_sum") == pytest.approx(sum(values), rel=1e-12)
