"""``fraud experiment report``: per-arm plots over time and the test's verdict, from the logs.

The daily snapshots are recomputed from the decision and label logs (``analysis.snapshot`` at
each UTC midnight, the looks taken as the controller takes them), so a report can be written for
any log, simulated or exported from production. What the logs cannot say (decision latency, the
state the controller put the experiment in each day) comes from a simulated run's
``snapshots.jsonl`` when given; without it the traffic plot shows each arm's measured share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from experiments import stats
from experiments.analysis import DIRECTION, DecisionLog, SequentialPlan, Snapshot, snapshot
from experiments.config import CONTROL_ARM, Experiment
from experiments.replay import DAY_S
from experiments.store import ExperimentState
from schema import Label

COLOURS = {"control": "#1f77b4", "holdout": "#7f7f7f"}


def daily_snapshots(
    log: DecisionLog,
    labels: Sequence[Label],
    experiment: Experiment,
    days: Sequence[dict[str, Any]] = (),
    until: datetime | None = None,
) -> list[Snapshot]:
    """A snapshot at the end of every day from the first decision's day to ``until`` (default:
    the last decision's day), the sequential looks carried from day to day."""
    if len(log) == 0:
        return []
    first = math.floor(log.event_ts.min() / DAY_S) * DAY_S
    last = (until.timestamp() if until else math.floor(log.event_ts.max() / DAY_S) * DAY_S + DAY_S) - 1
    by_end = {round(datetime.fromisoformat(d["snapshot"]["at"]).timestamp()): d for d in days}
    plans: dict[str, SequentialPlan] = {}
    out: list[Snapshot] = []
    end = first + DAY_S
    while end <= last + 1:
        at = datetime.fromtimestamp(end, tz=UTC)
        day = by_end.get(round(end))
        backlog = None if day is None else day["snapshot"]["review_backlog"]
        snap = snapshot(log, labels, experiment, at, plans, review_backlog=backlog)
        if day is not None:  # latency p99 as measured in the run (the log has no latencies)
            snap = _with_p99(snap, day)
        plans = snap.plans
        out.append(snap)
        end += DAY_S
    return out


def _with_p99(snap: Snapshot, day: dict[str, Any]) -> Snapshot:
    arms = dict(snap.arms)
    for name, m in day["snapshot"]["arms"].items():
        if name in arms and m.get("p99_ms") is not None:
            arms[name] = replace(arms[name], p99_ms=m["p99_ms"], latency_samples=m.get("latency_samples", 0))
    return replace(snap, arms=arms)


