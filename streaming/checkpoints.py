"""Incremental recovery snapshots of the stream's shards: a base written beside the flow, and in
bytewax's snapshot only which base and the changes since it.

Why: bytewax takes a key's snapshot on the flow's thread, and the flow stands still meanwhile.
Whole-shard snapshots grew with the state: at 10,000/s the entity shards' encoding took 192, 325
and 421 ms at 10, 20 and 30 s, and freshness p99 over 90 s was 1.9 s (docs/features.md, section 7).

How (the shape of Flink's incremental checkpoints):

- Each batch's changes are encoded as the shard applies them (``ShardLog.record``): a few µs per
  payment, spread evenly instead of paid at once.
- At a snapshot the shard's state is copied (``image``: array copies) and a thread encodes,
  compresses and writes the copy as a *base* file, fsynced and renamed into place, once the flow
  goes on. Compression releases the GIL.
- bytewax's snapshot of the shard is a ``Checkpoint``: the newest base known to be on disk, and the
  changes logged since that base's copy was taken. A base is named only once its file is durable,
  so a snapshot that bytewax commits never names a missing file.
- Resume reads the base and replays the log (``restore``).

A shard's base files are named after the shard, which keeps its name across restarts, in a
directory per step; the last few are kept, since bytewax may resume from a snapshot an epoch or
two older than the newest.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self, TypeVar

import msgspec
import zstandard

log = logging.getLogger(__name__)

BASES_DIR = "bases"  # inside the recovery directory, a directory per step
RELEASE_WAIT_S = 1.0
KEEP_BASES = 3  # bases named by a shard's last snapshots, kept for a resume from any of them
_LOG_ZSTD_LEVEL = 1


class Checkpointed(Protocol):
    """A shard state that ``ShardLog`` can checkpoint."""

    def image(self) -> Any:
        """A copy of the state, cheap to take (the flow waits for it)."""
        ...

    @classmethod
    def encode_image(cls, image: Any) -> bytes:
        """The image as a base (in the writer thread)."""
        ...

    @classmethod
    def decode(cls, raw: bytes) -> Self: ...

    def replay(self, entry: bytes, now: float) -> None:
        """Apply a logged change again."""
        ...


C = TypeVar("C", bound=Checkpointed)


class Checkpoint(msgspec.Struct, array_like=True):
    """A shard's recovery snapshot: base file ``base`` (None: the empty state) and the changes
    since its copy, each zstd-compressed."""

    shard: str
    base: int | None
    log: list[bytes]


_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)
_encoder = msgspec.msgpack.Encoder()


class BaseFiles:
    """The base files of one step's shards in one directory, ``SHARD.SEQ.zst``, and the thread that
    writes them: one per step and process, so its bases are written one at a time.

    The writer starts on the bases of a snapshot round only once the flow goes on (``release``, at
    its next batch): bytewax snapshots every shard in a row while the flow stands still, and a
    writer already compressing then takes and gives back the GIL between its calls, which made
    that round ~3 times longer (measured at 600,000 payments: 76 + 199 ms instead of 18 + 67).
    (Not at a lower CPU priority either: holding the GIL while the OS let it wait for a core, it
    would hold up the flow.)"""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._writer: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._go = threading.Event()

    def release(self) -> None:
        """The flow has gone on from its snapshots: write their bases."""
        self._go.set()

    def submit(self, shard: str, seq: int, encode: Callable[[], bytes]) -> Future[float]:
        """Encode and write base ``seq`` of ``shard`` in the writer thread; the future's result is
        the seconds it took."""
        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, f"bases-{self.directory.name}")
        self._go.clear()
        return self._writer.submit(self._encode_and_write, shard, seq, encode)

    def _encode_and_write(self, shard: str, seq: int, encode: Callable[[], bytes]) -> float:
        self._go.wait(timeout=RELEASE_WAIT_S)  # a flow without batches to go on with: write anyway
        started = time.perf_counter()
        self.write(shard, seq, encode())
        return time.perf_counter() - started

    def path(self, shard: str, seq: int) -> Path:
        return self.directory / f"{shard}.{seq}.zst"

    def write(self, shard: str, seq: int, data: bytes) -> None:
        """Durably: written beside, fsynced, renamed into place, the rename fsynced."""
        final = self.path(shard, seq)
        building = final.with_suffix(".building")
        with open(building, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        building.replace(final)
        handle = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)

    def read(self, shard: str, seq: int) -> bytes:
        path = self.path(shard, seq)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise MissingBase(
                f"{path} is missing: the recovery snapshot of {self.directory.name} shard {shard} names base {seq}, "
                "and bytewax's snapshots cannot be resumed without it (a recovery directory copied or restored in "
                "part?). Restore the whole directory, or delete the recovery store to start over (the stream then "
                "reads Kafka again from the oldest offsets it keeps)."
            ) from exc

    def keep_only(self, shard: str, seqs: set[int]) -> None:
        """Delete the shard's other bases (and any half-written one)."""
        for path in self.directory.glob(f"{shard}.*"):
            seq = path.name.split(".")[1]
            if not (path.suffix == ".zst" and seq.isdigit() and int(seq) in seqs):
                path.unlink(missing_ok=True)


