"""Event decoding (features/schema.py): every reason code, timestamps, field_map renaming."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from features import schema as sch
from features.schema import CANONICAL_FIELDS, EventSchema, InvalidEvent

GOOD: dict[str, Any] = {
    "event_id": "e1",
    "user_id": "u1",
    "session_id": "s1",
    "event_type": "product_view",
    "ts": 1_700_000_000_123,
    "page": "/p/1",
    "product_id": "p1",
    "price": 12.5,
    "device": "mobile",
    "country": "DE",
    "referrer": "ads",
}


def msg(**changes: Any) -> bytes:
    d = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


_DROP = object()


def reason(raw: bytes, schema: EventSchema | None = None) -> str:
    with pytest.raises(InvalidEvent) as exc:
        (schema or EventSchema()).decode(raw)
    assert exc.value.detail and str(exc.value).startswith(exc.value.reason + ": ")
    return exc.value.reason


def test_good_event_is_canonical() -> None:
    event = EventSchema().decode(msg())
    assert list(event) == list(CANONICAL_FIELDS)
    assert event == GOOD


def test_optional_fields_default_to_none_and_ids_accept_integers() -> None:
    event = EventSchema().decode(orjson.dumps({"event_id": 7, "user_id": 42, "event_type": "x", "ts": 1_700_000_000_000,
                                               "product_id": 0, "price": 3}))
    assert event["user_id"] == "42" and event["event_id"] == "7" and event["product_id"] == "0"
    assert event["price"] == 3.0 and isinstance(event["price"], float)
    assert all(event[f] is None for f in ("session_id", "page", "device", "country", "referrer"))


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{" + b" " * 2_000_000 + b"}", sch.OVERSIZE),
        (b'{"user_id": ', sch.MALFORMED_JSON),
        (b"\xff\xfe", sch.MALFORMED_JSON),
        (b'{"ts": NaN}', sch.MALFORMED_JSON),
        (b"[1, 2]", sch.NOT_AN_OBJECT),
        (b'"text"', sch.NOT_AN_OBJECT),
        (msg(user_id=_DROP), sch.MISSING_FIELD),
        (msg(user_id=None), sch.MISSING_FIELD),
        (msg(user_id=""), sch.MISSING_FIELD),
        (msg(event_id=_DROP), sch.MISSING_FIELD),
        (msg(event_type=None), sch.MISSING_FIELD),
        (msg(ts=_DROP), sch.MISSING_FIELD),
        (msg(user_id=1.5), sch.WRONG_TYPE),
        (msg(user_id=True), sch.WRONG_TYPE),
        (msg(user_id="a\x00b"), sch.WRONG_TYPE),
        (msg(session_id=["s"]), sch.WRONG_TYPE),
        (msg(event_type=3), sch.WRONG_TYPE),
        (msg(device={"kind": "mobile"}), sch.WRONG_TYPE),
        (msg(price="12.5"), sch.WRONG_TYPE),
        (msg(price=True), sch.WRONG_TYPE),
        (msg(ts=True), sch.WRONG_TYPE),
        (msg(ts=[1]), sch.WRONG_TYPE),
        (msg(price=-0.01), sch.OUT_OF_RANGE),
        (msg(ts="yesterday"), sch.BAD_TIMESTAMP),
        (msg(ts=1_700_000_000), sch.BAD_TIMESTAMP),  # epoch *seconds*: year 1970
        (msg(ts="1999-12-31T23:59:59Z"), sch.BAD_TIMESTAMP),
        (msg(ts=4_102_444_800_000), sch.BAD_TIMESTAMP),  # max is exclusive
        (msg(ts=-1), sch.BAD_TIMESTAMP),
    ],
)
def test_reason_codes(raw: bytes, code: str) -> None:
    assert reason(raw) == code


def test_non_finite_values() -> None:
    # JSON has no NaN/Infinity literal (that is malformed_json), so non_finite is reachable from
    # already-parsed objects and from numbers that overflow a double.
    schema = EventSchema()
    for field, value in (("price", math.inf), ("price", math.nan), ("ts", math.inf), ("ts", -math.inf)):
        with pytest.raises(InvalidEvent) as exc:
            schema.from_mapping({**GOOD, field: value})
        assert exc.value.reason == sch.NON_FINITE and repr(field) in exc.value.detail


def test_price_beyond_float32_is_out_of_range() -> None:
    """Issue 12, item 3: a legal float64 price (1.7e308) cannot be carried by the float32 feature
    vector; it is dead-lettered as out_of_range instead of becoming inf."""
    schema = EventSchema()
    for value in (1.7e308, 3.5e38, float(sch.MAX_PRICE) * (1 + 2**-52), 10**400):
        with pytest.raises(InvalidEvent) as exc:
            schema.from_mapping({**GOOD, "price": value})
        assert exc.value.reason == sch.OUT_OF_RANGE and "'price'" in exc.value.detail, value
    assert reason(msg(price=1.7e308)) == sch.OUT_OF_RANGE
    assert schema.decode(msg(price=sch.MAX_PRICE))["price"] == sch.MAX_PRICE  # the bound is inclusive
    assert schema.from_mapping({**GOOD, "price": 10**30})["price"] == 1e30


def test_max_price_is_configurable_and_validated() -> None:
    assert reason(msg(price=1000.5), EventSchema(max_price=1000)) == sch.OUT_OF_RANGE
    assert EventSchema(max_price=1000).decode(msg(price=1000))["price"] == 1000.0
    for bad in (0, -1.0, 1e39, math.inf, True, "1e6"):
        with pytest.raises(ValueError, match="max_price"):
            EventSchema(max_price=bad)  # type: ignore[arg-type]


def test_oversize_limit_is_configurable() -> None:
    raw = msg()
    assert reason(raw, EventSchema(max_bytes=len(raw) - 1)) == sch.OVERSIZE
    assert EventSchema(max_bytes=len(raw)).decode(raw)["user_id"] == "u1"


def test_late_code_exists_for_the_executor() -> None:
    assert sch.LATE == "late"


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (1_700_000_000_123, 1_700_000_000_123),
        (1_700_000_000_123.9, 1_700_000_000_123),  # float epoch ms is floored
        ("2023-11-14T22:13:20.123Z", 1_700_000_000_123),
        ("2023-11-14T22:13:20.123+00:00", 1_700_000_000_123),
        ("2023-11-14T23:13:20.123+01:00", 1_700_000_000_123),
        ("2023-11-14T22:13:20.123", 1_700_000_000_123),  # naive: UTC
        ("2023-11-14T22:13:20.123999", 1_700_000_000_123),  # sub-ms truncated, not rounded
        ("2023-11-14 22:13:20", 1_700_000_000_000),
        ("2000-01-01T00:00:00Z", sch.DEFAULT_MIN_TS_MS),  # min is inclusive
    ],
)
def test_timestamps(value: Any, ms: int) -> None:
    assert EventSchema().decode(msg(ts=value))["ts"] == ms


def test_iso_milliseconds_are_exact_for_every_ms() -> None:
    schema = EventSchema()
    for ms in range(0, 1000, 7):
        iso = f"2026-03-01T12:00:00.{ms:03d}Z"
        assert schema.decode(msg(ts=iso))["ts"] % 1000 == ms


def test_field_map_renames_upstream_fields() -> None:
    schema = EventSchema(field_map={"user_id": "uid", "event_type": "kind", "ts": "when"})
    raw = orjson.dumps({"event_id": "e", "uid": 5, "kind": "search", "when": "2026-01-02T03:04:05.006Z",
                        "user_id": "ignored", "price": 1})
    event = schema.decode(raw)
    assert event["user_id"] == "5" and event["event_type"] == "search"
    assert event["ts"] == 1_767_323_045_006
    assert schema.upstream_name("user_id") == "uid" and schema.upstream_name("price") == "price"
    # errors name the upstream field
    with pytest.raises(InvalidEvent) as exc:
        schema.decode(orjson.dumps({"event_id": "e", "kind": "search", "when": 1_767_323_045_006}))
    assert exc.value.reason == sch.MISSING_FIELD and "'uid'" in exc.value.detail
    with pytest.raises(InvalidEvent) as exc:
        schema.decode(orjson.dumps({"event_id": "e", "uid": "u", "kind": "search", "when": "soon"}))
    assert exc.value.reason == sch.BAD_TIMESTAMP and "'when'" in exc.value.detail


def test_required_fields_are_configurable() -> None:
    lax = EventSchema(required=("user_id", "ts"))
    event = lax.decode(orjson.dumps({"user_id": "u", "ts": 1_700_000_000_000}))
    assert event["event_id"] is None and event["event_type"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"field_map": {"uid": "user"}}, "unknown canonical fields"),
        ({"required": ("user_id", "ts", "colour")}, "unknown canonical fields"),
        ({"required": ("user_id",)}, "must include 'ts'"),
        ({"max_bytes": 0}, "max_bytes > 0"),
        ({"min_ts_ms": 5, "max_ts_ms": 5}, "min_ts_ms < max_ts_ms"),
    ],
)
def test_schema_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EventSchema(**kwargs)
