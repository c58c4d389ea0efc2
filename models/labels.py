"""Training labels defined by event time: "does this user purchase within the horizon?".

Definitions (all times are event times in epoch milliseconds):

- ``purchase_within``: label[i] = 1 iff the same user has an event of type ``purchase`` with
  event time ``t`` in the half-open interval ``(ts[i], ts[i] + horizon_ms]``. The left end is open,
  so a purchase at exactly ``ts[i]`` (including event i itself) does not count; the right end is
  closed. Arrival order is irrelevant: the result only depends on (user, ts, type) of each event.
- ``purchase_within_events``: the same label for rows looked up in a separate event set (rows
  may be a subset of the events, e.g. feature rows exist only for on-time events but a late
  purchase still counts).
- ``censor_mask``: True for events whose horizon ends after the data does
  (``ts[i] + horizon_ms > data_end_ms``). A 0 label there only means "no purchase *seen*", so those
  rows are excluded from training and evaluation (both classes, so the base rate is not biased).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PURCHASE = "purchase"


@dataclass(frozen=True)
class LabelDefinition:
    """What a model predicts; recorded in the manifest as ``{"kind": ..., "horizon_ms": ...}``."""

    horizon_ms: int
    kind: str = "purchase_within"

    def __post_init__(self) -> None:
        if self.kind != "purchase_within":
            raise ValueError(f"unknown label kind {self.kind!r} (only 'purchase_within')")
        if int(self.horizon_ms) <= 0:
            raise ValueError(f"horizon_ms must be > 0, got {self.horizon_ms}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "horizon_ms": int(self.horizon_ms)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelDefinition:
        return cls(kind=str(d.get("kind", "purchase_within")), horizon_ms=int(d["horizon_ms"]))


def purchase_within(
    user_ids: Sequence[str],
    ts: np.ndarray,
    event_types: Sequence[str],
    horizon_ms: int,
) -> np.ndarray:
    """int8 [n]: 1 iff the same user purchases in ``(ts[i], ts[i] + horizon_ms]`` (event time).

    Inputs may be in any order. O(n log n): users and the times ``ts`` / ``ts + horizon`` are
    rank-encoded into one int64 key per (user, time), purchases sorted by key, and two
    ``searchsorted`` calls count the purchases after ``ts[i]`` and up to ``ts[i] + horizon``.
    """
    return purchase_within_events(user_ids, ts, user_ids, ts, event_types, horizon_ms)


def purchase_within_events(
    row_user_ids: Sequence[str],
    row_ts: np.ndarray,
    event_user_ids: Sequence[str],
    event_ts: np.ndarray,
    event_types: Sequence[str],
    horizon_ms: int,
) -> np.ndarray:
    """`purchase_within` for rows looked up in a separate, possibly larger event set.

    Use it when the training rows are a subset of the events (e.g. the offline feature table has
    no row for a late event, but a late *purchase* still happened and must count as a label):
    label[i] = 1 iff `event_*` holds a purchase by ``row_user_ids[i]`` with event time in
    ``(row_ts[i], row_ts[i] + horizon_ms]``. Same semantics and complexity as `purchase_within`.
    """
    row_ts, event_ts = np.asarray(row_ts), np.asarray(event_ts)
    if row_ts.ndim != 1 or event_ts.ndim != 1:
        raise ValueError(f"ts must be 1-D, got shapes {row_ts.shape} and {event_ts.shape}")
    n, m = len(row_ts), len(event_ts)
    if len(row_user_ids) != n:
        raise ValueError(f"lengths differ: row user_ids {len(row_user_ids)}, row ts {n}")
    if len(event_user_ids) != m or len(event_types) != m:
        raise ValueError(f"lengths differ: user_ids {len(event_user_ids)}, ts {m}, event_types {len(event_types)}")
    if horizon_ms <= 0:
        raise ValueError(f"horizon_ms must be > 0, got {horizon_ms}")
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    for arr in (row_ts, event_ts):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ts must be integer epoch milliseconds, got dtype {arr.dtype}")
    is_purchase = np.asarray(event_types, dtype=object) == PURCHASE
    p_ts = event_ts.astype(np.int64)[is_purchase]
    p_users = np.asarray(event_user_ids, dtype=object)[is_purchase]
    if len(p_ts) == 0:
        return np.zeros(n, dtype=np.int8)
    row_ts = row_ts.astype(np.int64)

    # One integer code per user over rows and purchases, one rank per distinct time.
    _, codes = np.unique(np.concatenate([np.asarray(row_user_ids, dtype=object), p_users]).astype(str),
                         return_inverse=True)
    codes = codes.astype(np.int64)
    row_code, p_code = codes[:n], codes[n:]
    times, ranks = np.unique(np.concatenate([row_ts, row_ts + int(horizon_ms), p_ts]), return_inverse=True)
    stride = np.int64(len(times) + 1)  # ranks < stride, so keys of different users never interleave
    key_start = row_code * stride + ranks[:n]
    key_end = row_code * stride + ranks[n:2 * n]
    purchase_keys = np.sort(p_code * stride + ranks[2 * n:])
    after_start = np.searchsorted(purchase_keys, key_start, side="right")  # first purchase > ts
    through_end = np.searchsorted(purchase_keys, key_end, side="right")  # first purchase > ts + h
    return (through_end > after_start).astype(np.int8)


def censor_mask(ts: np.ndarray, horizon_ms: int, data_end_ms: int) -> np.ndarray:
    """bool [n]: True where the label horizon extends past `data_end_ms` (label unknown).

    `data_end_ms` is the last event time covered by the data (inclusive): a purchase at
    ``data_end_ms`` is observed, anything later is not.
    """
    ts = np.asarray(ts, dtype=np.int64)
    return ts + int(horizon_ms) > int(data_end_ms)
