"""The live monitor on synthetic traffic whose truth is known: which alert fires, when, and what it asks for."""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fraud.monitor_job import feed
from monitoring import DriftPolicy, DriftReference, Monitor, MonitorMetrics, MonitorPolicy, write_monitor_report
from schema import Decision, Label, LabelSource, Outcome
from tests.factories import T0, txn

PER_HOUR = 250
START = T0.replace(hour=0, minute=0)


def reference(rng: np.random.Generator) -> DriftReference:
    n = 20_000
    return DriftReference.from_samples(
        {
            "amount": rng.lognormal(3.5, 0.8, n),
            "card_txn_count_1h": rng.poisson(1.2, n).astype(float),
            "score": rng.beta(0.5, 30, n),
        }
    )


class Traffic:
    """Hour by hour payments with a fraud truth, decisions at a flag threshold, chargebacks a day later.

    ``hours(..., fraud_given_score=k)`` makes fraud a Bernoulli(k * score) draw instead (k=1: the
    scores are calibrated probabilities), and reviewers judge every flagged payment two hours on.
    """

    def __init__(self, seed: int = 0, flag_at: float = 0.05) -> None:
        self.rng = np.random.default_rng(seed)
        self.flag_at = flag_at
        self.decisions: list[Decision] = []
        self.labels: list[Label] = []

    def hours(
        self, first, last, amount_shift=0.0, score_shift=0.0, fraud_rate=0.02, fraud_seen=True, fraud_given_score=None
    ):
        for hour in range(first, last):
            self._hour(hour, amount_shift, score_shift, fraud_rate, fraud_seen, fraud_given_score)
        return self

    def _hour(self, hour, amount_shift, score_shift, fraud_rate, fraud_seen, fraud_given_score):
        rng = self.rng
        at = START + timedelta(hours=hour)
        for i in range(PER_HOUR):
            n = len(self.decisions)
            fraud = rng.random() < fraud_rate
            score = float(rng.beta(0.5, 30)) + score_shift
            if fraud_given_score is not None:
                score = float(rng.beta(0.3, 6))
                fraud = rng.random() < min(1.0, fraud_given_score * score)
            elif fraud and fraud_seen:
                score = float(rng.uniform(0.2, 0.9))
            t = txn(n, at=at, minutes=i * 60 / PER_HOUR)
            outcome = Outcome.FLAG if score >= self.flag_at else Outcome.APPROVE
            features = {
                "amount": float(rng.lognormal(3.5 + amount_shift, 0.8)),
                "card_txn_count_1h": float(rng.poisson(1.2)),
            }
            self.decisions.append(
                Decision(
                    transaction=t,
                    outcome=outcome,
                    score=min(score, 1.0),
                    model_version="m1",
                    rule_hits=[],
                    features=features,
                    decided_at=t.event_time,
                )
            )
            if fraud_given_score is not None and outcome is Outcome.FLAG:
                self.labels.append(
                    Label(
                        transaction_id=t.transaction_id,
                        is_fraud=bool(fraud),
                        source=LabelSource.REVIEW,
                        known_at=t.event_time + timedelta(hours=2),
                        author="analyst",
                    )
                )
            if fraud:
                self.labels.append(
                    Label(
                        transaction_id=t.transaction_id,
                        is_fraud=True,
                        source=LabelSource.CHARGEBACK,
                        known_at=t.event_time + timedelta(days=1),
                        author="issuer",
                    )
                )


def monitor(policy: MonitorPolicy | None = None, **kwargs) -> tuple[Monitor, list[str]]:
    asked: list[str] = []
    policy = policy or MonitorPolicy(drift=DriftPolicy(kl_threshold=0.05, sustain=3))
    return Monitor(reference(np.random.default_rng(99)), policy=policy, on_retrain=asked.append, **kwargs), asked


