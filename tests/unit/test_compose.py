"""compose.yaml cannot run here (no Docker engine): check that it is internally consistent, that
the Dockerfile installs what `make install` installs, and that the monitoring files line up."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

from engine.cli import app
from engine.config import EngineConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
ENGINES = ("engine-1", "engine-2")
STREAMSCORE = ("trainer", "topics-init", *ENGINES, "retrainer", "loadgen")


def _cli_commands() -> set[str]:
    import typer.main

    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_expected_services_exist() -> None:
    assert {"kafka", *STREAMSCORE, "prometheus", "grafana"} <= set(SERVICES)


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


def test_streamscore_services_run_real_cli_commands_against_the_advertised_listener() -> None:
    advertised = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    commands = _cli_commands()
    for name in STREAMSCORE:
        svc = SERVICES[name]
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == advertised, name
        cmd = svc["command"]
        first = cmd[0].split()[1] if svc.get("entrypoint") else cmd[0]  # sh -c "streamscore <cmd> ..."
        assert first in commands, f"{name} runs `streamscore {first}`, which does not exist"


def test_two_engines_in_one_group_with_separate_state_and_a_shared_registry() -> None:
    state_dirs = []
    for name in ENGINES:
        svc = SERVICES[name]
        cmd = svc["command"]
        assert cmd[0] == "run" and "--group-id" not in cmd  # same (default) group
        state_dirs.append(cmd[cmd.index("--state-dir") + 1])
        assert "data:/data" in svc["volumes"] and svc["environment"]["STREAMSCORE_HOME"] == "/data"
        assert "--metrics-host" in cmd and cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    # distinct state dirs also give distinct transactional ids (derived from the state dir)
    assert len(set(state_dirs)) == 2
    assert SERVICES["trainer"]["environment"]["STREAMSCORE_HOME"] == "/data"


def test_topics_are_created_by_the_engine_with_the_input_partitions() -> None:
    cmd = SERVICES["topics-init"]["command"]
    assert cmd[:2] == ["topics", "create"]
    partitions = cmd[cmd.index("--partitions") + 1]
    assert f"--partitions {partitions}" in " ".join(SERVICES["trainer"]["command"])  # trained for that layout
    assert EngineConfig().input_topic in SERVICES["loadgen"]["command"]


def test_image_built_once_and_volumes_declared() -> None:
    built = [n for n, s in SERVICES.items() if "build" in s]
    assert built == ["trainer"], "one service builds the image; the others reuse its tag"
    for name in STREAMSCORE:
        assert SERVICES[name]["image"] == SERVICES["trainer"]["image"]
    for svc in SERVICES.values():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            assert source in COMPOSE["volumes"] or (ROOT / source).exists(), f"volume source {source} missing"


def test_dockerfile_installs_what_make_install_installs() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        pkg = pattern.rstrip("*")
        assert re.search(rf"^COPY {pkg} {pkg}$", docker, re.M), f"Dockerfile does not copy {pkg}/"
    assert "pip install --no-cache-dir ." in docker  # the same pinned dependencies as `make install`
    assert 'ENTRYPOINT ["streamscore"]' in docker


def test_prometheus_scrapes_every_engine_and_grafana_is_provisioned() -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:8000" for name in ENGINES}
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    dash = json.loads((ROOT / "deploy/grafana/dashboards/streamscore.json").read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {ds["datasources"][0]["uid"]}
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("throughput", "latency", "lag", "dead letters", "restore", "model version", "drift",
                  "retraining triggers", "performance"):
        assert topic in titles, f"dashboard has no {topic} panel"
