"""Session windows against a brute-force oracle written from docs/features.md ("Session windows").

The oracle keeps, per entity, the plain list of processed (not late) events. For an event it
recomputes the entity's sessions from scratch: sort the event times, cut wherever two consecutive
times are more than `gap` apart (exactly `gap` apart: same session). The event's session is the
one containing it; every aggregate is computed from that session's member events by definition,
except float sums, whose order the contract fixes: the sessions (as they were before the event)
that the event's session absorbs are added in ascending time order, then the event's own value.

Closed sessions: after the whole log, every session whose end + gap is below its partition's
final watermark is closed, and reports (start, end, row of the last event processed into it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.compute import FeatureComputer
from features.executor import PartitionClock, process_batch
from features.offline import replay
from features.sessions import ClosedSession, close_sessions
from features.spec import Aggregate, FeatureSpec, Ratio, Window
from tests.unit.test_features_oracle import (
    Oracle,
    _aggregate,
    _matches,
    assert_rows_equal,
    event_logs,
    in_window,
    run_process_batch,
)

NAN = math.nan
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


def session_spec(gaps: Sequence[int] = (10, 25), grace_ms: int = 50, idle_ttl_ms: int = 240) -> FeatureSpec:
    """Every aggregation over session windows, plus a tumbling window and ratios beside them."""
    feats: list[Any] = []
    for g in gaps:
        w = Window.session(g)
        feats += [
            Aggregate(f"n_g{g}", "count", w),
            Aggregate(f"na_g{g}", "count", w, where=("a",)),
            Aggregate(f"sum_g{g}", "sum", w, "price"),
            Aggregate(f"sumab_g{g}", "sum", w, "price", where=("a", "b")),
            Aggregate(f"mean_g{g}", "mean", w, "price"),
            Aggregate(f"min_g{g}", "min", w, "price"),
            Aggregate(f"max_g{g}", "max", w, "price", where=("a", "c")),
            Aggregate(f"dp_g{g}", "distinct", w, "product_id"),
            Aggregate(f"last_g{g}", "last", w, "price"),
            Aggregate(f"lastb_g{g}", "last", w, "price", where=("b",)),
            Ratio(f"avg_g{g}", f"sum_g{g}", f"n_g{g}"),
            Aggregate(f"dur_g{g}", "duration", w),
        ]
    feats += [Aggregate("n_t100", "count", Window.tumbling(100)), Aggregate("sum_t100", "sum", Window.tumbling(100), "price")]
    return FeatureSpec("sessions", tuple(feats), grace_ms=grace_ms, idle_ttl_ms=idle_ttl_ms)


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------


def sessions_of(history: Sequence[dict[str, Any]], gap: int) -> list[frozenset[int]]:
    """The sessions of an entity's events (indices into `history`), in ascending time order."""
    order = sorted(range(len(history)), key=lambda i: history[i]["ts"])
    groups: list[list[int]] = []
    for i in order:
        if groups and history[i]["ts"] - history[groups[-1][-1]]["ts"] <= gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [frozenset(g) for g in groups]


