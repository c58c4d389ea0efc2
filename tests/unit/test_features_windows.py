"""Hand-computed expectations for every window kind and aggregation (docs/features.md).

Times are written as offsets from T (a multiple of every window size used). Each test states the
window an event reads, so an expectation can be checked by reading the contract alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from features.clickstream import clickstream_spec
from features.compute import FeatureComputer
from features.executor import PartitionClock, expired_keys, process_batch
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

T = 1_700_000_000_000  # a multiple of 100 and of 10
NAN = math.nan


def ev(t: int, etype: str = "a", price: float | None = None, user: str = "u", session: str | None = None,
       product: str | None = None, device: str | None = None) -> dict[str, Any]:
    return {"event_id": f"{user}@{t}", "user_id": user, "session_id": session, "event_type": etype, "ts": T + t,
            "page": None, "product_id": product, "price": price, "device": device, "country": None, "referrer": None}


def run(spec: FeatureSpec, events: list[dict[str, Any]], batch: int | None = None,
        computer: FeatureComputer | None = None) -> tuple[list[list[float] | None], dict[str, bytes]]:
    """Rows in input order (None for a late event) and the final store, one partition."""
    computer = computer or FeatureComputer(spec)
    clock = PartitionClock(spec.grace_ms)
    store: dict[str, bytes] = {}
    out: list[list[float] | None] = []
    batch = batch or len(events)
    for s in range(0, len(events), batch):
        chunk = events[s : s + batch]
        res = process_batch(computer, clock, chunk, store)
        rows = dict(zip(res.scored, res.rows.tolist()))
        out.extend(rows.get(i) for i in range(len(chunk)))
        for k, raw in res.states.items():
            if raw is None:
                store.pop(k, None)
            else:
                store[k] = raw
    return out, store


def same(got: list[float] | None, want: list[float]) -> bool:
    assert got is not None, "event was late"
    g = np.asarray(got, np.float32)
    w = np.asarray(want, np.float32)
    return bool(((np.isnan(g) & np.isnan(w)) | (g.view(np.uint32) == w.view(np.uint32))).all())


def check(rows: list[list[float] | None], expected: list[list[float] | None]) -> None:
    assert len(rows) == len(expected)
    for i, (got, want) in enumerate(zip(rows, expected)):
        if want is None:
            assert got is None, f"event {i} should be late"
        else:
            assert same(got, want), f"event {i}: got {got}, want {want}"


def agg_spec(window: Window, grace: int = 100, ttl: int = 1000) -> FeatureSpec:
    return FeatureSpec(
        "w",
        (
            Aggregate("n", "count", window),
            Aggregate("sum", "sum", window, "price"),
            Aggregate("mean", "mean", window, "price"),
            Aggregate("min", "min", window, "price"),
            Aggregate("max", "max", window, "price"),
            Aggregate("distinct", "distinct", window, "product_id"),
            Aggregate("last", "last", window, "price"),
        ),
        grace_ms=grace,
        idle_ttl_ms=ttl,
    )


# --- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, None])
def test_tumbling(batch: int | None) -> None:
    spec = agg_spec(Window.tumbling(100))
    events = [
        ev(10, price=1.0, product="x"),  # [T, T+100)
        ev(99, price=2.0, product="y"),  # [T, T+100)
        ev(100, price=4.0, product="x"),  # on the boundary: [T+100, T+200)
        ev(50, price=8.0, product="x"),  # out of order, inside grace (wm = T): [T, T+100) again
        ev(250),  # [T+200, T+300), price null; max_ts T+250 -> watermark T+150
        ev(120, price=16.0),  # 120 < 150: late, changes nothing
        ev(199, price=0.5, product="z"),  # [T+100, T+200): events at 100 and 199
        ev(150, "b"),  # ts == watermark: not late; [T+100, T+200)
    ]
    rows, _ = run(spec, events, batch)
    check(rows, [
        [1, 1.0, 1.0, 1.0, 1.0, 1, 1.0],
        [2, 3.0, 1.5, 1.0, 2.0, 2, 2.0],
        [1, 4.0, 4.0, 4.0, 4.0, 1, 4.0],
        # 1 + 2 + 8 (processing order); "last" is the greatest *event time* (T+99), not the
        # last processed (T+50).
        [3, 11.0, 11.0 / 3, 1.0, 8.0, 2, 2.0],
        [1, 0.0, NAN, NAN, NAN, 0, NAN],
        None,
        [2, 4.5, 2.25, 0.5, 4.0, 2, 0.5],  # the late T+120 (16.0) is not there
        [3, 4.5, 2.25, 0.5, 4.0, 2, 0.5],  # a null price is counted but not summed
    ])


@pytest.mark.parametrize("batch", [1, 3, None])
def test_hopping_reads_the_oldest_window_containing_ts(batch: int | None) -> None:
    # hopping(30, 10): the window of ts is [p - 20, p + 10) with p = floor(ts / 10) * 10.
    spec = agg_spec(Window.hopping(30, 10))
    events = [
        ev(5, price=1.0, product="x"),  # [T-20, T+10): e0
        ev(10, price=2.0, product="y"),  # [T-10, T+20): e0 e1
        ev(29, product="y"),  # [T, T+30): e0 e1 e2
        ev(30, price=4.0, product="z"),  # [T+10, T+40): e1 e2 e3 (e0 dropped out)
        ev(9, price=8.0),  # out of order: [T-20, T+10): e0 e4 (e1 at T+10 is past the end)
        ev(59, price=16.0),  # [T+30, T+60): e3 e5
        ev(39, price=32.0, product="x"),  # [T+10, T+40): e1 e2 e3 e6
    ]
    rows, _ = run(spec, events, batch)
    check(rows, [
        [1, 1.0, 1.0, 1.0, 1.0, 1, 1.0],
        [2, 3.0, 1.5, 1.0, 2.0, 2, 2.0],
        [3, 3.0, 1.5, 1.0, 2.0, 2, 2.0],  # null price: last stays the T+10 value
        [3, 6.0, 3.0, 2.0, 4.0, 2, 4.0],
        [2, 9.0, 4.5, 1.0, 8.0, 1, 8.0],
        [2, 20.0, 10.0, 4.0, 16.0, 1, 16.0],
        [4, 38.0, 38.0 / 3, 2.0, 32.0, 3, 32.0],  # panes [10,20)=2, [20,30)=0, [30,40)=4+32
    ])


@pytest.mark.parametrize("batch", [1, 4, None])
def test_sliding_is_continuous_and_ignores_later_times(batch: int | None) -> None:
    # sliding(10): the window of ts is (ts - 10, ts].
    spec = agg_spec(Window.sliding(10))
    events = [
        ev(0, price=1.0, product="x"),  # (T-10, T]: e0
        ev(5, price=2.0, product="x"),  # e0 e1
        ev(10, price=4.0, product="y"),  # (T, T+10]: e1 e2 (T itself is excluded)
        ev(10, price=8.0),  # duplicate time: e1 e2 e3
        ev(3, price=16.0),  # out of order: (T-7, T+3]: e0 e4 (later events are not visible)
        ev(20, product="z"),  # (T+10, T+20]: e5 only
        ev(19, price=0.5),  # (T+9, T+19]: e2 e3 e6
    ]
    rows, _ = run(spec, events, batch)
    check(rows, [
        [1, 1.0, 1.0, 1.0, 1.0, 1, 1.0],
        [2, 3.0, 1.5, 1.0, 2.0, 1, 2.0],
        [2, 6.0, 3.0, 2.0, 4.0, 2, 4.0],
        [3, 14.0, 14.0 / 3, 2.0, 8.0, 2, 8.0],  # tie on ts: the one processed last wins "last"
        [2, 17.0, 8.5, 1.0, 16.0, 1, 16.0],
        [1, 0.0, NAN, NAN, NAN, 1, NAN],
        [3, 12.5, 12.5 / 3, 0.5, 8.0, 1, 0.5],  # panes ascending: T+10 (4+8), then T+19 (0.5)
    ])


def test_where_filters_and_ratio() -> None:
    w = Window.tumbling(100)
    spec = FeatureSpec("f", (
        Aggregate("n", "count", w),
        Aggregate("n_a", "count", w, where=("a",)),
        Aggregate("sum_ab", "sum", w, "price", where=("b", "a")),
        Aggregate("min_b", "min", w, "price", where=("b",)),
        Aggregate("last_c", "last", w, "price", where=("c",)),
        Aggregate("distinct_b", "distinct", w, "session_id", where=("b",)),
        Ratio("a_share", "n_a", "n"),
        Ratio("per_b", "sum_ab", "min_b"),
    ), grace_ms=100, idle_ttl_ms=1000)
    rows, _ = run(spec, [
        ev(1, "c", 5.0, session="s1"),
        ev(2, "a", 1.0, session="s1"),
        ev(3, "b", 0.0, session="s2"),
        ev(4, "b", 2.0, session="s2"),
        ev(5, "c", None, session=None),
    ])
    check(rows, [
        [1, 0, 0.0, NAN, 5.0, 0, 0.0, NAN],  # ratio over a NaN denominator: NaN
        [2, 1, 1.0, NAN, 5.0, 0, 0.5, NAN],
        [3, 1, 1.0, 0.0, 5.0, 1, 1 / 3, NAN],  # denominator 0: NaN
        [4, 1, 3.0, 0.0, 5.0, 1, 0.25, NAN],
        [5, 1, 3.0, 0.0, 5.0, 1, 0.2, NAN],  # c with a null price: last_c keeps 5.0
    ])


def test_entity_features_recency_session_current_onehot_and_idle_ttl() -> None:
    spec = FeatureSpec("e", (
        Recency("rec"),
        Recency("rec_a", where=("a",)),
        SessionDepth("depth"),
        CurrentValue("price", "price"),
        OneHot("event_type", ("a", "b")),
        OneHot("device", ("mobile",)),
        Aggregate("n", "count", Window.tumbling(100)),
    ), grace_ms=100, idle_ttl_ms=100)
    rows, _ = run(spec, [
        ev(0, "a", 1.5, session="s1", device="mobile"),
        ev(40, "b", session="s1"),
        ev(30, "b", 2.0, session="s1"),  # out of order: recency max(0, 30 - 40) = 0
        ev(50, "a", session="s2"),  # new session
        ev(60, "a", session=None),
        ev(70, "c", session=None),  # null == null: the same session goes on
        ev(170, "b", session=None),  # 170 - 70 = 100 = ttl: not idle yet
        ev(271, "b", session=None),  # 271 - 170 = 101 > ttl: memory forgotten first
        ev(272, "a", session=None),
    ], batch=1)
    check(rows, [
        [NAN, NAN, 1, 1.5, 1, 0, 1, 1],
        [0.04, 0.04, 2, NAN, 0, 1, 0, 2],
        [0.0, 0.03, 3, 2.0, 0, 1, 0, 3],
        [0.01, 0.05, 1, NAN, 1, 0, 0, 4],
        [0.01, 0.01, 1, NAN, 1, 0, 0, 5],
        [0.01, 0.01, 2, NAN, 0, 0, 0, 6],
        [0.1, 0.11, 3, NAN, 0, 1, 0, 1],
        [NAN, NAN, 1, NAN, 0, 1, 0, 1],
        [0.001, NAN, 2, NAN, 1, 0, 0, 2],
    ])


# --- lateness --------------------------------------------------------------------------------


def test_late_event_changes_no_state_and_first_event_is_never_late() -> None:
    spec = agg_spec(Window.hopping(200, 100), grace=50)
    head = [ev(1000, price=1.0), ev(900, price=2.0, user="v")]  # 900 < 1000 - 50 but "v" is new: still late
    computer = FeatureComputer(spec)
    clock = PartitionClock(spec.grace_ms)
    res = process_batch(computer, clock, [ev(0, price=1.0, user="w")], {})
    assert res.late == [] and res.scored == [0]  # the first event of a partition is never late
    clock = PartitionClock(spec.grace_ms)
    res = process_batch(computer, clock, head, {})
    assert res.scored == [0] and res.late == [1]  # lateness is per partition, not per entity
    assert set(res.states) == {"u"}
    store = dict(res.states)
    res2 = process_batch(computer, clock, [ev(949, price=64.0), ev(950, price=4.0), ev(1001, price=8.0)], store)
    assert res2.late == [0] and res2.scored == [1, 2]  # 949 < watermark 950 <= 950
    # T+950 reads [T+800, T+1000); T+1001 reads [T+900, T+1100); the late 64.0 is nowhere.
    assert res2.rows[:, :2].tolist() == [[1.0, 4.0], [3.0, 13.0]]
    assert clock.max_ts == T + 1001


def test_late_events_leave_stored_state_untouched() -> None:
    spec = agg_spec(Window.sliding(50), grace=10)
    computer = FeatureComputer(spec)
    clock = PartitionClock(spec.grace_ms)
    res = process_batch(computer, clock, [ev(100, price=1.0)], {})
    store = dict(res.states)
    res = process_batch(computer, clock, [ev(80, price=9.0), ev(89, price=9.0)], store)
    assert res.late == [0, 1] and res.states == {} and res.rows.shape == (0, spec.width)
    assert clock.max_ts == T + 100


# --- expiry ----------------------------------------------------------------------------------


def test_expiry_prunes_panes_and_deletes_idle_records() -> None:
    spec = FeatureSpec("x", (
        Aggregate("n_s", "count", Window.sliding(30)),
        Aggregate("n_h", "count", Window.hopping(40, 10)),
        Aggregate("n_t", "count", Window.tumbling(50)),
        Recency("rec"),
    ), grace_ms=0, idle_ttl_ms=60)
    computer = FeatureComputer(spec)
    clock = PartitionClock(0)
    res = process_batch(computer, clock, [ev(t) for t in (0, 5, 12, 31, 44)], {})
    state = computer.decode(res.states["u"])
    # watermark T+44. sliding: panes >= 44 - 30 + 1 = 15 -> {31, 44}; hopping: the window of T+44
    # covers panes from T+10 -> {10, 30, 40}; tumbling: the window of T+44 is [T, T+50) -> {0}.
    assert computer.pane_starts(state) == [[T + 31, T + 44], [T + 10, T + 30, T + 40], [T]]
    # Another entity moves the partition's watermark to T+200: u's panes are all unreadable, and
    # 200 - 44 > 60: the record is deleted when u is touched in that batch.
    res = process_batch(computer, clock, [ev(45, user="u"), ev(200, user="v")], res.states)
    assert res.states["u"] is None
    assert computer.pane_starts(computer.decode(res.states["v"])) == [[T + 200], [T + 200], [T + 200]]
    # Panes gone but not yet idle past the TTL: the record is kept (its recency memory matters).
    clock = PartitionClock(0)
    res = process_batch(computer, clock, [ev(0), ev(50, user="v")], {})
    state = computer.decode(res.states["u"])
    assert computer.pane_starts(state) == [[], [], []]
    res = process_batch(computer, clock, [ev(51)], res.states)
    assert res.rows[0].tolist() == [1.0, 1.0, 1.0, np.float32(0.051)]


@pytest.mark.parametrize(("v_at", "deleted"), [(60, False), (61, True)])
def test_idle_deletion_boundary(v_at: int, deleted: bool) -> None:
    # Deleted only when last_seen is *more* than idle_ttl behind the watermark.
    spec = FeatureSpec("x", (Aggregate("n", "count", Window.tumbling(50)), Recency("rec")), grace_ms=0, idle_ttl_ms=60)
    computer = FeatureComputer(spec)
    clock = PartitionClock(0)
    res = process_batch(computer, clock, [ev(0), ev(v_at, user="v")], {})
    assert (res.states["u"] is None) is deleted
    res = process_batch(computer, clock, [ev(v_at)], res.states)
    # At exactly the TTL the memory is kept (60 - 0 is not > 60); past it, it is forgotten.
    assert same(res.rows[0].tolist(), [1.0, NAN if deleted else 0.06])


def test_expiry_never_changes_values() -> None:
    spec = clickstream_spec()
    rng = np.random.default_rng(7)
    events = []
    t = 0
    for i in range(3000):
        t += int(rng.exponential(20 * 60_000)) if rng.random() < 0.1 else int(rng.integers(0, 30_000))
        ts = t - int(rng.integers(0, 90_000)) if rng.random() < 0.2 else t  # some late, some in grace
        e = ev(ts, str(rng.choice(["page_view", "product_view", "add_to_cart", "purchase", "search"])),
               None if rng.random() < 0.3 else float(rng.integers(1, 10_000)) / 100,
               user=f"u{rng.integers(0, 20)}", session=f"s{rng.integers(0, 5)}",
               product=f"p{rng.integers(0, 50)}", device=str(rng.choice(["mobile", "desktop"])))
        events.append(e)

    class NoPrune(FeatureComputer):
        def prune(self, state: list[Any], watermark: int, closed: Any = None) -> bool:
            return False

    keep_all, kept = run(spec, events, batch=25, computer=NoPrune(spec))
    for batch in (1, 25):
        pruned, store = run(spec, events, batch=batch)
        assert all((a is None) == (b is None) for a, b in zip(pruned, keep_all))
        got = np.asarray([r for r in pruned if r is not None], np.float32)
        want = np.asarray([r for r in keep_all if r is not None], np.float32)
        assert got.tobytes() == want.tobytes() or np.array_equal(got, want, equal_nan=True)
        assert sum(map(len, store.values())) < sum(map(len, kept.values()))


# --- state -----------------------------------------------------------------------------------


def test_state_encode_decode_round_trip() -> None:
    spec = clickstream_spec()
    computer = FeatureComputer(spec)
    state = computer.new_state()
    for i, t in enumerate((0, 1000, 400_000, 3_600_000, 86_400_000 + 5)):
        computer.update(state, ev(t, ("product_view", "add_to_cart", "purchase")[i % 3], 0.1 * (i + 1),
                                  session=f"s{i % 2}", product=f"p{i}", device="mobile"))
    raw = computer.encode(state)
    assert isinstance(raw, bytes)
    back = computer.decode(raw)
    assert computer.encode(back) == raw
    a, b = computer.decode(raw), computer.decode(raw)
    nxt = ev(86_400_000 + 9, "add_to_cart", 2.5, session="s1", product="p1")
    assert same(computer.update(a, nxt), computer.update(b, dict(nxt)))
    assert computer.encode(a) == computer.encode(b)


def test_decode_rejects_foreign_layouts() -> None:
    computer = FeatureComputer(clickstream_spec())
    for raw in (b"[]", b"{}", b"[999, 1]", b"7"):
        with pytest.raises(ValueError, match="layout"):
            computer.decode(raw)


def test_expired_keys_finds_untouched_dead_records_and_deleting_them_changes_nothing() -> None:
    spec = FeatureSpec("x", (Aggregate("n", "count", Window.tumbling(50)), Recency("rec")),
                       grace_ms=0, idle_ttl_ms=60)
    computer = FeatureComputer(spec)
    stored = process_batch(computer, PartitionClock(0), [ev(0, user="a"), ev(30, user="b")], {}).states
    records = [(k, v) for k, v in stored.items() if v is not None]
    assert [k for k, _ in records] == ["a", "b"]  # alive at the batch's watermark T+30
    # Later watermarks, the records untouched. T+40: nobody idle past 60. T+90: a idle 90 and its
    # pane [T, T+50) unreadable (an event at T+90 reads [T+50, T+100)): dead; b idle exactly 60:
    # not yet. T+100: b idle 70: dead too.
    assert expired_keys(computer, records, T + 40) == []
    assert expired_keys(computer, records, T + 90) == ["a"]
    assert expired_keys(computer, records, T + 100) == ["a", "b"]
    # Deleting a dead record changes no feature value: the next event reads as on a fresh entity.
    kept = process_batch(computer, PartitionClock(0, T + 100), [ev(101, user="a")], stored).rows
    fresh = process_batch(computer, PartitionClock(0, T + 100), [ev(101, user="a")], {}).rows
    assert kept.tobytes() == fresh.tobytes()


# --- float32 range (issue 12, item 3) ---------------------------------------------------------


FLT_MAX = float(np.finfo(np.float32).max)


@pytest.mark.filterwarnings("error")  # the old cast warned "overflow encountered in cast"
def test_values_beyond_float32_saturate_without_inf_or_warning() -> None:
    """Each price is in range (<= the largest float32), but their sum, and a ratio over a tiny
    denominator, are not: the row holds +-FLOAT32_MAX, never inf, and the stored state keeps the
    exact float64 sums (so the next event's values are still right)."""
    w = Window.tumbling(100)
    spec = FeatureSpec("big", (
        Aggregate("sum", "sum", w, "price"),
        Aggregate("mean", "mean", w, "price"),
        Aggregate("max", "max", w, "price"),
        Aggregate("min", "min", w, "price"),
        Ratio("sum_per_min", "sum", "min"),
        CurrentValue("price", "price"),
    ), grace_ms=100, idle_ttl_ms=1000)
    rows, store = run(spec, [ev(1, price=FLT_MAX), ev(2, price=FLT_MAX), ev(3, price=1e-300), ev(150, price=2.0)])
    check(rows, [
        [FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX, 1.0, FLT_MAX],
        [FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX, 2.0, FLT_MAX],  # sum 6.8e38: beyond float32 (the
        # ratio divides the float64 values, before the row saturates: 6.8e38 / 3.4e38)
        [FLT_MAX, 2 * FLT_MAX / 3, FLT_MAX, 0.0, FLT_MAX, 0.0],  # 6.8e38 / 1e-300: inf in float64
        [2.0, 2.0, 2.0, 2.0, 1.0, 2.0],  # a new window: back in range
    ])
    computer = FeatureComputer(spec)
    panes = computer.decode(store["u"])[computer._panes_at]
    assert all(math.isfinite(x) for pane in panes for x in pane[1:] if isinstance(x, float)), panes


@pytest.mark.filterwarnings("error")
def test_float32_rows_saturates_exactly_like_clipping_in_float64() -> None:
    from features.executor import FLOAT32_MAX, float32_rows

    assert FLOAT32_MAX == FLT_MAX
    values = [1.7e308, -1.7e308, math.inf, -math.inf, NAN, FLT_MAX, -FLT_MAX, 3.4028235677973366e38,
              3.4028235e38 * (1 + 2**-30), 1e-300, 0.0, 1.5]
    got = float32_rows([values, values[::-1]], len(values))
    want = np.clip(np.array([values, values[::-1]], np.float64), -FLT_MAX, FLT_MAX).astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (2, len(values))
    assert ((np.isnan(got) & np.isnan(want)) | (got.view(np.uint32) == want.view(np.uint32))).all()
    assert not np.isinf(got).any()
    assert float32_rows([], 3).shape == (0, 3)
