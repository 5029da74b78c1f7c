"""The recovery store is resumed only by the stream it was made for, and, with one directory per
process, only as the complete set of partitions bytewax needs."""

import json
import shutil
import sqlite3
from dataclasses import replace

import pytest

from fraud.config import Settings
from streaming import dataflow
from streaming.dataflow import Cluster, Recovery, RecoveryStoreError, StreamConfig, prepare_recovery
from streaming.recovery_registry import MemoryPartitionRegistry, RedisPartitionRegistry

CONFIG = StreamConfig(kafka_bootstrap="127.0.0.1:9092", redis_url="redis://127.0.0.1:6379/0")


def test_same_stream_resumes_and_keeps_its_snapshots(tmp_path):
    recovery = Recovery(tmp_path / "rec")
    assert prepare_recovery(recovery, CONFIG) is False
    snapshot = next(recovery.directory.glob("*.sqlite3"))
    snapshot.write_bytes(snapshot.read_bytes())  # stands for state written by a run
    assert prepare_recovery(recovery, CONFIG) is True
    assert snapshot.exists()


def test_another_broker_or_shard_count_starts_afresh(tmp_path):
    recovery = Recovery(tmp_path / "rec")
    prepare_recovery(recovery, CONFIG)
    marker = recovery.directory / "keep-me-not"
    marker.write_text("x")
    assert prepare_recovery(recovery, replace(CONFIG, kafka_bootstrap="127.0.0.1:9999")) is False
    assert not marker.exists()
    assert prepare_recovery(recovery, replace(CONFIG, kafka_bootstrap="127.0.0.1:9999")) is True
    assert prepare_recovery(recovery, replace(CONFIG, kafka_bootstrap="127.0.0.1:9999", shards=32)) is False


@pytest.mark.parametrize("layout", ["shared", "per-process"])
def test_snapshots_in_another_encoding_start_afresh(tmp_path, monkeypatch, layout):
    recovery = Recovery(tmp_path / "rec", layout=layout)
    registry = MemoryPartitionRegistry() if layout == "per-process" else None
    with monkeypatch.context() as older:
        older.setattr(dataflow, "SNAPSHOT_FORMAT", dataflow.SNAPSHOT_FORMAT - 1)
        prepare_recovery(recovery, CONFIG, registry=registry)
        assert prepare_recovery(recovery, CONFIG, registry=registry) is True
    assert prepare_recovery(recovery, CONFIG, registry=registry) is False  # made afresh, not decoded
    assert prepare_recovery(recovery, CONFIG, registry=registry) is True


def test_a_store_from_before_the_encoding_was_recorded_starts_afresh(tmp_path):
    recovery = Recovery(tmp_path / "rec")
    prepare_recovery(recovery, CONFIG)
    marker = recovery.directory / "stream.json"
    written = json.loads(marker.read_text())
    del written["snapshot_format"]
    marker.write_text(json.dumps(written))
    assert prepare_recovery(recovery, CONFIG) is False
    assert json.loads(marker.read_text())["snapshot_format"] == dataflow.SNAPSHOT_FORMAT


# -- one recovery directory per process (Kubernetes: a volume per pod) ------------------------------

ADDRESSES = ("a:1", "b:1", "c:1")


def _own(tmp_path, i):
    return Recovery(tmp_path / f"p{i}" / "rec", layout="per-process")


def _parts(directory):
    """(index, count) of every partition in ``directory``, as bytewax reads them."""
    rows = []
    for part in sorted(directory.glob("part-*.sqlite3")):
        with sqlite3.connect(part) as db:
            rows += db.execute("SELECT part_index, part_count FROM parts").fetchall()
    return rows


def _start_all(tmp_path, registry, addresses=ADDRESSES):
    return [prepare_recovery(_own(tmp_path, i), CONFIG, Cluster(i, addresses), registry) for i in range(len(addresses))]


def test_per_process_each_keeps_its_own_partition_of_one_store(tmp_path):
    registry = MemoryPartitionRegistry()
    assert _start_all(tmp_path, registry) == [False, False, False]
    assert [_parts(_own(tmp_path, i).directory) for i in range(3)] == [[(0, 3)], [(1, 3)], [(2, 3)]]
    assert _start_all(tmp_path, registry) == [True, True, True]  # resumed, partitions kept
    ((scope, record),) = registry.records.items()
    assert registry.created(scope) == {0, 1, 2}
    markers = [(_own(tmp_path, i).directory / "stream.json").read_text() for i in range(3)]
    assert all(record["store"] in m for m in markers)  # one store, whose id every marker records


def test_per_process_refuses_another_process_count_naming_the_setting(tmp_path):
    registry = MemoryPartitionRegistry()
    _start_all(tmp_path, registry)
    before = _parts(_own(tmp_path, 0).directory)
    with pytest.raises(RecoveryStoreError, match=r"made for 3 stream processes.*FRAUD_STREAM_RECOVERY_LAYOUT"):
        prepare_recovery(_own(tmp_path, 0), CONFIG, Cluster(0, ADDRESSES[:2]), registry)
    with pytest.raises(RecoveryStoreError, match="process 0 of 4"):
        prepare_recovery(_own(tmp_path, 0), CONFIG, Cluster(0, (*ADDRESSES, "d:1")), registry)
    assert _parts(_own(tmp_path, 0).directory) == before  # nothing replaced


