"""Engine configuration: one frozen dataclass, loaded from YAML and the environment, validated.

Precedence (highest first): explicit overrides (CLI flags) > environment > YAML file > defaults.
Invalid configuration fails at load time with a message naming the key and what to fix.

Environment variables:
    KAFKA_BOOTSTRAP_SERVERS   bootstrap servers (otherwise the local broker started by
                              `streamscore broker start`)
    STREAMSCORE_HOME          runtime directory (default ./.streamscore): state, registry, broker
    STREAMSCORE_REGISTRY      model registry root (default $STREAMSCORE_HOME/registry)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from features.clickstream import clickstream_spec
from features.schema import EventSchema
from features.spec import FeatureSpec

GUARANTEES = ("exactly_once", "at_least_once")


class ConfigError(ValueError):
    """Invalid configuration; the message says which key and how to fix it."""


def streamscore_home() -> Path:
    return Path(os.environ.get("STREAMSCORE_HOME", ".streamscore"))


def default_registry() -> Path:
    return Path(os.environ.get("STREAMSCORE_REGISTRY", streamscore_home() / "registry"))


@dataclass(frozen=True)
class RocksDBConfig:
    """Tuning of each partition's RocksDB store (see docs/operations.md)."""

    block_cache_mb: int = 64
    bloom_bits_per_key: float = 10.0
    compression: str = "lz4"  # none | lz4 | zstd | snappy
    write_buffer_mb: int = 32


