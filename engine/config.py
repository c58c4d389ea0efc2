"""Engine configuration: one frozen dataclass, loaded from YAML and the environment, validated.

Precedence (highest first): explicit overrides (CLI flags) > environment > YAML file > defaults.
Invalid configuration fails at load time with a message naming the key (and the environment
variable, if one set it) and what to fix.

Environment variables:
    STREAMSCORE_<KEY>         any top-level key, e.g. STREAMSCORE_MAX_BATCH=1000
    STREAMSCORE_<SECTION>__<KEY>  a key of a nested section (any dataclass-typed field), e.g.
                              STREAMSCORE_ROCKSDB__BLOCK_CACHE_MB=256, STREAMSCORE_SCHEMA__TS_UNIT=s
    STREAMSCORE_KAFKA__<SETTING>  a Kafka client setting, ``_`` read as ``.``, e.g.
                              STREAMSCORE_KAFKA__SECURITY_PROTOCOL=SASL_SSL -> security.protocol
    KAFKA_BOOTSTRAP_SERVERS   bootstrap servers (otherwise the local broker started by
                              `streamscore broker start`); STREAMSCORE_BOOTSTRAP_SERVERS wins
    STREAMSCORE_HOME          runtime directory (default ./.streamscore): state, registry, broker
    STREAMSCORE_REGISTRY      model registry root (default $STREAMSCORE_HOME/registry): the
                              `registry` key
    STREAMSCORE_CONNECT_TIMEOUT  seconds a command waits for Kafka to answer (default 15;
                              `engine.broker.connect_timeout_s`)
    STREAMSCORE_DEBUG         1: the CLI shows tracebacks of user errors too (like --debug)

Values are converted by the type of the field they set (int, float, bool as true/false/1/0/yes/no,
paths, ``null`` or empty for an optional field; mappings and lists as YAML/JSON). A STREAMSCORE_
variable that names no key is an error, except the runtime ones in `NON_CONFIG_ENV`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.kafka_clients import KafkaSettingConflict, check_user_settings
from engine.retrain_config import RetrainConfig
from features.clickstream import clickstream_spec
from features.schema import EventSchema
from features.spec import FeatureSpec

GUARANTEES = ("exactly_once", "at_least_once")
ENV_PREFIX = "STREAMSCORE_"
# STREAMSCORE_ variables that are not config keys (runtime directory, broker build cache).
NON_CONFIG_ENV = frozenset({"STREAMSCORE_HOME", "STREAMSCORE_KAFKA_CACHE", "STREAMSCORE_CONNECT_TIMEOUT",
                            "STREAMSCORE_DEBUG"})


class ConfigError(ValueError):
    """Invalid configuration; the message says which key and how to fix it."""


def streamscore_home() -> Path:
    return Path(os.environ.get("STREAMSCORE_HOME", ".streamscore"))


def default_registry() -> Path:
    return Path(os.environ.get("STREAMSCORE_REGISTRY", streamscore_home() / "registry"))


@dataclass(frozen=True)
class RocksDBConfig:
    """Tuning of the partitions' RocksDB stores (see docs/operations.md).

    Attributes:
        block_cache_mb: one LRU block cache shared by every store of the process (data, index
            and filter blocks), MiB.
        bloom_bits_per_key: point-lookup bloom filter size (the batch multi-get is the hot read).
        compression: on-disk block compression: none | lz4 | zstd | snappy.
        write_buffer_mb: size of one memtable, MiB (a store flushes it to disk when full).
        memtable_budget_mb: all memtables of all the process's stores together, MiB: when
            they pass it, RocksDB flushes the largest early. With `block_cache_mb` it bounds
            RocksDB's memory per process, whatever the number of partitions or entities.
    """

    block_cache_mb: int = 64
    bloom_bits_per_key: float = 10.0
    compression: str = "lz4"  # none | lz4 | zstd | snappy
    write_buffer_mb: int = 32
    memtable_budget_mb: int = 64


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
        label_topic: outcomes come from this topic (docs/schemas/label.v1.json, keyed by entity,
            co-partitioned with the input topic) instead of being derived from the input
            stream's purchases; None (default): derived.
        label_wait_ms: with `label_topic`, how long (event time, by the partition watermark) a
            scored event waits for its label; 0 = the model's label horizon.
        label_missing: with `label_topic`, what an event whose label did not come in time
            counts as: "drop" (not evaluated, counted) or "negative" (label 0, for topics that
            publish positives only).
    """

    enabled: bool = True
    trigger_topic: str = "retrain.triggers"
    window_events: int = 20_000
    window_ms: int = 3_600_000
    min_window_events: int = 5_000
    warmup_events: int = 5_000
    alpha: float = 0.01
    psi_floor: float = 0.2
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
    label_topic: str | None = None
    label_wait_ms: int = 0
    label_missing: str = "drop"

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
                        ("training_window_ms", 1), ("key_bucket_ms", 1), ("label_wait_ms", 0)):
            need(is_int(getattr(self, key)) and getattr(self, key) >= lo, key, f"must be an integer >= {lo}")
        need(self.min_window_events <= self.window_events, "min_window_events", "must be <= window_events")
        for key in ("alpha", "adwin_delta"):
            need(is_num(getattr(self, key)) and 0.0 < getattr(self, key) < 1.0, key, "must be a number in (0, 1)")
        need(is_num(self.label_sample) and 0.0 <= self.label_sample <= 1.0, "label_sample", "must be in [0, 1]")
        for key in ("psi_floor", "score_shift_floor", "auc_drop", "ece_rise", "calibration_shift"):
            need(is_num(getattr(self, key)) and getattr(self, key) >= 0.0, key, "must be a number >= 0")
        need(self.label_topic is None or (isinstance(self.label_topic, str) and bool(self.label_topic.strip())),
             "label_topic", "must be a topic name or null")
        need(self.label_missing in ("drop", "negative"), "label_missing", "must be 'drop' or 'negative'")


