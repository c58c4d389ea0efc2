"""Declarative feature definitions and their semantic hash.

A `FeatureSpec` is defined once and executed two ways (streaming in the engine, offline replay for
training) by the same code in `features.compute`. Its `hash` identifies the feature *semantics*:
the entity key, lateness/idle parameters, every feature's definition in output order, and
`SEMANTICS_VERSION` of the executor. Renaming the spec or reformatting a YAML file does not change
the hash; changing a window, a filter, an aggregation, the column order or the executor's semantics
does. Models record the hash they were trained on and the engine refuses a model whose hash
differs from the running spec.

Time is event time in epoch milliseconds throughout. See docs/features.md for the exact window
semantics; in short, for an event with time ``ts`` that is processed (not late):

- tumbling(size): the window ``[floor(ts/size)*size, +size)``;
- hopping(size, hop): the *oldest* hopping window that contains ts, i.e. the ``size/hop`` panes of
  length ``hop`` ending with the pane that contains ts;
- sliding(size): the continuous window ``(ts - size, ts]``;
- session(gap): the entity's session containing ts, a maximal run of its events whose
  consecutive event times are at most ``gap`` apart.

The feature value is the aggregate over every event of the same entity processed so far
(including this one) whose event time falls in that window.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import orjson

# Bump when the executor's semantics change in a way that changes feature values: every spec
# hash changes with it, so old models are refused instead of silently skewed.
SEMANTICS_VERSION = 2

NUMERIC_FIELDS = frozenset({"price"})
CATEGORICAL_FIELDS = frozenset(
    {"event_id", "user_id", "session_id", "event_type", "page", "product_id", "device", "country", "referrer"}
)
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "distinct", "last", "duration")
_NEEDS_NUMERIC = frozenset({"sum", "mean", "min", "max", "last"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_=.\-]*$")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class DurationError(ValueError):
    """A duration that is neither milliseconds nor a string like ``"10m"``."""


def parse_duration(value: int | str) -> int:
    """Milliseconds from an int (ms) or a string like ``"90s"``, ``"10m"``, ``"1h"``, ``"7d"``."""
    if isinstance(value, bool):
        raise DurationError(f"duration must be ms or a string like '10m', got {value!r}")
    if isinstance(value, int):
        return value
    match = _DURATION.match(str(value).strip())
    if not match:
        raise DurationError(f"duration {value!r} is not like '500ms', '30s', '10m', '1h' or '7d'")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def format_duration(ms: int) -> str:
    """The shortest exact duration string for `ms` (inverse of `parse_duration`)."""
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0 and ms >= _UNIT_MS[unit]:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Window:
    """An event-time window. Use the constructors `tumbling`, `hopping`, `sliding`, `session`.

    A session window stores its gap in `size_ms` (it is the window's reach: two events at most
    `size_ms` apart are in the same session); see `gap_ms`.
    """

    kind: Literal["tumbling", "hopping", "sliding", "session"]
    size_ms: int
    hop_ms: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("tumbling", "hopping", "sliding", "session"):
            raise ValueError(f"window kind {self.kind!r} is not tumbling, hopping, sliding or session")
        if self.size_ms <= 0:
            what = "session gap" if self.kind == "session" else "window size"
            raise ValueError(f"{what} must be > 0 ms, got {self.size_ms}")
        if self.kind == "hopping":
            if not self.hop_ms or self.hop_ms <= 0 or self.size_ms % self.hop_ms:
                raise ValueError(
                    f"hopping window needs 0 < hop <= size with size a multiple of hop, "
                    f"got size={self.size_ms} hop={self.hop_ms}"
                )
        elif self.hop_ms is not None:
            raise ValueError(f"{self.kind} window takes no hop")

    @classmethod
    def tumbling(cls, size: int | str) -> Window:
        return cls("tumbling", parse_duration(size))

    @classmethod
    def hopping(cls, size: int | str, hop: int | str) -> Window:
        return cls("hopping", parse_duration(size), parse_duration(hop))

    @classmethod
    def sliding(cls, size: int | str) -> Window:
        return cls("sliding", parse_duration(size))

    @classmethod
    def session(cls, gap: int | str) -> Window:
        """Gap-based sessions: consecutive event times (in time order) at most `gap` apart
        (``t2 - t1 <= gap``) belong to the same session."""
        return cls("session", parse_duration(gap))

    @property
    def gap_ms(self) -> int:
        """The session gap (session windows only)."""
        if self.kind != "session":
            raise AttributeError(f"a {self.kind} window has no gap")
        return self.size_ms

    @property
    def pane_ms(self) -> int:
        """Length of one stored pane: size (tumbling), hop (hopping), 1 ms (sliding: exact times).
        Session windows store sessions, not panes (0)."""
        return {"tumbling": self.size_ms, "hopping": self.hop_ms or 0, "sliding": 1, "session": 0}[self.kind]

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "session":
            return {"kind": "session", "gap": format_duration(self.size_ms)}
        d: dict[str, Any] = {"kind": self.kind, "size": format_duration(self.size_ms)}
        if self.hop_ms is not None:
            d["hop"] = format_duration(self.hop_ms)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Window:
        if d.get("kind") == "session":
            if "size" in d or "hop" in d:
                raise ValueError("a session window takes only a gap, e.g. {kind: session, gap: 30m}")
            return cls.session(d["gap"])
        hop = d.get("hop")
        return cls(d["kind"], parse_duration(d["size"]), parse_duration(hop) if hop is not None else None)


@dataclass(frozen=True)
class Aggregate:
    """A windowed aggregation over the entity's events, optionally filtered by event type.

    ``count`` counts matching events; ``sum``/``mean``/``min``/``max``/``last`` read a numeric
    field and skip events where it is null; ``distinct`` counts distinct non-null values of any
    field; ``last`` is the value of the matching event with the greatest event time (ties: the
    one processed last). Empty windows give 0 for count/sum/distinct and NaN otherwise.
    ``duration`` (session windows only, no field or filter) is the session's span in seconds,
    ``(end - start) / 1000``: its greatest minus its least event time, as of the event.
    """

    name: str
    agg: str
    window: Window
    field: str | None = None
    where: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "aggregate", "name": self.name, "agg": self.agg, "window": self.window.to_dict()}
        if self.field is not None:
            d["field"] = self.field
        if self.where is not None:
            d["where"] = list(self.where)
        return d


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` of two other features; NaN when the denominator is 0 or NaN."""

    name: str
    numerator: str
    denominator: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ratio", "name": self.name, "numerator": self.numerator, "denominator": self.denominator}


