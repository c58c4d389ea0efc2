"""Binary-classifier metrics for a score P(y=1): discrimination, proper scores, calibration.

- ``auc``: ROC AUC (None when the labels hold a single class).
- ``log_loss``: mean negative log-likelihood, scores clipped to [1e-15, 1 - 1e-15].
- ``brier``: mean squared error of the score against the 0/1 label.
- ``ece``: expected calibration error over `n_bins` equal-width score bins on [0, 1]:
  ``sum_b n_b / n * |mean_score_b - positive_rate_b|`` (a score of exactly 1 falls in the last bin).
- ``reliability``: per bin ``{lo, hi, n, mean_score, positive_rate}`` (None for empty bins).
- ``base_rate``, ``n``, ``n_positive``, ``mean_score``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_EPS = 1e-15


@dataclass(frozen=True)
class Metrics:
    """Evaluation of one score vector against labels; `to_dict` is JSON-safe."""

    n: int
    n_positive: int
    base_rate: float
    mean_score: float
    auc: float | None
    log_loss: float
    brier: float
    ece: float
    reliability: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metrics:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def reliability_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[float, list[dict[str, Any]]]:
    """(ECE, per-bin table) over `n_bins` equal-width bins of the score on [0, 1]."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    score_sum = np.bincount(idx, weights=p, minlength=n_bins)
    pos_sum = np.bincount(idx, weights=y, minlength=n_bins)
    table: list[dict[str, Any]] = []
    ece = 0.0
    for b in range(n_bins):
        c = int(counts[b])
        mean_score = float(score_sum[b] / c) if c else None
        pos_rate = float(pos_sum[b] / c) if c else None
        if c:
            ece += c / len(p) * abs(mean_score - pos_rate)  # type: ignore[operator]
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": c,
                      "mean_score": mean_score, "positive_rate": pos_rate})
    return float(ece), table


def evaluate(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> Metrics:
    """All metrics of `scores` (P(y=1), in [0, 1]) against 0/1 `y_true`."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y_true {y.shape} and scores {p.shape} must be 1-D of equal length")
    if len(y) == 0:
        raise ValueError("cannot evaluate on zero rows")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be 0/1")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("scores must be probabilities in [0, 1] without NaN")
    n_pos = int(y.sum())
    auc = float(roc_auc_score(y, p)) if 0 < n_pos < len(y) else None
    pc = np.clip(p, _EPS, 1 - _EPS)
    log_loss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    brier = float(np.mean((p - y) ** 2))
    ece, table = reliability_table(y, p, n_bins)
    return Metrics(n=len(y), n_positive=n_pos, base_rate=n_pos / len(y), mean_score=float(p.mean()), auc=auc,
                   log_loss=log_loss, brier=brier, ece=ece, reliability=table)
