"""How much work a core does per CPU second while a step runs: the bench's yardstick between runs.

On a shared host a vCPU is often one hyperthread of a physical core whose other half belongs to
another tenant. When that neighbour is busy, our core does less per CPU second, and no steal time
shows it: the same step at the same rate then costs more CPU per decision and sheds more. Runs
here moved by that much (docs/performance.md, section 3), so each step reports this probe.

A thread in the bench's own (otherwise idle) process times a fixed piece of pure-Python work in
thread CPU time, twice a second. CPU time leaves out waiting for a core, so a saturated machine
alone does not raise the reading; slower cores do (a busy sibling hyperthread, a lower clock).
The work is ~1-4 ms: the probe costs under 1% of a core. There is no reading "at rest": an idle
core here ran the work ~1.7x slower than a busy one (3,847 against 2,178 µs at p50), its clock
down, so a reading without load says nothing about a step.
"""

from __future__ import annotations

import threading
import time

import numpy as np

WORK_ITERATIONS = 20_000


def fixed_work() -> int:
    total = 0
    for i in range(WORK_ITERATIONS):
        total += i * i % 7
    return total


def time_fixed_work() -> float:
    """CPU µs that one run of :func:`fixed_work` took on this thread."""
    started = time.thread_time()
    fixed_work()
    return (time.thread_time() - started) * 1e6


def probe_summary(samples_us: list[float]) -> dict[str, float | int | None]:
    if not samples_us:
        return {"samples": 0, "p50": None, "p90": None, "max": None}
    a = np.asarray(samples_us)
    return {
        "samples": len(a),
        "p50": round(float(np.percentile(a, 50)), 1),
        "p90": round(float(np.percentile(a, 90)), 1),
        "max": round(float(a.max()), 1),
    }


class CoreSpeedProbe:
    """Times :func:`fixed_work` every ``interval_s`` on a thread of its own, while in a ``with``."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples_us: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="core-speed-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples_us.append(time_fixed_work())

    def __enter__(self) -> CoreSpeedProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict[str, float | int | None]:
        return probe_summary(self.samples_us)
