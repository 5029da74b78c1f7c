"""Incremental recovery snapshots of the stream's shards: the changes logged to files beside the
flow, a base written now and then, and in bytewax's snapshot only which files and how much of them.

Why: bytewax takes a key's snapshot on the flow's thread, and the flow stands still meanwhile; with
recovery on, its sources also stop reading at each epoch's end until every snapshot of the epoch is
written to its store (measured with two processes at 10,000/s: 0.12-0.25 s without any snapshot
of ours). Whatever the snapshot costs is added to that pause. Whole-shard snapshots grew with the
state (192, 325 and 421 ms at 10, 20 and 30 s); a base for every shard at every snapshot, with the
log since it inside bytewax's snapshot, still made the pause 0.2-0.4 s with two processes
(docs/features.md, section 7).

How (the shape of Flink's changelog state backend, FLIP-158):

- Each batch's changes are encoded as the shard applies them (``ShardLog.record``): a few µs per
  payment, spread evenly instead of paid at once.
- A writer thread appends them to the shard's *log file* about every ``FLUSH_S`` and syncs it.
- Every ``BASE_EVERY`` snapshots, a shard's state is copied (``image``: array copies) and the
  writer encodes, compresses and writes the copy as a *base* file, fsynced and renamed into place,
  once the flow goes on. Changes after the copy go to a new log file named after that base. Which
  snapshots take a base differs by shard, so a snapshot round copies a share of the shards.
- bytewax's snapshot of the shard is a ``Checkpoint``: the newest base known to be on disk, how
  many bytes of each log file since it are known to be synced, and the few changes that are not
  (inline). A file is named only once it is durable, so a snapshot that bytewax commits never names
  a missing file or bytes not yet written.
- Resume reads the base and replays the logs and the inline changes (``restore``).

A shard's files are named after the shard, which keeps its name across restarts, in a directory
per step: ``SHARD.SEQ.zst`` (base SEQ) and ``SHARD.SEQ.log`` (the changes after base SEQ's copy;
0: from the empty state). The files that the last few snapshots name are kept, since bytewax may
resume from a snapshot an epoch or two older than the newest.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import deque
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
# A base every 4th snapshot: a round copies a quarter of the shards, and a resume replays at most
# ~4 snapshot intervals of changes (replay ~9 µs per payment: ~4 s at 10,000/s every 10 s).
BASE_EVERY = 4
FLUSH_S = 1.0  # how often a shard's changes are appended to its log file; later ones ride inline
_LOG_ZSTD_LEVEL = 1
_FRAME = struct.Struct("<I")  # a log file is frames: length, then a compressed change


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


class LogRef(msgspec.Struct, array_like=True):
    """The first ``length`` bytes of log file ``seq``: synced, and part of a snapshot."""

    seq: int
    length: int


class Checkpoint(msgspec.Struct, array_like=True):
    """A shard's recovery snapshot: base file ``base`` (None: the empty state), then the changes
    since its copy: in log files, and those not yet synced inline, each zstd-compressed."""

    shard: str
    base: int | None
    logs: list[LogRef]
    inline: list[bytes]


_checkpoint_decoder = msgspec.msgpack.Decoder(Checkpoint)
_encoder = msgspec.msgpack.Encoder()


class BaseFiles:
    """The base and log files of one step's shards in one directory, and the thread that writes
    them: one per step and process, so its files are written one at a time, in order.

    The writer starts on the bases of a snapshot round only once the flow goes on (``release``, at
    its next batch): bytewax snapshots every shard in a row while the flow stands still, and a
    writer already compressing then takes and gives back the GIL between its calls, which made
    that round ~3 times longer (measured at 600,000 payments: 76 + 199 ms instead of 18 + 67).
    (Not at a lower CPU priority either: holding the GIL while the OS let it wait for a core, it
    would hold up the flow.)"""

    def __init__(self, directory: Path, base_every: int = BASE_EVERY) -> None:
        self.directory = directory
        self.base_every = base_every
        directory.mkdir(parents=True, exist_ok=True)
        self._writer: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._turns: dict[str, int] = {}

    def turn(self, shard: str) -> int:
        """The shard's place among this directory's shards (in the order first asked): which
        snapshots take its bases, so that each round takes a share of them."""
        with self._lock:
            return self._turns.setdefault(shard, len(self._turns))

    def release(self) -> None:
        """The flow has gone on from its snapshots: write their bases."""
        self._go.set()

    def submit(self, shard: str, seq: int, encode: Callable[[], bytes]) -> Future[float]:
        """Encode and write base ``seq`` of ``shard`` in the writer thread; the future's result is
        the seconds it took."""
        self._go.clear()
        return self._thread().submit(self._encode_and_write, shard, seq, encode)

    def append(self, shard: str, seq: int, entries: list[bytes]) -> Future[int]:
        """Append ``entries`` to log file ``seq`` of ``shard`` and sync it, in the writer thread
        after what was handed to it before; the future's result is the file's length then."""
        return self._thread().submit(self._append, shard, seq, entries)

    def _thread(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, f"bases-{self.directory.name}")
            return self._writer

    def _encode_and_write(self, shard: str, seq: int, encode: Callable[[], bytes]) -> float:
        self._go.wait(timeout=RELEASE_WAIT_S)  # a flow without batches to go on with: write anyway
        started = time.perf_counter()
        self.write(shard, seq, encode())
        return time.perf_counter() - started

    def _append(self, shard: str, seq: int, entries: list[bytes]) -> int:
        with open(self.log_path(shard, seq), "ab") as out:
            out.write(b"".join(part for entry in entries for part in (_FRAME.pack(len(entry)), entry)))
            out.flush()
            os.fdatasync(out.fileno())
            return out.tell()

    def path(self, shard: str, seq: int) -> Path:
        return self.directory / f"{shard}.{seq}.zst"

    def log_path(self, shard: str, seq: int) -> Path:
        return self.directory / f"{shard}.{seq}.log"

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
        return self._read(self.path(shard, seq), shard, f"base {seq}")

    def read_log(self, shard: str, ref: LogRef) -> list[bytes]:
        """The changes in the first ``ref.length`` bytes of the log file (a crashed run may have
        appended more)."""
        raw = self._read(self.log_path(shard, ref.seq), shard, f"{ref.length} bytes of log {ref.seq}")
        if len(raw) < ref.length:
            raise MissingBase(
                _missing(
                    self.log_path(shard, ref.seq),
                    self.directory.name,
                    shard,
                    f"{ref.length} bytes of log {ref.seq}",
                    f"has {len(raw)}",
                )
            )
        entries, at = [], 0
        while at < ref.length:
            (size,) = _FRAME.unpack_from(raw, at)
            entries.append(raw[at + _FRAME.size : at + _FRAME.size + size])
            at += _FRAME.size + size
        return entries

    def _read(self, path: Path, shard: str, what: str) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise MissingBase(_missing(path, self.directory.name, shard, what, "is missing")) from exc

    def keep_only(self, shard: str, bases: set[int], logs: range) -> None:
        """Delete the shard's other bases and log files (and any half-written base)."""
        for path in self.directory.glob(f"{shard}.*"):
            seq = path.name.split(".")[1]
            keep = bases if path.suffix == ".zst" else logs if path.suffix == ".log" else ()
            if not (seq.isdigit() and int(seq) in keep):
                path.unlink(missing_ok=True)


