"""Wiring for `fraud monitor`: the serving model's reference, the log of record, retrain requests.

Three ways to run the same ``monitoring.Monitor``:

- ``replay_monitor``: read `decisions` and `labels` from the beginning, in event-time order, and
  return the monitor at the end (what ``fraud monitor`` prints and ``--report`` draws).
- ``serve_monitor``: tail both topics as consumer group ``monitor`` and export Prometheus metrics;
  windows close as event time advances; sustained alerts request retrains.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import TYPE_CHECKING

from fraud.config import Settings
from schema import Decision, Label, decode_decision, decode_label

if TYPE_CHECKING:
    from monitoring import Monitor, MonitorMetrics

log = logging.getLogger(__name__)
MONITOR_GROUP = "monitor"


def build_monitor(
    settings: Settings, version: str | None = None, act: bool = False, metrics: MonitorMetrics | None = None
) -> tuple[Monitor, str]:
    """A monitor against ``version``'s training reference (default: the champion).

    With ``act``, alerts of the kinds in ``monitor_retrain_on`` record retrain requests in the
    registry (``fraud retrain --if-due`` answers them), at most one outstanding at a time."""
    from monitoring import DriftReference, Monitor, ScoreCalibration
    from retrain import ModelRegistry

    registry = ModelRegistry(settings.registry_dir)
    version = version or registry.champion()
    if version is None:
        raise ValueError("no model to monitor: train one first (`fraud train`)")
    meta = registry.metadata(version)
    monitor = Monitor(
        DriftReference.from_dict(meta["drift_reference"]),
        ScoreCalibration.from_dict(meta.get("calibration")),
        settings.monitor_policy(),
        on_retrain=_requester(registry) if act else None,
        metrics=metrics,
    )
    return monitor, version


def _requester(registry) -> Callable[[str], None]:
    from retrain.schedule import pending_requests, request_retrain

    def request(reason: str) -> None:
        # Across restarts too: one unanswered request from the monitor is enough.
        if any(r["by"] == "monitor" for r in pending_requests(registry)):
            log.info("retrain already requested and not yet answered; not asking again (%s)", reason)
            return
        request_retrain(registry, reason, by="monitor", at=datetime.now(UTC))

    return request


def replay_monitor(
    settings: Settings,
    decisions: Sequence[Decision] | None = None,
    labels: Sequence[Label] | None = None,
    act: bool = False,
    version: str | None = None,
) -> tuple[Monitor, str]:
    """Feed the whole log (or the given decisions and labels) through a fresh monitor, in event time."""
    from deploy.kafka import read_topic

    monitor, version = build_monitor(settings, version, act)
    if decisions is None:
        bootstrap = settings.require_kafka()
        decisions = [decode_decision(m.value()) for m in read_topic(bootstrap, settings.topics.decisions, 2.0)]
        labels = [decode_label(m.value()) for m in read_topic(bootstrap, settings.topics.labels, 2.0)]
    feed(monitor, decisions, labels or [])
    monitor.flush()
    return monitor, version


def feed(monitor: Monitor, decisions: Sequence[Decision], labels: Sequence[Label]) -> None:
    """Decisions (at their event time) and labels (when they became known) in one timeline, as they arrived."""
    timeline = sorted(
        [(d.transaction.event_ts, 0, d) for d in decisions] + [(lb.known_at.timestamp(), 1, lb) for lb in labels],
        key=lambda item: (item[0], item[1]),
    )
    for is_label, run in groupby(timeline, key=lambda item: item[1]):
        items = [item[2] for item in run]
        if is_label:
            monitor.observe_labels(items)
        else:
            monitor.observe(items)


def _stop_on_signal() -> Callable[[], bool]:
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    return stopping.is_set


def serve_monitor(settings: Settings, port: int, poll_s: float = 1.0, stop: Callable[[], bool] | None = None) -> None:
    """Tail `decisions` and `labels` (group ``monitor``), export metrics on ``port``, act on alerts.

    Runs until ``stop()`` is true, or SIGTERM/SIGINT (then it leaves the consumer group cleanly)."""
    from confluent_kafka import KafkaError
    from prometheus_client import start_http_server

    from deploy.kafka import make_consumer
    from deploy.lag import record_positions
    from monitoring import MonitorMetrics

    metrics = MonitorMetrics()
    monitor, version = build_monitor(settings, act=True, metrics=metrics)
    start_http_server(port, addr=settings.metrics_host, registry=metrics.registry)
    topics = settings.topics
    consumer = make_consumer(settings.require_kafka(), MONITOR_GROUP, [topics.decisions, topics.labels])
    log.info("monitoring model %s; metrics on :%d", version, port)
    stop = stop or _stop_on_signal()
    next_lag = 0.0
    try:
        while not stop():
            if time.monotonic() >= next_lag:
                record_positions(consumer, metrics.consumer_lag)
                next_lag = time.monotonic() + 2.0
            decisions, labels = [], []
            for msg in consumer.consume(num_messages=2000, timeout=poll_s):
                if msg.error() is not None:
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consume error: %s", msg.error())
                    continue
                try:
                    if msg.topic() == topics.decisions:
                        decisions.append(decode_decision(msg.value()))
                    else:
                        labels.append(decode_label(msg.value()))
                except ValueError as exc:  # the producers validate; a bad record here is logged, not fatal
                    log.warning("unreadable record on %s at offset %s: %s", msg.topic(), msg.offset(), exc)
            monitor.observe(decisions)
            monitor.observe_labels(labels)
    finally:
        consumer.close()
