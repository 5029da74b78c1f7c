"""The ``fraud`` command: one subcommand per job.

Start here:  fraud demo            (the whole loop on embedded services, a few minutes)
Or by hand:  fraud up              (broker + Redis; leave it running)
             fraud simulate --to-kafka
             fraud stream          (features -> Redis)
             fraud train           (first model)
             fraud serve           (gRPC decisions)
             fraud review list     (the review queue)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fraud.backtest_cli import backtest
from fraud.config import MissingService, Settings
from fraud.experiment_cli import experiment_app
from fraud.models_cli import models_app
from fraud.score_batch_cli import score_batch

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None)
review_app = typer.Typer(
    no_args_is_help=True,
    help="The human review queue: list cases, label them, or serve the reviewer console (--web).",
)
app.add_typer(review_app, name="review")
app.add_typer(models_app, name="models")
app.add_typer(experiment_app, name="experiment")
app.command(name="score-batch")(score_batch)
app.command()(backtest)
console = Console()

Home = Annotated[Path | None, typer.Option(help="Working directory (data, models, review store). Env FRAUD_HOME.")]
EmbeddedRedisMasters = Annotated[
    int, typer.Option(help="Embedded Redis: 0 one redis-server, 3 or more a Redis Cluster of that many masters.")
]


def _settings(home: Path | None = None, **overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if home is not None:
        values["home"] = home
    return Settings(**values)


@app.command()
def up(
    home: Home = None,
    scale: Annotated[
        bool,
        typer.Option(
            "--scale",
            help="Also run the system scaled out: a Redis Cluster, partitioned topics, the feature stream "
            "as a bytewax cluster and several scorers (needs a trained model: `fraud simulate`, `fraud train`).",
        ),
    ] = False,
    partitions: Annotated[int, typer.Option(help="--scale: partitions of every topic.")] = 4,
    stream_procs: Annotated[int, typer.Option(help="--scale: bytewax processes of the feature stream.")] = 2,
    scorers: Annotated[int, typer.Option(help="--scale: `fraud serve` processes, a port each.")] = 2,
    redis_masters: Annotated[int, typer.Option(help="--scale: Redis Cluster masters (0: one redis-server).")] = 3,
) -> None:
    """Start a Kafka-wire broker (tansu) and redis-server on loopback, create the topics, and keep
    them running until Ctrl-C. KAFKA_BOOTSTRAP / REDIS_URL, if set, are used instead. Other
    `fraud` commands find these services through HOME/services.json.

    With --scale, the system itself runs too, scaled out on its real engines (docs/scaling.md):
    a Redis Cluster of --redis-masters masters, topics of --partitions partitions, the feature
    stream as --stream-procs cooperating bytewax processes, and --scorers scorer processes whose
    gRPC addresses are printed and recorded (callers spread calls over them round-robin)."""
    from deploy import running_services
    from fraud.scaleout import Scale, scaled_system

    settings = _settings(home)
    settings.home.mkdir(parents=True, exist_ok=True)
    shape = Scale(partitions, stream_procs, scorers, redis_masters) if scale else None
    with contextlib.ExitStack() as stack:
        services = stack.enter_context(
            running_services(
                settings.home / "services",
                kafka_bootstrap=settings.kafka_bootstrap,
                redis_url=settings.redis_url,
                topics=settings.topics,
                tansu_bin=settings.tansu_bin,
                redis_masters=shape.redis_masters if shape else 0,
                partitions=shape.partitions if shape else 1,
            )
        )
        if not settings.kafka_bootstrap:
            # A new in-memory broker: any stream snapshot holds offsets of a log that no longer exists.
            shutil.rmtree(settings.home / "recovery", ignore_errors=True)
        recorded: dict[str, object] = {"kafka_bootstrap": services.kafka_bootstrap, "redis_url": services.redis_url}
        console.print(f"Kafka bootstrap: [bold]{services.kafka_bootstrap}[/]  Redis: [bold]{services.redis_url}[/]")
        if shape:
            running = settings.model_copy(
                update={"kafka_bootstrap": services.kafka_bootstrap, "redis_url": services.redis_url}
            )
            system = stack.enter_context(scaled_system(running, shape))
            recorded["scorers"] = system.scorer_targets
            console.print(
                f"{shape.partitions} partitions per topic; feature stream: {shape.stream_processes} bytewax "
                f"process(es), metrics on {', '.join(map(str, system.stream_metrics_ports))}"
            )
            console.print(f"scorers: [bold]{', '.join(system.scorer_targets)}[/] (logs in {settings.home / 'logs'})")
        # Block both signals and wait for one, so Ctrl-C and `kill` alike stop the servers cleanly;
        # meanwhile a child of the scaled system that dies stops everything, with its log's end.
        # Blocked only now (children would inherit the mask), and before the services file tells
        # anyone we are up: a signal from then on is always waited for, never a KeyboardInterrupt.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        settings.services_file.write_text(json.dumps(recorded))
        stack.callback(settings.services_file.unlink, missing_ok=True)
        console.print(f"Services recorded in {settings.services_file}. Ctrl-C stops them.")
        while signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 2.0) is None:
            if shape:
                system.check_alive()
    console.print("stopped")


@app.command()
def simulate(
    home: Home = None,
    scenario_file: Annotated[
        Path | None,
        typer.Option(
            "--scenario-file",
            exists=True,
            dir_okay=False,
            help="A scenario file (YAML): population, fraud rates and a drift schedule of named changes "
            "by simulated day. See docs/simulator.md. The options below override it.",
        ),
    ] = None,
    days: Annotated[int | None, typer.Option(help="Simulated days. [default: 7, or the file's]")] = None,
    customers: Annotated[
        int | None, typer.Option(help="Customers, about 2 payments each a day. [default: 2000, or the file's]")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed: same seed and settings, same files. [default: 7, or the file's]")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl: one JSON transaction per line, easy to read. "
            "parquet: columnar and compact, the faster choice for big runs.",
        ),
    ] = "jsonl",
    out: Annotated[Path | None, typer.Option(help="Output directory (default HOME/data).")] = None,
    to_kafka: Annotated[bool, typer.Option("--to-kafka", help="Also produce transactions to the broker.")] = False,
) -> None:
    """Generate a reproducible stream of card payments with fraud scenarios, delayed chargeback
    labels and the ground truth (which payments were fraud, which drift changes shaped them).
    Writes transactions, labels and truth (.jsonl or .parquet) to OUT, a simulated day at a time
    (files of the other format in OUT are removed, so readers find only this run).

    \b
    Examples:
      fraud simulate                                  7 days, 2,000 customers
      fraud simulate --days 30 --customers 300000 --format parquet --out /tmp/month
                                                      a mid-size issuer's month (~18M payments)
      fraud simulate --scenario-file holiday.yaml     a drift schedule (docs/simulator.md)
    """
    from pydantic import ValidationError
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from yaml import YAMLError

    from fraud.bench_stream import machine_info
    from simulator import SimulationConfig, iter_transactions, load_config, simulate_to_files

    if fmt not in ("jsonl", "parquet"):
        raise typer.BadParameter(f"expected jsonl or parquet, got {fmt!r}", param_hint="--format")
    overrides = {k: v for k, v in {"days": days, "n_customers": customers, "seed": seed}.items() if v is not None}
    try:
        config = load_config(scenario_file, **overrides) if scenario_file else SimulationConfig(**overrides)
    except (ValidationError, YAMLError, ValueError) as exc:
        raise typer.BadParameter(f"invalid simulation settings: {exc}") from exc
    settings = _settings(home)
    out_dir = out or settings.data_dir
    changes = ", ".join(f"{c.name} ({c.kind}, day {c.start_day})" for c in config.changes) or "none"
    console.print(
        f"simulating {config.days} days, {config.n_customers:,} customers, seed {config.seed}; changes: {changes}"
    )
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[payments]}")]
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("day 0", total=config.days, payments="")

        def day_done(d) -> None:
            speed = d.transactions / d.seconds if d.seconds else 0
            rate = f"{d.transactions:,} payments, {d.fraud:,} fraud, {speed:,.0f}/s"
            bar.update(task, completed=d.day + 1, description=f"day {d.day + 1}/{d.days}", payments=rate)

        summary = simulate_to_files(config, out_dir, fmt, progress=day_done)
    for name, path in summary.pop("files").items():
        console.print(f"{name}: {path}")
    seconds, speed = summary.pop("seconds"), summary.pop("rows_per_s")
    for key, value in summary.items():
        console.print(f"{key:>18}: {value}")
    console.print(f"{summary['transactions']:,} payments in {seconds:.1f} s: {speed:,} per second")
    cpu = machine_info()
    console.print(f"machine: {cpu['cpu']}, {cpu['cores']} cores, Python {cpu['python']} (generation uses one core)")
    if to_kafka:
        from deploy.kafka import make_producer, produce_all
        from schema import encode

        producer = make_producer(settings.require_kafka())
        payments = ((t.card_id.encode(), encode(t)) for t in iter_transactions(out_dir))
        n = produce_all(producer, settings.topics.transactions, payments)
        console.print(f"produced {n} transactions to {settings.topics.transactions}")


@app.command(name="import")
def import_command(
    source: Annotated[
        Path,
        typer.Argument(help="The transaction log, .csv or .parquet.", metavar="FILE", exists=True, dir_okay=False),
    ],
    mapping: Annotated[
        list[str],
        typer.Option(
            "--map",
            metavar="TARGET=COLUMN,...",
            help="target=COLUMN pairs, comma-separated; may repeat. Required targets: time, card, merchant, amount. "
            "Optional: customer, label, country, card_country, device, category, currency, channel, "
            "transaction_id, scenario.",
        ),
    ],
    home: Home = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default HOME/data).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or parquet (default: from the suffix).")] = None,
    delimiter: Annotated[str, typer.Option(help="CSV field separator.")] = ",",
    encoding: Annotated[
        str, typer.Option(help="CSV text encoding, e.g. latin-1 or cp1252 (utf-8-sig: UTF-8, a BOM ignored).")
    ] = "utf-8-sig",
    amount_unit: Annotated[
        str, typer.Option(help="major: 12.34 means 1234 cents (rounded half to even); minor: already cents.")
    ] = "major",
    time_format: Annotated[
        str, typer.Option(help="auto (a number is epoch seconds, else ISO 8601), iso, epoch_s or epoch_ms.")
    ] = "auto",
    assume_tz: Annotated[
        str | None, typer.Option(help="Zone of times without an offset, e.g. UTC; unset: such rows are rejected.")
    ] = None,
    label_delay_days: Annotated[
        float,
        typer.Option(help="Days from a fraud payment to its chargeback label. Data rarely says: an assumption."),
    ] = 7.0,
    currency: Annotated[str, typer.Option(help="Currency when no column is mapped.")] = "EUR",
    country: Annotated[str, typer.Option(help="Merchant country when no column is mapped.")] = "DE",
    category: Annotated[str, typer.Option(help="Merchant category when no column is mapped.")] = "other",
    channel: Annotated[str, typer.Option(help="ecommerce or card_present, when no column is mapped.")] = "ecommerce",
    max_bad_fraction: Annotated[
        float, typer.Option(help="Above this share of bad rows: exit 1, write only rejected.jsonl.")
    ] = 0.01,
) -> None:
    """Import your own or public payment data: read a CSV or Parquet transaction log, write
    transactions.jsonl, labels.jsonl and truth.jsonl as `fraud simulate` does, so `fraud train`,
    `fraud retrain --data`, the stream and the scorer run on it unchanged. A row that cannot be
    imported goes to rejected.jsonl with its line number (CSV: the physical line where the record
    starts, header = 1; Parquet: the 1-based row), the field and the problem: none is dropped.

    Fraud rows (label column 1/true/yes) become chargeback labels, known a fixed number of days
    after the payment: public datasets say which payments were fraud, not when that became known,
    so the label delay is your assumption (default 7 days, as the Fraud Detection Handbook assumes).
    Unmapped targets get defaults: customer = the card, card_country = the row's country, device =
    one per card (dev-of-CARD), transaction_id = imp-LINE. Without a label column no labels and no
    truth are written: nothing is known about fraud.

    \b
    The Fraud Detection Handbook's simulated data (times without offset, taken as UTC):
      fraud import simulated-data.csv --assume-tz UTC \\
        --map transaction_id=TRANSACTION_ID,time=TX_DATETIME,card=CUSTOMER_ID \\
        --map merchant=TERMINAL_ID,amount=TX_AMOUNT,label=TX_FRAUD,scenario=TX_FRAUD_SCENARIO

    \b
    A generic CSV (semicolons, epoch milliseconds, amounts in cents):
      fraud import payments.csv --delimiter ";" --time-format epoch_ms --amount-unit minor \\
        --map time=ts,card=card_hash,merchant=shop_id,amount=cents,label=is_fraud,country=shop_country
    """
    from pydantic import ValidationError

    from simulator import ImportMapping, ImportOptions, MappingError, TooManyRejects, import_transactions

    settings = _settings(home)
    try:
        columns = ImportMapping.parse(",".join(mapping))
        options = ImportOptions(
            format=fmt,
            delimiter=delimiter,
            encoding=encoding,
            amount_unit=amount_unit,
            time_format=time_format,
            assume_tz=assume_tz,
            label_delay_days=label_delay_days,
            currency=currency,
            country=country,
            category=category,
            channel=channel,
            max_bad_fraction=max_bad_fraction,
        )
        report = import_transactions(source, out or settings.data_dir, columns, options)
        failure = None
    except ValidationError as exc:  # an option value: name the flag as the user typed it
        for err in exc.errors():
            console.print(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}", style="red", markup=False)
        raise typer.Exit(2) from exc
    except MappingError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    except TooManyRejects as exc:
        report, failure = exc.report, exc
    for r in report.first_rejects:
        column = f" ({r.column})" if r.column else ""
        console.print(f"line {r.line}: {r.field}{column}: {r.error}", markup=False)
    if report.rejected > len(report.first_rejects):
        console.print(f"... {report.rejected - len(report.first_rejects)} more", markup=False)
    for name, path in report.paths.items():
        console.print(f"{name}: {path}", markup=False)
    console.print(report.summary())
    if failure is not None:
        console.print(str(failure), style="red", markup=False)
        raise typer.Exit(1)
    if not report.labelled:
        console.print("no label column: labels.jsonl and truth.jsonl are empty; training needs labels", style="yellow")


@app.command()
def stream(
    home: Home = None,
    recovery: Annotated[
        bool | None, typer.Option("--recovery/--no-recovery", help="Resume from snapshots after a restart.")
    ] = None,
    snapshot_s: Annotated[float | None, typer.Option(help="Seconds between snapshots (default 10).")] = None,
    allowed_lateness_s: Annotated[
        float | None, typer.Option(help="Later than this behind its card's newest event: dead-letter `late`.")
    ] = None,
    process_id: Annotated[
        int | None, typer.Option(help="This process's index in a bytewax cluster (with --addresses).")
    ] = None,
    addresses: Annotated[
        str | None, typer.Option(help="Every cluster process as host:port;host:port (same list for all).")
    ] = None,
) -> None:
    """Run the bytewax feature dataflow: consume `transactions` and `labels`, keep per card,
    customer, merchant and device window aggregates in Redis, send malformed and late events to
    `dead-letter` with the reason. Runs until Ctrl-C; with recovery on (the default) a restart
    resumes from the last snapshot without counting anything twice. The processes of a cluster
    share one recovery directory (FRAUD_STREAM_RECOVERY_LAYOUT=shared, made before they start, as
    `fraud up --scale` does) or each have their own (per-process: a volume per Kubernetes pod)."""
    from prometheus_client import start_http_server

    from streaming.dataflow import (
        Cluster,
        Recovery,
        RecoveryStoreError,
        StreamConfig,
        build_flow,
        prepare_recovery,
        run_flow,
    )
    from streaming.metrics import StreamMetrics
    from streaming.online import STORE_ERRORS, connect_redis
    from streaming.recovery_registry import RedisPartitionRegistry

    settings = _settings(home)
    config = StreamConfig(
        kafka_bootstrap=settings.require_kafka(),
        redis_url=settings.require_redis(),
        key_prefix=settings.key_prefix,
        transactions_topic=settings.topics.transactions,
        labels_topic=settings.topics.labels,
        dead_letter_topic=settings.topics.dead_letter,
        allowed_lateness_s=allowed_lateness_s if allowed_lateness_s is not None else settings.allowed_lateness_s,
        shards=settings.stream_shards,
    )
    cluster = Cluster(process_id or 0, tuple(addresses.split(";"))) if addresses else None
    metrics = StreamMetrics()
    if settings.stream_metrics_port:
        port = settings.stream_metrics_port + (cluster.process_id if cluster else 0)  # one port per process
        start_http_server(port, addr=settings.metrics_host, registry=metrics.registry)
    snapshots = None
    if recovery if recovery is not None else settings.stream_recovery:
        layout = settings.stream_recovery_layout
        interval_s = snapshot_s or settings.snapshot_interval_s
        snapshots = Recovery(settings.stream_recovery_dir, interval_s, layout, settings.snapshot_base_every)
        # Per-process stores: Redis records which processes created their partition (a lost one is refused).
        registry = None
        if layout == "per-process":
            client = connect_redis(config.redis_url, socket_timeout=5.0, connect_timeout=2.0)
            registry = RedisPartitionRegistry(client, config.key_prefix)
        try:
            resumed = prepare_recovery(snapshots, config, cluster, registry)
        except RecoveryStoreError as exc:
            console.print(str(exc), style="red", markup=False)
            raise typer.Exit(2) from exc
        except STORE_ERRORS as exc:
            console.print(f"recovery: Redis unreachable ({type(exc).__name__}: {exc})", style="red", markup=False)
            raise typer.Exit(1) from exc
        finally:
            if registry is not None:
                registry.client.close()
        console.print(f"recovery {'resumed from' if resumed else 'started in'} {snapshots.directory} ({layout})")
    console.print(f"streaming features from {config.kafka_bootstrap} into {config.redis_url}")
    logging.getLogger("streaming.checkpoints").setLevel(logging.INFO)  # a line per shard restored
    run_flow(build_flow(config, metrics, snapshots), snapshots, cluster)


@app.command()
def train(
    home: Home = None,
    data: Annotated[Path | None, typer.Option(help="Simulation directory (default HOME/data).")] = None,
    as_of: Annotated[datetime | None, typer.Option(help="Cut-off (UTC); default: the end of the history.")] = None,
    label_maturity_days: Annotated[float, typer.Option(help="Newest days left out: labels not in yet.")] = 2.0,
) -> None:
    """Train a model from a transaction history with the labels known at the cut-off, export it
    to ONNX (checked against XGBoost), register it, and serve it if there is no better champion."""
    _train(home, data, as_of, label_maturity_days, include_reviews=False)


@app.command(name="retrain")
def retrain_command(
    home: Home = None,
    data: Annotated[Path | None, typer.Option(help="Simulation directory (default HOME/data).")] = None,
    as_of: Annotated[datetime | None, typer.Option(help="Cut-off (UTC); default: the end of the history.")] = None,
    label_maturity_days: Annotated[float, typer.Option(help="Newest days left out: labels not in yet.")] = 2.0,
    if_due: Annotated[
        bool, typer.Option("--if-due", help="Train only when the schedule or a pending request says so (for cron).")
    ] = False,
    every_days: Annotated[
        float | None, typer.Option(help="With --if-due: retrain when the newest model is this old (default 30).")
    ] = None,
    request: Annotated[
        str | None, typer.Option(help="Do not train: record a retrain request with this reason (monitoring's door).")
    ] = None,
    by: Annotated[str, typer.Option(help="Who asks (recorded with --request).")] = "operator",
    release: Annotated[
        str, typer.Option(help="A better challenger is promoted at once, or started as shadow or canary.")
    ] = "promote",
    canary_share: Annotated[float, typer.Option(help="With --release canary: the share of cards it decides.")] = 0.05,
) -> None:
    """Train a challenger on history plus every label known at the cut-off (chargebacks and
    reviewers' labels), compare it with the champion on a later time slice, and promote it (or
    start it in shadow or canary) only if better. Thresholds are chosen for the review capacity
    (FRAUD_REVIEW_CAPACITY_PER_DAY). Cron-friendly with --if-due; see docs/model-lifecycle.md."""
    from retrain import ModelRegistry
    from retrain.schedule import RetrainSchedule, request_retrain, retrain_due

    settings = _settings(home, retrain_every_days=every_days)
    registry = ModelRegistry(settings.registry_dir)
    if request is not None:
        entry = request_retrain(registry, request, by)
        console.print(f"retrain requested by {entry['by']}: {entry['reason']} (the next --if-due run trains)")
        return
    if release not in ("promote", "shadow", "canary"):
        raise typer.BadParameter(f"expected promote, shadow or canary, got {release!r}", param_hint="--release")
    from simulator import read_simulation

    sim = read_simulation(data or settings.data_dir)
    if if_due:
        now = as_of or max(t.event_time for t in sim.transactions)
        why = retrain_due(registry, now, RetrainSchedule(every=timedelta(days=settings.retrain_every_days)))
        if why is None:
            console.print(f"not due at {now:%Y-%m-%d %H:%M}: nothing to do")
            return
        console.print(f"retraining: {why}")
    _train_on(settings, sim, as_of, label_maturity_days, include_reviews=True, release=release, share=canary_share)


def _train(
    home: Path | None, data: Path | None, as_of: datetime | None, maturity: float, include_reviews: bool
) -> None:
    from simulator import read_simulation

    settings = _settings(home)
    _train_on(settings, read_simulation(data or settings.data_dir), as_of, maturity, include_reviews)


def _train_on(
    settings: Settings,
    sim,
    as_of: datetime | None,
    maturity: float,
    include_reviews: bool,
    release: str = "promote",
    share: float = 0.05,
) -> None:
    from fraud.lifecycle import load_labels, run_retrain

    labels = load_labels(sim.labels, settings.review_db if include_reviews else None)
    result = run_retrain(settings, sim.transactions, labels, as_of, maturity, release, share)
    console.print(result)


@app.command()
def serve(
    home: Home = None,
    port: Annotated[int | None, typer.Option(help="gRPC port. Env FRAUD_GRPC_PORT.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port (0: off).")] = None,
    flag: Annotated[float | None, typer.Option(help="Flag at score >= this (default: the model's own).")] = None,
    block: Annotated[float | None, typer.Option(help="Block at score >= this (default: the model's own).")] = None,
    rules: Annotated[Path | None, typer.Option(help="Rule file (YAML).")] = None,
    kafka: Annotated[
        bool, typer.Option("--kafka", help="Decide payments read from `transactions` instead of serving gRPC.")
    ] = False,
    naive: Annotated[
        bool, typer.Option("--naive", help="Serve the naive per-request baseline instead (for `fraud bench`).")
    ] = False,
) -> None:
    """Serve decisions over gRPC (Decide, DecideBatch): rules, Redis features, ONNX model,
    thresholds; each decision is published to `decisions`; metrics on /metrics. Concurrent calls
    are decided together in batches; requests queued past 50 ms get a degraded (rules-only)
    decision. Run several on one port to use more cores (SO_REUSEPORT), each with its own
    --metrics-port."""
    from fraud.lifecycle import build_service
    from scoring.server import serve_until_signalled

    settings = _settings(
        home, grpc_port=port, metrics_port=metrics_port, flag_threshold=flag, block_threshold=block, rules_file=rules
    )
    if naive:
        from fraud.bench.baseline import run_naive_server

        run_naive_server(
            settings.require_redis(),
            settings.require_kafka(),
            settings.registry_dir,
            settings.topics.decisions,
            settings.grpc_host,
            settings.grpc_port,
            settings.key_prefix,
        )
        return
    service = build_service(settings, kafka_door=kafka)
    _quiet_gc()
    if kafka:
        _serve_kafka(settings, service)
        return
    console.print(f"model {service.engine.model.version} on {settings.grpc_host}:{settings.grpc_port}")
    # SIGTERM or Ctrl-C: stop accepting calls, finish those in flight, flush decisions to Kafka.
    asyncio.run(serve_until_signalled(service))


def _quiet_gc() -> None:
    """Decoding entity states allocates thousands of objects per batch, none in reference cycles:
    CPython's cyclic GC would walk them over and over. Long-lived startup objects are frozen out of
    it and collections made rare (as in the feature stream, streaming.dataflow.run_flow)."""
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _serve_kafka(settings: Settings, service) -> None:
    import threading

    from deploy.kafka import make_consumer, make_producer
    from scoring.kafka_door import KafkaDecisionDoor

    topics = settings.topics
    consumer = make_consumer(
        settings.require_kafka(),
        "fraud-scorer",
        [topics.transactions],
        from_beginning=False,
        fetch_wait_max_ms=10,
        fetch_min_bytes=65536,
    )
    door = KafkaDecisionDoor(
        service.engine, service.publisher, consumer, make_producer(settings.require_kafka()), topics.dead_letter
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"model {service.engine.model.version} deciding {topics.transactions} -> {topics.decisions}")
    with contextlib.suppress(KeyboardInterrupt):
        door.run(stop)


@review_app.callback(invoke_without_command=True)
def review(
    ctx: typer.Context,
    web: Annotated[bool, typer.Option("--web", help="Serve the reviewer console (needs FRAUD_REVIEW_TOKEN).")] = False,
    host: Annotated[str, typer.Option(help="Console address; loopback unless you mean to expose it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Console port.")] = 8088,
    home: Home = None,
) -> None:
    """The human review queue: list cases, label them, or serve the reviewer console (--web)."""
    if ctx.invoked_subcommand is not None:
        if web:
            raise typer.BadParameter("--web serves the console; it takes no subcommand", param_hint="--web")
        return
    if not web:
        typer.echo(ctx.get_help())
        raise typer.Exit()
    settings = _settings(home)
    if settings.review_token is None or not settings.review_token.get_secret_value():
        console.print(
            "[red]refusing to serve the reviewer console without a login token: "
            "set FRAUD_REVIEW_TOKEN (and optionally FRAUD_REVIEW_SESSION_SECRET)[/red]"
        )
        raise typer.Exit(2)
    from fraud.lifecycle import review_console
    from review_queue.console import serve

    console.print(f"reviewer console on http://{host}:{port}/ (store {settings.review_db})")
    serve(review_console(settings), host, port)


@review_app.command("list")
def review_list(home: Home = None, limit: Annotated[int, typer.Option(help="Cases to show.")] = 20) -> None:
    """Open cases in queue order: score x amount, boosted by age against the review SLA."""
    from fraud.lifecycle import open_review_store

    settings = _settings(home)
    with open_review_store(settings) as store:
        table = Table("transaction", "kind", "score", "amount", "card", "merchant", "claimed by", "rule hits")
        for case in store.open_cases(limit):
            d = case.decision
            table.add_row(
                case.transaction_id,
                case.kind.value,
                "-" if d.score is None else f"{d.score:.3f}",
                f"{d.transaction.amount_minor / 100:,.2f} {d.transaction.currency}",
                d.transaction.card_id,
                d.transaction.merchant_id,
                case.claimed_by or "",
                "; ".join(h.reason for h in d.rule_hits) or "-",
            )
        console.print(table)
        console.print(store.counts())


@review_app.command("label")
def review_label(
    transaction_id: str,
    fraud: Annotated[bool, typer.Option("--fraud/--legit", help="The verdict.")],
    reviewer: Annotated[str, typer.Option(help="Who is labelling.")],
    note: Annotated[str, typer.Option(help="Why.")] = "",
    home: Home = None,
) -> None:
    """Record a reviewer's label (durable before this returns) and publish it to `labels`.
    A case someone else has claimed in the console is refused."""
    from fraud.lifecycle import record_review_verdict
    from review_queue import ClaimConflict, Verdict

    verdict = Verdict.FRAUD if fraud else Verdict.LEGITIMATE
    try:
        recorded = record_review_verdict(_settings(home), transaction_id, verdict, reviewer, note)
    except ClaimConflict as conflict:
        console.print(f"[red]not recorded: {conflict}[/red]")
        raise typer.Exit(1) from None
    label = recorded.label
    assert label is not None
    published = "published to labels" if recorded.published else "saved; publishing retried on the next label or intake"
    console.print(f"recorded: {label.transaction_id} is_fraud={label.is_fraud} by {label.author} ({published})")


@review_app.command("intake")
def review_intake(
    home: Home = None,
    idle_s: Annotated[float, typer.Option(help="Stop after this long without new decisions.")] = 5.0,
) -> None:
    """Read `decisions`: a case for every flagged one and for the audit sample of approved ones
    (idempotent by transaction id); read chargebacks from `labels` into the label log; publish any
    labels still in the outbox."""
    from fraud.lifecycle import intake_decisions, intake_labels, publish_pending_labels

    settings = _settings(home)
    opened = intake_decisions(settings, idle_s)
    chargebacks = intake_labels(settings, idle_s)
    pending = publish_pending_labels(settings)
    console.print(f"opened {opened} new cases; {chargebacks} new external labels; {pending} labels still unpublished")


@app.command()
def monitor(
    home: Home = None,
    report: Annotated[
        bool, typer.Option("--report", help="Write report.md with drift, score and performance plots (see --out).")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Report directory (default HOME/monitoring/report).")] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="Keep tailing decisions and labels, export Prometheus metrics, request retrains on alerts."
        ),
    ] = False,
    metrics_port: Annotated[int | None, typer.Option(help="--serve: /metrics port (default 9470).")] = None,
    act: Annotated[
        bool | None,
        typer.Option(help="Record retrain requests for alerts firing (default: only with --serve)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model version whose training reference to compare with.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Smallest KL (nats) worth a drift alert.")] = None,
    window_s: Annotated[float | None, typer.Option(help="Drift window length in seconds of event time.")] = None,
    check_detector: Annotated[
        bool,
        typer.Option(
            "--check-detector",
            help="Instead: measure the drift settings on synthetic data (false alarms without drift, windows to "
            "fire after a half-SD shift) at window sizes --windows; needs no services.",
        ),
    ] = False,
    windows: Annotated[str, typer.Option(help="--check-detector: window sizes (payments).")] = "300,1000,5000",
) -> None:
    """Watch the live model against its training: feature and score drift per window (KL with a
    noise floor, and PSI), sustained alerts, realised precision/recall per day as labels mature,
    and an estimate for the days whose labels have not arrived. Without --serve it replays the
    whole log once and prints where things stand; --report also writes the morning report.
    Metrics, alerts and how to act on them: docs/monitoring.md."""
    from fraud.monitor_job import replay_monitor, serve_monitor

    settings = _settings(home, drift_kl_threshold=threshold, monitor_window_s=window_s)
    if check_detector:
        _check_detector(settings, [int(n) for n in _floats(windows, "--windows")])
        return
    if serve:
        console.print(f"monitoring; metrics on 127.0.0.1:{metrics_port or settings.monitor_metrics_port}/metrics")
        serve_monitor(settings, metrics_port or settings.monitor_metrics_port)
        return
    try:
        watched, version = replay_monitor(settings, act=bool(act), version=model)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    _print_monitor(watched, version, settings.drift_kl_threshold)
    if report:
        from monitoring import write_monitor_report

        path = write_monitor_report(watched.history(), out or settings.home / "monitoring" / "report", version)
        console.print(f"report: {path}")


def _check_detector(settings: Settings, windows: list[int]) -> None:
    import os
    import platform

    from monitoring.selftest import check_detector

    policy = settings.monitor_policy().drift
    console.print(
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}; KL threshold "
        f"{policy.kl_threshold}, false-alarm rate {policy.false_alarm_rate}, sustain {policy.sustain}; "
        "5 references of 20,000 rows, 60 quiet windows each, 4 features; shift: amount's log-mean by 0.5 SD"
    )
    table = Table(
        "window",
        "over, no drift",
        "alerts, no drift",
        "windows to fire (median)",
        "worst",
        title="drift detector under these settings",
    )
    for r in check_detector(policy, windows, progress=lambda line: console.print(line, style="dim")):
        table.add_row(
            str(r.window),
            f"{r.over_rate:.2%}",
            f"{r.alert_rate:.2%}",
            "never" if r.delay_median is None else f"{r.delay_median:g}",
            "-" if r.delay_worst is None else str(r.delay_worst),
        )
    console.print(table)


def _print_monitor(watched, version: str, threshold: float) -> None:
    from monitoring import latest_window, render_drift_table

    console.print(render_drift_table(latest_window(watched.windows), threshold))
    table = Table(
        "day",
        "decisions",
        "known fraud",
        "maturity",
        "realised recall",
        "estimated recall",
        title=f"model {version}: performance by payment day",
    )
    for d in watched.daily()[-10:]:
        table.add_row(
            d.day,
            str(d.decisions),
            str(d.known_fraud),
            _share(d.maturity),
            _interval(d.realised_recall, d.realised_recall_interval),
            _interval(d.estimated.recall, d.estimated.recall_interval),
        )
    console.print(table)
    console.print(f"firing: {', '.join(watched.firing()) or 'nothing'}")
    for r in watched.requests:
        console.print(f"retrain request at {r['at']}: {r['reason']} ({r['status']})")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _interval(point: float | None, interval: tuple[float, float] | None) -> str:
    if point is None:
        return "-"
    return f"{point:.2f}" + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]")


@app.command()
def scenario(
    name: Annotated[str, typer.Argument(help="concept-drift, covariate-shift, new-fraud-pattern, or a story .yaml.")],
    home: Home = None,
    customers: Annotated[int | None, typer.Option(help="Override the story's number of customers.")] = None,
    days: Annotated[int | None, typer.Option(help="Override the story's simulated days.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the story's seed.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory (default HOME/scenarios/NAME).")] = None,
) -> None:
    """Run a teaching scenario: simulate a world with scheduled drift, train a model on its first
    weeks, then decide, review, watch drift and recall, and retrain day by day, narrating as it
    goes; writes report.md with PNG plots and summary.json. Minutes on 2 cores. What each story
    teaches and how to write your own: docs/scenarios.md."""
    from fraud.scenario import load_story, run_scenario, write_report

    settings = _settings(home)
    try:
        story = load_story(name, n_customers=customers, days=days, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    workdir = out or settings.home / "scenarios" / story.name
    console.rule(f"[bold]{story.title}")
    console.print(story.teaches.strip(), highlight=False)
    run = run_scenario(story, workdir, say=lambda line: console.print(line, highlight=False, markup=False))
    report = write_report(run, workdir)
    console.print(f"report: {report}")


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what}: expected numbers separated by commas, got {text!r}") from None
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"{what}: expected positive numbers, got {text!r}")
    return values


@app.command()
def bench(
    home: Home = None,
    mode: Annotated[
        str, typer.Option(help="Comma-separated: unary (a call per payment), batch (client coalesces), kafka.")
    ] = "kafka,batch,unary",  # kafka first: the embedded broker slows as its in-memory log grows
    rates: Annotated[
        str, typer.Option(help="Offered loads to step through, payments/s.")
    ] = "50,250,1000,2000,5000,10000,15000,20000",
    duration: Annotated[float, typer.Option(help="Measured seconds per step (after the warm-up).")] = 30.0,
    warmup: Annotated[float, typer.Option(help="Seconds of load before each step's measurement.")] = 5.0,
    server_procs: Annotated[
        str,
        typer.Option(
            help="Scorer processes: a port each, calls spread round-robin (kafka: one group). Several, "
            "comma-separated (1,2,3): the whole run once per count, then the scaling curve."
        ),
    ] = "1",
    redis_masters: EmbeddedRedisMasters = 0,
    partitions: Annotated[
        int | None, typer.Option(help="Partitions of the bench's topics (default: one per scorer process).")
    ] = None,
    window_ms: Annotated[float, typer.Option(help="batch mode: the client's coalescing window.")] = 5.0,
    batch_rpc: Annotated[
        str,
        typer.Option(
            help="batch mode: 'call' sends each window as a DecideBatch call; 'stream' as a message on "
            "a DecideStream stream per connection (replies matched by transaction id)."
        ),
    ] = "call",
    arrivals: Annotated[str, typer.Option(help="poisson or constant inter-arrival times.")] = "poisson",
    timeout_s: Annotated[float, typer.Option(help="Per-call deadline; later answers count as timeouts.")] = 2.0,
    baseline: Annotated[
        bool, typer.Option(help="Also run the naive per-request service (unary) under the same steps.")
    ] = True,
    customers: Annotated[int, typer.Option(help="Simulated customers with history in Redis.")] = 10_000,
    history_days: Annotated[int, typer.Option(help="Days of history replayed into Redis (and trained on).")] = 7,
    case_seconds: Annotated[
        float, typer.Option(help="Seconds per case of the model-call and feature-read measurements that follow.")
    ] = 1.0,
    out: Annotated[Path | None, typer.Option(help="JSON result (default HOME/bench/decisions-<time>.json).")] = None,
    broker_only: Annotated[
        bool,
        typer.Option(
            "--broker-only",
            help="Measure the broker alone instead: one produce->consume hop at each --rates step for "
            "--duration s on a fresh topic, its CPU and hop latency every 10 s or so (what bounds kafka mode).",
        ),
    ] = False,
    reasons_only: Annotated[
        bool,
        typer.Option(
            "--reasons-only",
            help="Measure reason codes alone instead: µs per explained row, and decide_batch of --batch-size "
            "payments all approved vs 1% flagged, for --duration s, in this process (no gRPC, no Kafka).",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="--reasons-only: payments per decide_batch call.")] = 100,
    path_only: Annotated[
        bool,
        typer.Option(
            "--path-only",
            help="Measure the scorer's own work instead: the service `fraud serve` runs, called in this "
            "process without gRPC's transport, at each --batch-sizes for --case-seconds each; prints CPU µs "
            "per decision, the split by stage, and the fitted fixed cost per batch and cost per decision.",
        ),
    ] = False,
    batch_sizes: Annotated[str, typer.Option(help="--path-only: payments per request, comma-separated.")] = (
        "1,5,25,100,400"
    ),
) -> None:
    """Benchmark the decision path: an open-loop generator offers each rate for --duration seconds
    and measures every payment from its scheduled arrival to its decision (rules, Redis features
    with the payment folded in, ONNX model, thresholds, decision published to Kafka). Prints
    achieved rate, p50/p90/p99/p99.9/max latency, errors, timeouts, degraded (shed) decisions and
    CPU per process for each step, then the naive baseline and the model call alone; writes a JSON
    result and a PNG plot. Uses KAFKA_BOOTSTRAP / REDIS_URL if set, else starts its own."""
    from deploy import running_services
    from fraud.bench.loadgen import MODES
    from fraud.bench.run import (
        DecisionBenchConfig,
        Services,
        redis_pids_of,
        run_decision_bench,
        scaling_summary,
        write_result,
    )
    from fraud.bench.world import WorldConfig

    modes = tuple(m.strip() for m in mode.split(",") if m.strip())
    if not modes or set(modes) - set(MODES):
        raise typer.BadParameter(f"--mode: expected some of {', '.join(MODES)}, got {mode!r}")
    if arrivals not in ("poisson", "constant"):
        raise typer.BadParameter(f"--arrivals: expected poisson or constant, got {arrivals!r}")
    if case_seconds <= 0:
        raise typer.BadParameter(f"--case-seconds: expected a positive number, got {case_seconds}")
    counts = [int(n) for n in _floats(server_procs, "--server-procs")]
    if min(counts) < 1 or len(set(counts)) != len(counts):
        raise typer.BadParameter(f"--server-procs: distinct counts of at least 1, got {server_procs!r}")
    if batch_rpc not in ("call", "stream"):
        raise typer.BadParameter(f"--batch-rpc: call or stream, got {batch_rpc!r}")
    if redis_masters not in (0, 1) and redis_masters < 3:
        raise typer.BadParameter(f"--redis-masters: 0 (one server) or at least 3 (a cluster), got {redis_masters}")
    config = DecisionBenchConfig(
        modes=modes,
        rates=_floats(rates, "--rates"),
        duration_s=duration,
        warmup_s=warmup,
        server_procs=counts[0],
        partitions=partitions,
        window_ms=window_ms,
        batch_rpc=batch_rpc,
        arrivals=arrivals,
        timeout_s=timeout_s,
        baseline=baseline,
        case_seconds=case_seconds,
        world=WorldConfig(customers=customers, history_days=history_days),
    )
    base = _settings(home)
    run_id = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out or base.home / "bench" / f"decisions-{run_id}.json"
    sizes = _path_batch_sizes(batch_sizes) if path_only else []
    with running_services(
        base.home / "bench" / "services",
        kafka_bootstrap=base.kafka_bootstrap,
        redis_url=base.redis_url,
        tansu_bin=base.tansu_bin,
        redis_masters=redis_masters,
    ) as services:
        if broker_only:
            _bench_broker(services, config, path.with_name(f"broker-{run_id}.json"), run_id)
            return
        if reasons_only:
            _bench_reasons(home, services, config, batch_size, path.with_name(f"reasons-{run_id}.json"), run_id)
            return
        if path_only:
            _bench_path(home, services, config, sizes, path.with_name(f"path-{run_id}.json"), run_id)
            return
        bench_services = Services(
            services.kafka_bootstrap, services.redis_url, services.broker_pid, redis_pids_of(services.redis_url)
        )
        console.print(f"broker {services.kafka_bootstrap}, redis {services.redis_url}")
        results = []
        for n, count in enumerate(counts):
            # Each count on topics of its own: a consumer group never sees an earlier run's log.
            settings = _settings(
                home,
                kafka_bootstrap=services.kafka_bootstrap,
                redis_url=services.redis_url,
                topic_suffix=f"-bench-{run_id}-{count}",
                key_prefix="bench",
            )
            settings = settings.model_copy(update={"home": settings.home / "bench" / "world"})
            # The naive baseline and the model-call timings do not depend on the scorer count: once.
            run_config = dataclasses.replace(config, server_procs=count, baseline=baseline and n == 0)
            run_config = dataclasses.replace(run_config, model_speed=n == 0)
            console.print(f"setup: {run_config}")
            console.print(_STEP_HEADER, soft_wrap=True)
            result = run_decision_bench(
                run_config,
                settings,
                bench_services,
                say=console.print,
                on_step=lambda s: console.print(
                    _step_line(s) + _shed_line(s) + _core_line(s) + _keys_line(s), soft_wrap=True
                ),
            )
            result["redis"] = "cluster" if redis_masters >= 3 else "single"
            run_path = path if len(counts) == 1 else path.with_name(f"{path.stem}-procs{count}.json")
            png = write_result(result, run_path)
            _print_bench_summary(result)
            console.print(f"result: {run_path}\nplot:   {png}")
            results.append(result)
    if len(results) > 1:
        summary = scaling_summary(results)
        scaling_path = path.with_name(f"{path.stem}-scaling.json")
        scaling_path.write_text(json.dumps(summary, indent=2, default=str))
        _print_scaling(summary)
        console.print(f"scaling curve: {scaling_path}")


def _print_scaling(summary: dict) -> None:
    console.print("\nscaling: sustainable rate by scorer processes (efficiency = speed-up / processes added)")
    for mode, points in summary["curve"].items():
        for p in points:
            efficiency = "" if p["efficiency"] is None else f"  speed-up {p['speedup']}x, efficiency {p['efficiency']}"
            console.print(f"  {mode:<7}{p['server_procs']:>3} proc  {p['sustainable_rate']:>9,.0f}/s{efficiency}")


def _bench_broker(services, config, path: Path, run_id: str) -> None:
    from dataclasses import asdict

    from fraud.bench.broker_speed import BrokerProbe, format_broker_windows, measure_broker_hop
    from fraud.bench_stream import machine_info

    machine = machine_info()
    broker = "embedded tansu" if services.broker_pid else f"external {services.kafka_bootstrap}"
    console.print(f"machine: {machine}\nbroker: {broker}; rates {config.rates}/s, {config.duration_s:.0f} s each")
    windows = []
    window_s = min(10.0, config.duration_s / 3)  # a short run still shows the trend
    for i, rate in enumerate(config.rates):
        topic = f"broker-probe-{run_id}-{i}"
        probe = BrokerProbe(services.kafka_bootstrap, topic, services.broker_pid, window_s=window_s)
        step = measure_broker_hop(probe, rate, config.duration_s)
        console.print(format_broker_windows(step))
        windows += step
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "broker": broker, "windows": [asdict(w) for w in windows]}
    path.write_text(json.dumps(result, indent=1))
    console.print(f"result: {path}")


def _path_batch_sizes(text: str) -> list[int]:
    sizes = [int(x) for x in _floats(text, "--batch-sizes")]
    if len(set(sizes)) < 2 or min(sizes) < 1 or max(sizes) < 2 * min(sizes):
        # Sizes close together make the fitted line's intercept noise (399 and 400 fitted a
        # negative fixed cost per batch).
        raise typer.BadParameter(
            f"--batch-sizes: at least two sizes of 1 or more, the largest at least twice the smallest; got {sizes}"
        )
    return sizes


def _bench_path(home, services, config, sizes: list[int], path: Path, run_id: str) -> None:
    from dataclasses import asdict

    import redis

    from deploy.kafka import ensure_topics
    from fraud.bench.loadgen import load_payments
    from fraud.bench.path_speed import format_path_speed, measure_decision_path
    from fraud.bench.reasons_speed import restamp
    from fraud.bench.world import prepare_world
    from fraud.bench_stream import machine_info
    from fraud.lifecycle import build_service

    settings = _settings(
        home,
        kafka_bootstrap=services.kafka_bootstrap,
        redis_url=services.redis_url,
        key_prefix=f"bench-path-{run_id}",
        topic_suffix=f"-bench-path-{run_id}",
        metrics_port=0,
    )
    settings = settings.model_copy(update={"home": settings.home / "bench" / "world"})
    machine = machine_info()
    console.print(f"machine: {machine}")
    with redis.Redis.from_url(services.redis_url) as client:
        world = prepare_world(settings, client, config.world, say=console.print)
    ensure_topics(services.kafka_bootstrap, settings.topics.all())
    service = build_service(settings)
    payments = restamp(load_payments(world.payments))
    console.print(
        f"setup: one process, model {world.model_version}, batch sizes {sizes}, {config.case_seconds:.1f} s each, "
        f"{len(payments):,} payments"
    )
    result = measure_decision_path(service, payments, sizes, seconds_per_case=config.case_seconds)
    console.print(format_path_speed(result), soft_wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    decided = {"model_version": world.model_version, "decisions_topic": settings.topics.decisions}
    path.write_text(json.dumps({"machine": machine, **decided, **asdict(result)}, indent=1))
    console.print(f"result: {path}")


def _bench_reasons(home, services, config, batch_size: int, path: Path, run_id: str) -> None:
    from dataclasses import asdict

    import redis

    from fraud.bench.loadgen import load_payments
    from fraud.bench.reasons_speed import format_reasons_speed, measure_reasons, restamp
    from fraud.bench.world import prepare_world
    from fraud.bench_stream import machine_info
    from retrain import ModelRegistry
    from rules_engine import load_rules
    from schema import DecisionThresholds
    from scoring import DecisionEngine, ScorerMetrics
    from streaming import OnlineFeatureStore

    settings = _settings(home, redis_url=services.redis_url, key_prefix=f"bench-reasons-{run_id}")
    settings = settings.model_copy(update={"home": settings.home / "bench" / "world"})
    machine = machine_info()
    console.print(f"machine: {machine}")
    client = redis.Redis.from_url(services.redis_url)
    world = prepare_world(settings, client, config.world, say=console.print)
    model = ModelRegistry(settings.registry_dir).load(world.model_version)
    engine = DecisionEngine(
        load_rules(), model, OnlineFeatureStore(client, settings.key_prefix), DecisionThresholds(), ScorerMetrics()
    )
    # The first payments after the history, moved to start now (the history in Redis ends now).
    payments = restamp(load_payments(world.payments)[: 200 * batch_size])
    console.print(f"setup: one process, batch {batch_size}, {config.duration_s:.0f} s measured, model {model.version}")
    result = measure_reasons(engine, payments, batch_size, seconds=config.duration_s, say=console.print)
    console.print(format_reasons_speed(result), soft_wrap=True)
    client.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, **asdict(result)}, indent=1))
    console.print(f"result: {path}")


_STEP_HEADER = (
    "mode      offered  achieved     p50     p90     p99   p99.9     max  err  t/o  degraded(shed)  behind s"
    "  scorer µs/dec  CPU % (servers | generator | redis | broker)  rows/batch"
)


def _step_line(s: dict) -> str:
    lat = s["latency_ms"]
    cpu = s["cpu_pct"]
    servers = "+".join(f"{v:.0f}" for k, v in cpu.items() if k.startswith("server"))
    redis_cpu = "+".join(f"{v:.0f}" for k, v in cpu.items() if k.startswith("redis")) or "0"  # per master

    def ms(v: float | None) -> str:
        return f"{v:7.1f}" if v is not None else "      -"

    per_decision = s["server_cpu_us_per_decision"]
    rows_per_batch = s.get("server_batching", {}).get("rows_per_batch")
    return (
        f"{s['mode']:<9}{s['offered_rate']:>8,.0f}{s['achieved_rate']:>10,.0f} {ms(lat['p50'])} {ms(lat['p90'])} "
        f"{ms(lat['p99'])} {ms(lat['p999'])} {ms(lat['max'])} {s['errors']:>4} {s['timeouts']:>4} "
        f"{s['degraded']:>9}({s['shed']}) {s['max_behind_s']:>9.3f} "
        f"{per_decision if per_decision is not None else '-':>14}  {servers} | {s['generator_cpu_pct']:.0f} | "
        f"{redis_cpu} | {cpu.get('broker', 0):.0f}  {rows_per_batch if rows_per_batch else '-'}"
    )


def _core_line(s: dict) -> str:
    """How fast the cores ran during the step (fraud.bench.core_speed): the yardstick between runs."""
    speed = s.get("core_speed") or {}
    if not speed.get("p50"):
        return ""
    return f"\n          cores: fixed work took {speed['p50']:,.0f} µs of CPU at p50 ({speed['p90']:,.0f} p90)"


def _keys_line(s: dict) -> str:
    """Redis's keys over the step, and the powers of two crossed: Redis rehashes there (run.keyspace_growth)."""
    keys = s.get("redis_keys")
    if not keys:
        return ""
    crossed = ", ".join(f"2^{k}" for k in keys["crossed_powers_of_two"])
    rehash = f"; crossed {crossed}, where Redis rehashes (docs/performance.md)" if crossed else ""
    cost = s.get("redis_us_per_decision") or {}
    per_command = ", ".join(f"{name} {us:.1f}" for name, us in cost.items())
    time_line = f"\n          redis µs per decision by command: {per_command}" if per_command else ""
    return f"\n          redis: {keys['before']:,} -> {keys['after']:,} keys{rehash}{time_line}"


