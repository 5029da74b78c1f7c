"""`fraud experiment watch`: the running A/B test's controller on the live system.

It reads `decisions` and `labels` from the beginning (a fresh reader each start, as ``fraud
monitor`` does: the topics are the log of record, so a restarted watcher loses nothing), keeps
the decisions of the experiment's arms made since it started, and every ``interval`` builds a
snapshot (``experiments.analysis.snapshot``: per-arm metrics as labels mature, the sequential
comparison) with the review backlog from the review store and each arm's decision latency from the
scorers' ``fraud_experiment_arm_seconds`` histograms. ``experiments.controller`` turns it into an
action (advance the ramp, halt on a guardrail, conclude on the sequential test, or hold) and the
experiment file changes; scorers follow it within a poll.

Memory: the experiment's decisions are held as objects (about 2 KB each): fine for the simulated
loads here; a production controller reads the same numbers from the decision warehouse.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from fraud.config import Settings
from schema import Decision, Label, decode_decision, decode_label

log = logging.getLogger(__name__)
ARM_LATENCY = "fraud_experiment_arm_seconds"
MAX_LATENCY_SAMPLES = 100_000


@dataclass
class LiveFeed:
    """The experiment's decisions and every label, as read so far."""

    arms: frozenset[str]
    since: datetime
    decisions: list[Decision] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    unreadable: int = 0

    def add(self, topic_is_decisions: bool, value: bytes) -> None:
        try:
            if topic_is_decisions:
                d = decode_decision(value)
                if d.policy_arm in self.arms and d.decided_at >= self.since:
                    self.decisions.append(d)
            else:
                self.labels.append(decode_label(value))
        except ValueError as exc:  # the producers validate; a bad record is counted, not fatal
            self.unreadable += 1
            log.warning("unreadable record: %s", exc)


def open_reader(bootstrap: str, topics: Sequence[str]):
    """A consumer assigned every partition of ``topics`` from the beginning (no group, no rebalance)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "experiment-watch", "enable.auto.commit": False})
    assigned = []
    for topic in topics:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assigned += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    consumer.assign(assigned)
    return consumer


def read_available(consumer, feed: LiveFeed, decisions_topic: str, idle_s: float = 1.0) -> int:
    """Consume until nothing arrives for ``idle_s``; returns the messages read."""
    n = 0
    while True:
        batch = consumer.consume(num_messages=5000, timeout=idle_s)
        if not batch:
            return n
        for msg in batch:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", msg.error())
                continue
            feed.add(msg.topic() == decisions_topic, msg.value())
            n += 1


def arm_latencies_ms(metrics_texts: Iterable[str]) -> dict[str, np.ndarray]:
    """Each arm's decision latencies at histogram-bucket resolution (every observation counted at
    its bucket's upper bound: a p99 from them is conservative), summed over scorers."""
    counts: dict[str, dict[float, float]] = {}
    for text in metrics_texts:
        for family in text_string_to_metric_families(text):
            if family.name != ARM_LATENCY:
                continue
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    by_le = counts.setdefault(s.labels["arm"], {})
                    le = float(s.labels["le"])
                    by_le[le] = by_le.get(le, 0.0) + s.value
    out = {}
    for arm, by_le in counts.items():
        bounds = sorted(by_le)
        cumulative = np.array([by_le[b] for b in bounds])
        per_bucket = np.diff(cumulative, prepend=0.0)
        scale = min(1.0, MAX_LATENCY_SAMPLES / max(cumulative[-1], 1.0))
        finite = [b if np.isfinite(b) else bounds[-2] * 2 for b in bounds]  # +Inf: twice the last bound
        out[arm] = np.repeat(np.array(finite) * 1000.0, np.round(per_bucket * scale).astype(int))
    return out


def scrape(urls: Sequence[str]) -> list[str]:
    texts = []
    for url in urls:
        try:
            texts.append(urllib.request.urlopen(url, timeout=2).read().decode())
        except OSError as exc:  # a scorer away: its latencies are missing this round, not fatal
            log.warning("cannot scrape %s: %s", url, exc)
    return texts


def review_backlog(settings: Settings) -> int | None:
    """Open review cases, or None when there is no review store (the controller then counts the
    unreviewed flags in the log)."""
    if not settings.review_db.exists():
        return None
    from fraud.lifecycle import open_review_store

    store = open_review_store(settings)
    try:
        return store.counts()["open"]
    finally:
        store.close()


def watch(
    settings: Settings,
    metrics_urls: Sequence[str],
    interval_s: float,
    once: bool,
    say: Callable[[str], None],
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Review the running experiment every ``interval_s``; between experiments, wait for the next
    one (a controller that runs as a service). ``once``: review what is there once and return."""
    from experiments.store import ExperimentStore

    store = ExperimentStore(settings.registry_dir)
    waiting_said = False
    while not stop():
        state = store.current()
        if state is not None:
            _watch_one(settings, store, state, metrics_urls, interval_s, once, say, stop)
            waiting_said = False
        elif not waiting_said:
            say("no experiment running: waiting for `fraud experiment start FILE`")
            waiting_said = True
        if once:
            return
        time.sleep(interval_s)


def _watch_one(settings, store, state, metrics_urls, interval_s, once, say, stop) -> None:
    """Review one experiment until it is stopped (or replaced): its own feed, from the beginning."""
    from experiments.analysis import DecisionLog, snapshot
    from experiments.controller import ExperimentController, apply

    name, started = state.experiment.name, state.started_at
    feed = LiveFeed(frozenset([a.name for a in state.experiment.arms] + ["holdout"]), started)
    topics = settings.topics
    consumer = open_reader(settings.require_kafka(), [topics.decisions, topics.labels])
    controller = ExperimentController()
    plans = _plans(state.extra.get("plans"))  # each treatment's planned sample and looks taken so far
    try:
        while True:
            read_available(consumer, feed, topics.decisions)
            state = store.current()
            if state is None or (state.experiment.name, state.started_at) != (name, started):
                say(f"experiment {name} was stopped")
                return
            now = datetime.now(UTC)
            snap = snapshot(
                DecisionLog.from_decisions(feed.decisions),
                feed.labels,
                state.experiment,
                now,
                plans=plans,
                latencies_ms=arm_latencies_ms(scrape(metrics_urls)),
                review_backlog=review_backlog(settings),
                launched=state.winner,
            )
            if snap.plans != plans:
                plans = snap.plans
                state = store.record_looks({arm: asdict(p) for arm, p in plans.items()})
            action = controller.review(state, snap, now)
            after = apply(store, action, now)
            status = "gone" if after is None else f"{after.status}, step {after.step + 1}, traffic {after.traffic:g}"
            say(
                f"{now:%Y-%m-%d %H:%M:%S} {len(feed.decisions):,} decisions, {len(feed.labels):,} labels: "
                f"{action.kind}: {action.reason} ({status})"
            )
            if once or stop():
                return
            time.sleep(interval_s)
    finally:
        consumer.close()


def _plans(saved: dict | None) -> dict:
    """The sequential plans the controller recorded in the experiment file (empty: none yet)."""
    from experiments.analysis import SequentialPlan

    return {
        arm: SequentialPlan(p["planned"], tuple(tuple(look) for look in p["looks"]), p.get("estimated", False))
        for arm, p in (saved or {}).items()
    }
