"""The fallback ladder's pieces on a fake clock: the circuit breaker and the fail-open budget."""

from __future__ import annotations

from scoring.fallback import CircuitBreaker, FailOpenBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_circuit_opens_after_consecutive_failures_and_one_trial_closes_it():
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=2, retry_after_s=1.0, clock=clock)
    breaker.failure()
    assert breaker.allow() and not breaker.is_open  # one failure is not a pattern
    breaker.failure()
    assert breaker.is_open and not breaker.allow() and breaker.opens == 1
    clock.now = 0.99
    assert not breaker.allow()
    clock.now = 1.0
    assert breaker.allow()  # the half-open trial...
    assert not breaker.allow()  # ...is given to one caller only
    breaker.success()
    assert not breaker.is_open and breaker.allow()


def test_a_failed_trial_reopens_for_another_full_wait_without_counting_a_new_opening():
    clock = Clock()
    breaker = CircuitBreaker(failures_to_open=1, retry_after_s=1.0, clock=clock)
    breaker.failure()
    clock.now = 1.5
    assert breaker.allow()
    breaker.failure()
    assert breaker.is_open and not breaker.allow() and breaker.opens == 1
    clock.now = 2.49
    assert not breaker.allow()
    clock.now = 2.5
    assert breaker.allow()


def test_a_success_between_failures_resets_the_count():
    breaker = CircuitBreaker(failures_to_open=2, clock=Clock())
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert not breaker.is_open


def test_the_fail_open_budget_allows_its_burst_then_its_rate():
    clock = Clock()
    budget = FailOpenBudget(per_s=10.0, burst=5.0, clock=clock)
    assert [budget.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now = 0.35  # 3.5 tokens back
    assert [budget.take() for _ in range(4)] == [True] * 3 + [False]
    clock.now = 100.0  # never more than the burst
    assert sum(budget.take() for _ in range(10)) == 5
