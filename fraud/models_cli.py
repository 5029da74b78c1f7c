"""``fraud models``: the model registry and releases (list, shadow, canary, promote, rollback).

Every command edits the registry's release records; running scorers poll them (every
``FRAUD_RELEASE_POLL_S``, default 1 s) and swap models without a restart or a failed request.
Every change is appended to ``promotions.jsonl`` with who and why. The release process:
docs/model-lifecycle.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fraud.config import Settings

models_app = typer.Typer(
    no_args_is_help=True,
    help="The model registry and releases: list versions; run a challenger in shadow or canary; promote; roll back.",
)
console = Console()

Home = Annotated[Path | None, typer.Option(help="Working directory (data, models, review store). Env FRAUD_HOME.")]
By = Annotated[str, typer.Option(help="Who makes the change (recorded).")]
Reason = Annotated[str, typer.Option(help="Why (recorded).")]


def _registry(home: Path | None):
    from retrain import ModelRegistry

    settings = Settings(**({"home": home} if home is not None else {}))
    return ModelRegistry(settings.registry_dir)


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """A refused release change prints why and exits 1, without a traceback."""
    from retrain import ModelLoadError

    try:
        yield
    except (ValueError, ModelLoadError) as exc:
        console.print(f"refused: {exc}", style="red", highlight=False)
        raise typer.Exit(1) from None


def _pct(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


@models_app.command("list")
def list_models(home: Home = None) -> None:
    """Every registered version with its lineage, metrics and operating thresholds, and its role."""
    registry = _registry(home)
    champion, running = registry.champion(), registry.challenger()
    table = Table(
        "version", "role", "label cut-off", "train rows/fraud", "PR-AUC", "recall@flag", "flag/block", "parent"
    )
    for version in registry.versions():
        meta = registry.metadata(version)
        metrics, point = meta.get("metrics", {}), meta.get("operating_point") or {}
        role = "champion" if version == champion else ""
        if running and running["version"] == version:
            role = f"{running['mode']}" + (f" {running['share']:.0%}" if running["mode"] == "canary" else "")
        table.add_row(
            version,
            role,
            (meta.get("label_cutoff") or meta.get("as_of") or "-")[:16],
            f"{meta.get('train_rows', '-')}/{meta.get('train_fraud', '-')}",
            _pct(metrics.get("pr_auc")),
            _pct(metrics.get("recall_at_flag")),
            f"{point['flag']:.3f}/{point['block']:.3f}" if point else "default",
            meta.get("parent_version") or "-",
        )
    console.print(table)


@models_app.command()
def show(version: str, home: Home = None) -> None:
    """One version's full metadata (without its drift reference histograms)."""
    import json

    meta = _registry(home).metadata(version)
    meta.pop("drift_reference", None)
    console.print_json(json.dumps(meta))


@models_app.command()
def shadow(version: str, home: Home = None, by: By = "operator") -> None:
    """Score every payment with VERSION too and log its decisions to `decisions-shadow`; never act on them."""
    with _refusals():
        _registry(home).start_challenger(version, "shadow", by=by)
    console.print(f"{version} runs in shadow; scorers pick it up within a poll interval")


@models_app.command()
def canary(
    version: str,
    share: Annotated[float, typer.Option(help="Share of cards VERSION decides (stable hash of the card id).")] = 0.05,
    by: By = "operator",
    min_decisions: Annotated[int, typer.Option(help="Canary decisions before the guard judges.")] = 2000,
    max_flag_ratio: Annotated[float, typer.Option(help="Roll back if canary flag rate > this x champion's.")] = 2.0,
    max_block_ratio: Annotated[float, typer.Option(help="Roll back if canary block rate > this x champion's.")] = 2.0,
    max_latency_ratio: Annotated[float, typer.Option(help="Roll back if canary model time > this x champion's.")] = 3.0,
    home: Home = None,
) -> None:
    """Let VERSION decide SHARE of cards; the scorers roll it back by themselves when its flag rate,
    block rate or model latency leaves the guard band against the champion's."""
    guard = {
        "min_decisions": min_decisions,
        "max_flag_rate_ratio": max_flag_ratio,
        "max_block_rate_ratio": max_block_ratio,
        "max_latency_ratio": max_latency_ratio,
    }
    with _refusals():
        _registry(home).start_challenger(version, "canary", share=share, guard=guard, by=by)
    console.print(f"{version} decides {share:.1%} of cards; guard {guard}")


@models_app.command()
def promote(version: str, home: Home = None, by: By = "operator", reason: Reason = "promoted by hand") -> None:
    """Make VERSION the champion (hot: scorers swap at their next poll; no restart)."""
    registry = _registry(home)
    with _refusals():
        registry.load(version)  # refuse a model that cannot serve before any scorer sees it
        registry.promote(version, {"reason": reason, "by": by})
    console.print(f"{version} is the champion")


@models_app.command()
def rollback(home: Home = None, by: By = "operator", reason: Reason = "rolled back by hand") -> None:
    """Serve the previous champion again (hot)."""
    with _refusals():
        console.print(f"{_registry(home).rollback(reason, by)} is the champion again")


@models_app.command()
def stop(home: Home = None, by: By = "operator", reason: Reason = "stopped by hand") -> None:
    """End the running shadow or canary; the champion decides everything."""
    running = _registry(home).stop_challenger("stop", reason, by)
    console.print("no challenger was running" if running is None else f"stopped {running['mode']} {running['version']}")


@models_app.command()
def history(home: Home = None, last: Annotated[int, typer.Option(help="Entries to show.")] = 20) -> None:
    """Promotions, refusals, shadows, canaries and rollbacks, newest last."""
    table = Table("at", "event", "version", "by", "reason")
    for entry in _registry(home).history()[-last:]:
        table.add_row(
            entry["at"][:19], entry["event"], entry["version"], entry.get("by", "retrain"), entry.get("reason", "")
        )
    console.print(table)
