"""A small client for the decision service, used by the demo, tests and (later) the benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from schema import Transaction
from scoring.proto import fraud_pb2 as pb
from scoring.proto import fraud_pb2_grpc
from scoring.wire import transaction_to_proto


class ScorerClient:
    def __init__(self, target: str, timeout_s: float = 5.0) -> None:
        self.channel = grpc.insecure_channel(target)
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
