"""The recovery store is resumed only by the stream it was made for."""

from dataclasses import replace

from streaming.dataflow import Recovery, StreamConfig, prepare_recovery

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
