"""``fraud experiment``: A/B tests of decision policies on live cards (docs/experiments.md).

plan (sample size and duration before launch), start and stop (the running experiment, which
scorers poll), status (per-arm metrics, the sequential test, guardrails), report (plots and the
verdict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

experiment_app = typer.Typer(
    no_args_is_help=True,
    help="A/B tests of decision policies: plan the sample size, start and stop an experiment, "
    "watch its arms and guardrails, report the verdict.",
)
console = Console()

Home = Annotated[Path | None, typer.Option(help="Working directory (data, models, review store). Env FRAUD_HOME.")]
