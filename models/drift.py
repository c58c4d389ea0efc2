"""Drift statistics of live windows against a model's reference profile, and their null thresholds.

Pure numpy (no Kafka, no engine). The engine's monitors (engine/monitors.py) count a live
window's values into the reference bins batch by batch with `ReferenceBins.count` and compare
the counts with `compare` when the window closes.

Bins (see models/profile.py): a column's entry has interior cuts ``c_1 < ... < c_k``; a value v
is in value bin ``searchsorted(cuts, v, side="right")`` (0..k, the outer bins are open, so +-inf
land in the outer bins). Here every column gets one row of a count matrix with the layout::

    index 0        NaN
    index 1 + b    value bin b (b = 0..k)
    beyond k + 1   padding (always 0), so columns with fewer cuts share one [m, K] matrix

Statistics per column, from reference counts p and live counts q (fractions p̂, q̂):

- ``psi``: population stability index ``sum_b (q̂_b - p̂_b) ln(q̂_b / p̂_b)`` with both fractions
  floored at ``eps`` (1e-4), NaN bin included (same definition as `models.profile.psi`).
- ``js``: Jensen-Shannon divergence in bits (log base 2, so in [0, 1]), NaN bin included.
- ``ks``: the binned Kolmogorov-Smirnov statistic, max |CDF_p - CDF_q| at the bin edges over the
  non-NaN values (a lower bound of the exact KS on the raw values).

Null thresholds (`NullCalibration`): how large a statistic gets when the live window is drawn
from the reference distribution itself, at the live window's size n and the reference's size.
PSI and JS are calibrated by resampling: ``draws`` pairs (reference sample of n_ref, live sample
of n) are drawn from the reference bin fractions (multinomial), the statistic's mean and
variance over the draws are matched by a scaled chi-square ``a * chi2(nu)`` (Satterthwaite;
2 n PSI is asymptotically chi-square), and the threshold is its quantile at ``1 - alpha / m``
(Bonferroni over the m monitored columns). The chi-square tail is used because an empirical
quantile at 1 - 0.01/39 would need tens of thousands of draws per column. KS uses the
classical two-sample critical value ``sqrt(-ln(alpha' / 2) / 2) * sqrt((n + n_ref) / (n n_ref))``,
conservative for the binned statistic. Thresholds depend on n: `NullCalibration` caches them per
n bucket (4 buckets per doubling, rounded down, so a cached threshold is never below the exact
one at the true n).

The null assumes independent rows. Live rows are not (one entity's consecutive events have
similar windowed features), so the effective sample size is smaller than n and the calibrated
thresholds are optimistic; the engine therefore also requires a practical effect size (a PSI
floor) before calling a column drifted. See docs/monitoring.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EPS = 1e-4
STATISTICS = ("psi", "js", "ks")
SCORE = "score"  # the name of the score column in a `ReferenceBins`


def psi(p_counts: np.ndarray, q_counts: np.ndarray, eps: float = EPS) -> np.ndarray:
    """PSI over the last axis of two count arrays (any leading shape); NaN where a side is empty."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pf = np.maximum(p / p.sum(axis=-1, keepdims=True), eps)
        qf = np.maximum(q / q.sum(axis=-1, keepdims=True), eps)
        return np.sum((qf - pf) * np.log(qf / pf), axis=-1)


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (bits, in [0, 1]) over the last axis; NaN where a side is empty."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pf = p / p.sum(axis=-1, keepdims=True)
        qf = q / q.sum(axis=-1, keepdims=True)
        mf = 0.5 * (pf + qf)
        kl_p = np.where(pf > 0, pf * np.log2(pf / mf), 0.0)
        kl_q = np.where(qf > 0, qf * np.log2(qf / mf), 0.0)
        return np.clip(0.5 * (kl_p.sum(axis=-1) + kl_q.sum(axis=-1)), 0.0, 1.0)