def _shed_line(s: dict) -> str:
    """Where in the step the shedding fell, when there was any: spread, or in a few seconds."""
    by_second = s.get("shed_by_second") or []
    if not any(by_second):
        return ""
    busy = sum(1 for n in by_second if n)
    return f"\n          shed in {busy} of {len(by_second)} s; the worst second {max(by_second):,}"


def _print_bench_summary(result: dict) -> None:
    budget = result["config"]["budget_ms"]
    console.print(f"\nsustainable rate (p99 <= {budget:.0f} ms, no errors or timeouts, shed <= 0.1%):")
    for mode, rate in result["sustainable_rate"].items():
        ratio = result["ratio_to_baseline"].get(mode)
        vs = f"  ({ratio}x the baseline)" if ratio else ""
        console.print(f"  {mode:<9}{rate:>10,.0f}/s{vs}")
    tight = result["config"]["tight_budget_ms"]
    console.print(f"the same within p99 <= {tight:.0f} ms:")
    for mode, rate in result["sustainable_rate_tight"].items():
        console.print(f"  {mode:<9}{rate:>10,.0f}/s")
    if result.get("model_calls"):
        from fraud.bench.model_speed import ModelCallRate, format_model_calls

        console.print("\nthe model call alone (one core):")
        console.print(format_model_calls([ModelCallRate(**r) for r in result["model_calls"]]))
    if result.get("feature_reads"):
        from fraud.bench.feature_speed import FeatureReadRate, format_feature_reads

        console.print("\nthe feature read alone (one core; CPU of the scorer's side only):")
        console.print(format_feature_reads([FeatureReadRate(**r) for r in result["feature_reads"]]))


