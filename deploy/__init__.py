"""How the system runs: embedded real servers for local runs and tests, and Kafka plumbing.
(Kubernetes manifests join here with the scale-out issue.)"""

from deploy.embedded import EmbeddedKafka, EmbeddedRedis, Services, free_port, running_services
from deploy.kafka import DEFAULT_TOPICS, Topics, ensure_topics, make_consumer, make_producer, produce_all, read_topic

__all__ = [
    "DEFAULT_TOPICS",
    "EmbeddedKafka",
    "EmbeddedRedis",
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