def _missing(path: Path, step: str, shard: str, what: str, problem: str) -> str:
    return (
        f"{path} {problem}: the recovery snapshot of {step} shard {shard} names {what}, and bytewax's "
        "snapshots cannot be resumed without it (a recovery directory copied or restored in part?). Restore the "
        "whole directory, or delete the recovery store to start over (the stream then reads Kafka again from the "
        "oldest offsets it keeps)."
    )


class MissingBase(RuntimeError):
    """A snapshot names a base or log file that is not there (or not all of it); the message says
    what to do."""


class _Append(NamedTuple):
    count: int  # the first ``count`` pending changes
    future: Future[int]


class _BaseWrite(NamedTuple):
    seq: int
    future: Future[float]


class ShardLog:
    """One shard's incremental snapshots (see the module docstring).

    The changes since base ``base`` are: the synced prefixes of its log files (``logs``), then the
    ``pending`` ones, each with the log file it goes to. The first of those have been handed to
    the writer (``_appends``, in order); the rest wait for the next append."""

    def __init__(
        self,
        files: BaseFiles,
        shard: str | None = None,
        base: int | None = None,
        logs: list[LogRef] | None = None,
        pending: list[bytes] | None = None,
    ) -> None:
        self.files = files
        self.shard = shard
        self.base = base
        self.logs = logs or []
        # Changes after a resume go to a log file of their own: the last one named may hold more
        # than its snapshot took, written by the run that stopped.
        self.log_seq = max([base or 0, *(ref.seq + 1 for ref in self.logs)]) if shard else 0
        self.pending: list[tuple[int, bytes]] = [(self.log_seq, entry) for entry in pending or []]
        self._appends: deque[_Append] = deque()
        self._handed = 0  # pending changes handed to the writer
        self._last_append = time.monotonic()
        self._recent: list[int | None] = [base]  # the bases of the last snapshots, newest last
        self._writing: _BaseWrite | None = None
        self._rounds = 0
        self._compressor = zstandard.ZstdCompressor(level=_LOG_ZSTD_LEVEL)
        self.base_seconds = 0.0  # spent writing bases, off the flow's thread, not yet taken

    def record(self, shard: str, entry: bytes | None) -> None:
        """Log a change (msgpack) that shard ``shard`` has just applied; None: it changed nothing."""
        self.shard = shard
        if entry is not None:
            self.pending.append((self.log_seq, self._compressor.compress(entry)))
            if time.monotonic() - self._last_append >= FLUSH_S:
                self._append()

    def snapshot(self, state: Checkpointed) -> bytes:
        """The checkpoint of ``state`` now; starts writing a new base when one is due."""
        self._settle()
        if self.shard is None:  # nothing ever arrived: the empty state
            return _encoder.encode(Checkpoint("", None, [], []))
        checkpoint = Checkpoint(self.shard, self.base, list(self.logs), [entry for _, entry in self.pending])
        self._append()  # synced by the next snapshot, most likely
        self._recent = [*self._recent, self.base][-KEEP_BASES:]
        self._rounds += 1
        if self._writing is None and self._base_due(checkpoint):
            self.log_seq += 1  # changes after the copy go to the new base's log
            oldest = min(base or 0 for base in self._recent)  # a snapshot needs no log older than its base
            self.files.keep_only(
                self.shard, {b for b in self._recent if b is not None}, range(oldest, self.log_seq + 1)
            )
            image, encode_image = state.image(), type(state).encode_image
            self._writing = _BaseWrite(
                self.log_seq, self.files.submit(self.shard, self.log_seq, lambda: encode_image(image))
            )
        return _encoder.encode(checkpoint)

    def _base_due(self, checkpoint: Checkpoint) -> bool:
        changed = checkpoint.logs or checkpoint.inline
        return bool(changed) and (self._rounds + self.files.turn(self.shard)) % self.files.base_every == 0

    def _append(self) -> None:
        """Hand the changes not yet handed to the writer, a call per log file."""
        self._last_append = time.monotonic()
        while self._handed < len(self.pending):
            seq = self.pending[self._handed][0]
            entries = []
            for s, entry in self.pending[self._handed :]:
                if s != seq:
                    break
                entries.append(entry)
            self._appends.append(_Append(len(entries), self.files.append(self.shard, seq, entries)))
            self._handed += len(entries)

    def _settle(self) -> None:
        """Take in what the writer has finished, in the order it was handed over."""
        # Looked at first: a base done means every change handed over before it is synced too.
        base_done = self._writing is not None and self._writing.future.done()
        while self._appends and self._appends[0].future.done():
            count, future = self._appends.popleft()
            length = future.result()  # raises what the writer raised
            seq = self.pending[0][0]
            self.pending, self._handed = self.pending[count:], self._handed - count
            if self.logs and self.logs[-1].seq == seq:
                self.logs[-1] = LogRef(seq, length)
            else:
                self.logs.append(LogRef(seq, length))
        if base_done:
            assert self._writing is not None
            self.base_seconds += self._writing.future.result()
            # Every change before the copy was handed over before the base, so is synced by now.
            self.base = self._writing.seq
            self.logs = [ref for ref in self.logs if ref.seq >= self.base]
            self._writing = None

    def take_base_seconds(self) -> float:
        """The writer's seconds on this shard's bases since the last call (for a metric)."""
        seconds, self.base_seconds = self.base_seconds, 0.0
        return seconds

    def wait(self) -> None:
        """Until the base under way and the changes handed over are written (tests)."""
        self.files.release()
        if self._writing is not None:
            self._writing.future.result()
        for append in list(self._appends):
            append.future.result()
        self._settle()


