"""`fraud demo`: the whole loop, end to end, on embedded services.

1. start a broker (tansu) and redis-server      6. review: open cases for flagged decisions,
2. simulate N days of payments                     a stand-in reviewer labels a sample
3. train the first model on the first days        7. retrain with chargebacks + review labels
4. start the feature stream and the scorer        8. drift: live features vs training reference
5. replay the last days live: each chunk is       9. summary
   decided over gRPC, then published to
   `transactions` (paced: the next chunk waits for the stream, as real time would)
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rich.console import Console

from fraud.config import Settings
from fraud.gateway import PacedGateway, wait_until_serving
from fraud.lifecycle import (
    intake_decisions,
    load_labels,
    read_decisions,
    record_review_label,
    redis_client,
    run_retrain,
)
from fraud.monitor_job import replay_monitor
from fraud.processes import ChildProcess
from monitoring import latest_window, render_drift_table, write_monitor_report
from schema import Decision, Outcome


@dataclass(frozen=True)
class DemoConfig:
    home: Path
    days: int = 10
    customers: int = 3000
    seed: int = 7
    live_days: int = 3
    chunk: int = 250  # transactions per DecideBatch call in the live replay
    reviewed_cases: int = 150


MALFORMED_EVENTS = [
    b'{"transaction_id": "bad-json", ',
    b'{"transaction_id": "bad-missing", "event_time": "2026-01-05T10:00:00Z"}',
    b'{"transaction_id": "bad-amount", "event_time": "2026-01-05T10:00:00Z", "card_id": "c", '
    b'"customer_id": "u", "merchant_id": "m", "merchant_category": "grocery", "amount_minor": -100, '
    b'"currency": "EUR", "country": "DE", "card_country": "DE", "device_id": "d"}',
]


def run_demo(config: DemoConfig, console: Console) -> dict[str, object]:
    from deploy import running_services

    started = time.monotonic()
    if config.home.exists():
        shutil.rmtree(config.home)
    config.home.mkdir(parents=True)
    with running_services(config.home / "services") as services:
        settings = Settings(
            home=config.home,
            kafka_bootstrap=services.kafka_bootstrap,
            redis_url=services.redis_url,
            grpc_port=_free_port(),
            metrics_port=_free_port(),
            stream_metrics_port=_free_port(),
        )
        console.rule("1. services")
        console.print(f"broker {services.kafka_bootstrap}, redis {services.redis_url}")
        summary = _loop(config, settings, console)
    summary["seconds"] = round(time.monotonic() - started, 1)
    _print_summary(summary, console)
    return summary


def _free_port() -> int:
    from deploy.embedded import free_port

    return free_port()


def _loop(config: DemoConfig, settings: Settings, console: Console) -> dict[str, object]:
    from deploy.kafka import make_producer, produce_all
    from scoring import ScorerClient
    from simulator import CovariateChange, SimulationConfig, simulate, write_simulation
    from streaming import OfflineFeatureBuilder, OnlineFeatureStore

    console.rule("2. simulate")
    # The live days bring a spending surge (covariate drift): step 8 should see it in the features.
    surge = CovariateChange(
        name="live-week-surge",
        description="Customers spend more, and more on electronics and travel, in the live days.",
        start_day=config.days - config.live_days,
        amount_factor=1.6,
        category_boost={"electronics": 0.1, "travel": 0.1},
    )
    sim = simulate(SimulationConfig(seed=config.seed, days=config.days, n_customers=config.customers, changes=(surge,)))
    write_simulation(sim, settings.data_dir)
    console.print(sim.summary())
    live_start = min(t.event_time for t in sim.transactions) + timedelta(days=config.days - config.live_days)
    history = [t for t in sim.transactions if t.event_time < live_start]
    live = [t for t in sim.transactions if t.event_time >= live_start]

    console.rule("3. train the first model")
    first = run_retrain(settings, history, sim.labels, live_start, label_maturity_days=1.0)
    console.print(
        f"model {first.challenger}: PR-AUC {first.challenger_metrics['pr_auc']:.3f} on "
        f"{first.eval_rows} held-out transactions; trained on {first.train_rows}"
    )

    console.rule("4. start the feature stream and the scorer")
    env = {
        "KAFKA_BOOTSTRAP": settings.require_kafka(),
        "REDIS_URL": settings.require_redis(),
        "FRAUD_HOME": str(settings.home),
        "FRAUD_GRPC_PORT": str(settings.grpc_port),
        "FRAUD_METRICS_PORT": str(settings.metrics_port),
        "FRAUD_STREAM_METRICS_PORT": str(settings.stream_metrics_port),
    }
    logs = settings.home / "logs"
    stream = ChildProcess("stream", ["stream"], env, logs)
    scorer = ChildProcess("serve", ["serve"], env, logs)

    def alive() -> None:
        stream.check_alive()
        scorer.check_alive()

    producer = make_producer(settings.require_kafka())
    store = OnlineFeatureStore(redis_client(settings.require_redis()), settings.key_prefix)
    try:
        with ScorerClient(f"{settings.grpc_host}:{settings.grpc_port}", timeout_s=30) as client:
            gateway = PacedGateway(client, producer, settings.topics.transactions, settings.topics.labels, store, alive)
            gateway.publish(history, [lb for lb in sim.labels if lb.known_at < live_start])
            produce_all(producer, settings.topics.transactions, ((None, raw) for raw in MALFORMED_EVENTS))
            console.print(
                f"stream applied {len(history)} historical transactions; "
                f"{len(MALFORMED_EVENTS)} malformed events sent to dead-letter"
            )
            console.rule(f"5. live: {len(live)} transactions over {config.live_days} days, decided over gRPC")
            wait_until_serving(client, 60, alive)
            live_labels = [lb for lb in sim.labels if lb.known_at >= live_start]
            decided = gateway.replay(live, config.chunk, live_labels, lambda n: _progress(console, n, len(live)))
    finally:
        scorer.stop()
        stream.stop()
    decisions = _published(settings, decided)

    console.rule("6. review")
    published = read_decisions(settings, idle_s=2.0)
    opened = intake_decisions(settings, idle_s=2.0)
    truth = {g.transaction_id: g for g in sim.truth}
    reviewed = _stand_in_reviewer(settings, config.reviewed_cases, truth)
    console.print(f"{opened} cases opened from {len(published)} published decisions; {reviewed} labelled")
    _show_top_case(console, decisions)

    console.rule("7. retrain with chargebacks and review labels")
    labels = load_labels(sim.labels, settings.review_db)
    second = run_retrain(settings, sim.transactions, labels, None, label_maturity_days=1.0)
    console.print(second.reason)

    console.rule("8. monitoring: the live days against the first model's training")
    # A few hundred payments an hour here: 3-hour windows give the drift statistics enough each.
    watched = replay_monitor(
        settings.model_copy(update={"monitor_window_s": 3 * 3600.0}), decisions, labels, version=first.challenger
    )[0]
    drift = latest_window(watched.windows)
    console.print(render_drift_table(drift, settings.drift_kl_threshold, limit=8))
    report = write_monitor_report(watched.history(), settings.home / "monitoring" / "report", first.challenger)
    firing = Counter(name.split(":")[0] for name in watched.firing())
    console.print(f"alerts firing now: {dict(firing) or 'none'}; retrain requests: {len(watched.requests)}")
    console.print(f"monitoring report: {report}")

    offline = OfflineFeatureBuilder().replay(sim.transactions, sim.labels)
    identical = sum(1 for d in decisions if d.features == offline[d.transaction_id])
    return _summary(decisions, truth, opened, reviewed, first, second, drift, identical, published)


def _show_top_case(console: Console, decisions: list[Decision]) -> None:
    """The riskiest flagged payment with the reasons an analyst sees (rules, then the model's)."""
    explained = [d for d in decisions if d.outcome is not Outcome.APPROVE and d.reasons]
    if not explained:
        console.print("no flagged decision carries reason codes (xgboost.ubj missing?)", style="yellow")
        return
    top = max(explained, key=lambda d: d.score or 0.0)
    t = top.transaction
    console.print(
        f"riskiest case {t.transaction_id}: {t.amount_minor / 100:,.2f} {t.currency} at {t.merchant_id}, "
        f"score {top.score:.3f} -> {top.outcome.value}",
        highlight=False,
    )
    for hit in top.rule_hits:
        console.print(f"  rule {hit.rule_id}: {hit.reason}", highlight=False)
    for reason in top.reasons:
        console.print(f"  model: {reason.text}  (+{reason.contribution:.2f} log-odds)", highlight=False)


def _progress(console: Console, done: int, total: int) -> None:
    if done % 5000 < 250 or done == total:
        console.print(f"  decided {done:>7,} / {total:,}")


def _published(settings: Settings, decided: list[str]) -> list[Decision]:
    """The full decision records, as published to `decisions`, in decision order."""
    by_id = {d.transaction_id: d for d in read_decisions(settings, idle_s=2.0)}
    missing = [t for t in decided if t not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} decisions never reached the `decisions` topic, e.g. {missing[:3]}")
    return [by_id[t] for t in decided]


def _stand_in_reviewer(settings: Settings, n: int, truth) -> int:
    from review_queue import ReviewStore

    with ReviewStore(settings.review_db) as store:
        cases = store.open_cases(n)
    for case in cases:
        # The analyst's verdict comes from the simulator's ground truth, an hour after the payment.
        at = case.decision.transaction.event_time + timedelta(hours=1)
        record_review_label(
            settings,
            case.transaction_id,
            truth[case.transaction_id].is_fraud,
            "stand-in-reviewer",
            "labelled from simulator ground truth",
            at=at,
        )
    return len(cases)


def _summary(decisions, truth, opened, reviewed, first, second, drift, identical, published) -> dict[str, object]:
    outcomes = Counter(d.outcome.value for d in decisions)
    fraud = [d for d in decisions if truth[d.transaction_id].is_fraud]
    caught = sum(1 for d in fraud if d.outcome is not Outcome.APPROVE)
    return {
        "transactions_scored": len(decisions),
        "decisions": dict(outcomes),
        "degraded": sum(1 for d in decisions if d.degraded_reason),
        "fraud_caught": caught,
        "fraud_missed": len(fraud) - caught,
        "cases_opened": opened,
        "cases_reviewed": reviewed,
        "model_first": first.challenger,
        "model_challenger": second.challenger,
        "challenger_promoted": second.promoted,
        "model_serving": second.serving,
        "pr_auc": {
            "champion": (second.champion_metrics or {}).get("pr_auc"),
            "challenger": second.challenger_metrics["pr_auc"],
        },
        "top_drift": [(r.feature, round(r.kl, 3)) for r in sorted(drift, key=lambda r: -(r.kl or 0)) if r.kl][:3],
        "drifted_features": f"{sum(r.over for r in drift)} of {len(drift)} in the last window (table above)",
        "online_offline_identical": f"{identical}/{len(decisions)}",
    }


def _print_summary(summary: dict[str, object], console: Console) -> None:
    console.rule("summary")
    for key, value in summary.items():
        console.print(f"{key:>26}: {value}")
