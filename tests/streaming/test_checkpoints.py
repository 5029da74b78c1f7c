"""Incremental checkpoints of a shard: resumed from any snapshot, a shard is the one that took it,
whether its base was written or still being written, its log synced or not, and old files are
cleaned up. Most tests here take a base at every snapshot (``every_snapshot``); the flow takes one
every ``BASE_EVERY``."""

import random
import shutil
import threading
import time

import pytest

from streaming import checkpoints
from streaming.checkpoints import KEEP_BASES, BaseFiles, MissingBase, restore
from streaming.dataflow import Sourced, StoreResync, StreamConfig, _AdmissionLogic, _EntityLogic, _Steps
from streaming.metrics import StreamMetrics
from streaming.shards import AdmissionShard, EntityShard, shard_input
from tests.factories import txn


def every_snapshot(directory):
    return BaseFiles(directory, base_every=1)


def history(n, seed=7):
    rng = random.Random(seed)
    return [
        txn(
            i,
            minutes=i * rng.uniform(0.5, 3.0) - rng.uniform(0, 4),  # out of order within minutes
            card=f"c{rng.randrange(6)}",
            merchant=f"m{rng.randrange(4)}",
            device=f"d{rng.randrange(5)}",
            amount_minor=rng.randrange(100, 90_000),
        )
        for i in range(n)
    ]


def logic(bases, resume=None):
    return _EntityLogic(resume, StoreResync(), StreamMetrics(), bases)


def feed(target, payments, rng):
    """In batches of random sizes."""
    at = 0
    while at < len(payments):
        size = rng.randrange(1, 6)
        target.on_batch([shard_input(payments[at : at + size])])
        at += size


def same_states(a, b):
    assert sorted(a.shard.pack_all()) == sorted(b.shard.pack_all())


def with_a_base(tmp_path, payments, seed):
    """A logic fed ``payments`` of a history whose first base is written, and the snapshot that
    started it (naming no base yet)."""
    bases = every_snapshot(tmp_path)
    original = logic(bases)
    feed(original, history(payments), random.Random(seed))
    first = original.snapshot()
    original.log.wait()
    return bases, original, first


class SlowBases(BaseFiles):
    """Base files whose writes wait until released: a base still being written at a snapshot."""

    def __init__(self, directory):
        super().__init__(directory, base_every=1)
        self.unblock = threading.Event()

    def write(self, shard, seq, data):
        self.unblock.wait(timeout=30)
        super().write(shard, seq, data)


def test_resumed_from_any_snapshot_a_shard_is_the_one_that_took_it_and_goes_on_alike(tmp_path):
    rng = random.Random(1)
    payments = history(120)
    bases = every_snapshot(tmp_path)
    original = logic(bases)
    taken = []
    for chunk in range(6):
        feed(original, payments[chunk * 15 : (chunk + 1) * 15], rng)
        taken.append((chunk, original.snapshot()))
        if chunk % 2:
            original.log.wait()  # the base lands before the next snapshot: it names the new base
    last_chunk, last = taken[-1]
    resumed = logic(bases, last)
    same_states(resumed, original)
    rest = payments[(last_chunk + 1) * 15 :]
    feed(original, rest, random.Random(2))
    feed(resumed, rest, random.Random(3))
    same_states(resumed, original)


def test_a_snapshot_names_only_a_base_that_is_on_disk(tmp_path):
    bases = SlowBases(tmp_path)
    original = logic(bases)
    payments = history(40)
    feed(original, payments[:20], random.Random(4))
    first = original.snapshot()  # starts base 1, which is not written yet
    feed(original, payments[20:], random.Random(5))
    second = original.snapshot()  # still being written: this names no base, and logs everything
    assert not list(tmp_path.glob("*.zst"))
    resumed = logic(every_snapshot(tmp_path), second)
    same_states(resumed, original)
    bases.unblock.set()
    original.log.wait()
    assert [p.name for p in tmp_path.glob("*.zst")] == ["s0.1.zst"]
    third = original.snapshot()
    resumed = logic(every_snapshot(tmp_path), third)  # from base 1 and the log since its copy
    same_states(resumed, original)
    assert len(third) < len(second)
    assert logic(every_snapshot(tmp_path), first).shard.pack_all() != original.shard.pack_all()


def test_old_bases_are_deleted_and_the_last_snapshots_can_all_be_resumed(tmp_path):
    bases = every_snapshot(tmp_path)
    original = logic(bases)
    payments = history(200)
    rng = random.Random(6)
    taken = []
    for chunk in range(10):
        feed(original, payments[chunk * 20 : (chunk + 1) * 20], rng)
        taken.append((original.snapshot(), sorted(original.shard.pack_all())))
        original.log.wait()
    files = sorted(tmp_path.glob("*.zst"))
    assert len(files) <= KEEP_BASES + 1
    for n, (raw, states) in enumerate(taken[-KEEP_BASES:]):  # each in a copy: a resume deletes the bases after its own
        copy = shutil.copytree(tmp_path, tmp_path.with_name(f"{tmp_path.name}-{n}"))
        shard, _ = restore(every_snapshot(copy), raw, EntityShard, now=0.0)
        assert sorted(shard.pack_all()) == states
    for path in tmp_path.glob("*.zst"):
        assert path.name.startswith("s0.")


