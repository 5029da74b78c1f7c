"""The model-call measurement is well-formed, and its two predictors are the same model.

No timing assertions: how fast the model is is a benchmark's claim (`fraud bench`), not a test's.
"""

import numpy as np
import pytest

from fraud.bench.model_speed import (
    ModelCallRate,
    default_features,
    format_model_calls,
    load_predictors,
    measure_model_calls,
)
from tests.factories import register_tiny_model

BATCH_SIZES = (1, 64, 512)


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    register_tiny_model(root, lambda x: x[:, 0] + 0.5 * x[:, 3] > 1.5, max_depth=4)
    return root


@pytest.fixture(scope="module")
def rates(registry_dir) -> list[ModelCallRate]:
    return measure_model_calls(registry_dir, batch_sizes=BATCH_SIZES, seconds_per_case=0.05)


def test_every_predictor_and_batch_size_is_measured(rates):
    assert [(r.predictor, r.batch_size) for r in rates] == [
        (predictor, batch) for predictor in ("onnxruntime", "xgboost") for batch in BATCH_SIZES
    ]


def test_rates_are_consistent_with_the_rows_measured(rates):
    for r in rates:
        assert r.calls > 0 and r.rows == r.calls * r.batch_size
        assert r.rows_per_s > 0 and r.rows_per_cpu_s > 0
        assert 0 < r.p50_us <= r.p99_us
        assert r.rows_per_s == pytest.approx(r.rows / r.call_s)
        assert r.rows_per_cpu_s == pytest.approx(r.rows / r.cpu_s)
        # At least half the calls took the median or longer; no one call took longer than all of them.
        assert r.call_s * 1e6 >= r.p50_us * r.calls / 2
        assert r.p50_us <= r.call_s * 1e6


def test_onnxruntime_and_xgboost_are_the_same_model(registry_dir):
    model, booster = load_predictors(registry_dir)
    batch = default_features(512)
    np.testing.assert_allclose(model.predict_proba(batch), booster.inplace_predict(batch), atol=1e-4)


def test_given_features_fewer_than_a_batch_are_cycled(registry_dir):
    rows = default_features(10, seed=3)
    rates = measure_model_calls(registry_dir, features=rows, batch_sizes=(64,), seconds_per_case=0.01)
    assert [(r.predictor, r.batch_size) for r in rates] == [("onnxruntime", 64), ("xgboost", 64)]


def test_features_of_the_wrong_width_are_refused(registry_dir):
    with pytest.raises(ValueError, match="shape"):
        measure_model_calls(registry_dir, features=np.zeros((8, 3), dtype=np.float32))


def test_table_has_a_line_per_case(rates):
    lines = format_model_calls(rates).splitlines()
    assert lines[0].split()[:2] == ["predictor", "batch"]
    assert len(lines) == 1 + len(rates)
    assert lines[1].split()[:2] == ["onnxruntime", "1"]
