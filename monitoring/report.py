"""What a person reads: drift tables for the terminal, and the morning report (Markdown + PNGs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from monitoring.detector import WindowDrift


def _row(r: WindowDrift) -> tuple[str, str, str, str, str, str]:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    flag = "DRIFT" if r.over else ("too few values" if r.kl is None else "")
    return (r.feature, num(r.kl), num(r.psi), num(r.noise_floor), str(r.n), flag)


def _ordered(results: Sequence[WindowDrift]) -> list[WindowDrift]:
    return sorted(results, key=lambda r: (r.kl is None, -(r.kl or 0.0)))


def render_drift_table(results: Sequence[WindowDrift], threshold: float, limit: int = 20) -> Table:
    table = Table(
        "feature",
        "KL",
        "PSI",
        "noise floor",
        "n",
        f"over (KL > max({threshold}, floor))",
        title="latest window vs training reference",
    )
    for r in _ordered(results)[:limit]:
        table.add_row(*_row(r), style="bold red" if r.over else None)
    return table


def format_drift_table(results: Sequence[WindowDrift], threshold: float, limit: int = 20) -> str:
    header = ("feature", "KL", "PSI", "floor", "n", f"over (KL > max({threshold}, floor))")
    rows = [header, *map(_row, _ordered(results)[:limit])]
    return "\n".join(f"{f:<32} {kl:>8} {p:>8} {fl:>8} {n:>7}  {flag}" for f, kl, p, fl, n, flag in rows)


# -- the morning report ------------------------------------------------------------------------
def write_monitor_report(history: dict[str, Any], out: Path, model_version: str | None = None) -> Path:
    """report.md with drift.png, score.png and performance.png, and the history as JSON."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(history, indent=1, default=str))
    images = [
        name
        for name, draw in (
            ("drift.png", _plot_drift),
            ("score.png", _plot_score),
            ("performance.png", _plot_performance),
        )
        if draw(history, out / name)
    ]
    report = out / "report.md"
    report.write_text(_markdown(history, images, model_version))
    return report


def _markdown(history: dict[str, Any], images: list[str], model_version: str | None) -> str:
    windows, days, policy = history["windows"], history["days"], history["policy"]
    span = f"{windows[0]['start']} to {windows[-1]['start']}" if windows else "no complete window"
    lines = [
        "# Fraud model monitoring report",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} for model `{model_version or '?'}`; "
        f"{len(windows)} windows of {policy['window_s'] / 3600:g} h ({span}); {len(days)} payment days. "
        f"Drift: KL over max({policy['kl_threshold']}, noise floor at {policy['false_alarm_rate']:.0%} false alarms) "
        f"for {policy['sustain']} windows running. Performance: recall floor {policy['recall_floor']}. "
        f"Retrain on: {', '.join(policy['retrain_on']) or 'nothing'}. How to read it: docs/monitoring.md.",
        "",
        "## Firing now",
        "",
        *(_firing(history["firing"]) or ["Nothing."]),
        "",
        *_requests(history["requests"]),
        *_latest_drift(windows),
        *_daily_table(days),
        *_alert_log(history["alerts"]),
    ]
    for image in images:
        lines += [f"![{image[:-4]}]({image})", ""]
    return "\n".join(lines)


def _firing(names: list[str]) -> list[str]:
    """One line per alert kind: a shift moves dozens of features at once."""
    by_kind: dict[str, list[str]] = {}
    for name in names:
        kind, _, feature = name.partition(":")
        by_kind.setdefault(kind, []).append(feature)
    lines = []
    for kind, features in by_kind.items():
        shown = ", ".join(f for f in features[:8] if f)
        more = f" and {len(features) - 8} more" if len(features) > 8 else ""
        lines.append(f"- **{kind}**" + (f" on {len(features)}: {shown}{more}" if shown else ""))
    return lines


def _requests(requests: list[dict[str, Any]]) -> list[str]:
    if not requests:
        return ["## Retrain requests", "", "None.", ""]
    rows = [f"| {r['at']} | {r['reason']} | {r['status']} |" for r in requests]
    return ["## Retrain requests", "", "| at | reason | |", "|---|---|---|", *rows, ""]


def _latest_drift(windows: list[dict[str, Any]]) -> list[str]:
    full = [w for w in windows if any(s["kl"] is not None for s in w["stats"])]
    if not full:
        return []
    windows = full
    stats = _ordered([WindowDrift(**s) for s in windows[-1]["stats"]])[:12]
    rows = [f"| {feature} | {kl} | {p} | {fl} | {n} | {flag} |" for feature, kl, p, fl, n, flag in map(_row, stats)]
    head = f"## Latest window ({windows[-1]['start']}): most shifted"
    return [head, "", "| feature | KL | PSI | noise floor | n | |", "|---|---|---|---|---|---|", *rows, ""]


