"""The retrain schedule: monthly on data time, or on monitoring's request, rate-limited."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from retrain import ModelRegistry
from retrain.schedule import RetrainSchedule, pending_requests, request_retrain, retrain_due
from tests.factories import register_tiny_model

CUTOFF = datetime(2026, 3, 1, tzinfo=UTC)
NO_GAP = RetrainSchedule(min_gap=timedelta(0))


@pytest.fixture
def registry(tmp_path):
    version = register_tiny_model(tmp_path, lambda x: x[:, 0] > 1.0)
    path = tmp_path / "models" / version / "metadata.json"
    meta = json.loads(path.read_text())
    meta["label_cutoff"] = CUTOFF.isoformat()
    path.write_text(json.dumps(meta))
    return ModelRegistry(tmp_path)


def test_an_empty_registry_is_due(tmp_path):
    assert retrain_due(ModelRegistry(tmp_path), CUTOFF, RetrainSchedule()) == "no model registered yet"


def test_monthly_by_default_on_data_time(registry):
    assert retrain_due(registry, CUTOFF + timedelta(days=29), RetrainSchedule()) is None
    assert "30 days ago" in retrain_due(registry, CUTOFF + timedelta(days=30), RetrainSchedule())
    assert retrain_due(registry, CUTOFF + timedelta(days=8), RetrainSchedule(every=timedelta(days=7))) is not None


def test_a_request_makes_it_due_until_a_model_answers_it(registry, tmp_path):
    request_retrain(registry, "score drift sustained 3 days", by="monitoring")
    assert retrain_due(registry, CUTOFF + timedelta(days=1), NO_GAP) == (
        "requested by monitoring: score drift sustained 3 days"
    )
    register_tiny_model(tmp_path, lambda x: x[:, 1] > 1.0)  # the retrain that answers it
    assert pending_requests(registry) == []
    assert retrain_due(registry, CUTOFF + timedelta(days=1), NO_GAP) is None


def test_requests_are_rate_limited_but_stay_pending(registry):
    request_retrain(registry, "flapping alert", by="monitoring")
    # the model was registered moments ago: within the default one-day gap
    assert retrain_due(registry, CUTOFF + timedelta(days=1), RetrainSchedule()) is None
    assert len(pending_requests(registry)) == 1


def test_a_request_must_say_why(registry):
    with pytest.raises(ValueError, match="reason"):
        request_retrain(registry, " ", by="monitoring")
