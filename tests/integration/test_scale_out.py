"""Scaled out, the system decides exactly as it does on one node (issue 9, docs/scaling.md).

The same history and live payments go through two copies of the system, one model between them:

- single node: one redis-server, one partition per topic, one stream process, one scorer;
- scaled out: `fraud up --scale`, as a user runs it: a Redis Cluster of 3 masters, 4 partitions
  per topic, the feature stream as a 2-process bytewax cluster, 2 scorers called round-robin.

Every entity state in Redis, and every decision's features, score, outcome and rule hits, must be
identical. A difference means scaling changed what a payment is judged on: a key routed to two
workers, a window split across partitions, a read that missed a slot.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import timedelta

import pytest

from deploy import ensure_topics, free_port, make_producer
from fraud.config import Settings
from fraud.gateway import PacedGateway
from fraud.lifecycle import read_decisions, redis_client, run_retrain
from fraud.processes import ChildProcess, wait_for
from fraud.scaleout import Scale, child_env
from scoring import ScorerClient, ScorerPool
from simulator import ScenarioRates, SimulationConfig, simulate
from streaming import OnlineFeatureStore
from streaming.windows import entity_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORLD = SimulationConfig(
    seed=23,
    days=5,
    n_customers=1000,
    scenarios=ScenarioRates(card_testing=6, account_takeover=8, compromised_merchant=5),
    label_delay_median_days=1.5,
)
SCALE = Scale(partitions=4, stream_processes=2, scorers=2, redis_masters=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sim = simulate(WORLD)
    live_start = sim.transactions[0].event_time.replace(hour=0, minute=0, second=0) + timedelta(days=4)
    history = [t for t in sim.transactions if t.event_time < live_start]
    live = [t for t in sim.transactions if t.event_time >= live_start][:1500]
    models = tmp_path_factory.mktemp("trained")
    trained = run_retrain(Settings(home=models), history, sim.labels, live_start, label_maturity_days=1.0)
    return {
        "sim": sim,
        "history": history,
        "live": live,
        "live_start": live_start,
        "models": models,
        "trained": trained,
    }


def _settings(tmp_path_factory, world, kafka_bootstrap: str, redis_url: str, name: str, partitions: int) -> Settings:
    home = tmp_path_factory.mktemp(name)
    shutil.copytree(Settings(home=world["models"]).registry_dir, Settings(home=home).registry_dir)
    suffix = f"-{name}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        home=home, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_suffix=suffix, key_prefix=f"s{suffix}"
    )
    ensure_topics(kafka_bootstrap, settings.topics.all(), partitions=partitions)
    return settings


def _drive(settings: Settings, world, client, alive) -> dict:
    """History into the stream, then the live payments decided and published, labels in step."""
    sim, live_start = world["sim"], world["live_start"]
    store = OnlineFeatureStore(redis_client(settings.require_redis()), settings.key_prefix)
    producer = make_producer(settings.require_kafka())
    gateway = PacedGateway(client, producer, settings.topics.transactions, settings.topics.labels, store, alive)
    gateway.publish(world["history"], [lb for lb in sim.labels if lb.known_at < live_start])
    decided = gateway.replay(world["live"], 150, [lb for lb in sim.labels if lb.known_at >= live_start])
    keys = sorted(entity_keys([*world["history"], *world["live"]]))
    states, watermark = store.read_states(keys)
    return {
        "decided": decided,
        "decisions": {d.transaction_id: d for d in read_decisions(settings, idle_s=2.0)},
        "states": states,
        "watermark": watermark,
    }


@pytest.fixture(scope="module")
def single_node(world, kafka_bootstrap, redis_url, tmp_path_factory):
    settings = _settings(tmp_path_factory, world, kafka_bootstrap, redis_url, "single", partitions=1)
    env = {**child_env(settings), "FRAUD_GRPC_PORT": str(port := free_port()), "FRAUD_METRICS_PORT": "0"}
    env["FRAUD_STREAM_METRICS_PORT"] = "0"
    logs = settings.home / "logs"
    stream, scorer = ChildProcess("stream", ["stream"], env, logs), ChildProcess("serve", ["serve"], env, logs)

    def alive():
        stream.check_alive()
        scorer.check_alive()

    try:
        with ScorerClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            client.wait_ready(60)
            yield _drive(settings, world, client, alive)
    finally:
        scorer.stop()
        stream.stop()


@pytest.fixture(scope="module")
def scaled_out(world, kafka_bootstrap, tmp_path_factory):
    home = tmp_path_factory.mktemp("scaled")
    shutil.copytree(Settings(home=world["models"]).registry_dir, Settings(home=home).registry_dir)
    suffix = f"-scaled-{uuid.uuid4().hex[:6]}"
    env = {
        "FRAUD_HOME": str(home),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REDIS_URL": os.environ.get("REDIS_CLUSTER_URL", ""),  # empty: `fraud up` embeds a cluster
        "FRAUD_TOPIC_SUFFIX": suffix,
        "FRAUD_KEY_PREFIX": f"s{suffix}",
    }
    args = ["--partitions", str(SCALE.partitions), "--stream-procs", str(SCALE.stream_processes)]
    args += ["--scorers", str(SCALE.scorers), "--redis-masters", str(SCALE.redis_masters)]
    up = ChildProcess("up", ["up", "--scale", *args], env, home / "logs")
    settings = Settings(home=home, topic_suffix=suffix, key_prefix=f"s{suffix}")
    try:
        wait_for(lambda: "scorers" in _running(settings), 120, "`fraud up --scale` to start", 0.2, up.check_alive)
        running = _running(settings)
        assert running["redis_url"].startswith("redis+cluster://")
        with ScorerPool(running["scorers"], timeout_s=30) as pool:
            result = _drive(settings, world, pool, up.check_alive)
            result["answered"] = dict(pool.answered)
        yield result
    finally:
        up.stop(30)
    assert up.proc.returncode == 0, up.log_path.read_text()[-2000:]
    assert not settings.services_file.exists()


def _running(settings: Settings) -> dict:
    try:
        return json.loads(settings.services_file.read_text())
    except (OSError, ValueError):
        return {}


def test_every_live_payment_is_decided_by_both(world, single_node, scaled_out):
    expected = [t.transaction_id for t in world["live"]]
    assert single_node["decided"] == expected
    assert scaled_out["decided"] == expected
    assert set(expected) <= set(single_node["decisions"]) & set(scaled_out["decisions"])
    # Both scorers took calls: the scaled-out path really was spread over them.
    assert len(scaled_out["answered"]) == SCALE.scorers and min(scaled_out["answered"].values()) > 0


def test_scaled_out_entity_states_are_identical(single_node, scaled_out):
    assert single_node["states"], "the single-node store is empty"
    assert scaled_out["states"].keys() == single_node["states"].keys()
    differ = [k for k, v in single_node["states"].items() if scaled_out["states"][k] != v]
    assert not differ, f"{len(differ)} entity states differ, e.g. {differ[:5]}"
    assert scaled_out["watermark"] == single_node["watermark"]


def test_scaled_out_decisions_are_identical(world, single_node, scaled_out):
    compared = ("features", "score", "outcome", "rule_hits", "model_version")
    mismatched = {}  # id -> what differs, so that a failure says why
    for t in world["live"]:
        one, many = single_node["decisions"][t.transaction_id], scaled_out["decisions"][t.transaction_id]
        differ = [f for f in compared if getattr(one, f) != getattr(many, f)]
        if differ:
            features = sorted(k for k in one.features if one.features[k] != many.features.get(k))
            mismatched[t.transaction_id] = (differ, features[:5], one.degraded_reason, many.degraded_reason)
    assert not mismatched, (
        f"{len(mismatched)} of {len(world['live'])} decisions differ: "
        f"(fields, features, degraded one node / scaled out) {list(mismatched.items())[:5]}"
    )
    outcomes = {d.outcome for d in scaled_out["decisions"].values()}
    assert len(outcomes) > 1, f"every payment got {outcomes}: the comparison would not see a changed score"
    assert all(single_node["decisions"][t.transaction_id].degraded_reason is None for t in world["live"])