def binned_ks(p_counts: np.ndarray, q_counts: np.ndarray, nan_bin: bool = True) -> np.ndarray:
    """Binned KS over the last axis; with `nan_bin` index 0 is the NaN bin and is left out."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if nan_bin:
        p, q = p[..., 1:], q[..., 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cp = np.cumsum(p, axis=-1) / p.sum(axis=-1, keepdims=True)
        cq = np.cumsum(q, axis=-1) / q.sum(axis=-1, keepdims=True)
        return np.max(np.abs(cp - cq), axis=-1)


def statistics(p_counts: np.ndarray, q_counts: np.ndarray) -> dict[str, np.ndarray]:
    """{"psi", "js", "ks"} over the last axis of count arrays in the `ReferenceBins` layout."""
    return {"psi": psi(p_counts, q_counts), "js": js_divergence(p_counts, q_counts),
            "ks": binned_ks(p_counts, q_counts)}


@dataclass(frozen=True)
class ReferenceBins:
    """The monitored columns (features in order, then the score) with their reference counts.

    Attributes:
        names: column names; the score column is named `SCORE` and is last if present.
        cuts: per column, the interior cuts of its profile entry (float64, ascending).
        ref_counts: int64 [m, K] in the layout of the module docstring.
        feature_index: for each column except the score, its index in the feature matrix.
    """

    names: tuple[str, ...]
    cuts: tuple[np.ndarray, ...]
    ref_counts: np.ndarray
    feature_index: np.ndarray
    has_score: bool = False
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)
    _cut_rows: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_offsets", np.arange(len(self.names), dtype=np.int64) * self.width)
        # [K - 2, m]: row k holds every column's (k+1)-th cut, NaN where a column has fewer.
        rows = np.full((max(self.width - 2, 0), len(self.names)), np.nan)
        for c, cuts in enumerate(self.cuts):
            rows[:len(cuts), c] = cuts
        object.__setattr__(self, "_cut_rows", rows)

    @property
    def width(self) -> int:
        """K: bins per row of a count matrix (the widest column's bins, NaN bin included)."""
        return int(self.ref_counts.shape[1])

    @property
    def n_ref(self) -> np.ndarray:
        """Reference rows per column (int64 [m])."""
        return self.ref_counts.sum(axis=1)

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any], feature_names: Sequence[str]) -> ReferenceBins:
        """The columns of a manifest `profile` (models/profile.py) that the feature matrix has.

        Features missing from the profile (or with no reference rows) are not monitored; the
        score column is added when the profile has one. Raises ValueError if nothing is left."""
        entries: list[tuple[str, Mapping[str, Any], int]] = []
        feats = profile.get("features") or {}
        for j, name in enumerate(feature_names):
            entry = feats.get(name)
            if entry is not None and int(entry.get("n", 0)) > 0:
                entries.append((name, entry, j))
        score = profile.get("score")
        has_score = bool(score) and int(score.get("n", 0)) > 0
        if has_score:
            entries.append((SCORE, score, -1))
        if not entries:
            raise ValueError("the profile has no column with reference rows to monitor")
        width = max(len(e["cuts"]) for _, e, _ in entries) + 2
        counts = np.zeros((len(entries), width), dtype=np.int64)
        for i, (_, e, _) in enumerate(entries):
            c = list(e["counts"])
            counts[i, 0] = int(e["nan_count"])
            counts[i, 1:1 + len(c)] = c
        return cls(names=tuple(n for n, _, _ in entries),
                   cuts=tuple(np.asarray(e["cuts"], dtype=np.float64) for _, e, _ in entries),
                   ref_counts=counts, feature_index=np.asarray([j for _, _, j in entries if j >= 0], dtype=np.int64),
                   has_score=has_score)

    def empty(self) -> np.ndarray:
        """A zero count matrix [m, K]."""
        return np.zeros_like(self.ref_counts)

    def count(self, X: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
        """Counts [m, K] of the rows of `X` (feature matrix [n, d]) and their `scores` [n].

        Vectorised over all columns at once: a value's bin is the number of its column's cuts
        <= it (``searchsorted(cuts, v, side="right")``), summed over the K - 2 cut positions of
        a cut matrix padded with NaN (a comparison with NaN is false, so padding never counts);
        then one ``bincount`` for the whole batch. NaN goes to the NaN bin, +-inf to the outer
        bins. With `has_score`, `scores` is required. Cost: K - 2 comparisons of an [n, m]
        matrix, ~1/3 of one ``searchsorted`` call per column at the engine's batch sizes."""
        X = np.asarray(X)
        n = X.shape[0]
        m = len(self.names)
        if n == 0:
            return self.empty()
        nf = len(self.feature_index)
        cols = np.empty((n, m), dtype=np.float64)
        cols[:, :nf] = X[:, self.feature_index]
        if self.has_score:
            cols[:, nf] = scores
        acc = np.ones((n, m), dtype=np.uint8)  # 1 + value bin (< 256: at most 100 bins); the NaN bin is 0
        le = np.empty((n, m), dtype=bool)
        for row in self._cut_rows:
            np.less_equal(row, cols, out=le)
            acc += le
        acc[np.isnan(cols)] = 0
        idx = acc.astype(np.int64)
        idx += self._offsets
        return np.bincount(idx.ravel(), minlength=m * self.width).reshape(m, self.width)


def compare(ref_counts: np.ndarray, live_counts: np.ndarray) -> dict[str, np.ndarray]:
    """All `STATISTICS` per column ([m] each) of a live count matrix against the reference."""
    return statistics(ref_counts, live_counts)


def ks_critical(alpha: float, n: np.ndarray | int, n_ref: np.ndarray | int) -> np.ndarray:
    """Two-sample KS critical value at level `alpha` for sample sizes n and n_ref."""
    n = np.asarray(n, dtype=np.float64)
    n_ref = np.asarray(n_ref, dtype=np.float64)
    return math.sqrt(-math.log(alpha / 2.0) / 2.0) * np.sqrt((n + n_ref) / (n * n_ref))


def n_bucket(n: int) -> int:
    """The calibration bucket of a window size: the largest 2**(k/4) <= n (integer)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return max(1, int(2.0 ** (math.floor(4.0 * math.log2(n) + 1e-9) / 4.0)))


class NullCalibration:
    """Null thresholds of PSI, JS and KS per column of one `ReferenceBins`, cached per n bucket.

    Args:
        reference: the reference bins (their fractions are the null distribution).
        alpha: family-wise false-alarm probability per window over all m columns; each column
            is tested at ``alpha / m`` (Bonferroni).
        draws: resampled (reference, live) pairs per calibration.
        seed: seed of the resampling (thresholds are deterministic for a given reference).
    """

    def __init__(self, reference: ReferenceBins, alpha: float = 0.01, draws: int = 1000, seed: int = 0) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if draws < 50:
            raise ValueError(f"draws must be >= 50, got {draws}")
        self.reference = reference
        self.alpha = alpha
        self.per_column_alpha = alpha / len(reference.names)
        self.draws = draws
        self.seed = seed
        self.seconds = 0.0  # wall time spent calibrating (one-off per n bucket)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def thresholds(self, n: int) -> dict[str, np.ndarray]:
        """{"psi", "js", "ks"} -> thresholds [m] for a live window of `n` rows (cached by bucket)."""
        b = n_bucket(n)
        got = self._cache.get(b)
        if got is None:
            t0 = time.perf_counter()
            got = self._cache[b] = self._calibrate(b)
            self.seconds += time.perf_counter() - t0
        return got

    def _calibrate(self, n: int) -> dict[str, np.ndarray]:
        ref = self.reference.ref_counts.astype(np.float64)
        n_ref = ref.sum(axis=1)
        p = ref / n_ref[:, None]
        rng = np.random.default_rng(self.seed)
        m = len(n_ref)
        ref_draws = rng.multinomial(n_ref.astype(np.int64), p, size=(self.draws, m))
        live_draws = rng.multinomial(np.full(m, n, dtype=np.int64), p, size=(self.draws, m))
        q = 1.0 - self.per_column_alpha
        out = {name: scaled_chi2_quantile(stat(ref_draws, live_draws), q)
               for name, stat in (("psi", psi), ("js", js_divergence))}
        out["ks"] = ks_critical(self.per_column_alpha, n, n_ref)
        return out


def scaled_chi2_quantile(samples: np.ndarray, q: float) -> np.ndarray:
    """Per column of `samples` [draws, m]: the `q` quantile of the scaled chi-square ``a chi2(nu)``
    whose mean and variance match the samples' (a column with no variance gets its max)."""
    from scipy.stats import chi2

    mean = samples.mean(axis=0)
    var = samples.var(axis=0, ddof=1)
    out = samples.max(axis=0).astype(np.float64)
    ok = (var > 0) & (mean > 0)
    a = var[ok] / (2.0 * mean[ok])
    nu = 2.0 * mean[ok] ** 2 / var[ok]
    out[ok] = a * chi2.ppf(q, nu)
    return out


__all__ = ["EPS", "SCORE", "STATISTICS", "NullCalibration", "ReferenceBins", "binned_ks", "compare",
           "js_divergence", "ks_critical", "n_bucket", "psi", "scaled_chi2_quantile", "statistics"]
