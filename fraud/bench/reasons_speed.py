"""What reason codes cost: per explained row, and on ``decide_batch`` with and without flagged rows.

Run by ``fraud bench --reasons-only`` in the bench's world (a model trained on simulated history,
Redis loaded with that history): no gRPC, no Kafka, the engine called directly in this process, one
core, as a scorer process runs it.

What is measured:

* ``explain``: ``ReasonExplainer.reasons_for`` (TreeSHAP with the native booster, one thread, plus
  the words) on real feature rows, one row per call and ``batch_size`` rows per call; per row.
* ``decide_batch``: the same ``batch_size`` payments decided twice per round, interleaved so both
  see the same machine: once with every row approved (thresholds above every score: the explainer is
  not called), once with ``flagged_share`` of the rows flagged (the flag threshold set at the batch's
  highest scores, so exactly those rows are explained). Payments a rule would flag are left out of
  the pool, so the all-approve batch is truly all-approve. The difference between the two is what
  reason codes add to a batch that has something to flag; the all-approve figure is the approve path.

Numbers are for this machine at this moment: rerun rather than quote them elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import numpy as np

from schema import DecisionThresholds, Outcome, Transaction
from scoring.engine import DecisionEngine
from streaming.features import MODEL_FEATURES

NEVER = DecisionThresholds(flag=1.0, block=1.0)  # no model score reaches it (rules aside)


@dataclass(frozen=True)
class BatchTiming:
    batches: int
    rows_flagged_per_batch: float
    p50_ms: float
    p90_ms: float
    mean_ms: float
    cpu_ms_per_batch: float


@dataclass(frozen=True)
class ReasonsSpeed:
    model_version: str
    trees: int | None
    batch_size: int
    flagged_share: float
    pool: int  # payments that no rule flags, cycled through in batches
    explain_us_per_row_single: float  # one row per call (a batch with one flagged payment)
    explain_us_per_row_batched: float  # batch_size rows per call
    all_approve: BatchTiming
    some_flagged: BatchTiming
    # as `fraud serve` runs: the reply without reasons, explained on a worker thread afterwards
    # (ExplainingPublisher); CPU includes the worker's
    some_flagged_deferred: BatchTiming


def restamp(payments: Sequence[Transaction], start: datetime | None = None) -> list[Transaction]:
    """The payments at their simulated spacing, moved to start now (the history in Redis ends now)."""
    start = start or datetime.now(UTC)
    first = payments[0].event_time
    return [msgspec.structs.replace(p, event_time=start + (p.event_time - first)) for p in payments]


def calm_pool(engine: DecisionEngine, payments: Sequence[Transaction], batch_size: int) -> list[Transaction]:
    """The payments that neither a rule nor the model (thresholds at 1.0) flags, in their order."""
    engine.thresholds = NEVER
    calm: list[Transaction] = []
    for start in range(0, len(payments), batch_size):
        chunk = payments[start : start + batch_size]
        calm += [t for t, d in zip(chunk, engine.decide_batch(chunk), strict=True) if d.outcome is Outcome.APPROVE]
    return calm


def measure_reasons(
    engine: DecisionEngine,
    payments: Sequence[Transaction],
    batch_size: int = 100,
    flagged_share: float = 0.01,
    seconds: float = 20.0,
    say: Callable[[str], None] = print,
) -> ReasonsSpeed:
    """See the module docstring. ``payments`` should be restamped (:func:`restamp`) and in time order."""
    if batch_size < 1 or not 0 < flagged_share <= 1:
        raise ValueError(f"batch_size >= 1 and 0 < flagged_share <= 1, got {batch_size}, {flagged_share}")
    pool = calm_pool(engine, payments, batch_size)
    batches = [pool[i : i + batch_size] for i in range(0, len(pool) - batch_size + 1, batch_size)]
    # Regrouped, payments on one card see different neighbours in their batch: check the batches again.
    engine.thresholds = NEVER
    batches = [b for b in batches if all(d.outcome is Outcome.APPROVE for d in engine.decide_batch(b))]
    if not batches:
        raise ValueError(f"only {len(pool)} payments no rule flags: fewer than one batch of {batch_size}")
    say(f"{len(pool):,} of {len(payments):,} payments flagged by nothing: {len(batches)} calm batches of {batch_size}")

    # Per batch, the flag threshold that flags its top ``k`` scores (ties may flag one more).
    k = max(1, round(flagged_share * batch_size))
    flag_at = []
    for batch in batches:
        scores = sorted((d.score or 0.0 for d in engine.decide_batch(batch)), reverse=True)
        flag_at.append(DecisionThresholds(flag=max(scores[k - 1], 1e-9), block=1.0))

    explain_single, explain_batched = _explain_rates(engine, batches, batch_size)

    approve_s: list[float] = []
    flagged_s: list[float] = []
    deferred_s: list[float] = []
    cpu = {"approve": 0.0, "flagged": 0.0, "deferred": 0.0}
    flagged_rows = 0
    worker = ThreadPoolExecutor(1, thread_name_prefix="explain")
    # Warm-up: the booster loads on the first flagged row; connections and caches fill.
    for batch, thresholds in list(zip(batches, flag_at, strict=True))[:3]:
        engine.thresholds = thresholds
        engine.decide_batch(batch)
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or i < 10:
        batch, some = batches[i % len(batches)], flag_at[i % len(batches)]
        for name, thresholds, sink in (
            ("approve", NEVER, approve_s),
            ("flagged", some, flagged_s),
            ("deferred", some, deferred_s),
        ):
            engine.thresholds = thresholds
            engine.explain_inline = name != "deferred"
            c0, t0 = time.process_time(), time.perf_counter()
            decisions = engine.decide_batch(batch)
            sink.append(time.perf_counter() - t0)
            if name == "deferred":  # the reply is out; the worker explains, and its CPU counts here
                worker.submit(engine.explain, [d for d in decisions if d.outcome is not Outcome.APPROVE]).result()
            cpu[name] += time.process_time() - c0
            engine.explain_inline = True
            if name == "approve" and any(d.outcome is not Outcome.APPROVE for d in decisions):
                raise RuntimeError("an all-approve batch flagged a payment: the pool is not calm")
            if name == "deferred" and any(d.reasons for d in decisions):
                raise RuntimeError("a deferred reply carried reasons: the engine explained inline")
            if name == "flagged":
                flagged_rows += sum(d.outcome is not Outcome.APPROVE for d in decisions)
                if not all(d.reasons for d in decisions if d.outcome is not Outcome.APPROVE):
                    raise RuntimeError("a flagged decision came back without reasons: is xgboost.ubj missing?")
        i += 1

    trees = engine.reasons.booster(engine.model).num_boosted_rounds()
    return ReasonsSpeed(
        model_version=engine.model.version,
        trees=trees,
        batch_size=batch_size,
        flagged_share=flagged_share,
        pool=len(pool),
        explain_us_per_row_single=explain_single,
        explain_us_per_row_batched=explain_batched,
        all_approve=_timing(approve_s, 0, cpu["approve"]),
        some_flagged=_timing(flagged_s, flagged_rows, cpu["flagged"]),
        some_flagged_deferred=_timing(deferred_s, flagged_rows, cpu["deferred"]),
    )


def _explain_rates(engine: DecisionEngine, batches: list[list[Transaction]], batch_size: int) -> tuple[float, float]:
    """µs per explained row: one row per call, and ``batch_size`` rows per call, on real feature rows."""
    store, model, explainer = engine.store, engine.model, engine.reasons
    matrix = np.concatenate([store.features_for_batch(b).matrix for b in batches[:20]])
    assert matrix.shape[1] == len(MODEL_FEATURES)
    explainer.reasons_for(model, matrix, [0])  # load the booster outside the timing
    results = []
    for per_call in (1, batch_size):
        rows = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 2.0 or rows < 50:
            start = rows % max(1, len(matrix) - per_call)
            explained = explainer.reasons_for(model, matrix, list(range(start, start + per_call)))
            if len(explained) != per_call:
                raise RuntimeError("explaining failed during the benchmark (see the log)")
            rows += per_call
        results.append((time.perf_counter() - t0) / rows * 1e6)
    return results[0], results[1]


def _timing(durations_s: list[float], flagged_rows: int, cpu_s: float) -> BatchTiming:
    ms = np.asarray(durations_s) * 1e3
    p50, p90 = np.percentile(ms, [50, 90])
    return BatchTiming(
        batches=len(ms),
        rows_flagged_per_batch=flagged_rows / len(ms),
        p50_ms=float(p50),
        p90_ms=float(p90),
        mean_ms=float(ms.mean()),
        cpu_ms_per_batch=cpu_s * 1e3 / len(ms),
    )


def format_reasons_speed(r: ReasonsSpeed) -> str:
    def line(name: str, t: BatchTiming) -> str:
        return (
            f"  {name:<22}{t.batches:>8,}{t.rows_flagged_per_batch:>10.2f}{t.p50_ms:>9.2f}{t.p90_ms:>9.2f}"
            f"{t.mean_ms:>9.2f}{t.cpu_ms_per_batch:>10.2f}"
        )

    extra = r.some_flagged.mean_ms - r.all_approve.mean_ms
    pct = 100 * extra / r.all_approve.mean_ms if r.all_approve.mean_ms else math.nan
    return "\n".join(
        [
            f"model {r.model_version} ({r.trees} trees), batch {r.batch_size}, pool {r.pool:,} payments",
            f"explain (TreeSHAP + words, one thread): {r.explain_us_per_row_single:,.0f} µs/row one row per call, "
            f"{r.explain_us_per_row_batched:,.0f} µs/row {r.batch_size} rows per call",
            f"decide_batch of {r.batch_size}:      batches  flagged   p50 ms   p90 ms  mean ms  CPU ms",
            line("all approve", r.all_approve),
            line(f"{100 * r.flagged_share:g}% flagged", r.some_flagged),
            line(f"{100 * r.flagged_share:g}% flagged, deferred", r.some_flagged_deferred),
            f"  a batch with flagged rows costs {extra:+.2f} ms on the mean ({pct:+.1f}%); "
            "an all-approve batch never calls the booster",
            f"  deferred (as fraud serve runs): the reply waits {r.some_flagged_deferred.p50_ms:.2f} ms at p50 "
            f"(all approve: {r.all_approve.p50_ms:.2f}); the explanation's CPU is spent after it",
        ]
    )
