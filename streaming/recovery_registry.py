"""Which processes of a stream cluster have created their recovery partition: kept outside them.

With one recovery directory per process (``Recovery.layout == "per-process"``, a volume per pod on
Kubernetes), each process holds one partition of the cluster's bytewax recovery store. A process
whose directory is empty cannot tell a first start from a lost volume, and bytewax cannot either:
given a new empty partition in place of a used one, it resumes from the others' progress with that
partition's state missing (measured: ``streaming.dataflow.prepare_recovery``). So the processes
record in Redis, which they all reach, the store's id and which of them created a partition of it;
a process that finds its directory empty although it created a partition refuses to start.

One small hash per stream inputs and process count, ``PREFIX:stream:recovery:SCOPE``, without a
TTL (an eviction policy that evicts only keys with a TTL leaves it alone).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import redis
from redis.cluster import RedisCluster

STORE_FIELD = "store"


class PartitionRegistry(Protocol):
    """The store id and the creators of its partitions, per ``scope`` (stream inputs, process count)."""

    def claim_store(self, scope: str, proposed: str) -> str:
        """The store registered for ``scope``; ``proposed`` becomes it if none is (atomically)."""
        ...

    def created(self, scope: str) -> set[int]:
        """The processes that created their partition of the registered store."""
        ...

    def mark_created(self, scope: str, processes: Iterable[int]) -> None: ...

    def unmark_created(self, scope: str, process: int) -> None: ...

    def where(self, scope: str) -> str:
        """Where the record is, for messages that tell an operator what to delete."""
        ...


class RedisPartitionRegistry:
    def __init__(self, client: redis.Redis | RedisCluster, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, scope: str) -> str:
        return f"{self.prefix}:stream:recovery:{scope}"

    def claim_store(self, scope: str, proposed: str) -> str:
        key = self.key(scope)
        self.client.hsetnx(key, STORE_FIELD, proposed)
        store = self.client.hget(key, STORE_FIELD)
        return store.decode() if isinstance(store, bytes) else str(store)

    def created(self, scope: str) -> set[int]:
        fields = self.client.hkeys(self.key(scope))
        names = (f.decode() if isinstance(f, bytes) else str(f) for f in fields)
        return {int(name[1:]) for name in names if name.startswith("p") and name[1:].isdigit()}

    def mark_created(self, scope: str, processes: Iterable[int]) -> None:
        fields = {f"p{i}": 1 for i in processes}
        if fields:
            self.client.hset(self.key(scope), mapping=fields)

    def unmark_created(self, scope: str, process: int) -> None:
        self.client.hdel(self.key(scope), f"p{process}")

    def where(self, scope: str) -> str:
        return f"Redis key {self.key(scope)}"


class MemoryPartitionRegistry:
    """The same record in memory (tests; one machine)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, str]] = {}

    def claim_store(self, scope: str, proposed: str) -> str:
        return self.records.setdefault(scope, {}).setdefault(STORE_FIELD, proposed)

    def created(self, scope: str) -> set[int]:
        return {int(k[1:]) for k in self.records.get(scope, {}) if k.startswith("p")}

    def mark_created(self, scope: str, processes: Iterable[int]) -> None:
        self.records.setdefault(scope, {}).update({f"p{i}": "1" for i in processes})

    def unmark_created(self, scope: str, process: int) -> None:
        self.records.get(scope, {}).pop(f"p{process}", None)

    def where(self, scope: str) -> str:
        return f"registry record {scope}"