def write_report(
    experiment: Experiment,
    log: DecisionLog,
    labels: Sequence[Label],
    out: Path,
    days: Sequence[dict[str, Any]] = (),
    state: ExperimentState | None = None,
) -> Path:
    """Write the plots and ``report.md`` to ``out``; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    snaps = daily_snapshots(log, labels, experiment, days)
    if not snaps:
        raise ValueError("the decision log is empty: nothing to report")
    shares = _daily_shares(log, snaps)
    plots = [
        _plot_rates(snaps, out / "rates.png"),
        _plot_primary(snaps, experiment, out / "primary.png"),
        _plot_sequential(snaps, experiment, out / "sequential.png"),
        _plot_guardrails(snaps, experiment, out / "guardrails.png"),
        _plot_traffic(snaps, shares, days, out / "traffic.png"),
    ]
    path = out / "report.md"
    path.write_text(_markdown(experiment, snaps[-1], state, days, plots))
    return path


# -- series ----------------------------------------------------------------------------------------


def _dates(snaps: Sequence[Snapshot]) -> list[datetime]:
    return [s.at - timedelta(days=1) for s in snaps]


def _arm_names(snaps: Sequence[Snapshot]) -> list[str]:
    return list(snaps[-1].arms)


def _daily_shares(log: DecisionLog, snaps: Sequence[Snapshot]) -> dict[str, list[float]]:
    """Each arm's share of the day's decisions (what was served, measured)."""
    out: dict[str, list[float]] = {a: [] for a in _arm_names(snaps)}
    for s in snaps:
        day = (log.event_ts < s.at.timestamp()) & (log.event_ts >= s.at.timestamp() - DAY_S)
        n = max(1, int(day.sum()))
        for arm in out:
            out[arm].append(float((day & (log.arm == arm)).sum()) / n)
    return out


def _colour(arm: str, i: int) -> str:
    return COLOURS.get(arm, f"C{i + 1}")


def _series(snaps: Sequence[Snapshot], arm: str, attr: str) -> list[float]:
    return [np.nan if (v := getattr(s.arms[arm], attr)) is None else v for s in snaps]


# -- plots -----------------------------------------------------------------------------------------


def _plot_rates(snaps: Sequence[Snapshot], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharex=True)
    for ax, attr, title in zip(
        axes, ("approval_rate", "flag_rate", "block_rate"), ("approval", "flag", "block"), strict=True
    ):
        for i, arm in enumerate(_arm_names(snaps)):
            ax.plot(_dates(snaps), _series(snaps, arm, attr), label=arm, color=_colour(arm, i))
        ax.set_title(f"{title} rate (cumulative, all decisions)")
        ax.tick_params(axis="x", rotation=45)
    axes[0].legend()
    return _save(fig, path)


def _plot_primary(snaps: Sequence[Snapshot], experiment: Experiment, path: Path) -> Path:
    import matplotlib.pyplot as plt

    metric = experiment.primary_metric
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4))
    for i, arm in enumerate(_arm_names(snaps)):
        left.plot(_dates(snaps), _series(snaps, arm, "primary"), label=arm, color=_colour(arm, i))
    left.set_title(f"{metric} per arm (mature decisions)")
    left.legend()
    for i, name in enumerate(snaps[-1].comparisons):
        cs = [s.comparisons[name] for s in snaps]
        diff = np.array([np.nan if c.difference is None else c.difference for c in cs])
        lo = np.array([np.nan if c.ci95 is None else c.ci95[0] for c in cs])
        hi = np.array([np.nan if c.ci95 is None else c.ci95[1] for c in cs])
        right.plot(_dates(snaps), diff, color=_colour(name, i), label=f"{name} - control")
        right.fill_between(_dates(snaps), lo, hi, color=_colour(name, i), alpha=0.2, label="95% CI (one look)")
    right.axhline(0.0, color="black", lw=0.8)
    right.set_title("difference vs control, card-clustered 95% CI")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def _plot_sequential(snaps: Sequence[Snapshot], experiment: Experiment, path: Path) -> Path:
    import matplotlib.pyplot as plt

    seq = experiment.sequential
    alpha = seq.alpha / len(experiment.treatments)
    fig, ax = plt.subplots(figsize=(8, 5))
    planned = np.arange(1, seq.looks + 1) / seq.looks
    bounds = stats.group_sequential_bounds(planned, alpha, seq.spending)
    finite = np.isfinite(bounds)
    ax.plot(planned[finite], bounds[finite], "k--", label=f"{seq.spending} bound (planned looks)")
    ax.plot(planned[finite], -bounds[finite], "k--")
    for i, name in enumerate(snaps[-1].comparisons):
        cs = [s.comparisons[name] for s in snaps if s.comparisons[name].z is not None]
        ax.plot(
            [c.info_fraction for c in cs],
            [c.z for c in cs],
            color=_colour(name, i),
            alpha=0.5,
            label=f"{name}: daily z",
        )
        plan = snaps[-1].plans.get(name)
        if plan and plan.looks:
            looks = stats.sequential_test([z for _, z in plan.looks], [t for t, _ in plan.looks], alpha, seq.spending)
            ax.scatter([lk.info_fraction for lk in looks], [lk.z for lk in looks], color=_colour(name, i), zorder=3)
            ax.scatter([lk.info_fraction for lk in looks], [lk.bound for lk in looks], marker="_", s=200, color="red")
            ax.scatter([lk.info_fraction for lk in looks], [-lk.bound for lk in looks], marker="_", s=200, color="red")
    sign = "lower" if DIRECTION[experiment.primary_metric] < 0 else "higher"
    ax.set_title(f"{experiment.primary_metric}: z (treatment - control) vs the sequential bound\n(better is {sign})")
    ax.set_xlabel("information fraction (effective sample / planned)")
    ax.set_ylim(-6, 6)
    ax.axhline(0.0, color="black", lw=0.5)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_guardrails(snaps: Sequence[Snapshot], experiment: Experiment, path: Path) -> Path:
    import matplotlib.pyplot as plt

    g = experiment.guardrails
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    dates = _dates(snaps)
    control = _series(snaps, CONTROL_ARM, "approval_rate")
    for i, arm in enumerate(a.name for a in experiment.treatments):
        drop = np.array(control) - np.array(_series(snaps, arm, "approval_rate"))
        axes[0].plot(dates, drop, color=_colour(arm, i), label=arm)
        axes[1].plot(dates, _series(snaps, arm, "p99_ms"), color=_colour(arm, i), label=arm)
    axes[1].plot(dates, _series(snaps, CONTROL_ARM, "p99_ms"), color=_colour(CONTROL_ARM, 0), label=CONTROL_ARM)
    axes[0].axhline(g.max_approval_drop, color="red", ls="--", label="limit")
    axes[0].set_title("approval drop vs control")
    axes[1].axhline(g.max_p99_ms, color="red", ls="--", label="limit")
    axes[1].set_title("decision p99 (ms; none without latencies)")
    axes[2].plot(dates, [s.review_backlog for s in snaps], color="black", label="open review cases")
    axes[2].axhline(g.max_review_backlog, color="red", ls="--", label="limit")
    axes[2].set_title("review backlog")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def _plot_traffic(
    snaps: Sequence[Snapshot], shares: dict[str, list[float]], days: Sequence[dict[str, Any]], path: Path
) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    dates = _dates(snaps)
    for i, (arm, values) in enumerate(shares.items()):
        ax.plot(dates, values, label=f"{arm} (measured share)", color=_colour(arm, i), marker=".")
    by_at = {d["snapshot"]["at"]: d for d in days}
    for date, s in zip(dates, snaps, strict=True):
        d = by_at.get(s.at.isoformat())
        if d is None or d["action"]["kind"] == "hold":
            continue
        colour = {"halt": "red", "conclude": "green", "advance": "grey"}.get(d["action"]["kind"], "black")
        ax.axvline(date + timedelta(days=1), color=colour, ls=":", lw=1.5)
        ax.text(date + timedelta(days=1), 0.95, d["action"]["kind"], color=colour, rotation=90, va="top", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("traffic by arm per day (ramp steps; halts in red, conclusions in green)")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=45)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- words -----------------------------------------------------------------------------------------


def verdict_words(last: Snapshot, state: ExperimentState | None) -> str:
    """The test's verdict in one paragraph."""
    parts = []
    if state is not None:
        parts.append(f"The experiment is **{state.status}** ({state.reason}).")
    for c in last.comparisons.values():
        parts.append(c.words + ".")
    if last.holdout is not None and last.holdout.z is not None:
        h = last.holdout
        parts.append(
            f"Long-term holdout: {h.treatment} vs holdout on {h.metric}: {_num(h.treatment_value)} vs "
            f"{_num(h.baseline_value)} (z {h.z:+.2f}, a fixed-sample comparison for the record, not a test)."
        )
    return " ".join(parts)


