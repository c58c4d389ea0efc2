"""Drift monitors and retraining triggers against the real broker, RocksDB and ONNX Runtime.

* a stream drawn like the model's training data raises no trigger (windows are evaluated);
* the same stream with every price tripled publishes a feature-drift trigger, in the batch's
  transaction, with its evidence, keyed by its idempotency key;
* the monitors' state survives kill -9 and a partition moving to another process: afterwards the
  partition monitor has counted every committed scored event exactly once.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import orjson
import pytest

from features.synthetic import ClickstreamGenerator, Drift, GeneratorConfig
from engine.changelog import changelog_topic, restore
from engine.config import MonitorConfig, RocksDBConfig
from engine.monitors import MONITOR_KEY, PartitionMonitor
from engine.store import PartitionStore
from features.clickstream import clickstream_spec
from models.trigger import RetrainTrigger
from tests.integration.conftest import (
    HISTORY_START,
    PARTITIONS,
    TrainedModel,
    engine_config,
    produce_all,
    read_all,
    running_engine,
    wait_for_stats,
)
from tests.integration.engine_process import (
    CommittedOffsets,
    EngineProcesses,
    engine_yaml,
    wait_stable,
    wait_until,
)
from tests.unit.test_monitor_triggers import SCHEMA, schema_problems

pytestmark = pytest.mark.integration

MONITOR = MonitorConfig(window_events=1_500, min_window_events=500, warmup_events=1_500, window_ms=30 * 86_400_000,
                        confirm_windows=2, calibration_draws=200, cooldown_ms=86_400_000)


def _training_like(drifts: tuple[Drift, ...] = ()) -> list[tuple[bytes, bytes]]:
    """The trained model's own history generator (same seed and users), optionally drifted."""
    cfg = GeneratorConfig(n_events=20_000, n_users=400, seed=3, start=HISTORY_START, jitter_ms=1_000.0,
                          drifts=drifts)
    return list(ClickstreamGenerator(cfg).payloads())


def _run(kafka_bootstrap: str, make_topic, tmp_path: Path, model: TrainedModel,  # type: ignore[no-untyped-def]
         payloads: list[tuple[bytes, bytes]]) -> tuple[list[RetrainTrigger], list[bytes], dict[str, float]]:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq")
    triggers = make_topic("triggers")
    cfg = engine_config(tmp_path, model, clicks, scores, dlq,
                        monitor=dataclasses.replace(MONITOR, trigger_topic=triggers))
    produce_all(kafka_bootstrap, clicks, payloads)
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed == len(payloads), timeout=120)
        registry = engine.metrics.registry
    evaluated = {name: registry.get_sample_value("streamscore_drift_statistic",
                                                 {"partition": str(p), "column": name, "statistic": "psi"}) or 0.0
                 for p in range(PARTITIONS) for name in ("price", "score")}
    records = read_all(kafka_bootstrap, triggers, 1)
    assert all(m.key() == orjson.loads(m.value())["idempotency_key"].encode() for m in records)
    return [RetrainTrigger.from_json(m.value()) for m in records], [m.value() for m in records], evaluated


def test_stable_stream_publishes_no_trigger(kafka_bootstrap: str, make_topic, tmp_path: Path,  # type: ignore[no-untyped-def]
                                            trained_model: TrainedModel) -> None:
    triggers, _, evaluated = _run(kafka_bootstrap, make_topic, tmp_path, trained_model, _training_like())
    assert any(v > 0 for v in evaluated.values()), "no window was evaluated"
    assert triggers == [], [t.to_dict() for t in triggers]