class SessionOracle(Oracle):
    """The oracle of test_features_oracle (lateness, history, `run`) with session windows."""

    def __init__(self, spec: FeatureSpec, num_partitions: int = 1) -> None:
        super().__init__(spec, num_partitions)
        # (entity, feature name) -> session -> float sum, by the contract's summation order
        self.sums: dict[tuple[str, str], dict[frozenset[int], float]] = defaultdict(dict)
        # (entity, gap) -> session -> row of the last event processed into it
        self.rows: dict[tuple[str, int], dict[frozenset[int], list[float]]] = defaultdict(dict)

    def push(self, event: dict[str, Any]) -> np.ndarray | None:
        hist = self.admit(event)
        if hist is None:
            return None
        spec, key, ts = self.spec, event[self.spec.entity], event["ts"]
        before = {w: sessions_of(hist, w.size_ms) for w in spec.windows if w.kind == "session"}
        hist.append(event)
        me = len(hist) - 1
        mine = {w: next(s for s in sessions_of(hist, w.size_ms) if me in s) for w in before}
        by_name: dict[str, float] = {}
        row: list[float] = []
        for f in spec.features:
            if isinstance(f, Ratio):
                a, b = by_name[f.numerator], by_name[f.denominator]
                v = NAN if b == 0 or math.isnan(b) else a / b
            elif f.window.kind != "session":
                v = _aggregate(f, [e for e in hist if in_window(f.window, e["ts"], ts)])
            elif f.agg == "duration":
                times = [hist[i]["ts"] for i in mine[f.window]]
                v = (max(times) - min(times)) / 1000
            elif f.agg in ("sum", "mean"):
                session = mine[f.window]
                sums = self.sums[(key, f.name)]
                joined = sorted((s for s in before[f.window] if s <= session), key=lambda s: min(hist[i]["ts"] for i in s))
                total = 0.0
                for k, s in enumerate(joined):
                    total = sums[s] if k == 0 else total + sums[s]
                value = event[f.field]
                if _matches(f.where, event) and value is not None:
                    total += value
                sums[session] = total
                if f.agg == "sum":
                    v = total
                else:
                    valued = sum(1 for i in session if _matches(f.where, hist[i]) and hist[i][f.field] is not None)
                    v = total / valued if valued else NAN
            else:
                v = _aggregate(f, [hist[i] for i in sorted(mine[f.window])])  # processing order
            by_name[f.name] = v
            row.append(v)
        for w, session in mine.items():
            self.rows[(key, w.size_ms)][session] = row
        return np.asarray(row, dtype=np.float32)

    def closed(self) -> dict[tuple[str, int, int], tuple[int, np.ndarray]]:
        """(entity, gap, start) -> (end, float32 row) of every session closed by the final watermark."""
        out: dict[tuple[str, int, int], tuple[int, np.ndarray]] = {}
        for key, hist in self.history.items():
            watermark = self.max_ts[self.partition(key)] - self.spec.grace_ms
            for w in self.spec.windows:
                if w.kind != "session":
                    continue
                for s in sessions_of(hist, w.size_ms):
                    times = [hist[i]["ts"] for i in s]
                    if max(times) + w.size_ms < watermark:
                        row = self.rows[(key, w.size_ms)][s]
                        out[(key, w.size_ms, min(times))] = (max(times), np.asarray(row, dtype=np.float32))
        return out


def closed_by_key(sessions: Sequence[ClosedSession]) -> dict[tuple[str, int, int], tuple[int, np.ndarray]]:
    out = {s.key: (s.end, s.vector()) for s in sessions}
    assert len(out) == len(sessions), "a session was reported twice"
    return out


def assert_closed_equal(got: dict, want: dict, names: Sequence[str]) -> None:
    assert got.keys() == want.keys(), (sorted(got.keys() - want.keys()), sorted(want.keys() - got.keys()))
    for k, (end, row) in want.items():
        assert got[k][0] == end, k
        assert_rows_equal(got[k][1], row, names, f"closed session {k}")


# ---------------------------------------------------------------------------------------------
# Hand-computed boundaries
# ---------------------------------------------------------------------------------------------

GAP_SPEC = FeatureSpec(
    "gap", (Aggregate("n", "count", Window.session(10)), Aggregate("spend", "sum", Window.session(10), "price"),
            Aggregate("last", "last", Window.session(10), "price")),
    grace_ms=100, idle_ttl_ms=1_000)


def ev(i: int, ts: int, price: float | None = None, user: str = "u", etype: str = "a") -> dict[str, Any]:
    return {"event_id": f"e{i}", "user_id": user, "session_id": None, "event_type": etype, "ts": ts,
            "page": None, "product_id": None, "price": price, "device": None, "country": None, "referrer": None}


