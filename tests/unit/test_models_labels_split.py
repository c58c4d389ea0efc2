"""Labels by event time and the time-gapped split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.labels import LabelDefinition, censor_mask, purchase_within, purchase_within_events
from models.split import SplitError, time_gapped_split

H = 100


def oracle(users: list[str], ts: list[int], types: list[str], h: int) -> list[int]:
    return [
        int(any(users[j] == users[i] and types[j] == "purchase" and ts[i] < ts[j] <= ts[i] + h
                for j in range(len(ts))))
        for i in range(len(ts))
    ]


def test_hand_built_cases_and_horizon_edges() -> None:
    users = ["a", "a", "a", "a", "b", "b", "a"]
    ts = np.array([1000, 1050, 1100, 1101, 1000, 1100, 900], dtype=np.int64)
    types = ["view", "view", "purchase", "view", "view", "purchase", "view"]
    got = purchase_within(users, ts, types, H)
    # a@1000: purchase at 1100 = ts+H -> included (closed right end)
    # a@1050: 1100 within (1050, 1150]
    # a@1100 (the purchase itself): needs a *later* purchase -> 0
    # a@1101: nothing after -> 0
    # b@1000: b's purchase at 1100 = ts+H -> 1; b@1100 itself -> 0
    # a@900: 1100 > 900+100 -> 0 (just outside)
    assert got.tolist() == [1, 1, 0, 0, 1, 0, 0]
    assert got.dtype == np.int8


def test_purchase_at_same_timestamp_does_not_count() -> None:
    got = purchase_within(["u", "u"], np.array([5, 5]), ["view", "purchase"], H)
    assert got.tolist() == [0, 0]


def test_arrival_order_is_irrelevant() -> None:
    rng = np.random.default_rng(1)
    n = 400
    users = [f"u{k}" for k in rng.integers(0, 20, n)]
    ts = rng.integers(0, 2_000, n).astype(np.int64)
    types = ["purchase" if r < 0.1 else "view" for r in rng.random(n)]
    base = purchase_within(users, ts, types, H)
    perm = rng.permutation(n)
    shuffled = purchase_within([users[i] for i in perm], ts[perm], [types[i] for i in perm], H)
    assert np.array_equal(shuffled, base[perm])
    assert base.tolist() == oracle(users, ts.tolist(), types, H)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 400), st.booleans()), max_size=40),
       st.integers(1, 200))
def test_matches_brute_force_oracle(events: list[tuple[str, int, bool]], h: int) -> None:
    users = [e[0] for e in events]
    ts = np.array([e[1] for e in events], dtype=np.int64)
    types = ["purchase" if e[2] else "click" for e in events]
    assert purchase_within(users, ts, types, h).tolist() == oracle(users, ts.tolist(), types, h)


def test_rows_labelled_from_a_larger_event_set() -> None:
    # feature rows exist only for on-time events; the late purchase (no row) must still count
    rows_u, rows_ts = ["a", "b", "a"], np.array([100, 100, 300])
    ev_u = ["a", "b", "a", "a", "c"]
    ev_ts = np.array([100, 100, 300, 150, 120])
    ev_types = ["view", "view", "view", "purchase", "purchase"]
    assert purchase_within_events(rows_u, rows_ts, ev_u, ev_ts, ev_types, H).tolist() == [1, 0, 0]
    assert purchase_within_events(rows_u, rows_ts, ev_u, ev_ts, ["view"] * 5, H).tolist() == [0, 0, 0]
    rng = np.random.default_rng(3)
    users = [f"u{k}" for k in rng.integers(0, 10, 300)]
    ts = rng.integers(0, 1_000, 300).astype(np.int64)
    types = ["purchase" if r < 0.2 else "view" for r in rng.random(300)]
    full = purchase_within(users, ts, types, H)
    subset = rng.choice(300, 120, replace=False)
    got = purchase_within_events([users[i] for i in subset], ts[subset], users, ts, types, H)
    assert np.array_equal(got, full[subset])


def test_label_input_validation() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        purchase_within(["a"], np.array([1, 2]), ["view", "view"], H)
    with pytest.raises(ValueError, match="horizon_ms"):
        purchase_within(["a"], np.array([1]), ["view"], 0)
    with pytest.raises(ValueError, match="integer"):
        purchase_within(["a"], np.array([1.5]), ["view"], H)
    assert purchase_within([], np.array([], dtype=np.int64), [], H).shape == (0,)


def test_censor_mask() -> None:
    ts = np.array([0, 899, 900, 901, 1000])
    assert censor_mask(ts, H, data_end_ms=1000).tolist() == [False, False, False, True, True]


def test_label_definition_round_trip() -> None:
    d = LabelDefinition(horizon_ms=3_600_000)
    assert LabelDefinition.from_dict(d.to_dict()) == d
    with pytest.raises(ValueError):
        LabelDefinition(horizon_ms=0)


def test_split_is_time_ordered_with_gap() -> None:
    rng = np.random.default_rng(0)
    ts = rng.integers(0, 100_000, 5_000).astype(np.int64)  # arbitrary order
    s = time_gapped_split(ts, horizon_ms=2_000, test_fraction=0.25)
    train_ts, test_ts = ts[s.train], ts[s.test]
    assert np.all(np.diff(train_ts) >= 0) and np.all(np.diff(test_ts) >= 0)  # event-time order
    assert train_ts.max() < s.cut_ms - s.gap_ms  # a training label window ends before the test period
    assert train_ts.max() + 2_000 < test_ts.min()
    assert test_ts.min() == s.cut_ms and s.gap_ms == 2_000
    assert abs(len(s.test) - 1_250) < 20
    assert len(s.train) + len(s.test) + s.n_dropped == len(ts)
    assert set(s.train.tolist()).isdisjoint(s.test.tolist())
    assert s.describe()["gap_rows_dropped"] == s.n_dropped


def test_split_ties_at_cut_go_to_test_and_explicit_gap() -> None:
    ts = np.array([0, 10, 20, 30, 30, 30, 40], dtype=np.int64)
    s = time_gapped_split(ts, horizon_ms=1_000, test_fraction=0.3, gap_ms=5)
    assert ts[s.test].tolist() == [30, 30, 30, 40]
    assert ts[s.train].tolist() == [0, 10, 20]  # 20 < 30 - 5


def test_split_errors_when_a_side_is_empty() -> None:
    ts = np.arange(0, 1_000, 10, dtype=np.int64)
    with pytest.raises(SplitError, match="no training rows"):
        time_gapped_split(ts, horizon_ms=5_000)
    with pytest.raises(SplitError):
        time_gapped_split(np.full(10, 7), horizon_ms=0)
    with pytest.raises(ValueError, match="test_fraction"):
        time_gapped_split(ts, horizon_ms=1, test_fraction=1.0)
