"""The scorer's own work per decision, without the network: what one server process spends per
payment at each batch size, and how much of it is fixed per batch.

Run by ``fraud bench --path-only`` in the bench's world (a model trained on simulated history,
Redis loaded with it, the embedded broker or KAFKA_BOOTSTRAP). The service is the one ``fraud
serve`` builds (``fraud.lifecycle.build_service``), called in this process exactly as gRPC calls
it: each request is a serialised ``TransactionBatch``, parsed, passed to
``FraudScorerService.DecideBatch`` (validation, the batcher and its decide thread, features,
model, rules, the idempotency record, publishing to Kafka) and its reply serialised. What is left
out is gRPC's transport: the sockets, HTTP/2 and the C core's threads. The gap between this and
``scorer µs/dec`` of a batch-mode step at the same rows per batch is what the transport costs.

For each batch size, consecutive slices of the payments (each id made unique for the case, so the
idempotency lookup finds nothing and every payment is decided) are sent back to back for about
``seconds_per_case``. Per case:

* ``cpu_us_per_decision``: process CPU time (every thread: the decide thread, the event loop,
  librdkafka's, the explaining publisher's) over the decisions;
* ``stage_us_per_decision``: the scorer's own stage histograms (``fraud_decision_latency_seconds``,
  wall time on the decide thread) over the decisions: where the time goes.

Then a least-squares line through (batch size, CPU per batch) gives the fixed cost per batch and
the cost per payment, the two numbers the batching arithmetic in docs/performance.md needs.

Last, the shed path at the largest batch size (``FraudScorerService.shed_and_publish``, what the
batcher does with payments queued past the budget: rules only, recorded, published), called as
the batcher calls it: its CPU per decision against the full path's says how much of a payment's
cost shedding saves, and so how fast an overloaded scorer can get back under its budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from schema import Transaction
from scoring import FraudScorerService
from scoring.proto import fraud_pb2 as pb
from scoring.wire import transaction_to_proto

DEFAULT_BATCH_SIZES = (1, 5, 25, 100, 400)
STAGES = ("features", "model", "rules", "record", "publish")


@dataclass(frozen=True)
class PathCase:
    """One batch size of :func:`measure_decision_path`."""

    batch_size: int
    batches: int
    cpu_us_per_decision: float
    stage_us_per_decision: dict[str, float]


@dataclass(frozen=True)
class PathSpeed:
    cases: list[PathCase]
    fixed_us_per_batch: float  # the fitted line's intercept
    us_per_decision: float  # its slope: what each payment adds to a batch
    shed_batch_size: int = 0
    shed_cpu_us_per_decision: float | None = None  # the shed path, at shed_batch_size


def measure_decision_path(
    service: FraudScorerService,
    payments: Sequence[Transaction],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seconds_per_case: float = 2.0,
) -> PathSpeed:
    """CPU per decision of the server's work at each batch size, and the fitted fixed/per-payment split."""
    if not payments:
        raise ValueError("no payments to decide")
    cases, shed_us = asyncio.run(_measure_all(service, payments, batch_sizes, seconds_per_case))
    fixed, per_decision = fit_batch_cost(cases)
    return PathSpeed(cases, fixed, per_decision, max(batch_sizes), shed_us)


async def _measure_all(
    service: FraudScorerService, payments: Sequence[Transaction], sizes: Sequence[int], seconds: float
) -> tuple[list[PathCase], float]:
    await _run_case(service, _requests(payments, 50, "warm"), seconds=0.5)  # ONNX, caches, connections
    cases = []
    for size in sizes:
        requests = _requests(payments, size, f"b{size}")
        cases.append(await _run_case(service, requests, seconds))
    service.batcher.close()
    shed_us = _shed_case(service, payments, max(sizes), seconds)
    service.publisher.flush()
    return cases, shed_us


