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


By = Annotated[str, typer.Option(help="Who makes the change (recorded in experiments.jsonl).")]
Reason = Annotated[str, typer.Option(help="Why (recorded).")]


def _experiment_store(home: Path | None):
    from experiments.store import ExperimentStore
    from fraud.config import Settings

    settings = Settings(**({"home": home} if home is not None else {}))
    return settings, ExperimentStore(settings.registry_dir)


def _refuse(exc: Exception) -> typer.Exit:
    console.print(f"[red]refused:[/red] {exc}")
    return typer.Exit(1)


@experiment_app.command()
def start(
    experiment_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Experiment YAML: arms, ramp, guardrails, holdout.")
    ],
    home: Home = None,
    by: By = "operator",
) -> None:
    """Start an A/B test: every running scorer picks it up within a second (FRAUD_RELEASE_POLL_S)
    and decides each card's payments by its arm's policy, at the first ramp step's traffic.

    Each arm's model and rule file are loaded first: a policy that cannot serve is refused here,
    not in every scorer. `fraud experiment watch` then moves the ramp, halts on guardrails and
    concludes on the sequential test (docs/experiments.md, "Running an A/B test").

    Example:

        fraud experiment start docs/examples/experiment.yaml
    """
    from experiments import ExperimentFileError, load_experiment
    from retrain import ModelLoadError, ModelRegistry
    from rules_engine import RuleFileError, load_rules

    settings, store = _experiment_store(home)
    try:
        exp = load_experiment(experiment_file)
        registry = ModelRegistry(settings.registry_dir)
        for arm in exp.arms:
            registry.load(None if arm.policy.model == "champion" else arm.policy.model)
            if arm.policy.rules is not None:
                load_rules(arm.policy.rules)
        state = store.start(exp, by=by)
    except (ExperimentFileError, ModelLoadError, RuleFileError, ValueError) as exc:
        raise _refuse(exc) from exc
    shares = ", ".join(f"{arm} {share:.1%}" for arm, share in state.shares().items())
    console.print(f"started {exp.name}: step 1 of {len(exp.ramp)}, {shares}")


@experiment_app.command()
def stop(home: Home = None, reason: Reason = "stopped by operator", by: By = "operator") -> None:
    """End the experiment: every scorer goes back to control's policy alone (the log keeps it)."""
    _, store = _experiment_store(home)
    state = store.stop(reason, by=by)
    console.print("no experiment running" if state is None else f"stopped {state.experiment.name}: {reason}")


@experiment_app.command()
def halt(home: Home = None, reason: Reason = "halted by operator", by: By = "operator") -> None:
    """Halt the experiment now (as a guardrail would): every card back on control's policy, the
    state and its log kept for the report."""
    _, store = _experiment_store(home)
    try:
        state = store.halt(reason, by=by)
    except ValueError as exc:
        raise _refuse(exc) from exc
    console.print(f"halted {state.experiment.name}: {reason}")


@experiment_app.command()
def launch(
    arm: Annotated[str, typer.Argument(help="The treatment arm that won.")],
    home: Home = None,
    reason: Reason = "launched by operator",
    by: By = "operator",
) -> None:
    """Launch a treatment: it decides every card outside the holdout; the holdout stays on
    control's policy as the long-term comparison (novelty effects fade, adaptation shows)."""
    _, store = _experiment_store(home)
    try:
        state = store.launch(arm, reason, by=by)
    except ValueError as exc:
        raise _refuse(exc) from exc
    console.print(f"launched {arm} in {state.experiment.name}; holdout {state.experiment.holdout:.1%} stays on control")


