"""Releases are hot: a running `fraud serve` under steady calls follows `fraud models promote`,
`canary`, `stop` and `rollback`, and `fraud experiment start` and `stop`, without a restart and
without one failed request."""

import subprocess
import sys
import urllib.request
import uuid

import pytest

from deploy import ensure_topics, free_port
from experiments.store import ExperimentStore
from fraud.processes import wait_for
from retrain import ModelRegistry
from scoring import ScorerClient
from tests.factories import register_tiny_model
from tests.integration.helpers import SteadyCaller, fraud_env, start

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def arm_of(_started: float, _latency: float, d) -> tuple[str, str]:
    return (d.model_version, d.policy_arm)


def _fraud(home, env, *args):
    out = subprocess.run([sys.executable, "-m", "fraud", *args, "--home", str(home)], env=env, capture_output=True)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_promote_canary_stop_and_rollback_apply_under_load_with_no_failed_request(
    kafka_bootstrap, redis_url, topics, tmp_path
):
    first = register_tiny_model(tmp_path / "registry", lambda x: x[:, 0] > 1.0)
    second = register_tiny_model(tmp_path / "registry", lambda x: x[:, 1] > 1.0)
    ModelRegistry(tmp_path / "registry").rollback("start from the first")
    port, metrics_port = free_port(), free_port()
    env = fraud_env(
        kafka_bootstrap,
        redis_url,
        topics,
        tmp_path,
        FRAUD_GRPC_PORT=str(port),
        FRAUD_METRICS_PORT=str(metrics_port),
        FRAUD_KEY_PREFIX=f"hot-{uuid.uuid4().hex[:6]}",
        FRAUD_RELEASE_POLL_S="0.2",
    )
    ensure_topics(kafka_bootstrap, topics.all())
    scorer = start("serve", ["serve"], env, tmp_path)
    callers = []
    try:
        ScorerClient(f"127.0.0.1:{port}").wait_ready(60)
        callers = [SteadyCaller(f"127.0.0.1:{port}", w, arm_of, cards=97) for w in range(3)]
        for c in callers:
            c.start()

        def seen(version, arm="champion"):
            return lambda: any(a[-20:].count((version, arm)) for a in (c.answers for c in callers))

        def only(version):
            return lambda: all(c.answers[-5:] == [(version, "champion")] * 5 for c in callers)

        wait_for(seen(first), 30, "the first champion serving", alive=scorer.check_alive)
        _fraud(tmp_path, env, "models", "promote", second, "--reason", "test")
        wait_for(seen(second), 10, "the promotion applied", alive=scorer.check_alive)
        # the rest straight through the registry, as the CLI does (one CLI call above is enough)
        registry = ModelRegistry(tmp_path / "registry")
        registry.start_challenger(first, "canary", share=0.5, guard={"min_decisions": 10**9})
        wait_for(seen(first, "canary"), 10, "the canary deciding", alive=scorer.check_alive)
        registry.stop_challenger("stop", "test")
        wait_for(only(second), 10, "the canary stopped", alive=scorer.check_alive)
        registry.rollback("test")
        wait_for(only(first), 10, "the rollback applied", alive=scorer.check_alive)
        # an A/B test of the second model on half the cards, started from the CLI
        experiment = tmp_path / "experiment.yaml"
        experiment.write_text(
            "name: second-model\narms:\n  - name: control\n  - name: second\n"
            f"    policy: {{model: {second}}}\nramp: [{{traffic: 0.5}}]\nholdout: 0.1\n"
        )
        _fraud(tmp_path, env, "experiment", "start", str(experiment))
        wait_for(seen(second, "second"), 10, "the treatment arm deciding", alive=scorer.check_alive)
        wait_for(seen(first, "control"), 10, "the control arm deciding", alive=scorer.check_alive)
        wait_for(seen(first, "holdout"), 10, "the holdout deciding", alive=scorer.check_alive)
        ExperimentStore(tmp_path / "registry").stop("test")  # as `fraud experiment stop` does
        wait_for(only(first), 10, "the experiment stopped", alive=scorer.check_alive)
    finally:
        for c in callers:
            c.halt.set()
            c.join(10)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        scorer.stop()
    assert sum(len(c.answers) for c in callers) > 100
    assert [e for c in callers for e in c.errors] == []
    swaps = [line for line in metrics.splitlines() if line.startswith('fraud_release_events_total{event="swap"}')]
    assert swaps and float(swaps[0].split()[-1]) >= 4  # promote, canary, stop, rollback
