"""Click-event decoding and validation, shared by the streaming and offline executors.

An upstream message is raw bytes holding one JSON object. `EventSchema.decode` turns it into a
*canonical event*: a plain dict keyed by the canonical field names below, whatever the upstream
calls them (the mapping is configuration, not code). Decoding is strict and total: it either
returns a canonical event or raises `InvalidEvent` whose `reason` is a short stable code (used as
the dead-letter reason and as a metric label) and whose `detail` says what was wrong.

Canonical event (types after decoding):

==========  =============  ==========================================================
field       type           notes
==========  =============  ==========================================================
event_id    str            required
user_id     str            required; the default entity key
event_type  str            required
ts          int            required; event time in epoch **milliseconds** (UTC). The
                           upstream may send epoch ms (int, or float floored to ms) or
                           an ISO-8601 string (a naive one is taken as UTC).
session_id  str | None
page        str | None
product_id  str | None
price       float | None   must be finite, >= 0 and <= `max_price` (default
                           `MAX_PRICE`, the largest float32: a value the float32
                           feature vector can carry); above it: ``out_of_range``
device      str | None
country     str | None
referrer    str | None
==========  =============  ==========================================================

Identifier fields (event_id, user_id, session_id, product_id) accept JSON strings or integers;
integers are converted to their decimal string so that `42` and `"42"` are the same entity.

Foreign upstreams (docs/upstream.md) are taken by configuration alone:

- ``ts_unit`` says what a numeric timestamp counts (``s``, ``ms``, ``us``, ``ns``; floats and
  numeric strings too) or that it must be a string (``iso``); ``ts_format`` parses string
  timestamps with `datetime.strptime` instead of ISO-8601 (e.g. ``"%Y-%m-%d %H:%M:%S UTC"``).
  Every unit is floored to whole milliseconds, exactly (no float rounding).
- ``event_types`` maps upstream event-type values to the canonical ones (``{cart: add_to_cart}``);
  unmapped values pass through unchanged.
- ``extra_fields`` adds non-canonical upstream columns (``{category: category_code}``) to the
  canonical event as string-or-null values, usable as categorical features of the spec.
- ``derive_event_id``: an event without an upstream id gets ``h`` + 16 hex digits of a blake2b
  digest of its *canonical content* (every other canonical and extra field, after mapping and
  conversion), so the same record has the same id online and offline, from JSON, CSV or Parquet,
  whatever topic, partition or offset carries it. Records equal in every field share an id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import orjson

CANONICAL_FIELDS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "session_id",
    "event_type",
    "ts",
    "page",
    "product_id",
    "price",
    "device",
    "country",
    "referrer",
)
_ID_FIELDS = frozenset({"event_id", "user_id", "session_id", "product_id"})
_STR_FIELDS = frozenset({"event_type", "page", "device", "country", "referrer"})
_STR, _ID, _TS, _PRICE, _ETYPE = "str", "id", "ts", "price", "etype"  # how a field is checked
_TS_SCALED = "ts_scaled"  # a timestamp in another unit than ms: no int fast path
TS_UNITS = {"s": 1000, "ms": 1, "us": Decimal(1) / 1000, "ns": Decimal(1) / 1_000_000, "iso": None}

# Reason codes. Stable: they appear in dead-letter records and metric labels.
OVERSIZE = "oversize"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NON_FINITE = "non_finite"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
LATE = "late"

# 2000-01-01 and 2100-01-01 in epoch ms: anything outside is an absurd timestamp.
DEFAULT_MIN_TS_MS = 946_684_800_000
DEFAULT_MAX_TS_MS = 4_102_444_800_000
# The largest float32 (3.4028234663852886e38). Feature vectors are float32, so a greater price
# could not be represented; capping inputs here also keeps every float64 window sum finite (it
# would take ~5e269 such prices to overflow), so state never holds inf (orjson would store null).
MAX_PRICE = 3.4028234663852886e38


class InvalidEvent(ValueError):
    """A message that cannot become a canonical event.

    Attributes:
        reason: stable short code (one of the module-level reason constants).
        detail: human-readable explanation naming the offending field.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EventSchema:
    """How upstream JSON maps onto canonical events, and the validation limits.

    Args:
        field_map: canonical name -> upstream name, for the fields the upstream names differently
            (e.g. ``{"user_id": "uid", "ts": "timestamp"}``). Unlisted fields keep their names.
        required: canonical fields that must be present and non-null.
        max_bytes: messages larger than this are rejected as ``oversize`` before parsing.
        min_ts_ms / max_ts_ms: event times outside [min, max) are ``bad_timestamp``.
        max_price: prices above this are ``out_of_range``; at most (and by default) `MAX_PRICE`.
        ts_unit / ts_format / event_types / extra_fields / derive_event_id: foreign upstreams,
            see the module docstring.
    """

    field_map: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ("event_id", "user_id", "event_type", "ts")
    max_bytes: int = 1_048_576
    min_ts_ms: int = DEFAULT_MIN_TS_MS
    max_ts_ms: int = DEFAULT_MAX_TS_MS
    max_price: float = MAX_PRICE
    ts_unit: str = "ms"
    ts_format: str | None = None
    event_types: Mapping[str, str] = field(default_factory=dict)
    extra_fields: Mapping[str, str] = field(default_factory=dict)
    derive_event_id: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.field_map) - set(CANONICAL_FIELDS)
        if unknown:
            raise ValueError(
                f"schema.field_map names unknown canonical fields {sorted(unknown)}; "
                f"canonical fields are {list(CANONICAL_FIELDS)}"
            )
        missing = set(self.required) - set(CANONICAL_FIELDS)
        if missing:
            raise ValueError(f"schema.required names unknown canonical fields {sorted(missing)}")
        for must in ("user_id", "ts"):
            if must not in self.required:
                raise ValueError(f"schema.required must include {must!r}: features are keyed by it")
        if self.max_bytes <= 0 or self.min_ts_ms >= self.max_ts_ms:
            raise ValueError("schema limits must satisfy max_bytes > 0 and min_ts_ms < max_ts_ms")
        if (isinstance(self.max_price, bool) or not isinstance(self.max_price, (int, float))
                or not 0 < self.max_price <= MAX_PRICE):
            raise ValueError(f"schema.max_price must be a number in (0, {MAX_PRICE!r}] (the largest float32), "
                             f"got {self.max_price!r}")
        if self.ts_unit not in TS_UNITS:
            raise ValueError(f"schema.ts_unit must be one of {list(TS_UNITS)}, got {self.ts_unit!r}")
        bad_extra = [n for n in self.extra_fields if not str(n).isidentifier() or n in CANONICAL_FIELDS]
        if bad_extra:
            raise ValueError(f"schema.extra_fields names {bad_extra} must be identifiers that are not canonical "
                             f"fields {list(CANONICAL_FIELDS)}")
        if not all(isinstance(v, str) for v in (*self.event_types, *self.event_types.values())):
            raise ValueError("schema.event_types maps upstream event-type strings to canonical ones")
        # Precomputed (canonical, upstream, kind, required) per field: the decode loop is hot.
        kinds = ({"ts": _TS if self.ts_unit == "ms" else _TS_SCALED, "price": _PRICE}
                 | dict.fromkeys(_ID_FIELDS, _ID) | dict.fromkeys(_STR_FIELDS, _STR)
                 | ({"event_type": _ETYPE} if self.event_types else {}))
        required = set(self.required) - ({"event_id"} if self.derive_event_id else set())
        object.__setattr__(self, "_plan", tuple(
            (c, self.field_map.get(c, c), kinds[c], c in required) for c in CANONICAL_FIELDS))
        object.__setattr__(self, "_scale", TS_UNITS[self.ts_unit])
        object.__setattr__(self, "_extended", bool(self.extra_fields) or self.derive_event_id)

    def upstream_name(self, canonical: str) -> str:
        """The upstream field name that carries `canonical`."""
        return self.field_map.get(canonical, canonical)

    def decode(self, raw: bytes) -> dict[str, Any]:
        """Parse and validate one message; return the canonical event or raise `InvalidEvent`."""
        if len(raw) > self.max_bytes:
            raise InvalidEvent(OVERSIZE, f"{len(raw)} bytes > max {self.max_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(MALFORMED_JSON, str(exc)) from None
        if not isinstance(obj, dict):
            raise InvalidEvent(NOT_AN_OBJECT, f"top-level JSON is {type(obj).__name__}, not an object")
        return self.from_mapping(obj)

    def from_mapping(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Validate an already-parsed upstream object (as `decode` does after parsing)."""
        event: dict[str, Any] = {}
        get = obj.get
        lo, hi = self.min_ts_ms, self.max_ts_ms
        max_price = self.max_price
        for canonical, upstream, kind, required in self._plan:  # type: ignore[attr-defined]
            value = get(upstream)
            if value is None:
                if required:
                    raise InvalidEvent(MISSING_FIELD, f"field {upstream!r} is missing or null")
                event[canonical] = None
            # Each branch tries the common well-formed case inline, then the general checks.
            elif kind is _STR:
                if type(value) is not str:
                    raise InvalidEvent(
                        WRONG_TYPE, f"field {upstream!r} must be a string, got {type(value).__name__}"
                    )
                event[canonical] = value
            elif kind is _ID:
                event[canonical] = (value if type(value) is str and "\x00" not in value
                                    else _identifier(value, upstream))
            elif kind is _TS:
                event["ts"] = (value if type(value) is int and lo <= value < hi
                               else self._timestamp(value, upstream))
            elif kind is _TS_SCALED:
                event["ts"] = self._timestamp(value, upstream)
            elif kind is _ETYPE:
                if type(value) is not str:
                    raise InvalidEvent(
                        WRONG_TYPE, f"field {upstream!r} must be a string, got {type(value).__name__}"
                    )
                event[canonical] = self.event_types.get(value, value)
            else:
                event["price"] = (value if type(value) is float and 0.0 <= value <= max_price
                                  else _price(value, upstream, max_price))
        if event["user_id"] == "":
            raise InvalidEvent(MISSING_FIELD, f"field {self.upstream_name('user_id')!r} is empty")
        if self._extended:  # type: ignore[attr-defined]
            for name, upstream in self.extra_fields.items():
                value = get(upstream)
                event[name] = value if value is None or type(value) is str else _identifier(value, upstream)
            if event["event_id"] is None and self.derive_event_id:
                event["event_id"] = derived_event_id(event)
        return event

    def _timestamp(self, value: Any, name: str) -> int:
        scale = self._scale  # type: ignore[attr-defined]
        expected = "an ISO-8601 string" if scale is None else f"epoch {self.ts_unit} or ISO-8601"
        if isinstance(value, bool):
            raise InvalidEvent(WRONG_TYPE, f"field {name!r} must be {expected}, got bool")
        if isinstance(value, str) and scale is not None and value[:1].isdigit() and "-" not in value:
            try:  # a numeric string (CSV, or an upstream that quotes its numbers)
                value = int(value) if value.isdigit() else float(value)
            except ValueError:
                raise InvalidEvent(BAD_TIMESTAMP, f"field {name!r}={value[:64]!r} is not a number") from None
        if isinstance(value, (int, float)) and scale is None:
            raise InvalidEvent(WRONG_TYPE, f"field {name!r} must be {expected}, got {type(value).__name__}")
        if isinstance(value, int):
            ts = value * scale if type(scale) is int else math.floor(value * scale)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidEvent(NON_FINITE, f"field {name!r} is {value}")
            # Decimal of the float's shortest repr: 1439694000.123 s is 1439694000123 ms, not ...122.
            ts = math.floor(value) if scale == 1 else math.floor(Decimal(repr(value)) * scale)
        elif isinstance(value, str):
            try:
                parsed = (datetime.strptime(value, self.ts_format) if self.ts_format
                          else datetime.fromisoformat(value))
            except ValueError:
                raise InvalidEvent(
                    BAD_TIMESTAMP, f"field {name!r}={value[:64]!r} is not "
                    + (f"in the format {self.ts_format!r}" if self.ts_format else "ISO-8601")
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            # Integer arithmetic: float seconds * 1000 would round some millisecond values.
            whole = int(parsed.replace(microsecond=0).timestamp())
            ts = whole * 1000 + parsed.microsecond // 1000
        else:
            raise InvalidEvent(WRONG_TYPE, f"field {name!r} must be {expected}, got {type(value).__name__}")
        if not self.min_ts_ms <= ts < self.max_ts_ms:
            raise InvalidEvent(
                BAD_TIMESTAMP,
                f"field {name!r}={ts} ms is outside [{self.min_ts_ms}, {self.max_ts_ms})",
            )
        return ts


def derived_event_id(event: Mapping[str, Any]) -> str:
    """``h`` + 16 hex digits: blake2b of the event's canonical content (every field but event_id,
    extra fields in name order). Equal for the same record from any source; see the module doc."""
    content = [event[c] for c in CANONICAL_FIELDS if c != "event_id"]
    content.extend(sorted((k, v) for k, v in event.items() if k not in _CANONICAL_SET))
    return "h" + hashlib.blake2b(orjson.dumps(content), digest_size=8).hexdigest()


_CANONICAL_SET = frozenset(CANONICAL_FIELDS)


def _identifier(value: Any, name: str) -> str:
    if isinstance(value, str):
        if "\x00" in value:  # NUL-prefixed keys are reserved for engine metadata in the store
            raise InvalidEvent(WRONG_TYPE, f"field {name!r} contains a NUL character")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidEvent(WRONG_TYPE, f"field {name!r} must be a string or integer, got {type(value).__name__}")


def _price(value: Any, name: str, max_price: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(WRONG_TYPE, f"field {name!r} must be a number, got {type(value).__name__}")
    try:
        price = float(value)
    except OverflowError:  # an int beyond float64 (not from JSON: orjson reads those as floats)
        raise InvalidEvent(OUT_OF_RANGE, f"field {name!r} is above the maximum {max_price!r}") from None
    if not math.isfinite(price):
        raise InvalidEvent(NON_FINITE, f"field {name!r} is {value}")
    if price < 0:
        raise InvalidEvent(OUT_OF_RANGE, f"field {name!r}={price} is negative")
    if price > max_price:
        raise InvalidEvent(OUT_OF_RANGE, f"field {name!r}={price!r} is above the maximum {max_price!r}")
    return price
