"""Routing admitted payments to entity shards: every entity event to the shard of its state key."""

from streaming import dataflow
from streaming.dataflow import StreamConfig, _Steps
from streaming.metrics import StreamMetrics
from streaming.shards import shard_of
from tests.factories import txn


def routed(steps: _Steps, payments) -> dict[str, set[str]]:
    out = steps.admitted_by_entity_shard(("s0", (payments, [])))
    return {shard: {event[0] for event in events} for shard, events in out}


def test_each_entity_event_goes_to_the_shard_of_its_key_also_once_the_cache_starts_over(monkeypatch):
    monkeypatch.setattr(dataflow, "SHARD_CACHE_KEYS", 5)
    steps = _Steps(StreamConfig("localhost:1", "redis://unused", shards=16), StreamMetrics())
    payments = [txn(i, card=f"card-{i % 7}", merchant=f"m{i % 3}", device=f"d{i % 11}") for i in range(40)]
    for _ in range(2):  # the second time from the cache, which has started over on the way
        groups = routed(steps, payments)
        assert all(shard_of(key, 16) == shard for shard, keys in groups.items() for key in keys)
        assert sum(len(keys) for keys in groups.values()) == len({e for keys in groups.values() for e in keys})
        assert {key.split(":")[0] for keys in groups.values() for key in keys} == {
            "card",
            "customer",
            "merchant",
            "device",
        }
    assert len(steps._shard_of_key) <= 5
