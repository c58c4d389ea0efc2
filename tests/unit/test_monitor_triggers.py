"""engine.triggers: hysteresis, cooldown, idempotency, fallbacks; records match the JSON schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.config import MonitorConfig
from engine.triggers import QUIET, SUPPRESSED, TRIGGER, WARNING, Signal, TriggerContext, TriggerPolicy, Window
from models.trigger import RetrainTrigger

SCHEMA = orjson.loads((Path(__file__).resolve().parents[2] / "docs/schemas/retrain-trigger.v1.json").read_bytes())
HOUR = 3_600_000
_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "number": (int, float), "integer": int,
                          "null": type(None), "boolean": bool}


def schema_problems(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """The subset of JSON Schema the trigger schema uses: type, required, properties, items, enum,
    const, minLength (jsonschema is not a dependency)."""
    out: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in types)
        if not ok:
            return [f"{path}: {value!r} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        out.append(f"{path}: shorter than {schema['minLength']}")
    if isinstance(value, dict):
        out += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                out += schema_problems(value[k], sub, f"{path}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += schema_problems(item, schema["items"], f"{path}[{i}]")
    return out


def _ctx(version: int = 3) -> TriggerContext:
    return TriggerContext(model={"name": "purchase", "version": version}, feature_spec="fs-abc",
                          reference={"source": "manifest:purchase@v3", "n": 1000, "start_ms": 0, "end_ms": HOUR},
                          source={"group": "g", "partition": 0, "partitions": [0]})


def _signal(reason: str = "feature_drift") -> Signal:
    return Signal(reason, {"name": "psi_calibrated", "params": {"alpha": 0.01}}, 0.4, 0.1,
                  [{"name": "price", "statistic": "psi", "value": 0.4, "threshold": 0.1, "n": 5000}])


def _window(i: int) -> Window:
    return Window(i * HOUR, (i + 1) * HOUR - 1, 5000)


def test_warning_first_then_trigger_when_confirmed() -> None:
    policy = TriggerPolicy(MonitorConfig(confirm_windows=3, cooldown_ms=0), wall_ms=lambda: 42)
    outcomes = [policy.observe("feature_drift", _signal(), _window(i), _ctx())[0] for i in range(3)]
    assert outcomes == [WARNING, WARNING, TRIGGER]


def test_a_quiet_window_resets_the_confirmation() -> None:
    policy = TriggerPolicy(MonitorConfig(confirm_windows=2, cooldown_ms=0))
    seq = [_signal(), None, _signal(), None, _signal(), _signal()]
    outcomes = [policy.observe("feature_drift", s, _window(i), _ctx())[0] for i, s in enumerate(seq)]
    assert outcomes == [WARNING, QUIET, WARNING, QUIET, WARNING, TRIGGER]


def test_cooldown_suppresses_in_event_time_and_reasons_are_independent() -> None:
    policy = TriggerPolicy(MonitorConfig(confirm_windows=1, cooldown_ms=3 * HOUR))
    assert policy.observe("feature_drift", _signal(), _window(0), _ctx())[0] == TRIGGER
    assert policy.observe("feature_drift", _signal(), _window(1), _ctx())[0] == SUPPRESSED
    assert policy.observe("prediction_drift", _signal("prediction_drift"), _window(1), _ctx())[0] == TRIGGER
    assert policy.observe("feature_drift", _signal(), _window(2), _ctx())[0] == SUPPRESSED
    assert policy.observe("feature_drift", _signal(), _window(3), _ctx())[0] == TRIGGER  # 3 h after the first end


def test_idempotency_key_is_shared_by_partitions_and_restarts_within_a_bucket() -> None:
    cfg = MonitorConfig(confirm_windows=1, key_bucket_ms=6 * HOUR)
    a = TriggerPolicy(cfg).observe("feature_drift", _signal(), Window(0, HOUR, 10), _ctx())[1]
    restored = TriggerPolicy(cfg, orjson.loads(orjson.dumps(TriggerPolicy(cfg).state)))
    b = restored.observe("feature_drift", _signal(), Window(2 * HOUR, 5 * HOUR, 10), _ctx())[1]
    c = TriggerPolicy(cfg).observe("feature_drift", _signal(), Window(0, 7 * HOUR, 10), _ctx())[1]
    d = TriggerPolicy(cfg).observe("feature_drift", _signal(), Window(0, HOUR, 10), _ctx(version=4))[1]
    assert a is not None and b is not None and c is not None and d is not None
    assert a.idempotency_key == b.idempotency_key == "purchase/v3/feature_drift/0"
    assert a.trigger_id != b.trigger_id
    assert c.idempotency_key != a.idempotency_key  # next bucket
    assert d.idempotency_key != a.idempotency_key  # another model version


def test_policy_state_round_trips_through_json() -> None:
    cfg = MonitorConfig(confirm_windows=2, cooldown_ms=0)
    policy = TriggerPolicy(cfg)
    assert policy.observe("feature_drift", _signal(), _window(0), _ctx())[0] == WARNING
    resumed = TriggerPolicy(cfg, orjson.loads(orjson.dumps(policy.state)))
    assert resumed.observe("feature_drift", _signal(), _window(1), _ctx())[0] == TRIGGER


@pytest.mark.parametrize(("cfg", "reason"), [
    (MonitorConfig(schedule_ms=10 * HOUR), "schedule"),
    (MonitorConfig(volume_events=1_000), "volume"),
])
def test_fallbacks_fire_once_and_restart(cfg: MonitorConfig, reason: str) -> None:
    policy = TriggerPolicy(cfg)
    fired = []
    for i in range(25):
        policy.count(100, i * HOUR)
        fired += [(i, t.reason) for t in policy.fallbacks(_window(i), _ctx())]
    assert fired and all(r == reason for _, r in fired)
    gaps = [b - a for (a, _), (b, _) in zip(fired, fired[1:])]
    assert all(g == 10 for g in gaps), fired


def test_fallbacks_are_off_by_default() -> None:
    policy = TriggerPolicy(MonitorConfig())
    for i in range(1000):
        policy.count(10_000, i * HOUR)
        assert policy.fallbacks(_window(i), _ctx()) == []


def test_trigger_records_match_the_json_schema_and_round_trip() -> None:
    policy = TriggerPolicy(MonitorConfig(confirm_windows=1, training_window_ms=48 * HOUR))
    _, trigger = policy.observe("feature_drift", _signal(), _window(100), _ctx())
    assert trigger is not None
    wire = orjson.loads(trigger.to_json())
    assert schema_problems(wire, SCHEMA) == []
    assert wire["suggested_training_window"] == {"start_ms": 53 * HOUR - 1, "end_ms": 101 * HOUR - 1}
    assert wire["current"]["n"] == 5000 and wire["current"]["windows_confirmed"] == 1
    assert RetrainTrigger.from_json(trigger.to_json()) == trigger


def test_the_schema_checker_catches_what_the_schema_forbids() -> None:
    policy = TriggerPolicy(MonitorConfig(confirm_windows=1))
    wire = orjson.loads(policy.observe("feature_drift", _signal(), _window(1), _ctx())[1].to_json())  # type: ignore[union-attr]
    for broken, needle in (({**wire, "reason": "boredom"}, "reason"), ({**wire, "statistic": "high"}, "statistic"),
                           ({k: v for k, v in wire.items() if k != "current"}, "current"),
                           ({**wire, "evidence": [{"name": "x"}]}, "evidence")):
        problems = schema_problems(broken, SCHEMA)
        assert problems and any(needle in p for p in problems), problems
