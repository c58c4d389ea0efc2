"""FeatureSpec: hash stability, dict round trip, validation messages (docs/features.md, "The
feature spec and its hash")."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from features import spec as spec_mod
from features.clickstream import clickstream_spec
from features.spec import (
    Aggregate,
    CurrentValue,
    FeatureSpec,
    OneHot,
    Ratio,
    Recency,
    SessionDepth,
    Window,
    format_duration,
    parse_duration,
)

# A tripwire: the default spec's hash is what deployed models carry. If this changes, every model
# trained before is refused by the engine; change it only on purpose (and bump SEMANTICS_VERSION
# when the executor's semantics change).
PINNED_CLICKSTREAM_HASH = "fs-f16efa7ba92e2125"  # SEMANTICS_VERSION 2


def test_hash_format_and_determinism() -> None:
    h = clickstream_spec().hash
    assert re.fullmatch(r"fs-[0-9a-f]{16}", h)
    assert clickstream_spec().hash == h


def test_default_spec_hash_is_pinned() -> None:
    assert spec_mod.SEMANTICS_VERSION == 2
    assert clickstream_spec().hash == PINNED_CLICKSTREAM_HASH


def test_default_spec_shape() -> None:
    s = clickstream_spec()
    assert s.width == 38 and len(s.names) == 38
    assert [w.kind for w in s.windows] == ["sliding", "hopping", "tumbling", "hopping"]


def test_same_semantics_same_hash() -> None:
    base = clickstream_spec()
    renamed = dataclasses.replace(base, name="something else")
    assert renamed.hash == base.hash
    d = base.to_dict()
    assert FeatureSpec.from_dict(d).hash == base.hash
    # where is a set: its order carries no meaning
    d2 = base.to_dict()
    for f in d2["features"]:
        if f.get("where"):
            f["where"] = list(reversed(f["where"]))
    two = FeatureSpec("x", (Aggregate("n", "count", Window.tumbling("1h"), where=("a", "b")),))
    two_rev = FeatureSpec("y", (Aggregate("n", "count", Window.tumbling("1h"), where=("b", "a")),))
    assert FeatureSpec.from_dict(d2).hash == base.hash
    assert two.hash == two_rev.hash
    # the same durations written differently
    a = FeatureSpec("a", (Aggregate("n", "count", Window.sliding("1h")),), grace_ms=60_000)
    b = FeatureSpec.from_dict({"features": [{"name": "n", "agg": "count", "window": {"kind": "sliding", "size": "60m"}}],
                               "grace": "60s"})
    assert a.hash == b.hash


def _variants() -> dict[str, FeatureSpec]:
    w = Window.hopping("1h", "5m")

    def mk(*features: Any, **kw: Any) -> FeatureSpec:
        return FeatureSpec("v", tuple(features), **kw)

    n = Aggregate("n", "count", w)
    s = Aggregate("s", "sum", w, "price", where=("a",))
    return {
        "base": mk(n, s),
        "window size": mk(Aggregate("n", "count", Window.hopping("2h", "5m")), s),
        "window hop": mk(Aggregate("n", "count", Window.hopping("1h", "10m")), s),
        "window kind": mk(Aggregate("n", "count", Window.sliding("1h")), s),
        "filter": mk(n, Aggregate("s", "sum", w, "price", where=("b",))),
        "filter added": mk(n, Aggregate("s", "sum", w, "price", where=("a", "b"))),
        "no filter": mk(n, Aggregate("s", "sum", w, "price")),
        "agg": mk(n, Aggregate("s", "mean", w, "price", where=("a",))),
        "feature name": mk(Aggregate("m", "count", w), s),
        "column order": mk(s, n),
        "grace": mk(n, s, grace_ms=1),
        "idle ttl": mk(n, s, idle_ttl_ms=86_400_000),
        "entity": mk(n, s, entity="session_id"),
        "extra feature": mk(n, s, SessionDepth("d")),
    }


def test_changed_semantics_change_the_hash() -> None:
    hashes = {k: v.hash for k, v in _variants().items()}
    assert len(set(hashes.values())) == len(hashes), hashes
    a = FeatureSpec("o", (OneHot("device", ("a", "b")),))
    b = FeatureSpec("o", (OneHot("device", ("b", "a")),))  # column order differs
    assert a.hash != b.hash


def test_semantics_version_is_part_of_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    h = clickstream_spec().hash
    monkeypatch.setattr(spec_mod, "SEMANTICS_VERSION", spec_mod.SEMANTICS_VERSION + 1)
    assert clickstream_spec().hash != h


def test_from_dict_to_dict_round_trip() -> None:
    full = FeatureSpec(
        "all-kinds",
        (
            Aggregate("n", "count", Window.sliding("90s")),
            Aggregate("s", "sum", Window.tumbling("1d"), "price", where=("purchase",)),
            Aggregate("d", "distinct", Window.hopping("7d", "1d"), "session_id"),
            Aggregate("odd", "max", Window.hopping(1500, 500), "price"),
            Ratio("r", "s", "n"),
            Recency("rec"),
            Recency("rec_c", where=("add_to_cart", "checkout")),
            SessionDepth("depth"),
            CurrentValue("price", "price"),
            OneHot("device", ("mobile", "desktop")),
        ),
        entity="user_id",
        grace_ms=0,
        idle_ttl_ms=8 * 86_400_000 + 1,
    )
    for s in (full, clickstream_spec()):
        back = FeatureSpec.from_dict(s.to_dict())
        assert back == s
        assert back.hash == s.hash
        assert back.to_dict() == s.to_dict()


@pytest.mark.parametrize("ms", [0, 1, 999, 1000, 1500, 60_000, 90_000, 3_600_000, 86_400_000, 7 * 86_400_000])
def test_duration_round_trip(ms: int) -> None:
    assert parse_duration(format_duration(ms)) == ms


def _agg(**kw: Any) -> Aggregate:
    d = {"name": "f", "agg": "count", "window": Window.tumbling("1h")}
    d.update(kw)
    return Aggregate(**d)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FeatureSpec("x", ()), "at least one feature"),
        (lambda: FeatureSpec("x", (_agg(),), entity="price"), "entity 'price'"),
        (lambda: FeatureSpec("x", (_agg(),), grace_ms=-1), "grace must be >= 0"),
        (lambda: FeatureSpec("x", (_agg(), _agg())), r"duplicate feature names: \['f'\]"),
        (lambda: FeatureSpec("x", (_agg(name="a b"),)), "feature names must match"),
        (lambda: FeatureSpec("x", (_agg(window=Window.tumbling("2d")),), idle_ttl_ms=86_400_000),
         "idle_ttl .* must be >= the longest window"),
        (lambda: FeatureSpec("x", (_agg(agg="median"),)), "aggregation 'median' is not one of"),
        (lambda: FeatureSpec("x", (_agg(field="price"),)), "count takes no field"),
        (lambda: FeatureSpec("x", (_agg(agg="sum"),)), "sum needs a field"),
        (lambda: FeatureSpec("x", (_agg(agg="mean", field="device"),)), "mean needs a numeric field"),
        (lambda: FeatureSpec("x", (_agg(agg="last", field="page"),)), "last needs a numeric field"),
        (lambda: FeatureSpec("x", (_agg(agg="distinct", field="colour"),)), "unknown field 'colour'"),
        (lambda: FeatureSpec("x", (_agg(where=()),)), "where must be a non-empty list"),
        (lambda: FeatureSpec("x", (Ratio("r", "a", "b"),)), r"ratio 'r' refers to \['a', 'b'\], not defined before"),
        (lambda: FeatureSpec("x", (Ratio("r", "f", "f"), _agg())), "not defined before it"),
        (lambda: FeatureSpec("x", (CurrentValue("c", "device"),)), "field 'device' is not numeric"),
        (lambda: FeatureSpec("x", (OneHot("price", ("a",)),)), "needs a categorical field"),
        (lambda: FeatureSpec("x", (OneHot("device", ()),)), ">= 1 category"),
        (lambda: Window.hopping("1h", "7m"), "size a multiple of hop"),
        (lambda: Window.hopping("1h", 0), "size a multiple of hop"),
        (lambda: Window("tumbling", 10, 5), "tumbling window takes no hop"),
        (lambda: Window.sliding(0), "window size must be > 0"),
        (lambda: Window("rolling", 10), "is not tumbling, hopping, sliding or session"),
        (lambda: parse_duration("10 minutes"), "is not like"),
        (lambda: parse_duration(True), "duration must be ms"),
        (lambda: FeatureSpec.from_dict({"features": [{"type": "zscore", "name": "z"}]}), "unknown feature type 'zscore'"),
        (lambda: FeatureSpec.from_dict({"features": [{"name": "n", "agg": "count"}]}), "missing key 'window'"),
        (lambda: FeatureSpec.from_dict({}), "missing key 'features'"),
    ],
)
def test_validation_errors_are_clear(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