@experiment_app.command()
def watch(
    home: Home = None,
    interval: Annotated[float, typer.Option(help="Seconds between reviews of the experiment.")] = 60.0,
    once: Annotated[bool, typer.Option("--once", help="Read what is on the topics, review once, exit (cron).")] = False,
    scorer_metrics: Annotated[
        list[str] | None,
        typer.Option(
            help="A scorer's /metrics URL for the latency guardrail (repeat per scorer). "
            "Default: this machine's scorer on FRAUD_METRICS_PORT."
        ),
    ] = None,
) -> None:
    """The experiment's controller (a service: between experiments it waits for the next one):
    reads `decisions` and `labels`, and every --interval moves
    the ramp when a step has lasted its days with every guardrail inside, halts at once when a
    guardrail is breached (approval rate, p99 latency, review backlog), and concludes when the
    sequential test crosses its boundary. Every change goes to the experiment file the scorers
    follow, and to experiments.jsonl with the reason (docs/experiments.md).

    Example (beside `fraud up` and a running experiment):

        fraud experiment watch --interval 30
    """
    from fraud.config import MissingService
    from fraud.experiment_watch import watch as run_watch

    settings, _ = _experiment_store(home)
    urls = scorer_metrics or [f"http://127.0.0.1:{settings.metrics_port}/metrics"]
    try:
        run_watch(settings, urls, interval, once, say=console.print)
    except MissingService as exc:
        raise _refuse(exc) from exc
    except KeyboardInterrupt:
        console.print("stopped watching (the experiment keeps running)")


@experiment_app.command()
def simulate(
    experiment_file: Annotated[
        Path, typer.Option("--experiment", exists=True, dir_okay=False, help="Experiment YAML: arms, ramp, guardrails.")
    ],
    out: Annotated[Path, typer.Option(help="Run directory: registry/ (model, experiment state), experiment/ (logs).")],
    scenario_file: Annotated[
        Path | None,
        typer.Option("--scenario-file", exists=True, dir_okay=False, help="Simulator settings (docs/simulator.md)."),
    ] = None,
    days: Annotated[int | None, typer.Option(help="Simulated days. [default: 42, or the file's]")] = None,
    customers: Annotated[int | None, typer.Option(help="Customers. [default: 3000, or the file's]")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. [default: 7, or the file's]")] = None,
    train_days: Annotated[int, typer.Option(help="Days before the experiment starts (the first model's).")] = 14,
    review_capacity: Annotated[int, typer.Option(help="Flagged cases the stand-in analyst reviews a day.")] = 200,
    home: Home = None,
) -> None:
    """Run an A/B test offline on the simulator, day by day: simulate a world, train the first model
    on its first --train-days (or, with --home, serve that registry's champion), route each day's
    payments to the arms by the experiment state exactly as a scorer does, review flags with a
    capacity (the backlog is real), let labels arrive with their delays (blocked payments get
    none), and let the controller ramp, halt or conclude once a day. Writes OUT/experiment/
    (decisions.jsonl, labels.jsonl, snapshots.jsonl, summary.json, report/) and the state in
    OUT/registry/experiment.json.

    Example:

        fraud experiment simulate --experiment docs/examples/experiment.yaml --days 42 --out /tmp/ab
    """
    from pydantic import ValidationError

    from experiments import ExperimentFileError, load_experiment
    from experiments.simulate import simulate_ab
    from fraud.config import Settings
    from simulator import SimulationConfig, load_config

    try:
        experiment = load_experiment(experiment_file)
    except ExperimentFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--experiment") from None
    overrides = {k: v for k, v in {"days": days, "n_customers": customers, "seed": seed}.items() if v is not None}
    try:
        if scenario_file:
            config = load_config(scenario_file, **overrides)
        else:
            config = SimulationConfig(**{"days": 42, "n_customers": 3000, **overrides})
    except (ValidationError, ValueError) as exc:
        raise typer.BadParameter(f"invalid simulation settings: {exc}") from None
    registry_dir = None if home is None else Settings(home=home).registry_dir
    say = lambda line: console.print(line, highlight=False, markup=False)  # noqa: E731
    try:
        run = simulate_ab(experiment, config, out, train_days, registry_dir, review_capacity, say=say)
    except ValueError as exc:
        raise _refuse(exc) from exc
    _write_experiment_report(run.experiment, out / "experiment", out / "experiment" / "report", run.final)
    summary = run.summary()
    console.print(f"final: {summary['status']}: {summary['reason']}", highlight=False, markup=False)
    console.print(f"report: {out / 'experiment' / 'report' / 'report.md'}")


@experiment_app.command()
def report(
    out: Annotated[Path, typer.Option(help="Directory for the plots and report.md.")],
    decisions: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Decision log (JSONL of schema.Decision).")
    ] = None,
    labels: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Label log (JSONL).")] = None,
    experiment_file: Annotated[
        Path | None, typer.Option("--experiment", exists=True, dir_okay=False, help="Experiment YAML.")
    ] = None,
    snapshots: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A simulated run's snapshots.jsonl (latency, actions)."),
    ] = None,
    home: Home = None,
) -> None:
    """Per-arm plots over time (rates; the primary metric with its CI; z against the sequential
    bound; guardrails against their limits; traffic by ramp step with halts marked) and report.md
    with the verdict in words. With --home: the running experiment's state (HOME/registry) and,
    unless given, the logs in HOME/experiment/ (where `fraud experiment simulate --out HOME` puts
    them).

    Examples:

        fraud experiment report --home /tmp/ab --out /tmp/ab/report
        fraud experiment report --decisions d.jsonl --labels l.jsonl --experiment exp.yaml --out rep
    """
    experiment, state, folder = _experiment_and_logs(home, experiment_file)
    decisions = decisions or _required(folder, "decisions.jsonl", "--decisions")
    labels = labels or _required(folder, "labels.jsonl", "--labels")
    snapshots = snapshots or (folder / "snapshots.jsonl" if folder and (folder / "snapshots.jsonl").exists() else None)
    path = _write_experiment_report(experiment, None, out, state, decisions, labels, snapshots)
    console.print(f"report: {path}")


