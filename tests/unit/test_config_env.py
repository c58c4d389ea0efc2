"""Config precedence (CLI > env > YAML > defaults), env type conversion and errors, Kafka
passthrough rules and secret masking."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from engine.config import ConfigError, config_to_plain, env_overrides, load_config, masked
from engine.kafka_clients import FIXED, OWNED, KafkaSettingConflict, client_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for var in list(os.environ):
        if var.startswith("STREAMSCORE_") or var == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(var)
    return monkeypatch


def _yaml(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_precedence_cli_over_env_over_yaml_over_defaults(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = _yaml(tmp_path, {"max_batch": 11, "batch_wait_ms": 12, "group_id": "yaml", "rocksdb": {"block_cache_mb": 7}})
    clean_env.setenv("STREAMSCORE_MAX_BATCH", "21")
    clean_env.setenv("STREAMSCORE_GROUP_ID", "env")
    clean_env.setenv("STREAMSCORE_ROCKSDB__WRITE_BUFFER_MB", "99")
    cfg = load_config(path, group_id="cli")
    assert cfg.group_id == "cli"                     # CLI > env
    assert cfg.max_batch == 21                       # env > YAML
    assert cfg.batch_wait_ms == 12                   # YAML > default
    assert cfg.session_timeout_ms == 10_000          # default
    # env sets one key of a section; the YAML's other keys of that section stay
    assert (cfg.rocksdb.block_cache_mb, cfg.rocksdb.write_buffer_mb) == (7, 99)


def test_env_types_follow_the_fields(clean_env: pytest.MonkeyPatch) -> None:
    for var, value in {
        "STREAMSCORE_SHADOW": "false", "STREAMSCORE_CANARY_SHARE": "0.25", "STREAMSCORE_STATE_DIR": "/tmp/x",
        "STREAMSCORE_INSTANCE_ID": "null", "STREAMSCORE_ROCKSDB__BLOOM_BITS_PER_KEY": "12",
        "STREAMSCORE_SCHEMA__FIELD_MAP": "{user_id: uid, ts: time}",
        "STREAMSCORE_SCHEMA__REQUIRED": "user_id,ts,event_type",
        "STREAMSCORE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "STREAMSCORE_KAFKA__SASL_MECHANISM": "PLAIN",
        "STREAMSCORE_BOOTSTRAP_SERVERS": "a:1", "KAFKA_BOOTSTRAP_SERVERS": "b:2",
    }.items():
        clean_env.setenv(var, value)
    cfg = load_config()
    assert cfg.shadow is False and cfg.canary_share == 0.25 and cfg.state_dir == Path("/tmp/x")
    assert cfg.instance_id is None and cfg.rocksdb.bloom_bits_per_key == 12.0
    assert dict(cfg.schema.field_map) == {"user_id": "uid", "ts": "time"}
    assert cfg.schema.required == ("user_id", "ts", "event_type")
    assert dict(cfg.kafka) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    assert cfg.bootstrap_servers == "a:1"  # the STREAMSCORE_ name wins over KAFKA_BOOTSTRAP_SERVERS


@given(st.integers(min_value=1, max_value=10**9))
def test_env_integers_round_trip(n: int) -> None:
    env, origins = env_overrides({"STREAMSCORE_MAX_BATCH": str(n), "STREAMSCORE_ROCKSDB__BLOCK_CACHE_MB": f" {n} "})
    assert env == {"max_batch": n, "rocksdb": {"block_cache_mb": n}}
    assert origins["rocksdb.block_cache_mb"] == "STREAMSCORE_ROCKSDB__BLOCK_CACHE_MB"


@pytest.mark.parametrize(("var", "value", "names"), [
    ("STREAMSCORE_MAX_BATCH", "lots", ("STREAMSCORE_MAX_BATCH", "max_batch", "integer")),
    ("STREAMSCORE_SHADOW", "maybe", ("STREAMSCORE_SHADOW", "shadow", "true or false")),
    ("STREAMSCORE_CANARY_SHARE", "half", ("STREAMSCORE_CANARY_SHARE", "canary_share", "number")),
    ("STREAMSCORE_ROCKSDB__BLOCK_CACHE_MB", "1.5", ("STREAMSCORE_ROCKSDB__BLOCK_CACHE_MB", "rocksdb.block_cache_mb")),
    ("STREAMSCORE_MAX_BATHC", "5", ("STREAMSCORE_MAX_BATHC", "max_bathc", "not a config key")),
    ("STREAMSCORE_ROCKSDB__NOPE", "5", ("STREAMSCORE_ROCKSDB__NOPE", "rocksdb.nope", "block_cache_mb")),
    ("STREAMSCORE_MAX_BATCH__X", "5", ("STREAMSCORE_MAX_BATCH__X", "max_batch", "no nested keys")),
    ("STREAMSCORE_SCHEMA__FIELD_MAP", "[a, b]", ("STREAMSCORE_SCHEMA__FIELD_MAP", "schema.field_map", "mapping")),
    # valid type, invalid value: the validation message names the key, the loader adds the variable
    ("STREAMSCORE_MAX_BATCH", "0", ("STREAMSCORE_MAX_BATCH", "max_batch", ">= 1")),
    ("STREAMSCORE_ROCKSDB__COMPRESSION", "gzip", ("STREAMSCORE_ROCKSDB__COMPRESSION", "rocksdb.compression")),
    ("STREAMSCORE_KAFKA__ENABLE_AUTO_COMMIT", "true", ("STREAMSCORE_KAFKA__ENABLE_AUTO_COMMIT", "enable.auto.commit")),
    ("STREAMSCORE_KAFKA__GROUP_ID", "x", ("kafka.group.id", "group_id")),
])
def test_bad_env_values_name_variable_and_key(clean_env: pytest.MonkeyPatch, var: str, value: str,
                                              names: tuple[str, ...]) -> None:
    clean_env.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_config()
    for name in names:
        assert name in str(err.value)


def test_runtime_variables_are_not_config_keys(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("STREAMSCORE_HOME", str(tmp_path))
    clean_env.setenv("STREAMSCORE_KAFKA_CACHE", str(tmp_path))
    clean_env.setenv("STREAMSCORE_REGISTRY", str(tmp_path / "reg"))  # this one is the `registry` key
    assert load_config().registry == tmp_path / "reg"


@pytest.mark.parametrize(("doc", "names"), [
    ({"max_batch": "many"}, ("max_batch", "integer")),
    ({"shadow": "yes"}, ("shadow", "true or false")),
    ({"rocksdb": {"block_cache_mb": True}}, ("rocksdb.block_cache_mb", "integer")),
    ({"rocksdb": {"nope": 1}}, ("rocksdb.nope",)),
    ({"rocksdb": 5}, ("rocksdb", "mapping")),
    ({"kafka": {"isolation.level": "read_uncommitted"}}, ("kafka.isolation.level", "read_committed")),
    ({"kafka": {"transactional.id": "mine"}}, ("kafka.transactional.id", "instance_id")),
    ({"kafka": {"ssl": {"nested": 1}}}, ("kafka.ssl", "string, number or boolean")),
])
def test_bad_yaml_values_name_the_key(tmp_path: Path, clean_env: pytest.MonkeyPatch, doc: dict,
                                      names: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_yaml(tmp_path, doc))
    for name in names:
        assert name in str(err.value)


def test_kafka_passthrough_merge_order_and_conflicts() -> None:
    user = {"security.protocol": "SSL", "linger.ms": 50, "acks": -1, "enable.idempotence": "true"}
    conf = client_settings("h:1", user, defaults={"linger.ms": 5, "compression.type": "lz4"},
                           required={"acks": "all", "enable.idempotence": True, "group.id": "g"})
    assert conf["bootstrap.servers"] == "h:1" and conf["group.id"] == "g"
    assert conf["linger.ms"] == 50                  # user over the engine's tuning default
    assert conf["compression.type"] == "lz4"
    assert conf["security.protocol"] == "SSL"       # passthrough
    assert conf["acks"] == "all"                    # equal value (-1 == all): the engine's stays
    for key in OWNED:
        with pytest.raises(KafkaSettingConflict, match=key):
            client_settings("h:1", {key: "x"})
    for key, value in FIXED.items():
        other = "nope" if not isinstance(value, bool) else (not value)
        with pytest.raises(KafkaSettingConflict, match=key):
            client_settings("h:1", {key: other})


@given(st.dictionaries(st.sampled_from(["sasl.password", "ssl.key.password", "sasl.jaas.config", "SASL.Oauthbearer.Client.Secret",
                                        "api_token", "ssl.key.pem"]), st.text(min_size=1), min_size=1))
def test_secrets_are_masked_at_any_depth(secrets: dict) -> None:
    plain = {"kafka": {"security.protocol": "SASL_SSL", **secrets}, "group_id": "g"}
    out = masked(plain)
    assert out["kafka"]["security.protocol"] == "SASL_SSL" and out["group_id"] == "g"
    for key in secrets:
        assert out["kafka"][key] == "*****"


def test_plain_form_reloads_to_the_same_config(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    cfg = load_config(_yaml(tmp_path, {"max_batch": 3, "kafka": {"client.id": "x"}, "schema": {"field_map": {"user_id": "u"}}}))
    again = load_config(_yaml(tmp_path, config_to_plain(cfg)))
    assert config_to_plain(again) == config_to_plain(cfg)
    assert again.features.hash == cfg.features.hash


def test_config_show_masks_secrets(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from engine.cli import app

    path = _yaml(tmp_path, {"kafka": {"sasl.password": "hunter2", "sasl.username": "alice"}})
    clean_env.setenv("STREAMSCORE_KAFKA__SSL_KEY_PASSWORD", "s3cr3t")
    clean_env.setenv("STREAMSCORE_MAX_BATCH", "77")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["max_batch"] == 77 and shown["kafka"]["sasl.username"] == "alice"
    assert shown["kafka"]["sasl.password"] == "*****" and shown["kafka"]["ssl.key.password"] == "*****"
    assert "hunter2" not in result.output and "s3cr3t" not in result.output
    bad = CliRunner().invoke(app, ["config", "show"], env={"STREAMSCORE_MAX_BATCH": "x"})
    assert bad.exit_code == 2 and "STREAMSCORE_MAX_BATCH" in bad.output


@dataclass(frozen=True)
class Detector:
    threshold: float = 0.1
    enabled: bool = True


@dataclass(frozen=True)
class Monitor:
    window: int = 1000
    topic: str = "t"
    detector: Detector = field(default_factory=Detector)


@dataclass(frozen=True)
class Root:
    monitor: Monitor = field(default_factory=Monitor)
    retrain: Monitor | None = None  # an optional section works the same
    name: str = "x"


def test_any_nested_dataclass_section_gets_env_overrides_and_type_checks() -> None:
    """A section added later (e.g. `monitor:`) needs no loader code: env keys, types, errors."""
    env, origins = env_overrides({"STREAMSCORE_MONITOR__WINDOW": "5000",
                                  "STREAMSCORE_MONITOR__DETECTOR__THRESHOLD": "0.25",
                                  "STREAMSCORE_MONITOR__DETECTOR__ENABLED": "no"}, root=Root)
    assert env == {"monitor": {"window": 5000, "detector": {"threshold": 0.25, "enabled": False}}}
    assert origins["monitor.detector.threshold"] == "STREAMSCORE_MONITOR__DETECTOR__THRESHOLD"
    from engine.config import _build  # the loader the engine config uses

    built = _build(Root, {"monitor": {"topic": "yaml-topic", **env["monitor"]}}, "")
    assert built.monitor == Monitor(5000, "yaml-topic", Detector(0.25, False))
    with pytest.raises(ConfigError, match="STREAMSCORE_MONITOR__WINDOW.*monitor.window.*integer"):
        env_overrides({"STREAMSCORE_MONITOR__WINDOW": "big"}, root=Root)
    env, _ = env_overrides({"STREAMSCORE_RETRAIN__WINDOW": "7"}, root=Root)
    assert _build(Root, env, "").retrain == Monitor(window=7)
    assert _build(Root, {"retrain": None}, "").retrain is None
    with pytest.raises(ConfigError, match="monitor.detector.nope"):
        _build(Root, {"monitor": {"detector": {"nope": 1}}}, "")