def test_price_drift_publishes_a_feature_drift_trigger_with_evidence(kafka_bootstrap: str, make_topic,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path,
                                                                     trained_model: TrainedModel) -> None:
    drifted = _training_like((Drift("price_shift", 0, {"factor": 3.0}),))
    triggers, raw, _ = _run(kafka_bootstrap, make_topic, tmp_path, trained_model, drifted)
    feature = [t for t in triggers if t.reason == "feature_drift"]
    assert feature, [t.reason for t in triggers]
    t = feature[0]
    assert t.model == {"name": trained_model.name, "version": trained_model.version}
    assert t.feature_spec == clickstream_spec().hash
    assert t.idempotency_key.startswith(f"{trained_model.name}/v{trained_model.version}/feature_drift/")
    assert t.current["n"] >= MONITOR.window_events and t.current["windows_confirmed"] == MONITOR.confirm_windows
    decisive = t.evidence[0]
    assert "price" in decisive["name"] and decisive["value"] > decisive["threshold"] >= MONITOR.psi_floor
    assert t.statistic == decisive["value"] and t.threshold == decisive["threshold"]
    assert t.window[1] == t.current["end_ms"] and t.window[0] == t.current["end_ms"] - MONITOR.training_window_ms
    assert t.source["partition"] in range(PARTITIONS)
    for record in raw:
        assert schema_problems(orjson.loads(record), SCHEMA) == []


def _monitor_states(bootstrap: str, group: str, clicks: str, root: Path) -> dict[int, PartitionMonitor]:
    """Each partition's committed monitor state, restored from its changelog into a fresh store."""
    topic = changelog_topic(group, clicks, clickstream_spec().hash)
    out = {}
    for p in range(PARTITIONS):
        store = PartitionStore(root / f"check-{p}", RocksDBConfig())
        try:
            restore(bootstrap, topic, p, store)
            out[p] = PartitionMonitor.decode(store.get(MONITOR_KEY))
        finally:
            store.close()
    return out


@pytest.mark.parametrize("scenario", ["kill-9-restart", "takeover"])
def test_monitor_state_survives_kill_9_and_takeover(kafka_bootstrap: str, make_topic, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    trained_model: TrainedModel, scenario: str) -> None:
    """Windows never close here (count and time limits out of reach), so a partition monitor's
    `seen` and `n` count every scored event since the start. After a kill -9 mid-stream and a
    restart (or a takeover by another process with its own disk) they must equal the committed
    champion score records of the partition: the counts continued instead of restarting."""
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq")
    triggers = make_topic("triggers")
    group = f"g-{clicks}"
    payloads = _training_like()
    n = len(payloads)
    monitor = {"window_events": 1_000_000, "min_window_events": 1_000, "window_ms": 365 * 86_400_000,
               "warmup_events": 0, "trigger_topic": triggers}

    def config(instance: str) -> Path:
        return engine_yaml(tmp_path / instance / "engine.yaml", dict(
            bootstrap_servers=kafka_bootstrap, group_id=group, input_topic=clicks, scores_topic=scores,
            dlq_topic=dlq, state_dir=tmp_path / instance / "state", instance_id=instance,
            registry=trained_model.registry, model_name=trained_model.name, session_timeout_ms=6_000,
            max_batch=200, monitor=monitor))

    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, group, clicks, PARTITIONS) as committed:
        a = procs.start(config("a"), "a")
        wait_until(lambda: a.assigned_now(), 60, "a's first assignment", procs.logs)
        b = None
        if scenario == "takeover":
            b = procs.start(config("b"), "b")
            wait_until(lambda: a.assigned_now() and b.assigned_now(), 60, "both to hold partitions", procs.logs)
        produce_all(kafka_bootstrap, clicks, payloads)
        wait_until(lambda: committed.total() >= 0.3 * n, 90, "progress before the kill", procs.logs)
        a.kill()
        assert committed.total() < n, "a had finished before the kill"
        survivor = procs.start(config("a"), "a2") if b is None else b
        wait_until(lambda: committed.total() == n, 120, "all input committed", procs.logs, poll=0.1)
        survivor.terminate()
    wait_stable(kafka_bootstrap, {scores: PARTITIONS})
    per_partition = Counter(m.partition() for m in read_all(kafka_bootstrap, scores, PARTITIONS)
                            if orjson.loads(m.value())["variant"] == "champion")
    states = _monitor_states(kafka_bootstrap, group, clicks, tmp_path)
    for p, pm in states.items():
        assert pm.model == {"name": trained_model.name, "version": trained_model.version}
        assert pm.seen == pm.n == per_partition[p], (p, pm.seen, per_partition[p])
        assert int(pm.counts.sum(axis=1)[0]) == pm.n
    assert sum(pm.labels_resolved for pm in states.values()) > 0
