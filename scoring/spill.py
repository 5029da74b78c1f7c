"""Decisions the broker could not take yet, kept on disk until it can.

The publisher never makes an authorisation wait for Kafka. librdkafka holds undelivered messages
in memory, up to a bound (``queue.buffering.max.kbytes``); past it, or when a message times out
in there (``message.timeout.ms``) or is purged at shutdown, the publisher appends it here. A
replay thread hands the spilled records back to the producer once its in-memory queue has drained
(the broker is taking messages again), oldest segment first, and deletes a segment only after a
flush confirmed every record of it delivered (a record that fails again is spilled again).

Guarantees: nothing accepted is dropped while the spill is under ``max_bytes``; past that, records
are counted as publish failures and logged (the disk is the last bound). Delivery is at least
once: a crash between a replay and its deletion replays the segment again; consumers of
`decisions` keep one decision per transaction id (the message key). A SIGKILL loses what was in
librdkafka's memory and not yet spilled; a graceful stop (SIGTERM) purges that into the spill.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer

log = logging.getLogger(__name__)

SEGMENT_PREFIX = "spill-"


class Spill:
    """Append-only segments of (topic, key, value) records in ``directory``."""

    def __init__(self, directory: Path, max_bytes: int = 2 * 1024**3) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._segment = self._next_segment()
        self._bytes = sum(p.stat().st_size for p in self.segments())

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"{SEGMENT_PREFIX}*.jsonl"), key=_sequence)

    @property
    def bytes(self) -> int:
        return self._bytes

    def append(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """Keep one record; False when the spill is full (the caller counts the loss)."""
        line = json.dumps({"t": topic, "k": None if key is None else key.decode(), "v": value.decode()}) + "\n"
        data = line.encode()
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                return False
            with self._segment.open("ab") as fh:
                fh.write(data)
            self._bytes += len(data)
        return True

    def seal(self) -> list[Path]:
        """Start a new segment for appends; returns the sealed ones (oldest first) for replay."""
        with self._lock:
            sealed = [p for p in self.segments() if p.stat().st_size > 0]
            self._segment = self._next_segment()
        return sealed

    def delete(self, segment: Path) -> None:
        with self._lock:
            self._bytes -= segment.stat().st_size
            segment.unlink()

    def _next_segment(self) -> Path:
        existing = self.segments()
        sequence = _sequence(existing[-1]) + 1 if existing else 0
        return self.directory / f"{SEGMENT_PREFIX}{sequence:08d}.jsonl"


def _sequence(path: Path) -> int:
    return int(path.stem.removeprefix(SEGMENT_PREFIX))


class SpillReplayer:
    """Hands spilled records back to the producer when the broker is taking messages again."""

    def __init__(
        self,
        spill: Spill,
        producer: Producer,
        on_delivery: Callable[[object, object], None],
        on_replayed: Callable[[int], None],
        interval_s: float = 0.5,
    ) -> None:
        self.spill = spill
        self.producer = producer
        self.on_delivery = on_delivery
        self.on_replayed = on_replayed
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spill-replay", daemon=True)

    def start(self) -> SpillReplayer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.spill.bytes:
                continue
            self.producer.poll(0)  # serve delivery reports, or len() keeps counting delivered messages
            if len(self.producer) == 0:  # drained: the broker is back
                try:
                    self.replay_once()
                except Exception:  # noqa: BLE001 - retried next round; the records stay on disk
                    log.exception("spill replay failed; will retry")

    def replay_once(self, flush_timeout_s: float = 30.0) -> int:
        """Replay every sealed segment; returns records handed back and delivered."""
        replayed = 0
        for segment in self.spill.seal():
            records = [json.loads(line) for line in segment.read_text().splitlines() if line]
            for r in records:
                self._produce(r)
            if self.producer.flush(flush_timeout_s) > 0:
                log.warning("broker stopped taking messages during a spill replay; %s kept", segment.name)
                return replayed  # what failed was re-spilled by the delivery callback; this file stays
            self.spill.delete(segment)
            replayed += len(records)
            self.on_replayed(len(records))
        return replayed

    def _produce(self, record: dict) -> None:
        key = None if record["k"] is None else record["k"].encode()
        while True:
            try:
                self.producer.produce(record["t"], key=key, value=record["v"].encode(), on_delivery=self.on_delivery)
                return
            except BufferError:
                self.producer.poll(0.1)
                if self._stop.is_set():
                    raise
                time.sleep(0.01)
