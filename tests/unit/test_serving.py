"""ModelRouter against a real (temporary) registry, no Kafka: hot swap, refusals, rollback,
shadow (challenger), canary routing, and what `describe()` reports."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from engine.config import ConfigError, EngineConfig
from engine.serving import (
    CANARY_HASH_KEY,
    ModelRouter,
    ModelUnavailable,
    ServingModel,
    canary_bucket,
    load_serving_model,
    served_version,
    variant_for,
)
from features.clickstream import clickstream_spec
from models.registry import Registry
from models.scorer import OnnxScorer
from models.testing import make_manifest, small_model_bytes, synthetic_dataset

SPEC = clickstream_spec()
NAME = "purchase"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    X, y, _, _ = synthetic_dataset(n=2_000, d=SPEC.width, seed=7)
    return X, y


@pytest.fixture(scope="module")
def model_bytes(data) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Two models with the engine's input width that score differently."""
    X, y = data
    return {
        "logreg": small_model_bytes(X[:1_500], y[:1_500], SPEC.names, kind="logreg"),
        "lightgbm": small_model_bytes(X, y, SPEC.names, kind="lightgbm", n_estimators=15, num_leaves=7),
    }


def _register(reg: Registry, onnx: bytes, **manifest_overrides: object) -> int:
    fields: dict[str, object] = {"feature_spec": SPEC.hash}
    fields.update(manifest_overrides)
    names = fields.pop("feature_names", SPEC.names)
    return reg.register(NAME, onnx, make_manifest(names, **fields), reason="test")  # type: ignore[arg-type]


@pytest.fixture()
def reg(tmp_path: Path, model_bytes: dict[str, bytes]) -> Registry:
    """A registry with v1 (logreg) as champion and v2 (lightgbm) registered, not promoted."""
    r = Registry(tmp_path / "registry")
    assert _register(r, model_bytes["logreg"]) == 1
    assert _register(r, model_bytes["lightgbm"], model_kind="lightgbm") == 2
    r.promote(NAME, 1, reason="first champion")
    return r


def _cfg(reg: Registry, **kw: object) -> EngineConfig:
    kw.setdefault("model_poll_ms", 0)
    return EngineConfig(registry=reg.root, model_name=NAME, **kw)  # type: ignore[arg-type]


def _rows(data, n: int = 64) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.ascontiguousarray(data[0][:n], dtype=np.float32)


def _direct(reg: Registry, version: int, rows: np.ndarray) -> np.ndarray:
    return OnnxScorer.load(reg.resolve(NAME, version), SPEC.hash, SPEC.names).predict(rows)


def _tamper(reg: Registry, version: int) -> tuple[Path, bytes]:
    path = reg.resolve(NAME, version).model_path
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path, original


# ------------------------------------------------------------------------------------ hot swap


def test_promote_swaps_between_batches(reg: Registry, data) -> None:  # type: ignore[no-untyped-def]
    router = ModelRouter(_cfg(reg))
    rows = _rows(data)
    ents = [f"u{i}" for i in range(len(rows))]
    (before,) = router.score(ents, rows)
    assert (before.variant, before.model, before.index) == ("champion", {"name": NAME, "version": 1}, None)
    assert np.array_equal(before.scores, _direct(reg, 1, rows))

    assert router.refresh() is False  # nothing changed
    reg.promote(NAME, 2, reason="better")
    router.score(ents, rows)  # no refresh inside a batch: still v1 until refresh()
    assert router.champion.version == 1
    assert router.refresh() is True
    (after,) = router.score(ents, rows)
    assert after.model == {"name": NAME, "version": 2} and router.champion.version == 2
    assert np.array_equal(after.scores, _direct(reg, 2, rows))
    assert not np.allclose(after.scores, before.scores)
    assert router.refresh() is False and router.swaps == 1