def rows_of(spec: FeatureSpec, events: list[dict[str, Any]]) -> list[list[float] | None]:
    rows, late, _ = run_process_batch(spec, events, 1)
    return [None if i in late else rows[i].tolist() for i in range(len(events))]


def test_exactly_gap_apart_is_the_same_session_one_more_ms_is_not() -> None:
    got = rows_of(GAP_SPEC, [ev(0, 1000, 1.0), ev(1, 1010, 2.0), ev(2, 1021, 4.0), ev(3, 1031, 8.0)])
    assert got[0] == [1, 1.0, 1.0]
    assert got[1] == [2, 3.0, 2.0]  # 1010 - 1000 = gap: same session
    assert got[2] == [1, 4.0, 4.0]  # 1021 - 1010 = gap + 1: a new session
    assert got[3] == [2, 12.0, 8.0]


def test_out_of_order_event_extends_a_session_backwards_and_reads_later_events() -> None:
    got = rows_of(GAP_SPEC, [ev(0, 1000, 1.0), ev(1, 1005, 2.0), ev(2, 992, 4.0), ev(3, 981, 8.0)])
    assert got[2] == [3, 7.0, 2.0]  # joins [1000, 1005] (8 ms before it); last is still t=1005's
    assert got[3] == [1, 8.0, 8.0]  # 992 - 981 = 11 > gap: its own session


def test_an_event_bridging_two_sessions_merges_them() -> None:
    events = [ev(0, 1000, 1.0), ev(1, 1020, 2.0), ev(2, 1030, None), ev(3, 1010, 4.0), ev(4, 1031, 16.0)]
    got = rows_of(GAP_SPEC, events)
    assert got[1] == [1, 2.0, 2.0]  # 20 ms after 1000: a second session
    assert got[2] == [2, 2.0, 2.0]  # [1020, 1030]; a null price is skipped by sum and last
    # 1010 is exactly gap from 1000 and from 1020: one session of four, sums (1 + 2) + 4
    assert got[3] == [4, 7.0, 2.0]
    assert got[4] == [5, 23.0, 16.0]


def test_an_event_reaching_only_one_neighbour_does_not_merge() -> None:
    events = [ev(0, 1000, 1.0), ev(1, 1025, 2.0), ev(2, 1011, 4.0)]
    assert rows_of(GAP_SPEC, events)[2] == [1, 4.0, 4.0]  # 11 after 1000, 14 before 1025: alone
    events = [ev(0, 1000, 1.0), ev(1, 1025, 2.0), ev(2, 1015, 4.0)]
    assert rows_of(GAP_SPEC, events)[2] == [2, 6.0, 2.0]  # joins only [1025]


def test_late_beyond_grace_changes_nothing_and_is_reported_late() -> None:
    # grace 100: at max 1300 the watermark is 1200; 1199 is late, 1200 is on time.
    events = [ev(0, 1190, 1.0), ev(1, 1300, 2.0), ev(2, 1199, 4.0), ev(3, 1200, 8.0), ev(4, 1205, 16.0)]
    rows, late, _ = run_process_batch(GAP_SPEC, events, 1)
    assert late == [2]
    assert rows[3].tolist() == [2, 9.0, 8.0]  # 1190 and 1200: the late 1199 is not in it
    assert rows[4].tolist() == [3, 25.0, 16.0]


