"""The online store on a real Redis Cluster (3 masters) serves exactly what it serves on one server:
the same features for a batch, the same first-writer-wins decision record, the same watermark.
On a cluster every multi-key command must stay within one slot, so this is where a cross-slot
MGET or script would fail."""

import pytest
from redis.cluster import RedisCluster, key_slot

from streaming import OnlineFeatureStore, connect_redis
from streaming.offline import OfflineFeatureBuilder
from streaming.online import cluster_startup
from tests.factories import txn
from tests.streaming.test_online_batch_read import _history_and_batch

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(redis_cluster_url):
    client = connect_redis(redis_cluster_url, socket_timeout=2.0, connect_timeout=2.0)
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


def _loaded(client, history):
    offline = OfflineFeatureBuilder()
    for t in history:
        offline.apply(t)
    store = OnlineFeatureStore(client, "t")
    store.write_states(((e, i, s) for (e, i), s in offline.states.items()), history[-1].event_ts, len(history))
    return store, offline


def test_cluster_serves_the_same_features_as_one_server(cluster, redis_client):
    history, batch = _history_and_batch(5)
    on_cluster, offline = _loaded(cluster, history)
    on_server, _ = _loaded(redis_client, history)

    # The entity states really are spread over the masters, not all in one slot.
    keys_per_master = [cluster.dbsize(target_nodes=node) for node in cluster.get_primaries()]
    assert sum(1 for n in keys_per_master if n > 0) == 3, keys_per_master
    assert on_cluster.watermark() == on_server.watermark() == history[-1].event_ts
    assert on_cluster.counts() == on_server.counts() == {"events": len(history)}

    got = on_cluster.features_for_batch(batch)
    assert (got.matrix == on_server.features_for_batch(batch).matrix).all()
    assert got.stream_watermark == history[-1].event_ts
    # And both are the offline replay's values.
    first = min(batch, key=lambda t: (t.event_ts, t.transaction_id))
    row = got.vectors[batch.index(first)]
    assert row == pytest.approx(offline.features(first), rel=1e-9, abs=1e-9)


def test_cluster_watermark_only_advances(cluster):
    store = OnlineFeatureStore(cluster, "t")
    store.write_states([], newest_ts=200.0)
    store.write_states([], newest_ts=100.0)  # an older batch from another worker
    assert store.watermark() == 200.0


def test_cluster_decision_record_is_first_writer_wins(cluster):
    store = OnlineFeatureStore(cluster, "t")
    payments = [txn(n) for n in range(50)]  # their hashes spread over many slots
    assert len({key_slot(store.decision_key(t.transaction_id, t.event_ts).encode()) for t in payments}) > 10
    assert store.record_decisions([(t, t.transaction_id.encode()) for t in payments], ttl_s=60) == [None] * 50
    unknown, new = txn(1000), txn(1001)
    again = store.record_decisions([(payments[3], b"second"), (new, b"new"), (payments[40], b"second")], ttl_s=60)
    assert again == [b"tx-test-000003", None, b"tx-test-000040"]
    read = store.read_batch([txn(1, card="c1")], look_up=[payments[3], unknown, new])
    assert read.decided == [b"tx-test-000003", None, b"new"]
    assert 0 < cluster.ttl(store.decision_key(payments[0].transaction_id, payments[0].event_ts)) <= 60


def test_run_ids_name_every_master(cluster, redis_client):
    assert len(OnlineFeatureStore(cluster).server_run_ids()) == 3
    assert len(OnlineFeatureStore(redis_client).server_run_ids()) == 1


def test_cluster_urls_name_their_nodes_and_keep_credentials_and_tls():
    assert cluster_startup("redis://127.0.0.1:6379/0") is None  # one server: not a cluster
    first, nodes = cluster_startup("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    assert first == "redis://10.0.0.1:7000" and nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    first, nodes = cluster_startup("rediss+cluster://user:secret@redis.internal:6380/")
    assert first == "rediss://user:secret@redis.internal:6380" and nodes == [("redis.internal", 6380)]


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://host-without-port", "redis+cluster://:7000"])
def test_a_cluster_url_without_host_and_port_is_refused_naming_the_setting(url):
    with pytest.raises(ValueError, match="REDIS_URL"):
        cluster_startup(url)


def _send_astray(cluster, key):
    """Make the client's slot map send ``key``'s slot to a master that does not hold it."""
    slot = key_slot(key.encode())
    owner = cluster.nodes_manager.get_node_from_slot(slot)
    cluster.nodes_manager.slots_cache[slot] = [next(n for n in cluster.get_primaries() if n.name != owner.name)]
    return slot, owner


def test_a_stale_slot_map_falls_back_to_the_cluster_client_for_writes(cluster):
    history, _ = _history_and_batch(6)
    offline = OfflineFeatureBuilder()
    for t in history:
        offline.apply(t)
    store = OnlineFeatureStore(cluster, "t")
    (entity, entity_id), _ = next(iter(offline.states.items()))
    slot, owner = _send_astray(cluster, store.key(entity, entity_id))

    written = store.write_states(((e, i, s) for (e, i), s in offline.states.items()), history[-1].event_ts)
    assert written == len(offline.states)
    states, _ = store.read_states(sorted(offline.states))
    assert len(states) == len(offline.states)
    assert cluster.nodes_manager.get_node_from_slot(slot).name == owner.name


def test_a_stale_slot_map_falls_back_to_the_cluster_client_and_reads_right(cluster):
    """The fast read trusts the client's slot map; when a master answers MOVED (resharding, a
    failover) the read falls back to redis-py's cluster client, which refreshes the map."""
    store = OnlineFeatureStore(cluster, "t")
    keys = [store.key("card", f"c{n}") for n in range(30)]
    for n, key in enumerate(keys):
        cluster.set(key, f"state-{n}".encode())
    slot, owner = _send_astray(cluster, keys[0])

    assert store._mget(keys) == [f"state-{n}".encode() for n in range(30)]
    assert cluster.nodes_manager.get_node_from_slot(slot).name == owner.name  # the map was refreshed