@dataclass(frozen=True)
class QueryConfig:
    """The queryable-state HTTP endpoint (engine/query.py, docs/query.md). ``port`` 0: off."""

    port: int = 0
    host: str = "127.0.0.1"
    advertised: str | None = None  # host:port clients and other processes use; default host:port
    proxy: bool = False  # fetch a non-local entity from its owner once instead of redirecting

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigError(f"query.port must be a port number or 0 (off), got {self.port!r}")
        if not (isinstance(self.host, str) and self.host):
            raise ConfigError(f"query.host must be an address to bind, got {self.host!r}")
        if self.advertised is not None:
            host, _, port = str(self.advertised).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ConfigError(f"query.advertised must be host:port, got {self.advertised!r}")
        if not isinstance(self.proxy, bool):
            raise ConfigError(f"query.proxy must be true or false, got {self.proxy!r}")


@dataclass(frozen=True)
class StandbyConfig:
    """Warm standby replicas of partitions this process does not own (engine/standby.py).

    Attributes:
        replicas: standby replicas per input partition, on other members of the group (fewer if
            the group is smaller); 0 (the default) keeps none. A value >= members - 1 makes every
            process stand by for every partition it does not own.
        refresh_ms: how often the group's members and assignments are read to choose them.
    """

    replicas: int = 0
    refresh_ms: int = 5_000

    def __post_init__(self) -> None:
        if not (isinstance(self.replicas, int) and not isinstance(self.replicas, bool) and 0 <= self.replicas <= 64):
            raise ConfigError(f"standby.replicas must be an integer in [0, 64], got {self.replicas!r}")
        if not (isinstance(self.refresh_ms, int) and not isinstance(self.refresh_ms, bool)
                and 100 <= self.refresh_ms <= 600_000):
            raise ConfigError(f"standby.refresh_ms must be an integer in [100, 600000], got {self.refresh_ms!r}")


@dataclass(frozen=True)
class SessionsConfig:
    """Reporting of closed sessions (specs with session windows; docs/features.md).

    Attributes:
        closed_topic: topic for one "session closed" record per closed session (scored by the
            serving model, in the batch's transaction); None (the default) reports nothing.
        idle_close_ms: wall-clock ms without input after which a partition's whole store is swept
            for sessions the watermark has already closed; None disables it.
        idle_watermark: ``"event_time"`` (default): the idle sweep never closes a session the
            event-time watermark has not closed. ``"wall_clock"``: once a partition has been idle
            for `idle_close_ms`, its watermark is raised to wall-clock now - `wall_clock_lag_ms`
            (never lowered), persisted with the state, and its store swept again every
            `idle_close_ms` while the idleness lasts; events below the raised watermark are late.
        wall_clock_lag_ms: how far event time may trail the wall clock (producer delay plus clock
            skew); at least the spec's grace. None (the default): the grace.
    """

    closed_topic: str | None = None
    idle_close_ms: int | None = None
    idle_watermark: str = "event_time"
    wall_clock_lag_ms: int | None = None

    def lag_ms(self, grace_ms: int) -> int:
        """The wall-clock allowance in effect: `wall_clock_lag_ms`, or the grace."""
        return grace_ms if self.wall_clock_lag_ms is None else self.wall_clock_lag_ms


