"""The one implementation of feature semantics: per-entity state, update, read, prune.

`FeatureComputer` compiles a `FeatureSpec` into a state layout and an update/read routine. Both
executors (the engine's streaming loop and `features.offline.replay`) drive it through
`features.executor.process_batch`, so a feature is never written twice.

State layout (one record per entity, so a micro-batch needs one multi-get and one write per
entity). A JSON list, encoded with orjson (exact float round-trip):

    [LAYOUT, last_seen_ts, session_id, session_depth, recency_prev_ts..., panes_w0, panes_w1, ...]

``panes_wi`` is the list of panes of the i-th distinct window, sorted by start time; a pane is
``[start_ms, slot1, slot2, ...]`` where the slots are the accumulators that window's features
need (count, non-null count, sum, min, max, distinct list, [ts, last value]), in order of first
use by the spec's features. A window's value is the merge of the panes it covers, always merged
in ascending start order so floating-point sums are reproducible (docs/features.md).

A session window stores its open sessions instead of panes, sorted by time (they are disjoint and
more than the gap apart): ``[start_ms, end_ms, row, slot1, slot2, ...]`` where start/end are the
least and greatest event times in the session and ``row`` is the feature row of the last event
processed into it (what a "session closed" record reports, `features.sessions`). The slots hold
the whole session, so a read is the event's session itself; an event that bridges two sessions
merges the later one into the earlier (slots folded in ascending time order) before it is added.

How it is fast. The spec is known at construction, so instead of interpreting a per-slot program
for every event, `FeatureComputer` generates the Python source of two functions specialised to
the spec (see `_Codegen`) and compiles them once:

- ``update(state, event)``: straight-line code. Each event field is read once, each distinct
  ``where`` filter is tested once per window, the pane of the event is found with an in-order fast
  path (last pane, or a new pane appended), every window's covered panes are merged in one loop
  (the tumbling case reads its single pane directly), and the row is a list display of locals.
- ``prune(state, watermark, closed)``: drops the panes no event at or after the watermark can
  read, and the sessions no such event can join (appended to `closed` as ``(window index,
  session)`` when a list is given).

The generated source is kept in `FeatureComputer.source` (print it to see exactly what runs).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from operator import itemgetter
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
_PREFIX = b"[%d," % LAYOUT  # how every encoded state starts (orjson writes no spaces)
NAN = math.nan

# Slot kinds. A slot is one accumulator inside a pane.
_N, _NV, _SUM, _MIN, _MAX, _SET, _LAST = "n", "nv", "sum", "min", "max", "set", "last"
# Source of a fresh slot value in a new pane.
_SLOT_INIT = {_N: "0", _NV: "0", _SUM: "0.0", _MIN: "None", _MAX: "None", _SET: "[]", _LAST: "None"}

_START = itemgetter(0)
_END = itemgetter(1)
# A session is [start, end, row, slots...]: slot i (1-based, as in panes) is at i + SESSION_OFF.
SESSION_START, SESSION_END, SESSION_ROW = 0, 1, 2
SESSION_OFF = 2


def _insert_pane(panes: list[list[Any]], pane: list[Any]) -> int:
    """Out-of-order slow path: index of the pane starting at ``pane[0]``, inserting `pane` if none."""
    i = bisect_left(panes, pane[0], key=_START)
    if i == len(panes) or panes[i][0] != pane[0]:
        panes.insert(i, pane)
    return i


class _WindowPlan:
    """Slots and pane arithmetic of one distinct window."""

    __slots__ = ("window", "slots", "kind", "size", "pane", "span")

    def __init__(self, window: Window) -> None:
        self.window = window
        self.slots: list[tuple[str, str | None, frozenset[str] | None]] = []
        self.kind = window.kind
        self.size = window.size_ms
        self.pane = window.pane_ms
        # Number of panes a read covers (tumbling 1, hopping size/hop, sliding and session: open-ended).
        self.span = window.size_ms // window.pane_ms if window.kind in ("tumbling", "hopping") else 0

    def slot(self, kind: str, field: str | None, where: frozenset[str] | None) -> int:
        key = (kind, field, where)
        if key not in self.slots:
            self.slots.append(key)
        return self.slots.index(key) + 1  # +1: index 0 of a pane is its start time

    @property
    def is_session(self) -> bool:
        return self.kind == "session"

    def pane_start(self, ts: int) -> int:
        return ts - ts % self.pane

    def read_lo(self, ts: int) -> int:
        """Smallest pane start the window of an event at `ts` covers (monotonic in ts)."""
        if self.kind == "sliding":
            return ts - self.size + 1
        return self.pane_start(ts) - (self.span - 1) * self.pane

    # Source-code versions of the same arithmetic, for the generated functions.
    def start_src(self, ts: str) -> str:
        return ts if self.pane == 1 else f"{ts} - {ts} % {self.pane}"

    def lo_src(self, start: str) -> str:
        """Lowest covered pane start, given the source of the event's own pane start."""
        if self.kind == "sliding":
            return f"{start} - {self.size - 1}"
        return f"{start} - {(self.span - 1) * self.pane}"


