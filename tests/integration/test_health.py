"""Liveness, readiness and metrics of a real engine against the real broker."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.broker import free_port
from engine.runner import ScoringEngine
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import (
    PARTITIONS,
    TrainedModel,
    engine_config,
    produce_all,
    running_engine,
    wait_for_stats,
)
from tests.integration.engine_process import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
N = 3_000


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            body = resp.read()
            return resp.status, orjson.loads(body) if path != "/metrics" else body.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
              or line.startswith(name + "{")]
    assert values, f"{name} not exported"
    return sum(values)


def dashboard_metrics() -> set[str]:
    """Metric families the Grafana dashboard queries (suffixes of counters/histograms removed)."""
    dash = json.loads((ROOT / "deploy/grafana/dashboards/streamscore.json").read_text())
    names = {n for p in dash["panels"] for t in p["targets"] for n in re.findall(r"streamscore_[a-z0-9_]+", t["expr"])}
    return {_family(n) for n in names}


def _family(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count|created)$", "", name)


def exported_families(text: str) -> set[str]:
    """Families a /metrics page declares (labelled families without samples yet included)."""
    return {_family(line.split()[2]) for line in text.splitlines() if line.startswith("# TYPE ")}


def test_readiness_follows_assignment_restore_and_stop(kafka_bootstrap: str, make_topic, trained_model: TrainedModel,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq")
    gen = GeneratorConfig(n_events=N, n_users=300, seed=5, start=datetime(2026, 3, 1, tzinfo=timezone.utc))
    produce_all(kafka_bootstrap, clicks, list(ClickstreamGenerator(gen).payloads()))
    port = free_port()
    cfg = engine_config(tmp_path, trained_model, clicks, scores, dlq, metrics_port=port)

    # 1. Metrics move as events flow; ready once assigned, restored and serving.
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed == N)
        wait_until(lambda: _get(port, "/readyz")[0] == 200, 30, "/readyz 200")
        status, live = _get(port, "/livez")
        assert status == 200 and live["status"] == "ok" and live["assigned_partitions"] == PARTITIONS
        text = _get(port, "/metrics")[1]
        assert _metric(text, "streamscore_events_in_total") == N
        assert _metric(text, "streamscore_e2e_latency_seconds_count") == N
        assert _metric(text, "streamscore_e2e_latency_seconds_sum") > 0
        assert _metric(text, "streamscore_consumer_lag") == 0  # caught up on every partition
        assert _metric(text, "streamscore_ready") == 1
        assert dashboard_metrics() <= exported_families(text), dashboard_metrics() - exported_families(text)
        engine.stop()
        assert engine.metrics.readiness()[1]["reasons"][0] == "stopping"

    # 2. A wiped disk: not ready while the changelog is restored, ready after.
    shutil.rmtree(cfg.state_dir)
    during: list[tuple[int, dict[str, Any]]] = []
    original = ScoringEngine._restore_progress

    def spy(self: ScoringEngine, partition: int):  # type: ignore[no-untyped-def]
        progress = original(self, partition)

        def wrapped(*args: int) -> None:
            progress(*args)
            during.append(self.metrics.readiness())

        return wrapped

    monkeypatch.setattr(ScoringEngine, "_restore_progress", spy)
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_until(lambda: engine.metrics.readiness()[0] == 200, 60, "ready after the restore")
        assert engine.stats.restored_records > 0
    assert during, "the restore reported no progress"
    assert all(code == 503 for code, _ in during)
    assert any(any(r.startswith("restoring partitions") for r in body["reasons"]) for _, body in during)
