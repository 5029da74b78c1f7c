"""Monitoring: drift of live features and scores against the training reference (KL, PSI)."""

from monitoring.drift import DriftReference, FeatureDrift, compare, kl_divergence, psi
from monitoring.metrics import DriftGauges, export_drift
from monitoring.report import format_drift_table, render_drift_table

__all__ = [
    "DriftGauges",
    "DriftReference",
    "FeatureDrift",
    "compare",
    "export_drift",
    "format_drift_table",
    "kl_divergence",
    "psi",
    "render_drift_table",
]
