"""Monitoring: drift of live features and scores against the training reference (KL, PSI)."""

from monitoring.alerts import SustainedAlert
from monitoring.drift import DriftReference, FeatureDrift, compare, kl_divergence, psi
from monitoring.metrics import DriftGauges, export_drift
from monitoring.performance import RealisedPerformance, realised_performance, wilson_interval
from monitoring.report import format_drift_table, render_drift_table

__all__ = [
    "DriftGauges",
    "DriftReference",
    "FeatureDrift",
    "RealisedPerformance",
    "SustainedAlert",
    "compare",
    "export_drift",
    "format_drift_table",
    "kl_divergence",
    "psi",
    "realised_performance",
    "render_drift_table",
    "wilson_interval",
]
