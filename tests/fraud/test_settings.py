"""Settings read at the edge: defaults that match the library's, values from the environment."""

import pydantic
import pytest

from fraud.config import Settings
from scoring.idempotency import DECISION_TTL_S


def test_the_retry_window_defaults_to_the_engines_and_is_read_from_the_environment(monkeypatch):
    assert Settings().decision_ttl_s == DECISION_TTL_S
    monkeypatch.setenv("FRAUD_DECISION_TTL_S", "600")
    assert Settings().decision_ttl_s == 600


def test_the_scorer_runs_on_uvloop_unless_told_otherwise_and_an_unknown_loop_is_refused_by_name(monkeypatch):
    assert Settings().event_loop == "uvloop"
    monkeypatch.setenv("FRAUD_EVENT_LOOP", "asyncio")
    assert Settings().event_loop == "asyncio"
    monkeypatch.setenv("FRAUD_EVENT_LOOP", "trio")
    with pytest.raises(pydantic.ValidationError, match="event_loop"):
        Settings()
