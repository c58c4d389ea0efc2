"""Metrics on known cases; reference profile and PSI / binned KS."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from models.evaluate import evaluate, reliability_table
from models.profile import MIN_WARM_SHARE, binned_ks, build_profile, profile_column, psi, warm_rows


def test_metrics_on_known_case() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = evaluate(y, p)
    assert m.auc == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered correctly
    assert m.brier == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    assert m.log_loss == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4)
    assert m.base_rate == 0.5 and m.n == 4 and m.n_positive == 2
    assert m.mean_score == pytest.approx(0.4125)


def test_perfect_and_single_class() -> None:
    m = evaluate(np.array([0, 1, 0, 1]), np.array([0.0, 1.0, 0.0, 1.0]))
    assert m.auc == 1.0 and m.brier == 0.0 and m.ece == 0.0 and m.log_loss < 1e-12
    single = evaluate(np.zeros(5, dtype=int), np.full(5, 0.2))
    assert single.auc is None and single.ece == pytest.approx(0.2)


def test_ece_and_reliability_table() -> None:
    # bin [0.2, 0.3): 4 rows mean score 0.25, 1 positive -> rate 0.25, gap 0
    # bin [0.9, 1.0]: 2 rows score 0.9 and 1.0 (1.0 lands in the last bin), both 0 -> gap 0.95
    y = np.array([1, 0, 0, 0, 0, 0])
    p = np.array([0.25, 0.25, 0.25, 0.25, 0.9, 1.0])
    ece, table = reliability_table(y, p, n_bins=10)
    assert len(table) == 10
    assert table[2] == {"lo": pytest.approx(0.2), "hi": pytest.approx(0.3), "n": 4, "mean_score": 0.25,
                        "positive_rate": 0.25}
    assert table[9]["n"] == 2 and table[9]["mean_score"] == pytest.approx(0.95)
    assert table[0]["n"] == 0 and table[0]["mean_score"] is None
    assert ece == pytest.approx(2 / 6 * 0.95)
    assert evaluate(y, p).ece == pytest.approx(ece)
    orjson.dumps(evaluate(y, p).to_dict())


def test_evaluate_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        evaluate(np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError):
        evaluate(np.array([0, 2]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError):
        evaluate(np.array([]), np.array([]))


def test_profile_column_bins_stats_and_nan() -> None:
    v = np.concatenate([np.arange(1000, dtype=np.float64), [np.nan] * 10])
    e = profile_column(v, n_bins=10)
    assert e["cuts"] == [100.0 * k - 1 for k in range(1, 10)]
    assert e["counts"] == [99] + [100] * 8 + [101]  # bins are [cut_i, cut_i+1)
    assert e["nan_count"] == 10 and e["n"] == 1010
    assert e["min"] == 0 and e["max"] == 999 and e["mean"] == pytest.approx(499.5)
    discrete = profile_column(np.array([0, 0, 0, 1, 1, 2] * 50, dtype=float))
    assert discrete["cuts"] == [0.0, 1.0, 2.0] and discrete["counts"] == [0, 150, 100, 50]
    with_inf = profile_column(np.array([1.0, 2.0, 3.0, np.inf, -np.inf, np.nan]))
    assert with_inf["inf_count"] == 2 and with_inf["max"] == 3.0 and sum(with_inf["counts"]) == 5
    empty = profile_column(np.full(5, np.nan))
    assert empty["cuts"] == [] and empty["counts"] == [0] and empty["mean"] is None


def test_build_profile_is_json_serialisable() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    X[:, 2] = np.nan
    prof = build_profile(X, ["a", "b", "c"], scores=rng.random(500), n_bins=20)
    again = orjson.loads(orjson.dumps(prof))
    assert list(again["features"]) == ["a", "b", "c"] and again["n_rows"] == 500
    assert len(again["features"]["a"]["cuts"]) == 19 and again["features"]["c"]["nan_count"] == 500
    assert again["score"]["min"] >= 0
    with pytest.raises(ValueError):
        build_profile(X, ["a"])


def test_the_profile_leaves_out_cold_start_rows_unless_too_few_are_warm() -> None:
    """Rows before warm_from_ms (truncated windows at the start of the replay) are not profiled;
    when fewer than MIN_WARM_SHARE are warm, every row is (the profile says which)."""
    rng = np.random.default_rng(3)
    ts = np.arange(1_000) * 1_000
    X = rng.normal(size=(1_000, 2)).astype(np.float32)
    X[:300, 0] = 0.0  # cold start: empty windows
    scores = rng.random(1_000)
    prof = build_profile(X, ["a", "b"], scores=scores, ts=ts, warm_from_ms=300_000)
    assert prof["n_rows"] == 700 and prof["cold_rows"] == 300 and prof["warm_from_ms"] == 300_000
    assert prof["features"]["a"] == profile_column(X[300:, 0]) and prof["score"] == profile_column(scores[300:])
    assert build_profile(X, ["a", "b"], ts=ts, warm_from_ms=None)["n_rows"] == 1_000
    late = int(ts[int(len(ts) * (1 - MIN_WARM_SHARE)) + 1])  # fewer than the minimum share are warm
    every = build_profile(X, ["a", "b"], ts=ts, warm_from_ms=late)
    assert every["n_rows"] == 1_000 and every["cold_rows"] == 0 and every["warm_from_ms"] is None
    assert warm_rows(ts, 500_000).sum() == 500 and warm_rows(ts, late).all()


def test_psi_zero_for_same_distribution_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    entry = profile_column(ref)
    assert psi(entry, ref) == pytest.approx(0.0, abs=1e-12)
    assert psi(entry, rng.normal(size=20_000)) < 0.01
    small, big = psi(entry, rng.normal(0.2, 1, 20_000)), psi(entry, rng.normal(1.0, 1, 20_000))
    assert 0.02 < small < 0.1 < 0.25 < big
    assert binned_ks(entry, ref) == pytest.approx(0.0)
    assert binned_ks(entry, rng.normal(1.0, 1, 20_000)) > 0.3


def test_psi_known_value_and_nan_bin() -> None:
    entry = {"cuts": [0.5], "counts": [50, 50], "nan_count": 0}
    live = np.array([0.0] * 80 + [1.0] * 20)
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(entry, live) == pytest.approx(expected)
    # a live window that is suddenly 50 % missing is drift even if the present values look the same
    with_nan = np.array([0.0] * 25 + [1.0] * 25 + [np.nan] * 50)
    assert psi(entry, with_nan) > 0.25
    with pytest.raises(ValueError):
        psi(entry, np.array([]))
