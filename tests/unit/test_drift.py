"""models.drift: statistics on known distributions, vectorised binning, calibrated null thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import drift
from models.profile import binned_ks, build_profile, psi


def test_psi_known_value_and_empty_bins_contribute_nothing() -> None:
    p = np.array([0, 50, 50])  # NaN bin first
    q = np.array([0, 25, 75])
    expected = (0.25 - 0.5) * math.log(0.5) + (0.75 - 0.5) * math.log(1.5)
    assert drift.psi(p, q) == pytest.approx(expected, rel=1e-12)
    assert drift.psi(p, p) == 0.0


def test_js_known_values_in_bits() -> None:
    assert drift.js_divergence(np.array([0, 5, 5]), np.array([0, 5, 5])) == pytest.approx(0.0)
    assert drift.js_divergence(np.array([0, 1, 0]), np.array([0, 0, 1])) == pytest.approx(1.0)
    # p = (.5, .5), q = (1, 0): m = (.75, .25)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    kl_q = math.log2(1 / 0.75)
    assert drift.js_divergence(np.array([0, 1, 1]), np.array([0, 2, 0])) == pytest.approx(0.5 * (kl_p + kl_q))


def test_ks_ignores_the_nan_bin_and_takes_the_largest_cdf_gap() -> None:
    p = np.array([100, 25, 25, 25, 25])
    q = np.array([0, 50, 25, 25, 0])
    assert drift.binned_ks(p, q) == pytest.approx(0.25)  # CDFs .25/.5/.75/1 vs .5/.75/1/1


def test_statistics_are_vectorised_over_rows() -> None:
    rng = np.random.default_rng(1)
    P = rng.integers(0, 50, size=(6, 9))
    Q = rng.integers(0, 50, size=(6, 9))
    stats = drift.statistics(P, Q)
    for i in range(6):
        assert stats["psi"][i] == pytest.approx(drift.psi(P[i], Q[i]))
        assert stats["js"][i] == pytest.approx(drift.js_divergence(P[i], Q[i]))
        assert stats["ks"][i] == pytest.approx(drift.binned_ks(P[i], Q[i]))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 400), shift=st.floats(-2, 2))
def test_count_matrix_matches_the_profile_functions(seed: int, n: int, shift: float) -> None:
    """Counting a batch with ReferenceBins gives the same PSI and KS as models.profile on the raw
    values (NaN in its own bin, +-inf in the outer bins)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(500, 3))
    X[:, 1] = rng.poisson(1.5, 500)
    X[rng.random(X.shape) < 0.1] = np.nan
    scores = rng.random(500)
    profile = build_profile(X, ["a", "b", "c"], scores=scores)
    bins = drift.ReferenceBins.from_profile(profile, ["a", "b", "c"])
    assert bins.names == ("a", "b", "c", drift.SCORE)
    live = rng.normal(shift, 1.0, size=(n, 3))
    live[rng.random(live.shape) < 0.2] = np.nan
    live[rng.random(live.shape) < 0.05] = np.inf
    live_scores = rng.random(n)
    counts = bins.count(live.astype(np.float32), live_scores)
    assert counts.sum(axis=1).tolist() == [n] * 4
    for c, name in enumerate(("a", "b", "c")):
        col = live[:, c].astype(np.float32)
        assert drift.psi(bins.ref_counts[c], counts[c]) == pytest.approx(psi(profile["features"][name], col))
        if (~np.isnan(col)).any():
            assert drift.binned_ks(bins.ref_counts[c], counts[c]) == pytest.approx(
                binned_ks(profile["features"][name], col))
    assert drift.psi(bins.ref_counts[3], counts[3]) == pytest.approx(psi(profile["score"], live_scores))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 600), n_bins=st.integers(2, 20))
