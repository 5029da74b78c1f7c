"""The open-loop load generator of `fraud bench`; it runs in its own process.

Open loop: every payment gets a scheduled arrival time from the target rate before the step starts
(Poisson or evenly spaced), is sent at that time whether or not earlier ones have been answered,
and its latency runs from that *scheduled* time to its decision. A slow system therefore shows up
as latency, not as a politely slower generator (no coordinated omission). When the generator
itself cannot keep up, it says so: ``max_behind_s`` is the worst lag of a send behind schedule.

Modes:
- ``unary``: one ``Decide`` call per payment.
- ``batch``: payments arriving within ``window_ms`` of the first unsent one go in one
  ``DecideBatch`` call (``batch_rpc="stream"``: one message on a ``DecideStream`` stream per
  connection, decisions matched to payments by transaction id; an id that is not this step's is
  counted under ``error_codes["unknown_transaction_id"]``); the wait in the window counts in each
  payment's latency.
- ``kafka``: payments are produced to the transactions topic, the producer lingering up to
  ``window_ms`` to batch them (Kafka's own coalescing, counted in the latency like batch mode's
  window); a consumer on the decisions topic (in this process) stamps each decision when it
  becomes visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np

from schema import Transaction

MODES = ("unary", "batch", "kafka")
# Batch mode's largest message, as a gateway caps its own: a generator that fell behind sends what
# is due in several. One message over the scorer's max_batch (5,000) is refused, and on a stream
# that ends the stream (a 12,000/s step 0.5 s behind once lost 97,670 payments that way).
MAX_PAYMENTS_PER_MESSAGE = 1000


@dataclass(frozen=True)
class LoadStep:
    mode: str
    rate: float  # offered payments per second
    duration_s: float  # measured part of the step
    warmup_s: float  # sent first, left out of every figure
    payments: Path  # JSON lines of Transaction: the payments to send, cycled
    target: str  # gRPC addresses (comma-separated; calls go round-robin), or Kafka bootstrap in kafka mode
    transactions_topic: str = ""
    decisions_topic: str = ""
    step_id: str = "s0"  # prefix of this step's transaction ids (ids are unique per step)
    arrivals: str = "poisson"  # or "constant"
    window_ms: float = 5.0  # batch mode's coalescing window
    # batch mode: "call", one DecideBatch call per window; "stream", one DecideStream message per
    # window on a stream per connection (replies matched by transaction id).
    batch_rpc: str = "call"
    timeout_s: float = 2.0  # per call (gRPC deadline) / per decision (kafka)
    # gRPC connections, spread over the target addresses; calls go round-robin over connections,
    # so every scorer process gets an equal share of the calls.
    connections: int = 1
    seed: int = 1


@dataclass
class StepResult:
    mode: str
    offered_rate: float
    sent: int
    measured: int  # payments scheduled after the warm-up
    decided: int  # of the measured, answered in time
    achieved_rate: float  # decided / duration
    latency_ms: dict[str, float | None]  # p50, p90, p99, p999, max over the measured
    errors: int
    error_codes: dict[str, int]  # gRPC status of failed calls, payments per code
    timeouts: int  # deadline passed or never answered
    mismatched: int  # replies whose transaction id was not the one asked about
    degraded: int  # decisions made without features or model (incl. shed)
    shed: int  # of the degraded: shed by the server's load shedding
    calls: int  # gRPC calls or produced messages
    max_behind_s: float  # worst lag of a send behind its schedule
    generator_cpu_pct: float
    # When the shedding happened: per second of the measured period (by scheduled arrival), how
    # many answered payments were shed. Spread evenly it is load; in a few seconds, a stall.
    shed_by_second: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def arrival_offsets(rate: float, seconds: float, arrivals: str, rng: np.random.Generator) -> np.ndarray:
    """Scheduled arrival times (seconds from the step's start) for ``rate`` payments/s."""
    n = int(rate * seconds)
    if arrivals == "constant":
        return np.arange(n, dtype=np.float64) / rate
    if arrivals == "poisson":
        return np.cumsum(rng.exponential(1.0 / rate, n))
    raise ValueError(f"arrivals: expected 'poisson' or 'constant', got {arrivals!r}")


def latency_summary(latencies_s: np.ndarray) -> dict[str, float | None]:
    """Percentiles in ms of the answered (non-NaN) latencies."""
    done = latencies_s[~np.isnan(latencies_s)]
    if done.size == 0:
        return {k: None for k in ("p50", "p90", "p99", "p999", "max")}
    q = np.percentile(done, [50, 90, 99, 99.9]) * 1000
    return {
        "p50": round(float(q[0]), 2),
        "p90": round(float(q[1]), 2),
        "p99": round(float(q[2]), 2),
        "p999": round(float(q[3]), 2),
        "max": round(float(done.max()) * 1000, 2),
    }


OK, ERROR, TIMEOUT, MISMATCHED = 1, 2, 3, 4  # per payment; 0: no answer (yet)


class _Tally:
    """What came back, per scheduled payment (index into the schedule)."""

    def __init__(self, n: int, step_id: str, on_start: Callable[[], None] | None = None) -> None:
        self.on_start = on_start
        self.latency = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int8)
        self.degraded = np.zeros(n, dtype=bool)
        self.shed = np.zeros(n, dtype=bool)
        self.prefix = f"{step_id}-"
        self.calls = 0
        self.max_behind = 0.0
        self.error_codes: Counter[str] = Counter()
        # Process CPU and wall clock when sending starts: the generator's CPU share counts from
        # here, not from before its imports and the messages it builds ahead of the schedule.
        self.started_cpu = self.started_wall = 0.0

    def start_clock(self) -> None:
        self.started_cpu, self.started_wall = time.process_time(), time.monotonic()
        if self.on_start is not None:
            self.on_start()

    def cpu_pct(self) -> float:
        """The generator's CPU, % of one core, since ``start_clock``."""
        wall = time.monotonic() - self.started_wall
        return 100 * (time.process_time() - self.started_cpu) / max(wall, 1e-9)

    def answered(self, index: int, latency_s: float, degraded_reason: str) -> None:
        if self.status[index] == 0:
            self.status[index] = OK
            self.latency[index] = latency_s
            self.degraded[index] = bool(degraded_reason)
            self.shed[index] = degraded_reason.startswith("shed")

    def failed(self, indices: list[int], status: int) -> None:
        for i in indices:
            if self.status[i] == 0:
                self.status[i] = status