@experiment_app.command()
def status(
    decisions: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Decision log (JSONL).")] = None,
    labels: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Label log (JSONL).")] = None,
    experiment_file: Annotated[
        Path | None, typer.Option("--experiment", exists=True, dir_okay=False, help="Experiment YAML.")
    ] = None,
    home: Home = None,
) -> None:
    """The running experiment's numbers as a table: per arm (decisions, approval, flag and block
    rates, mature decisions, fraud caught, losses, false positives, expected loss, the primary
    metric, p99, open reviews) and per comparison (z, information fraction, bound, verdict).
    Reads what `report` reads.

    Example:

        fraud experiment status --home /tmp/ab
    """
    from rich.table import Table

    from experiments.analysis import DecisionLog
    from experiments.report import COMPARISON_HEADER, STATUS_HEADER, comparison_rows, status_rows, verdict_words
    from schema import Decision, Label, read_jsonl

    experiment, state, folder = _experiment_and_logs(home, experiment_file)
    decisions = decisions or _required(folder, "decisions.jsonl", "--decisions")
    labels = labels or _required(folder, "labels.jsonl", "--labels")
    log = DecisionLog.from_decisions(list(read_jsonl(decisions, Decision)))
    label_log = list(read_jsonl(labels, Label))
    snaps = _replayed_snapshots(experiment, log, label_log, folder)
    if not snaps:
        raise _refuse(ValueError(f"{decisions}: no decisions"))
    last = snaps[-1]
    for header, rows in ((STATUS_HEADER, status_rows(last)), (COMPARISON_HEADER, comparison_rows(last))):
        table = Table(*header)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"review backlog {last.review_backlog:,}; as of {last.at:%Y-%m-%d %H:%M} UTC", highlight=False)
    console.print(verdict_words(last, state), highlight=False, markup=False)


def _experiment_and_logs(home: Path | None, experiment_file: Path | None):
    """The experiment (file, or the running one's), its state (with --home) and the log folder."""
    from experiments import ExperimentFileError, load_experiment

    state = folder = None
    if home is not None:
        settings, store = _experiment_store(home)
        state = store.current()
        folder = settings.home / "experiment"
    if experiment_file is not None:
        try:
            return load_experiment(experiment_file), state, folder
        except ExperimentFileError as exc:
            raise typer.BadParameter(str(exc), param_hint="--experiment") from None
    if state is None:
        raise typer.BadParameter("give --experiment FILE, or --home with a running experiment", param_hint="--home")
    return state.experiment, state, folder