def test_count_puts_every_value_in_its_searchsorted_bin(seed: int, n: int, n_bins: int) -> None:
    """The vectorised count equals the definition: NaN in bin 0, else 1 + searchsorted(cuts, v,
    side="right"), per column, with ties on cuts (discrete columns) and +-inf."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(size=400), rng.poisson(1.0, 400), rng.integers(0, 3, 400)]).astype(np.float64)
    scores = rng.random(400)
    bins = drift.ReferenceBins.from_profile(build_profile(X, ["a", "b", "c"], scores=scores, n_bins=n_bins),
                                            ["a", "b", "c"])
    live = np.column_stack([rng.normal(size=n), rng.poisson(1.0, n), rng.integers(-1, 4, n)]).astype(np.float32)
    live[rng.random(live.shape) < 0.1] = np.nan
    live[rng.random(live.shape) < 0.05] = np.inf
    live[rng.random(live.shape) < 0.05] = -np.inf
    live_scores = rng.random(n)
    live_scores[rng.random(n) < 0.1] = np.nan
    counts = bins.count(live, live_scores)
    cols = [live[:, 0], live[:, 1], live[:, 2], live_scores]
    for c, values in enumerate(cols):
        v = np.asarray(values, dtype=np.float64)
        expect = np.zeros(bins.width, dtype=np.int64)
        expect[0] = int(np.isnan(v).sum())
        got = np.bincount(np.searchsorted(bins.cuts[c], v[~np.isnan(v)], side="right"), minlength=len(bins.cuts[c]) + 1)
        expect[1:1 + len(got)] = got
        assert counts[c].tolist() == expect.tolist()


def test_accumulated_batches_equal_one_big_batch() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 2))
    bins = drift.ReferenceBins.from_profile(build_profile(X, ["x", "y"]), ["x", "y"])
    live = rng.normal(size=(1000, 2))
    whole = bins.count(live)
    parts = sum(bins.count(live[i:i + 97]) for i in range(0, 1000, 97))
    assert np.array_equal(whole, parts)


def test_profile_without_usable_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="no column"):
        drift.ReferenceBins.from_profile({"features": {}, "score": None}, ["a"])


def test_n_bucket_rounds_down_four_per_doubling() -> None:
    assert drift.n_bucket(1) == 1
    assert drift.n_bucket(1024) == 1024
    assert drift.n_bucket(1200) == 1024
    assert drift.n_bucket(1218) == 1217  # 2 ** 10.25
    for n in (3, 77, 999, 20_000, 123_456):
        b = drift.n_bucket(n)
        assert b <= n < b * 2 ** 0.25 + 1


def _reference(seed: int = 0, n_ref: int = 20_000) -> drift.ReferenceBins:
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(size=n_ref), rng.poisson(1.0, n_ref), rng.lognormal(2, 1, n_ref)])
    X[rng.random(n_ref) < 0.05, 0] = np.nan
    return drift.ReferenceBins.from_profile(build_profile(X, ["a", "b", "c"], scores=rng.beta(1, 9, n_ref)),
                                            ["a", "b", "c"])


@pytest.mark.parametrize("n", [512, 4_096])  # bucket sizes: thresholds are exact there
def test_calibrated_false_alarm_rate_is_near_alpha_on_stable_resamples(n: int) -> None:
    """Fresh null draws (reference and live from the same distribution) exceed the calibrated PSI
    threshold at about the per-column level alpha / m, and some column at about alpha."""
    bins = _reference()
    alpha = 0.2
    cal = drift.NullCalibration(bins, alpha=alpha, draws=2000, seed=1)
    thr = cal.thresholds(n)
    m = len(bins.names)
    p = bins.ref_counts / bins.ref_counts.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(99)
    reps = 4000
    ref = rng.multinomial(bins.n_ref, p, size=(reps, m))
    live = rng.multinomial(np.full(m, n), p, size=(reps, m))
    exceed = drift.psi(ref, live) > thr["psi"]
    per_column = exceed.mean(axis=0)
    assert np.all(np.abs(per_column - alpha / m) < 0.025), per_column
    family = exceed.any(axis=1).mean()
    assert 0.12 < family < 0.25, family


def test_thresholds_shrink_with_the_window_and_are_cached() -> None:
    cal = drift.NullCalibration(_reference(), alpha=0.01, draws=500)
    small, large = cal.thresholds(1_000), cal.thresholds(50_000)
    assert np.all(small["psi"] > large["psi"]) and np.all(small["js"] > large["js"])
    assert np.all(small["ks"] > large["ks"])
    assert cal.thresholds(1_020) is small  # same bucket (861..1023), no recalibration


def test_a_shifted_window_exceeds_and_a_stable_one_does_not() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 1))
    bins = drift.ReferenceBins.from_profile(build_profile(X, ["x"]), ["x"])
    cal = drift.NullCalibration(bins, alpha=0.01, draws=500)
    thr = cal.thresholds(5_000)["psi"][0]
    stable = drift.psi(bins.ref_counts[0], bins.count(rng.normal(size=(5_000, 1)))[0])
    shifted = drift.psi(bins.ref_counts[0], bins.count(rng.normal(0.5, 1, size=(5_000, 1)))[0])
    assert stable < thr < shifted