@dataclass(frozen=True)
class SessionsConfig:
    """Reporting of closed sessions (specs with session windows; docs/features.md).

    Attributes:
        closed_topic: topic for one "session closed" record per closed session (scored by the
            serving model, in the batch's transaction); None (the default) reports nothing.
        idle_close_ms: wall-clock ms without input after which a partition's whole store is swept
            for sessions the watermark has already closed; None disables it. Never closes a
            session the watermark has not closed.
    """

    closed_topic: str | None = None
    idle_close_ms: int | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Everything a scoring process needs. Times are milliseconds unless the name says otherwise.

    Attributes:
        bootstrap_servers: Kafka bootstrap; None resolves at start (env, then local broker).
        group_id: consumer group; processes with the same id share the input partitions.
        input_topic / scores_topic / dlq_topic: topic names.
        max_batch: most messages per micro-batch.
        batch_wait_ms: longest wait for a micro-batch to fill (latency bound under light load).
        guarantee: ``exactly_once`` (one Kafka transaction per batch) or ``at_least_once`` (lower
            latency; output may repeat after a crash). See docs/architecture.md.
        transaction_timeout_ms: how long the broker keeps a dead process's open transaction
            before aborting it (exactly_once; a restart of the same instance aborts it at once).
        session_timeout_ms: consumer-group session timeout: how soon a dead process's partitions
            move to the survivors.
        instance_id: stable identity of this process for its transactional id; default derived
            from the absolute state_dir (one state_dir per process).
        state_dir: parent of the per-partition RocksDB stores.
        registry / model_name / model_alias: which model to serve.
        include_features: put the feature vector into each score record (debugging; costs bytes).
        metrics_port: port of the HTTP /metrics and /healthz endpoint; 0 disables it.
        metrics_host: address it binds (0.0.0.0 inside a container).
        onnx_threads: ONNX Runtime intra-op threads per process.
        model_poll_ms: at most this often (between batches) the registry is checked for alias
            changes; a new version is loaded verified and swapped in (docs/models.md).
        shadow: also score every row with the `challenger` alias, if any (extra records with
            variant "challenger", never the answer).
        canary_share: fraction of entities (stable hash) answered by the `canary` alias, if any;
            0 disables the canary.
        expiry_scan_per_batch: most stored entity records a partition's micro-batch examines for
            expiry besides the ones it touches, one per message of the batch (an incremental
            sweep in key order that deletes entities gone idle; docs/features.md). 0 disables it.
        sessions: closed-session records (`SessionsConfig`).
    """

    bootstrap_servers: str | None = None
    group_id: str = "streamscore"
    input_topic: str = "clicks"
    scores_topic: str = "scores"
    dlq_topic: str = "clicks.dlq"
    max_batch: int = 500
    batch_wait_ms: int = 50
    guarantee: str = "exactly_once"
    transaction_timeout_ms: int = 10_000
    session_timeout_ms: int = 10_000
    instance_id: str | None = None
    state_dir: Path = field(default_factory=lambda: streamscore_home() / "state")
    registry: Path = field(default_factory=default_registry)
    model_name: str = "purchase"
    model_alias: str = "champion"
    include_features: bool = False
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    onnx_threads: int = 1
    model_poll_ms: int = 1000
    shadow: bool = True
    canary_share: float = 0.0
    expiry_scan_per_batch: int = 256
    schema: EventSchema = field(default_factory=lambda: EventSchema(max_bytes=65_536))
    features: FeatureSpec = field(default_factory=clickstream_spec)
    rocksdb: RocksDBConfig = field(default_factory=RocksDBConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.max_batch >= 1, f"max_batch must be >= 1, got {self.max_batch}")
        need(0 <= self.batch_wait_ms <= 60_000, f"batch_wait_ms must be in [0, 60000], got {self.batch_wait_ms}")
        need(self.guarantee in GUARANTEES, f"guarantee must be one of {GUARANTEES}, got {self.guarantee!r}")
        need(0 <= self.metrics_port <= 65535, f"metrics_port must be a port number or 0, got {self.metrics_port}")
        need(1_000 <= self.transaction_timeout_ms <= 900_000,
             f"transaction_timeout_ms must be in [1000, 900000], got {self.transaction_timeout_ms}")
        need(3_000 <= self.session_timeout_ms <= 300_000,
             f"session_timeout_ms must be in [3000, 300000], got {self.session_timeout_ms}")
        need(isinstance(self.expiry_scan_per_batch, int) and 0 <= self.expiry_scan_per_batch <= 100_000,
             f"expiry_scan_per_batch must be in [0, 100000], got {self.expiry_scan_per_batch!r}")
        need(self.onnx_threads >= 1, f"onnx_threads must be >= 1, got {self.onnx_threads}")
        need(0 <= self.model_poll_ms <= 3_600_000, f"model_poll_ms must be in [0, 3600000], got {self.model_poll_ms}")
        need(isinstance(self.shadow, bool), f"shadow must be true or false, got {self.shadow!r}")
        need(isinstance(self.canary_share, (int, float)) and 0.0 <= self.canary_share <= 1.0,
             f"canary_share must be a number in [0, 1], got {self.canary_share!r}")
        topics = (self.input_topic, self.scores_topic, self.dlq_topic)
        need(all(topics) and len(set(topics)) == 3, f"input, scores and dlq topics must be distinct names, got {topics}")
        need(self.rocksdb.compression in ("none", "lz4", "zstd", "snappy"),
             f"rocksdb.compression must be none|lz4|zstd|snappy, got {self.rocksdb.compression!r}")
        self._validate_sessions(need)

    def _validate_sessions(self, need: Any) -> None:
        closed, idle = self.sessions.closed_topic, self.sessions.idle_close_ms
        if closed is not None:
            need(isinstance(closed, str) and closed and closed not in (self.input_topic, self.scores_topic, self.dlq_topic),
                 f"sessions.closed_topic must be a topic name distinct from the others, got {closed!r}")
            need(any(w.kind == "session" for w in self.features.windows),
                 "sessions.closed_topic is set but the feature spec has no session window")
            need(self.expiry_scan_per_batch > 0,
                 "sessions.closed_topic needs expiry_scan_per_batch > 0 (the sweep finds idle entities' sessions)")
        if idle is not None:
            need(closed is not None, "sessions.idle_close_ms needs sessions.closed_topic")
            need(isinstance(idle, int) and not isinstance(idle, bool) and 100 <= idle <= 86_400_000,
                 f"sessions.idle_close_ms must be in [100, 86400000], got {idle!r}")

    def with_overrides(self, **overrides: Any) -> EngineConfig:
        """A copy with the non-None overrides applied (for CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_config(path: str | Path | None = None, **overrides: Any) -> EngineConfig:
    """Read YAML (optional), apply environment and `overrides`, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        raw = dict(loaded)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        raw["bootstrap_servers"] = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(raw)


def config_from_mapping(raw: Mapping[str, Any]) -> EngineConfig:
    """Build an `EngineConfig` from plain data (YAML shape), rejecting unknown keys."""
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = set(raw) - fields
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}; valid keys are {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            if key in ("state_dir", "registry"):
                kwargs[key] = Path(value)
            elif key == "schema":
                kwargs[key] = value if isinstance(value, EventSchema) else EventSchema(**value)
            elif key == "features":
                if isinstance(value, FeatureSpec):
                    kwargs[key] = value
                elif isinstance(value, (str, Path)):
                    kwargs[key] = FeatureSpec.from_dict(yaml.safe_load(Path(value).read_text()))
                else:
                    kwargs[key] = FeatureSpec.from_dict(value)
            elif key == "rocksdb":
                kwargs[key] = value if isinstance(value, RocksDBConfig) else RocksDBConfig(**value)
            elif key == "sessions":
                kwargs[key] = value if isinstance(value, SessionsConfig) else SessionsConfig(**value)
            else:
                kwargs[key] = value
    except ConfigError:
        raise
    except (TypeError, ValueError, OSError) as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return EngineConfig(**kwargs)
