"""Reference profile of the training data, for drift monitoring against live windows.

A profile is JSON-safe::

    {"schema": 1, "n_rows": n, "n_bins": 10,
     "features": {name: entry, ...},   # in feature order
     "score": entry | None,
     "warm_from_ms": t | None, "cold_rows": k}   # rows before t were left out (see warm rows)

and each column `entry` is::

    {"cuts": [c_1, ..., c_k],          # ascending, distinct interior quantile edges
     "counts": [n_0, ..., n_k],        # rows per bin (k + 1 bins, see below)
     "nan_count": int,                 # NaN rows (their own bin for PSI)
     "inf_count": int,                 # +-inf rows (counted in the outer bins)
     "n": int, "min": x, "max": x, "mean": x, "std": x}   # over finite values; None if none

Bins are ``(-inf, c_1), [c_1, c_2), ..., [c_k, +inf)``: a value v is in bin
``searchsorted(cuts, v, side="right")``. The outer bins are open so a live value outside the
training range still lands in a bin. Cuts are the distinct training quantiles at
``1/n_bins, ..., (n_bins-1)/n_bins`` (``inverted_cdf``, so every cut is an observed value and a
discrete feature gets one bin per frequent value), so bins are roughly equally populated on the
training data.

**Warm rows.** The offline replay that computes training rows starts with empty state, so rows
near the start of the replayed history see truncated windows and entities that look new (cold
start); live traffic of a running engine does not look like that. The reference is therefore
built from the *warm* rows only (`warm_rows`): those at least the feature spec's memory (its
longest window or entity idle TTL, whichever is longer: `memory_ms`) of event time after the
first replayed event. Rows after that are exactly what a long-running engine computes. If fewer
than `MIN_WARM_SHARE` of the rows are warm (a history barely longer than the memory), every row
is used and the profile says so (``warm_from_ms`` None, ``cold_rows`` 0).

`psi` compares a live sample to an entry over those bins plus the NaN bin:
``PSI = sum_b (q_b - p_b) * ln(q_b / p_b)`` with both fractions floored at `eps`.
`binned_ks` is the KS statistic between the two binned CDFs (a lower bound of the exact KS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from models import drift

if TYPE_CHECKING:
    from features.spec import FeatureSpec

PROFILE_SCHEMA = 1
MIN_WARM_SHARE = 0.25  # below this share of warm rows, the profile keeps the cold start


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def profile_column(values: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """The binned reference entry of one column (see module docstring)."""
    if not 2 <= n_bins <= 100:
        raise ValueError(f"n_bins must be in [2, 100], got {n_bins}")
    v = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(v)
    present = v[~nan]
    finite = present[np.isfinite(present)]
    if len(finite):
        qs = np.quantile(finite, np.arange(1, n_bins) / n_bins, method="inverted_cdf")  # actual data values
        cuts = np.unique(qs)
        stats = {"min": _f(finite.min()), "max": _f(finite.max()), "mean": _f(finite.mean()), "std": _f(finite.std())}
    else:
        cuts = np.zeros(0)
        stats = {"min": None, "max": None, "mean": None, "std": None}
    counts = np.bincount(np.searchsorted(cuts, present, side="right"), minlength=len(cuts) + 1)
    return {"cuts": [float(c) for c in cuts], "counts": [int(c) for c in counts], "nan_count": int(nan.sum()),
            "inf_count": int(len(present) - len(finite)), "n": int(len(v)), **stats}


def memory_ms(spec: FeatureSpec) -> int:
    """How much event time of replay makes a row warm: the spec's longest window, or its entity
    idle TTL if longer. After it, window aggregates are exact and entity memory matches a
    long-running engine's for every entity idle that long."""
    return max([w.size_ms for w in spec.windows] + [spec.idle_ttl_ms])


def warm_rows(ts: np.ndarray, warm_from_ms: int | None) -> np.ndarray:
    """Mask of the warm rows among rows at event times `ts` (all if `warm_from_ms` is None, or if
    fewer than `MIN_WARM_SHARE` of them are warm: then the cold start stays in)."""
    ts = np.asarray(ts)
    if warm_from_ms is None:
        return np.ones(len(ts), dtype=bool)
    warm = ts >= warm_from_ms
    return warm if warm.sum() >= MIN_WARM_SHARE * len(ts) else np.ones(len(ts), dtype=bool)


def build_profile(
    X: np.ndarray,
    feature_names: Sequence[str],
    scores: np.ndarray | None = None,
    n_bins: int = 10,
    ts: np.ndarray | None = None,
    warm_from_ms: int | None = None,
) -> dict[str, Any]:
    """Profile every column of `X` [n, d] (named by `feature_names`) and, if given, the `scores`.

    With `ts` (event times of the rows) and `warm_from_ms`, only the warm rows are profiled
    (`warm_rows`; see the module docstring)."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise ValueError(f"X shape {X.shape} does not match {len(feature_names)} feature names")
    keep = warm_rows(ts, warm_from_ms) if ts is not None else np.ones(X.shape[0], dtype=bool)
    cold = int(len(keep) - keep.sum())
    if cold:
        X = X[keep]
        scores = np.asarray(scores)[keep] if scores is not None else None
    return {
        "schema": PROFILE_SCHEMA,
        "n_rows": int(X.shape[0]),
        "n_bins": n_bins,
        "features": {name: profile_column(X[:, j], n_bins) for j, name in enumerate(feature_names)},
        "score": profile_column(scores, n_bins) if scores is not None else None,
        "warm_from_ms": int(warm_from_ms) if cold else None,
        "cold_rows": cold,
    }


def _counts(entry: Mapping[str, Any], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reference, live) counts of one column in the `models.drift` layout (NaN bin first)."""
    ref = np.asarray([entry["nan_count"], *entry["counts"]], dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(v)
    live = np.bincount(np.searchsorted(np.asarray(entry["cuts"], dtype=np.float64), v[~nan], side="right"),
                       minlength=len(entry["counts"]))
    return ref, np.concatenate([[float(nan.sum())], live.astype(np.float64)])


def psi(reference_entry: Mapping[str, Any], values: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of live `values` against a profile entry (NaN is its own bin).

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
    """
    ref, live = _counts(reference_entry, values)
    if ref.sum() == 0 or live.sum() == 0:
        raise ValueError("PSI needs at least one reference and one live value")
    return float(drift.psi(ref, live, eps))


def binned_ks(reference_entry: Mapping[str, Any], values: np.ndarray) -> float:
    """Max distance between the reference and live CDFs evaluated at the bin edges (NaN excluded)."""
    ref, live = _counts(reference_entry, values)
    if ref[1:].sum() == 0 or live[1:].sum() == 0:
        raise ValueError("KS needs at least one non-NaN reference and live value")
    return float(drift.binned_ks(ref, live))
