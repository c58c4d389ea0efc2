"""Engine side of closed sessions without Kafka: config validation and the record format."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from engine.config import ConfigError, SessionsConfig, config_from_mapping
from engine.records import session_closed_records
from features.sessions import ClosedSession
from features.spec import Window

SESSION_SPEC = {"features": [{"name": "n", "agg": "count", "window": {"kind": "session", "gap": "30m"}},
                             {"name": "spend", "agg": "sum", "field": "price", "window": {"kind": "session", "gap": "30m"}}]}


def test_sessions_config_from_yaml_shape() -> None:
    cfg = config_from_mapping({"features": SESSION_SPEC, "sessions": {"closed_topic": "sessions", "idle_close_ms": 2000}})
    assert cfg.sessions == SessionsConfig("sessions", 2000)
    assert config_from_mapping({}).sessions == SessionsConfig()  # off by default
    wall = config_from_mapping({"features": {**SESSION_SPEC, "grace": "1m"}, "sessions": {
        "closed_topic": "s", "idle_close_ms": 2000, "idle_watermark": "wall_clock"}})
    assert wall.sessions.idle_watermark == "wall_clock" and wall.sessions.lag_ms(wall.features.grace_ms) == 60_000
    lagged = config_from_mapping({"features": SESSION_SPEC, "sessions": {
        "closed_topic": "s", "idle_close_ms": 2000, "idle_watermark": "wall_clock", "wall_clock_lag_ms": 300_000}})
    assert lagged.sessions.lag_ms(lagged.features.grace_ms) == 300_000


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"sessions": {"closed_topic": "s"}}, "sessions.closed_topic is set but the feature spec has no session window"),
        ({"features": SESSION_SPEC, "sessions": {"closed_topic": "scores"}}, "sessions.closed_topic must be a topic name distinct"),
        ({"features": SESSION_SPEC, "sessions": {"closed_topic": ""}}, "sessions.closed_topic must be a topic name"),
        ({"features": SESSION_SPEC, "expiry_scan_per_batch": 0, "sessions": {"closed_topic": "s"}},
         "sessions.closed_topic needs expiry_scan_per_batch > 0"),
        ({"features": SESSION_SPEC, "sessions": {"idle_close_ms": 1000}}, "sessions.idle_close_ms needs sessions.closed_topic"),
        ({"features": SESSION_SPEC, "sessions": {"closed_topic": "s", "idle_close_ms": 5}}, "sessions.idle_close_ms must be in"),
        ({"features": SESSION_SPEC, "sessions": {"closed_topic": "s", "idle_close_ms": "1s"}}, "sessions.idle_close_ms must be an integer"),
        ({"sessions": {"topic": "s"}}, "topic"),
        ({"features": SESSION_SPEC, "sessions": {"closed_topic": "s", "idle_close_ms": 1000, "idle_watermark": "wall"}},
         "sessions.idle_watermark must be event_time or wall_clock, got 'wall'"),
        ({"features": SESSION_SPEC, "sessions": {"closed_topic": "s", "idle_watermark": "wall_clock"}},
         "sessions.idle_watermark: wall_clock needs sessions.idle_close_ms"),
        ({"features": SESSION_SPEC, "sessions": {"closed_topic": "s", "idle_close_ms": 1000, "wall_clock_lag_ms": 90_000}},
         "sessions.wall_clock_lag_ms needs sessions.idle_watermark: wall_clock"),
        ({"features": {**SESSION_SPEC, "grace": "2m"}, "sessions": {"closed_topic": "s", "idle_close_ms": 1000,
                                                                  "idle_watermark": "wall_clock", "wall_clock_lag_ms": 60_000}},
         r"sessions.wall_clock_lag_ms must be in \[features grace 120000, 2592000000\], got 60000"),
    ],
)
def test_invalid_sessions_config_fails_fast_naming_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_mapping(raw)


def test_session_closed_record_format() -> None:
    s = ClosedSession("u1", Window.session("30m"), 1_000, 61_000, (3.0, None, 0.1))
    [msg] = session_closed_records([s], [0.25], [{"name": "m", "version": 2}], ["champion"], "fs-x",
                                   ("n", "mean", "spend"), "exactly_once", 99)
    assert msg["key"] == b"u1"
    rec = orjson.loads(msg["value"])
    assert rec == {"schema_version": 1, "entity": "u1", "gap_ms": 1_800_000, "session_start": 1_000,
                   "session_end": 61_000, "score": 0.25, "model": {"name": "m", "version": 2},
                   "variant": "champion", "feature_spec": "fs-x", "guarantee": "exactly_once", "closed_ts": 99,
                   "closed_by": "watermark", "features": {"n": 3.0, "mean": None, "spend": float(np.float32(0.1))}}
    assert math.isnan(s.vector()[1]) and s.vector().dtype == np.float32
