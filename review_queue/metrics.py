"""Prometheus metrics of the review queue, on a registry passed in (no import-time globals).

The reviewer console (``fraud review --web``) serves them at ``GET /metrics``: the gauges are read
from the store on each scrape, the verdict counter counts the verdicts recorded through it.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from review_queue.store import ReviewStore, Verdict


class ReviewMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.depth = Gauge(
            "fraud_review_queue_depth", "Open review cases awaiting a verdict (claimed or not)", registry=r
        )
        self.oldest_age = Gauge(
            "fraud_review_oldest_case_age_seconds",
            "Seconds since the oldest open case's payment was decided (0 when the queue is empty)",
            registry=r,
        )
        self.verdicts = Counter(
            "fraud_review_verdicts",
            "Verdicts recorded by reviewers (fraud, legitimate, unsure)",
            ["verdict"],
            registry=r,
        )
        for verdict in Verdict:  # every series from the start, so rate() sees the first verdict
            self.verdicts.labels(verdict.value)

    def refresh(self, store: ReviewStore, now: datetime | None = None) -> None:
        """Set the queue gauges from ``store``."""
        depth, oldest_age_s = store.queue_stats(now)
        self.depth.set(depth)
        self.oldest_age.set(oldest_age_s)

    def count_verdict(self, verdict: Verdict) -> None:
        self.verdicts.labels(verdict.value).inc()