def test_sessions_close_once_the_watermark_passes_end_plus_gap() -> None:
    computer = FeatureComputer(GAP_SPEC)
    clock = PartitionClock(GAP_SPEC.grace_ms)
    store: dict[str, bytes] = {}

    def batch(events: list[dict[str, Any]]) -> list[ClosedSession]:
        result = process_batch(computer, clock, events, store)
        store.update({k: v for k, v in result.states.items() if v is not None})
        return result.closed

    def sweep() -> list[ClosedSession]:
        swept, changed = close_sessions(computer, sorted(store.items()), clock.watermark)  # type: ignore[arg-type]
        store.update({k: v for k, v in changed.items() if v is not None})
        return swept

    assert batch([ev(0, 1000, 1.0, "a"), ev(1, 1004, 2.0, "a"), ev(2, 1000, None, "b")]) == []
    assert batch([ev(3, 1114, None, "c")]) == []  # watermark 1014; a, b untouched
    # b's [1000] ends 1010 + gap < 1014: closed. a's [1000, 1004]: 1004 + 10 = 1014 is not below
    # the watermark, an on-time event at 1014 could still join it.
    assert [(s.entity, s.start, s.end, s.row) for s in sweep()] == [("b", 1000, 1000, (1, 0.0, None))]
    closed = batch([ev(4, 1115, 8.0, "a")])  # watermark 1015: a's first session closes, a second opens
    assert [(s.entity, s.start, s.end, s.row) for s in closed] == [("a", 1000, 1004, (2, 3.0, 2.0))]
    assert closed[0].vector().tolist() == [2.0, 3.0, 2.0] and closed[0].key == ("a", 10, 1000)
    assert sweep() == []  # each session is reported once
    # watermark 1200: c's own [1114] closes in its batch; a's [1115] (1125 + 10 < 1200) is untouched
    assert [(s.entity, s.start) for s in batch([ev(5, 1300, None, "c")])] == [("c", 1114)]
    assert [(s.entity, s.start, s.row) for s in sweep()] == [("a", 1115, (1, 8.0, 8.0))]


def test_spec_round_trip_and_validation() -> None:
    w = Window.session("30m")
    assert w.to_dict() == {"kind": "session", "gap": "30m"} and Window.from_dict(w.to_dict()) == w
    assert w.gap_ms == 1_800_000
    spec = FeatureSpec.from_dict({"features": [{"name": "n", "agg": "count", "window": {"kind": "session", "gap": "30m"}}]})
    assert spec.features[0].window == w  # type: ignore[union-attr]
    assert FeatureSpec.from_dict(spec.to_dict()).hash == spec.hash
    other = FeatureSpec.from_dict({"features": [{"name": "n", "agg": "count", "window": {"kind": "session", "gap": "31m"}}]})
    assert other.hash != spec.hash
    with pytest.raises(ValueError, match="session gap must be > 0"):
        Window.session(0)
    with pytest.raises(ValueError, match="takes only a gap"):
        Window.from_dict({"kind": "session", "gap": "1m", "size": "1m"})
    with pytest.raises(ValueError, match="missing key 'gap'"):
        FeatureSpec.from_dict({"features": [{"name": "n", "agg": "count", "window": {"kind": "session"}}]})
    with pytest.raises(ValueError, match="duration needs a session window"):
        FeatureSpec("x", (Aggregate("d", "duration", Window.tumbling("1m")),))
    with pytest.raises(ValueError, match="duration needs a session window and takes no field or where"):
        FeatureSpec("x", (Aggregate("d", "duration", w, where=("a",)),))
    only = FeatureSpec("x", (Aggregate("d", "duration", w),))  # a session window with no slots
    computer = FeatureComputer(only)
    state = computer.new_state()
    assert [computer.update(state, ev(i, t)) for i, t in enumerate((0, 90_000, 30_000))] == [[0.0], [90.0], [90.0]]
    with pytest.raises(ValueError, match="idle_ttl .* session gap"):
        FeatureSpec("x", (Aggregate("n", "count", Window.session("2h")),), idle_ttl_ms=3_600_000)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

