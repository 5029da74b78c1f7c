"""The monitor's Prometheus metrics, on a registry passed in (names in docs/monitoring.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from deploy.lag import ConsumerLag, consumer_lag_gauge
from schema import Label

if TYPE_CHECKING:
    from monitoring.detector import WindowDrift
    from monitoring.watch import DayPerformance

# Review verdicts arrive in hours, chargebacks in days to weeks.
LABEL_DELAY_BUCKETS = tuple(h * 3600.0 for h in (1, 4, 12, 24, 48, 72, 7 * 24, 14 * 24, 30 * 24, 60 * 24, 90 * 24))
BOUNDS = ("point", "lower", "upper")


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.kl = Gauge(
            "fraud_feature_drift_kl",
            "KL(live window || training), nats; feature=score for the score",
            ["feature"],
            registry=r,
        )
        self.psi = Gauge("fraud_feature_drift_psi", "PSI of the live window vs training", ["feature"], registry=r)
        self.drift_firing = Gauge(
            "fraud_drift_alert_firing",
            "1 while the monitor's sustained drift alert fires (kind: covariate for features, score for the score)",
            ["feature", "kind"],
            registry=r,
        )
        self.last_window = Gauge(
            "fraud_monitor_last_window_timestamp_seconds",
            "Wall-clock time the monitor last closed a window (staleness: time() minus this)",
            registry=r,
        )
        self.realised_recall = _bounded("fraud_model_realised_recall", "Recall from the labels known so far", r)
        self.realised_precision = _bounded(
            "fraud_model_realised_precision", "Precision among labelled stopped payments", r
        )
        self.estimated_recall = _bounded("fraud_model_estimated_recall", "Confidence-based recall estimate", r)
        self.estimated_precision = _bounded("fraud_model_estimated_precision", "Confidence-based precision estimate", r)
        self.maturity = Gauge(
            "fraud_model_label_maturity", "Expected share of the judged day's fraud labels already known", registry=r
        )
        self.performance_firing = Gauge(
            "fraud_performance_alert_firing", "1 while realised recall stays under its floor", registry=r
        )
        self.calibration_gap = Gauge(
            "fraud_model_calibration_gap_z",
            "Frauds reviewers found minus frauds the calibrated scores expect, in standard deviations",
            registry=r,
        )
        self.concept_firing = Gauge(
            "fraud_concept_alert_firing", "1 while the calibration gap stays beyond its limit", registry=r
        )
        self.labels = Counter("fraud_labels", "Labels received, by source (review, chargeback)", ["source"], registry=r)
        self.label_delay = Histogram(
            "fraud_label_delay_seconds",
            "Label time minus the payment's event time",
            buckets=LABEL_DELAY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = ConsumerLag(consumer_lag_gauge(r), "monitor")
        self.retrain_requests = Counter(
            "fraud_retrain_requests", "Retrain requests sent by the monitor, by alert kind", ["reason"], registry=r
        )

    def window_closed(self, stats: Sequence[WindowDrift], firing: dict[tuple[str, str], bool]) -> None:
        for s in stats:
            if s.kl is not None:
                self.kl.labels(feature=s.feature).set(s.kl)
                self.psi.labels(feature=s.feature).set(s.psi or 0.0)
        for (kind, feature), on in firing.items():
            self.drift_firing.labels(feature=feature, kind=kind).set(1.0 if on else 0.0)
        self.last_window.set_to_current_time()

    def performance_judged(self, days: Sequence[DayPerformance], firing: bool) -> None:
        self.performance_firing.set(1.0 if firing else 0.0)
        if not days:
            return
        day = days[-1]
        _set(self.realised_recall, day.realised_recall, day.realised_recall_interval)
        _set(self.realised_precision, day.realised_precision, day.realised_precision_interval)
        _set(self.estimated_recall, day.estimated.recall, day.estimated.recall_interval)
        _set(self.estimated_precision, day.estimated.precision, day.estimated.precision_interval)
        if day.maturity is not None:
            self.maturity.set(day.maturity)

    def concept_judged(self, gap_z: float | None, firing: bool) -> None:
        self.concept_firing.set(1.0 if firing else 0.0)
        if gap_z is not None:
            self.calibration_gap.set(gap_z)

    def count_label(self, label: Label, payment_ts: float | None) -> None:
        self.labels.labels(source=label.source.value).inc()
        if payment_ts is not None:
            self.label_delay.observe(max(label.known_at.timestamp() - payment_ts, 0.0))

    def retrain_requested(self, kind: str) -> None:
        self.retrain_requests.labels(reason=kind).inc()


def _bounded(name: str, doc: str, registry: CollectorRegistry) -> Gauge:
    return Gauge(name, f"{doc} (bound: point, lower and upper of the 90% interval)", ["bound"], registry=registry)


def _set(gauge: Gauge, point: float | None, interval: tuple[float, float] | None) -> None:
    if point is None:
        return
    gauge.labels(bound="point").set(point)
    if interval is not None:
        gauge.labels(bound="lower").set(interval[0])
        gauge.labels(bound="upper").set(interval[1])
