"""Human-readable drift tables."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from monitoring.drift import FeatureDrift


def _row(r: FeatureDrift) -> tuple[str, str, str, str, str]:
    fmt = "-" if r.kl is None else f"{r.kl:.4f}"
    return (
        r.feature,
        fmt,
        "-" if r.psi is None else f"{r.psi:.4f}",
        str(r.n_current),
        "DRIFT" if r.drifted else r.note,
    )


def render_drift_table(results: Sequence[FeatureDrift], threshold: float) -> Table:
    table = Table("feature", "KL", "PSI", "n", f"flag (KL > {threshold})", title="drift vs training reference")
    for r in results:
        table.add_row(*_row(r), style="bold red" if r.drifted else None)
    return table


def format_drift_table(results: Sequence[FeatureDrift], threshold: float) -> str:
    lines = [f"{'feature':<32} {'KL':>8} {'PSI':>8} {'n':>7}  flag (KL > {threshold})"]
    lines += [f"{f:<32} {kl:>8} {p:>8} {n:>7}  {flag}" for f, kl, p, n, flag in map(_row, results)]
    return "\n".join(lines)
