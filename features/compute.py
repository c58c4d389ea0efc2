"""The one implementation of feature semantics: per-entity state, update, read, prune.

`FeatureComputer` compiles a `FeatureSpec` into a state layout and an update/read routine. Both
executors (the engine's streaming loop and `features.offline.replay`) drive it through
`features.executor.process_batch`, so a feature is never written twice.

State layout (one record per entity, so a micro-batch needs one multi-get and one write per
entity). A JSON list, encoded with orjson (exact float round-trip):

    [LAYOUT, last_seen_ts, session_id, session_depth, recency_prev_ts..., panes_w0, panes_w1, ...]

``panes_wi`` is the list of panes of the i-th distinct window, sorted by start time; a pane is
``[start_ms, slot0, slot1, ...]`` where the slots are the accumulators that window's features
need (count, non-null count, sum, min, max, distinct list, [ts, last value]). A window's value is
the merge of the panes it covers, always merged in ascending start order so floating-point sums
are reproducible.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import orjson

from features.spec import (
    Aggregate,
    CurrentValue,
    FeatureSpec,
    OneHot,
    Ratio,
    Recency,
    SessionDepth,
    Window,
)

LAYOUT = 1
NAN = math.nan

# Slot kinds. A slot is one accumulator inside a pane.
_N, _NV, _SUM, _MIN, _MAX, _SET, _LAST = "n", "nv", "sum", "min", "max", "set", "last"
_SLOT_INIT: dict[str, Callable[[], Any]] = {
    _N: lambda: 0,
    _NV: lambda: 0,
    _SUM: lambda: 0.0,
    _MIN: lambda: None,
    _MAX: lambda: None,
    _SET: list,
    _LAST: lambda: None,
}


class _WindowPlan:
    """Slots and pane arithmetic of one distinct window."""

    __slots__ = ("window", "slots", "kind", "size", "pane", "span")

    def __init__(self, window: Window) -> None:
        self.window = window
        self.slots: list[tuple[str, str | None, frozenset[str] | None]] = []
        self.kind = window.kind
        self.size = window.size_ms
        self.pane = window.pane_ms
        # Number of panes a read covers (tumbling 1, hopping size/hop, sliding: open-ended).
        self.span = window.size_ms // window.pane_ms if window.kind != "sliding" else 0

    def slot(self, kind: str, field: str | None, where: frozenset[str] | None) -> int:
        key = (kind, field, where)
        if key not in self.slots:
            self.slots.append(key)
        return self.slots.index(key) + 1  # +1: index 0 of a pane is its start time

    def pane_start(self, ts: int) -> int:
        return ts - ts % self.pane

    def read_lo(self, ts: int) -> int:
        """Smallest pane start the window of an event at `ts` covers (monotonic in ts)."""
        if self.kind == "sliding":
            return ts - self.size + 1
        return self.pane_start(ts) - (self.span - 1) * self.pane

    def read_hi(self, ts: int) -> int:
        """Largest pane start the window of an event at `ts` covers."""
        return ts if self.kind == "sliding" else self.pane_start(ts)


class FeatureComputer:
    """Compiled executor of one `FeatureSpec`. Stateless itself; entity state is passed in.

    Not thread-safe only in the sense that states must not be shared between threads.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.width = spec.width
        self.names = spec.names
        self._entity = spec.entity
        self._idle_ttl = spec.idle_ttl_ms
        self._plans: list[_WindowPlan] = [_WindowPlan(w) for w in spec.windows]
        plan_of = {p.window: i for i, p in enumerate(self._plans)}
        self._recency: list[frozenset[str] | None] = []
        # Column programs: evaluated in order; each writes row[col]. Ratios come after their inputs.
        self._columns: list[tuple[str, int, Any]] = []
        col = 0
        name_col: dict[str, int] = {}
        for f in spec.features:
            if isinstance(f, Aggregate):
                wi = plan_of[f.window]
                where = frozenset(f.where) if f.where is not None else None
                plan = self._plans[wi]
                if f.agg == "count":
                    arg: Any = (plan.slot(_N, None, where),)
                elif f.agg in ("sum", "mean"):
                    arg = (plan.slot(_SUM, f.field, where), plan.slot(_NV, f.field, where))
                elif f.agg == "min":
                    arg = (plan.slot(_MIN, f.field, where),)
                elif f.agg == "max":
                    arg = (plan.slot(_MAX, f.field, where),)
                elif f.agg == "distinct":
                    arg = (plan.slot(_SET, f.field, where),)
                else:
                    arg = (plan.slot(_LAST, f.field, where),)
                self._columns.append(("agg", col, (wi, f.agg, arg)))
            elif isinstance(f, Ratio):
                self._columns.append(("ratio", col, (name_col[f.numerator], name_col[f.denominator])))
            elif isinstance(f, Recency):
                self._recency.append(frozenset(f.where) if f.where is not None else None)
                self._columns.append(("recency", col, len(self._recency) - 1))
            elif isinstance(f, SessionDepth):
                self._columns.append(("session", col, None))
            elif isinstance(f, CurrentValue):
                self._columns.append(("current", col, f.field))
            elif isinstance(f, OneHot):
                self._columns.append(("onehot", col, (f.field, f.categories)))
            for n in f.names if isinstance(f, OneHot) else (f.name,):
                name_col[n] = col
                col += 1
        self._panes_at = 4 + len(self._recency)  # index of panes_w0 in the state list
        # Per window: the slot-update program [(index, kind, field, where)].
        self._updates = [
            [(i + 1, k, fld, wh) for i, (k, fld, wh) in enumerate(p.slots)] for p in self._plans
        ]
        self._init = [[_SLOT_INIT[k] for k, _, _ in p.slots] for p in self._plans]

    # -- state ------------------------------------------------------------------------------

    def new_state(self) -> list[Any]:
        return [LAYOUT, None, None, 0, *([None] * len(self._recency)), *([] for _ in self._plans)]

    @staticmethod
    def encode(state: list[Any]) -> bytes:
        return orjson.dumps(state)

    def decode(self, raw: bytes) -> list[Any]:
        state = orjson.loads(raw)
        if not isinstance(state, list) or not state or state[0] != LAYOUT:
            raise ValueError(f"entity state has layout {state[0] if state else None!r}, expected {LAYOUT}")
        return state

    # -- the hot path -----------------------------------------------------------------------

    def update(self, state: list[Any], event: dict[str, Any]) -> list[float]:
        """Apply `event` to `state` (in place) and return its feature row (Python floats).

        The row is the state *as of this event, including it*.
        """
        ts: int = event["ts"]
        etype = event["event_type"]
        last_seen = state[1]
        if last_seen is not None and ts - last_seen > self._idle_ttl:
            # Idle past the TTL: entity-level memory is forgotten (exactly as if the record had
            # been expired and deleted, which the engine may or may not have done yet).
            state[2], state[3] = None, 0
            for i in range(len(self._recency)):
                state[4 + i] = None
        state[1] = ts if last_seen is None or ts > last_seen else last_seen
        session = event.get("session_id")
        if state[3] and state[2] == session:
            state[3] += 1
        else:
            state[2], state[3] = session, 1
        recency_values = []
        for i, where in enumerate(self._recency):
            prev = state[4 + i]
            recency_values.append(NAN if prev is None else max(0, ts - prev) / 1000.0)
            if where is None or etype in where:
                state[4 + i] = ts if prev is None or ts > prev else prev

        merged = []
        base = self._panes_at
        for wi, plan in enumerate(self._plans):
            panes: list[list[Any]] = state[base + wi]
            start = plan.pane_start(ts)
            pane = self._pane_for(panes, start, wi)
            for idx, kind, fld, where in self._updates[wi]:
                if where is not None and etype not in where:
                    continue
                if kind == _N:
                    pane[idx] += 1
                    continue
                value = event.get(fld)  # type: ignore[arg-type]
                if value is None:
                    continue
                if kind == _SUM:
                    pane[idx] += value
                elif kind == _NV:
                    pane[idx] += 1
                elif kind == _MIN:
                    if pane[idx] is None or value < pane[idx]:
                        pane[idx] = value
                elif kind == _MAX:
                    if pane[idx] is None or value > pane[idx]:
                        pane[idx] = value
                elif kind == _SET:
                    if value not in pane[idx]:
                        pane[idx].append(value)
                else:  # _LAST
                    cur = pane[idx]
                    if cur is None or ts >= cur[0]:
                        pane[idx] = [ts, value]
            merged.append(self._merge(plan, panes, ts))

        row = [0.0] * self.width
        for what, col, arg in self._columns:
            if what == "agg":
                wi, agg, slots = arg
                m = merged[wi]
                if agg == "count":
                    row[col] = float(m[slots[0]])
                elif agg == "sum":
                    row[col] = float(m[slots[0]])
                elif agg == "mean":
                    nv = m[slots[1]]
                    row[col] = m[slots[0]] / nv if nv else NAN
                elif agg == "distinct":
                    row[col] = float(len(m[slots[0]]))
                elif agg == "last":
                    v = m[slots[0]]
                    row[col] = float(v[1]) if v is not None else NAN
                else:  # min / max
                    v = m[slots[0]]
                    row[col] = float(v) if v is not None else NAN
            elif what == "ratio":
                den = row[arg[1]]
                row[col] = row[arg[0]] / den if den != 0.0 and den == den else NAN
            elif what == "recency":
                row[col] = recency_values[arg]
            elif what == "session":
                row[col] = float(state[3])
            elif what == "current":
                v = event.get(arg)
                row[col] = float(v) if v is not None else NAN
            else:  # onehot
                fld, cats = arg
                v = event.get(fld)
                for j, c in enumerate(cats):
                    row[col + j] = 1.0 if v == c else 0.0
        return row

    def _pane_for(self, panes: list[list[Any]], start: int, wi: int) -> list[Any]:
        if panes and panes[-1][0] == start:  # the common in-order case
            return panes[-1]
        if not panes or panes[-1][0] < start:
            pane = [start, *(init() for init in self._init[wi])]
            panes.append(pane)
            return pane
        i = bisect_left(panes, start, key=lambda p: p[0])
        if i < len(panes) and panes[i][0] == start:
            return panes[i]
        pane = [start, *(init() for init in self._init[wi])]
        panes.insert(i, pane)
        return pane

    def _merge(self, plan: _WindowPlan, panes: list[list[Any]], ts: int) -> list[Any]:
        """Merged slots over the panes the window of an event at `ts` covers (ascending start)."""
        lo, hi = plan.read_lo(ts), plan.read_hi(ts)
        if plan.span == 1:  # tumbling: exactly one pane, already present
            i = bisect_left(panes, lo, key=lambda p: p[0])
            return panes[i]
        i = bisect_left(panes, lo, key=lambda p: p[0])
        j = i
        n = len(panes)
        while j < n and panes[j][0] <= hi:
            j += 1
        covered = panes[i:j]
        if len(covered) == 1:
            return covered[0]
        out: list[Any] = [lo]
        for idx, (kind, _, _) in enumerate(plan.slots, start=1):
            if kind in (_N, _NV, _SUM):
                acc = covered[0][idx]
                for p in covered[1:]:
                    acc += p[idx]
                out.append(acc)
            elif kind == _MIN:
                vals = [p[idx] for p in covered if p[idx] is not None]
                out.append(min(vals) if vals else None)
            elif kind == _MAX:
                vals = [p[idx] for p in covered if p[idx] is not None]
                out.append(max(vals) if vals else None)
            elif kind == _SET:
                union: set[Any] = set()
                for p in covered:
                    union.update(p[idx])
                out.append(union)
            else:  # _LAST: greatest event time; panes are disjoint in time so no ties across panes
                best = None
                for p in covered:
                    v = p[idx]
                    if v is not None and (best is None or v[0] >= best[0]):
                        best = v
                out.append(best)
        return out

    # -- expiry -----------------------------------------------------------------------------

    def prune(self, state: list[Any], watermark: int) -> bool:
        """Drop panes no event at or after `watermark` can read. Return True if the whole record
        is dead (no panes left and idle past the TTL): the caller may delete it.

        Invisible to feature values by construction: a non-late event has ts >= watermark, and
        every window's lowest covered pane start is monotonic in ts.
        """
        base = self._panes_at
        empty = True
        for wi, plan in enumerate(self._plans):
            panes = state[base + wi]
            lo = plan.read_lo(watermark)
            if panes and panes[0][0] < lo:
                i = bisect_left(panes, lo, key=lambda p: p[0])
                del panes[:i]
            if panes:
                empty = False
        last_seen = state[1]
        return empty and (last_seen is None or watermark - last_seen > self._idle_ttl)
