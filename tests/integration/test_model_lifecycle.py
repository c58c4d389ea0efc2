"""Model lifecycle against the real broker: hot swap and rollback mid-stream, refusal of
tampered/incompatible versions while the old one keeps scoring, shadow and canary records.

Each test works on its own copy of the session's registry (the trained champion), so promotions
here never leak into other tests. The extra versions are copies of the champion's ONNX registered
with new manifests (same bytes, new version numbers): no training, and equal scores across
variants, which lets the canary/shadow test check that every record's score belongs to its event.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from engine.serving import canary_bucket, variant_for
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from models.cli import model_app
from models.registry import Registry
from tests.integration.conftest import (
    PARTITIONS,
    TrainedModel,
    engine_config,
    produce_all,
    read_all,
    running_engine,
    wait_for_stats,
)

pytestmark = pytest.mark.integration
LIVE_START = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _live_events(n: int, seed: int, users: int = 300) -> list[dict[str, Any]]:
    cfg = GeneratorConfig(n_events=n, n_users=users, seed=seed, start=LIVE_START, jitter_ms=500.0)
    return list(ClickstreamGenerator(cfg).events())


def _kv(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def _own_registry(trained: TrainedModel, tmp_path: Path) -> tuple[TrainedModel, Registry]:
    root = tmp_path / "registry"
    shutil.copytree(trained.registry, root)
    return dataclasses.replace(trained, registry=root), Registry(root)


def _register_copy(reg: Registry, name: str, of: int, **manifest_changes: Any) -> int:
    """A new version with `of`'s ONNX graph and manifest (plus `manifest_changes`)."""
    ref = reg.resolve(name, of)
    manifest = ref.manifest.replace(version=None, sha256=None, parent_version=of, **manifest_changes)
    return reg.register(name, ref.model_path.read_bytes(), manifest, reason=f"copy of v{of}")


def _cli(*args: str) -> None:
    """`streamscore model ...` exactly as an operator types it."""
    result = CliRunner().invoke(model_app, list(args))
    assert result.exit_code == 0, result.output


def _scores_and_offsets(bootstrap: str, clicks: str, scores: str, n_in: int, n_out: int
                        ) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """Every committed score record (asserting there are exactly `n_out`), and event_id -> input
    (partition, offset). Call after the engine stopped."""
    msgs = read_all(bootstrap, scores, PARTITIONS)
    assert len(msgs) == n_out, f"{len(msgs)} committed score records, expected {n_out} (duplicates or gaps)"
    records = [orjson.loads(m.value()) for m in msgs]
    inputs = read_all(bootstrap, clicks, PARTITIONS)
    assert len(inputs) == n_in
    position = {orjson.loads(m.value())["event_id"]: (m.partition(), m.offset()) for m in inputs}
    return records, position