class MissingBase(RuntimeError):
    """A snapshot names a base file that is not there; the message says what to do."""


class _BaseWrite(NamedTuple):
    seq: int
    cut: int  # the log entries that the base holds
    future: Future[float]


class ShardLog:
    """One shard's incremental snapshots (see the module docstring)."""

    def __init__(
        self, files: BaseFiles, shard: str | None = None, base: int | None = None, log: list[bytes] | None = None
    ) -> None:
        self.files = files
        self.shard = shard
        self.base = base
        self.log = log or []
        self._recent: list[int | None] = [base]  # the bases of the last snapshots, newest last
        self._writing: _BaseWrite | None = None
        self.base_seconds = 0.0  # spent writing bases, off the flow's thread, not yet taken

    def record(self, shard: str, entry: bytes | None) -> None:
        """Log a change (msgpack) that shard ``shard`` has just applied; None: it changed nothing."""
        self.shard = shard
        if entry is not None:
            self.log.append(zstandard.ZstdCompressor(level=_LOG_ZSTD_LEVEL).compress(entry))

    def snapshot(self, state: Checkpointed) -> bytes:
        """The checkpoint of ``state`` now; starts writing a new base unless one is under way."""
        if self._writing is not None and self._writing.future.done():
            self.base_seconds += self._writing.future.result()  # raises what the writer raised
            self.base, self.log = self._writing.seq, self.log[self._writing.cut :]
            self._writing = None
        if self.shard is None:  # nothing ever arrived: the empty state
            return _encoder.encode(Checkpoint("", None, []))
        checkpoint = _encoder.encode(Checkpoint(self.shard, self.base, self.log))
        self._recent = [*self._recent, self.base][-KEEP_BASES:]
        if self._writing is None and self.log:
            seq = (self.base or 0) + 1
            self.files.keep_only(self.shard, {s for s in self._recent if s is not None})
            image, encode_image = state.image(), type(state).encode_image
            self._writing = _BaseWrite(
                seq, len(self.log), self.files.submit(self.shard, seq, lambda: encode_image(image))
            )
        return checkpoint

    def take_base_seconds(self) -> float:
        """The writer's seconds on this shard's bases since the last call (for a metric)."""
        seconds, self.base_seconds = self.base_seconds, 0.0
        return seconds

    def wait(self) -> None:
        """Until the base under way is written (tests)."""
        if self._writing is not None:
            self.files.release()
            self._writing.future.result()


def restore(files: BaseFiles, raw: bytes, kind: type[C], now: float) -> tuple[C, ShardLog]:
    """The state a checkpoint describes (its base, the log replayed), and its log to go on with."""
    started = time.perf_counter()
    checkpoint = _checkpoint_decoder.decode(raw)
    if not checkpoint.shard:
        return _empty(kind), ShardLog(files)
    base = checkpoint.base
    state = kind.decode(files.read(checkpoint.shard, base)) if base is not None else _empty(kind)
    decompressor = zstandard.ZstdDecompressor()
    for chunk in checkpoint.log:
        state.replay(decompressor.decompress(chunk), now)
    # Bases after this one were written by a run that did not get to commit a snapshot naming them.
    files.keep_only(checkpoint.shard, {base} if base is not None else set())
    log.info(
        "%s shard %s restored from base %s and %d logged batches in %.2f s",
        files.directory.name,
        checkpoint.shard,
        base,
        len(checkpoint.log),
        time.perf_counter() - started,
    )
    return state, ShardLog(files, checkpoint.shard, base, list(checkpoint.log))


def _empty(kind: type[C]) -> C:
    return kind()  # type: ignore[call-arg]
