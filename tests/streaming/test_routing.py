"""Routing admitted payments to entity shards: every payment to the shard of each entity's state key,
in arrival order."""

from streaming import shards
from streaming.dataflow import StreamConfig, _Steps
from streaming.metrics import StreamMetrics
from streaming.shards import shard_of
from streaming.windows import ENTITY_KEY_GETTERS, LAYOUTS, value_hash
from tests.factories import txn


def routed(steps: _Steps, payments) -> dict[str, set[str]]:
    """Per shard, the state keys it was sent; each shard's payments of a kind keep arrival order."""
    out = steps.admitted_by_entity_shard(("s0", (payments, [])))
    groups: dict[str, set[str]] = {}
    for key, item in out:
        shard = item.shard
        assert key == steps.router.key(shard)  # travels under its placement key (streaming.placement)
        for entity, columns in item.payments.items():
            key_of, layout = dict(ENTITY_KEY_GETTERS)[entity], LAYOUTS[entity]
            mine = [t for t in payments if key_of(t) in set(columns.ids)]
            assert columns.ids == [key_of(t) for t in mine]
            assert columns.amounts == [t.amount_minor for t in mine]
            assert columns.event_ts == [t.event_ts for t in mine]
            fields = layout.distinct_fields
            hashes = [value_hash(v) for t in mine for v in layout.distinct_values(t)] if fields else []
            assert columns.hashes == hashes
            groups.setdefault(shard, set()).update(f"{entity}:{entity_id}" for entity_id in columns.ids)
    return groups


def test_each_entity_event_goes_to_the_shard_of_its_key_also_once_the_cache_starts_over(monkeypatch):
    monkeypatch.setattr(shards, "SHARD_CACHE_KEYS", 5)
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
    assert all(len(cache) <= 5 for cache in steps.router.caches.values())
