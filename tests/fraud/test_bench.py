"""`fraud bench`: the open-loop schedule and summaries (unit), and one short real run of every
mode plus the baseline against the session's broker and Redis (integration)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from deploy.kafka import read_topic
from fraud.bench.loadgen import arrival_offsets, latency_summary
from fraud.bench.path_speed import PathCase, fit_batch_cost
from fraud.bench.run import (
    DecisionBenchConfig,
    batching_between,
    best_sustainable_rate,
    command_cost,
    counters_from_exposition,
    keyspace_growth,
    sustainable,
)
from schema import decode_decision


def test_constant_arrivals_are_evenly_spaced_at_the_rate():
    offsets = arrival_offsets(1000, 2.0, "constant", np.random.default_rng(0))
    assert len(offsets) == 2000
    assert np.allclose(np.diff(offsets), 0.001)


def test_poisson_arrivals_average_the_rate_with_exponential_gaps():
    offsets = arrival_offsets(5000, 10.0, "poisson", np.random.default_rng(0))
    gaps = np.diff(offsets)
    assert len(offsets) == 50_000
    assert offsets[-1] == pytest.approx(10.0, rel=0.02)
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.05)  # exponential: sd = mean


def test_unknown_arrival_process_is_refused():
    with pytest.raises(ValueError, match="arrivals"):
        arrival_offsets(10, 1, "bursty", np.random.default_rng(0))


def test_latency_summary_ignores_unanswered_and_reports_ms():
    lat = np.array([0.001] * 98 + [0.5, np.nan])
    summary = latency_summary(lat)
    assert summary["p50"] == pytest.approx(1.0)
    assert summary["max"] == pytest.approx(500.0)
    assert latency_summary(np.array([np.nan]))["p99"] is None


def _step(rate, p99, timeouts=0, shed=0, measured=1000):
    return {
        "achieved_rate": rate,
        "latency_ms": {"p99": p99},
        "errors": 0,
        "timeouts": timeouts,
        "mismatched": 0,
        "decided": measured - timeouts,
        "shed": shed,
        "measured": measured,
    }


def test_redis_time_per_decision_is_each_commands_growth_over_the_step_largest_first():
    before = Counter({"mget": 1_000.0, "evalsha": 500.0, "info": 10.0})
    after = Counter({"mget": 6_000.0, "evalsha": 3_500.0, "info": 11.0, "hget": 1_200.0})
    cost = command_cost(before, after, decisions=1_000)
    assert cost == {"mget": 5.0, "evalsha": 3.0, "hget": 1.2}  # info's 0.001 µs left out
    assert list(cost) == ["mget", "evalsha", "hget"]
    assert command_cost(before, after, decisions=0) == {}


def test_the_keyspace_crossings_are_the_powers_of_two_any_server_passed():
    assert keyspace_growth([37_000], [737_000]) == {
        "before": 37_000,
        "after": 737_000,
        "crossed_powers_of_two": [16, 17, 18, 19],
    }
    assert keyspace_growth([1024], [2047])["crossed_powers_of_two"] == []  # 1024 = 2^10 was already held
    assert keyspace_growth([1023], [1024])["crossed_powers_of_two"] == [10]
    # a cluster: each master rehashes at its own count, whatever the sum does
    growth = keyspace_growth([1500, 3000], [1600, 5000])  # the second passes 4096; the sum passes none
    assert growth == {"before": 4500, "after": 6600, "crossed_powers_of_two": [12]}


def test_a_step_is_sustainable_only_within_budget_with_nothing_failed_and_little_shed():
    config = DecisionBenchConfig()
    assert sustainable(_step(1000, 99.0), config)
    assert not sustainable(_step(1000, 101.0), config)
    assert not sustainable(_step(1000, 20.0, timeouts=1), config)
    assert not sustainable(_step(1000, 20.0, shed=5), config)  # 0.5% shed > 0.1%
    steps = [_step(1000, 10.0), _step(5000, 40.0), _step(7000, 60.0), _step(9000, 300.0)]
    assert best_sustainable_rate(steps, config) == 7000
    assert best_sustainable_rate(steps, config, config.tight_budget_ms) == 5000  # p99 <= 50 ms


def _fraud_bench(tmp_path, env_extra: dict[str, str], *args: str, timeout: float) -> str:
    """Run `fraud bench` in a subprocess with HOME=tmp_path; it must succeed. Returns its stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "fraud", "bench", "--home", str(tmp_path), *args],
        env={**os.environ, **env_extra},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def bench_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One HOME for the full bench runs: the first trains the world's model, the next reuse its
    champion (`prepare_world` trains only without one), so the model is fitted once."""
    return tmp_path_factory.mktemp("bench-home")


@pytest.mark.integration
@pytest.mark.slow
def test_fraud_bench_runs_every_mode_and_the_baseline_and_writes_json_and_a_plot(
    kafka_bootstrap, redis_url, bench_home, tmp_path
):
    out = tmp_path / "result.json"
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "REDIS_URL": redis_url}
    # One light step per mode (every assertion below is per step) and short model-call and
    # feature-read cases: this checks that each part runs and reports, not how fast.
    args = ["--rates", "25", "--duration", "2", "--warmup", "1", "--customers", "1500", "--history-days", "6"]
    args += ["--case-seconds", "0.2"]
    stdout = _fraud_bench(bench_home, env, *args, "--out", str(out), timeout=420)
    assert "machine:" in stdout and "model xgb-" in stdout
    assert "sustainable rate (p99 <= 100 ms" in stdout and "the same within p99 <= 50 ms:" in stdout
    assert "cores: fixed work took" in stdout
    assert "redis: " in stdout and " keys" in stdout

    result = json.loads(out.read_text())
    modes = {s["mode"] for s in result["steps"]}
    assert modes == {"unary", "batch", "kafka", "baseline"}
    for step in result["steps"]:
        lat = step["latency_ms"]
        assert step["sent"] >= step["measured"] > 0
        if step["mode"] != "baseline":
            assert step["decided"] > 0.9 * step["measured"], step  # a light load is answered
            assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
            assert step["mismatched"] == 0 and step["errors"] == 0
            assert step["server_cpu_us_per_decision"] > 0
            batching = step["server_batching"]  # scraped from the scorer's own metrics
            assert batching["batches"] > 0 and batching["rows_per_batch"] >= 1, batching
            if step["mode"] != "kafka":
                assert batching["requests_per_batch"] >= 1, batching  # a batch holds whole requests
        else:
            assert step["server_batching"]["rows_per_batch"] is None  # the naive scorer has no batches
        assert "server-0" in step["cpu_pct"] and "redis" in step["cpu_pct"]
        assert step["core_speed"]["samples"] > 0 and step["core_speed"]["p50"] > 0
        keys = step["redis_keys"]  # the world's keys, and any the step added
        assert 0 < keys["before"] <= keys["after"], keys
        if step["mode"] != "baseline":  # Redis's time per decision: the feature read is one MGET per batch
            assert step["redis_us_per_decision"].get("mget", 0) > 0, step["redis_us_per_decision"]
    assert set(result["sustainable_rate"]) == set(result["sustainable_rate_tight"]) == modes
    assert all(result["sustainable_rate_tight"][m] <= result["sustainable_rate"][m] for m in modes)
    assert {(r["predictor"], r["batch_size"]) for r in result["model_calls"]} == {
        (p, b) for p in ("onnxruntime", "xgboost") for b in (1, 64, 512)
    }
    assert [r["batch_size"] for r in result["feature_reads"]] == [1, 10, 50, 200, 1000]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_fraud_bench_broker_only_measures_the_broker_hop_per_window(kafka_bootstrap, tmp_path):
    args = ["--broker-only", "--rates", "100,300", "--duration", "1.5"]
    stdout = _fraud_bench(tmp_path, {"KAFKA_BOOTSTRAP": kafka_bootstrap}, *args, timeout=120)
    assert "machine:" in stdout and f"external {kafka_bootstrap}" in stdout
    (path,) = (tmp_path / "bench").glob("broker-*.json")
    windows = json.loads(path.read_text())["windows"]
    assert [w["rate"] for w in windows] == [100] * 3 + [300] * 3
    assert all(w["read"] > 0 and w["hop_p50_ms"] <= w["hop_p99_ms"] for w in windows)


@pytest.mark.integration
@pytest.mark.slow
def test_scaling_curve_over_one_and_two_scorers_on_a_redis_cluster(kafka_bootstrap, bench_home, tmp_path):
    """`--server-procs 1,2 --redis-masters 3`: the bench embeds a Redis Cluster, runs once per scorer
    count, spreads calls evenly over the scorers, and writes the scaling curve."""
    out = tmp_path / "result.json"
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "REDIS_URL": ""}
    args = ["--mode", "batch", "--server-procs", "1,2", "--redis-masters", "3", "--no-baseline", "--rates", "200"]
    args += ["--duration", "2", "--warmup", "1", "--customers", "1500", "--history-days", "6"]
    stdout = _fraud_bench(bench_home, env, *args, "--case-seconds", "0.05", "--out", str(out), timeout=420)
    assert "redis+cluster://" in stdout and "scaling: sustainable rate by scorer processes" in stdout

    one, two = (json.loads(out.with_name(f"result-procs{n}.json").read_text()) for n in (1, 2))
    assert one["redis"] == two["redis"] == "cluster"
    (step,) = two["steps"]
    assert step["decided"] > 0.9 * step["measured"] and step["errors"] == 0 and step["mismatched"] == 0
    assert set(step["cpu_pct"]) >= {"server-0", "server-1", "redis-0", "redis-1", "redis-2"}
    assert 0 < step["redis_keys"]["before"] <= step["redis_keys"]["after"]  # summed over every master
    per_process = step["server_batching"]["decisions_per_process"]
    assert len(per_process) == 2 and min(per_process) >= 0.4 * sum(per_process) > 0, per_process  # round-robin

    curve = json.loads(out.with_name("result-scaling.json").read_text())["curve"]["batch"]
    assert [p["server_procs"] for p in curve] == [1, 2]
    assert curve[0]["speedup"] == 1.0 and all(p["sustainable_rate"] > 0 for p in curve)


@pytest.mark.integration
@pytest.mark.slow
def test_fraud_bench_path_only_decides_and_publishes_every_payment_and_fits_the_batch_cost(
    kafka_bootstrap, redis_url, bench_home
):
    """`--path-only`: the service `fraud serve` builds, called in-process per request; every
    payment of every case is decided and published, each stage is timed, and the fit is reported."""
    env = {"KAFKA_BOOTSTRAP": kafka_bootstrap, "REDIS_URL": redis_url}
    args = ["--path-only", "--batch-sizes", "1,20", "--case-seconds", "0.3", "--customers", "1500"]
    stdout = _fraud_bench(bench_home, env, *args, "--history-days", "6", timeout=300)
    assert "machine:" in stdout and "µs fixed per batch" in stdout
    (path,) = sorted((bench_home / "bench").glob("path-*.json"))[-1:]
    result = json.loads(path.read_text())
    assert [c["batch_size"] for c in result["cases"]] == [1, 20]
    for case in result["cases"]:
        assert case["batches"] > 0 and case["cpu_us_per_decision"] > 0
        assert all(case["stage_us_per_decision"][s] > 0 for s in ("features", "model", "rules", "record", "publish"))
    decided = sum(c["batches"] * c["batch_size"] for c in result["cases"])
    published = read_topic(kafka_bootstrap, result["decisions_topic"], idle_s=1.0)
    shed = [d for d in map(decode_decision, (m.value() for m in published)) if d.degraded_reason]
    assert len(published) - len(shed) >= decided  # the warm-up's decisions are published too
    # the shed path, measured last: rules-only decisions, published like any
    assert "the shed path" in stdout and result["shed_batch_size"] == 20 and result["shed_cpu_us_per_decision"] > 0
    assert shed and {d.degraded_reason for d in shed} == {"shed: path-only measurement"}
    assert all(d.score is None for d in shed)
    assert result["us_per_decision"] > 0


def test_the_batch_cost_fit_separates_the_fixed_cost_from_the_cost_per_decision():
    # 800 µs per batch + 60 µs per decision, seen as CPU per decision at three batch sizes
    cases = [PathCase(n, 10, 800 / n + 60, {}) for n in (1, 10, 100)]
    fixed, per_decision = fit_batch_cost(cases)
    assert fixed == pytest.approx(800) and per_decision == pytest.approx(60)
    with pytest.raises(ValueError, match="two batch sizes"):
        fit_batch_cost(cases[:1])


def test_rows_per_batch_subtracts_only_the_decisions_made_by_the_rules_alone():
    """A flood of flags publishes decisions without reason codes (`reasons_skipped`): those were
    decided in full, and subtracting them once made rows/batch negative under overload."""
    from prometheus_client import generate_latest

    from scoring.metrics import ScorerMetrics

    metrics = ScorerMetrics()
    before = counters_from_exposition(generate_latest(metrics.registry).decode())
    for _ in range(4):
        metrics.observe_stage("features", 0.001)
    metrics.decisions.labels(outcome="approve", model_version="m").inc(100)  # 60 in full, 40 shed
    metrics.count_degraded("shed", 40)
    metrics.count_degraded("reasons_skipped", 30)  # decided in full, published without reasons
    after = counters_from_exposition(generate_latest(metrics.registry).decode())
    batching = batching_between([before], [after])
    assert batching["batches"] == 4 and batching["degraded_decisions"] == 40
    assert batching["rows_per_batch"] == 15.0  # (100 - 40) / 4
