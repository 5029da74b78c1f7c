"""Prometheus gauges for drift, on a registry passed in."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge

from monitoring.drift import FeatureDrift


class DriftGauges:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.kl = Gauge(
            "fraud_feature_drift_kl", "KL(live || training) per feature", ["feature"], registry=self.registry
        )
        self.psi = Gauge(
            "fraud_feature_drift_psi", "PSI live vs training per feature", ["feature"], registry=self.registry
        )
        self.alert = Gauge(
            "fraud_feature_drift_alert",
            "1 when the feature's KL is over threshold",
            ["feature"],
            registry=self.registry,
        )


def export_drift(results: Iterable[FeatureDrift], gauges: DriftGauges) -> None:
    for r in results:
        if r.kl is None:
            continue
        gauges.kl.labels(feature=r.feature).set(r.kl)
        gauges.psi.labels(feature=r.feature).set(r.psi or 0.0)
        gauges.alert.labels(feature=r.feature).set(1.0 if r.drifted else 0.0)