def test_per_process_refuses_to_recreate_a_lost_partition(tmp_path):
    """bytewax would resume the others' progress with the lost partition's state missing (measured)."""
    registry = MemoryPartitionRegistry()
    _start_all(tmp_path, registry)
    lost = _own(tmp_path, 1).directory
    for path in lost.iterdir():
        path.unlink()
    lost.rmdir()
    with pytest.raises(RecoveryStoreError, match="process 1's recovery partition is missing.*volume was lost"):
        prepare_recovery(_own(tmp_path, 1), CONFIG, Cluster(1, ADDRESSES), registry)
    assert not lost.exists()
    assert prepare_recovery(_own(tmp_path, 0), CONFIG, Cluster(0, ADDRESSES), registry) is True
    # a store whose partitions were all deleted, and its record, starts afresh
    for i in (0, 2):
        shutil.rmtree(_own(tmp_path, i).directory)
    registry.records.clear()
    assert _start_all(tmp_path, registry) == [False, False, False]


def test_per_process_record_lost_is_rebuilt_from_the_markers(tmp_path):
    registry = MemoryPartitionRegistry()
    _start_all(tmp_path, registry)
    _start_all(tmp_path, registry)  # every process has seen the store complete: its marker says so
    registry.records.clear()  # Redis flushed
    assert prepare_recovery(_own(tmp_path, 0), CONFIG, Cluster(0, ADDRESSES), registry) is True
    ((scope, _),) = registry.records.items()
    assert registry.created(scope) == {0, 1, 2}
    shutil.rmtree(_own(tmp_path, 2).directory)
    with pytest.raises(RecoveryStoreError, match="process 2's recovery partition is missing"):
        prepare_recovery(_own(tmp_path, 2), CONFIG, Cluster(2, ADDRESSES), registry)


def test_per_process_partitions_of_two_stores_are_refused(tmp_path):
    registry = MemoryPartitionRegistry()
    _start_all(tmp_path, registry)
    registry.records.clear()  # the record lost, then a process with an empty volume starts first
    shutil.rmtree(_own(tmp_path, 2).directory)
    assert prepare_recovery(_own(tmp_path, 2), CONFIG, Cluster(2, ADDRESSES), registry) is False
    with pytest.raises(RecoveryStoreError, match="names store .* two stores cannot be resumed together"):
        prepare_recovery(_own(tmp_path, 0), CONFIG, Cluster(0, ADDRESSES), registry)


def test_layouts_do_not_resume_each_others_stores(tmp_path):
    registry = MemoryPartitionRegistry()
    shared = Recovery(tmp_path / "rec")
    prepare_recovery(shared, CONFIG)
    own = Recovery(shared.directory, layout="per-process")
    with pytest.raises(RecoveryStoreError, match="shared layout.*FRAUD_STREAM_RECOVERY_LAYOUT=shared"):
        prepare_recovery(own, CONFIG, Cluster(0, ADDRESSES), registry)
    other = Recovery(tmp_path / "other", layout="per-process")
    prepare_recovery(other, CONFIG, Cluster(1, ADDRESSES), registry)
    with pytest.raises(RecoveryStoreError, match="FRAUD_STREAM_RECOVERY_LAYOUT=per-process"):
        prepare_recovery(Recovery(other.directory), CONFIG)
    with pytest.raises(ValueError, match="PartitionRegistry"):
        prepare_recovery(other, CONFIG, Cluster(1, ADDRESSES))


def test_per_process_other_inputs_start_over_and_going_back_starts_afresh(tmp_path):
    registry = MemoryPartitionRegistry()
    moved = replace(CONFIG, kafka_bootstrap="127.0.0.1:9999")
    _start_all(tmp_path, registry)
    assert [prepare_recovery(_own(tmp_path, i), moved, Cluster(i, ADDRESSES), registry) for i in range(3)] == [
        False
    ] * 3
    # back to the first broker: every process starts over; its old record does not call that a loss
    assert _start_all(tmp_path, registry) == [False, False, False]
    assert [_parts(_own(tmp_path, i).directory) for i in range(3)] == [[(0, 3)], [(1, 3)], [(2, 3)]]


def test_one_process_per_process_layout_is_a_one_partition_store(tmp_path):
    registry = MemoryPartitionRegistry()
    own = Recovery(tmp_path / "rec", layout="per-process")
    assert prepare_recovery(own, CONFIG, None, registry) is False
    assert _parts(own.directory) == [(0, 1)]
    assert prepare_recovery(own, CONFIG, None, registry) is True


def test_redis_registry_records_the_store_and_its_creators(redis_client):
    registry = RedisPartitionRegistry(redis_client, "t")
    assert registry.claim_store("s1", "a") == "a"
    assert registry.claim_store("s1", "b") == "a"  # the first claim stays
    assert registry.created("s1") == set()
    registry.mark_created("s1", [0, 2])
    registry.mark_created("s1", [])
    registry.unmark_created("s1", 0)
    assert registry.created("s1") == {2}
    assert registry.created("s2") == set() and registry.claim_store("s2", "c") == "c"
    assert registry.where("s1") == "Redis key t:stream:recovery:s1" and redis_client.ttl("t:stream:recovery:s1") == -1


def test_the_layout_is_a_typed_setting(monkeypatch):
    assert Settings().stream_recovery_layout == "shared"
    monkeypatch.setenv("FRAUD_STREAM_RECOVERY_LAYOUT", "per-process")
    assert Settings().stream_recovery_layout == "per-process"
    monkeypatch.setenv("FRAUD_STREAM_RECOVERY_LAYOUT", "per-pod")
    with pytest.raises(ValueError, match="shared"):
        Settings()