SPEC = session_spec()
COMPUTER = FeatureComputer(SPEC)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_logs(max_events=60, users=3))
def test_process_batch_equals_oracle_for_any_batch_size(events: list[dict[str, Any]]) -> None:
    oracle = SessionOracle(SPEC)
    want_rows, want_late = oracle.run(events)
    want_closed = oracle.closed()
    for size in (1, 4, 13, len(events)):
        closed: list[ClosedSession] = []
        rows, late, store = run_process_batch(SPEC, events, size, COMPUTER,
                                              on_batch=lambda result, end, store: closed.extend(result.closed))
        assert late == want_late, f"batch size {size}"
        assert sorted(rows) == sorted(want_rows)
        for i, want in want_rows.items():
            assert_rows_equal(rows[i], want, SPEC.names, f"event {i} {events[i]} (batch size {size})")
        # The sweep finds the rest (entities no batch touched after their sessions closed).
        watermark = max(e["ts"] for e in events) - SPEC.grace_ms  # a late event is never the max
        swept, _ = close_sessions(COMPUTER, sorted(store.items()), watermark)
        assert_closed_equal(closed_by_key(closed + swept), want_closed, SPEC.names)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_logs(max_events=60, users=6), st.integers(1, 4), st.sampled_from([1, 5, 512]))
def test_offline_replay_equals_oracle_with_partitions(events: list[dict[str, Any]], parts: int, batch: int) -> None:
    oracle = SessionOracle(SPEC, parts)
    want_rows, want_late = oracle.run(events)
    table = replay(events, SPEC, num_partitions=parts, batch_size=batch)
    assert table.late == [events[i]["event_id"] for i in want_late]
    assert table.event_ids == [events[i]["event_id"] for i in sorted(want_rows)]
    for j, i in enumerate(sorted(want_rows)):
        assert_rows_equal(table.X[j], want_rows[i], SPEC.names, f"event {i}")
    assert_closed_equal(closed_by_key(table.closed_sessions), oracle.closed(), SPEC.names)


def test_default_spec_hash_is_unchanged_by_the_new_kind() -> None:
    from features.clickstream import clickstream_spec

    assert all(w.kind != "session" for w in clickstream_spec().windows)
    assert clickstream_spec().hash == "fs-f16efa7ba92e2125"  # as before session windows existed (SEMANTICS_VERSION 2)


@st.composite
def shuffled_logs(draw: Any) -> list[dict[str, Any]]:
    """Times drawn in arbitrary order from a short span, mostly inside grace: sessions form in
    pieces and are bridged (merged) often, sometimes twice by one event's neighbours."""
    n = draw(st.integers(1, 50))
    times = draw(st.lists(st.integers(0, 150), min_size=n, max_size=n))
    users = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    prices = draw(st.lists(st.sampled_from((None, 0.1, 0.2, 0.3, 1e6 + 0.1, 2.0**-53, 1.0 + 2.0**-24)), min_size=n, max_size=n))
    types = draw(st.lists(st.sampled_from(("a", "b", "c")), min_size=n, max_size=n))
    out = []
    for i in range(n):
        e = ev(i, 1_700_000_000_000 + times[i], prices[i], f"u{users[i]}", types[i])
        e["product_id"] = f"p{times[i] % 3}"
        out.append(e)
    return out


MERGE_SPEC = session_spec(gaps=(10, 25), grace_ms=120, idle_ttl_ms=240)
MERGE_COMPUTER = FeatureComputer(MERGE_SPEC)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shuffled_logs(), st.sampled_from([1, 3, 50]))
def test_merging_out_of_order_sessions_equals_oracle(events: list[dict[str, Any]], size: int) -> None:
    oracle = SessionOracle(MERGE_SPEC)
    want_rows, want_late = oracle.run(events)
    closed: list[ClosedSession] = []
    rows, late, store = run_process_batch(MERGE_SPEC, events, size, MERGE_COMPUTER,
                                          on_batch=lambda result, end, store: closed.extend(result.closed))
    assert late == want_late and sorted(rows) == sorted(want_rows)
    for i, want in want_rows.items():
        assert_rows_equal(rows[i], want, MERGE_SPEC.names, f"event {i} {events[i]} (batch size {size})")
    swept, _ = close_sessions(MERGE_COMPUTER, sorted(store.items()), max(e["ts"] for e in events) - MERGE_SPEC.grace_ms)
    assert_closed_equal(closed_by_key(closed + swept), oracle.closed(), MERGE_SPEC.names)
