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


@experiment_app.command()
def plan(
    experiment: Annotated[
        Path | None, typer.Option(help="Experiment YAML (metric, effect, sequential test, arms, ramp).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Simulator-shaped data folder: its labels say which payments were fraud.")
    ] = None,
    decisions: Annotated[
        Path | None, typer.Option(help="Decision log of the current policy (JSON lines of decisions).")
    ] = None,
    base_rate: Annotated[
        float | None, typer.Option(help="The primary metric's current value, when there is no decision log.")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="fraud_loss_rate | false_positive_rate | fraud_recall | approval_rate."),
    ] = None,
    effect: Annotated[float | None, typer.Option(help="Relative change worth detecting (0.2 = 20%).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Two-sided significance level.")] = None,
    power: Annotated[float | None, typer.Option(help="Chance of detecting the effect if it is real.")] = None,
    looks: Annotated[int | None, typer.Option(help="Planned analyses (equally spaced in information).")] = None,
    spending: Annotated[str | None, typer.Option(help="Alpha spending: obrien-fleming | pocock.")] = None,
    share: Annotated[
        float | None,
        typer.Option(help="Treatments' share of traffic at the ramp step the test holds at (e.g. 0.1)."),
    ] = None,
    daily_payments: Annotated[
        float | None, typer.Option(help="Payments a day (default: inferred from the data).")
    ] = None,
    truth: Annotated[
        bool, typer.Option("--truth", help="Fraud by the simulator's ground truth instead of the labels.")
    ] = False,
) -> None:
    """Before launch: the payments, cards and days an A/B test needs to detect an effect.

    The current policy's base rate and its per-card variance come from observed data: the decision
    log (--decisions) and the labels in --data; or give --base-rate (and --daily-payments or
    --data for the traffic). The test is two-sided with Lan-DeMets alpha spending over --looks
    (docs/experiments.md, "Power and sample size").

    Examples. From a base rate you know, traffic from simulated history:

        fraud simulate --home work --days 28

        fraud experiment plan --data work/data --metric approval_rate --base-rate 0.95 --effect 0.01 --share 0.1

    From the current policy's decision log (JSON lines of decisions, as the scorers publish them):

        fraud experiment plan --data work/data --decisions decisions.jsonl --metric false_positive_rate

    With the experiment file's metric, effect, looks and ramp: --experiment exp.yaml.
    """
    from experiments import ExperimentFileError, load_experiment
    from experiments.plan import PlanError, default_experiment, describe, labelled_rates, observed_rates
    from experiments.plan import plan_experiment as make_plan
    from schema import Decision, read_jsonl
    from schema.codec import InvalidEvent

    try:
        exp = load_experiment(experiment) if experiment is not None else None
        chosen = metric or (exp.primary_metric if exp else "fraud_loss_rate")
        if exp is None:
            exp = default_experiment(chosen) if chosen in _PLAN_METRICS else None
        if chosen not in _PLAN_METRICS:
            raise PlanError("--metric", f"one of {', '.join(_PLAN_METRICS)}, got {chosen!r}")
        sim = _plan_data(data, truth) if data is not None else None
        if decisions is not None:
            if sim is None:
                raise PlanError(
                    "--data", "the decision log needs the labels of --data to know which payments were fraud"
                )
            if not decisions.exists():
                raise PlanError("--decisions", f"no such file: {decisions}")
            logged = list(read_jsonl(decisions, Decision))
            base = observed_rates(chosen, logged, sim.labels, sim.truth if truth else None)
        elif base_rate is not None:
            base = labelled_rates(chosen, base_rate, sim.transactions if sim else None, sim.labels if sim else ())
        else:
            raise PlanError("--decisions", "give the current policy's decision log (with --data), or --base-rate")
        result = make_plan(
            base, exp, effect=effect, alpha=alpha, power=power, looks=looks, spending=spending,
            share=share, daily_payments=daily_payments,
        )  # fmt: skip
    except PlanError as exc:
        raise typer.BadParameter(str(exc).split(": ", 1)[1], param_hint=exc.option) from exc
    except ExperimentFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--experiment") from exc
    except InvalidEvent as exc:
        raise typer.BadParameter(str(exc), param_hint="--decisions") from exc
    for key, text in describe(result).items():
        console.print(f"  {key:<11} {text}", highlight=False, markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"  note        {note}", highlight=False, markup=False, soft_wrap=True)
    console.print(_plan_answer(result), highlight=False, markup=False, soft_wrap=True)


_PLAN_METRICS = ("fraud_loss_rate", "false_positive_rate", "fraud_recall", "approval_rate")


def _plan_data(data: Path, truth: bool):
    """The simulator's files in ``data``, or the reason they cannot be used, naming --data."""
    from experiments.plan import PlanError
    from simulator import read_simulation

    try:
        sim = read_simulation(data)
    except (OSError, ValueError) as exc:
        raise PlanError("--data", f"cannot read a simulation from {data}: {exc}") from exc
    if truth and not sim.truth:
        raise PlanError("--truth", f"{data} has no ground truth file")
    return sim


def _plan_answer(plan) -> str:
    """One sentence: what the test needs, how long that is, and what sequential looks cost."""
    n_c, n_t = plan.sequential_payments
    per_arm = (
        f"{n_t:,} payments in {plan.treatment} and {n_c:,} in control" if n_c != n_t else f"{n_t:,} payments per arm"
    )
    cards = (
        ""
        if plan.cards is None
        else f" ({plan.cards[1]:,} cards" + ("" if n_c == n_t else f" / {plan.cards[0]:,}") + ")"
    )
    kind = "O'Brien-Fleming" if plan.spending == "obrien-fleming" else "Pocock"
    fixed_t = plan.fixed_payments[1]
    return (
        f"Needs {per_arm}{cards}; at {plan.share_treatment:.0%} of cards that is {_days(plan.sequential_days)} "
        f"(ramp included). With {plan.looks} looks {kind} adds {plan.inflation - 1:+.1%} over the fixed-sample "
        f"{fixed_t:,} ({_days(plan.fixed_days)})."
    )


def _days(days: float) -> str:
    return f"{days:,.1f} days" if days < 10 else f"{days:,.0f} days"
