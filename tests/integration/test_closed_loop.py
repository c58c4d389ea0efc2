"""The whole loop on the real broker, with nobody in it: drift in the live stream -> the engine's
monitors publish a retraining trigger (in the batch's transaction) -> the retraining worker reads
the trigger's window back from the input topic, trains, gates and promotes -> the running engine
hot-swaps the new champion -> later score records carry the new version.

The champion (v1) was trained on the first half of a stream whose second half drifts twice: the
traffic mix moves to mobile (`mix_shift`: a feature drift the monitors see within a few windows)
and mobile checkouts stop converting (`conversion_collapse`: what makes a model retrained on the
new traffic clearly better than v1 on the same holdout)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from engine.config import EngineConfig, MonitorConfig
from engine.retrain_config import RetrainConfig
from engine.retrain_worker import RetrainWorker
from features.synthetic import ClickstreamGenerator, Drift, GeneratorConfig
from models.gate import PromotionGate
from models.registry import Registry
from models.retraining import RetrainPolicy
from models.trigger import RetrainTrigger
from tests.integration.conftest import read_all, running_engine, wait_for_stats
from tests.integration.test_retraining_loop import _produce
from tests.retrain_data import N_EVENTS, PARTITIONS, START, champion_registry

pytestmark = pytest.mark.integration

MONITOR = MonitorConfig(window_events=1_500, min_window_events=500, warmup_events=1_500, window_ms=30 * 86_400_000,
                        confirm_windows=2, calibration_draws=200, cooldown_ms=86_400_000,
                        training_window_ms=10 * 86_400_000)


def _stream() -> list[dict[str, Any]]:
    """`tests.retrain_data.drifted_events` plus a traffic-mix shift at the same point: the first half
    (the champion's training data) is byte-identical."""
    cfg = GeneratorConfig(n_events=N_EVENTS, n_users=400, seed=5, start=START, jitter_ms=1_000.0,
                          drifts=(Drift("conversion_collapse", 0.5, {"device": "mobile"}), Drift("mix_shift", 0.5)))
    return list(ClickstreamGenerator(cfg).events())


def test_drift_to_trigger_to_retrained_champion_served(kafka_bootstrap: str, make_topic, tmp_path,  # type: ignore[no-untyped-def]
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    registry: Registry = champion_registry(tmp_path / "registry", tmp_path_factory)
    topics = {name: make_topic(name, n) for name, n in
              (("clicks", PARTITIONS), ("scores", PARTITIONS), ("dlq", 1), ("triggers", 1), ("outcomes", 1))}
    cfg = EngineConfig(
        bootstrap_servers=kafka_bootstrap, group_id=f"g-{topics['clicks']}", input_topic=topics["clicks"],
        scores_topic=topics["scores"], dlq_topic=topics["dlq"], state_dir=tmp_path / "state",
        registry=registry.root, batch_wait_ms=20, model_poll_ms=0,
        monitor=dataclasses.replace(MONITOR, trigger_topic=topics["triggers"]),
        retrain=RetrainConfig(trigger_topic=topics["triggers"], outcome_topic=topics["outcomes"],
                              policy=RetrainPolicy(gate=PromotionGate(require_beat_baseline=False))),
    )
    events = _stream()
    end = max(e["ts"] for e in events)
    live = [dict(e, event_id=f"live-{i}", ts=e["ts"] + (end - events[0]["ts"]) + 3_600_000)
            for i, e in enumerate(events[-1_500:])]

    with running_engine(cfg, kafka_bootstrap) as engine:
        _produce(kafka_bootstrap, topics["clicks"], events)
        wait_for_stats(engine, lambda s: s.consumed == len(events), timeout=240)
        assert engine.metrics.health()[1]["models"]["champion"]["version"] == 1

        # 1. The monitors said so, with evidence, about v1.
        triggers = [RetrainTrigger.from_json(m.value()) for m in read_all(kafka_bootstrap, topics["triggers"], 1)]
        assert triggers, "the drifted stream published no retraining trigger"
        assert {t.model["version"] for t in triggers} == {1}
        assert "feature_drift" in {t.reason for t in triggers}, [t.reason for t in triggers]
        # Mobile conversions collapse and the traffic mix shifts: the device columns are among the
        # drifted evidence of the feature-drift triggers (a first trigger from a window that
        # straddles the change may rest on the 7-day features alone).
        feature = [t for t in triggers if t.reason == "feature_drift"]
        drifted = {e["name"] for t in feature for e in t.evidence if e["drifted"]}
        assert any("device" in name for name in drifted), [t.evidence[:5] for t in feature]

        # 2. The worker retrains from the input topic and promotes; later triggers about v1 are stale.
        stats = RetrainWorker(cfg, kafka_bootstrap).run(max_triggers=len(triggers), max_seconds=900)
        assert sum(stats.decisions.values()) == len(triggers), stats.as_dict()
        outcomes = [orjson.loads(m.value()) for m in
                    sorted(read_all(kafka_bootstrap, topics["outcomes"], 1), key=lambda m: m.offset())]
        # Each partition's monitor may report the drift; a trigger whose window still holds little
        # of the new traffic can yield a candidate the gate refuses (rejected, v1 keeps serving).
        # Once one is promoted, the remaining triggers about v1 are stale.
        promoted = [o for o in outcomes if o["decision"] == "promoted"]
        assert len(promoted) == 1, outcomes
        assert {o["decision"] for o in outcomes} <= {"promoted", "rejected", "stale", "duplicate"}, outcomes
        first = outcomes.index(promoted[0])
        assert all(o["decision"] in ("stale", "duplicate") for o in outcomes[first + 1:]), outcomes
        for o in outcomes[:first]:
            assert o["decision"] == "rejected" and "gate failed" in o["reason"], o
            assert registry.status("purchase", o["version"])[0] == "rejected"
        new = promoted[0]["version"]
        assert registry.resolve("purchase", "champion").version == new >= 2
        lineage = registry.resolve("purchase", new).manifest.lineage
        assert lineage["parent_version"] == 1 and lineage["trigger_id"] == promoted[0]["trigger_id"]

        # 3. The engine hot-swaps between batches: live events are scored by the new champion.
        _produce(kafka_bootstrap, topics["clicks"], live)
        wait_for_stats(engine, lambda s: s.consumed == len(events) + len(live), timeout=120)
        assert engine.metrics.health()[1]["models"]["champion"]["version"] == new

    live_ids = {e["event_id"] for e in live}
    served = {orjson.loads(m.value())["model"]["version"]
              for m in read_all(kafka_bootstrap, topics["scores"], PARTITIONS)
              if orjson.loads(m.value())["event_id"] in live_ids}
    assert served == {new}, served
