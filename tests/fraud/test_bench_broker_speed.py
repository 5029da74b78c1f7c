"""The broker probe runs a real produce -> consume hop on the session broker and reports one
well-formed row per window. No timing assertions: speed is the benchmark's claim, not a test's."""

import uuid

import pytest

from fraud.bench.broker_speed import BrokerProbe, format_broker_windows, measure_broker_hop

pytestmark = pytest.mark.integration


def test_every_window_reports_the_log_size_and_the_hop_latency(kafka_bootstrap):
    probe = BrokerProbe(kafka_bootstrap, f"probe-{uuid.uuid4().hex[:8]}", broker_pid=None, window_s=0.5)

    windows = measure_broker_hop(probe, rate=200, duration_s=1.5)

    assert len(windows) == 3
    logged = [w.messages_in_log for w in windows]
    assert logged == sorted(logged) and 50 <= logged[0] < logged[-1] <= 400
    assert sum(w.read for w in windows) > 0
    read = [w for w in windows if w.read]
    assert all(0 < w.hop_p50_ms <= w.hop_p99_ms for w in read)
    assert all(w.broker_cpu_pct is None for w in windows)  # no pid given: no CPU claimed
    assert len(format_broker_windows(windows).splitlines()) == 4


def test_a_rate_of_zero_is_a_clear_error(kafka_bootstrap):
    with pytest.raises(ValueError, match="rate and duration must be positive"):
        measure_broker_hop(BrokerProbe(kafka_bootstrap, "unused"), rate=0, duration_s=1)
