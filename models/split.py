"""Time-gapped train/test split by event time (never random).

With ``cut`` = the event time at which the last `test_fraction` of rows (by event time) starts:

- test  = rows with ``ts >= cut`` (rows tied with ``cut`` all go to test);
- train = rows with ``ts < cut - gap_ms``;
- rows in ``[cut - gap_ms, cut)`` are dropped.

With ``gap_ms >= horizon_ms`` a training label window ``(ts, ts + horizon]`` ends strictly before
``cut``, so no training label depends on an event in the test period. The gap defaults to the
label horizon. Index arrays are returned sorted by event time (stable for ties).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class SplitError(ValueError):
    """The split would leave train or test empty; the message gives the numbers."""


@dataclass(frozen=True)
class TimeSplit:
    """Row indices of each side, in event-time order, plus the boundaries used."""

    train: np.ndarray
    test: np.ndarray
    cut_ms: int
    gap_ms: int
    n_dropped: int

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary for the manifest."""
        return {
            "train_rows": int(len(self.train)),
            "test_rows": int(len(self.test)),
            "gap_rows_dropped": int(self.n_dropped),
            "test_start_ms": int(self.cut_ms),
            "gap_ms": int(self.gap_ms),
        }


def time_gapped_split(
    ts: np.ndarray,
    horizon_ms: int,
    test_fraction: float = 0.2,
    gap_ms: int | None = None,
) -> TimeSplit:
    """Split rows with event times `ts` (ms) into train / test by time with a gap (default
    `horizon_ms`) between them. Raises `SplitError` if a side would be empty."""
    ts = np.asarray(ts)
    if ts.ndim != 1:
        raise ValueError(f"ts must be 1-D, got shape {ts.shape}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    gap = int(horizon_ms if gap_ms is None else gap_ms)
    if gap < 0:
        raise ValueError(f"gap_ms must be >= 0, got {gap}")
    n = len(ts)
    if n < 2:
        raise SplitError(f"need at least 2 rows to split, got {n}")
    ts = ts.astype(np.int64)
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    n_test = max(1, int(round(n * test_fraction)))
    cut = int(sorted_ts[n - n_test])
    first_test = int(np.searchsorted(sorted_ts, cut, side="left"))
    train_end = int(np.searchsorted(sorted_ts, cut - gap, side="left"))
    train, test = order[:train_end], order[first_test:]
    if len(train) == 0:
        raise SplitError(
            f"no training rows: data spans {sorted_ts[0]}..{sorted_ts[-1]} ms "
            f"({(sorted_ts[-1] - sorted_ts[0]) / 3_600_000:.2f} h); the test period starts at {cut} and the gap of "
            f"{gap} ms leaves nothing before it. Use more history, a smaller test_fraction or a smaller gap."
        )
    if len(test) == 0:  # pragma: no cover - n_test >= 1 guarantees a test row
        raise SplitError("no test rows")
    return TimeSplit(train=train, test=test, cut_ms=cut, gap_ms=gap, n_dropped=first_test - train_end)
