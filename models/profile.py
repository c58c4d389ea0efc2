"""Reference profile of the training data, for drift monitoring against live windows.

A profile is JSON-safe::

    {"schema": 1, "n_rows": n, "n_bins": 10,
     "features": {name: entry, ...},   # in feature order
     "score": entry | None}

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

`psi` compares a live sample to an entry over those bins plus the NaN bin:
``PSI = sum_b (q_b - p_b) * ln(q_b / p_b)`` with both fractions floored at `eps`.
`binned_ks` is the KS statistic between the two binned CDFs (a lower bound of the exact KS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models import drift

PROFILE_SCHEMA = 1


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


def build_profile(
    X: np.ndarray,
    feature_names: Sequence[str],
    scores: np.ndarray | None = None,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Profile every column of `X` [n, d] (named by `feature_names`) and, if given, the `scores`."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise ValueError(f"X shape {X.shape} does not match {len(feature_names)} feature names")
    return {
        "schema": PROFILE_SCHEMA,
        "n_rows": int(X.shape[0]),
        "n_bins": n_bins,
        "features": {name: profile_column(X[:, j], n_bins) for j, name in enumerate(feature_names)},
        "score": profile_column(scores, n_bins) if scores is not None else None,
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