def load_payments(path: Path) -> list[Transaction]:
    """The benchmark world's payments file (JSON lines), decoded."""
    decoder = msgspec.json.Decoder(Transaction)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line]


def _iso_times(ts: np.ndarray) -> list[str]:
    """UTC ISO-8601 times of epoch seconds, all at once (one at a time cost the generator ~10%)."""
    stamps = np.datetime_as_string((ts * 1e6).astype("datetime64[us]"), unit="us")
    return [f"{s}Z" for s in stamps.tolist()]


# --- gRPC modes --------------------------------------------------------------------------------


async def _grpc_step(step: LoadStep, offsets: np.ndarray, tally: _Tally) -> None:
    import grpc

    from scoring.proto import fraud_pb2 as pb
    from scoring.wire import transaction_to_proto

    templates = [transaction_to_proto(t) for t in load_payments(step.payments)]
    n = len(offsets)
    messages = []
    for i in range(n):  # built before the clock starts: the generator's own cost stays off the schedule
        msg = pb.Transaction()
        msg.CopyFrom(templates[i % len(templates)])
        msg.transaction_id = f"{tally.prefix}{i}"
        messages.append(msg)
    # A local subchannel pool per channel: otherwise channels to one target share a connection.
    addresses = step.target.split(",")
    channels = [
        grpc.aio.insecure_channel(addresses[k % len(addresses)], options=[("grpc.use_local_subchannel_pool", 1)])
        for k in range(max(1, step.connections, len(addresses)))
    ]
    try:
        for channel in channels:
            await channel.channel_ready()
        # The clock starts after every payment is stamped with its scheduled arrival and
        # serialised (~3 µs each), so that work cannot put the first sends behind schedule.
        t0 = time.time() + 0.2 + 4e-6 * n
        wire = _serialised(messages, _iso_times(t0 + offsets))
        await _send_all(step, offsets, tally, t0, wire, [_Door(c) for c in channels])
    finally:
        for channel in channels:
            await channel.close()