def test_resuming_deletes_the_bases_written_after_its_snapshot(tmp_path):
    bases, original, resume_from = with_a_base(tmp_path, 30, seed=8)
    original.on_batch([shard_input([txn(500)])])
    original.snapshot()
    original.log.wait()
    assert len(list(tmp_path.glob("*.zst"))) == 2  # bases 1 and 2
    logic(bases, resume_from)  # names no base: what the crashed run wrote after it is gone
    assert not list(tmp_path.glob("*"))


def test_forgotten_states_stay_forgotten_after_a_resume(tmp_path):
    bases, original, _ = with_a_base(tmp_path, 30, seed=9)
    forgotten = original.shard.forget_idle(idle_ttl_s=0.0, now=float("inf"))
    original.log.record(original.log.shard, original.forgotten_entry(forgotten))
    assert forgotten and not original.shard.pack_all()
    original.on_batch([shard_input([txn(900, card="c-new")])])
    resumed = logic(bases, original.snapshot())
    same_states(resumed, original)


def test_without_a_recovery_directory_snapshots_are_empty_and_a_resume_is_refused():
    quiet = logic(None)
    quiet.on_batch([shard_input([txn(1)])])
    assert quiet.snapshot() == b""
    with pytest.raises(ValueError, match="base files"):
        logic(None, b"anything")


def admission_state(shard):
    """Cards and their newest times, and the ids held (by card), whatever the slots and layout."""
    hashes, slots, ts = shard.live_entries(None)
    ids = sorted(zip((shard.cards[s] for s in slots.tolist()), hashes.tolist(), ts.tolist(), strict=True))
    return {card: shard.newest_ts(card) for card in shard.slot_of}, ids


def admission_logic(bases, resume=None):
    steps = _Steps(
        StreamConfig(kafka_bootstrap="unused:9092", redis_url="unused", allowed_lateness_s=600), StreamMetrics()
    )
    return _AdmissionLogic(steps, resume, bases)


def admission_batches(payments, rng):
    at = 0
    while at < len(payments):
        size = rng.randrange(1, 6)
        yield [("s0", [Sourced(t, "transactions", 0, n) for n, t in enumerate(payments[at : at + size], at)])]
        at += size


def verdicts(target, payments, rng):
    out = []
    for batch in admission_batches(payments, rng):
        [(admitted, letters)], _ = target.on_batch(batch)
        out += [t.transaction_id for t in admitted] + [len(letters)]
    return out


def test_admission_resumed_from_its_snapshots_decides_as_the_original(tmp_path):
    rng = random.Random(11)
    payments = history(150)
    payments += [rng.choice(payments) for _ in range(40)]  # redeliveries: duplicates, and late ones
    rng.shuffle(payments)
    bases = every_snapshot(tmp_path)
    original = admission_logic(bases)
    verdicts(original, payments[:60], rng)
    original.snapshot()
    original.log.wait()
    verdicts(original, payments[60:100], rng)
    taken = original.snapshot()  # base 1 and the log since its copy
    resumed = admission_logic(bases, taken)
    assert admission_state(resumed.shard) == admission_state(original.shard)
    rest = payments[100:]
    assert verdicts(resumed, rest, random.Random(12)) == verdicts(original, rest, random.Random(12))
    assert admission_state(resumed.shard) == admission_state(original.shard)


def test_an_admission_shard_decoded_from_its_encoding_holds_and_decides_the_same():
    shard = AdmissionShard()
    payments = [txn(i, minutes=i / 10, card=f"card-{i % 1200}") for i in range(3000)]
    for t in payments:
        shard.admit(t, 600, now=0.0)
    shard.forget(["card-7"])  # a free slot
    restored = AdmissionShard.decode(shard.encode())
    assert admission_state(restored) == admission_state(shard)
    again = [*payments[-50:], txn(5000, minutes=1, card="card-8"), txn(5001, minutes=400, card="card-7")]
    assert [restored.admit(t, 600, 0.0) for t in again] == [shard.admit(t, 600, 0.0) for t in again]


def test_bases_wait_for_the_flow_to_go_on_before_they_are_written(tmp_path, monkeypatch):
    # bytewax snapshots every shard in a row while the flow stands still: a writer compressing
    # meanwhile would take turns with it for the GIL and stretch the pause.
    monkeypatch.setattr(checkpoints, "RELEASE_WAIT_S", 60.0)  # no writing anyway after a while, here
    bases = every_snapshot(tmp_path)
    logic_ = logic(bases)
    logic_.on_batch([shard_input([txn(1)])])
    logic_.snapshot()
    time.sleep(0.2)
    assert not list(tmp_path.glob("*.zst"))  # held
    logic_.on_batch([shard_input([txn(2)])])  # the flow goes on: released
    logic_.log._writing.future.result(timeout=10)
    assert [p.name for p in tmp_path.glob("*.zst")] == ["s0.1.zst"]