def test_a_feature_shift_fires_a_covariate_alert_three_windows_in_and_asks_for_no_retrain():
    traffic = Traffic().hours(0, 12).hours(12, 20, amount_shift=0.6)
    watched, asked = monitor()
    feed(watched, traffic.decisions, traffic.labels)
    watched.flush()
    fired = [a for a in watched.alerts if a["event"] == "fire"]
    assert [(a["kind"], a["name"]) for a in fired] == [("covariate", "amount")]
    assert fired[0]["at"] == (START + timedelta(hours=15)).isoformat()  # windows 12, 13, 14 over; fires at 15:00
    assert asked == [] and watched.requests == [] and watched.firing() == ["covariate:amount"]


def test_a_score_shift_asks_for_one_retrain_and_a_second_alert_the_same_day_is_rate_limited():
    traffic = Traffic().hours(0, 10).hours(10, 16, amount_shift=0.6, score_shift=0.05)
    policy = MonitorPolicy(drift=DriftPolicy(kl_threshold=0.05, sustain=3), retrain_on=("covariate", "score"))
    watched, asked = monitor(policy)
    feed(watched, traffic.decisions, traffic.labels)
    assert len(asked) == 1 and "alert" in asked[0]
    assert [r["status"] for r in watched.requests] == ["sent", "rate-limited"]


def test_recall_under_the_floor_for_two_days_is_a_performance_alert_that_asks_for_a_retrain():
    traffic = Traffic(seed=1).hours(0, 72).hours(72, 168, fraud_seen=False)  # day 3 on, the model misses fraud
    policy = MonitorPolicy(performance_days=2, performance_sustain=2, recall_floor=0.5)
    watched, asked = monitor(policy)
    feed(watched, traffic.decisions, traffic.labels)
    watched.flush()
    fired = [a for a in watched.alerts if a["kind"] == "performance" and a["event"] == "fire"]
    assert len(fired) == 1 and asked and "performance alert" in asked[0]
    assert fired[0]["at"] >= (START + timedelta(days=4)).isoformat()  # not before the change is two days old
    days = {d.day: d for d in watched.daily()}
    first, last = days[START.date().isoformat()], days[(START + timedelta(days=6)).date().isoformat()]
    assert first.realised_recall > 0.9 and first.known_fraud >= 50
    assert last.known_fraud == 0 and last.realised_recall is None  # its chargebacks are not due yet
    assert last.estimated.recall is not None and last.estimated.recall_interval[0] <= last.estimated.recall


def test_reviewers_finding_twice_the_fraud_the_scores_expect_is_a_concept_alert_that_asks_for_a_retrain():
    traffic = Traffic(seed=5, flag_at=0.2).hours(0, 72, fraud_given_score=1.0).hours(72, 144, fraud_given_score=2.0)
    policy = MonitorPolicy(performance_days=2, performance_sustain=2)
    watched, asked = monitor(policy)
    feed(watched, traffic.decisions, traffic.labels)
    watched.flush()
    fired = [a for a in watched.alerts if a["kind"] == "concept" and a["event"] == "fire"]
    assert len(fired) == 1 and fired[0]["at"] >= (START + timedelta(days=4)).isoformat()
    assert asked and asked[0].startswith("concept alert")
    before = [c for c in watched.concept_checks if c["at"] <= (START + timedelta(days=3)).isoformat()]
    assert before and all(abs(c["z"]) < 3 for c in before)  # calibrated scores: found ≈ expected
    assert watched.concept_checks[-1]["found"] > 1.5 * watched.concept_checks[-1]["expected"]


def test_the_hour_of_day_is_compared_only_in_windows_of_a_day_or_more():
    ref = reference(np.random.default_rng(98))
    ref.features["hour_of_day"] = DriftReference.from_samples(
        {"hour_of_day": np.arange(24.0).repeat(100)}, categorical=["hour_of_day"]
    ).features["hour_of_day"]
    hourly = Monitor(ref, policy=MonitorPolicy(window_s=3600))
    daily = Monitor(ref, policy=MonitorPolicy(window_s=86_400))
    assert "hour_of_day" not in hourly.names and "hour_of_day" in daily.names