class _Door:
    """The scorer's methods on one channel, called with requests serialised ahead: a batch is the
    concatenation of its payments' framed bytes, so a window costs the generator a join, not a
    message per payment (a gateway's serialising cost is not what the benchmark measures)."""

    def __init__(self, channel) -> None:
        from scoring.proto import fraud_pb2 as pb
        from scoring.server import SERVICE_NAME

        # No request serialiser: the request is sent as the bytes given.
        self.decide = channel.unary_unary(f"/{SERVICE_NAME}/Decide", response_deserializer=pb.Decision.FromString)
        self.decide_batch = channel.unary_unary(
            f"/{SERVICE_NAME}/DecideBatch", response_deserializer=pb.DecisionBatch.FromString
        )
        self.decide_stream = channel.stream_stream(
            f"/{SERVICE_NAME}/DecideStream", response_deserializer=pb.DecisionBatch.FromString
        )


@dataclass(frozen=True)
class _Wire:
    """Every payment of a step, serialised: alone (a ``Decide`` request) and framed as one entry
    of a ``TransactionBatch`` (field 1), so that joining framed entries makes a batch request."""

    ids: list[str]
    alone: list[bytes]
    framed: list[bytes]

    def batch(self, indices: list[int]) -> bytes:
        framed = self.framed
        return b"".join([framed[i] for i in indices])


def _serialised(messages: list, event_times: list[str]) -> _Wire:
    alone = []
    for msg, at in zip(messages, event_times, strict=True):
        msg.event_time = at
        alone.append(msg.SerializeToString())
    return _Wire([m.transaction_id for m in messages], alone, [_framed_entry(b) for b in alone])


_BATCH_ENTRY_TAG = b"\x0a"  # TransactionBatch.transactions: field 1, length-delimited


def _framed_entry(payload: bytes) -> bytes:
    """``payload`` as one entry of a ``TransactionBatch``: the field's tag, the length, the bytes."""
    size, length = len(payload), bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        if size:
            length.append(byte | 0x80)
        else:
            length.append(byte)
            return _BATCH_ENTRY_TAG + bytes(length) + payload


async def _send_all(step: LoadStep, offsets: np.ndarray, tally: _Tally, t0: float, wire: _Wire, doors: list) -> None:
    import grpc

    n = len(offsets)
    in_flight: set[asyncio.Task[None]] = set()
    rotation = itertools.cycle(doors)
    tally.start_clock()

    async def call(indices: list[int]) -> None:
        door = next(rotation)
        tally.calls += 1
        try:
            if step.mode == "unary":
                replies = [await door.decide(wire.alone[indices[0]], timeout=step.timeout_s)]
            else:
                replies = list((await door.decide_batch(wire.batch(indices), timeout=step.timeout_s)).decisions)
        except grpc.aio.AioRpcError as exc:
            # CANCELLED: still unanswered when the step ended and the channel closed: a timeout.
            timed_out = exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
            if not timed_out:
                tally.error_codes[exc.code().name] += len(indices)
            tally.failed(indices, TIMEOUT if timed_out else ERROR)
            return
        now = time.time()
        for i, reply in zip(indices, replies, strict=False):
            if reply.transaction_id != wire.ids[i]:
                tally.failed([i], MISMATCHED)
            elif reply.error:
                tally.failed([i], ERROR)
            else:
                tally.answered(i, now - (t0 + offsets[i]), reply.degraded_reason)

    streams = _Streams(doors, tally, wire, t0, offsets) if step.mode == "batch" and step.batch_rpc == "stream" else None
    window = step.window_ms / 1000 if step.mode == "batch" else 0.0
    i = 0
    while i < n:
        due = offsets[i] + window  # a batch leaves when its first payment's window closes
        wait = t0 + due - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.time() - t0
        tally.max_behind = max(tally.max_behind, now - due)
        j = i + 1
        while j < n and offsets[j] <= now:
            j += 1
        if step.mode == "unary":
            groups = [[k] for k in range(i, j)]
        else:  # a generator that fell behind has more due than one message may carry
            cap = MAX_PAYMENTS_PER_MESSAGE
            groups = [list(range(k, min(k + cap, j))) for k in range(i, j, cap)]
        if streams is not None:
            for group in groups:
                await streams.send(group)
            i = j
            continue
        for group in groups:
            task = asyncio.create_task(call(group))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        i = j
    if in_flight:
        await asyncio.wait(in_flight, timeout=step.timeout_s + 1)
    if streams is not None:
        await streams.close(step.timeout_s + 1)


