"""The stream's sink writes behind the flow: in order, waited for on flush and close, failures
raised in the flow's thread, and a resumed shard writes all its states again."""

import threading
import time

import pytest
import redis

from streaming.checkpoints import BaseFiles
from streaming.dataflow import RedisStateSink, ShardUpdate, StoreResync, _BackgroundWrites, _EntityLogic
from streaming.metrics import StreamMetrics
from streaming.online import OnlineFeatureStore
from streaming.shards import EntityShard, shard_input
from tests.factories import txn


def states(packed, entity="card"):
    """The packed states of one entity kind, by id."""
    return {entity_id: raw for kind, entity_id, raw in packed if kind == entity}


def shard_after(*payments):
    shard = EntityShard()
    for t in payments:
        shard.apply([shard_input([t])], now=0.0)
    return shard


def test_batches_reach_redis_in_order_and_flush_waits_for_them(redis_url):
    prefix = f"sink{time.time_ns()}"
    metrics = StreamMetrics()
    sink = RedisStateSink(redis_url, prefix, metrics, StoreResync()).build("online_store", 0, 1)
    first, second = txn(1), txn(2, minutes=1, amount_minor=9_999)
    shard = shard_after(first)
    earlier = shard.pack_all()
    sink.write_batch([("s0", ShardUpdate(earlier, [first.event_ts], 0))])
    shard.apply([shard_input([second])], now=0.0)  # the flow goes on while the first batch is sent
    sink.write_batch([("s0", ShardUpdate(shard.pack_all(), [second.event_ts], 0))])
    sink.flush()
    store = OnlineFeatureStore(redis.Redis.from_url(redis_url), prefix)
    card = store.client.get(store.key("card", first.card_id))
    assert card == states(shard.pack_all())[first.card_id] != states(earlier)[first.card_id]
    assert store.counts()["events"] == 2 and store.watermark() == second.event_ts
    sink.close()


def test_the_gaps_between_batches_are_measured(redis_url):
    metrics = StreamMetrics()
    sink = RedisStateSink(redis_url, f"sink{time.time_ns()}", metrics, StoreResync()).build("online_store", 0, 1)
    shard = shard_after(txn(1))
    for _ in range(3):
        sink.write_batch([("s0", ShardUpdate(shard.pack_all(), [], 0))])
        time.sleep(0.12)
    sink.flush()
    intervals = metrics.registry.get_sample_value
    assert intervals("fraud_stream_batch_interval_seconds_count") == 2  # the first batch has no gap before it
    assert intervals("fraud_stream_batch_interval_seconds_sum") >= 0.24
    assert intervals("fraud_stream_batch_interval_seconds_bucket", {"le": "0.1"}) == 0
    sink.close()


def test_a_batch_packed_before_the_flow_changes_its_states_is_written_as_it_was(redis_url):
    prefix = f"sink{time.time_ns()}"
    sink = RedisStateSink(redis_url, prefix, StreamMetrics(), StoreResync()).build("online_store", 0, 1)
    shard = shard_after(txn(1))
    handed_over = shard.pack_all()
    sink.write_batch([("s0", ShardUpdate(handed_over, [txn(1).event_ts], 0))])
    shard.apply([shard_input([txn(2, minutes=1)])], now=0.0)  # changed, but not handed to the sink
    sink.flush()
    store = OnlineFeatureStore(redis.Redis.from_url(redis_url), prefix)
    assert store.client.get(store.key("card", "card-000001")) == states(handed_over)["card-000001"]
    sink.close()


def test_a_failed_batch_is_raised_in_the_flow_and_nothing_after_it_is_sent():
    sent, failed = [], threading.Event()

    def send(batch):
        if batch == "bad":
            failed.set()
            raise ValueError("a bug in the write")
        sent.append(batch)

    writes = _BackgroundWrites(send, in_flight=2)
    writes.submit("one")
    writes.submit("bad")
    assert failed.wait(5)
    with pytest.raises(RuntimeError, match="writing entity states to Redis failed") as raised:
        writes.submit("after")
    assert isinstance(raised.value.__cause__, ValueError)
    with pytest.raises(RuntimeError):
        writes.close()
    assert sent == ["one"]


def logic_after(bases, *payments):
    """An entity shard's logic that has applied ``payments`` and checkpointed, and its snapshot."""
    logic = _EntityLogic(None, StoreResync(), StreamMetrics(), bases)
    for t in payments:
        logic.on_batch([shard_input([t])])
    return logic, logic.snapshot()


def test_a_resumed_shard_writes_every_state_again_on_its_first_batch(tmp_path):
    bases = BaseFiles(tmp_path)
    logic, snapshot = logic_after(bases, txn(1), txn(2, card="card-2", device="d2"))
    resync = StoreResync()
    resumed = _EntityLogic(snapshot, resync, StreamMetrics(), bases)
    [update], _ = resumed.on_batch([])
    assert sorted(update.states) == sorted(logic.shard.pack_all())  # all of them, though nothing new arrived
    [update], _ = resumed.on_batch([shard_input([txn(3, minutes=1)])])
    assert {(entity, entity_id) for entity, entity_id, _ in update.states} == {
        ("card", "card-000001"),
        ("customer", "cust-000001"),
        ("merchant", "merch-0001"),
        ("device", "dev-0000001"),
    }

    fresh = _EntityLogic(None, resync, StreamMetrics(), bases)
    [update], _ = fresh.on_batch([shard_input([txn(4)])])
    assert len(update.states) == 4


def test_each_snapshot_is_counted_in_seconds_and_bytes_of_its_step(tmp_path):
    metrics = StreamMetrics()
    logic = _EntityLogic(None, StoreResync(), metrics, BaseFiles(tmp_path, base_every=1))
    logic.on_batch([shard_input([txn(1), txn(2, card="card-2")])])
    raw = logic.snapshot()
    sample = metrics.registry.get_sample_value
    assert sample("fraud_stream_snapshot_bytes_total", {"step": "entity_state"}) == len(raw)
    assert sample("fraud_stream_snapshot_seconds_total", {"step": "entity_state"}) > 0
    assert sample("fraud_stream_snapshot_bytes_total", {"step": "admission"}) is None
    # The base that snapshot started is counted once it is written, at the snapshot after.
    assert sample("fraud_stream_snapshot_base_seconds_total", {"step": "entity_state"}) == 0
    logic.log.wait()
    logic.snapshot()
    assert sample("fraud_stream_snapshot_base_seconds_total", {"step": "entity_state"}) > 0
