"""The `kafka:` passthrough reaches the real clients the engine creates (against the real broker)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import PARTITIONS, TrainedModel, engine_config, produce_all, running_engine, wait_for_stats

pytestmark = pytest.mark.integration


def _member_client_ids(bootstrap: str, group: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    described = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return {m.client_id for m in described.members}


def test_client_id_from_the_kafka_mapping_is_what_the_broker_sees(
    kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path
) -> None:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    client_id = f"probe-{uuid.uuid4().hex[:8]}"
    # statistics.interval.ms and a user tuning value (linger.ms) must be accepted by the real clients too
    cfg = engine_config(tmp_path, trained_model, clicks, scores, dlq,
                        kafka={"client.id": client_id, "linger.ms": 2, "statistics.interval.ms": 0})
    events = ClickstreamGenerator(GeneratorConfig(n_events=300, n_users=30, seed=5,
                                                  start=datetime(2026, 2, 1, tzinfo=timezone.utc))).events()
    produce_all(kafka_bootstrap, clicks, [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.scored >= 300)
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while client_id not in seen:
            assert time.monotonic() < deadline, f"group members' client ids {seen}, expected {client_id}"
            seen = _member_client_ids(kafka_bootstrap, cfg.group_id)
        assert seen == {client_id}


def test_run_fails_in_two_lines_on_a_setting_librdkafka_rejects(
    kafka_bootstrap: str, trained_model: TrainedModel, tmp_path: Path, make_topic
) -> None:
    from typer.testing import CliRunner

    from engine.cli import app
    from tests.integration.engine_process import engine_yaml

    clicks = make_topic("clicks", PARTITIONS)
    cfg = engine_config(tmp_path, trained_model, clicks, f"{clicks}-s", f"{clicks}-d")
    path = engine_yaml(tmp_path / "engine.yaml", cfg, bootstrap_servers=kafka_bootstrap,
                       kafka={"no.such.setting": "1"})
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--max-seconds", "1"])
    assert result.exit_code == 2, result.output
    assert "no.such.setting" in result.output and "kafka:" in result.output
    assert len(result.output.strip().splitlines()) <= 2
