"""``fraud backtest``: replay history through two decision policies and compare them (experiments.backtest)."""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from experiments import Policy
    from experiments.backtest import BacktestResult
    from fraud.config import Settings

console = Console()
Home = Annotated[Path | None, typer.Option(help="Working directory (data, models, review store). Env FRAUD_HOME.")]
PolicyFile = Annotated[
    Path | None,
    typer.Option(exists=True, dir_okay=False, help="A policy file (YAML: model, flag, block, rules)."),
]
# The rows of the printed comparison: (metric, label). All of them are in backtest.json.
SHOWN = (
    ("payments", "payments"),
    ("approved", "approved"),
    ("flagged", "flagged"),
    ("blocked", "blocked"),
    ("approval_rate", "approval rate"),
    ("fraud", "fraud"),
    ("fraud_caught", "fraud caught"),
    ("fraud_missed", "fraud missed"),
    ("fraud_caught_rate", "fraud caught rate"),
    ("fraud_caught_amount", "fraud caught, money"),
    ("fraud_missed_amount", "fraud missed, money"),
    ("fraud_caught_money_rate", "fraud caught rate, money"),
    ("false_blocks", "legitimate blocked"),
    ("false_flags", "legitimate flagged"),
    ("reviewed", "reviewed"),
    ("review_overflow", "flagged, not reviewed"),
    ("wasted_reviews", "reviews of legitimate"),
    ("chargeback_loss", "chargeback loss"),
    ("review_spend", "review spend"),
    ("friction_spend", "false-block friction"),
    ("expected_loss", "expected loss"),
)


def backtest(
    home: Home = None,
    data: Annotated[
        Path | None, typer.Option(help="History directory: transactions, labels (default HOME/data).")
    ] = None,
    current: PolicyFile = None,
    proposed: PolicyFile = None,
    proposed_block: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Proposed block threshold.")] = None,
    proposed_flag: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Proposed flag threshold.")] = None,
    proposed_rules: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Proposed rule file (YAML).")
    ] = None,
    proposed_model: Annotated[str | None, typer.Option(help="Proposed model version (or champion).")] = None,
    from_day: Annotated[
        int,
        typer.Option(
            min=0,
            help="First day decided: the days before only warm the feature windows (and should cover the "
            "model's training period, or the backtest judges it on what it learnt from).",
        ),
    ] = 7,
    to_day: Annotated[
        int | None, typer.Option(min=1, help="Day after the last one decided [default: the end].")
    ] = None,
    truth: Annotated[
        bool, typer.Option("--truth", help="Fraud status from the simulator's ground truth instead of the labels.")
    ] = False,
    bootstrap: Annotated[str, typer.Option(help="Resample days or cards for the intervals.")] = "days",
    resamples: Annotated[int, typer.Option(min=1, help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed: same seed, same intervals.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Output directory (default HOME/backtest).")] = None,
    decision_log: Annotated[
        bool,
        typer.Option(
            "--decision-log",
            help="Also write every decision of each policy to OUT/decisions-<policy>.jsonl (about 2 KB each): "
            "the log `fraud experiment plan --decisions` and `fraud experiment evaluate` read.",
        ),
    ] = False,
    review_cost: Annotated[float | None, typer.Option(min=0.0, help="Cost of one review [default: 4].")] = None,
    false_block_cost: Annotated[
        float | None, typer.Option(min=0.0, help="Cost of blocking a legitimate payment [default: 15].")
    ] = None,
    chargeback_fee: Annotated[
        float | None, typer.Option(min=0.0, help="Fee on top of a missed fraud's amount [default: 20].")
    ] = None,
    review_capacity: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="Flagged payments reviewed per day; inf: all [default: FRAUD_REVIEW_CAPACITY_PER_DAY]."
        ),
    ] = None,
) -> None:
    """Replay a historical transaction log through two decision policies (current vs proposed:
    model, thresholds, rules) with the production decision engine and point-in-time features,
    and compare them per day and in total: outcomes, fraud caught and missed, false positives,
    review load vs capacity, expected loss under the cost model, and each difference with a
    paired bootstrap 95% interval. Writes backtest.json, backtest_days.csv and backtest.png to OUT.
    Current: the policy `fraud serve` runs (champion, settings' thresholds and rules) unless
    --current names a file. Assumptions and how to read the intervals: docs/experiments.md.

    \b
    Examples:
      fraud backtest --from-day 21 --proposed-block 0.8
      fraud backtest --from-day 21 --current now.yaml --proposed tighter.yaml --bootstrap cards
      fraud backtest --from-day 21 --proposed-rules strict_rules.yaml --truth
    """
    from fraud.bench_stream import machine_info
    from fraud.config import Settings

    if bootstrap not in ("days", "cards"):
        raise typer.BadParameter(f"expected days or cards, got {bootstrap!r}", param_hint="--bootstrap")
    settings = Settings(home=home) if home is not None else Settings()
    baseline = _policy(current, settings)
    overrides = {"block": proposed_block, "flag": proposed_flag, "rules": proposed_rules, "model": proposed_model}
    candidate = _policy(proposed, settings, baseline).model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    cpu = machine_info()
    console.print(f"machine: {cpu['cpu']}, {cpu['cores']} cores, Python {cpu['python']}")
    history, seconds = _replay(data or settings.data_dir, to_day)
    costs = {"review_cost": review_cost, "false_block_cost": false_block_cost, "chargeback_fee": chargeback_fee}
    run = {"from_day": from_day, "to_day": to_day, "truth": truth, "bootstrap": bootstrap}
    run |= {"resamples": resamples, "seed": seed, "review_capacity": review_capacity}
    out = out or settings.home / "backtest"
    with _decision_logs(out if decision_log else None) as on_decisions:
        result, decide_s = _run(settings, history, baseline, candidate, costs, run | {"on_decisions": on_decisions})
    _print_setup(result, seconds, decide_s, baseline == candidate)
    _print_comparison(result)
    _write(result, out)


