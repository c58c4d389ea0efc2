"""Offline executor: replay a historical event log into point-in-time feature rows.

The log is read in its stored order, which must be the order the live topic holds (offset order
per partition). Events are routed to partitions with the live topic's partitioner and run through
`features.executor.process_batch`, the same function the engine runs, so each row equals the
vector the engine computed (or would compute) for that event, bit for bit.

Closed sessions (specs with session windows): the table also lists every session closed by its
partition's final watermark (`features.sessions`), found at batch ends for the entities a batch
touched and, at the end of the log, by `close_sessions` over every stored record, exactly what the
engine's batches and sweep report (each once) for the same input. Sessions still open at the end
of the log are not reported: the log does not say that they ended. Wall-clock idleness has no
offline meaning and plays no part here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.compute import FeatureComputer
from features.eventlog import read_events
from features.executor import PartitionClock, process_batch
from features.partitioning import kafka_partition
from features.schema import EventSchema
from features.sessions import ClosedSession, close_sessions
from features.spec import FeatureSpec

PROGRESS_EVERY = 16_384  # events between progress callbacks


@dataclass
class FeatureTable:
    """Point-in-time feature rows, one per scored (valid, not late) event, in log order.

    Attributes:
        X: float32 [n, width] in `names` order.
        event_ids, entities, event_types: per row.
        ts: int64 event times (ms) per row.
        invalid: count of log lines that failed validation, by reason.
        late: event_ids that were late (no row).
        closed_sessions: sessions closed by their partition's final watermark, by partition then
            in the order they were found (specs with session windows; see the module doc).
    """

    names: tuple[str, ...]
    spec_hash: str
    X: np.ndarray
    event_ids: list[str]
    entities: list[str]
    event_types: list[str]
    ts: np.ndarray
    invalid: dict[str, int]
    late: list[str]
    closed_sessions: list[ClosedSession] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)


def replay(
    events: Iterable[dict[str, Any]],
    spec: FeatureSpec,
    num_partitions: int,
    partition_of: Callable[[str, int], int] = kafka_partition,
    batch_size: int = 512,
    invalid: dict[str, int] | None = None,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> FeatureTable:
    """Run canonical `events` (log order) through the streaming semantics and collect rows.

    Args:
        num_partitions: partitions of the live topic the log came from (lateness is per partition).
        partition_of: the live topic's partitioner, ``(key, n) -> partition``.
        batch_size: events per partition per `process_batch` call; does not change results.
        on_progress: called as ``(stage, events read, None)`` every `PROGRESS_EVERY` events.
    """
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    computer = FeatureComputer(spec)
    stores: list[dict[str, bytes]] = [{} for _ in range(num_partitions)]
    clocks = [PartitionClock(spec.grace_ms) for _ in range(num_partitions)]
    pending: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in range(num_partitions)]
    all_events: list[dict[str, Any]] = []
    row_of: dict[int, np.ndarray] = {}
    late_idx: list[int] = []
    closed: list[list[ClosedSession]] = [[] for _ in range(num_partitions)]

    def flush(p: int) -> None:
        batch = pending[p]
        store = stores[p]
        evs = [e for _, e in batch]
        result = process_batch(computer, clocks[p], evs, store)
        for j, i in enumerate(result.scored):
            row_of[batch[i][0]] = result.rows[j]
        late_idx.extend(batch[i][0] for i in result.late)
        closed[p].extend(result.closed)
        for key, raw in result.states.items():
            if raw is None:
                store.pop(key, None)
            else:
                store[key] = raw
        batch.clear()

    entity = spec.entity
    if on_progress is not None:
        on_progress("offline features", 0, None)
    for idx, event in enumerate(events):
        all_events.append(event)
        p = partition_of(event[entity], num_partitions)
        pending[p].append((idx, event))
        if len(pending[p]) >= batch_size:
            flush(p)
        if on_progress is not None and idx % PROGRESS_EVERY == PROGRESS_EVERY - 1:
            on_progress("offline features", idx + 1, None)
    for p in range(num_partitions):
        if pending[p]:
            flush(p)
        watermark = clocks[p].watermark
        if computer.session_windows and watermark is not None:  # the untouched entities' sessions
            swept, _ = close_sessions(computer, sorted(stores[p].items()), watermark)
            closed[p].extend(swept)

    if on_progress is not None:
        on_progress("offline features", len(all_events), len(all_events))
    order = sorted(row_of)
    X = np.stack([row_of[i] for i in order]) if order else np.empty((0, spec.width), np.float32)
    return FeatureTable(
        names=spec.names,
        spec_hash=spec.hash,
        X=X,
        event_ids=[all_events[i]["event_id"] for i in order],
        entities=[all_events[i][entity] for i in order],
        event_types=[all_events[i]["event_type"] for i in order],
        ts=np.fromiter((all_events[i]["ts"] for i in order), dtype=np.int64, count=len(order)),
        invalid=dict(invalid or {}),
        late=[all_events[i]["event_id"] for i in sorted(late_idx)],
        closed_sessions=[s for part in closed for s in part],
    )


def replay_file(
    path: str | Path, spec: FeatureSpec, num_partitions: int, schema: EventSchema | None = None
) -> FeatureTable:
    """`replay` over a JSONL or Parquet log (`features.eventlog`), counting invalid records
    instead of failing."""
    invalid: dict[str, int] = {}
    table = replay(read_events(path, schema or EventSchema(), invalid), spec, num_partitions, invalid=invalid)
    table.invalid = invalid
    return table
