"""`build_training_set`: one function for the file and the topic path. Its rows do not depend on
how partitions are interleaved (a file in topic order and the topic read partition by partition
give identical arrays), and what a warm-up duration keeps exact and what it does not."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.synthetic import ClickstreamGenerator, Drift, GeneratorConfig
from features.clickstream import clickstream_spec
from features.partitioning import kafka_partition
from features.spec import Recency, SessionDepth
from models.pipeline import TrainingSet, build_training_set
from models.retraining import min_warmup_ms

SPEC = clickstream_spec()
HORIZON = 3_600_000


def _stream(seed: int, n: int, late: float) -> list[dict[str, Any]]:
    cfg = GeneratorConfig(n_events=n, n_users=100, seed=seed, start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                          jitter_ms=2_000.0, late_fraction=late, late_ms=120_000.0,
                          drifts=(Drift("price_shift", 0.6),))
    return list(ClickstreamGenerator(cfg).events())


def _by_partition(events: list[dict[str, Any]], partitions: int) -> list[dict[str, Any]]:
    """The events as a topic reader returns them: partition after partition, offset order within."""
    return sorted(events, key=lambda e: kafka_partition(e["user_id"], partitions))  # stable: keeps offset order


def _same(a: TrainingSet, b: TrainingSet) -> None:
    assert a.event_ids == b.event_ids
    assert a.X.tobytes() == b.X.tobytes(), "feature rows differ"
    assert np.array_equal(a.y, b.y) and np.array_equal(a.ts, b.ts)
    assert a.data_end_ms == b.data_end_ms


MEMORY = [i for i, name in enumerate(SPEC.names)
          if any(isinstance(f, (Recency, SessionDepth)) and f.name == name for f in SPEC.features)]
WINDOWED = [i for i in range(SPEC.width) if i not in MEMORY]


WINDOWS = {"seed": st.integers(0, 10_000), "partitions": st.integers(1, 6), "start_at": st.floats(0.35, 0.8),
           "length": st.floats(0.05, 0.4), "late": st.sampled_from([0.0, 0.02])}
FEW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _window(events: list[dict[str, Any]], start_at: float, length: float) -> tuple[int, int]:
    ts = np.array([e["ts"] for e in events])
    lo, hi = int(ts.min()), int(ts.max())
    start = lo + int((hi - lo) * start_at)
    return start, min(hi, start + int((hi - lo) * length))


@FEW
@given(**WINDOWS)
def test_rows_do_not_depend_on_how_partitions_are_interleaved(
    seed: int, partitions: int, start_at: float, length: float, late: float
) -> None:
    events = _stream(seed, 4_000, late)
    window = _window(events, start_at, length)
    in_file_order = build_training_set(events, SPEC, partitions, HORIZON, window=window)
    as_read_from_topic = build_training_set(_by_partition(events, partitions), SPEC, partitions, HORIZON, window=window)
    _same(in_file_order, as_read_from_topic)
    ts = in_file_order.ts
    assert len(ts) > 0 and (ts >= window[0]).all() and (ts <= window[1]).all()
    assert in_file_order.data_end_ms == min(window[1], max(e["ts"] for e in events) - SPEC.grace_ms)
    assert list(ts) == sorted(ts), "rows are in event-time order"


@FEW
@given(**WINDOWS)
def test_a_minimal_warmup_keeps_window_aggregates_exact(
    seed: int, partitions: int, start_at: float, length: float, late: float
) -> None:
    events = _stream(seed, 4_000, late)
    window = _window(events, start_at, length)
    ts = np.array([e["ts"] for e in events])
    full = build_training_set(events, SPEC, partitions, HORIZON, window=window)
    # A seek by record time >= event time skips only events before the first one at/after T.
    first = int(np.argmax(ts >= window[0] - min_warmup_ms(SPEC)))
    seeked = build_training_set(_by_partition(events[first:], partitions), SPEC, partitions, HORIZON, window=window)
    assert full.event_ids == seeked.event_ids and np.array_equal(full.y, seeked.y)
    assert full.X[:, WINDOWED].tobytes() == seeked.X[:, WINDOWED].tobytes()


def test_entity_memory_can_outlive_a_warmup_duration() -> None:
    """Why the default warm-up is all retained history: the last cart add of a user who was never
    idle for the TTL is remembered for longer than any fixed warm-up."""
    events = _stream(0, 5_000, 0.0)
    window = _window(events, 0.5, 0.25)
    ts = np.array([e["ts"] for e in events])
    full = build_training_set(events, SPEC, 1, HORIZON, window=window)
    seeked = build_training_set(events[int(np.argmax(ts >= window[0] - min_warmup_ms(SPEC))):], SPEC, 1, HORIZON,
                                window=window)
    differs = [SPEC.names[j] for j in MEMORY
               if full.X[:, j].tobytes() != seeked.X[:, j].tobytes()]
    assert differs == ["secs_since_last_cart_add"]
    assert full.X[:, WINDOWED].tobytes() == seeked.X[:, WINDOWED].tobytes()


def test_a_warmup_shorter_than_the_longest_window_loses_window_state() -> None:
    events = _stream(1, 5_000, 0.0)
    ts = np.array([e["ts"] for e in events])
    window = (int(ts[3_000]), int(ts.max()))
    full = build_training_set(events, SPEC, 4, HORIZON, window=window)
    cold = build_training_set(events[int(np.argmax(ts >= window[0])):], SPEC, 4, HORIZON, window=window)
    assert full.event_ids == cold.event_ids
    assert full.X[:, WINDOWED].tobytes() != cold.X[:, WINDOWED].tobytes()


def test_without_a_window_every_row_is_kept_and_data_ends_at_the_last_event() -> None:
    events = _stream(2, 2_000, 0.02)
    data = build_training_set(events, SPEC, 4, HORIZON)
    assert len(data) == data.n_events - data.late
    assert data.data_end_ms == max(e["ts"] for e in events)
    assert data.warm_from_ms == min(e["ts"] for e in events) + min_warmup_ms(SPEC)
    with pytest.raises(ValueError, match="no valid events"):
        build_training_set([], SPEC, 4, HORIZON)