def _served(engine) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What the engine publishes on /healthz about its models."""
    return engine.metrics.health()[1]["models"]


def test_promote_and_rollback_mid_stream_switch_once_per_partition_without_gaps(
    kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path
) -> None:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    model, reg = _own_registry(trained_model, tmp_path)
    v1 = model.version
    v2 = _register_copy(reg, model.name, v1)
    events = _live_events(2_400, seed=31)
    chunks = [events[:1_000], events[1_000:1_800], events[1_800:]]  # v1 | promote v2 | roll back to v1
    root = str(model.registry)
    cfg = engine_config(tmp_path, model, clicks, scores, dlq, max_batch=100, model_poll_ms=0)

    with running_engine(cfg, kafka_bootstrap) as engine:
        produce_all(kafka_bootstrap, clicks, _kv(chunks[0]))
        wait_for_stats(engine, lambda s: s.consumed == 1_000)  # every batch of chunk 0 passed refresh()
        assert _served(engine)["champion"]["version"] == v1
        _cli("promote", model.name, str(v2), "--reason", "better AUC", "--registry", root)
        produce_all(kafka_bootstrap, clicks, _kv(chunks[1]))
        wait_for_stats(engine, lambda s: s.consumed == 1_800)
        assert _served(engine)["champion"]["version"] == v2
        _cli("rollback", model.name, "--reason", "v2 misbehaves", "--registry", root)
        produce_all(kafka_bootstrap, clicks, _kv(chunks[2]))
        wait_for_stats(engine, lambda s: s.consumed == 2_400)
        assert _served(engine)["champion"]["version"] == v1
    assert engine.stats.scored == len(events) and engine.stats.dlq_total == 0

    records, position = _scores_and_offsets(kafka_bootstrap, clicks, scores, len(events), len(events))
    by_id = {r["event_id"]: r for r in records}
    assert sorted(by_id) == sorted(e["event_id"] for e in events), "every event scored exactly once"
    # model_poll_ms=0: the first batch after an alias change is scored by the new version.
    for chunk, version in zip(chunks, (v1, v2, v1)):
        assert {by_id[e["event_id"]]["model"]["version"] for e in chunk} == {version}
    assert {r["variant"] for r in records} == {"champion"}
    # In input-offset order, each partition switches v1 -> v2 once and back once.
    per_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for eid, r in by_id.items():
        partition, offset = position[eid]
        per_partition[partition].append((offset, r["model"]["version"]))
    assert len(per_partition) == PARTITIONS
    for partition, seq in per_partition.items():
        versions = [v for _, v in sorted(seq)]
        runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
        assert runs == [v1, v2, v1], f"partition {partition}: {runs}"

    audit = [(e["action"], e.get("alias"), e["version"]) for e in reg.audit(model.name)]
    assert audit[-2:] == [("promote", "champion", v2), ("rollback", "champion", v1)]


def test_tampered_and_incompatible_models_are_refused_while_the_old_one_keeps_scoring(
    kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path
) -> None:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    model, reg = _own_registry(trained_model, tmp_path)
    v1 = model.version
    names = list(reg.resolve(model.name, v1).manifest.feature_names)
    tampered = _register_copy(reg, model.name, v1)
    path = reg.resolve(model.name, tampered).model_path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit flipped after registration
    path.write_bytes(bytes(raw))
    other_spec = _register_copy(reg, model.name, v1, feature_spec="fs-000000000000")
    other_names = _register_copy(reg, model.name, v1, feature_names=[*names[1:], names[0]])
    bad = [(tampered, "sha256_mismatch"), (other_spec, "feature_spec_mismatch"),
           (other_names, "feature_names_mismatch")]
    events = _live_events(1_600, seed=32)
    chunks = [events[i:i + 400] for i in range(0, 1_600, 400)]
    cfg = engine_config(tmp_path, model, clicks, scores, dlq, max_batch=100, model_poll_ms=0)

    with running_engine(cfg, kafka_bootstrap) as engine:
        produce_all(kafka_bootstrap, clicks, _kv(chunks[0]))
        done = 400
        wait_for_stats(engine, lambda s: s.consumed == 400)
        for i, (version, reason) in enumerate(bad, start=1):
            _cli("promote", model.name, str(version), "--reason", "should be refused", "--registry",
                 str(model.registry))
            produce_all(kafka_bootstrap, clicks, _kv(chunks[i]))
            done += len(chunks[i])
            wait_for_stats(engine, lambda s, n=done: s.consumed == n)
            champion = _served(engine)["champion"]
            assert champion["version"] == v1
            assert champion["refused"][-1] == {"alias": "champion", "version": version, "reason": reason}
            assert champion["refused_total"] == i
    assert engine.stats.scored == len(events)

    records, _ = _scores_and_offsets(kafka_bootstrap, clicks, scores, len(events), len(events))
    assert sorted(r["event_id"] for r in records) == sorted(e["event_id"] for e in events)
    assert {(r["model"]["version"], r["variant"]) for r in records} == {(v1, "champion")}


def test_shadow_and_canary_records_in_configured_proportions(
    kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path
) -> None:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    model, reg = _own_registry(trained_model, tmp_path)
    v1 = model.version
    challenger = _register_copy(reg, model.name, v1)
    canary = _register_copy(reg, model.name, v1)
    reg.promote(model.name, challenger, alias="challenger", reason="shadow")
    reg.promote(model.name, canary, alias="canary", reason="canary")
    share = 0.3
    events = _live_events(3_000, seed=33, users=1_000)
    cfg = engine_config(tmp_path, model, clicks, scores, dlq, canary_share=share)

    produce_all(kafka_bootstrap, clicks, _kv(events))
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed == len(events))
        served = _served(engine)
    assert {v: (served[v]["version"], served[v]["alias"]) for v in served} == {
        "champion": (v1, "champion"), "canary": (canary, "canary"), "challenger": (challenger, "challenger")}
    assert served["canary"]["share"] == share
    assert engine.stats.scored == len(events), "challenger records are not answers"

    n = len(events)
    records, _ = _scores_and_offsets(kafka_bootstrap, clicks, scores, n, 2 * n)
    answers = [r for r in records if r["variant"] != "challenger"]
    shadow = [r for r in records if r["variant"] == "challenger"]
    assert sorted(r["event_id"] for r in answers) == sorted(e["event_id"] for e in events)  # one answer each
    assert sorted(r["event_id"] for r in shadow) == sorted(e["event_id"] for e in events)  # one shadow each
    assert {r["model"]["version"] for r in shadow} == {challenger}
    for r in answers:  # routing is the entity's stable hash, nothing else
        expected = variant_for(r["entity"], share)
        assert r["variant"] == expected
        assert r["model"]["version"] == (canary if expected == "canary" else v1)
    # Same graph in every variant: the shadow score of an event equals its answer's score, so each
    # record carries its own event's score (no misaligned rows between variants).
    answer_score = {r["event_id"]: r["score"] for r in answers}
    assert all(answer_score[r["event_id"]] == r["score"] for r in shadow)

    entities = {e["user_id"] for e in events}
    in_canary = sum(canary_bucket(u) < share for u in entities)
    tolerance = 4 * math.sqrt(share * (1 - share) / len(entities))
    assert abs(in_canary / len(entities) - share) < tolerance, (in_canary, len(entities))
    canary_records = sum(r["variant"] == "canary" for r in answers)
    assert canary_records == sum(canary_bucket(e["user_id"]) < share for e in events)
    assert 0 < canary_records < n
