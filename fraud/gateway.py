"""Plays the payment gateway for the demo and the end-to-end tests.

A real gateway asks for a decision, then publishes the payment to `transactions`, and the feature
stream applies it within a fraction of a second. Replaying days of history in seconds would put
the stream minutes of simulated time behind the scorer; this gateway keeps the two in step (each
chunk waits until the stream has applied the previous one), as real time would. Labels go to
`labels` at their ``known_at``, in step with the payments, so the merchant fraud rates online see
exactly the labels known at each payment, as the offline builder does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from confluent_kafka import Producer

from deploy.kafka import produce_all
from fraud.processes import wait_for
from schema import Label, Transaction, encode
from scoring import ScorerClient
from streaming import OnlineFeatureStore


class PacedGateway:
    def __init__(
        self,
        client: ScorerClient,
        producer: Producer,
        transactions_topic: str,
        labels_topic: str,
        store: OnlineFeatureStore,
        alive: Callable[[], None] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.client = client
        self.producer = producer
        self.topic = transactions_topic
        self.labels_topic = labels_topic
        self.store = store
        self.alive = alive
        self.timeout_s = timeout_s
        counts = store.counts()
        self.applied_target = counts.get("events", 0)
        self.labels_target = counts.get("labels", 0)

    def publish(self, transactions: Sequence[Transaction], labels: Sequence[Label] = ()) -> None:
        """Publish labels and payments and wait until the stream has applied them."""
        produce_all(self.producer, self.labels_topic, ((lb.transaction_id.encode(), encode(lb)) for lb in labels))
        self.labels_target += sum(1 for lb in labels if lb.merchant_id)  # the stream counts attributed ones
        self.applied_target += produce_all(
            self.producer, self.topic, ((t.card_id.encode(), encode(t)) for t in transactions)
        )

        def applied() -> bool:
            counts = self.store.counts()
            return counts.get("events", 0) >= self.applied_target and counts.get("labels", 0) >= self.labels_target

        wait_for(applied, self.timeout_s, "the feature stream to apply published events", alive=self.alive)

    def replay(
        self,
        transactions: Sequence[Transaction],
        chunk: int,
        labels: Sequence[Label] = (),
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Decide every transaction over gRPC (DecideBatch, up to ``chunk`` at a time), then publish it.

        Transactions must be in event order. Each label is published before the first transaction
        at or after its ``known_at`` is decided: chunks end where a label becomes known.
        """
        pending = sorted(labels, key=lambda lb: lb.known_at)
        decided: list[str] = []
        j = 0

        def due_by(ts: float) -> list[Label]:
            nonlocal j
            start = j
            while j < len(pending) and pending[j].known_at.timestamp() <= ts:
                j += 1
            return pending[start:j]

        i = 0
        if transactions:
            self.publish([], due_by(transactions[0].event_ts))
        while i < len(transactions):
            next_label = pending[j].known_at.timestamp() if j < len(pending) else float("inf")
            end = i + 1
            while end < min(i + chunk, len(transactions)) and transactions[end].event_ts < next_label:
                end += 1
            part = transactions[i:end]
            for reply in self.client.decide_batch(part):
                if reply.error:
                    raise RuntimeError(f"scorer refused {reply.transaction_id}: {reply.error}")
                decided.append(reply.transaction_id)
            # The payments just decided, and the labels known before the next one, in one round.
            self.publish(part, due_by(transactions[end].event_ts) if end < len(transactions) else [])
            i = end
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
