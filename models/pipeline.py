"""From canonical events to a training set, and from an event log to a registered model.

`build_training_set` is the only path from history to training rows, whatever the history came
from (a log file here, the input topic in `models.retraining` via `engine.history`). It computes
features with `features.offline.replay`, i.e. the engine's own executor: no second copy of
feature code. Labels come from the stream itself: a purchase by the same entity within the
horizon (`models.labels.purchase_within_events`), looked up in every valid event given, late ones
included (a late purchase still happened). Rows are the events the engine would have scored
(valid, not late), optionally restricted to an event-time window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.eventlog import read_events
from features.offline import replay
from features.schema import EventSchema
from features.spec import FeatureSpec
from models.labels import LabelDefinition, purchase_within_events
from models.profile import memory_ms
from models.train import KINDS
from models.training_run import TrainingRunResult, train_and_register


class NoValidEvents(ValueError):
    """The event log holds no event that passes validation; the message counts the reasons."""


@dataclass
class TrainingSet:
    """Point-in-time rows with labels, sorted by (event time, event_id).

    The canonical row order makes the set independent of how the source interleaved partitions
    (a file in topic order and the topic read partition by partition give identical arrays).

    Attributes:
        X: float32 [n, width]; y: int8 labels [n]; ts: int64 event times (ms) [n].
        event_ids, entities: per row.
        data_end_ms: last event time whose labels are fully observed (pass it to
            `train_and_register`, which censors rows whose horizon extends past it).
        n_events: valid events replayed (warm-up and look-ahead included); late: rows the
            engine would not have scored (late events) among them; invalid: records that failed
            validation, by reason.
        warm_from_ms: the first replayed event's time + the spec's memory
            (`models.profile.memory_ms`): rows from then on are warm (the reference profile is
            built from them, `models.profile.warm_rows`).
    """

    X: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    names: tuple[str, ...]
    spec_hash: str
    event_ids: list[str]
    entities: list[str]
    data_end_ms: int
    n_events: int
    late: int
    invalid: dict[str, int] = field(default_factory=dict)
    warm_from_ms: int | None = None

    def __len__(self) -> int:
        return len(self.event_ids)


def build_training_set(
    events: Iterable[dict[str, Any]],
    spec: FeatureSpec,
    num_partitions: int,
    horizon_ms: int,
    window: tuple[int, int] | None = None,
    invalid: dict[str, int] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> TrainingSet:
    """Replay canonical `events` (offset order within each partition) and label the rows.

    Args:
        num_partitions: partitions of the topic the events came from (lateness is per partition).
        horizon_ms: label = the entity purchases within this many ms after the event.
        window: ``(start_ms, end_ms)`` event time, inclusive: keep rows in it. Events before it
            are warm-up (they build window state, so the first rows are point-in-time correct);
            events after it only serve as labels. ``data_end_ms`` is then the window end or the
            watermark of the events given (max event time - grace), whichever is earlier, so a
            label is never taken as 0 for a horizon not yet fully seen. Without a window every
            row is kept and ``data_end_ms`` is the last event time.
        invalid: counts of records that failed validation upstream (copied into the result).
        progress: ``(stage, done, total)`` callback for the feature replay.
    """
    events = events if isinstance(events, list) else list(events)
    if not events:
        raise ValueError(f"no valid events to build a training set from (invalid: {dict(invalid or {})})")
    table = replay(events, spec, num_partitions, invalid=invalid, on_progress=progress)
    ts_all = np.fromiter((e["ts"] for e in events), dtype=np.int64, count=len(events))
    y = purchase_within_events(
        table.entities, table.ts, [e[spec.entity] for e in events], ts_all, [e["event_type"] for e in events], horizon_ms
    )
    keep = np.ones(len(table), dtype=bool)
    data_end = int(ts_all.max())
    if window is not None:
        start, end = int(window[0]), int(window[1])
        keep = (table.ts >= start) & (table.ts <= end)
        data_end = min(end, data_end - spec.grace_ms)
    rows = np.flatnonzero(keep)
    event_ids = np.asarray(table.event_ids, dtype=object)[rows]
    order = rows[np.lexsort((event_ids.astype(str), table.ts[rows]))] if len(rows) else rows
    return TrainingSet(
        X=table.X[order], y=y[order], ts=table.ts[order], names=table.names, spec_hash=table.spec_hash,
        event_ids=[table.event_ids[i] for i in order], entities=[table.entities[i] for i in order],
        data_end_ms=data_end, n_events=len(events), late=len(table.late), invalid=dict(invalid or {}),
        warm_from_ms=int(ts_all.min()) + memory_ms(spec),
    )


def train_from_log(
    events_path: str | Path,
    spec: FeatureSpec,
    num_partitions: int,
    registry_root: str | Path,
    model_name: str,
    horizon_ms: int,
    schema: EventSchema | None = None,
    promote: bool = True,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
    candidates: Sequence[str] = KINDS,
    progress: Callable[[str, int, int | None], None] | None = None,
    window: tuple[int, int] | None = None,
) -> TrainingRunResult:
    """Build the point-in-time training set from `events_path` (JSONL or Parquet, topic order), train,
    export, verify, evaluate on a time-gapped holdout, register, and maybe promote.

    Args:
        num_partitions: partitions of the topic the log came from (lateness is per partition).
        horizon_ms: label = the user purchases within this many ms after the event.
        candidates: model kinds eligible to be registered (see `models.training_run.select_candidate`).
        progress: ``(stage, done, total)`` callback for the feature replay (e.g. `engine.progress.Progress`).
        window: (start_ms, end_ms) event time, inclusive: only events in it become rows; the
            events before it still build feature state (a warm-up). None: every event is a row.
    """
    say = log or (lambda _line: None)
    t0 = time.perf_counter()
    invalid: dict[str, int] = {}
    events: list[dict] = []
    if progress is not None:
        progress("reading events", 0, None)
    for event in read_events(events_path, schema or EventSchema(), invalid):
        events.append(event)
        if progress is not None and len(events) % 16_384 == 0:
            progress("reading events", len(events), None)
    if not events:
        fields = ", ".join((schema or EventSchema()).required)
        raise NoValidEvents(
            f"{events_path} holds no valid events (invalid by reason: {invalid or 'the log is empty'}); every "
            f"event needs {fields}: check the log, or map its field names with schema.field_map in --config")
    data = build_training_set(events, spec, num_partitions, horizon_ms, window=window, invalid=invalid,
                              progress=progress)
    say(f"  features: {len(data):,} rows x {spec.width} from {data.n_events:,} events in "
        f"{time.perf_counter() - t0:.1f} s (late {data.late:,}, invalid {sum(invalid.values()):,}, "
        f"spec {spec.hash})")
    return train_and_register(
        data.X, data.y, data.ts, data.names, data.spec_hash, registry_root, model_name,
        LabelDefinition(kind="purchase_within", horizon_ms=horizon_ms),
        data_end_ms=data.data_end_ms, promote=promote, seed=seed, log=log, candidates=candidates,
        reason=f"trained from {Path(events_path).name}", profile_warm_from_ms=data.warm_from_ms,
    )
