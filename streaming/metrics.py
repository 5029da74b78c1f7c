"""Prometheus metrics of the feature stream.

Counters are at-least-once: after a crash the replayed interval is counted again (the Redis state
is not: see ``docs/features.md``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from deploy.lag import consumer_lag_gauge
from deploy.metrics import BatchHistogram

# Freshness is sub-second when healthy and minutes when the stream falls behind: fine buckets low,
# coarse ones high, so percentiles can be read off both regimes.
FRESHNESS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

# The gaps between batches leaving the flow: a few hundred ms under load, seconds when something
# holds the flow's thread (a recovery snapshot, a wait for Redis).
BATCH_INTERVAL_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        kw = {"registry": self.registry}
        self.transactions = Counter(
            "fraud_stream_transactions",
            "Transactions seen by the feature stream, by admission outcome (admitted, late, duplicate, invalid).",
            ["outcome"],
            **kw,
        )
        self.labels = Counter(
            "fraud_stream_labels",
            "Labels seen by the feature stream (applied, unattributed: no merchant, invalid).",
            ["outcome"],
            **kw,
        )
        self.dead_letters = Counter(
            "fraud_stream_dead_letters", "Events sent to dead-letter, by reason (invalid, late).", ["reason"], **kw
        )
        self.freshness = BatchHistogram(
            "fraud_feature_freshness_seconds",
            "Seconds from a transaction's event time until its aggregates are visible in Redis.",
            FRESHNESS_BUCKETS,
            self.registry,
        )
        self.batch_intervals = Histogram(
            "fraud_stream_batch_interval_seconds",
            "Seconds between consecutive batches of entity states leaving the flow for Redis. Under "
            "steady load the longest are the flow standing still: a recovery snapshot, a wait for Redis.",
            buckets=BATCH_INTERVAL_BUCKETS,
            **kw,
        )
        # bytewax calls each shard's snapshot() on the flow's thread and writes what it returns
        # before the flow moves on: these say how much of each standstill is our encoding, and
        # how it grows with the state (docs/features.md, section 7).
        self.snapshot_seconds = Counter(
            "fraud_stream_snapshot_seconds",
            "Seconds the flow spent taking recovery snapshots of the state, by step (admission, entity_state).",
            ["step"],
            **kw,
        )
        self.snapshot_base_seconds = Counter(
            "fraud_stream_snapshot_base_seconds",
            "Seconds the base writer spent encoding and writing snapshots' base files, beside the flow, by step.",
            ["step"],
            **kw,
        )
        self.snapshot_bytes = Counter(
            "fraud_stream_snapshot_bytes", "Bytes of recovery snapshots encoded, by step.", ["step"], **kw
        )
        self.store_retries = Counter(
            "fraud_stream_store_retries", "Writes to Redis retried while it was unavailable", **kw
        )
        self.store_resyncs = Counter(
            "fraud_stream_store_resyncs", "Times Redis came back restarted and every state was rewritten", **kw
        )
        self.redis_writes = Counter(
            "fraud_stream_entity_writes", "Entity states written to Redis (after coalescing).", **kw
        )
        # fraud_kafka_consumer_lag{consumer="feature-stream", topic, partition}: see streaming.dataflow
        self.consumer_lag = consumer_lag_gauge(self.registry)
