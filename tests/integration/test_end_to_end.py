"""The whole loop against real processes: broker, Redis, the bytewax stream, the gRPC scorer.

One module-scoped run: train a first model on simulated history, start `fraud stream` and
`fraud serve`, replay history into the stream, then decide a live day over gRPC while publishing
each transaction to `transactions`. The tests then check what came out of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import timedelta

import grpc
import pytest

from deploy import ensure_topics, free_port, make_producer, read_topic
from fraud.config import Settings
from fraud.gateway import PacedGateway, wait_until_serving
from fraud.lifecycle import intake_decisions, read_decisions, redis_client, run_retrain
from fraud.processes import ChildProcess
from retrain import ModelRegistry
from review_queue import ReviewStore, in_audit_sample
from schema import LabelSource, Outcome, decode_label
from scoring import ScorerClient
from scoring.proto import fraud_pb2 as pb
from simulator import ScenarioRates, SimulationConfig, simulate, write_simulation
from streaming import OfflineFeatureBuilder, OnlineFeatureStore
from tests.factories import txn

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# Six days of 1,500 customers, with fraud about three times the simulator's default and chargebacks
# a little faster, so that five days of history hold enough known fraud to train the first model.
TRAINABLE_WEEK = SimulationConfig(
    seed=5,
    days=6,
    n_customers=1500,
    scenarios=ScenarioRates(card_testing=6, account_takeover=8, compromised_merchant=5),
    label_delay_median_days=2.0,
)


def burst(start, card="card-planted"):
    """A card-testing burst: 12 tiny online payments in four minutes on one card."""
    return [
        txn(
            900_000 + i,
            at=start,
            minutes=i / 3,
            card=card,
            amount_minor=99,
            category="digital_goods",
            merchant="merch-0005",
            device="dev-x-planted",
        )
        for i in range(12)
    ]


@pytest.fixture(scope="module")
def run(kafka_bootstrap, redis_url, tmp_path_factory):
    suffix = f"-{uuid.uuid4().hex[:8]}"
    home = tmp_path_factory.mktemp("e2e")
    settings = Settings(
        home=home,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        topic_suffix=suffix,
        key_prefix=f"e2e{suffix}",
        grpc_port=free_port(),
        metrics_port=free_port(),
    )
    ensure_topics(kafka_bootstrap, settings.topics.all())
    sim = simulate(TRAINABLE_WEEK)
    write_simulation(sim, settings.data_dir)
    live_start = sim.transactions[0].event_time.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=5)
    history = [t for t in sim.transactions if t.event_time < live_start]
    live = sorted(
        [t for t in sim.transactions if t.event_time >= live_start] + burst(live_start + timedelta(hours=9)),
        key=lambda t: (t.event_time, t.transaction_id),
    )
    first = run_retrain(settings, history, sim.labels, live_start, label_maturity_days=1.0)

    env = {
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "FRAUD_HOME": str(home),
        "FRAUD_TOPIC_SUFFIX": suffix,
        "FRAUD_KEY_PREFIX": settings.key_prefix,
        "FRAUD_GRPC_PORT": str(settings.grpc_port),
        "FRAUD_METRICS_PORT": str(settings.metrics_port),
        "FRAUD_STREAM_METRICS_PORT": str(free_port()),
        "FRAUD_DECISION_TTL_S": "7200",  # not the default hour: the retry window reaches the engine
    }
    stream = ChildProcess("stream", ["stream"], env, home / "logs")
    scorer = ChildProcess("serve", ["serve"], env, home / "logs")
    store = OnlineFeatureStore(redis_client(redis_url), settings.key_prefix)
    client = ScorerClient(f"127.0.0.1:{settings.grpc_port}", timeout_s=30)

    def alive():
        stream.check_alive()
        scorer.check_alive()

    try:
        gateway = PacedGateway(
            client, make_producer(kafka_bootstrap), settings.topics.transactions, settings.topics.labels, store, alive
        )
        gateway.publish(history, [lb for lb in sim.labels if lb.known_at < live_start])
        wait_until_serving(client, 60, alive)
        decided = gateway.replay(live, 200, [lb for lb in sim.labels if lb.known_at >= live_start])
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics").read().decode()
        yield {
            "settings": settings,
            "sim": sim,
            "live": live,
            "history": history,
            "decided": decided,
            "first": first,
            "client": client,
            "metrics": metrics,
            "env": env,
            "store": store,
            "decisions": {d.transaction_id: d for d in read_decisions(settings, idle_s=2.0)},
        }
    finally:
        client.close()
        scorer.stop()
        stream.stop()


def test_every_live_transaction_is_decided_and_published(run):
    assert run["decided"] == [t.transaction_id for t in run["live"]]
    assert set(run["decided"]) <= set(run["decisions"])
    versions = {run["decisions"][t].model_version for t in run["decided"]}
    assert versions == {run["first"].challenger}
    assert all(run["decisions"][t].degraded_reason is None for t in run["decided"])


def test_each_decision_is_kept_for_retries_as_long_as_configured(run):
    store = run["store"]
    ttls = [store.client.ttl(store.decision_key(t.transaction_id, t.event_ts)) for t in run["live"][-50:]]
    assert all(3600 < ttl <= 7200 for ttl in ttls), ttls  # FRAUD_DECISION_TTL_S, not DECISION_TTL_S


def test_online_features_equal_the_offline_builder(run):
    """Training-serving skew check: what the scorer used equals what training would compute."""
    offline = OfflineFeatureBuilder().replay(run["history"] + run["live"], run["sim"].labels)
    mismatched = [t for t in run["decided"] if run["decisions"][t].features != offline[t]]
    assert mismatched == []
    # The label path is exercised: chargebacks published in step reached merchant fraud rates online.
    assert sum(run["decisions"][t].features["merchant_fraud_rate_30d"] > 0 for t in run["decided"]) > 100


def test_card_testing_burst_trips_the_velocity_rule(run):
    planted = [run["decisions"][t.transaction_id] for t in burst(run["live"][0].event_time)]
    assert [d.features["card_txn_count_10m"] for d in planted] == [float(i) for i in range(1, 13)]
    tripped = [d for d in planted if any(h.rule_id == "velocity_card_10m@1" for h in d.rule_hits)]
    assert [d.features["card_txn_count_10m"] for d in tripped] == [9.0, 10.0, 11.0, 12.0]
    assert all(d.outcome is not Outcome.APPROVE for d in tripped)


def test_flagged_and_blocked_decisions_are_published_with_reason_codes(run):
    """fraud serve replies first and explains after: the published record carries the reasons."""
    scored = [run["decisions"][t] for t in run["decided"] if run["decisions"][t].score is not None]
    not_approved = [d for d in scored if d.outcome is not Outcome.APPROVE]
    assert not_approved and all(1 <= len(d.reasons) <= 3 for d in not_approved)
    assert all(d.reasons == [] for d in scored if d.outcome is Outcome.APPROVE)
    assert all(r.contribution > 0 and r.text for d in not_approved for r in d.reasons)


def test_flagged_decisions_become_cases_and_a_label_is_recorded(run):
    settings = run["settings"]
    flagged = {t for t in run["decided"] if run["decisions"][t].outcome is Outcome.FLAG}
    # and the random audit sample of approvals (selection-bias control, docs/feedback-loop.md)
    audited = {
        t
        for t in run["decided"]
        if run["decisions"][t].outcome is Outcome.APPROVE and in_audit_sample(t, settings.review_audit_rate)
    }
    assert flagged and audited
    assert intake_decisions(settings, idle_s=1.0) == len(flagged) + len(audited)
    with ReviewStore(settings.review_db) as store:
        assert {c.transaction_id for c in store.open_cases(10_000)} == flagged | audited
        case = store.open_cases(1)[0]
    result = subprocess.run(
        [sys.executable, "-m", "fraud", "review", "label", case.transaction_id, "--fraud", "--reviewer", "alice"],
        env={**run["env"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with ReviewStore(settings.review_db) as store:
        assert store.get_case(case.transaction_id).status == "labelled"
        (label,) = store.labels()
        assert (label.transaction_id, label.is_fraud, label.author) == (case.transaction_id, True, "alice")
    published = [decode_label(m.value()) for m in read_topic(settings.require_kafka(), settings.topics.labels)]
    reviews = [lb for lb in published if lb.source is LabelSource.REVIEW]
    assert [lb.transaction_id for lb in reviews] == [case.transaction_id]
    assert reviews[0].merchant_id == case.decision.transaction.merchant_id  # the stream can attribute it


def test_retrain_produces_a_new_model_version(run):
    settings = run["settings"]
    result = subprocess.run(
        [sys.executable, "-m", "fraud", "retrain"],
        env={**run["env"], "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    registry = ModelRegistry(settings.registry_dir)
    assert registry.versions() == [run["first"].challenger, "xgb-0002"]
    last = registry.history()[-1]
    assert last["challenger"] == "xgb-0002" and last["champion_before"] == run["first"].challenger
    assert last["challenger_pr_auc"] is not None and last["champion_pr_auc"] is not None


def test_metrics_count_decisions_by_outcome_and_model(run):
    version = run["first"].challenger
    assert f'fraud_decisions_total{{model_version="{version}",outcome="approve"}}' in run["metrics"]
    assert f'fraud_model_info{{version="{version}"}} 1.0' in run["metrics"]
    for stage in ("total", "features", "model", "rules", "publish"):  # reasons: only if something was flagged
        assert f'fraud_decision_latency_seconds_count{{stage="{stage}"}}' in run["metrics"], stage
    staleness_count = re.search(r"^fraud_feature_staleness_seconds_count (\S+)$", run["metrics"], re.M)
    assert staleness_count and float(staleness_count.group(1)) >= len(run["decided"])


def test_invalid_requests_are_refused_naming_the_field(run):
    client = run["client"]
    bad = pb.Transaction(
        transaction_id="bad-1",
        event_time="2026-01-10T10:00:00Z",
        card_id="c",
        customer_id="u",
        merchant_id="m",
        merchant_category="grocery",
        amount_minor=-5,
        currency="EUR",
        country="DE",
        card_country="DE",
        device_id="d",
    )
    with pytest.raises(grpc.RpcError) as err:
        client.decide(bad)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "amount_minor" in err.value.details()
    good = txn(777_777, at=run["live"][-1].event_time, card="card-unary")
    replies = client.decide_batch([bad, good])
    assert "amount_minor" in replies[0].error and not replies[0].outcome
    assert replies[1].outcome in {"approve", "flag", "block"} and replies[1].model_version
    single = client.decide(good)
    assert single.transaction_id == good.transaction_id and single.has_score


def test_monitor_replays_the_log_and_writes_the_morning_report(run, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fraud", "monitor", "--report", "--out", str(tmp_path), "--window-s", "21600"],
        env={**run["env"], "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "latest window vs training reference" in result.stdout and "score" in result.stdout
    assert "performance by payment day" in result.stdout
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["windows"]) >= 3  # the live day, in 6-hour windows
    first: dict[str, object] = {}  # every consumer of `decisions` keeps the first decision per id
    for d in read_decisions(run["settings"], idle_s=1.0):
        first.setdefault(d.transaction_id, d)
    assert sum(w["n"] for w in history["windows"]) == sum(1 for d in first.values() if d.score is not None)
    text = (tmp_path / "report.md").read_text()
    assert "## Daily performance" in text and "## Latest window" in text
    for png in ("drift.png", "score.png", "performance.png"):
        assert png in text and (tmp_path / png).stat().st_size > 10_000


def test_monitor_serve_tails_the_log_and_exports_drift_labels_and_its_lag(run):
    from deploy.embedded import free_port

    port = free_port()
    env = {**run["env"], "FRAUD_MONITOR_WINDOW_S": "21600", "FRAUD_MONITOR_METRICS_PORT": str(port)}
    monitor = subprocess.Popen([sys.executable, "-m", "fraud", "monitor", "--serve"], env=env, stderr=subprocess.PIPE)
    try:
        wanted = (
            'fraud_feature_drift_kl{feature="score"}',
            'fraud_labels_total{source="chargeback"}',
            'fraud_kafka_consumer_lag{consumer="monitor",partition="0",topic="decisions',
        )
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not all(w in text for w in wanted):
            assert monitor.poll() is None, monitor.stderr.read().decode()
            time.sleep(0.5)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        assert all(w in text for w in wanted), text
        assert 'fraud_drift_alert_firing{feature="score",kind="score"}' in text
    finally:
        monitor.terminate()
        assert monitor.wait(timeout=15) == 0  # SIGTERM: leaves the group and exits cleanly
