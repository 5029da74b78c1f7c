"""``fraud score-batch``: score a file of transactions offline with a registered model
(experiments/score_batch.py; docs/experiments.md "Batch scoring")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def score_batch(
    source: Annotated[
        Path,
        typer.Argument(
            help="Transactions to score, .parquet or .csv, with the simulator's columns.",
            metavar="INPUT",
            exists=True,
            dir_okay=False,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Where the scores go, .parquet or .csv (default: INPUT's name + .scores.parquet)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="The label log (.parquet, .jsonl or .csv) for the merchant fraud-rate features; "
            "each label counts from its known_at on. Without it no fraud is known.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Registry version, e.g. xgb-0003 (default: the policy's, else the champion).")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="A policy file (YAML: model, flag, block, rules; docs/experiments.md). "
            "--model/--flag/--block override its fields.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    flag: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Flag at or above this score (default: the model's own).")
    ] = None,
    block: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Block at or above this score (default: the model's own).")
    ] = None,
    no_rules: Annotated[
        bool, typer.Option("--no-rules", help="Decide on the score alone (default: the rules are a floor).")
    ] = False,
    predictor: Annotated[
        str,
        typer.Option(
            help="auto (time both on the first rows, run the faster), onnxruntime or xgboost. "
            "Either way, a sample of every chunk is checked against the served ONNX model."
        ),
    ] = "auto",
    home: Annotated[
        Path | None, typer.Option(help="Working directory; the registry is HOME/registry. Env FRAUD_HOME.")
    ] = None,
) -> None:
    """Score a file of transactions offline, as the decision path would decide them.

    Every row gets point-in-time features from the rows before it (the online feature code,
    replayed), a score from the registered model, and an outcome: the thresholds' outcome, raised
    by any rule that fires. Writes transaction_id, score, outcome, rule_ids (";"-separated) and
    model_version per row, then prints rows/s per stage, the outcome counts, the predictor and the
    machine. A file with a bad row (missing column, wrong type, bad time) is refused with the first
    problems named by row and column, and no output is written.

    \b
    Examples:
      fraud simulate --days 14 --format parquet       a history in var/data
      fraud train                                      a champion in var/registry
      fraud score-batch var/data/transactions.parquet --labels var/data/labels.parquet \\
          --out var/scores.parquet
      fraud score-batch payments.csv --model xgb-0002 --flag 0.5 --block 0.9 --no-rules
      fraud score-batch payments.parquet --policy challenger.yaml --out scores.csv
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from experiments.config import ExperimentFileError, Policy, load_policy
    from experiments.score_batch import BatchInputError, PredictorMismatch, format_summary
    from experiments.score_batch import score_batch as run_score_batch
    from fraud.config import Settings
    from retrain.registry import ModelLoadError
    from rules_engine import RuleFileError

    if predictor not in ("auto", "onnxruntime", "xgboost"):
        raise typer.BadParameter(f"expected auto, onnxruntime or xgboost, got {predictor!r}", param_hint="--predictor")
    try:
        chosen = load_policy(policy) if policy is not None else Policy()
        updates = {k: v for k, v in {"model": model, "flag": flag, "block": block}.items() if v is not None}
        chosen = Policy.model_validate({**chosen.model_dump(), **updates})
    except (ExperimentFileError, ValueError) as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    destination = out or source.with_name(f"{source.stem}.scores.parquet")
    columns = [TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("reading", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            summary = run_score_batch(
                source,
                destination,
                (Settings(home=home) if home is not None else Settings()).registry_dir,
                policy=chosen,
                labels_path=labels,
                use_rules=not no_rules,
                predictor=predictor,  # type: ignore[arg-type]
                progress=progress,
            )
    # ValueError: thresholds that contradict (a --flag above the model's own block threshold).
    except (BatchInputError, ExperimentFileError, ModelLoadError, PredictorMismatch, RuleFileError, ValueError) as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(1) from exc
    console.print(format_summary(summary), markup=False, highlight=False)
