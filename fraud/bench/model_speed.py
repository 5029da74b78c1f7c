"""The model call alone: rows per second per core for onnxruntime (how the scorer serves) and XGBoost.

This isolates one line of the decision path, the model call, so the docs can say what the model costs
next to Redis, gRPC and Python, and why onnxruntime rather than XGBoost's own predictor is on the path.

What is measured, for each predictor and batch size (default 1, 64, 512):

* ``onnxruntime``: ``RegisteredModel.predict_proba(batch)``, exactly the serving call, on the session the
  registry builds (one intra-op and one inter-op thread).
* ``xgboost``: ``Booster.inplace_predict(batch)`` on the same model's XGBoost file from the registry,
  with ``nthread=1``.

Each case runs a short warm-up, then calls the predictor back to back for about ``seconds_per_case``,
each call on the next rows of a pool (cycled) so no two consecutive calls see the same data.

How to read it:

* ``p50_us`` / ``p99_us`` are per *call* (a whole batch), wall clock around the call only.
* ``rows_per_s`` is rows divided by the wall time spent inside the calls.
* ``rows_per_cpu_s`` is rows divided by the process CPU time (``time.process_time``) of the timed loop:
  "per core". Both predictors are single-threaded, so it should be close to ``rows_per_s``: a little lower
  from the loop's own overhead, a little higher when other load took the core away mid-call (wall time
  runs on, CPU time does not). A predictor that quietly used more threads would show a wall rate well
  above its CPU rate. The CPU rate is the one to compare, and the one that says how many cores a given
  decision rate needs for the model alone.
* Numbers are for this machine at this moment; rerun rather than quote them elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import xgboost as xgb

from retrain import ModelRegistry, RegisteredModel
from streaming.features import MODEL_FEATURES

Predictor = Literal["onnxruntime", "xgboost"]

DEFAULT_ROWS = 4096
DEFAULT_SEED = 20261101


@dataclass(frozen=True)
class ModelCallRate:
    """One (predictor, batch size) case of :func:`measure_model_calls`."""

    predictor: Predictor
    batch_size: int
    calls: int
    rows_per_s: float  # rows / wall seconds inside the calls
    p50_us: float  # per call
    p99_us: float  # per call
    cpu_s: float  # process CPU time of the timed loop
    rows_per_cpu_s: float  # rows / cpu_s: rows per second per core
    call_s: float  # wall seconds inside the calls (the denominator of rows_per_s)

    @property
    def rows(self) -> int:
        return self.calls * self.batch_size


def load_predictors(registry_dir: Path, version: str | None = None) -> tuple[RegisteredModel, xgb.Booster]:
    """The served ONNX model and the same version's XGBoost booster, both set to one thread.

    ``version`` defaults to the champion. Raises ``ModelLoadError`` when the version was registered without
    its XGBoost file.
    """
    registry = ModelRegistry(registry_dir)
    model = registry.load(version)
    booster = xgb.Booster(model_file=str(registry.native_model_path(model.version)))
    booster.set_param({"nthread": 1})
    return model, booster


def default_features(rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Standard-normal rows from a fixed seed, float32, in ``MODEL_FEATURES`` width.

    Not real transactions. A tree ensemble's cost is one root-to-leaf walk per tree, bounded by the depth,
    whatever the values; rows that differ from one another keep the CPU's branch predictor from learning a
    single path, which would flatter the figures. Pass real feature rows to be sure for a given model.
    """
    return np.random.default_rng(seed).normal(size=(rows, len(MODEL_FEATURES))).astype(np.float32)


def measure_model_calls(
    registry_dir: Path,
    version: str | None = None,
    features: np.ndarray | None = None,
    batch_sizes: Sequence[int] = (1, 64, 512),
    seconds_per_case: float = 1.0,
) -> list[ModelCallRate]:
    """Time onnxruntime and XGBoost on the same registered model, per batch size (see the module docstring).

    ``features``: float32 rows of shape (n, len(MODEL_FEATURES)); default :func:`default_features`.
    Returns one rate per (predictor, batch size), onnxruntime first.
    """
    if features is None:
        features = default_features()
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != len(MODEL_FEATURES) or features.shape[0] == 0:
        raise ValueError(f"features must have shape (n >= 1, {len(MODEL_FEATURES)}), got {features.shape}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if seconds_per_case <= 0:
        raise ValueError(f"seconds_per_case must be > 0, got {seconds_per_case}")

    model, booster = load_predictors(registry_dir, version)
    predictors: dict[Predictor, Callable[[np.ndarray], np.ndarray]] = {
        "onnxruntime": model.predict_proba,
        "xgboost": booster.inplace_predict,
    }
    pool = _pool(features, max(batch_sizes))
    return [
        _measure(name, call, pool, len(features), batch_size, seconds_per_case)
        for name, call in predictors.items()
        for batch_size in batch_sizes
    ]


def format_model_calls(rates: list[ModelCallRate]) -> str:
    """A plain-text table: predictor, batch, rows/s per core, p50 and p99 per call in µs."""
    header = ("predictor", "batch", "rows/s per core", "p50 µs", "p99 µs")
    rows = [
        (r.predictor, str(r.batch_size), f"{r.rows_per_cpu_s:,.0f}", f"{r.p50_us:,.1f}", f"{r.p99_us:,.1f}")
        for r in rates
    ]
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        # Text left, numbers right, so digits line up.
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(header), *(line(row) for row in rows)]
    return "\n".join(lines)


def _pool(features: np.ndarray, max_batch: int) -> np.ndarray:
    """The rows, followed by enough of themselves that a batch starting at any row is one contiguous slice.

    Slices of a C-contiguous array are views: taking a batch costs nothing next to the call being timed.
    """
    reps = -(-(len(features) + max_batch) // len(features))
    return np.tile(features, (reps, 1))[: len(features) + max_batch]


def _measure(
    predictor: Predictor,
    call: Callable[[np.ndarray], np.ndarray],
    pool: np.ndarray,
    distinct_rows: int,
    batch_size: int,
    seconds: float,
) -> ModelCallRate:
    start_row = 0

    def next_batch() -> np.ndarray:
        nonlocal start_row
        batch = pool[start_row : start_row + batch_size]
        start_row = (start_row + batch_size) % distinct_rows
        return batch

    # Warm-up: first calls allocate buffers and fault pages in; a server warms its session before serving.
    warm_until = time.perf_counter() + min(0.2, 0.1 * seconds)
    for _ in range(3):
        call(next_batch())
    while time.perf_counter() < warm_until:
        call(next_batch())

    durations_ns: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    cpu_start = time.process_time()
    while True:
        batch = next_batch()
        t0 = clock()
        call(batch)
        t1 = clock()
        durations_ns.append(t1 - t0)
        if t1 >= deadline:
            break
    cpu_s = time.process_time() - cpu_start

    calls = len(durations_ns)
    rows = calls * batch_size
    call_s = sum(durations_ns) / 1e9
    p50_ns, p99_ns = np.percentile(np.asarray(durations_ns, dtype=np.float64), [50, 99])
    return ModelCallRate(
        predictor=predictor,
        batch_size=batch_size,
        calls=calls,
        rows_per_s=rows / call_s if call_s > 0 else float("inf"),
        p50_us=float(p50_ns) / 1e3,
        p99_us=float(p99_ns) / 1e3,
        cpu_s=cpu_s,
        # process_time ticks coarsely on some systems; a case too short to register CPU has no rate to report.
        rows_per_cpu_s=rows / cpu_s if cpu_s > 0 else float("nan"),
        call_s=call_s,
    )