def restore(files: BaseFiles, raw: bytes, kind: type[C], now: float) -> tuple[C, ShardLog]:
    """The state a checkpoint describes (its base, the logs replayed), and its log to go on with."""
    started = time.perf_counter()
    checkpoint = _checkpoint_decoder.decode(raw)
    if not checkpoint.shard:
        return _empty(kind), ShardLog(files)
    shard, base = checkpoint.shard, checkpoint.base
    state = kind.decode(files.read(shard, base)) if base is not None else _empty(kind)
    decompressor = zstandard.ZstdDecompressor()
    logged = [entry for ref in checkpoint.logs for entry in files.read_log(shard, ref)]
    for entry in [*logged, *checkpoint.inline]:
        state.replay(decompressor.decompress(entry), now)
    resumed = ShardLog(files, shard, base, list(checkpoint.logs), list(checkpoint.inline))
    # Files after these were written by a run that did not get to commit a snapshot naming them.
    files.keep_only(shard, {base} if base is not None else set(), range(base or 0, resumed.log_seq))
    log.info(
        "%s shard %s restored from base %s, %d logged batches from log files and %d inline in %.2f s",
        files.directory.name,
        shard,
        base,
        len(logged),
        len(checkpoint.inline),
        time.perf_counter() - started,
    )
    return state, resumed


def _empty(kind: type[C]) -> C:
    return kind()  # type: ignore[call-arg]
