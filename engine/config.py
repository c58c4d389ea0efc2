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
class MonitorConfig:
    """Drift and performance monitors and retraining triggers (docs/monitoring.md).

    Windows are per input partition. Event times and durations are milliseconds of event time.

    Attributes:
        enabled: run the monitors (on by default).
        trigger_topic: where retraining triggers are published (in the batch's transaction).
        window_events: a window closes after this many champion-scored events (count window) ...
        window_ms: ... or once the partition's event time passed its first event + this (time
            window) and it holds at least `min_window_events` rows, whichever comes first.
        min_window_events: the minimum sample size of an evaluated window.
        warmup_events: events after a (re)start of the reference that are counted into no window.
        alpha: family-wise false-alarm probability per window over all monitored columns
            (Bonferroni: each column at alpha / m).
        psi_floor: smallest PSI that counts as drift whatever the calibrated threshold says.
        calibration_draws: resampled null pairs per calibration (cached per window size).
        confirm_windows: consecutive windows (label windows for performance) a signal must
            persist before a trigger; the first one is a warning.
        cooldown_ms: event time after a trigger during which the same reason does not trigger
            again on this partition.
        score_chunk: the score detector (ADWIN) is fed means of this many consecutive scores.
        adwin_delta: ADWIN confidence parameter (score and calibration-residual detectors).
        score_shift_floor: smallest relative change of the mean score for an ADWIN detection
            to count, and of a window's mean score vs the reference's to confirm it.
        label_sample: share of entities (stable hash) whose outcomes are joined to scores.
        label_max_pending: most unresolved scored events kept per sampled entity (oldest dropped).
        label_window: resolved labels per performance evaluation (AUC, log loss, ECE).
        auc_drop: performance signal when the window's AUC is below the manifest's holdout AUC
            by more than this ...
        ece_rise: ... or its ECE above the holdout ECE by more than this ...
        calibration_shift: ... or its calibration in the large, |positive rate - mean score|,
            above the holdout's by more than this (also the smallest change of the residual
            y - p an ADWIN detection must show).
        schedule_ms: time-based fallback: trigger (reason "schedule") when this much event time
            passed since the reference started or the last trigger; 0 = off.
        volume_events: volume-based fallback: trigger (reason "volume") after this many events
            on the partition since the reference started or the last trigger; 0 = off.
        training_window_ms: a trigger suggests training on this much event time before the
            current window's end.
        key_bucket_ms: the event-time bucket of the idempotency key (model, version, reason,
            bucket): triggers of one model, reason and bucket are one retraining.
    """

    enabled: bool = True
    trigger_topic: str = "retrain.triggers"
    window_events: int = 20_000
    window_ms: int = 3_600_000
    min_window_events: int = 5_000
    warmup_events: int = 5_000
    alpha: float = 0.01
    psi_floor: float = 0.25
    calibration_draws: int = 1_000
    confirm_windows: int = 2
    cooldown_ms: int = 21_600_000
    score_chunk: int = 32
    adwin_delta: float = 0.002
    score_shift_floor: float = 0.25
    label_sample: float = 0.1
    label_max_pending: int = 32
    label_window: int = 2_000
    auc_drop: float = 0.05
    ece_rise: float = 0.05
    calibration_shift: float = 0.03
    schedule_ms: int = 0
    volume_events: int = 0
    training_window_ms: int = 7 * 86_400_000
    key_bucket_ms: int = 3_600_000

    def __post_init__(self) -> None:
        def need(cond: bool, key: str, what: str) -> None:
            if not cond:
                raise ConfigError(f"monitor.{key} {what}, got {getattr(self, key)!r}")

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        need(isinstance(self.enabled, bool), "enabled", "must be true or false")
        need(isinstance(self.trigger_topic, str) and bool(self.trigger_topic.strip()), "trigger_topic",
             "must be a topic name")
        for key, lo in (("window_events", 1), ("window_ms", 1), ("min_window_events", 1), ("warmup_events", 0),
                        ("calibration_draws", 50), ("confirm_windows", 1), ("cooldown_ms", 0), ("score_chunk", 1),
                        ("label_max_pending", 1), ("label_window", 10), ("schedule_ms", 0), ("volume_events", 0),
                        ("training_window_ms", 1), ("key_bucket_ms", 1)):
            need(is_int(getattr(self, key)) and getattr(self, key) >= lo, key, f"must be an integer >= {lo}")
        need(self.min_window_events <= self.window_events, "min_window_events", "must be <= window_events")
        for key in ("alpha", "adwin_delta"):
            need(is_num(getattr(self, key)) and 0.0 < getattr(self, key) < 1.0, key, "must be a number in (0, 1)")
        need(is_num(self.label_sample) and 0.0 <= self.label_sample <= 1.0, "label_sample", "must be in [0, 1]")
        for key in ("psi_floor", "score_shift_floor", "auc_drop", "ece_rise", "calibration_shift"):
            need(is_num(getattr(self, key)) and getattr(self, key) >= 0.0, key, "must be a number >= 0")


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
        monitor: drift/performance monitors and retraining triggers (`MonitorConfig`).
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
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

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
        need(self.monitor.trigger_topic not in topics,
             f"monitor.trigger_topic must differ from the input, scores and dlq topics, got {self.monitor.trigger_topic!r}")
        need(self.rocksdb.compression in ("none", "lz4", "zstd", "snappy"),
             f"rocksdb.compression must be none|lz4|zstd|snappy, got {self.rocksdb.compression!r}")

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
            elif key == "monitor":
                kwargs[key] = value if isinstance(value, MonitorConfig) else _monitor_config(value)
            else:
                kwargs[key] = value
    except ConfigError:
        raise
    except (TypeError, ValueError, OSError) as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return EngineConfig(**kwargs)


def _monitor_config(raw: Any) -> MonitorConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"monitor must be a mapping of monitor settings, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(MonitorConfig)}
    unknown = set(raw) - fields
    if unknown:
        raise ConfigError(f"unknown config keys {sorted('monitor.' + k for k in unknown)}; valid monitor keys are "
                          f"{sorted(fields)}")
    return MonitorConfig(**raw)
