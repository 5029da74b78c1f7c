"""What the decision path does when a dependency fails: the fallback ladder and the circuit breaker.

The ladder, for a payment decided without its features (Redis down, hung or its circuit open) or
without the model (README, "Decisions and their fallback"):

1. **Rules first, always.** Hard rules (blocked country, amount limits) need only the payment and
   still block; velocity rules report "not evaluated".
2. **Over the degraded ceiling** (``degraded_flag_amount_minor``, 100.00 by default): flag for
   review before capture. Without history the model's score would be falsely reassuring, so it
   is not consulted.
3. **Under the ceiling: fail open, within a budget.** Small payments are approved so that a
   Redis outage does not decline a shop's whole day; each such approval carries the rule hit
   ``degraded_post_auth_review@1``, for which review intake opens a ``post_auth`` case. The budget
   (``fail_open_per_s`` approvals per second per scorer, a token bucket with a burst of
   ``fail_open_burst``) caps the exposure of a long outage: past it, payments are flagged.

Every fallback decision carries ``degraded_reason`` and is counted in
``fraud_degraded_decisions_total{reason}``.

The circuit breaker keeps a hung Redis from costing every batch its full timeout: after
``failures_to_open`` consecutive failures the engine stops calling Redis for ``retry_after_s``,
then lets one batch try (half-open); a success closes the circuit. So during an outage batches are
decided in microseconds, and recovery needs nothing but Redis coming back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FallbackPolicy:
    degraded_flag_amount_minor: int = 10_000  # 100.00: above this, decisions without features go to review
    fail_open_per_s: float = 200.0  # approvals without features per second per scorer, sustained
    fail_open_burst: float = 1_000.0  # and in a burst
    failures_to_open: int = 2  # consecutive Redis failures that open the circuit
    retry_after_s: float = 1.0  # how long an open circuit skips Redis before one batch tries again


@dataclass
class CircuitBreaker:
    """Closed: call through. Open: refuse for ``retry_after_s``. Then one trial call decides."""

    failures_to_open: int = 2
    retry_after_s: float = 1.0
    clock: object = time.monotonic
    opens: int = 0  # times the circuit opened
    _failures: int = 0
    _opened_at: float | None = None
    _trial: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether to call the dependency now (one caller at a time gets the half-open trial)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial or self.clock() - self._opened_at < self.retry_after_s:
                return False
            self._trial = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial or (self._opened_at is None and self._failures >= self.failures_to_open):
                if self._opened_at is None:
                    self.opens += 1
                self._opened_at, self._trial = self.clock(), False


@dataclass
class FailOpenBudget:
    """Token bucket of approvals allowed without features."""

    per_s: float
    burst: float
    clock: object = time.monotonic
    _tokens: float | None = None
    _at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self) -> bool:
        with self._lock:
            now = self.clock()
            if self._tokens is None:
                self._tokens, self._at = self.burst, now
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False