def test_refresh_polls_the_registry_at_most_every_model_poll_ms(reg: Registry) -> None:
    clock = Clock()
    router = ModelRouter(_cfg(reg, model_poll_ms=1_000), clock=clock)
    reads = []
    real = router.registry.aliases
    router.registry.aliases = lambda name: reads.append(name) or real(name)  # type: ignore[method-assign]
    reg.promote(NAME, 2, reason="x")
    clock.t += 0.5
    assert router.refresh() is False and router.champion.version == 1  # not due yet
    clock.t += 0.5
    assert router.refresh() is True and router.champion.version == 2
    assert reads == [NAME]
    for _ in range(3):  # due again, but aliases.json did not change: a stat, no read
        clock.t += 1.0
        assert router.refresh() is False
    assert reads == [NAME]


def test_rollback_is_picked_up_without_reloading(reg: Registry) -> None:
    router = ModelRouter(_cfg(reg))
    first = router.champion
    reg.promote(NAME, 2, reason="x")
    assert router.refresh() and router.champion.version == 2
    reg.rollback(NAME, reason="v2 misbehaves")
    assert router.refresh() and router.champion.version == 1
    assert router.champion is first  # the retired, already verified v1: the swap is instant


def test_cli_rollback_is_picked_up(reg: Registry) -> None:
    from typer.testing import CliRunner

    from models.cli import model_app

    router = ModelRouter(_cfg(reg))
    reg.promote(NAME, 2, reason="x")
    assert router.refresh() and router.champion.version == 2
    result = CliRunner().invoke(model_app, ["rollback", NAME, "--reason", "bad", "--registry", str(reg.root)])
    assert result.exit_code == 0, result.output
    assert router.refresh() and router.champion.version == 1