def test_a_missing_base_is_refused_with_what_to_do(tmp_path):
    _, original, _ = with_a_base(tmp_path, 20, seed=10)
    named = original.snapshot()  # names base 1
    (tmp_path / "s0.1.zst").unlink()
    with pytest.raises(
        MissingBase, match=r"s0\.1\.zst is missing: .* shard s0 names base 1.*delete the recovery store"
    ):
        logic(every_snapshot(tmp_path), named)


@pytest.mark.parametrize("base_every", [1, 2, 3])
def test_resumed_from_each_of_its_last_snapshots_a_shard_is_the_one_that_took_it(tmp_path, monkeypatch, base_every):
    # Changes are synced to log files at random moments (or not yet), bases land or not: the
    # directory is then as a crash would leave it, holding more than the older snapshots took.
    rng = random.Random(base_every)
    monkeypatch.setattr(checkpoints, "FLUSH_S", 0.0)  # a record hands its change over at once
    files = BaseFiles(tmp_path, base_every=base_every)
    original = logic(files)
    payments = history(240, seed=base_every)
    taken = []
    for chunk in range(12):
        feed(original, payments[chunk * 20 : (chunk + 1) * 20], rng)
        taken.append((chunk, original.snapshot(), sorted(original.shard.pack_all())))
        if rng.random() < 0.5:
            original.log.wait()
    original.log.wait()
    assert list(tmp_path.glob("*.log")), "the changes went to log files"
    for chunk, raw, states in taken[-KEEP_BASES:]:
        copy = shutil.copytree(tmp_path, tmp_path.with_name(f"{tmp_path.name}-{chunk}"))
        resumed = logic(BaseFiles(copy, base_every=base_every), raw)
        assert sorted(resumed.shard.pack_all()) == states
        rest = payments[(chunk + 1) * 20 :][:40]
        again = logic(BaseFiles(copy, base_every=base_every), raw)
        feed(again, rest, random.Random(9))
        again.log.wait()
        # the resumed run logs to files of its own: resumed again from its snapshot, it is itself
        third = logic(BaseFiles(copy, base_every=base_every), again.snapshot())
        same_states(third, again)
        expected = logic(every_snapshot(tmp_path.with_name(f"{tmp_path.name}-fresh{chunk}")))
        feed(expected, payments[: (chunk + 1) * 20 + 40], random.Random(10))
        same_states(again, expected)


def test_a_snapshot_names_synced_log_bytes_and_carries_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "FLUSH_S", 3600.0)  # handed over only at snapshots
    files = BaseFiles(tmp_path, base_every=1000)  # no base: everything is in the log
    original = logic(files)
    feed(original, history(30), random.Random(13))
    first = checkpoints._checkpoint_decoder.decode(original.snapshot())
    assert first.logs == [] and first.inline  # nothing synced yet: all inline
    original.log.wait()
    feed(original, history(40)[30:], random.Random(14))
    second = checkpoints._checkpoint_decoder.decode(original.snapshot())
    assert [ref.seq for ref in second.logs] == [0] and second.logs[0].length == (tmp_path / "s0.0.log").stat().st_size
    assert len(second.inline) < len(first.inline) + 10  # only what came since
    resumed = logic(BaseFiles(tmp_path, base_every=1000), original.snapshot())
    same_states(resumed, original)


def test_bases_are_staggered_over_the_shards(tmp_path):
    files = BaseFiles(tmp_path, base_every=4)
    logs = {f"s{n}": checkpoints.ShardLog(files) for n in range(16)}
    shards = {name: EntityShard() for name in logs}
    per_round = []
    for round_ in range(8):
        for name, log_ in logs.items():
            shards[name].apply([shard_input([txn(round_ * 100 + int(name[1:]))])], 0.0)
            log_.record(name, b"change")
            log_.snapshot(shards[name])
        per_round.append(sum(log_._writing is not None for log_ in logs.values()))
        for log_ in logs.values():
            log_.wait()
    assert per_round == [4] * 8  # each shard once in every 4 rounds, a quarter of them each round


def test_a_log_shorter_than_its_snapshot_says_is_refused_with_what_to_do(tmp_path):
    files = BaseFiles(tmp_path, base_every=1000)
    original = logic(files)
    feed(original, history(20), random.Random(15))
    original.snapshot()
    original.log.wait()
    named = original.snapshot()
    log_file = tmp_path / "s0.0.log"
    log_file.write_bytes(log_file.read_bytes()[:-1])
    with pytest.raises(MissingBase, match=r"s0\.0\.log has \d+: .* shard s0 names \d+ bytes of log 0"):
        logic(BaseFiles(tmp_path), named)


def test_old_log_files_are_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "FLUSH_S", 0.0)
    original = logic(BaseFiles(tmp_path, base_every=2))
    payments = history(200)
    for chunk in range(10):
        feed(original, payments[chunk * 20 : (chunk + 1) * 20], random.Random(chunk))
        original.snapshot()
        original.log.wait()
    oldest_kept = min(original.log._recent)
    kept = {int(p.name.split(".")[1]) for p in tmp_path.glob("*.log")}
    assert original.log.log_seq >= 4 and kept and min(kept) == oldest_kept >= 2, (kept, oldest_kept)