class _Streams:
    """Batch mode over ``DecideStream``: one stream per connection, windows sent round-robin, and a
    reader per stream that matches each decision to its payment by transaction id (replies may
    overtake one another). A payment never answered counts as a timeout, as after a deadline."""

    def __init__(self, doors: list[_Door], tally: _Tally, wire: _Wire, t0: float, offsets: np.ndarray) -> None:
        self.tally, self.wire, self.t0, self.offsets = tally, wire, t0, offsets
        self.calls = [door.decide_stream() for door in doors]
        self.rotation = itertools.cycle(self.calls)
        self.readers = [asyncio.create_task(self._read(call)) for call in self.calls]

    async def send(self, indices: list[int]) -> None:
        self.tally.calls += 1
        call = next(self.rotation)
        try:
            await call.write(self.wire.batch(indices))
        except Exception as exc:  # noqa: BLE001 - a broken stream: its payments stay unanswered
            self.tally.error_codes[type(exc).__name__] += len(indices)

    async def _read(self, call) -> None:
        import grpc

        tally, prefix = self.tally, self.tally.prefix
        try:
            async for reply in call:
                now = time.time()
                for decision in reply.decisions:
                    i = _index_of(decision.transaction_id, prefix, len(self.offsets))
                    if i is None:
                        tally.error_codes["unknown_transaction_id"] += 1
                    elif decision.error:
                        tally.failed([i], ERROR)
                    else:
                        tally.answered(i, now - (self.t0 + self.offsets[i]), decision.degraded_reason)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:
                tally.error_codes[exc.code().name] += 1

    async def close(self, timeout_s: float) -> None:
        for call in self.calls:
            with contextlib.suppress(Exception):  # already broken: its reader has recorded why
                await call.done_writing()
        await asyncio.wait(self.readers, timeout=timeout_s)
        for call in self.calls:
            call.cancel()


def _index_of(transaction_id: str, prefix: str, n: int) -> int | None:
    """The schedule index of one of this step's transaction ids (``{prefix}{index}``)."""
    if not transaction_id.startswith(prefix):
        return None
    tail = transaction_id[len(prefix) :]
    return int(tail) if tail.isdigit() and int(tail) < n else None


# --- Kafka mode --------------------------------------------------------------------------------


def _kafka_step(step: LoadStep, offsets: np.ndarray, tally: _Tally) -> None:
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    payments = load_payments(step.payments)
    encoder = msgspec.json.Encoder()
    n = len(offsets)
    producer = Producer(
        {
            "bootstrap.servers": step.target,
            "linger.ms": step.window_ms,
            "compression.type": "lz4",  # as deploy.kafka.make_producer: what a gateway would send
            "queue.buffering.max.messages": 2_000_000,
        }
    )
    consumer = Consumer(
        {
            "bootstrap.servers": step.target,
            "group.id": f"bench-{step.step_id}",
            "fetch.wait.max.ms": 10,
            "fetch.min.bytes": 65536,
        }
    )
    partitions = consumer.list_topics(step.decisions_topic, timeout=10).topics[step.decisions_topic].partitions
    consumer.assign([TopicPartition(step.decisions_topic, p, OFFSET_END) for p in partitions])
    consumer.consume(num_messages=1, timeout=1.0)  # the assignment takes effect: end offsets resolved now
    t0 = time.time() + 0.2
    done = threading.Event()
    prefix = tally.prefix.encode()

    def read_decisions() -> None:
        while not done.is_set():
            for msg in consumer.consume(num_messages=2000, timeout=0.02):
                key = msg.key()
                if msg.error() is not None or not key or not key.startswith(prefix):
                    continue
                index = int(key[len(prefix) :])
                value = msg.value() or b""
                degraded = "" if b'"degraded_reason":null' in value else _degraded_reason(value)
                tally.answered(index, time.time() - (t0 + offsets[index]), degraded)

    reader = threading.Thread(target=read_decisions, daemon=True)
    reader.start()
    tally.start_clock()
    i = 0
    while i < n:
        wait = t0 + offsets[i] - time.time()
        if wait > 0:
            time.sleep(wait)
        now = time.time() - t0
        tally.max_behind = max(tally.max_behind, now - offsets[i])
        while i < n and offsets[i] <= now:
            txn = payments[i % len(payments)]
            payload = msgspec.structs.replace(
                txn, transaction_id=f"{tally.prefix}{i}", event_time=datetime.fromtimestamp(t0 + offsets[i], UTC)
            )
            producer.produce(step.transactions_topic, key=txn.card_id.encode(), value=encoder.encode(payload))
            tally.calls += 1
            i += 1
        producer.poll(0)
    producer.flush(30)
    deadline = time.time() + step.timeout_s
    while time.time() < deadline and np.isnan(tally.latency).any():
        time.sleep(0.05)
    done.set()
    reader.join(5)
    consumer.close()


