"""The retraining procedure on generated data: promotion, rejection, lineage, dedupe, resume after a
crash, bad triggers, empty and too-small windows, failed training runs (no Kafka here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models.retraining as retraining
from engine.config import EngineConfig
from engine.retrain_config import RetrainConfig
from engine.retrain_worker import run_trigger
from features.clickstream import clickstream_spec
from models.gate import PromotionGate
from models.registry import REJECTED, Registry, RejectedVersion
from models.retraining import History, RetrainError, RetrainPolicy, min_warmup_ms, retrain, version_for_key
from tests.retrain_data import PARTITIONS, champion_registry, drifted_events, post_drift_window, window_trigger

SPEC = clickstream_spec()
LENIENT = RetrainPolicy(gate=PromotionGate(require_beat_baseline=False))


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return drifted_events()


@pytest.fixture
def reg(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return champion_registry(tmp_path / "registry", tmp_path_factory)


def _loader(events: list[dict[str, Any]], calls: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    def load(from_ms: int, to_ms: int) -> History:
        if calls is not None:
            calls.append((from_ms, to_ms))
        return History(events=[dict(e) for e in events], num_partitions=PARTITIONS, source={"kind": "test"})
    return load


def test_a_better_candidate_is_promoted_with_its_lineage(reg: Registry, events) -> None:  # type: ignore[no-untyped-def]
    window = post_drift_window(events)
    trigger = window_trigger(window, key="drift-1")
    calls: list[tuple[int, int]] = []
    lines: list[str] = []
    out = retrain(trigger, _loader(events, calls), SPEC, reg, LENIENT, log=lines.append)

    assert out.decision == "promoted", out.reason
    assert out.version == 2 and out.champion_before == 1 and out.champion_after == 2
    assert reg.resolve("purchase", "champion").version == 2
    assert calls == [(None, window[1])], "by default all retained history is replayed"
    m = out.metrics
    assert m["candidate"]["n"] == m["champion"]["n"] > 0, "candidate and champion are scored on the same rows"
    assert m["candidate"]["auc"] > m["champion"]["auc"] + 0.05
    lineage = reg.resolve("purchase", 2).manifest.lineage
    assert lineage["parent_version"] == 1 and lineage["trigger_id"] == trigger.trigger_id
    assert lineage["idempotency_key"] == "drift-1" and lineage["trigger_reason"] == "performance"
    assert lineage["data_window"] == {"start_ms": window[0], "end_ms": window[1]}
    assert lineage["feature_spec"] == SPEC.hash and lineage["source"] == {"kind": "test"}
    training = reg.resolve("purchase", 2).manifest.training
    assert training.data_start_ms >= window[0] and training.data_end_ms <= window[1]
    last = reg.audit("purchase")[-1]
    assert (last["action"], last["version"], last["actor"]) == ("promote", 2, "retrain-worker")
    assert any("[retrain] promoted" in line for line in lines)


def test_a_candidate_failing_the_gate_is_registered_as_rejected_and_the_champion_stays(
    reg: Registry, events
) -> None:  # type: ignore[no-untyped-def]
    strict = RetrainPolicy(gate=PromotionGate(max_ece=0.0, require_beat_baseline=False))
    out = retrain(window_trigger(post_drift_window(events)), _loader(events), SPEC, reg, strict, log=None)

    assert out.decision == "rejected" and "ECE" in out.reason, out.reason
    assert reg.resolve("purchase", "champion").version == 1
    assert reg.status("purchase", out.version) == (REJECTED, out.reason)
    row = {v.version: v for v in reg.list("purchase")}[out.version]
    assert row.status == REJECTED and row.status_reason == out.reason
    with pytest.raises(RejectedVersion):
        reg.promote("purchase", out.version)
    reg.promote("purchase", out.version, allow_rejected=True, reason="operator overrides the gate")
    assert reg.resolve("purchase", "champion").version == out.version


def test_the_same_idempotency_key_trains_once(reg: Registry, events) -> None:  # type: ignore[no-untyped-def]
    window = post_drift_window(events)
    first = retrain(window_trigger(window, key="same"), _loader(events), SPEC, reg, LENIENT, log=None)
    calls: list[tuple[int, int]] = []
    again = retrain(window_trigger(window, key="same"), _loader(events, calls), SPEC, reg, LENIENT, log=None)
    assert first.decision == "promoted"
    assert again.decision == "duplicate" and again.version == first.version and calls == []
    assert reg.versions("purchase") == [1, 2]
    assert version_for_key(reg, "purchase", "same") == 2 and version_for_key(reg, "purchase", "other") is None


def test_a_version_left_undecided_by_a_crash_is_decided_on_the_repeat(
    reg: Registry, events, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    window = post_drift_window(events)
    real = retraining._decide

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("killed between registration and decision")

    monkeypatch.setattr(retraining, "_decide", crash)
    with pytest.raises(KeyboardInterrupt):
        retrain(window_trigger(window, key="crash"), _loader(events), SPEC, reg, LENIENT, log=None)
    assert reg.versions("purchase") == [1, 2] and reg.resolve("purchase", "champion").version == 1
    monkeypatch.setattr(retraining, "_decide", real)
    calls: list[tuple[int, int]] = []
    out = retrain(window_trigger(window, key="crash"), _loader(events, calls), SPEC, reg, LENIENT, log=None)
    assert out.decision == "promoted" and out.version == 2 and calls == [], "decided from the recorded metrics"
    assert reg.resolve("purchase", "champion").version == 2 and reg.versions("purchase") == [1, 2]


def test_a_champion_changed_during_the_run_is_not_overwritten(
    reg: Registry, events, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    ref = reg.resolve("purchase", 1)
    other = reg.register("purchase", ref.model_path.read_bytes(), ref.manifest.replace(version=None, sha256=None),
                         reason="copy")
    real = retraining.train_and_register

    def train_then_a_human_promotes(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)  # evaluated against v1
        reg.promote("purchase", other, reason="a human promoted another version meanwhile")
        return result

    monkeypatch.setattr(retraining, "train_and_register", train_then_a_human_promotes)
    out = retrain(window_trigger(post_drift_window(events)), _loader(events), SPEC, reg, LENIENT, log=None)
    assert out.decision == "rejected" and "champion changed" in out.reason, out.reason
    assert reg.resolve("purchase", "champion").version == other


@pytest.mark.parametrize("window_hours", [0.5, 3.0])
def test_a_too_small_window_registers_nothing(reg: Registry, events, window_hours: float) -> None:  # type: ignore[no-untyped-def]
    end = post_drift_window(events)[1]
    trigger = window_trigger((end - int(window_hours * 3_600_000), end))
    with pytest.raises(RetrainError, match="too small"):
        retrain(trigger, _loader(events), SPEC, reg, LENIENT, log=None)
    assert reg.versions("purchase") == [1] and reg.resolve("purchase", "champion").version == 1


def test_an_empty_history_or_a_foreign_spec_is_an_error(reg: Registry, events) -> None:  # type: ignore[no-untyped-def]
    trigger = window_trigger(post_drift_window(events))
    with pytest.raises(RetrainError, match="no valid events"):
        retrain(trigger, _loader([]), SPEC, reg, LENIENT, log=None)
    with pytest.raises(RetrainError, match="feature spec fs-0000"):
        retrain(window_trigger(post_drift_window(events), spec_hash="fs-0000000000000000"), _loader(events), SPEC,
                reg, LENIENT, log=None)
    assert reg.versions("purchase") == [1]


def test_the_worker_turns_every_failure_into_an_outcome(
    reg: Registry, events, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cfg = EngineConfig(registry=reg.root, retrain=RetrainConfig(policy=LENIENT))
    load = _loader(events)

    def outcome(raw: bytes | None) -> Any:
        return run_trigger(raw, cfg, reg, load, progress=None)

    for raw in (b"{not json", b"[1, 2]", b'{"reason": "feature_drift"}', None,
                window_trigger(post_drift_window(events)).to_json().replace(b'"performance"', b'"astrology"')):
        out = outcome(raw)
        assert out.decision == "failed" and out.reason.startswith("bad trigger record"), out.reason
    end = post_drift_window(events)[1]
    small = outcome(window_trigger((end - 1_800_000, end), key="small").to_json())
    assert small.decision == "failed" and "too small" in small.reason and small.idempotency_key == "small"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("LightGBM ran out of memory")

    monkeypatch.setattr(retraining, "train_and_register", broken)
    failed = outcome(window_trigger(post_drift_window(events), key="broken").to_json())
    assert failed.decision == "failed" and "out of memory" in failed.reason
    assert reg.versions("purchase") == [1] and reg.resolve("purchase", "champion").version == 1
    record = failed.to_record()
    assert record["schema_version"] == 1 and record["trigger_id"] and record["window"]["end_ms"] > 0


def test_schedule_trigger_covers_the_last_days() -> None:
    t = retraining.schedule_trigger("purchase", SPEC.hash, end_ms=10 * 86_400_000, window_ms=3 * 86_400_000)
    assert t.reason == "schedule" and t.window == (7 * 86_400_000, 10 * 86_400_000)
    again = retraining.schedule_trigger("purchase", SPEC.hash, end_ms=10 * 86_400_000, window_ms=3 * 86_400_000)
    assert again.idempotency_key == t.idempotency_key and again.trigger_id != t.trigger_id


def test_a_warmup_duration_is_asked_for_and_must_cover_the_spec(reg: Registry, events) -> None:  # type: ignore[no-untyped-def]
    assert min_warmup_ms(SPEC) == max(max(w.size_ms for w in SPEC.windows), SPEC.idle_ttl_ms) == 7 * 86_400_000
    window = post_drift_window(events)
    calls: list[tuple[int, int]] = []
    policy = RetrainPolicy(gate=PromotionGate(max_ece=0.0), warmup_ms=min_warmup_ms(SPEC))
    out = retrain(window_trigger(window), _loader(events, calls), SPEC, reg, policy, log=None)
    assert calls == [(window[0] - min_warmup_ms(SPEC), window[1])] and out.decision == "rejected"
    assert reg.resolve("purchase", out.version).manifest.lineage["warmup_ms"] == min_warmup_ms(SPEC)
    with pytest.raises(RetrainError, match="shorter than the feature spec"):
        retrain(window_trigger(window, key="short"), _loader(events), SPEC, reg,
                RetrainPolicy(warmup_ms=86_400_000), log=None)


def test_the_served_alias_is_the_one_compared_and_taken_over(reg: Registry, events) -> None:  # type: ignore[no-untyped-def]
    reg.promote("purchase", 1, alias="live", reason="engines serve model_alias=live")
    out = retrain(window_trigger(post_drift_window(events)), _loader(events), SPEC, reg, LENIENT, alias="live",
                  log=None)
    assert out.decision == "promoted" and out.champion_before == 1
    assert reg.aliases("purchase") == {"champion": 1, "live": out.version}
    assert reg.resolve("purchase", out.version).manifest.metrics["champion"]["alias"] == "live"


def test_a_trigger_about_a_replaced_version_is_stale(reg: Registry, events) -> None:  # type: ignore[no-untyped-def]
    """Each partition's monitor may report the same drift of v1; once the first trigger's run
    replaced v1, the others train nothing."""
    window = post_drift_window(events)
    first = retrain(window_trigger(window, key="p0"), _loader(events), SPEC, reg, LENIENT, log=None)
    calls: list[tuple[int, int]] = []
    second = retrain(window_trigger(window, key="p1", version=1), _loader(events, calls), SPEC, reg, LENIENT,
                     log=None)
    assert first.decision == "promoted" and first.version == 2
    assert second.decision == "stale" and "about v1, but champion is v2" in second.reason and calls == []
    assert second.champion_after == 2 and reg.versions("purchase") == [1, 2]
    fresh = retrain(window_trigger(window, key="p2", version=None), _loader(events), SPEC, reg, LENIENT, log=None)
    assert fresh.decision != "stale", "a trigger naming no version (a schedule) is not stale"
