"""Closed sessions: when a session can no longer change, and what is reported for it.

A session (of a session window, `features.spec.Window.session`) is **closed** once the partition's
watermark has passed its end by more than the gap, ``end + gap < watermark``: every event that is
not late has ``ts >= watermark``, so none can join or extend it any more. Its report is final:

- ``start``, ``end``: the least and greatest event time in the session (ms);
- ``row``: the feature row of the last event processed into the session, i.e. the row the engine
  scored for that event (its session columns are the aggregates over the whole session).

A session is closed by `FeatureComputer.prune`, which runs for every entity a micro-batch touches
(`features.executor.process_batch`, `BatchResult.closed`) and, for entities no event touches, in
an incremental scan of the stored records (`close_sessions`; the engine runs it with its expiry
sweep). Both executors see the same closed sessions with the same contents: the offline replay
reports every session closed by each partition's final watermark (`features.offline`), the engine
reports each one once, when its batch or its sweep finds it closed. Nothing here knows of Kafka.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.compute import SESSION_END, SESSION_ROW, SESSION_START, FeatureComputer
from features.spec import Window


@dataclass(frozen=True)
class ClosedSession:
    """The final report of one closed session of one entity.

    Attributes:
        entity: the entity key.
        window: the session window (its gap) the session belongs to.
        start, end: least and greatest event time in the session, epoch ms.
        row: feature row of the last event processed into the session (None = NaN, as stored).
        closed_by: ``"watermark"`` if the event-time watermark closed it (``end + gap <
            max_ts - grace``), ``"wall_clock"`` if only the clock's wall-clock floor did
            (`features.executor.PartitionClock.floor`; the engine's `sessions.idle_watermark`).
    """

    entity: str
    window: Window
    start: int
    end: int
    row: tuple[float | None, ...]
    closed_by: str = "watermark"

    @property
    def key(self) -> tuple[str, int, int]:
        """(entity, gap ms, start ms): identifies a closed session (sessions of one entity and
        gap are disjoint)."""
        return (self.entity, self.window.size_ms, self.start)

    def vector(self) -> np.ndarray:
        """The row as the float32 vector the engine scored for that last event."""
        return np.array([np.nan if v is None else v for v in self.row], dtype=np.float32)


def reports(computer: FeatureComputer, entity: str, closed: Iterable[tuple[int, list[Any]]],
            event_watermark: int | None = None) -> list[ClosedSession]:
    """`ClosedSession`s from what `FeatureComputer.prune` appended to its `closed` list; those
    the `event_watermark` (``max_ts - grace``; None: the pruning watermark itself) would not
    have closed are marked ``closed_by="wall_clock"``."""
    windows = computer.spec.windows
    out = []
    for wi, s in closed:
        window, end = windows[wi], s[SESSION_END]
        by = "wall_clock" if event_watermark is not None and end + window.size_ms >= event_watermark else "watermark"
        out.append(ClosedSession(entity, window, s[SESSION_START], end, tuple(s[SESSION_ROW]), by))
    return out


def close_sessions(
    computer: FeatureComputer, records: Iterable[tuple[str, bytes]], watermark: int,
    event_watermark: int | None = None,
) -> tuple[list[ClosedSession], dict[str, bytes | None]]:
    """Close the sessions of stored `records` (key, encoded state) that the watermark has passed.

    Returns the closed sessions and the records that changed: new encoding, or None for a record
    that is now dead (which `features.executor.expired_keys` would have deleted too). Records with
    nothing to close and not dead are left out (their stored form stays valid). Subsumes
    `expired_keys` for the same records, at the cost of decoding each one. `event_watermark`:
    as in `reports` (pass it when `watermark` includes a wall-clock floor).
    """
    closed: list[ClosedSession] = []
    changed: dict[str, bytes | None] = {}
    found: list[tuple[int, list[Any]]] = []
    for key, raw in records:
        state = computer.decode(raw)
        dead = computer.prune(state, watermark, found)
        if found:
            closed.extend(reports(computer, key, found, event_watermark))
            found.clear()
            changed[key] = None if dead else computer.encode(state)
        elif dead:
            changed[key] = None
    return closed, changed
