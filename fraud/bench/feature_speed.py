"""The feature read alone: CPU per payment of the decision path's feature stage, by batch size.

The decision path's feature stage is two steps: one ``MGET`` of the batch's entity states from
Redis, then ``entity_feature_matrix`` over them. This measures both on the benchmark's own world
(the payments it sends, the states it loaded), so the docs can say what features cost next to the
model, gRPC and the decision record, and how much of it is fixed per batch.

For each batch size (default 1, 10, 50, 200, 1000), consecutive slices of the payments in event
order are read back to back for about ``seconds_per_case``:

* ``compute_us_per_payment``: process CPU time of ``entity_feature_matrix`` alone (states already
  fetched), divided by the payments;
* ``mget_us_per_payment``: process CPU time of ``OnlineFeatureStore.read_batch`` as the decision
  path calls it (numbering the entities, building the keys, the MGET, parsing the reply), divided
  by the payments; Redis's own CPU is not in it.

A fixed cost per batch shows as the gap between small and large batches. Numbers are for this
machine at this moment; rerun rather than quote them elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from schema import Transaction
from streaming import OnlineFeatureStore
from streaming.batch_features import entity_feature_matrix, warm_up
from streaming.offline import event_order

DEFAULT_BATCH_SIZES = (1, 10, 50, 200, 1000)


@dataclass(frozen=True)
class FeatureReadRate:
    """One batch size of :func:`measure_feature_reads`."""

    batch_size: int
    batches: int
    compute_us_per_payment: float
    mget_us_per_payment: float


def measure_feature_reads(
    store: OnlineFeatureStore,
    payments: Sequence[Transaction],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seconds_per_case: float = 1.0,
) -> list[FeatureReadRate]:
    """CPU per payment of the MGET and of the feature computation, per batch size."""
    if not payments:
        raise ValueError("no payments to read features for")
    ordered = sorted(payments, key=event_order)
    warm_up()  # compiling (or loading) the kernel is a server's start-up, not a batch's cost
    rates = []
    for size in batch_sizes:
        mget_cpu = compute_cpu = 0.0
        batches = read = 0
        deadline = time.monotonic() + seconds_per_case
        while time.monotonic() < deadline or batches == 0:
            start = (batches * size) % max(len(ordered) - size + 1, 1)
            batch = ordered[start : start + size]
            before = time.process_time()
            fetch = store.read_batch(batch)
            fetched = time.process_time()
            entity_feature_matrix(batch, fetch.entities.index, fetch.states)
            mget_cpu += fetched - before
            compute_cpu += time.process_time() - fetched
            batches += 1
            read += len(batch)
        rates.append(FeatureReadRate(size, batches, 1e6 * compute_cpu / read, 1e6 * mget_cpu / read))
    return rates


def format_feature_reads(rates: Sequence[FeatureReadRate]) -> str:
    lines = [f"{'batch':>6}  {'batches':>8}  {'features µs/payment':>20}  {'MGET µs/payment':>16}"]
    lines += [
        f"{r.batch_size:>6}  {r.batches:>8,}  {r.compute_us_per_payment:>20.1f}  {r.mget_us_per_payment:>16.1f}"
        for r in rates
    ]
    return "\n".join(lines)