def test_demoted_champion_keeps_serving_the_last_version(reg: Registry, caplog: pytest.LogCaptureFixture) -> None:
    router = ModelRouter(_cfg(reg))
    reg.demote(NAME, alias="champion", reason="oops")
    with caplog.at_level(logging.WARNING, "streamscore.serving"):
        assert router.refresh() is False
        reg.promote(NAME, 2, alias="other", reason="touch aliases.json")
        router.refresh()
    assert router.champion.version == 1
    assert sum("points at nothing" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------------------------ refusals


def test_tampered_version_is_refused_once_and_old_kept(reg: Registry, data,  # type: ignore[no-untyped-def]
                                                       caplog: pytest.LogCaptureFixture) -> None:
    router = ModelRouter(_cfg(reg))
    path, original = _tamper(reg, 2)
    reg.promote(NAME, 2, reason="tampered after registration")
    with caplog.at_level(logging.WARNING, "streamscore.serving"):
        assert router.refresh() is True  # describe() changed: a refusal to publish
        assert router.champion.version == 1
        reg.promote(NAME, 1, alias="other", reason="touch aliases.json")
        assert router.refresh() is False  # same version, same bytes: not retried, not logged again
    warnings = [r.message for r in caplog.records if "REFUSED" in r.message]
    assert len(warnings) == 1 and "sha256 mismatch" in warnings[0] and "keeping v1" in warnings[0]
    assert router.describe()["champion"]["refused"] == [{"alias": "champion", "version": 2, "reason": "sha256_mismatch"}]
    assert router.refused_total == 1 and "restore the file" in router.refused[0]["detail"]
    (vs,) = router.score(["u1"], _rows(data, 1))
    assert vs.model["version"] == 1

    path.write_bytes(original)  # restored from backup: verified again and served
    assert router.refresh() is True and router.champion.version == 2


@pytest.mark.parametrize(
    ("overrides", "reason", "needle"),
    [
        ({"feature_spec": "fs-0123456789ab"}, "feature_spec_mismatch", "feature_spec mismatch"),
        ({"feature_names": [*SPEC.names[1:], SPEC.names[0]]}, "feature_names_mismatch", "feature order differs"),
        ({"feature_names": [*SPEC.names[:-1], "not_a_feature"]}, "feature_names_mismatch", "not_a_feature"),
    ],
)
def test_incompatible_versions_are_refused(reg: Registry, model_bytes: dict[str, bytes], overrides: dict,
                                           reason: str, needle: str) -> None:
    router = ModelRouter(_cfg(reg))
    bad = _register(reg, model_bytes["logreg"], **overrides)
    reg.promote(NAME, bad, reason="incompatible")
    assert router.refresh() is True and router.champion.version == 1
    (refusal,) = router.refused
    assert (refusal["version"], refusal["reason"]) == (bad, reason) and needle in refusal["detail"]
    reg.promote(NAME, 2, reason="a good one")  # the next good version is served
    assert router.refresh() is True and router.champion.version == 2


def test_start_refuses_an_unservable_champion(reg: Registry, tmp_path: Path) -> None:
    _tamper(reg, 1)
    with pytest.raises(ModelUnavailable, match=r"refusing purchase v1 \(champion\).*sha256 mismatch.*rollback"):
        ModelRouter(_cfg(reg))
    with pytest.raises(ModelUnavailable, match="no model 'purchase' with alias 'champion'"):
        load_serving_model(_cfg(Registry(tmp_path / "empty")))


def test_refused_challenger_does_not_block_start(reg: Registry, model_bytes: dict[str, bytes]) -> None:
    other = _register(reg, model_bytes["logreg"], feature_spec="fs-0123456789ab")
    reg.promote(NAME, other, alias="challenger", reason="other spec")
    router = ModelRouter(_cfg(reg))
    assert router.challenger is None and set(router.describe()) == {"champion"}
    assert router.refused[0]["alias"] == "challenger" and router.refused[0]["reason"] == "feature_spec_mismatch"


# ------------------------------------------------------------------------------------ shadow


def test_challenger_scores_every_row_and_never_answers(reg: Registry, data) -> None:  # type: ignore[no-untyped-def]
    router = ModelRouter(_cfg(reg))
    rows = _rows(data, 100)
    ents = [f"u{i}" for i in range(100)]
    reg.promote(NAME, 2, alias="challenger", reason="shadow it")
    assert router.refresh() is True
    champ, shadow = router.score(ents, rows)
    assert (champ.variant, champ.index, champ.model["version"]) == ("champion", None, 1)
    assert (shadow.variant, shadow.index, shadow.model["version"]) == ("challenger", None, 2)
    assert np.array_equal(shadow.scores, _direct(reg, 2, rows)) and np.array_equal(champ.scores, _direct(reg, 1, rows))

    reg.demote(NAME, alias="challenger", reason="done")
    assert router.refresh() is True and router.challenger is None
    assert [v.variant for v in router.score(ents, rows)] == ["champion"]


def test_shadow_off_ignores_the_challenger(reg: Registry, data) -> None:  # type: ignore[no-untyped-def]
    reg.promote(NAME, 2, alias="challenger", reason="x")
    router = ModelRouter(_cfg(reg, shadow=False))
    assert router.challenger is None
    assert [v.variant for v in router.score(["a", "b"], _rows(data, 2))] == ["champion"]


def test_promoting_the_challenger_reuses_its_loaded_model(reg: Registry) -> None:
    reg.promote(NAME, 2, alias="challenger", reason="x")
    router = ModelRouter(_cfg(reg))
    shadow = router.challenger
    reg.promote(NAME, 2, reason="challenger won")
    assert router.refresh() is True and router.champion is shadow


# ------------------------------------------------------------------------------------ canary


def test_canary_bucket_is_keyed_blake2b_and_uniform() -> None:
    e = "user-42"
    expected = int.from_bytes(hashlib.blake2b(e.encode(), digest_size=8, key=CANARY_HASH_KEY).digest(), "big") / 2**64
    assert canary_bucket(e) == expected
    buckets = np.array([canary_bucket(f"user-{i}") for i in range(20_000)])
    assert buckets.min() >= 0.0 and buckets.max() < 1.0
    counts, _ = np.histogram(buckets, bins=10, range=(0, 1))
    assert counts.min() > 1_800 and counts.max() < 2_200  # ~2000 ± 4.5 sigma


def test_canary_routes_a_stable_share_of_entities(reg: Registry, data) -> None:  # type: ignore[no-untyped-def]
    reg.promote(NAME, 2, alias="canary", reason="canary 10 %")
    share, n = 0.1, 20_000
    router = ModelRouter(_cfg(reg, canary_share=share))
    ents = [f"user-{i:06d}" for i in range(n)]
    mask = router.canary_mask(ents)
    tolerance = 4 * math.sqrt(share * (1 - share) / n)
    assert abs(mask.mean() - share) < tolerance
    assert np.array_equal(router.canary_mask(ents), mask)  # stable across calls (cache or not)
    assert np.array_equal(ModelRouter(_cfg(reg, canary_share=share)).canary_mask(ents), mask)  # and processes
    assert np.array_equal(mask, np.array([variant_for(e, share) == "canary" for e in ents]))
    wider = ModelRouter(_cfg(reg, canary_share=0.2)).canary_mask(ents)
    assert np.all(wider[mask]) and abs(wider.mean() - 0.2) < 4 * math.sqrt(0.16 / n)  # raising only adds

    rows = np.ascontiguousarray(np.resize(data[0], (n, SPEC.width)), dtype=np.float32)
    out = router.score(ents, rows)
    assert [v.variant for v in out] == ["champion", "canary"]
    champ, canary = out
    assert np.array_equal(canary.index, np.flatnonzero(mask)) and np.array_equal(champ.index, np.flatnonzero(~mask))
    assert canary.model["version"] == 2 and champ.model["version"] == 1
    assert np.array_equal(canary.scores, _direct(reg, 2, rows[mask]))
    assert np.array_equal(champ.scores, _direct(reg, 1, rows[~mask]))


def test_canary_needs_a_share_and_an_alias(reg: Registry, data) -> None:  # type: ignore[no-untyped-def]
    ents = [f"user-{i}" for i in range(500)]
    rows = np.ascontiguousarray(np.resize(data[0], (500, SPEC.width)), dtype=np.float32)
    reg.promote(NAME, 2, alias="canary", reason="x")
    assert ModelRouter(_cfg(reg)).canary is None  # default share 0.0: alias alone does nothing
    reg.demote(NAME, alias="canary", reason="x")
    router = ModelRouter(_cfg(reg, canary_share=0.5))
    assert [v.variant for v in router.score(ents, rows)] == ["champion"]
    reg.promote(NAME, 2, alias="canary", reason="start the canary")
    assert router.refresh() is True
    assert [v.variant for v in router.score(ents, rows)] == ["champion", "canary"]
    only_canary = [e for e in ents if canary_bucket(e) < 0.5]
    assert [v.variant for v in router.score(only_canary, rows[: len(only_canary)])] == ["canary"]


def test_every_row_gets_exactly_one_answer(reg: Registry, data) -> None:  # type: ignore[no-untyped-def]
    reg.promote(NAME, 2, alias="canary", reason="x")
    reg.promote(NAME, 2, alias="challenger", reason="x")
    router = ModelRouter(_cfg(reg, canary_share=0.3))
    ents = [f"user-{i}" for i in range(1_000)]
    rows = np.ascontiguousarray(np.resize(data[0], (1_000, SPEC.width)), dtype=np.float32)
    out = router.score(ents, rows)
    answers = np.concatenate([v.index for v in out if v.variant != "challenger"])
    assert sorted(answers.tolist()) == list(range(1_000))
    (shadow,) = [v for v in out if v.variant == "challenger"]
    assert shadow.index is None and len(shadow.scores) == 1_000


# ------------------------------------------------------------------------------------ describe, audit


def test_describe_lists_every_serving_variant(reg: Registry, model_bytes: dict[str, bytes]) -> None:
    reg.promote(NAME, 2, alias="challenger", reason="x")
    reg.promote(NAME, 2, alias="canary", reason="x")
    router = ModelRouter(_cfg(reg, canary_share=0.05))
    bad = _register(reg, model_bytes["logreg"], feature_spec="fs-0123456789ab")
    reg.promote(NAME, bad, reason="x")
    router.refresh()
    d = router.describe()
    assert list(d) == ["champion", "canary", "challenger"]
    assert {k: d["champion"][k] for k in ("name", "version", "alias", "refused_total")} == {
        "name": NAME, "version": 1, "alias": "champion", "refused_total": 1}
    assert d["champion"]["refused"] == [{"alias": "champion", "version": bad, "reason": "feature_spec_mismatch"}]
    assert {k: d["canary"][k] for k in ("name", "version", "alias", "share")} == {
        "name": NAME, "version": 2, "alias": "canary", "share": 0.05}
    assert d["challenger"]["version"] == 2 and d["challenger"]["alias"] == "challenger"
    assert all(isinstance(e["load_ms"], float) and e["load_ms"] >= 0 for e in d.values())
    for variant, entry in d.items():  # what the runner publishes as gauges
        assert isinstance(entry["name"], str) and isinstance(entry["version"], int), variant


def test_served_version_answers_the_audit_question(tmp_path: Path, model_bytes: dict[str, bytes]) -> None:
    now = [1_767_225_600.0]
    r = Registry(tmp_path / "registry", clock=lambda: now[0])
    for _ in range(3):
        _register(r, model_bytes["logreg"])
    r.promote(NAME, 1, reason="x")            # t0
    now[0] += 60
    r.promote(NAME, 3, alias="canary", reason="x")  # t0 + 60 s
    now[0] += 60
    r.promote(NAME, 2, reason="x")            # t0 + 120 s
    t0 = 1_767_225_600_000
    share = 0.25
    inside = next(f"user-{i}" for i in range(1000) if canary_bucket(f"user-{i}") < share)
    outside = next(f"user-{i}" for i in range(1000) if canary_bucket(f"user-{i}") >= share)
    assert served_version(r, NAME, outside, t0 + 30_000, share) == ("champion", 1)
    assert served_version(r, NAME, inside, t0 + 30_000, share) == ("champion", 1)  # no canary yet
    assert served_version(r, NAME, inside, t0 + 90_000, share) == ("canary", 3)
    assert served_version(r, NAME, inside, t0 + 90_000, 0.0) == ("champion", 1)
    assert served_version(r, NAME, outside, t0 + 150_000, share) == ("champion", 2)


# ------------------------------------------------------------------------------------ wrapper, config


def test_serving_model_predict_fast_path_equals_the_scorer(reg: Registry, data) -> None:  # type: ignore[no-untyped-def]
    m = load_serving_model(_cfg(reg))
    assert isinstance(m, ServingModel) and m.ref == {"name": NAME, "version": 1} and m.load_ms > 0
    rows = _rows(data, 50)
    expected = m.scorer.predict(rows)
    assert np.array_equal(m.predict(rows), expected)
    assert np.array_equal(m.predict(rows.astype(np.float64)), expected)  # converted
    assert np.array_equal(m.predict(np.asfortranarray(rows)), expected)  # made contiguous
    assert np.array_equal(m.predict(rows.tolist()), expected)  # anything numpy can convert
    assert m.predict(rows[:0]).shape == (0,)
    with pytest.raises(ValueError, match=rf"\[n, {SPEC.width}\]"):
        m.predict(rows[:, :5])


@pytest.mark.parametrize("bad", [{"canary_share": 1.5}, {"canary_share": -0.1}, {"canary_share": float("nan")},
                                 {"model_poll_ms": -1}, {"shadow": "yes"}])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(**bad)


def test_config_defaults() -> None:
    cfg = EngineConfig()
    assert (cfg.model_poll_ms, cfg.shadow, cfg.canary_share) == (1_000, True, 0.0)
