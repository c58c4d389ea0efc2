"""Where a micro-batch's time goes: per-stage wall time, measured with perf_counter laps.

The loop calls `StageClock.start()` when a batch begins and `lap(stage)` after each stage; a lap
charges the time since the previous lap (or the start) to `stage`, so stages are exclusive and add
up to the batch's wall time. Cost: one perf_counter call and one dict update per lap, a few laps
per partition per batch, never per event.

Stages (in loop order): ``decode`` (skip-applied check, decode + validate, dead letters),
``state_read`` (one RocksDB multi-get), ``features`` (`process_batch`), ``model`` (ONNX calls of
every serving variant), ``produce`` (score records built; with the commit pipeline also the
batch's queued outputs and changelog produced into its transaction), ``monitor`` (drift
windows, label join and triggers of the batch; `engine.monitors`), ``commit`` (at_least_once:
waiting for deliveries and the offset commit; exactly_once: waiting for the transaction commit,
which with the commit pipeline is the previous batch's and only the part of it the batch's own
compute did not hide), ``state_write`` (the stores' WriteBatches; pipelined: the previous
batch's). `finish()` observes each stage's share of the batch into the
Prometheus histogram ``streamscore_stage_seconds{stage}``; `totals` keeps cumulative seconds.
"""

from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, Histogram

STAGES = ("decode", "state_read", "features", "model", "produce", "monitor", "commit", "state_write")
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class StageClock:
    """Exclusive per-stage wall time of micro-batches (seconds), cumulative and per batch."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._batch: dict[str, float] = defaultdict(float)
        self._last = 0.0
        self._hist = Histogram("streamscore_stage_seconds", "Wall time of one micro-batch spent in each stage",
                               ["stage"], registry=registry, buckets=_BUCKETS) if registry is not None else None

    def start(self) -> None:
        """A batch begins: laps count from now."""
        self._batch.clear()
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap (or `start`) to `stage`."""
        now = time.perf_counter()
        self._batch[stage] += now - self._last
        self._last = now

    def skip(self) -> None:
        """Charge nothing for the time since the previous lap (work outside any stage)."""
        self._last = time.perf_counter()

    def finish(self) -> None:
        """The batch committed: add its laps to the totals and the histogram."""
        for stage, seconds in self._batch.items():
            self.totals[stage] += seconds
            if self._hist is not None:
                self._hist.labels(stage).observe(seconds)
        self._batch.clear()
