"""Settings read at the edge: defaults that match the library's, values from the environment."""

from fraud.config import Settings
from scoring.idempotency import DECISION_TTL_S


def test_the_retry_window_defaults_to_the_engines_and_is_read_from_the_environment(monkeypatch):
    assert Settings().decision_ttl_s == DECISION_TTL_S
    monkeypatch.setenv("FRAUD_DECISION_TTL_S", "600")
    assert Settings().decision_ttl_s == 600
