"""How the system runs: embedded real servers for local runs and tests, and Kafka plumbing.
A Redis Cluster for the scaled-out system (``EmbeddedRedisCluster``); Kubernetes manifests in
``deploy/k8s``."""

from deploy.embedded import EmbeddedKafka, EmbeddedRedis, EmbeddedRedisCluster, Services, free_port, running_services
from deploy.kafka import DEFAULT_TOPICS, Topics, ensure_topics, make_consumer, make_producer, produce_all, read_topic

__all__ = [
    "DEFAULT_TOPICS",
    "EmbeddedKafka",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "Services",
    "Topics",
    "ensure_topics",
    "free_port",
    "make_consumer",
    "make_producer",
    "produce_all",
    "read_topic",
    "running_services",
]
