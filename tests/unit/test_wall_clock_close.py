"""Wall-clock session close (`sessions.idle_watermark: wall_clock`) without Kafka: the clock's
floor, and what raising it does to lateness, state and closed-session reports.

The engine raises an idle partition's watermark to a wall-clock floor and sweeps its store
(`engine.runner`); here the floor is raised at arbitrary points of arbitrary logs and the result
is compared with a run that never raises it over the same log minus the events the floor made
late: every row is the same, and every session is reported exactly once with the same contents.
Only *when* a session is reported, and which events are late, depend on the floor.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.compute import FeatureComputer
from features.executor import PartitionClock, process_batch
from features.sessions import ClosedSession, close_sessions
from tests.unit.test_features_oracle import assert_rows_equal, event_logs, run_process_batch
from tests.unit.test_features_sessions import GAP_SPEC, assert_closed_equal, closed_by_key, ev, session_spec

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

SPEC = session_spec()
COMPUTER = FeatureComputer(SPEC)
END_OF_TIME = 10**15  # a watermark that closes every session still open


@given(st.integers(-(10**13), 10**13), st.integers(0, 10**6), st.one_of(st.none(), st.integers(-(10**6), 10**6)))
def test_clock_encoding_round_trips_and_the_floor_only_raises(max_ts: int, grace: int, floor: int | None) -> None:
    clock = PartitionClock(grace, max_ts)
    assert PartitionClock.decode(grace, clock.encode()) == clock
    before = clock.watermark
    assert before is not None
    raised = floor is not None and clock.raise_floor(max_ts - grace + floor)
    assert raised == (floor is not None and floor > 0)
    assert clock.watermark == max(before, max_ts - grace + (floor or 0))  # never lowered
    assert clock.event_watermark == max_ts - grace
    assert PartitionClock.decode(grace, clock.encode()) == clock
    assert PartitionClock.decode(grace, str(max_ts).encode()) == PartitionClock(grace, max_ts)  # old encoding
    assert PartitionClock.decode(grace, b"") == PartitionClock(grace) and not PartitionClock(grace).raise_floor(0)


def test_an_event_that_would_have_joined_a_wall_clock_closed_session_is_late() -> None:
    computer = FeatureComputer(GAP_SPEC)  # session gap 10, grace 100
    clock = PartitionClock(GAP_SPEC.grace_ms)
    store: dict[str, bytes] = {}
    result = process_batch(computer, clock, [ev(0, 1000, 1.0, "a"), ev(1, 1004, 2.0, "a")], store)
    store.update(result.states)  # type: ignore[arg-type]
    assert clock.watermark == 904 and not result.closed
    assert clock.raise_floor(1015)  # the wall clock passed 1004 + gap: a's session can close
    swept, changed = close_sessions(computer, sorted(store.items()), clock.watermark,  # type: ignore[arg-type]
                                    clock.event_watermark)
    assert [(s.entity, s.start, s.end, s.row, s.closed_by) for s in swept] == [
        ("a", 1000, 1004, (2, 3.0, 2.0), "wall_clock")]
    store.update({k: v for k, v in changed.items() if v is not None})
    # 1010 was on time for event time alone (watermark 904) and would have joined [1000, 1004]:
    # it is late now. 1015 is on time and starts a new session; nothing reopens the reported one.
    later = process_batch(computer, clock, [ev(2, 1010, 4.0, "a"), ev(3, 1015, 8.0, "a")], store)
    assert later.late == [0]
    assert later.rows.tolist() == [[1, 8.0, 8.0]]
    assert clock.encode() == b"1015/1015" and clock.watermark == 1015
    store.update(later.states)  # type: ignore[arg-type]
    # A session the event-time watermark closes is labelled so, floor or not.
    last = process_batch(computer, clock, [ev(4, 1200, None, "a")], store)
    assert [(s.start, s.closed_by) for s in last.closed] == [(1015, "watermark")]


def run_with_floors(events: list[dict[str, Any]], batch: int, raises: dict[int, int]
                    ) -> tuple[dict[int, Any], list[int], list[ClosedSession], dict[str, bytes], PartitionClock]:
    """One partition, `batch` events at a time; before the batch starting at index i, if
    `raises` has i, the floor is raised to watermark + raises[i] and the whole store swept (what
    the engine's idle close does). Returns rows, late indices, every reported session, store, clock."""
    clock = PartitionClock(SPEC.grace_ms)
    store: dict[str, bytes] = {}
    rows: dict[int, Any] = {}
    late: list[int] = []
    reported: list[ClosedSession] = []

    def apply(states: dict[str, bytes | None]) -> None:
        for key, raw in states.items():
            if raw is None:
                store.pop(key, None)
            else:
                store[key] = raw

    for start in range(0, len(events), batch):
        if start in raises and clock.watermark is not None:
            clock.raise_floor(clock.watermark + raises[start])
            swept, changed = close_sessions(COMPUTER, sorted(store.items()), clock.watermark,
                                            clock.event_watermark)
            for s in swept:
                assert s.end + s.window.size_ms < clock.watermark
                assert (s.closed_by == "watermark") == (s.end + s.window.size_ms < clock.event_watermark)  # type: ignore[operator]
            reported.extend(swept)
            apply(changed)
        result = process_batch(COMPUTER, clock, events[start:start + batch], store)
        for j, i in enumerate(result.scored):
            rows[start + i] = result.rows[j]
        late.extend(start + i for i in result.late)
        reported.extend(result.closed)
        apply(result.states)
    return rows, late, reported, store, clock


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_logs(max_events=60, users=3), st.sampled_from([1, 3, 8]), st.data())
def test_raising_the_floor_changes_when_sessions_are_reported_never_what(
        events: list[dict[str, Any]], batch: int, data: st.DataObject) -> None:
    starts = range(batch, len(events), batch)  # a raise before any batch but the first
    raises = data.draw(st.dictionaries(st.sampled_from(starts), st.integers(1, 200), max_size=6)) if starts else {}
    rows, late, reported, store, clock = run_with_floors(events, batch, raises)
    # The same log minus the events the floor made late, without a floor: nothing else is late
    # (a late event changes nothing, so removing it changes nothing), and every row is the same.
    kept = [i for i in range(len(events)) if i not in set(late)]
    want: list[ClosedSession] = []
    want_rows, want_late, want_store = run_process_batch(
        SPEC, [events[i] for i in kept], batch, COMPUTER, on_batch=lambda result, end, s: want.extend(result.closed))
    assert want_late == []
    assert sorted(rows) == kept
    for j, i in enumerate(kept):
        assert_rows_equal(rows[i], want_rows[j], SPEC.names, f"event {i} {events[i]}")
    # Every session is reported once with the same end and row: those the floor closed early, and
    # those still open at the end (closed here by a final sweep at the end of time), included.
    rest, _ = close_sessions(COMPUTER, sorted(store.items()), END_OF_TIME)
    want_rest, _ = close_sessions(COMPUTER, sorted(want_store.items()), END_OF_TIME)
    assert_closed_equal(closed_by_key(reported + rest), closed_by_key(want + want_rest), SPEC.names)
    # A "watermark" report is one the offline rule (the final event-time watermark) closes too.
    final = clock.event_watermark
    for s in reported:
        if s.closed_by == "watermark":
            assert final is not None and s.end + s.window.size_ms < final, s