@app.command(name="bench-stream")
def bench_stream(
    home: Home = None,
    events: Annotated[int, typer.Option(help="Transactions to stream in all (make bench-stream: 5M).")] = 300_000,
    rate: Annotated[float, typer.Option(help="Offered load, transactions per second (open loop).")] = 2_000.0,
    processes: Annotated[int, typer.Option(help="bytewax processes working together on the stream.")] = 1,
    partitions: Annotated[int, typer.Option(help="Partitions of the bench's transactions topic.")] = 4,
    cards: Annotated[int, typer.Option(help="Distinct cards (customers = cards / 1.3).")] = 50_000,
    merchants: Annotated[int, typer.Option(help="Distinct merchants (Zipf-skewed popularity).")] = 5_000,
    interval_s: Annotated[float, typer.Option(help="Seconds between progress samples.")] = 5.0,
    warmup_s: Annotated[float, typer.Option(help="Seconds left out of the summary's rates and percentiles.")] = 15.0,
    snapshot_s: Annotated[float, typer.Option(help="Recovery snapshot interval; 0 turns recovery off.")] = 10.0,
    time_scale: Annotated[
        float, typer.Option(help="Simulated seconds per wall second (> 1 makes windows expire within the run).")
    ] = 1.0,
    preload: Annotated[
        bool, typer.Option("--preload", help="Produce everything first, then time the drain (capacity, no freshness).")
    ] = False,
    linger_ms: Annotated[
        float, typer.Option(help="The generator's producer linger: batches per partition (counts in freshness).")
    ] = 50.0,
    redis_masters: EmbeddedRedisMasters = 0,
    out: Annotated[Path | None, typer.Option(help="JSON result (default HOME/bench/stream-<time>.json).")] = None,
    steps_only: Annotated[
        bool,
        typer.Option(
            "--steps-only",
            help="Measure the stream's own steps instead (validate, admission, routing, state update, sink "
            "with a real Redis, snapshots): CPU µs per payment, best of 3, in this process, without bytewax "
            "or Kafka; --events payments, event time advancing at --rate x --time-scale.",
        ),
    ] = False,
) -> None:
    """Benchmark the feature stream: an open-loop generator produces payments at --rate while the
    bytewax dataflow applies them to Redis; prints events/s, feature freshness p50/p99 (event time
    to visible in Redis), Redis memory and worker RSS/CPU every few seconds, then a summary.
    Uses KAFKA_BOOTSTRAP / REDIS_URL if set, else starts its own broker and Redis."""
    from deploy import running_services
    from fraud.bench_stream import BenchConfig, run_bench, write_result

    settings = _settings(home)
    if steps_only:
        from fraud.bench_stream_cpu import report_steps

        report_steps(events, cards, merchants, rate, time_scale, redis_url=settings.redis_url or None)
        return
    config = BenchConfig(
        events=events,
        rate=rate,
        processes=processes,
        partitions=partitions,
        cards=cards,
        merchants=merchants,
        interval_s=interval_s,
        warmup_s=warmup_s,
        snapshot_s=snapshot_s or None,
        time_scale=time_scale,
        preload=preload,
        linger_ms=linger_ms,
    )
    path = out or settings.home / "bench" / f"stream-{datetime.now():%Y%m%d-%H%M%S}.json"
    with running_services(
        settings.home / "bench" / "services",
        kafka_bootstrap=settings.kafka_bootstrap,
        redis_url=settings.redis_url,
        topics=settings.topics,
        tansu_bin=settings.tansu_bin,
        redis_masters=redis_masters,
    ) as services:
        console.print(f"setup: {config}")
        console.print(f"broker {services.kafka_bootstrap}, redis {services.redis_url}")
        table_header = (
            "elapsed  produced   applied  applied/s  fresh p50  fresh p99  redis MB  worker RSS MB  CPU %  broker CPU %"
            "  longest pause  snapshot ms"
        )
        console.print(table_header, soft_wrap=True)

        def report(s) -> None:
            console.print(
                f"{s.elapsed_s:>6.0f}s {s.produced:>9,} {s.applied:>9,} {s.applied_per_s:>10,.0f} "
                f"{_fmt_s(s.freshness_p50_s):>10} {_fmt_s(s.freshness_p99_s):>10} {s.redis_used_mb:>9.1f} "
                f"{'/'.join(f'{r:.0f}' for r in s.worker_rss_mb):>14} "
                f"{'/'.join(f'{c:.0f}' for c in s.worker_cpu_pct):>6} {_fmt_pct(s.broker_cpu_pct):>12} "
                f"{_fmt_pause(s.longest_batch_interval_s):>14} {_fmt_ms(s.snapshot_encode_s):>12}",
                soft_wrap=True,  # one line per sample, whatever the terminal width
            )

        result = run_bench(config, services.kafka_bootstrap, services.redis_url, report, services.broker_pid)
    write_result(result, path)
    console.print(f"machine: {result.machine}")
    console.print(json.dumps(result.summary, indent=2))
    console.print(f"written to {path}")


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _fmt_pause(bound: float | None) -> str:
    """A histogram bucket's upper bound, as 'at most' (the last bucket has none)."""
    from streaming.metrics import BATCH_INTERVAL_BUCKETS

    if bound is None:
        return "-"
    return f"> {BATCH_INTERVAL_BUCKETS[-1]:.0f} s" if bound == float("inf") else f"<= {bound * 1000:.0f} ms"


def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Working directory; wiped at the start.")] = Path("var/demo"),
    days: Annotated[int, typer.Option(help="Simulated days (the last 3 are scored live).")] = 10,
    customers: Annotated[int, typer.Option(help="Number of customers.")] = 3000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """The whole loop on embedded services: simulate, stream, score every transaction over gRPC,
    fill the review queue, auto-label a sample, retrain, report drift, print a summary."""
    from fraud.demo import DemoConfig, run_demo

    run_demo(DemoConfig(home=home, days=days, customers=customers, seed=seed), console)


def main() -> None:
    # XGBoost's OpenMP threads spin-wait by default: with the other core busy (the broker, Redis, a
    # scorer) a 100-tree fit took 43 s spinning against 5.4 s passive (measured here under load).
    # Set before xgboost loads libgomp, which reads it once; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        app()
    except MissingService as exc:
        console.print(f"[red]{exc}[/]")
        raise SystemExit(2) from exc
