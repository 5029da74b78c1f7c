"""Shards spread evenly over bytewax's workers: checked against bytewax's own routing."""

import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main

from streaming.placement import bytewax_hash, bytewax_worker, placement_key
from streaming.shards import ShardRouter, shard_name


def workers_holding(keys, workers):
    """Which keys bytewax puts together on one worker, run with ``workers`` workers."""
    thread_of = {}
    flow = Dataflow("placement")
    items = op.input("in", flow, TestingSource([(key, 1) for key in keys]))
    held = op.stateful_map("held", items, lambda state, _: (None, threading.get_ident()))
    op.inspect("seen", held, lambda _step, item: thread_of.__setitem__(*item))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    together = {}
    for key, thread in thread_of.items():
        together.setdefault(thread, set()).add(key)
    return sorted(map(sorted, together.values()))


@pytest.mark.parametrize(("shards", "workers"), [(8, 2), (16, 2), (16, 4), (16, 8), (8, 8)])
def test_shards_travel_to_workers_in_turn(shards, workers):
    router = ShardRouter(shards)
    keys = {router.key(shard_name(n)): n for n in range(shards)}
    expected = [sorted(k for k, n in keys.items() if n % workers == w) for w in range(workers)]
    assert workers_holding(list(keys), workers) == sorted(expected)


def test_the_hash_is_bytewaxs():
    # Names as they are (not placement keys) fell unevenly: 16 shards 7, 7 and 2 over 3 workers.
    names = [shard_name(n) for n in range(16)]
    predicted = {}
    for name in names:
        predicted.setdefault(bytewax_worker(name, 3), set()).add(name)
    assert workers_holding(names, 3) == sorted(map(sorted, predicted.values()))
    assert sorted(map(len, predicted.values())) == [2, 7, 7]


def test_placement_keys_are_stable_and_distinct():
    keys = [placement_key(shard_name(n), n, 12) for n in range(12)]
    assert len(set(keys)) == 12 and keys == [placement_key(shard_name(n), n, 12) for n in range(12)]
    assert [bytewax_hash(key) % 8 for key in keys] == [n % 8 for n in range(12)]  # 12 shards: in turn mod 8
    assert bytewax_hash("é") != bytewax_hash("e")
