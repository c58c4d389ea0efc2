"""Micro-batch execution of a `FeatureComputer`: event-time clock, lateness, state in and out.

`process_batch` is the single entry point both executors use: the engine calls it with states
multi-got from RocksDB, the offline replay with states from a dict. It never does I/O itself.

Lateness is per *partition* (the unit of ordering and of state): the watermark is the greatest
event time processed in the partition minus the spec's grace (raised to the clock's `floor` if the
engine set one from the wall clock; offline never does). An event with ``ts < watermark``
is late: it changes no state and gets no feature row; the caller dead-letters it. Everything
happens in processing (offset) order, event by event, so the result does not depend on where
batch boundaries fall.

Rows are float32. A feature value beyond float32's range (an aggregate of large prices, or a ratio
with a tiny denominator; magnitude above `FLOAT32_MAX`, ±inf included) saturates to ±`FLOAT32_MAX`,
so no row ever holds ±inf (docs/features.md, "Vectors").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.compute import FeatureComputer
from features.sessions import ClosedSession, reports

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class PartitionClock:
    """Event-time progress of one partition.

    Attributes:
        max_ts: greatest event time (ms) processed so far, None before the first event.
        floor: a lower bound on the watermark set from outside event time, or None (the offline
            replay never sets one). The engine raises it from the wall clock for a partition
            whose input stopped (`sessions.idle_watermark: wall_clock`, docs/features.md); it
            only ever rises, and only makes more events late and more sessions closed.
    """

    grace_ms: int
    max_ts: int | None = None
    floor: int | None = None

    @property
    def event_watermark(self) -> int | None:
        """``max_ts - grace``: the watermark event time alone gives (None: nothing processed)."""
        return None if self.max_ts is None else self.max_ts - self.grace_ms

    @property
    def watermark(self) -> int | None:
        """Events with ts below this are late (None: nothing processed yet): the event-time
        watermark, raised to `floor` if that is higher."""
        if self.max_ts is None:
            return None
        wm = self.max_ts - self.grace_ms
        return wm if self.floor is None or self.floor < wm else self.floor

    def raise_floor(self, floor: int) -> bool:
        """Raise the watermark to at least `floor` (needs an event processed first). True if the
        watermark moved; a floor at or below the current watermark changes nothing."""
        wm = self.watermark
        if wm is None or floor <= wm:
            return False
        self.floor = floor
        return True

    def encode(self) -> bytes:
        """``b""`` before the first event, ``b"<max_ts>"``, or ``b"<max_ts>/<floor>"``."""
        if self.max_ts is None:
            return b""
        return str(self.max_ts).encode() if self.floor is None else f"{self.max_ts}/{self.floor}".encode()

    @classmethod
    def decode(cls, grace_ms: int, raw: bytes | None) -> PartitionClock:
        if not raw:
            return cls(grace_ms)
        max_ts, _, floor = raw.partition(b"/")
        return cls(grace_ms, int(max_ts), int(floor) if floor else None)


@dataclass
class BatchResult:
    """Outcome of one micro-batch of one partition.

    Attributes:
        rows: float32 array [len(scored), width], feature rows in input order of `scored`.
        scored: indices (into the input events) that were applied and have a row.
        late: indices of late events (state untouched; dead-letter them with reason "late").
        states: new encoded state per touched entity; ``None`` means delete the record.
        closed: sessions of touched entities that the batch's watermark closed (features.sessions).
    """

    rows: np.ndarray
    scored: list[int]
    late: list[int]
    states: dict[str, bytes | None] = field(default_factory=dict)
    closed: list[ClosedSession] = field(default_factory=list)


def process_batch(
    computer: FeatureComputer,
    clock: PartitionClock,
    events: Sequence[dict[str, Any]],
    stored: Mapping[str, bytes | None],
) -> BatchResult:
    """Apply `events` (one partition, in offset order) to their entities' states.

    Args:
        computer: the compiled feature spec.
        clock: the partition's clock; advanced in place.
        events: canonical events (already validated).
        stored: encoded state of every entity key in `events` (None/missing = no state yet).
    """
    entity = computer.spec.entity
    live: dict[str, list[Any]] = {}
    rows: list[list[float]] = []
    scored: list[int] = []
    late: list[int] = []
    grace = clock.grace_ms
    max_ts = clock.max_ts
    floor = clock.floor if clock.floor is not None else -math.inf
    for i, event in enumerate(events):
        ts = event["ts"]
        if ts < floor or (max_ts is not None and ts < max_ts - grace):
            late.append(i)
            continue
        if max_ts is None or ts > max_ts:
            max_ts = ts
        key = event[entity]
        state = live.get(key)
        if state is None:
            raw = stored.get(key)
            state = computer.decode(raw) if raw else computer.new_state()
            live[key] = state
        rows.append(computer.update(state, event))
        scored.append(i)
    clock.max_ts = max_ts
    out: dict[str, bytes | None] = {}
    watermark, event_watermark = clock.watermark, clock.event_watermark
    closed: list[ClosedSession] = []
    found: list[tuple[int, list[Any]]] = []
    for key, state in live.items():
        dead = watermark is not None and computer.prune(state, watermark, found)
        if found:
            closed.extend(reports(computer, key, found, event_watermark))
            found.clear()
        out[key] = None if dead else computer.encode(state)
    return BatchResult(float32_rows(rows, computer.width), scored, late, out, closed)


def float32_rows(rows: Sequence[Sequence[float]], width: int) -> np.ndarray:
    """The float32 matrix [len(rows), width] of feature rows, saturating: a value whose magnitude
    exceeds `FLOAT32_MAX` (±inf included) becomes ±`FLOAT32_MAX`; NaN stays NaN; every other
    value is rounded to nearest as usual.

    Equals clipping the float64 values to [-FLOAT32_MAX, FLOAT32_MAX] before rounding: a value
    above the range either rounds to FLOAT32_MAX or overflows to inf, which the clip brings back.
    """
    if not rows:
        return np.empty((0, width), np.float32)
    with np.errstate(over="ignore"):  # overflow is expected here and resolved just below
        matrix = np.asarray(rows, dtype=np.float32)
    if np.isinf(matrix).any():
        np.clip(matrix, -FLOAT32_MAX, FLOAT32_MAX, out=matrix)
    return matrix


def expired_keys(computer: FeatureComputer, records: Iterable[tuple[str, bytes]], watermark: int) -> list[str]:
    """Keys of the stored `records` (key, encoded state) that are dead at `watermark`: exactly
    the records `process_batch` would delete if an event touched them. For entities that no event
    touches any more (the engine sweeps its store with this, so state stays bounded by active
    entities). Deleting them changes no feature value: a dead record reads like no record."""
    return [key for key, raw in records if computer.expired(raw, watermark)]
