"""Clients for the decision service, used by the demo, tests and the benchmark.

``ScorerClient`` talks to one scorer. ``ScorerPool`` spreads calls over several round-robin and
retries a call that failed in transit (the scorer restarting, unreachable, too slow) on the next
one with the same transaction: the scorers answer a retry with the decision already made for
that transaction id (``scoring.idempotency``), so a retry never yields a second decision.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from schema import Transaction
from scoring.proto import fraud_pb2 as pb
from scoring.proto import fraud_pb2_grpc
from scoring.wire import transaction_to_proto

# Reconnect to a restarted scorer within about a second (gRPC's default backoff grows to 2 min).
FAST_RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000))

# Failures in transit: the call may or may not have been decided, so it is retried with the same id.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
)

T = TypeVar("T")


class ScorerClient:
    def __init__(self, target: str, timeout_s: float = 5.0, options: Sequence[tuple[str, int]] = ()) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(target, options=list(options))
        self.stub = fraud_pb2_grpc.FraudScorerStub(self.channel)
        self.timeout_s = timeout_s

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def decide(self, txn: Transaction | pb.Transaction) -> pb.Decision:
        msg = txn if isinstance(txn, pb.Transaction) else transaction_to_proto(txn)
        return self.stub.Decide(msg, timeout=self.timeout_s)

    def decide_batch(self, transactions: Sequence[Transaction | pb.Transaction]) -> list[pb.Decision]:
        msgs = [t if isinstance(t, pb.Transaction) else transaction_to_proto(t) for t in transactions]
        return list(self.stub.DecideBatch(pb.TransactionBatch(transactions=msgs), timeout=self.timeout_s).decisions)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ScorerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScorerPool:
    """Round-robin over several scorers, retrying a failed call on the next one (thread-safe).

    A call failing with a transit error (``RETRYABLE``) is sent again, same transaction id, to the
    next scorer, up to ``attempts`` times in all, with a short pause growing by ``backoff_s`` per
    attempt. Any other error (INVALID_ARGUMENT, ...) is the answer and is raised at once.
    ``retries`` counts the retries, ``answered`` the answers per target.
    """

    def __init__(
        self,
        targets: Sequence[str],
        timeout_s: float = 2.0,
        attempts: int | None = None,
        backoff_s: float = 0.05,
    ) -> None:
        if not targets:
            raise ValueError("a pool needs at least one target")
        self.clients = [ScorerClient(t, timeout_s, FAST_RECONNECT) for t in targets]
        self.attempts = attempts or max(3, 2 * len(targets))
        self.backoff_s = backoff_s
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.retries = 0
        self.answered: Counter[str] = Counter()

    def decide(self, txn: Transaction | pb.Transaction) -> pb.Decision:
        msg = txn if isinstance(txn, pb.Transaction) else transaction_to_proto(txn)
        return self._call(lambda c: c.decide(msg))

    def decide_batch(self, transactions: Sequence[Transaction | pb.Transaction]) -> list[pb.Decision]:
        msgs = [t if isinstance(t, pb.Transaction) else transaction_to_proto(t) for t in transactions]
        return self._call(lambda c: c.decide_batch(msgs))

    def _call(self, call: Callable[[ScorerClient], T]) -> T:
        start = next(self._next)
        for attempt in range(self.attempts):
            client = self.clients[(start + attempt) % len(self.clients)]
            try:
                answer = call(client)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.attempts - 1:
                    raise
                with self._lock:
                    self.retries += 1
                time.sleep(self.backoff_s * attempt)
                continue
            with self._lock:
                self.answered[client.target] += 1
            return answer
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def __enter__(self) -> ScorerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