def status_rows(snap: Snapshot) -> list[list[str]]:
    """The per-arm table `fraud experiment status` prints and report.md holds."""
    rows = []
    for m in snap.arms.values():
        rows.append(
            [
                m.arm,
                f"{m.decisions:,}",
                _pct(m.approval_rate),
                _pct(m.flag_rate),
                _pct(m.block_rate),
                f"{m.mature_decisions:,}",
                f"{m.fraud_caught:,}",
                f"{m.fraud_losses:,} / {m.fraud_loss_money:,.2f}",
                f"{m.false_positives:,}",
                "-" if m.expected_loss_per_1000 is None else f"{m.expected_loss_per_1000:,.1f}",
                _num(m.primary),
                "-" if m.p99_ms is None else f"{m.p99_ms:.1f}",
                f"{m.review_open:,}",
            ]
        )
    return rows


STATUS_HEADER = [
    "arm",
    "decisions",
    "approve",
    "flag",
    "block",
    "mature",
    "fraud caught",
    "fraud losses (n / money)",
    "false positives",
    "exp. loss /1000",
    "primary",
    "p99 ms",
    "open reviews",
]


def comparison_rows(snap: Snapshot) -> list[list[str]]:
    rows = []
    for c in [*snap.comparisons.values(), *([snap.holdout] if snap.holdout else [])]:
        rows.append(
            [
                f"{c.treatment} vs {c.baseline}",
                _num(c.baseline_value),
                _num(c.treatment_value),
                "-" if c.z is None else f"{c.z:+.2f}",
                "-" if c.info_fraction is None else f"{c.info_fraction:.1%}",
                "-" if c.bound is None else f"{c.bound:.2f}",
                c.verdict,
            ]
        )
    return rows


COMPARISON_HEADER = ["comparison", "baseline", "treatment", "z", "information", "bound", "verdict"]


def _markdown(
    experiment: Experiment,
    last: Snapshot,
    state: ExperimentState | None,
    days: Sequence[dict[str, Any]],
    plots: Sequence[Path],
) -> str:
    lines = [
        f"# Experiment {experiment.name}",
        "",
        f"As of {last.at:%Y-%m-%d %H:%M} UTC. Primary metric: `{experiment.primary_metric}`; labels count once "
        f"{experiment.label_maturity_days:g} days old; sequential test {experiment.sequential.spending}, "
        f"alpha {experiment.sequential.alpha:g} over {experiment.sequential.looks} planned looks.",
        "",
        "## Verdict",
        "",
        verdict_words(last, state),
        "",
        "## Arms",
        "",
        _table(STATUS_HEADER, status_rows(last)),
        "",
        "Fraud caught counts stopped payments labelled fraud: blocked fraud is almost never labelled (it never "
        "happened), so this is mostly flagged fraud a reviewer confirmed. False positives are flagged payments a "
        "review cleared; blocked good customers leave no label. Money in major units.",
        "",
        _table(COMPARISON_HEADER, comparison_rows(last)),
        "",
        f"Review backlog: {last.review_backlog:,} open cases (limit {experiment.guardrails.max_review_backlog:,}).",
        "",
    ]
    actions = [d for d in days if d["action"]["kind"] != "hold"]
    if actions:
        lines += ["## What the controller did", ""]
        lines += [f"- day {d['day']}: **{d['action']['kind']}**: {d['action']['reason']}" for d in actions]
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