@dataclass(frozen=True)
class Recency:
    """Seconds from the latest earlier-processed matching event of the entity to this event.

    ``max(0, ts - prev) / 1000`` where ``prev`` is the greatest event time among matching events
    processed before this one; NaN if there is none (entity memory, this included, is forgotten
    once the entity has been idle for the spec's ``idle_ttl``).
    """

    name: str
    where: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "recency", "name": self.name}
        if self.where is not None:
            d["where"] = list(self.where)
        return d


@dataclass(frozen=True)
class SessionDepth:
    """Events of the entity in the current session so far, this one included.

    The count restarts when session_id changes from the previous processed event, or when the
    entity was idle for longer than the spec's ``idle_ttl``.
    """

    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "session_depth", "name": self.name}


@dataclass(frozen=True)
class CurrentValue:
    """A numeric field of the event itself (NaN when null)."""

    name: str
    field: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": "current", "name": self.name, "field": self.field}


@dataclass(frozen=True)
class OneHot:
    """One column per category, ``<field>=<category>``: 1.0 if the event's field equals it, else 0.0."""

    field: str
    categories: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{self.field}={c}" for c in self.categories)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "onehot", "field": self.field, "categories": list(self.categories)}


Feature = Union[Aggregate, Ratio, Recency, SessionDepth, CurrentValue, OneHot]


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered set of features of one entity, with the stream's lateness rules.

    Args:
        name: a label for humans; not part of the hash.
        features: definitions in output-column order (the model's input order).
        entity: canonical event field that keys the state (default ``user_id``).
        grace_ms: allowed lateness. Per partition, watermark = max event time processed - grace;
            an event older than the watermark is late: it updates nothing and is dead-lettered.
        idle_ttl_ms: entity-level memory (recency, session depth) is forgotten after the entity
            has been idle this long in event time; must be >= the longest window (and every
            session gap). Bounds state.
        extra_fields: names of non-canonical event fields (string or null, brought in by the
            schema's ``extra_fields`` mapping) that features may use like categorical fields
            (onehot, distinct). Part of the hash when non-empty.
    """

    name: str
    features: tuple[Feature, ...]
    entity: str = "user_id"
    grace_ms: int = 60_000
    idle_ttl_ms: int = 7 * 86_400_000
    extra_fields: tuple[str, ...] = ()
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: list[str] = []
        for f in self.features:
            names.extend(f.names if isinstance(f, OneHot) else (f.name,))
        object.__setattr__(self, "_names", tuple(names))
        self._validate()

    @property
    def names(self) -> tuple[str, ...]:
        """Output column names in order (a OneHot contributes one column per category)."""
        return self._names

    @property
    def width(self) -> int:
        return len(self._names)

    @property
    def windows(self) -> tuple[Window, ...]:
        """Distinct windows used, in first-use order."""
        seen: dict[Window, None] = {}
        for f in self.features:
            if isinstance(f, Aggregate):
                seen.setdefault(f.window, None)
        return tuple(seen)

    @functools.cached_property
    def hash(self) -> str:
        """``fs-`` + 16 hex digits of the sha256 of the canonical semantic description (computed once:
        the spec is immutable, and the engine reads it per batch)."""
        digest = hashlib.sha256(orjson.dumps(self._semantics(), option=orjson.OPT_SORT_KEYS)).hexdigest()
        return f"fs-{digest[:16]}"

    def _semantics(self) -> dict[str, Any]:
        semantics = {
            "semantics_version": SEMANTICS_VERSION,
            "entity": self.entity,
            "grace_ms": self.grace_ms,
            "idle_ttl_ms": self.idle_ttl_ms,
            "features": [_canonical(f) for f in self.features],
        }
        if self.extra_fields:  # only when used, so specs without extras keep their hashes
            semantics["extra_fields"] = sorted(self.extra_fields)
        return semantics

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-friendly description; `from_dict` reads it back."""
        d: dict[str, Any] = {
            "name": self.name,
            "entity": self.entity,
            "grace": format_duration(self.grace_ms),
            "idle_ttl": format_duration(self.idle_ttl_ms),
        }
        if self.extra_fields:
            d["extra_fields"] = list(self.extra_fields)
        d["features"] = [f.to_dict() for f in self.features]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Build a spec from `to_dict` output (or a hand-written YAML mapping of the same shape)."""
        try:
            feats = tuple(_feature_from_dict(f) for f in d["features"])
            return cls(
                name=str(d.get("name", "unnamed")),
                features=feats,
                entity=str(d.get("entity", "user_id")),
                grace_ms=parse_duration(d.get("grace", 60_000)),
                idle_ttl_ms=parse_duration(d.get("idle_ttl", 7 * 86_400_000)),
                extra_fields=tuple(d.get("extra_fields") or ()),
            )
        except KeyError as exc:
            raise ValueError(f"feature spec is missing key {exc}") from None

    def _validate(self) -> None:
        bad_extra = [n for n in self.extra_fields
                     if not isinstance(n, str) or not n.isidentifier() or n in CATEGORICAL_FIELDS | NUMERIC_FIELDS
                     or n in ("ts",)]
        if bad_extra:
            raise ValueError(f"extra_fields {bad_extra} must be identifiers other than the canonical fields")
        categorical = CATEGORICAL_FIELDS | set(self.extra_fields)
        if self.entity not in CATEGORICAL_FIELDS:
            raise ValueError(f"entity {self.entity!r} must be a canonical id/string field")
        if self.grace_ms < 0:
            raise ValueError(f"grace must be >= 0 ms, got {self.grace_ms}")
        if not self.features:
            raise ValueError("a feature spec needs at least one feature")
        dupes = {n for n in self._names if self._names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate feature names: {sorted(dupes)}")
        bad = [n for n in self._names if not _NAME.match(n)]
        if bad:
            raise ValueError(f"feature names must match {_NAME.pattern}: {bad}")
        longest = max((w.size_ms for w in self.windows), default=0)
        if self.idle_ttl_ms < longest:
            raise ValueError(f"idle_ttl ({self.idle_ttl_ms} ms) must be >= the longest window or session gap "
                             f"({longest} ms)")
        known = set()
        for f in self.features:
            if isinstance(f, Aggregate):
                _validate_aggregate(f, categorical)
            elif isinstance(f, Ratio):
                missing = {f.numerator, f.denominator} - known
                if missing:
                    raise ValueError(f"ratio {f.name!r} refers to {sorted(missing)}, not defined before it")
            elif isinstance(f, CurrentValue) and f.field not in NUMERIC_FIELDS:
                raise ValueError(f"current value {f.name!r}: field {f.field!r} is not numeric {sorted(NUMERIC_FIELDS)}")
            elif isinstance(f, OneHot):
                if f.field not in categorical or not f.categories:
                    raise ValueError(f"onehot on {f.field!r} needs a categorical field (canonical or declared in "
                                     "extra_fields) and >= 1 category")
            known.update(f.names if isinstance(f, OneHot) else (f.name,))


def _validate_aggregate(f: Aggregate, categorical: frozenset[str] | set[str] = CATEGORICAL_FIELDS) -> None:
    if f.agg not in AGGREGATIONS:
        raise ValueError(f"feature {f.name!r}: aggregation {f.agg!r} is not one of {AGGREGATIONS}")
    if f.agg == "duration":
        if f.window.kind != "session" or f.field is not None or f.where is not None:
            raise ValueError(f"feature {f.name!r}: duration needs a session window and takes no field or where")
    elif f.agg == "count":
        if f.field is not None:
            raise ValueError(f"feature {f.name!r}: count takes no field (filter with where=)")
    elif f.field is None:
        raise ValueError(f"feature {f.name!r}: {f.agg} needs a field")
    elif f.agg in _NEEDS_NUMERIC and f.field not in NUMERIC_FIELDS:
        raise ValueError(f"feature {f.name!r}: {f.agg} needs a numeric field {sorted(NUMERIC_FIELDS)}, got {f.field!r}")
    elif f.agg == "distinct" and f.field not in categorical | NUMERIC_FIELDS:
        raise ValueError(f"feature {f.name!r}: unknown field {f.field!r}")
    if f.where is not None and (not f.where or not all(isinstance(t, str) for t in f.where)):
        raise ValueError(f"feature {f.name!r}: where must be a non-empty list of event types")


def _canonical(f: Feature) -> dict[str, Any]:
    d = f.to_dict()
    if "window" in d:
        w: Window = f.window  # type: ignore[union-attr]
        d["window"] = {"kind": w.kind, "size_ms": w.size_ms, "hop_ms": w.hop_ms}
    if "where" in d:
        d["where"] = sorted(d["where"])  # a filter is a set: order carries no meaning
    return d


def _feature_from_dict(d: Mapping[str, Any]) -> Feature:
    kind = d.get("type", "aggregate")
    where = tuple(d["where"]) if d.get("where") is not None else None
    if kind == "aggregate":
        return Aggregate(d["name"], d["agg"], Window.from_dict(d["window"]), d.get("field"), where)
    if kind == "ratio":
        return Ratio(d["name"], d["numerator"], d["denominator"])
    if kind == "recency":
        return Recency(d["name"], where)
    if kind == "session_depth":
        return SessionDepth(d["name"])
    if kind == "current":
        return CurrentValue(d["name"], d["field"])
    if kind == "onehot":
        return OneHot(d["field"], tuple(d["categories"]))
    raise ValueError(f"unknown feature type {kind!r}")
