"""Train from an event log: offline features -> labels -> `train_and_register`.

This is the only path from history to a model, and it computes features with
`features.offline.replay`, i.e. the engine's own executor: no second copy of feature code.
Labels come from the stream itself: a purchase by the same entity within the horizon, looked up
in every valid event of the log, late ones included (a late purchase still happened). Rows are
the events the engine would have scored (valid, not late).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from features.eventlog import read_events
from features.offline import replay
from features.schema import EventSchema
from features.spec import FeatureSpec
from models.labels import LabelDefinition, purchase_within_events
from models.train import KINDS
from models.training_run import TrainingRunResult, train_and_register


class NoValidEvents(ValueError):
    """The event log holds no event that passes validation; the message counts the reasons."""


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
) -> TrainingRunResult:
    """Build the point-in-time training set from `events_path` (JSONL or Parquet, topic order), train,
    export, verify, evaluate on a time-gapped holdout, register, and maybe promote.

    Args:
        num_partitions: partitions of the topic the log came from (lateness is per partition).
        horizon_ms: label = the user purchases within this many ms after the event.
        candidates: model kinds eligible to be registered (see `models.training_run.select_candidate`).
        progress: ``(stage, done, total)`` callback for the feature replay (e.g. `engine.progress.Progress`).
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
    table = replay(events, spec, num_partitions, invalid=invalid, on_progress=progress)
    say(f"  features: {len(table):,} rows x {spec.width} from {len(events):,} events in "
        f"{time.perf_counter() - t0:.1f} s (late {len(table.late):,}, invalid {sum(invalid.values()):,}, "
        f"spec {spec.hash})")

    ts_all = np.fromiter((e["ts"] for e in events), dtype=np.int64, count=len(events))
    y = purchase_within_events(
        table.entities, table.ts, [e[spec.entity] for e in events], ts_all, [e["event_type"] for e in events], horizon_ms
    )
    return train_and_register(
        table.X, y, table.ts, table.names, table.spec_hash, registry_root, model_name,
        LabelDefinition(kind="purchase_within", horizon_ms=horizon_ms),
        data_end_ms=int(ts_all.max()), promote=promote, seed=seed, log=log, candidates=candidates,
        reason=f"trained from {Path(events_path).name}",
    )