class _Codegen:
    """Writes the source of the spec-specialised ``update`` and ``prune`` functions.

    Names in the generated code: ``ts``, ``etype``, ``f_<field>`` (event fields, read once),
    ``panes``/``pane``/``k`` (current window's pane list, the event's pane and its index),
    ``w<i>_<slot>`` (merged slot values of window i), ``c<col>`` (output columns). Constants the
    code needs (where-sets, category strings) are passed in the namespace as ``K<n>``.
    """

    def __init__(self, comp: FeatureComputer) -> None:
        self.c = comp
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}

    def const(self, value: Any) -> str:
        for name, v in self.consts.items():
            if v == value and type(v) is type(value):
                return name
        name = f"K{len(self.consts)}"
        self.consts[name] = value
        return name

    def num(self, value: Any) -> str:
        """Source of a number: an int literal, anything else as a named constant."""
        return str(value) if type(value) is int else self.const(value)

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def test(self, where: frozenset[str] | None) -> str | None:
        """Source of the condition "the event matches `where`" (None: no filter)."""
        if where is None:
            return None
        if len(where) == 1:
            return f"etype == {next(iter(where))!r}"
        return f"etype in {self.const(where)}"

    @staticmethod
    def var(field: str) -> str:
        return f"f_{field}"

    # -- update ---------------------------------------------------------------------------------

    def update(self) -> str:
        c = self.c
        e = self.emit
        e(0, "def update(state, event):")
        if c._cached:
            e(1, f"if len(state) == {c._size}:")
            e(2, f"cache = [None] * {len(c._plans)}; state.append(cache)")
            e(1, "else:")
            e(2, f"cache = state[{c._size}]")
        e(1, "ts = event['ts']")
        e(1, "etype = event['event_type']")
        for f in sorted(c._fields):
            assert f.isidentifier(), f
            e(1, f"{self.var(f)} = etype" if f == "event_type" else f"{self.var(f)} = event.get({f!r})")
        # Entity memory: idle TTL, session, recency (exactly as docs/features.md says).
        e(1, "last_seen = state[1]")
        e(1, f"if last_seen is not None and ts - last_seen > {self.num(c._idle_ttl)}:")
        resets = ["state[2] = None", "state[3] = 0"] + [f"state[{4 + i}] = None" for i in range(len(c._recency))]
        e(2, "; ".join(resets))
        e(1, "state[1] = ts if last_seen is None or ts > last_seen else last_seen")
        e(1, "session = f_session_id" if "session_id" in c._fields else "session = event.get('session_id')")
        e(1, "if state[3] and state[2] == session:")
        e(2, "state[3] += 1")
        e(1, "else:")
        e(2, "state[2] = session; state[3] = 1")
        for i, where in enumerate(c._recency):
            at = 4 + i
            e(1, f"prev = state[{at}]")
            e(1, "if prev is None:")
            e(2, f"r{i} = NAN")
            cond = self.test(where)
            e(2, f"state[{at}] = ts" if cond is None else f"if {cond}: state[{at}] = ts")
            e(1, "else:")
            e(2, f"r{i} = (ts - prev) / 1000.0 if ts > prev else 0.0")
            e(2, "if ts > prev" + ("" if cond is None else f" and {cond}") + f": state[{at}] = ts")
        for wi, plan in enumerate(c._plans):
            if plan.is_session:
                self.session(wi, plan)
            else:
                self.window(wi, plan)
        self.columns()
        return "\n".join(self.lines)

    def window(self, wi: int, plan: _WindowPlan) -> None:
        e = self.emit
        c = self.c
        cached = plan.span > 1  # hopping: reads several panes, worth a prefix cache (below)
        e(1, f"# window {wi}: {plan.window.kind} size={plan.size} pane={plan.pane}")
        e(1, f"panes = state[{c._panes_at + wi}]")
        e(1, f"start = {plan.start_src('ts')}")
        init = ", ".join(["start"] + [_SLOT_INIT[k] for k, _, _ in plan.slots])
        e(1, "k = len(panes) - 1")
        e(1, "if k >= 0 and panes[k][0] == start:")  # in order, same pane as the last event
        e(2, "pane = panes[k]")
        if cached:
            e(2, f"C = cache[{wi}]")
            e(2, "if C is not None and C[0] != start: C = None")
        e(1, "elif k < 0 or panes[k][0] < start:")  # in order, a new pane
        e(2, f"pane = [{init}]; panes.append(pane); k += 1")
        if cached:
            e(2, "C = None")
        e(1, "else:")  # out of order: an older pane changes, so the cached prefix may be stale
        e(2, f"k = _insert_pane(panes, [{init}]); pane = panes[k]")
        if cached:
            e(2, f"C = cache[{wi}] = None")
        self.slot_updates(plan)
        names = [f"w{wi}_{idx}" for idx in range(1, len(plan.slots) + 1)]
        if not cached:
            if plan.span == 1:  # tumbling (or hop == size): the event's pane is the window
                e(1, f"{', '.join(names)}{',' if len(names) == 1 else ''} = pane[1:]")
            else:
                self.merge_sliding(plan, names)
            return
        # Hopping. The covered panes are the event's pane plus the ones below it back to `lo`.
        # C = [start, prefix slots...]: the fold of the panes below, which the next events of the
        # same pane reuse (cache[wi], in memory only: see FeatureComputer). Sums stay exact:
        # (fold of lower panes) + own pane is the ascending fold. Distinct slots hold the union of
        # all covered panes (own pane included), kept up to date as values arrive.
        e(1, "if C is None:")
        e(2, f"lo = {plan.lo_src('start')}")
        e(2, "i = k")
        e(2, "while i and panes[i - 1][0] >= lo:")
        e(3, "i -= 1")
        pre = [f"a{idx}" for idx in range(1, len(plan.slots) + 1)]
        e(2, "; ".join(f"{a} = {'set()' if kind == _SET else _SLOT_INIT[kind]}"
                       for a, (kind, _, _) in zip(pre, plan.slots)))
        e(2, "for q in panes[i:k]:")
        for idx, (kind, _, _) in enumerate(plan.slots, start=1):
            self.fold(3, pre[idx - 1], kind, f"q[{idx}]")
        for idx, (kind, _, _) in enumerate(plan.slots, start=1):
            if kind == _SET:
                e(2, f"{pre[idx - 1]}.update(pane[{idx}])")
        e(2, f"C = [start, {', '.join(pre)}]")
        e(2, f"if k == len(panes) - 1: cache[{wi}] = C")
        sets = [(idx, fld, where) for idx, (kind, fld, where) in enumerate(plan.slots, start=1) if kind == _SET]
        if sets:
            e(1, "else:")
            for idx, fld, where in sets:
                v = self.var(fld)  # type: ignore[arg-type]
                cond = self.test(where)
                e(2, f"if {v} is not None{'' if cond is None else ' and ' + cond}: C[{idx}].add({v})")
        for idx, (kind, _, _) in enumerate(plan.slots, start=1):
            n = names[idx - 1]
            if kind in (_N, _NV, _SUM):
                e(1, f"{n} = C[{idx}] + pane[{idx}]")
            elif kind == _SET:
                e(1, f"{n} = C[{idx}]")
            else:
                e(1, f"{n} = C[{idx}]")
                self.fold(1, n, kind, f"pane[{idx}]")

    def slot_updates(self, plan: _WindowPlan, off: int = 0) -> None:
        """Add the event to every slot of ``pane``, grouped by filter so each distinct `where`
        is tested once."""
        e = self.emit
        groups: dict[frozenset[str] | None, list[tuple[int, str, str | None]]] = {}
        for idx, (kind, fld, where) in enumerate(plan.slots, start=1):
            groups.setdefault(where, []).append((idx, kind, fld))
        for where, slots in groups.items():
            cond = self.test(where)
            depth = 1
            if cond is not None:
                e(1, f"if {cond}:")
                depth = 2
            by_field: dict[str | None, list[tuple[int, str]]] = {}
            for idx, kind, fld in slots:
                by_field.setdefault(None if kind == _N else fld, []).append((idx, kind))
            for fld, items in by_field.items():
                d = depth
                if fld is not None:
                    v = self.var(fld)
                    e(depth, f"if {v} is not None:")
                    d = depth + 1
                for idx, kind in items:
                    self.slot_update(d, idx, kind, None if fld is None else self.var(fld), off)

    def session(self, wi: int, plan: _WindowPlan) -> None:
        """Session window: find (or open) the event's session, merging the next one when the
        event bridges the gap between them, add the event, read the session's slots."""
        e = self.emit
        gap = plan.size
        init = ", ".join(["ts", "ts", "None"] + [_SLOT_INIT[k] for k, _, _ in plan.slots])
        e(1, f"# window {wi}: session gap={gap}")
        e(1, f"sess = state[{self.c._panes_at + wi}]")
        e(1, "k = len(sess) - 1")
        # In order (or inside the last session's span): joins the last session.
        e(1, f"if k >= 0 and sess[k][0] <= ts and ts - sess[k][1] <= {gap}:")
        e(2, "pane = sess[k]")
        e(2, "if ts > pane[1]: pane[1] = ts")
        # After every session and beyond the last one's reach: a new session.
        e(1, f"elif k < 0 or ts - sess[k][1] > {gap}:")
        e(2, f"pane = [{init}]; sess.append(pane)")
        # Before the last session's start: the first session whose end the event reaches.
        e(1, "else:")
        e(2, f"i = _bisect_left(sess, ts - {gap}, key=_END)")
        e(2, "pane = sess[i]")
        e(2, f"if pane[0] - ts > {gap}:")  # short of it too: a new session before it
        e(3, f"pane = [{init}]; sess.insert(i, pane)")
        e(2, "else:")
        e(3, "if ts < pane[0]: pane[0] = ts")
        e(3, "elif ts > pane[1]: pane[1] = ts")
        e(3, f"if i < k and sess[i + 1][0] - ts <= {gap}:")  # bridges the gap to the next one
        e(4, "q = sess.pop(i + 1); pane[1] = q[1]")
        for idx, (kind, _, _) in enumerate(plan.slots, start=1):
            j = idx + SESSION_OFF
            if kind == _SET:
                e(4, f"x = pane[{j}]")
                e(4, f"for v in q[{j}]:")
                e(5, "if v not in x: x.append(v)")
            else:
                self.fold(4, f"pane[{j}]", kind, f"q[{j}]")
        self.slot_updates(plan, SESSION_OFF)
        e(1, f"S{wi} = pane")
        names = [f"w{wi}_{idx}" for idx in range(1, len(plan.slots) + 1)]
        if names:  # none when the window's only feature is its duration
            e(1, f"{', '.join(names)}{',' if len(names) == 1 else ''} = pane[{1 + SESSION_OFF}:]")

    def fold(self, d: int, acc: str, kind: str, item: str) -> None:
        """Fold the slot value `item` of the next (higher) pane into `acc`."""
        e = self.emit
        if kind in (_N, _NV, _SUM):
            e(d, f"{acc} += {item}")
        elif kind == _SET:
            e(d, f"{acc}.update({item})")
        elif kind == _MIN:
            e(d, f"x = {item}")
            e(d, f"if x is not None and ({acc} is None or x < {acc}): {acc} = x")
        elif kind == _MAX:
            e(d, f"x = {item}")
            e(d, f"if x is not None and ({acc} is None or x > {acc}): {acc} = x")
        else:  # _LAST: panes are disjoint in time, so a higher pane's value is later
            e(d, f"x = {item}")
            e(d, f"if x is not None: {acc} = x")

    def merge_sliding(self, plan: _WindowPlan, names: list[str]) -> None:
        """Sliding: fold the panes from the lowest covered one up to the event's, ascending, so
        sums are ((p_i + p_i+1) + ...) exactly as the contract fixes them."""
        e = self.emit
        e(1, f"lo = {plan.lo_src('start')}")
        e(1, "i = k")
        e(1, "while i and panes[i - 1][0] >= lo:")
        e(2, "i -= 1")
        e(1, "q = panes[i]")
        for idx, (kind, _, _) in enumerate(plan.slots, start=1):
            n = names[idx - 1]
            e(1, f"{n} = set(q[{idx}])" if kind == _SET else f"{n} = q[{idx}]")
        e(1, "for q in panes[i + 1:k + 1]:")
        for idx, (kind, _, _) in enumerate(plan.slots, start=1):
            self.fold(2, names[idx - 1], kind, f"q[{idx}]")

    def slot_update(self, d: int, idx: int, kind: str, v: str | None, off: int = 0) -> None:
        """Add the event's value `v` to slot `idx` of ``pane`` (at ``pane[idx + off]``)."""
        e = self.emit
        idx += off
        if kind in (_N, _NV):
            e(d, f"pane[{idx}] += 1")
        elif kind == _SUM:
            e(d, f"pane[{idx}] += {v}")
        elif kind == _MIN:
            e(d, f"x = pane[{idx}]")
            e(d, f"if x is None or {v} < x: pane[{idx}] = {v}")
        elif kind == _MAX:
            e(d, f"x = pane[{idx}]")
            e(d, f"if x is None or {v} > x: pane[{idx}] = {v}")
        elif kind == _SET:
            e(d, f"x = pane[{idx}]")
            e(d, f"if {v} not in x: x.append({v})")
        else:  # _LAST: the value of the greatest event time; ties: processed last
            e(d, f"x = pane[{idx}]")
            e(d, f"if x is None or ts >= x[0]: pane[{idx}] = [ts, {v}]")

    def columns(self) -> None:
        e = self.emit
        out: list[str] = []
        for what, col, arg in self.c._columns:
            if what == "agg":
                wi, agg, slots = arg
                s = [f"w{wi}_{i}" for i in slots]
                if agg == "duration":
                    e(1, f"c{col} = (S{wi}[{SESSION_END}] - S{wi}[{SESSION_START}]) / 1000.0")
                elif agg in ("count", "sum"):
                    e(1, f"c{col} = float({s[0]})")
                elif agg == "mean":
                    e(1, f"c{col} = {s[0]} / {s[1]} if {s[1]} else NAN")
                elif agg == "distinct":
                    e(1, f"c{col} = float(len({s[0]}))")
                elif agg == "last":
                    e(1, f"c{col} = float({s[0]}[1]) if {s[0]} is not None else NAN")
                else:  # min / max
                    e(1, f"c{col} = float({s[0]}) if {s[0]} is not None else NAN")
                out.append(f"c{col}")
            elif what == "ratio":
                num, den = arg
                e(1, f"c{col} = c{num} / c{den} if c{den} != 0.0 and c{den} == c{den} else NAN")
                out.append(f"c{col}")
            elif what == "recency":
                e(1, f"c{col} = r{arg}")
                out.append(f"c{col}")
            elif what == "session":
                e(1, f"c{col} = float(state[3])")
                out.append(f"c{col}")
            elif what == "current":
                v = self.var(arg)
                e(1, f"c{col} = float({v}) if {v} is not None else NAN")
                out.append(f"c{col}")
            else:  # onehot
                fld, cats = arg
                v = self.var(fld)
                for j, cat in enumerate(cats):
                    lit = repr(cat) if isinstance(cat, str) else self.const(cat)
                    e(1, f"c{col + j} = 1.0 if {v} == {lit} else 0.0")
                    out.append(f"c{col + j}")
        sessions = [wi for wi, p in enumerate(self.c._plans) if p.is_session]
        if not sessions:
            e(1, f"return [{', '.join(out)}]")
            return
        e(1, f"row = [{', '.join(out)}]")
        for wi in sessions:  # the session's report if it closes now (features.sessions)
            e(1, f"S{wi}[{SESSION_ROW}] = row")
        e(1, "return row")

    # -- prune ----------------------------------------------------------------------------------

    def prune(self) -> str:
        c = self.c
        e = self.emit
        self.lines = []
        e(0, "def prune(state, watermark, closed=None):")
        e(1, f"del state[{c._size}:]  # drop the in-memory merge caches")
        e(1, "empty = True")
        for wi, plan in enumerate(c._plans):
            if plan.is_session:
                # Sessions ending before watermark - gap: no event at or after the watermark
                # can join them. They are sorted by end too (disjoint), so they form a prefix.
                e(1, f"sess = state[{c._panes_at + wi}]")
                e(1, "if sess:")
                e(2, f"lo = watermark - {plan.size}")
                e(2, "if sess[0][1] < lo:")
                e(3, "i = 1; n = len(sess)")
                e(3, "while i < n and sess[i][1] < lo:")
                e(4, "i += 1")
                e(3, f"if closed is not None: closed.extend([({wi}, q) for q in sess[:i]])")
                e(3, "del sess[:i]")
                e(2, "if sess:")
                e(3, "empty = False")
                continue
            e(1, f"panes = state[{c._panes_at + wi}]")
            e(1, "if panes:")
            e(2, f"lo = {plan.lo_src(plan.start_src('watermark'))}")
            e(2, "if panes[0][0] < lo:")
            e(3, "i = 1; n = len(panes)")
            e(3, "while i < n and panes[i][0] < lo:")
            e(4, "i += 1")
            e(3, "del panes[:i]")
            e(2, "if panes:")
            e(3, "empty = False")
        e(1, "last_seen = state[1]")
        e(1, f"return empty and (last_seen is None or watermark - last_seen > {self.num(c._idle_ttl)})")
        return "\n".join(self.lines)


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
        self._fields: set[str] = set()  # event fields the features read (besides ts, event_type)
        # Column programs: evaluated in order; each writes row[col]. Ratios come after their inputs.
        self._columns: list[tuple[str, int, Any]] = []
        col = 0
        name_col: dict[str, int] = {}
        for f in spec.features:
            if isinstance(f, Aggregate):
                wi = plan_of[f.window]
                where = frozenset(f.where) if f.where is not None else None
                plan = self._plans[wi]
                if f.field is not None:
                    self._fields.add(f.field)
                if f.agg == "duration":
                    arg: Any = ()  # read from the session's start and end
                elif f.agg == "count":
                    arg = (plan.slot(_N, None, where),)
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
                self._fields.add(f.field)
                self._columns.append(("current", col, f.field))
            elif isinstance(f, OneHot):
                self._fields.add(f.field)
                self._columns.append(("onehot", col, (f.field, f.categories)))
            for n in f.names if isinstance(f, OneHot) else (f.name,):
                name_col[n] = col
                col += 1
        self._panes_at = 4 + len(self._recency)  # index of panes_w0 in the state list
        self._size = self._panes_at + len(self._plans)  # length of the stored record
        self._cached = any(p.span > 1 for p in self._plans)

        gen = _Codegen(self)
        update_src = gen.update()
        prune_src = gen.prune()
        self.source = f"{update_src}\n\n\n{prune_src}\n"
        namespace: dict[str, Any] = {"NAN": NAN, "_insert_pane": _insert_pane, "_bisect_left": bisect_left,
                                     "_END": _END, **gen.consts}
        exec(compile(self.source, f"<features.compute {spec.hash}>", "exec"), namespace)
        self._update = namespace["update"]
        self._prune = namespace["prune"]
        if type(self).update is FeatureComputer.update:
            # Hot path: the executor calls `computer.update` per event; bind the generated
            # function directly (no method indirection) unless a subclass overrides it.
            self.update = self._update  # type: ignore[method-assign]

    # -- state ------------------------------------------------------------------------------

    def new_state(self) -> list[Any]:
        return [LAYOUT, None, None, 0, *([None] * len(self._recency)), *([] for _ in self._plans)]

    def encode(self, state: list[Any]) -> bytes:
        # A state being updated may carry in-memory merge caches after the record: not stored.
        return orjson.dumps(state if len(state) == self._size else state[: self._size])

    def decode(self, raw: bytes) -> list[Any]:
        state = orjson.loads(raw)
        if type(state) is not list or not state or state[0] != LAYOUT:
            found = state[0] if isinstance(state, list) and state else type(state).__name__
            raise ValueError(f"entity state has layout {found!r}, expected {LAYOUT}")
        return state

    def pane_starts(self, state: list[Any]) -> list[list[int]]:
        """Start times of the stored panes of each distinct window (`spec.windows` order)."""
        return [[p[0] for p in state[self._panes_at + i]] for i in range(len(self._plans))]

    # -- the hot path -----------------------------------------------------------------------

    def update(self, state: list[Any], event: dict[str, Any]) -> list[float]:
        """Apply `event` to `state` (in place) and return its feature row (Python floats).

        The row is the state *as of this event, including it*. (The generated function; see
        `source`.)
        """
        return self._update(state, event)

    # -- expiry -----------------------------------------------------------------------------

    def prune(self, state: list[Any], watermark: int, closed: list[tuple[int, list[Any]]] | None = None) -> bool:
        """Drop panes no event at or after `watermark` can read, and sessions no such event can
        join (``end + gap < watermark``; appended to `closed` as ``(window index, session)``
        if given, in window then time order). Return True if the whole record is dead (no panes
        or sessions left and idle past the TTL): the caller may delete it.

        Invisible to feature values by construction: a non-late event has ts >= watermark, and
        every window's lowest covered pane start is monotonic in ts.
        """
        return self._prune(state, watermark, closed)

    @property
    def session_windows(self) -> list[int]:
        """Indices (into `spec.windows`) of the session windows."""
        return [i for i, p in enumerate(self._plans) if p.is_session]

    def expired(self, raw: bytes, watermark: int) -> bool:
        """``prune(decode(raw), watermark)`` for a stored record, without decoding the (common)
        records idle for no more than the TTL, which cannot be dead: the encoding starts
        ``[LAYOUT,<last_seen>,``, so last_seen is read from the prefix."""
        if raw.startswith(_PREFIX):
            head = raw[len(_PREFIX) : raw.find(b",", len(_PREFIX))]
            if head != b"null" and watermark - int(head) <= self._idle_ttl:
                return False
        return self._prune(self.decode(raw), watermark)