def _degraded_reason(value: bytes) -> str:
    reason = msgspec.json.decode(value).get("degraded_reason")
    return reason or ""


# --- the step ----------------------------------------------------------------------------------


def run_step(step: LoadStep, on_start: Callable[[], None] | None = None) -> StepResult:
    """Run one step in this process and summarise it (see the module docstring). ``on_start`` is
    called when sending starts, after the set-up (imports, messages built ahead): the moment from
    which the generator's CPU is counted, and a caller can start counting other processes' CPU."""
    rng = np.random.default_rng(step.seed)
    offsets = arrival_offsets(step.rate, step.warmup_s + step.duration_s, step.arrivals, rng)
    tally = _Tally(len(offsets), step.step_id, on_start)
    if step.mode == "kafka":
        _kafka_step(step, offsets, tally)
    elif step.mode in ("unary", "batch"):
        asyncio.run(_grpc_step(step, offsets, tally))
    else:
        raise ValueError(f"mode: expected one of {MODES}, got {step.mode!r}")
    cpu_pct = tally.cpu_pct()
    measured = offsets >= step.warmup_s
    status = tally.status[measured]
    latencies = tally.latency[measured]
    # Answered after the timeout counts as a timeout: a client would have given up on it.
    late = (status == OK) & (latencies > step.timeout_s)
    in_time = (status == OK) & ~late
    shed = tally.shed[measured] & in_time
    return StepResult(
        mode=step.mode,
        offered_rate=step.rate,
        sent=len(offsets),
        measured=int(measured.sum()),
        decided=int(in_time.sum()),
        achieved_rate=round(int(in_time.sum()) / step.duration_s, 1),
        latency_ms=latency_summary(latencies[in_time]),
        errors=int((status == ERROR).sum()),
        error_codes=dict(tally.error_codes),
        timeouts=int((status == TIMEOUT).sum() + (status == 0).sum() + late.sum()),
        mismatched=int((status == MISMATCHED).sum()),
        degraded=int(tally.degraded[measured][in_time].sum()),
        shed=int(shed.sum()),
        calls=tally.calls,
        max_behind_s=round(tally.max_behind, 3),
        generator_cpu_pct=round(cpu_pct, 1),
        shed_by_second=shed_by_second(offsets[measured] - step.warmup_s, shed, step.duration_s),
    )


def shed_by_second(offsets_s: np.ndarray, shed: np.ndarray, duration_s: float) -> list[int]:
    """Shed payments per whole second of scheduled arrival (``offsets_s`` from the measured
    period's start), one entry per second of ``duration_s``."""
    seconds = max(1, int(np.ceil(duration_s)))
    return np.bincount(offsets_s[shed].astype(np.int64), minlength=seconds)[:seconds].tolist()


def run_step_in_child(step: LoadStep, out: object, started: object | None = None) -> None:
    """Entry point of the generator process: run the step, put the result on ``out`` (a queue);
    ``started`` (an Event) is set when sending starts."""
    from deploy.embedded import die_with_parent

    die_with_parent()
    on_start = None if started is None else started.set  # type: ignore[attr-defined]
    out.put(run_step(step, on_start).as_dict())  # type: ignore[attr-defined]