@dataclass(frozen=True)
class EngineConfig:
    """Everything a scoring process needs. Times are milliseconds unless the name says otherwise.

    Attributes:
        bootstrap_servers: Kafka bootstrap; None resolves at start (env, then local broker).
        group_id: consumer group; processes with the same id share the input partitions.
        input_topic / scores_topic / dlq_topic: topic names.
        max_batch: most messages per micro-batch (a backlog is consumed in batches this large).
        batch_wait_ms: the batch window: a micro-batch is cut when `max_batch` messages are there
            or this long after the previous batch was cut, whichever comes first (the time the
            previous batch took to compute and commit counts; latency bound under light load).
        commit_pipeline: commit each batch on a background thread (exactly_once: its
            transaction; at_least_once: waiting for its outputs' and changelog's delivery) while
            the next batch is consumed and computed (it reads the committing batch's state from
            memory, and is discarded with it if that transaction aborts). False commits each
            batch before the next one starts.
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
        query: the queryable-state endpoint (`QueryConfig`; docs/query.md).
        standby: warm standby replicas for fast takeovers (`StandbyConfig`; docs/operations.md).
        canary_share: fraction of entities (stable hash) answered by the `canary` alias, if any;
            0 disables the canary.
        expiry_scan_per_batch: most stored entity records a partition's micro-batch examines for
            expiry besides the ones it touches, one per message of the batch (an incremental
            sweep in key order that deletes entities gone idle; docs/features.md). 0 disables it.
        kafka: librdkafka settings merged into every Kafka client the engine creates
            (security.protocol, sasl.*, ssl.*, client.id, ...); the engine's own required
            settings win and a conflicting value is an error (`engine.kafka_clients`).
        retrain: the retraining worker's section (`engine.retrain_config`, docs/retraining.md).
        monitor: drift/performance monitors and retraining triggers (`MonitorConfig`).
        sessions: closed-session records (`SessionsConfig`).
    """

    bootstrap_servers: str | None = None
    group_id: str = "streamscore"
    input_topic: str = "clicks"
    scores_topic: str = "scores"
    dlq_topic: str = "clicks.dlq"
    max_batch: int = 1000
    batch_wait_ms: int = 50
    commit_pipeline: bool = True
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
    kafka: Mapping[str, Any] = field(default_factory=dict, metadata={"env_keys": "dotted"})
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    standby: StandbyConfig = field(default_factory=StandbyConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.max_batch >= 1, f"max_batch must be >= 1, got {self.max_batch}")
        need(isinstance(self.commit_pipeline, bool), f"commit_pipeline must be true or false, got {self.commit_pipeline!r}")
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
        problem = self.retrain.spec_problem(self.features)
        need(problem is None, str(problem))
        need(self.monitor.trigger_topic not in topics,
             f"monitor.trigger_topic must differ from the input, scores and dlq topics, got {self.monitor.trigger_topic!r}")
        need(self.monitor.label_topic not in {*topics, self.monitor.trigger_topic},
             f"monitor.label_topic must differ from the input, scores, dlq and trigger topics, "
             f"got {self.monitor.label_topic!r}")
        need(self.rocksdb.compression in ("none", "lz4", "zstd", "snappy"),
             f"rocksdb.compression must be none|lz4|zstd|snappy, got {self.rocksdb.compression!r}")
        for key in ("block_cache_mb", "write_buffer_mb", "memtable_budget_mb"):
            need(getattr(self.rocksdb, key) >= 1, f"rocksdb.{key} must be >= 1 (MiB), got {getattr(self.rocksdb, key)}")
        unmapped = set(self.features.extra_fields) - set(self.schema.extra_fields)
        need(not unmapped, f"features.extra_fields {sorted(unmapped)} are not mapped by schema.extra_fields "
                           f"(which maps {dict(self.schema.extra_fields)})")
        try:
            check_user_settings(self.kafka)
        except KafkaSettingConflict as exc:
            raise ConfigError(str(exc)) from None
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
        mode, lag = self.sessions.idle_watermark, self.sessions.wall_clock_lag_ms
        need(mode in ("event_time", "wall_clock"),
             f"sessions.idle_watermark must be event_time or wall_clock, got {mode!r}")
        if mode == "wall_clock":
            need(idle is not None, "sessions.idle_watermark: wall_clock needs sessions.idle_close_ms")
        if lag is not None:
            need(mode == "wall_clock", "sessions.wall_clock_lag_ms needs sessions.idle_watermark: wall_clock")
            grace = self.features.grace_ms
            need(isinstance(lag, int) and not isinstance(lag, bool) and grace <= lag <= 30 * 86_400_000,
                 f"sessions.wall_clock_lag_ms must be in [features grace {grace}, 2592000000], got {lag!r}")

    def with_overrides(self, **overrides: Any) -> EngineConfig:
        """A copy with the non-None overrides applied (for CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_config(path: str | Path | None = None, **overrides: Any) -> EngineConfig:
    """Defaults < YAML file at `path` (optional) < environment < non-None `overrides`; validated."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        raw = dict(loaded)
        if isinstance(raw.get("features"), str) and not Path(raw["features"]).is_absolute():
            raw["features"] = str(p.parent / raw["features"])  # a spec file next to its config
    env, origins = env_overrides(os.environ)
    raw = _merge(raw, env)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return config_from_mapping(raw)
    except ConfigError as exc:
        named = list(dict.fromkeys(f"{var}={os.environ[var]!r}" for key, var in origins.items() if key in str(exc)))
        raise ConfigError(f"{exc} (from the environment: {', '.join(named)})" if named else str(exc)) from None


