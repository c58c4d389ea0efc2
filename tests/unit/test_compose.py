"""compose.yaml cannot run here (no Docker engine): check that it is internally consistent."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from engine.config import EngineConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_expected_services_exist() -> None:
    assert {"kafka", "topics-init", "trainer", "engine", "loadgen"} <= set(SERVICES)


def test_kafka_uses_official_image_in_kraft_mode() -> None:
    kafka = SERVICES["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[1].split(":")[0] == "kafka"


def test_dependencies_name_defined_services_with_valid_conditions() -> None:
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on undefined {dep}"
            assert cond["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} health, which has no healthcheck"


def test_clients_point_at_the_advertised_listener() -> None:
    advertised = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    for name in ("engine", "loadgen"):
        assert SERVICES[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == advertised
    assert f"--bootstrap-server {advertised}" in " ".join(SERVICES["topics-init"]["command"])


def test_topics_created_are_the_engine_defaults() -> None:
    script = " ".join(SERVICES["topics-init"]["command"])
    cfg = EngineConfig()
    for topic in (cfg.input_topic, cfg.scores_topic, cfg.dlq_topic):
        assert re.search(rf"(^|\s){re.escape(topic)}:\d", script), f"topic {topic} not created"
    assert "--topic" in " ".join(SERVICES["loadgen"]["command"]) and cfg.input_topic in SERVICES["loadgen"]["command"]


def test_images_built_once_and_volumes_declared() -> None:
    built = [n for n, s in SERVICES.items() if "build" in s]
    assert built == ["trainer"], "one service builds the image; the others reuse its tag"
    tag = SERVICES["trainer"]["image"]
    for name in ("engine", "loadgen"):
        assert SERVICES[name]["image"] == tag
    assert (ROOT / "Dockerfile").is_file()
    for svc in SERVICES.values():
        for vol in svc.get("volumes", []):
            assert vol.split(":")[0] in COMPOSE["volumes"]


def test_engine_and_trainer_share_the_registry_volume() -> None:
    assert SERVICES["engine"]["environment"]["STREAMSCORE_HOME"] == SERVICES["trainer"]["environment"]["STREAMSCORE_HOME"]
    assert SERVICES["engine"]["volumes"] == SERVICES["trainer"]["volumes"]
    assert "--metrics-port" in SERVICES["engine"]["command"]
