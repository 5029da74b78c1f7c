"""The scenario report: a Markdown page with PNG plots, the thing to open after a run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from fraud.scenario.runner import DayRecord, ScenarioRun  # noqa: E402

TOP_FEATURES = 5  # drift plot: the features that drifted most, plus the score


def write_report(run: ScenarioRun, out_dir: Path) -> Path:
    """Write report.md, summary.json and the plots into ``out_dir``; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_drift(run, out_dir / "drift.png")
    _plot_performance(run, out_dir / "performance.png")
    _plot_decisions(run, out_dir / "decisions.png")
    _plot_caught_by(run, out_dir / "caught_by.png")
    (out_dir / "summary.json").write_text(json.dumps(run.summary(), indent=2, default=str))
    path = out_dir / "report.md"
    path.write_text(_markdown(run))
    return path


def _mark_changes(ax, run: ScenarioRun) -> None:
    by_day: dict[int, list[str]] = {}
    for change in run.story.simulation.changes:
        by_day.setdefault(change.start_day, []).append(change.name)
    for day, names in by_day.items():
        ax.axvline(day, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(
            " + ".join(names),
            (day, 0.98),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color="tab:red",
        )
    for r in run.retrains[1:]:
        if r.get("promoted"):
            ax.axvline(r["day"] + 1, color="tab:green", linestyle=":", linewidth=1.5)


def _plot_drift(run: ScenarioRun, path: Path) -> None:
    days = [d.day for d in run.days]
    peak: dict[str, float] = {}
    for d in run.days:
        for name, kl in d.kl.items():
            if name != "score":
                peak[name] = max(peak.get(name, 0.0), kl)
    top = sorted(peak, key=peak.get, reverse=True)[:TOP_FEATURES]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(days, [d.kl.get("score", float("nan")) for d in run.days], color="black", linewidth=2, label="score")
    for name in top:
        ax.plot(days, [d.kl.get(name, float("nan")) for d in run.days], linewidth=1, label=name)
    ax.axhline(run.story.story.kl_threshold, color="grey", linestyle="-.", label="alert threshold")
    _mark_changes(ax, run)
    ax.set(
        xlabel="simulated day",
        ylabel="KL divergence vs training reference (nats)",
        title="Drift per day (red: scheduled change, green: new model serving)",
    )
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def _plot_performance(run: ScenarioRun, path: Path) -> None:
    days = [d.day for d in run.days]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(
        days,
        [_nan(d.true_recall) for d in run.days],
        color="black",
        linewidth=2,
        label="true recall of the day (ground truth; the system cannot see this)",
    )
    realised = [_nan(d.realised_recall) for d in run.days]
    ax.plot(
        days,
        realised,
        color="tab:blue",
        marker="o",
        markersize=3,
        label=f"realised recall, trailing {run.story.story.performance_window_days} days (labels known that day)",
    )
    low = [d.realised_recall_interval[0] if d.realised_recall_interval else float("nan") for d in run.days]
    high = [d.realised_recall_interval[1] if d.realised_recall_interval else float("nan") for d in run.days]
    ax.fill_between(days, low, high, color="tab:blue", alpha=0.15, label="90% interval")
    ax.axhline(run.story.story.recall_floor, color="grey", linestyle="-.", label="recall floor (alert)")
    _mark_changes(ax, run)
    ax.set(
        xlabel="simulated day",
        ylabel="recall (flagged or blocked / fraud)",
        ylim=(0, 1.05),
        title="Recall as the system saw it, and as it was",
    )
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def _plot_decisions(run: ScenarioRun, path: Path) -> None:
    days = [d.day for d in run.days]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    top.plot(days, [d.payments for d in run.days], color="black")
    top.set(ylabel="payments / day", title="Decisions per day")
    flags = [d.outcomes.get("flag", 0) for d in run.days]
    blocks = [d.outcomes.get("block", 0) for d in run.days]
    bottom.bar(days, flags, color="tab:orange", label="flag (review)")
    bottom.bar(days, blocks, bottom=flags, color="tab:red", label="block")
    bottom.plot(days, [d.fraud for d in run.days], color="black", marker=".", label="fraud (ground truth)")
    bottom.set(xlabel="simulated day", ylabel="per day")
    bottom.legend(fontsize=8)
    _mark_changes(top, run)
    _mark_changes(bottom, run)
    _save(fig, path)


def _plot_caught_by(run: ScenarioRun, path: Path) -> None:
    """For each fraud pattern: caught by rules, by the model, reviewed, or missed, per day."""
    scenarios = sorted({s for d in run.days for s in d.caught_by})
    fig, axes = plt.subplots(
        len(scenarios) or 1, 1, figsize=(10, 1.8 + 1.6 * max(len(scenarios), 1)), sharex=True, squeeze=False
    )
    days = [d.day for d in run.days]
    for ax, scenario in zip(axes[:, 0], scenarios, strict=False):
        rules = [d.caught_by.get(scenario, {}).get("rules", 0) for d in run.days]
        model = [d.caught_by.get(scenario, {}).get("model", 0) for d in run.days]
        missed = [d.caught_by.get(scenario, {}).get("missed", 0) for d in run.days]
        ax.bar(days, rules, color="tab:purple", label="rules")
        ax.bar(days, model, bottom=rules, color="tab:blue", label="model")
        ax.bar(
            days,
            missed,
            bottom=[a + b for a, b in zip(rules, model, strict=True)],
            color="lightgrey",
            label="missed (approved)",
        )
        ax.set_ylabel(scenario, fontsize=8)
        _mark_changes(ax, run)
    axes[0, 0].legend(fontsize=8, loc="upper left")
    axes[0, 0].set_title("Fraud per day by pattern: who stopped it")
    axes[-1, 0].set_xlabel("simulated day")
    _save(fig, path)


def _by_model_table(run: ScenarioRun) -> list[str]:
    """How much of each fraud pattern was stopped while each model served: when a model learned what."""
    models = list(dict.fromkeys(d.model_version for d in run.days))
    totals: dict[tuple[str, str], list[int]] = {}
    for d in run.days:
        for scenario, c in d.caught_by.items():
            t = totals.setdefault((scenario, d.model_version), [0, 0])
            t[0] += c.get("fraud", 0)
            t[1] += c.get("fraud", 0) - c.get("missed", 0)
    rows = ["| pattern | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for scenario in sorted({k[0] for k in totals}):
        cells = []
        for m in models:
            fraud, stopped = totals.get((scenario, m), [0, 0])
            cells.append(f"{stopped / fraud:.0%} of {fraud}" if fraud else "-")
        rows.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return rows


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _machine() -> str:
    from fraud.bench_stream import machine_info

    info = machine_info()
    return f"{info['cpu']}, {info['cores']} cores, Python {info['python']}"


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _pooled_recall(days: list[DayRecord]) -> str:
    """Fraud stopped over fraud, summed over the days (a mean of daily ratios overweights quiet days)."""
    fraud = sum(d.fraud for d in days)
    return f"{sum(d.fraud_stopped for d in days) / fraud:.2f} ({fraud} fraud)" if fraud else "-"


def _mean(values: list[float | None]) -> str:
    real = [v for v in values if v is not None]
    return f"{sum(real) / len(real):.2f}" if real else "-"


def _phases(run: ScenarioRun) -> list[tuple[str, list[DayRecord]]]:
    """The run cut at each change's start and end and at each newly served model."""
    cuts: dict[int, str] = {}
    for c in run.story.simulation.changes:
        cuts[c.start_day] = f"{cuts[c.start_day]} + '{c.name}'" if c.start_day in cuts else f"'{c.name}'"
    cuts = {day: f"{names} active" for day, names in cuts.items()}
    for c in run.story.simulation.changes:
        if c.end_day is not None:
            cuts.setdefault(c.end_day, f"after '{c.name}' ended")
    for r in run.retrains[1:]:
        if r.get("promoted"):
            cuts[r["day"] + 1] = f"{r['challenger']} serving"
    phases, label, current = [], "before any change", []
    for d in run.days:
        if d.day in cuts:
            phases.append((label, current))
            label, current = cuts[d.day], []
        current.append(d)
    phases.append((label, current))
    return [(name, days) for name, days in phases if days]


def _markdown(run: ScenarioRun) -> str:
    story, cfg = run.story, run.story.story
    sim = story.simulation
    lines = [
        f"# Scenario `{story.name}`: {story.title}",
        "",
        story.teaches.strip(),
        "",
        "## Setup",
        f"- Simulation: {sim.n_customers:,} customers, {sim.days} days from {sim.start:%Y-%m-%d}, seed {sim.seed}; "
        f"{sum(d.payments for d in run.days):,} payments decided after the first model.",
        f"- First model `{run.first_model}`, trained at the end of day {cfg.train_days - 1} (history from day "
        f"{cfg.warmup_days}); thresholds flag {cfg.flag_threshold}, block {cfg.block_threshold}.",
        f"- Drift alert: KL > {cfg.kl_threshold} for {cfg.sustain_days} days running; performance alert: realised "
        f"recall < {cfg.recall_floor} for {cfg.sustain_days} days (windows of {cfg.performance_window_days} days, "
        f"at least {cfg.min_known_fraud} known frauds). Retrain on: {', '.join(cfg.retrain_on) or 'nothing'}.",
        f"- Review: {cfg.review_capacity_per_day} flagged cases a day, verdict known {cfg.review_delay_hours:g} h "
        "after the payment.",
        f"- Machine: {_machine()}; times: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings_s.items()),
        "",
        "## Scheduled changes",
    ]
    lines += [f"- day {c.start_day}: **{c.name}** ({c.kind}). {c.description}" for c in sim.changes] or ["- none"]
    lines += ["", "## What happened", ""]
    for d in run.days:
        lines += [f"- day {d.day}: {event}" for event in d.events]
    lines += [
        "",
        "## Key numbers",
        "",
        "| phase | days | true recall (pooled) | realised recall (mean of days) | flags/day | blocks/day |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, days in _phases(run):
        if days:
            lines.append(
                f"| {label} | {days[0].day}-{days[-1].day} | {_pooled_recall(days)} | "
                f"{_mean([d.realised_recall for d in days])} | "
                f"{sum(d.outcomes.get('flag', 0) for d in days) / len(days):.0f} | "
                f"{sum(d.outcomes.get('block', 0) for d in days) / len(days):.0f} |"
            )
    lines += [
        "",
        "## Who stopped each fraud pattern (all days after the first model)",
        "",
        "| pattern | fraud | rules | model | reviewed | missed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, c in sorted(run.summary()["caught_by"].items()):
        lines.append(
            f"| {scenario} | {c.get('fraud', 0)} | {c.get('rules', 0)} | {c.get('model', 0)} | "
            f"{c.get('review', 0)} | {c.get('missed', 0)} |"
        )
    lines += ["", "## Share of each pattern stopped, by serving model", ""] + _by_model_table(run)
    lines += [
        "",
        "## Plots",
        "![Drift per day](drift.png)",
        "",
        "How to read it: each line is one day's KL divergence against the serving model's training reference. "
        "Red dashed lines mark scheduled changes, green dotted lines the day a retrained model started serving "
        "(the reference then becomes the new model's).",
        "",
        "![Recall](performance.png)",
        "",
        "How to read it: black is what really happened (ground truth, invisible to the system); blue is what the "
        "monitor could compute each day from the labels known by then. The gap is label delay.",
        "",
        "![Decisions](decisions.png)",
        "",
        "![Who stopped it](caught_by.png)",
        "",
        "Numbers behind the plots: `summary.json` next to this file.",
    ]
    return "\n".join(lines) + "\n"