def env_overrides(environ: Mapping[str, str], root: type | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The config keys set by STREAMSCORE_* variables (and KAFKA_BOOTSTRAP_SERVERS), converted
    to their fields' types, as a nested mapping; and which variable set which dotted key.
    `root`: the config dataclass (default `EngineConfig`); any dataclass-typed field of it is a
    section whose keys are ``STREAMSCORE_<SECTION>__<KEY>``.

    Raises ConfigError naming the variable and the key for an unknown key or a bad value."""
    out: dict[str, Any] = {}
    origins: dict[str, str] = {}
    names = sorted(environ)
    if environ.get("KAFKA_BOOTSTRAP_SERVERS") and not environ.get(ENV_PREFIX + "BOOTSTRAP_SERVERS"):
        names.insert(0, "KAFKA_BOOTSTRAP_SERVERS")
    for var in names:
        if var == "KAFKA_BOOTSTRAP_SERVERS":
            path = ["bootstrap_servers"]
        elif var.startswith(ENV_PREFIX) and var not in NON_CONFIG_ENV:
            path = [part.lower() for part in var[len(ENV_PREFIX):].split("__")]
        else:
            continue
        cls: Any = root or EngineConfig
        target = out
        keys: list[str] = []
        for depth, part in enumerate(path):
            f = _fields(cls).get(part) if cls is not None else None
            last = depth == len(path) - 1
            if f is None:
                valid = sorted(_fields(cls)) if cls is not None else []
                raise ConfigError(f"environment variable {var}: {'.'.join(keys + [part])!r} is not a config key"
                                  + (f"; valid keys here are {valid}" if valid else ""))
            keys.append(part)
            tp = _hints(cls)[part]
            if last:
                target[part] = _coerce(environ[var], tp, ".".join(keys), var)
            elif f.metadata.get("env_keys") == "dotted" and depth == len(path) - 2:
                # A passthrough mapping (kafka): the rest of the name is one dotted setting.
                setting = path[depth + 1].replace("_", ".")
                target.setdefault(part, {})[setting] = environ[var]
                keys.append(setting)
                break
            elif _own_yaml_form(_section(tp)):
                # A section with its own YAML form validates its keys itself: the rest of the name is
                # one of its keys, the value parsed as YAML (so "30d" and 0.5 arrive as in a file).
                rest = "__".join(path[depth + 1:])
                target.setdefault(part, {})[rest] = yaml.safe_load(environ[var])
                keys.append(rest)
                break
            elif _section(tp) is not None:
                target = target.setdefault(part, {})
                cls = _section(tp)
            else:
                raise ConfigError(f"environment variable {var}: {'.'.join(keys)!r} has no nested keys")
        origins[".".join(keys)] = var
        origins.setdefault(keys[-1], var)
    return out, origins


def config_from_mapping(raw: Mapping[str, Any]) -> EngineConfig:
    """Build an `EngineConfig` from plain data (YAML shape), converting values by field type and
    rejecting unknown keys. Nested dataclass-typed fields (schema, rocksdb, ...) are sections
    built the same way; `features` is a spec file path or mapping (`FeatureSpec.from_dict`)."""
    return _build(EngineConfig, raw, "")


def _build(cls: type, raw: Any, where: str) -> Any:
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields, hints = _fields(cls), _hints(cls)
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(where + str(k) for k in unknown)}; "
                          f"valid keys are {sorted(where + k for k in fields)}")
    kwargs: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            if cls is EngineConfig and key == "features":
                kwargs[key] = _feature_spec(value)
            elif _own_yaml_form(_section(hints[key])) and isinstance(value, Mapping):
                kwargs[key] = _section(hints[key]).from_mapping(value)  # type: ignore[union-attr]  # a section with its own YAML form (durations, ...)
            else:
                kwargs[key] = _coerce(value, hints[key], where + key, None)
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"invalid config{' in ' + where.rstrip('.') if where else ''}: {exc}") from None


def _feature_spec(value: Any) -> FeatureSpec:
    if isinstance(value, FeatureSpec):
        return value
    if isinstance(value, (str, Path)):
        return FeatureSpec.from_dict(yaml.safe_load(Path(value).read_text()))
    return FeatureSpec.from_dict(value)


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _own_yaml_form(section: type | None) -> bool:
    """A config section that reads its own YAML form: a ``from_mapping`` *classmethod* (durations
    like ``30d``, nested keys that are not fields); it validates its keys itself."""
    return section is not None and inspect.ismethod(getattr(section, "from_mapping", None))


def _section(tp: Any) -> type | None:
    """The dataclass a field of type `tp` (or `tp | None`) is built from (a nested config section), if any."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = inner[0] if len(inner) == 1 else None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and tp is not FeatureSpec:
        return tp
    return None


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _coerce(value: Any, tp: Any, key: str, var: str | None) -> Any:
    """`value` as type `tp`. From the environment (`var` set) strings are parsed; from YAML the
    value must already have the type (ints are accepted for floats, numbers for strings)."""
    src = f"environment variable {var} (key {key})" if var else key

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{src} must be {what}, got {value!r}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (var is not None and str(value).strip().lower() in ("", "null", "none")):
            if len(inner) < len(args):
                return None
        return _coerce(value, inner[0], key, var) if len(inner) == 1 else value
    if value is None:
        raise bad("set (null is not allowed here)")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if var is not None and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise bad("true or false")
    if tp is int:
        if var is not None and isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                raise bad("an integer") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if tp is float:
        if var is not None and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise bad("a path")
    if var is not None and isinstance(value, str) and (origin is not None or _section(tp) is not None):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{src} is not valid YAML/JSON: {exc}") from None
    if origin in (Mapping, dict, typing.Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise bad("a mapping")
        return dict(value)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        return tuple(value) if origin is tuple else list(value)
    section = _section(tp)
    if section is not None:
        return _build(section, value, key + ".")
    return value


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, merging nested mappings key by key."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# Key fragments that mark a value as secret in `masked` (librdkafka's sasl.password,
# ssl.key.password, sasl.jaas.config, sasl.oauthbearer.client.secret, ssl.key.pem, ...).
SECRET_MARKERS = ("password", "secret", "token", "jaas", "credential", "private", "ssl.key.pem", "api.key",
                  "oauthbearer.config")
MASK = "*****"


def config_to_plain(cfg: Any) -> Any:
    """A YAML-safe form of a config (or any part of it): the shape `config_from_mapping` reads."""
    if isinstance(cfg, FeatureSpec):
        return cfg.to_dict()
    if hasattr(cfg, "to_mapping") and not isinstance(cfg, type):  # a section with its own YAML form
        return config_to_plain(cfg.to_mapping())
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, Path):
        return str(cfg)
    if isinstance(cfg, Mapping):
        return {str(k): config_to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (tuple, list)):
        return [config_to_plain(v) for v in cfg]
    return cfg


def masked(plain: Any) -> Any:
    """`plain` with the value of every key that names a secret (`SECRET_MARKERS`) replaced by
    ``*****``, at any depth."""
    if isinstance(plain, Mapping):
        return {k: MASK if any(m in str(k).lower() for m in SECRET_MARKERS) and v is not None else masked(v)
                for k, v in plain.items()}
    if isinstance(plain, list):
        return [masked(v) for v in plain]
    return plain
