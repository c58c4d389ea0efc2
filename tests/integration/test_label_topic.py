"""The optional label topic (monitor.label_topic) against the real broker, RocksDB and ONNX Runtime.

* labels published on the topic, joined to the scored events they name, move the partitions'
  performance metrics and confirm a performance (decay) trigger; bad label records go to the
  DLQ with reason label_invalid; the label offsets are committed;
* each label is applied exactly once across a restart on a wiped disk: the monitor states
  restored from the changelog have resolved exactly the published labels.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import orjson
import pytest

from engine.config import EngineConfig, MonitorConfig
from engine.label_topic import LABEL_INVALID
from models.trigger import RetrainTrigger
from tests.integration.conftest import (
    PARTITIONS,
    TrainedModel,
    committed_total,
    engine_config,
    produce_all,
    read_all,
    running_engine,
    wait_for_stats,
)
from tests.integration.test_monitoring import _monitor_states, _training_like

pytestmark = pytest.mark.integration

# Drift windows out of reach: only the performance monitor speaks here.
MONITOR = MonitorConfig(window_events=1_000_000, min_window_events=1_000, window_ms=365 * 86_400_000,
                        warmup_events=0, label_sample=1.0, label_window=200, confirm_windows=2, label_max_pending=1_000,
                        label_wait_ms=365 * 86_400_000, calibration_draws=200)
EVENTS = 3_000


def _labels(bootstrap: str, scores_topic: str, invert: bool) -> list[tuple[bytes, bytes]]:
    """One label per champion score record, keyed by entity: the truth is 1 for the lower half
    of the scores when `invert` (a model that ranks backwards: AUC ~0), else random-ish."""
    records = [orjson.loads(m.value()) for m in read_all(bootstrap, scores_topic, PARTITIONS)]
    records = [r for r in records if r["variant"] == "champion"]
    median = sorted(r["score"] for r in records)[len(records) // 2]
    out = []
    for r in records:
        label = int(r["score"] < median) if invert else int(hash(r["event_id"]) % 2)
        out.append((str(r["entity"]).encode(), orjson.dumps({"schema_version": 1, "event_id": r["event_id"],
                                                             "entity": r["entity"], "label": label})))
    return out


def _scored(bootstrap: str, make_topic, tmp_path: Path, model: TrainedModel,  # type: ignore[no-untyped-def]
            **monitor: object) -> EngineConfig:
    """Fresh topics (labels co-partitioned with clicks), EVENTS clicks on them, and the config."""
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq")
    triggers, labels = make_topic("triggers"), make_topic("labels", PARTITIONS)
    produce_all(bootstrap, clicks, _training_like()[:EVENTS])
    return engine_config(tmp_path, model, clicks, scores, dlq,
                         monitor=dataclasses.replace(MONITOR, trigger_topic=triggers, label_topic=labels, **monitor))


def _resolved(engine) -> float:  # type: ignore[no-untyped-def]
    """Labels the engine's committed units have joined to scores so far."""
    return sum(engine.metrics.registry.get_sample_value("streamscore_monitor_labels_resolved_total",
                                                        {"label": v}) or 0.0 for v in ("0", "1"))


def _gauge(engine, name: str, labels: dict[str, str]) -> float | None:  # type: ignore[no-untyped-def]
    return engine.metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_labels_on_the_topic_move_performance_and_trigger_decay(kafka_bootstrap: str, make_topic,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path, trained_model: TrainedModel,
                                                                  guarantee: str) -> None:
    cfg = dataclasses.replace(_scored(kafka_bootstrap, make_topic, tmp_path, trained_model), guarantee=guarantee)
    scores, dlq, triggers, labels = cfg.scores_topic, cfg.dlq_topic, cfg.monitor.trigger_topic, cfg.monitor.label_topic
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed == EVENTS, timeout=120)
        assert _gauge(engine, "streamscore_monitor_labels_resolved_total", {"label": "1"}) is None  # no outcome yet
        good = _labels(kafka_bootstrap, scores, invert=True)
        bad = [(b"u1", b"not json"), (b"u1", orjson.dumps({"event_id": "x", "entity": "u1", "label": 2})),
               (b"someone-else", orjson.dumps({"event_id": "x", "entity": "u1", "label": 1}))]
        produce_all(kafka_bootstrap, labels, good + bad)
        wait_for_stats(engine, lambda s: _resolved(engine) == len(good) and s.dead_lettered.get(LABEL_INVALID) == 3,
                       timeout=120)
        aucs = [_gauge(engine, "streamscore_monitor_performance", {"partition": str(p), "metric": "auc"})
                for p in range(PARTITIONS)]
    assert [a for a in aucs if a is not None] and all(a < 0.2 for a in aucs if a is not None), aucs
    published = [RetrainTrigger.from_json(m.value()) for m in read_all(kafka_bootstrap, triggers, 1)]
    perf = [t for t in published if t.reason == "performance"]
    assert perf and perf[0].evidence[0]["name"] == "auc" and perf[0].statistic < perf[0].threshold
    assert perf[0].current["windows_confirmed"] == MONITOR.confirm_windows
    dead = [m for m in read_all(kafka_bootstrap, dlq, 1)]
    assert sorted(dict(m.headers())["reason"] for m in dead) == [LABEL_INVALID.encode()] * 3
    assert sorted(m.value() for m in dead) == sorted(v for _, v in bad)
    assert committed_total(kafka_bootstrap, cfg.group_id, labels, PARTITIONS) == len(good) + len(bad)


def test_each_label_is_applied_once_across_a_restart_on_a_wiped_disk(kafka_bootstrap: str, make_topic,  # type: ignore[no-untyped-def]
                                                                      tmp_path: Path,
                                                                      trained_model: TrainedModel) -> None:
    cfg = _scored(kafka_bootstrap, make_topic, tmp_path, trained_model, label_window=100_000)
    clicks, scores, labels = cfg.input_topic, cfg.scores_topic, cfg.monitor.label_topic
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed == EVENTS, timeout=120)
        good = _labels(kafka_bootstrap, scores, invert=False)
        half = len(good) // 2
        produce_all(kafka_bootstrap, labels, good[:half])
        wait_for_stats(engine, lambda _s: _resolved(engine) == half, timeout=120)
    shutil.rmtree(cfg.state_dir)  # the next process restores everything from the changelog
    produce_all(kafka_bootstrap, labels, good[half:])
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda _s: committed_total(kafka_bootstrap, cfg.group_id, labels, PARTITIONS)
                       == len(good), timeout=120)
    states = _monitor_states(kafka_bootstrap, cfg.group_id, clicks, tmp_path)
    assert sum(pm.labels_resolved for pm in states.values()) == len(good)
    assert sum(len(pm.perf_labels) for pm in states.values()) == len(good)