def _shed_case(service: FraudScorerService, payments: Sequence[Transaction], size: int, seconds: float) -> float:
    """CPU µs per decision of the shed path, batches of ``size`` (ids unique to this case)."""
    replace = msgspec.structs.replace
    decisions = 0
    cpu = time.process_time()
    deadline = time.monotonic() + seconds
    for start in range(0, len(payments) - size + 1, size):
        batch = [replace(t, transaction_id=f"{t.transaction_id}~shed") for t in payments[start : start + size]]
        decisions += len(service.shed_and_publish(batch, "shed: path-only measurement"))
        if time.monotonic() >= deadline:
            break
    return (time.process_time() - cpu) * 1e6 / max(decisions, 1)


def _requests(payments: Sequence[Transaction], size: int, case: str) -> list[bytes]:
    """Serialised requests of ``size`` payments, ids made unique to this case."""
    replace = msgspec.structs.replace
    out = []
    for start in range(0, len(payments) - size + 1, size):
        batch = [replace(t, transaction_id=f"{t.transaction_id}~{case}") for t in payments[start : start + size]]
        out.append(pb.TransactionBatch(transactions=[transaction_to_proto(t) for t in batch]).SerializeToString())
    if not out:
        raise ValueError(f"fewer payments ({len(payments)}) than one batch of {size}")
    return out


async def _run_case(service: FraudScorerService, requests: list[bytes], seconds: float) -> PathCase:
    stages_before = _stage_sums(service)
    decisions = batches = 0
    cpu = time.process_time()
    deadline = time.monotonic() + seconds
    for raw in requests:
        reply = await service.DecideBatch(pb.TransactionBatch.FromString(raw), None)
        reply.SerializeToString()
        decisions += len(reply.decisions)
        batches += 1
        if time.monotonic() >= deadline:
            break
    cpu = time.process_time() - cpu
    stages = _stage_sums(service)
    per = 1e6 / max(decisions, 1)
    return PathCase(
        batch_size=decisions // max(batches, 1),
        batches=batches,
        cpu_us_per_decision=cpu * per,
        stage_us_per_decision={s: (stages[s] - stages_before[s]) * per for s in STAGES},
    )


def _stage_sums(service: FraudScorerService) -> dict[str, float]:
    registry = service.engine.metrics.registry
    return {s: registry.get_sample_value("fraud_decision_latency_seconds_sum", {"stage": s}) or 0.0 for s in STAGES}


def fit_batch_cost(cases: Sequence[PathCase]) -> tuple[float, float]:
    """(fixed µs per batch, µs per decision): least squares of CPU per batch on batch size."""
    if len({c.batch_size for c in cases}) < 2:
        raise ValueError("the fit needs at least two batch sizes")
    size = np.array([c.batch_size for c in cases], dtype=np.float64)
    per_batch = np.array([c.cpu_us_per_decision * c.batch_size for c in cases])
    slope, intercept = np.polyfit(size, per_batch, 1)
    return float(intercept), float(slope)


def format_path_speed(speed: PathSpeed) -> str:
    header = f"{'batch':>6} {'batches':>8} {'CPU µs/decision':>16}   " + " ".join(f"{s:>9}" for s in STAGES)
    lines = ["the scorer's work alone (no gRPC transport), one process:", header]
    for c in speed.cases:
        stages = " ".join(f"{c.stage_us_per_decision[s]:9.1f}" for s in STAGES)
        lines.append(f"{c.batch_size:6d} {c.batches:8d} {c.cpu_us_per_decision:16.1f}   {stages}")
    lines.append(
        f"fitted: {speed.fixed_us_per_batch:,.0f} µs fixed per batch + {speed.us_per_decision:.1f} µs per decision"
        " (stage columns: wall µs per decision on the decide thread)"
    )
    if speed.shed_cpu_us_per_decision is not None:
        lines.append(
            f"the shed path (rules only, recorded, published), batches of {speed.shed_batch_size}: "
            f"{speed.shed_cpu_us_per_decision:.1f} µs CPU per decision"
        )
    return "\n".join(lines)