def test_steady_traffic_raises_nothing():
    traffic = Traffic(seed=2).hours(0, 72)
    watched, asked = monitor()
    feed(watched, traffic.decisions, traffic.labels)
    watched.flush()
    assert watched.alerts == [] and asked == [] and len(watched.windows) == 72


def test_a_redelivered_decision_counts_once_and_a_late_one_is_counted_as_late():
    traffic = Traffic(seed=3).hours(0, 3)
    watched, _ = monitor()
    watched.observe(traffic.decisions)
    watched.observe(traffic.decisions[:10])  # redelivery
    late = Traffic(seed=4).hours(0, 1).decisions[0]
    watched.observe(
        [Decision(**{**{f: getattr(late, f) for f in late.__struct_fields__}, "transaction": txn(999_999, at=START)})]
    )
    watched.flush()
    assert [w["n"] for w in watched.windows] == [PER_HOUR] * 3 and watched.late_for_drift == 1


def test_metrics_show_the_window_statistics_alerts_labels_and_estimates():
    registry = CollectorRegistry()
    traffic = Traffic().hours(0, 12).hours(12, 30, amount_shift=0.6)
    watched, _ = monitor(metrics=MonitorMetrics(registry))
    feed(watched, traffic.decisions, traffic.labels)
    latest = {s["feature"]: s for s in watched.windows[-1]["stats"]}
    assert registry.get_sample_value("fraud_feature_drift_kl", {"feature": "amount"}) == pytest.approx(
        latest["amount"]["kl"]
    )
    assert registry.get_sample_value("fraud_drift_alert_firing", {"feature": "amount", "kind": "covariate"}) == 1.0
    assert registry.get_sample_value("fraud_drift_alert_firing", {"feature": "score", "kind": "score"}) == 0.0
    assert registry.get_sample_value("fraud_labels_total", {"source": "chargeback"}) == len(traffic.labels)
    assert registry.get_sample_value("fraud_label_delay_seconds_count") > 0
    assert 0 < registry.get_sample_value("fraud_model_estimated_recall", {"bound": "point"}) <= 1
    assert abs(registry.get_sample_value("fraud_monitor_last_window_timestamp_seconds") - time.time()) < 60


def test_the_report_has_its_tables_and_three_plots(tmp_path):
    traffic = Traffic().hours(0, 36).hours(36, 60, amount_shift=0.6)
    watched, _ = monitor()
    feed(watched, traffic.decisions, traffic.labels)
    watched.flush()
    report = write_monitor_report(watched.history(), tmp_path, "m1")
    text = report.read_text()
    assert "**covariate** on 1: amount" in text and "## Daily performance" in text and "## Alert log" in text
    for png in ("drift.png", "score.png", "performance.png"):
        assert f"({png})" in text and (tmp_path / png).stat().st_size > 10_000


def test_an_unknown_alert_kind_in_retrain_on_is_refused_naming_it():
    with pytest.raises(ValueError, match="retrain_on.*'drift'"):
        MonitorPolicy(retrain_on=("drift",))


def test_a_label_read_before_its_decision_is_held_and_applied_when_the_decision_arrives():
    traffic = Traffic(seed=6).hours(0, 30)
    in_order, _ = monitor()
    feed(in_order, traffic.decisions, traffic.labels)
    in_order.flush()
    labels_first, _ = monitor()
    labels_first.observe_labels(traffic.labels)  # e.g. the labels topic's backlog came in first
    labels_first.observe(traffic.decisions)
    labels_first.flush()
    now = traffic.decisions[-1].transaction.event_ts + 2 * 86_400
    assert [d.known_fraud for d in labels_first.daily(now)] == [d.known_fraud for d in in_order.daily(now)]
    assert sum(d.known_fraud for d in labels_first.daily(now)) == len(traffic.labels)
