"""When to retrain: on a calendar (monthly by default) or when monitoring asks.

A scheduler (cron, a Kubernetes CronJob) runs ``fraud retrain --if-due`` often, say daily; the run
trains only when this says so, so the schedule lives in one place and a missed cron tick costs
nothing. Monitoring does not train by itself: it records a request (``request_retrain``, with its
reason), and the next scheduled run honours it, at most once per ``min_gap`` so a flapping alert
cannot retrain every hour.

Two clocks: the calendar compares data time (the run's cut-off, the end of the history by default,
with the label cut-off of the newest model), so replaying a year of history retrains monthly in
it; requests and their rate limit are wall-clock events (when the alert fired, when the last model
was registered).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from retrain.registry import ModelRegistry

REQUESTS_FILE = "retrain_requests.jsonl"


@dataclass(frozen=True)
class RetrainSchedule:
    every: timedelta = timedelta(days=30)
    min_gap: timedelta = timedelta(days=1)  # between request-triggered retrains


def request_retrain(registry: ModelRegistry, reason: str, by: str, at: datetime | None = None) -> dict[str, Any]:
    """Record that ``by`` (e.g. a drift alert) wants a retrain, and why."""
    if not reason.strip():
        raise ValueError("reason: a retrain request must say why")
    entry = {"at": (at or datetime.now(UTC)).isoformat(), "by": by, "reason": reason}
    registry.root.mkdir(parents=True, exist_ok=True)
    with (registry.root / REQUESTS_FILE).open("a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


def pending_requests(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Requests made after the newest model was registered (the ones no retrain has answered)."""
    return _after(registry.root / REQUESTS_FILE, _last_registered(registry))


def _after(path: Path, last: datetime | None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    requests = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in requests if last is None or datetime.fromisoformat(r["at"]) > last]


def retrain_due(registry: ModelRegistry, now: datetime, schedule: RetrainSchedule) -> str | None:
    """Why a retrain is due at ``now`` (data time), or None when it is not."""
    newest = _newest_cutoff(registry)
    if newest is None:
        return "no model registered yet"
    age = now - newest
    if age >= schedule.every:
        return f"newest model's labels end {newest:%Y-%m-%d}, {age.days} days ago (every {schedule.every.days} d)"
    last = _last_registered(registry)
    pending = _after(registry.root / REQUESTS_FILE, last)
    if pending:
        if last is not None and datetime.now(UTC) - last < schedule.min_gap:
            return None  # rate-limited: the request stays pending for the next run
        first = pending[0]
        return f"requested by {first['by']}: {first['reason']}" + (
            f" (+{len(pending) - 1} more)" if len(pending) > 1 else ""
        )
    return None


def _newest_cutoff(registry: ModelRegistry) -> datetime | None:
    cutoffs = [
        datetime.fromisoformat(m.get("label_cutoff") or m["as_of"])
        for m in (registry.metadata(v) for v in registry.versions())
        if m.get("label_cutoff") or m.get("as_of")
    ]
    return max(cutoffs, default=None)


def _last_registered(registry: ModelRegistry) -> datetime | None:
    stamps = [
        datetime.fromisoformat(m["registered_at"])
        for m in (registry.metadata(v) for v in registry.versions())
        if "registered_at" in m
    ]
    return max(stamps, default=None)
