"""Synthetic data and small models for tests and benchmarks (no Kafka, no feature executor).

`synthetic_dataset` draws a float32 matrix with NaNs, integer-valued and skewed columns, a
binary label with a ~10 % base rate driven by a few columns non-linearly, and sorted event times.
`make_manifest` builds a registrable manifest for it; `small_model_bytes` trains and exports a
quick model satisfying the ONNX contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.manifest import Manifest, TrainingInfo, data_digest


def synthetic_dataset(
    n: int = 4_000, d: int = 8, seed: int = 0, span_ms: int = 7 * 86_400_000, start_ms: int = 1_767_225_600_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(X float32 [n, d], y int8 [n], ts int64 [n] ascending, feature names)."""
    if d < 4:
        raise ValueError("d must be >= 4")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, 1] = rng.poisson(2.0, size=n)  # a count
    X[:, 2] = rng.lognormal(3.0, 1.0, size=n)  # a price-like skewed value
    logit = 1.2 * X[:, 0] + 0.6 * (X[:, 1] > 2) + 0.4 * np.log1p(X[:, 2]) - 0.8 * X[:, 3] ** 2 - 3.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    X[rng.random((n, d)) < 0.05] = np.nan
    ts = np.sort(rng.integers(start_ms, start_ms + span_ms, size=n)).astype(np.int64)
    names = [f"f{j}_{['num', 'count', 'price', 'sq'][j] if j < 4 else 'noise'}" for j in range(d)]
    return X, y, ts, names


def make_manifest(
    feature_names: Sequence[str],
    feature_spec: str = "fs-test",
    name: str = "purchase",
    X: np.ndarray | None = None,
    y: np.ndarray | None = None,
    auc: float | None = 0.75,
    **overrides: Any,
) -> Manifest:
    """A complete manifest for tests (metrics/profile are placeholders unless given)."""
    digest = data_digest(X, y) if X is not None and y is not None else "sha256:" + "0" * 64
    fields: dict[str, Any] = dict(
        name=name, feature_spec=feature_spec, feature_names=list(feature_names), model_kind="lightgbm",
        training=TrainingInfo(data_start_ms=0, data_end_ms=86_400_000, n_rows=0 if X is None else len(X),
                              digest=digest, label={"kind": "purchase_within", "horizon_ms": 3_600_000}),
        params={"n_estimators": 20}, metrics={"test": {"auc": auc, "log_loss": 0.3, "n": 100}},
        profile={},
    )
    fields.update(overrides)
    return Manifest(**fields)


def small_model_bytes(
    X: np.ndarray, y: np.ndarray, feature_names: Sequence[str], kind: str = "logreg", **params: Any,
) -> bytes:
    """Train a quick `kind` model on (X, y) and return its contract-conforming ONNX bytes."""
    from models.train import export_onnx, train

    return export_onnx(train(X, y, feature_names, kind=kind, params=params or None))  # type: ignore[arg-type]
