"""Plays the payment gateway for the demo and the end-to-end tests.

A real gateway asks for a decision, then publishes the payment to `transactions`, and the feature
stream applies it within a fraction of a second. Replaying days of history in seconds would put
the stream minutes of simulated time behind the scorer; this gateway keeps the two in step (each
chunk waits until the stream has applied the previous one), as real time would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from confluent_kafka import Producer

from deploy.kafka import produce_all
from fraud.processes import wait_for
from schema import Transaction, encode
from scoring import ScorerClient
from streaming import OnlineFeatureStore


class PacedGateway:
    def __init__(
        self,
        client: ScorerClient,
        producer: Producer,
        transactions_topic: str,
        store: OnlineFeatureStore,
        alive: Callable[[], None] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.client = client
        self.producer = producer
        self.topic = transactions_topic
        self.store = store
        self.alive = alive
        self.timeout_s = timeout_s
        self.applied_target = store.counts().get("events", 0)

    def publish(self, transactions: Sequence[Transaction]) -> None:
        """Publish payments to `transactions` and wait until the stream has applied them."""
        self.applied_target += produce_all(
            self.producer, self.topic, ((t.card_id.encode(), encode(t)) for t in transactions)
        )
        wait_for(
            lambda: self.store.counts().get("events", 0) >= self.applied_target,
            self.timeout_s,
            "the feature stream to apply published transactions",
            alive=self.alive,
        )

    def replay(
        self, transactions: Sequence[Transaction], chunk: int, progress: Callable[[int], None] | None = None
    ) -> list[str]:
        """Decide every transaction over gRPC (DecideBatch, ``chunk`` at a time), then publish it."""
        decided: list[str] = []
        for i in range(0, len(transactions), chunk):
            part = transactions[i : i + chunk]
            for reply in self.client.decide_batch(part):
                if reply.error:
                    raise RuntimeError(f"scorer refused {reply.transaction_id}: {reply.error}")
                decided.append(reply.transaction_id)
            self.publish(part)
            if progress is not None:
                progress(len(decided))
        return decided


def wait_until_serving(client: ScorerClient, timeout_s: float, alive: Callable[[], None] | None = None) -> None:
    def ready() -> bool:
        try:
            client.wait_ready(0.2)
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    wait_for(ready, timeout_s, "the scorer to serve", poll_s=0.2, alive=alive)