def _policy(path: Path | None, settings: Settings, fallback: Policy | None = None) -> Policy:
    from experiments import ExperimentFileError, Policy, load_policy

    if path is not None:
        try:
            return load_policy(path)
        except ExperimentFileError as exc:
            raise typer.BadParameter(str(exc)) from exc
    if fallback is not None:
        return fallback
    # What `fraud serve` would run with these settings.
    return Policy(flag=settings.flag_threshold, block=settings.block_threshold, rules=settings.rules_file)


def _replay(data: Path, to_day: int | None):
    """Read the history and replay its point-in-time features once, up to the last day decided."""
    from experiments import ReplayedHistory
    from simulator import read_simulation

    sim = read_simulation(data)
    if not sim.transactions:
        raise typer.BadParameter(f"no transactions in {data}", param_hint="--data")
    first = min(t.event_time for t in sim.transactions)
    origin = datetime(first.year, first.month, first.day, tzinfo=UTC)
    until = None if to_day is None else origin + timedelta(days=to_day)
    started = time.perf_counter()
    with _bar() as bar:
        task = bar.add_task("replaying features", total=None)
        history = ReplayedHistory.replay(
            sim.transactions,
            sim.labels,
            sim.truth,
            until=until,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    return history, time.perf_counter() - started


def _run(
    settings: Settings, history, baseline: Policy, candidate: Policy, cost_options: dict, run: dict
) -> tuple[BacktestResult, float]:
    """Both policies over the replayed history; the result and the seconds it took."""
    from experiments.backtest import BacktestError
    from experiments.backtest import backtest as run_backtest
    from retrain import ModelRegistry
    from retrain.evaluate import CostModel
    from retrain.registry import ModelLoadError
    from rules_engine import RuleFileError

    costs = CostModel(**{k: v for k, v in cost_options.items() if v is not None})  # unset: CostModel's defaults
    capacity = _or(run.pop("review_capacity"), settings.review_capacity_per_day)
    started = time.perf_counter()
    try:
        with _bar() as bar:
            tasks: dict[str, int] = {}

            def progress(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(f"deciding: {name}", total=total)
                bar.update(tasks[name], completed=done)

            result = run_backtest(
                history,
                {"current": baseline, "proposed": candidate},
                ModelRegistry(settings.registry_dir),
                costs=costs,
                review_capacity_per_day=None if math.isinf(capacity) else capacity,
                progress=progress,
                **run,
            )
    except (BacktestError, ModelLoadError, RuleFileError) as exc:
        console.print(f"[red]backtest: {exc}[/]")
        raise typer.Exit(2) from exc
    return result, time.perf_counter() - started


@contextlib.contextmanager
def _decision_logs(out: Path | None) -> Iterator[Callable | None]:
    """A sink writing each policy's decisions to OUT/decisions-<policy>.jsonl (None: no log)."""
    if out is None:
        yield None
        return
    from schema import encode

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, IO[bytes]] = {}

    def write(policy: str, decisions: list) -> None:
        if policy not in files:
            files[policy] = (out / f"decisions-{policy}.jsonl").open("wb")
        files[policy].writelines(encode(d) + b"\n" for d in decisions)

    try:
        yield write
    finally:
        for fh in files.values():
            fh.close()
        for policy in files:
            console.print(f"decision log: {out / f'decisions-{policy}.jsonl'}")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _bar() -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def _print_setup(result: BacktestResult, replay_s: float, decide_s: float, same: bool) -> None:
    s = result.setup
    first, last = s["days"]
    capacity = s["review_capacity_per_day"]
    console.print(
        f"history: {s['history_payments']:,} payments replayed in {replay_s:.1f} s "
        f"({s['history_payments'] / max(replay_s, 1e-9):,.0f}/s); days {first}..{last - 1} decided "
        f"({s['first_date']} to {s['last_date']}, {first} warm-up days before), {s['payments']:,} payments, "
        f"{s['fraud']:,} fraud by {s['fraud_status']}"
    )
    for name, p in result.policies.items():
        console.print(f"{name:>9}: model {p.model_version}, flag {p.flag:.4g}, block {p.block:.4g}, rules {p.rules}")
    if same:
        console.print("[yellow]proposed = current: no --proposed file or override given; every difference is 0[/]")
    c = s["costs"]
    b = s["bootstrap"]
    console.print(
        f"costs: review {c['review_cost']:g}, false block {c['false_block_cost']:g}, chargeback fee "
        f"{c['chargeback_fee']:g}; review capacity {'unlimited' if capacity is None else f'{capacity:g}'} a day; "
        f"bootstrap: paired over {b['over']} ({b['clusters']:,}), {b['resamples']:,} resamples, seed {b['seed']}; "
        f"deciding both took {decide_s:.1f} s"
    )


def _print_comparison(result: BacktestResult) -> None:
    names = list(result.policies)
    base, other = names[0], names[1]
    totals = {n: result.totals(n) for n in names}
    diffs = result.differences[other]
    table = Table(title=f"{base} vs {other}, days {result.days[0]}..{result.days[-1]}; difference = {other} - {base}")
    for header in ("metric", base, other, "difference", "95% interval"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    for key, label in SHOWN:
        iv = diffs[key]
        table.add_row(
            label,
            _fmt(totals[base][key], key),
            _fmt(totals[other][key], key),
            _fmt(iv.estimate, key, signed=True),
            f"[{_fmt(iv.low, key, signed=True)}, {_fmt(iv.high, key, signed=True)}]",
        )
    console.print(table)
    for note in result.notes:
        console.print(f"- {note}")


def _fmt(value: float, key: str, signed: bool = False) -> str:
    """Rates as percentages, counts and money rounded to whole units (backtest.json keeps the cents)."""
    from experiments.backtest import RATIOS

    if value != value:
        return "-"
    sign = "+" if signed else ""
    return f"{value:{sign}.2%}" if key in RATIOS else f"{value:{sign},.0f}"


def _write(result: BacktestResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "backtest.json").write_text(result.to_json())
    rows = result.day_rows()
    with (out / "backtest_days.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(result, out / "backtest.png")
    console.print(f"written to {out}: backtest.json, backtest_days.csv, backtest.png")


def _plot(result: BacktestResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and in CI
    import matplotlib.pyplot as plt

    panels = (
        ("expected_loss", "expected loss"),
        ("fraud_caught", "fraud caught"),
        ("flagged", "review load (flagged)"),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 8), sharex=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name in result.policies:
            series = [row[key] for row in result.day_rows() if row["policy"] == name]
            ax.plot(result.days, series, marker="o", markersize=3, label=name)
        if key == "flagged" and result.review_capacity_per_day is not None:
            ax.axhline(result.review_capacity_per_day, color="grey", linestyle="--", label="review capacity")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("day")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
