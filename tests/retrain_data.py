"""Generated histories, champions and hand-built triggers shared by the retraining tests.

`drifted_events`: a 36-day clickstream (400 users) whose mobile checkouts stop converting half-way
(``conversion_collapse``), so a champion trained on the first half is clearly beaten, on a holdout
from the second half, by a candidate trained on the second half (AUC ~0.90 vs ~0.75 for seed 5).
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from features.synthetic import ClickstreamGenerator, Drift, GeneratorConfig
from features.clickstream import clickstream_spec
from models.labels import LabelDefinition
from models.pipeline import build_training_set
from models.registry import Registry
from models.training_run import train_and_register
from models.trigger import RetrainTrigger

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
PARTITIONS = 4
HORIZON_MS = 3_600_000
N_EVENTS = 30_000
CHAMPION_EVENTS = 15_000  # the champion sees the stream before the drift (which starts at 15,000)


@lru_cache(maxsize=4)
def _events(seed: int) -> tuple[dict[str, Any], ...]:
    cfg = GeneratorConfig(n_events=N_EVENTS, n_users=400, seed=seed, start=START, jitter_ms=1_000.0,
                          drifts=(Drift("conversion_collapse", 0.5, {"device": "mobile"}),))
    return tuple(ClickstreamGenerator(cfg).events())


def drifted_events(seed: int = 5) -> list[dict[str, Any]]:
    """The drifted stream in emission (topic) order; fresh dicts on every call."""
    return [dict(e) for e in _events(seed)]


def post_drift_window(events: list[dict[str, Any]]) -> tuple[int, int]:
    """An event-time window well after the drift, to the end of the stream."""
    ts = np.array([e["ts"] for e in events])
    return int(ts[18_000]), int(ts.max())


def champion_registry(root: Path, tmp_path_factory: Any, seed: int = 5) -> Registry:
    """A registry at `root` whose champion (v1) was trained on the first half of
    `drifted_events(seed)`: trained once per test session (into the session's base temp dir),
    then copied."""
    cache = Path(tmp_path_factory.getbasetemp()) / f"retrain-champion-{seed}"
    if not (cache / "purchase").exists():
        spec = clickstream_spec()
        data = build_training_set(drifted_events(seed)[:CHAMPION_EVENTS], spec, PARTITIONS, HORIZON_MS)
        train_and_register(data.X, data.y, data.ts, data.names, data.spec_hash, Registry(cache), "purchase",
                           LabelDefinition(horizon_ms=HORIZON_MS), data_end_ms=data.data_end_ms, log=None)
    shutil.copytree(cache, root)
    return Registry(root)


def window_trigger(window: tuple[int, int], key: str = "k-1", spec_hash: str | None = None,
                   reason: str = "performance", model: str = "purchase", version: int | None = 1) -> RetrainTrigger:
    """A hand-built trigger as a monitor would publish it."""
    start, end = window
    return RetrainTrigger(
        reason=reason, model={"name": model, "version": version},
        feature_spec=spec_hash or clickstream_spec().hash,
        detector={"name": "adwin", "params": {"delta": 0.002}}, statistic=0.07, threshold=0.05,
        current={"start_ms": start, "end_ms": end, "n": 1_000},
        evidence=[{"name": "auc", "statistic": "rolling_auc", "value": 0.75, "threshold": 0.8, "n": 1_000}],
        suggested_training_window={"start_ms": start, "end_ms": end}, idempotency_key=key,
        created_at=1_767_225_600_000, source={"test": True},
    )