def _required(folder: Path | None, name: str, option: str) -> Path:
    if folder is None or not (folder / name).exists():
        raise typer.BadParameter(f"give {option} (not found in {folder or 'HOME/experiment'})", param_hint=option)
    return folder / name


def _replayed_snapshots(experiment, log, labels, folder: Path | None):
    import json

    from experiments.report import daily_snapshots

    path = None if folder is None else folder / "snapshots.jsonl"
    days = [json.loads(line) for line in path.read_text().splitlines()] if path and path.exists() else []
    return daily_snapshots(log, labels, experiment, days)


def _write_experiment_report(experiment, folder, out, state, decisions=None, labels=None, snapshots=None) -> Path:
    import json

    from experiments.analysis import DecisionLog
    from experiments.report import write_report
    from schema import Decision, Label, read_jsonl

    decisions = decisions or folder / "decisions.jsonl"
    labels = labels or folder / "labels.jsonl"
    snapshots = snapshots or (folder / "snapshots.jsonl" if folder else None)
    days = [json.loads(line) for line in snapshots.read_text().splitlines()] if snapshots else []
    log = DecisionLog.from_decisions(list(read_jsonl(decisions, Decision)))
    try:
        return write_report(experiment, log, list(read_jsonl(labels, Label)), out, days, state)
    except ValueError as exc:
        raise _refuse(exc) from exc


@experiment_app.command()
def evaluate(
    decisions: Annotated[Path, typer.Option(help="Logged decisions: JSON lines of schema.Decision.")],
    labels: Annotated[Path, typer.Option(help="Labels: JSON lines of schema.Label (chargebacks, review verdicts).")],
    candidate: Annotated[Path, typer.Option(help="The candidate policy (YAML: model, flag, block, rules).")],
    labels_as_of: Annotated[
        str | None, typer.Option(help="Only labels known by then (RFC 3339); default: all of them.")
    ] = None,
    level: Annotated[float, typer.Option(min=0.5, max=0.999, help="Confidence level of the intervals.")] = 0.95,
    home: Home = None,
) -> None:
    """Off-policy evaluation: what the candidate policy would have lost and stopped on the logged
    decisions, estimated with IPS and SNIPS from the exploration holdout's propensities
    (docs/experiments.md, "Off-policy evaluation").

    The candidate's model (from the registry in HOME) and rules are re-run on each decision's
    recorded features. The naive estimate (approved rows only, unweighted) is shown for contrast.

    Example: fraud experiment evaluate --decisions var/decisions.jsonl --labels var/data/labels.jsonl
    --candidate looser.yaml   (looser.yaml: "flag: 0.01")
    """
    from datetime import datetime

    from experiments import ExperimentFileError, load_policy
    from experiments.ope import evaluate_policy, format_report
    from fraud.config import Settings
    from retrain import ModelRegistry
    from schema import Decision, Label, read_jsonl

    settings = Settings(**({"home": home} if home is not None else {}))
    try:
        policy = load_policy(candidate)
        as_of = None if labels_as_of is None else datetime.fromisoformat(labels_as_of)
        logged = list(read_jsonl(decisions, Decision))
        known = list(read_jsonl(labels, Label))
        registry = ModelRegistry(settings.registry_dir)
        console.print(
            f"setup: {len(logged):,} decisions from {decisions}, {len(known):,} labels from {labels}"
            f"{'' if as_of is None else f' known by {as_of.isoformat()}'}; candidate {candidate}: model "
            f"{policy.model}, flag {policy.flag}, block {policy.block}, rules {policy.rules or 'shipped'} "
            f"(registry {settings.registry_dir})"
        )
        result = evaluate_policy(logged, known, policy, registry, labels_as_of=as_of, level=level)
    except (ExperimentFileError, ValueError, OSError) as exc:
        raise _refuse(exc) from exc
    console.print(format_report(result), soft_wrap=True, highlight=False)
