"""`fraud bench-stream`: percentiles from histogram buckets, and a short real run end to end."""

import tempfile
import time

import pytest

from fraud.bench_stream import BenchConfig, _until_next_sample, histogram_quantile, longest_observed, run_bench


def test_histogram_quantile_interpolates_within_the_bucket():
    cumulative = {0.1: 50.0, 0.2: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.1)
    assert histogram_quantile(0.7, cumulative) == pytest.approx(0.15)
    assert histogram_quantile(0.95, cumulative) == pytest.approx(0.6)
    assert histogram_quantile(0.99, {}) is None


def test_histogram_quantile_beyond_the_last_bound_reports_the_bound():
    assert histogram_quantile(0.99, {1.0: 10.0, float("inf"): 20.0}) == 1.0


def test_the_longest_observation_is_read_as_its_bucket_bound():
    assert longest_observed({0.2: 3.0, 0.5: 7.0, 1.0: 7.0, float("inf"): 7.0}) == 0.5
    assert longest_observed({0.2: 3.0, 1.0: 3.0, float("inf"): 4.0}) == float("inf")
    assert longest_observed({0.2: 0.0, float("inf"): 0.0}) is None


@pytest.mark.integration
@pytest.mark.slow
def test_a_preloaded_bench_on_two_processes_and_a_redis_cluster_times_the_drain(kafka_bootstrap, redis_cluster_url):
    config = BenchConfig(
        events=5000, rate=1000, cards=500, merchants=50, interval_s=1.0, warmup_s=0.0, preload=True, processes=2
    )
    result = run_bench(config, kafka_bootstrap, redis_cluster_url)
    assert result.samples[0].produced == 5000  # all of it was on the topic before the stream started
    assert result.samples[-1].applied == 5000 and result.summary["applied_rate_steady"] > 0
    assert result.summary["freshness_s"]["p99"] is None
    assert result.samples[-1].redis_used_mb > 0 and len(result.samples[-1].worker_rss_mb) == 2


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_bench_applies_every_event_and_reports_freshness(kafka_bootstrap, redis_url, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the bench makes its stream's home
    config = BenchConfig(events=6000, rate=1500, cards=500, merchants=50, interval_s=1.0, warmup_s=1.0, snapshot_s=1)
    samples = []
    result = run_bench(config, kafka_bootstrap, redis_url, samples.append)
    assert not list(tmp_path.glob("fraud-bench-*")), "the stream's home (recovery store, logs) is removed"
    assert result.summary["events"] == 6000
    assert result.samples[-1].applied == 6000 and samples == result.samples
    fresh = result.summary["freshness_s"]
    assert fresh["p50"] is not None and 0 < fresh["p50"] <= fresh["p99"]
    assert 0 < result.summary["longest_batch_interval_s"] <= 30  # batches kept leaving the flow
    assert result.summary["snapshot_encode_s_total"] > 0  # a snapshot a second, each one timed
    assert result.summary["snapshot_base_s_total"] > 0  # and their bases written beside the flow
    assert result.summary["snapshot_encode_s_total"] == pytest.approx(
        sum(s.snapshot_encode_s for s in result.samples), abs=0.002
    )
    assert result.samples[-1].redis_used_mb > 0 and result.samples[-1].worker_rss_mb[0] > 0
    assert result.machine["cores"] and result.machine["bytewax"]
    assert result.summary["broker_cpu_pct_mean"] is None  # the fixture's broker: not ours to account


@pytest.mark.integration
def test_the_steps_only_bench_reports_cpu_per_payment_for_every_step(redis_url, capsys):
    """`fraud bench-stream --steps-only`: the dataflow's own steps, the sink writing to a real Redis."""
    import re

    import redis

    from fraud.bench_stream_cpu import STAGES, report_steps

    client = redis.Redis.from_url(redis_url)
    client.set("someone-elses-key", b"kept")
    keys_before = client.dbsize()
    report_steps(
        events=3000,
        cards=400,
        merchants=40,
        rate=2000,
        time_scale=1.0,
        repeats=2,
        snapshot_every=1000,
        redis_url=redis_url,
    )
    out = capsys.readouterr().out
    assert "machine:" in out and "3,000 payments, 400 cards, 40 merchants" in out
    for stage in (*STAGES, "total"):
        found = re.search(rf"^  {stage}\s+([\d.]+)", out, re.M)
        assert found and float(found.group(1)) > 0, stage
    snapshot = re.search(r"the last snapshot: ([\d,]+) entities, ([\d,.]+) kB of checkpoints", out)
    # A checkpoint may hold a short log only (its base is on disk), never nothing.
    assert snapshot and int(snapshot.group(1).replace(",", "")) > 400 and float(snapshot.group(2).replace(",", "")) > 0
    # its own keys are deleted afterwards, and nothing else (REDIS_URL may hold other data)
    assert client.dbsize() == keys_before and client.get("someone-elses-key") == b"kept"


def test_the_last_sample_is_taken_when_the_drain_completes_not_an_interval_later():
    """The steady rate divides by the time to the last sample: an idle tail would dilute it."""
    polls = []
    started = time.monotonic()
    _until_next_sample(5.0, lambda: polls.append(1) or len(polls) >= 3)  # drained at the third poll
    assert time.monotonic() - started < 1.0 and len(polls) == 3
    started = time.monotonic()
    _until_next_sample(0.3, lambda: False)
    assert 0.3 <= time.monotonic() - started < 1.0