def _daily_table(days: list[dict[str, Any]]) -> list[str]:
    def ci(point: float | None, interval: Sequence[float] | None) -> str:
        if point is None:
            return "-"
        return f"{point:.2f}" + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]")

    rows = [
        f"| {d['day']} | {d['decisions']} | {d['stopped']} | {d['known_fraud']} | "
        f"{_share(d['maturity'])} | "
        f"{ci(d['realised_recall'], d['realised_recall_interval'])} | "
        f"{ci(d['estimated']['recall'], d['estimated']['recall_interval'])} | "
        f"{ci(d['realised_precision'], d['realised_precision_interval'])} | "
        f"{ci(d['estimated']['precision'], d['estimated']['precision_interval'])} |"
        for d in days
    ]
    head = "| day | decisions | stopped | known fraud | label maturity | realised recall | estimated recall "
    head += "| realised precision | estimated precision |"
    return ["## Daily performance (90% intervals)", "", head, "|---|---|---|---|---|---|---|---|---|", *rows, ""]


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _alert_log(alerts: list[dict[str, Any]]) -> list[str]:
    if not alerts:
        return []
    rows = [f"| {a['at']} | {a['kind']} | {a['name']} | {a['event']} |" for a in alerts[-40:]]
    return ["## Alert log (latest 40)", "", "| at | kind | name | event |", "|---|---|---|---|", *rows, ""]


def _plot_drift(history: dict[str, Any], path: Path) -> bool:
    import matplotlib.pyplot as plt

    windows = history["windows"]
    if not windows:
        return False
    names = [s["feature"] for s in windows[0]["stats"]]
    kl = np.array([[np.nan if s["kl"] is None else s["kl"] for s in w["stats"]] for w in windows]).T
    worst = np.nan_to_num(np.nanmax(np.where(np.isnan(kl), -1, kl), axis=1), nan=-1)
    keep = [i for i in np.argsort(-worst)[:15]]
    if names.index("score") not in keep:
        keep[-1] = names.index("score")
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(keep) + 2))
    image = ax.imshow(np.log10(np.maximum(kl[keep], 1e-4)), aspect="auto", cmap="magma", vmin=-3, vmax=0)
    over = np.array([[bool(w["stats"][i]["over"]) for w in windows] for i in keep])
    ys, xs = np.nonzero(over)
    ax.scatter(xs, ys, marker="x", color="cyan", s=12, label="over threshold and noise floor")
    ax.set_yticks(range(len(keep)), [names[i] for i in keep], fontsize=8)
    ticks = np.linspace(0, len(windows) - 1, min(8, len(windows))).astype(int)
    ax.set_xticks(ticks, [windows[t]["start"][5:16] for t in ticks], fontsize=8, rotation=20)
    fig.colorbar(image, ax=ax, label="log10 KL (nats)")
    ax.set_title("Drift per window: the 15 most shifted features and the score")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_score(history: dict[str, Any], path: Path) -> bool:
    import matplotlib.pyplot as plt

    windows = history["windows"]
    if not windows:
        return False
    reference = np.asarray(history["reference_score_counts"], dtype=float)
    latest = np.sum([w["score_counts"] for w in windows[-24:]], axis=0).astype(float)
    bounds = [0.0, *history["score_edges"], 1.0]
    labels = [f"{lo:.3g}–{hi:.3g}" for lo, hi in zip(bounds, bounds[1:], strict=False)]
    if len(labels) != len(reference):  # a score with few distinct values got one bin per value
        labels = [str(i) for i in range(len(reference))]
    x = np.arange(len(reference))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(x - 0.2, reference / reference.sum(), 0.4, label="training reference")
    ax.bar(x + 0.2, latest / max(latest.sum(), 1), 0.4, label=f"live, last {min(24, len(windows))} windows")
    ax.set_xticks(x, labels, fontsize=7, rotation=30)
    ax.set_ylabel("share of payments")
    ax.set_xlabel("score bin (training deciles)")
    ax.set_title("Score distribution vs training reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_performance(history: dict[str, Any], path: Path) -> bool:
    import matplotlib.pyplot as plt

    days = history["days"]
    if not days:
        return False
    x = np.arange(len(days))
    fig, (recall_ax, precision_ax, maturity_ax) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    _with_interval(recall_ax, x, days, "realised_recall", "realised_recall_interval", "realised (labels known)")
    _with_interval(recall_ax, x, [d["estimated"] for d in days], "recall", "recall_interval", "estimated (CBPE)")
    recall_ax.axhline(history["policy"]["recall_floor"], color="red", ls=":", label="recall floor")
    recall_ax.set_ylabel("recall")
    _with_interval(precision_ax, x, days, "realised_precision", "realised_precision_interval", "realised")
    _with_interval(precision_ax, x, [d["estimated"] for d in days], "precision", "precision_interval", "estimated")
    precision_ax.set_ylabel("precision")
    maturity = [np.nan if d["maturity"] is None else d["maturity"] for d in days]
    maturity_ax.bar(x, maturity, color="grey", label="expected share of fraud labels known")
    maturity_ax.bar(
        x,
        [d["known_fraud"] / max(max(dd["known_fraud"] for dd in days), 1) for d in days],
        width=0.3,
        color="tab:red",
        label="known frauds (scaled)",
    )
    maturity_ax.set_ylabel("label maturity")
    maturity_ax.set_xticks(x[:: max(1, len(x) // 10)], [d["day"] for d in days][:: max(1, len(x) // 10)], fontsize=8)
    for ax in (recall_ax, precision_ax, maturity_ax):
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8, loc="lower left")
    recall_ax.set_title("Daily model performance as labels mature (90% intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _with_interval(ax, x: np.ndarray, rows: list[dict[str, Any]], key: str, interval: str, label: str) -> None:
    points = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
    lower = np.array([np.nan if r[interval] is None else r[interval][0] for r in rows], dtype=float)
    upper = np.array([np.nan if r[interval] is None else r[interval][1] for r in rows], dtype=float)
    line = ax.plot(x, points, marker="o", ms=3, label=label)[0]
    ax.fill_between(x, lower, upper, color=line.get_color(), alpha=0.2)
