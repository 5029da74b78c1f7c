"""Generate a simulation one simulated day at a time: ordinary spending, fraud, chargebacks, truth.

Each day: that day's legitimate payments and the fraud incidents starting that day are drawn as
columns; payments falling on a later day (a burst across midnight, a breached merchant's cards
used days later, a bust-out over three days) wait in a pending buffer; the day's payments are
sorted by time and numbered in global order (``tx-{seed}-{i:09d}``). ``simulate`` keeps the run in
memory as schema objects (small runs); ``simulate_to_files`` writes each day and drops it, so a
month of tens of millions of payments runs in bounded memory. Both run the same code and give the
same data for the same config.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from schema import GroundTruth, Label, Transaction, write_jsonl
from simulator.config import SimulationConfig
from simulator.files import Formatter, Sink, detect_format, paths, read_kind, to_objects
from simulator.patterns import fraud_of_the_day
from simulator.rows import DAY_MS, Rows
from simulator.schedule import SCENARIO_NAMES
from simulator.spending import ordinary_spending
from simulator.world import World

# The JSON-lines file of each kind (Parquet runs use the same names with ``.parquet``).
FILES = {kind: path.name for kind, path in paths(Path("."), "jsonl").items()}


@dataclass(frozen=True)
class Simulation:
    transactions: list[Transaction]  # sorted by (event_time, transaction_id)
    labels: list[Label]  # chargebacks, sorted by known_at
    truth: list[GroundTruth]  # one per transaction, same order

    def summary(self) -> dict[str, object]:
        fraud = Counter(g.scenario for g in self.truth if g.is_fraud)
        changes = Counter(name for g in self.truth for name in g.changes)
        return _summary(len(self.transactions), fraud, len(self.labels), changes)


@dataclass(frozen=True)
class DayDone:
    """Progress of a run: ``day`` (0-based) has been generated and written."""

    day: int
    days: int
    transactions: int  # so far
    fraud: int  # so far
    seconds: float  # since the run started


class _Run:
    """One run's day loop: the world, the payments still to come, and the running numbering."""

    def __init__(self, config: SimulationConfig) -> None:
        self.world = World.create(config)
        self.formatter = Formatter(self.world)
        self.pending = Rows.empty()
        self.emitted = 0
        self.fraud: Counter[str] = Counter()
        self.changes: Counter[str] = Counter()
        self._labels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def days(self) -> Iterator[tuple[int, pa.Table, pa.Table]]:
        """(day, transactions, truth) of every simulated day, in order."""
        for day in range(self.world.config.days):
            rows = self._day(day)
            index = self.emitted + np.arange(len(rows))
            self.emitted += len(rows)
            self._keep_labels(rows, index)
            self._count(rows)
            ids = self.formatter.transaction_ids(index)
            yield day, self.formatter.transactions(rows, ids), self.formatter.truth(rows, ids)

    def labels(self) -> pa.Table:
        """Every chargeback of the run, sorted by when it becomes known (then transaction id)."""
        index, known_at, merchant = (np.concatenate(parts) for parts in zip(*self._labels, strict=True))
        order = np.lexsort((index, known_at))
        return self.formatter.labels(index[order], known_at[order], merchant[order])

    def summary(self) -> dict[str, object]:
        return _summary(self.emitted, self.fraud, sum(len(parts[0]) for parts in self._labels), self.changes)

    def _day(self, day: int) -> Rows:
        legit = ordinary_spending(self.world, day)
        rows = Rows.concat([self.pending, legit, *fraud_of_the_day(self.world, day, legit)])
        day_of = (rows.ts - self.world.start_ms) // DAY_MS
        later = (day_of > day) & (day_of < self.world.config.days)  # past the last day: outside the run
        self.pending = rows.take(np.flatnonzero(later))
        return rows.take(np.flatnonzero(day_of == day)).in_time_order()

    def _keep_labels(self, rows: Rows, index: np.ndarray) -> None:
        reported = np.flatnonzero(rows.known_at >= 0)
        self._labels.append((index[reported], rows.known_at[reported], rows.merchant[reported]))

    def _count(self, rows: Rows) -> None:
        codes = np.bincount(rows.scenario, minlength=len(SCENARIO_NAMES) + 1)
        self.fraud.update({name: int(codes[k + 1]) for k, name in enumerate(SCENARIO_NAMES) if codes[k + 1]})
        for j, change in enumerate(self.world.schedule.changes):
            tagged = int(np.count_nonzero(rows.changes >> j & 1))
            if tagged:
                self.changes[change.name] += tagged


def _summary(n: int, fraud: Counter[str], chargebacks: int, changes: Counter[str]) -> dict[str, object]:
    total = sum(fraud.values())
    return {
        "transactions": n,
        "fraud": total,
        "fraud_rate": round(total / n, 5) if n else 0.0,
        "fraud_by_scenario": dict(sorted(fraud.items())),
        "chargebacks": chargebacks,
        "changes": dict(sorted(changes.items())),
    }


def simulate(config: SimulationConfig) -> Simulation:
    """A reproducible simulation in memory: the same config (seed included) gives the same output.
    For runs beyond a few million payments, use ``simulate_to_files``."""
    run = _Run(config)
    transactions, truth = [], []
    for _, day_transactions, day_truth in run.days():
        transactions.append(day_transactions)
        truth.append(day_truth)
    return Simulation(
        to_objects(pa.concat_tables(transactions), Transaction),
        to_objects(run.labels(), Label),
        to_objects(pa.concat_tables(truth), GroundTruth),
    )


def simulate_to_files(
    config: SimulationConfig,
    out_dir: Path,
    fmt: str = "parquet",
    progress: Callable[[DayDone], None] | None = None,
) -> dict[str, object]:
    """Write transactions, labels and truth (``fmt``: "parquet" or "jsonl") to ``out_dir`` a
    simulated day at a time, never holding more than a day of payments. ``progress`` is called
    after each day. Returns the summary, with the files, the wall time and rows per second."""
    started = time.perf_counter()
    run = _Run(config)
    with Sink(Path(out_dir), fmt) as sink:
        for day, transactions, truth in run.days():
            sink.write("transactions", transactions)
            sink.write("truth", truth)
            if progress is not None:
                fraud = sum(run.fraud.values())
                progress(DayDone(day, config.days, run.emitted, fraud, time.perf_counter() - started))
        sink.write("labels", run.labels())
    seconds = time.perf_counter() - started
    files = {kind: str(path) for kind, path in sink.paths.items()}
    return {**run.summary(), "seconds": round(seconds, 2), "rows_per_s": round(run.emitted / seconds), "files": files}


def write_simulation(sim: Simulation, out_dir: Path) -> dict[str, Path]:
    """Write an in-memory simulation as JSON lines (removing any Parquet files of an older run)."""
    written = paths(out_dir, "jsonl")
    Sink(Path(out_dir), "jsonl").close()  # creates the directory, clears the other format
    write_jsonl(written["transactions"], sim.transactions)
    write_jsonl(written["labels"], sim.labels)
    write_jsonl(written["truth"], sim.truth)
    return written


def read_simulation(out_dir: Path) -> Simulation:
    """A simulation directory (Parquet or JSON lines) as schema objects, validated."""
    fmt = detect_format(Path(out_dir))
    return Simulation(*(read_kind(Path(out_dir), kind, fmt) for kind in ("transactions", "labels", "truth")))
