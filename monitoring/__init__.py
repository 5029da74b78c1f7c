"""Monitoring: drift of live features and scores against the training reference (KL, PSI),
model performance as labels mature (realised, and estimated before they arrive), alerts, reports."""

from monitoring.alerts import SustainedAlert
from monitoring.detector import DriftDetector, DriftPolicy, WindowDrift
from monitoring.drift import DriftReference, FeatureDrift, compare, kl_divergence, psi
from monitoring.estimate import EstimatedPerformance, ScoreCalibration, estimate_performance, label_maturity
from monitoring.metrics import MonitorMetrics
from monitoring.performance import RealisedPerformance, realised_performance, wilson_interval
from monitoring.report import format_drift_table, render_drift_table, write_monitor_report
from monitoring.watch import ALERT_KINDS, DayPerformance, Monitor, MonitorPolicy, latest_window

__all__ = [
    "ALERT_KINDS",
    "DayPerformance",
    "DriftDetector",
    "DriftPolicy",
    "DriftReference",
    "EstimatedPerformance",
    "FeatureDrift",
    "Monitor",
    "MonitorMetrics",
    "MonitorPolicy",
    "RealisedPerformance",
    "ScoreCalibration",
    "SustainedAlert",
    "WindowDrift",
    "compare",
    "estimate_performance",
    "format_drift_table",
    "kl_divergence",
    "label_maturity",
    "latest_window",
    "psi",
    "realised_performance",
    "render_drift_table",
    "wilson_interval",
    "write_monitor_report",
]
