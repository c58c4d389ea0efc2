"""The live phase of `streamscore demo`: the paced stream, and the observer that samples the
engine's /metrics, prints the trigger and the worker's outcomes as they appear, and decides when
the loop has closed.

Drift statistics are the engine's own (``streamscore_drift_statistic`` / ``_threshold`` gauges of
the last closed window per partition and column), sampled every 0.5 s, not recomputed offline.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from engine.config import EngineConfig
from engine.demo_report import outcome_lines, trigger_lines
from engine.retrain_worker import RetrainWorker
from features.synthetic import ClickstreamGenerator, GeneratorConfig


def say(text: str) -> None:
    print(f"      {text}", flush=True)


@dataclass(frozen=True)
class DriftSample:
    """One scrape of the engine's /metrics during the live phase.

    Attributes:
        t_s: seconds since the live stream started (wall clock).
        consumed: input messages the engine had consumed (``streamscore_events_in_total``).
        feature_ratio: the largest ``psi / threshold`` over features and partitions (last closed
            windows; >= 1 is a drifted column), NaN before any window closed.
        feature: the column of `feature_ratio`.
        score_ratio: the same ratio for the score column (prediction drift).
        version: the champion version the engine served (``streamscore_model_version``).
    """

    t_s: float
    consumed: int
    feature_ratio: float
    feature: str
    score_ratio: float
    version: int | None


def parse_metrics(text: str, t_s: float) -> DriftSample:
    """A `DriftSample` from a Prometheus text exposition of the engine."""
    psi: dict[tuple[str, str], float] = {}
    thr: dict[tuple[str, str], float] = {}
    consumed, version = 0.0, None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("streamscore_drift_statistic", "streamscore_drift_threshold") \
                    and s.labels.get("statistic") == "psi":
                target = psi if s.name == "streamscore_drift_statistic" else thr
                target[(s.labels["partition"], s.labels["column"])] = s.value
            elif s.name == "streamscore_events_in_total":
                consumed += s.value
            elif s.name == "streamscore_model_version" and s.labels.get("variant") == "champion":
                version = int(s.value)
    ratios = {k: v / thr[k] for k, v in psi.items() if thr.get(k, 0) > 0}
    features = {k: r for k, r in ratios.items() if k[1] != "score"}
    top = max(features, key=features.__getitem__) if features else None
    scores = [r for k, r in ratios.items() if k[1] == "score"]
    return DriftSample(t_s=t_s, consumed=int(consumed), feature_ratio=features[top] if top else math.nan,
                       feature=top[1] if top else "", score_ratio=max(scores) if scores else math.nan,
                       version=version)


class LiveStream:
    """The live payloads (stable, then drifted at emission index `drift_at`), recording every valid
    event with its stream position; iteration ends once `stop` is set."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        self._payloads = ClickstreamGenerator(cfg).labelled_payloads()
        self.values: list[bytes] = []  # valid events' JSON, in stream order
        self.positions: list[int] = []
        self.yielded = 0
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value, bad_kind in self._payloads:
            if self.stop.is_set():
                return
            if bad_kind is None:
                self.values.append(value)
                self.positions.append(self.yielded)
            self.yielded += 1
            yield key, value

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for v in self.values]


@dataclass
class LoopState:
    """What the live phase saw, in wall-clock order."""

    samples: list[DriftSample] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    promoted: int | None = None
    swap_at: int | None = None  # stream position when the engine was seen serving `promoted`


def _worth_printing(record: logging.LogRecord) -> bool:
    """The worker's lines without the per-trigger noise: the watcher prints each trigger and each
    outcome itself, and the other partitions' triggers about the replaced version are only
    counted (``stale``) in the summary."""
    text = record.getMessage()
    return not (text.startswith("trigger ") or text.startswith("[retrain] stale trigger"))


def worker_log() -> logging.Handler:
    """Print the worker's progress lines (logger ``streamscore.retrain``) indented."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("      worker | %(message)s"))
    handler.addFilter(_worth_printing)
    logger = logging.getLogger("streamscore.retrain")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def watch(cfg: EngineConfig, bootstrap: str, port: int, engine: subprocess.Popen[str], worker: RetrainWorker,
           stream: LiveStream, state: LoopState, drift_at: int, after_swap_events: int, max_seconds: float) -> None:
    """Sample the engine's /metrics, print triggers and outcomes as they appear, and stop the
    stream once the promoted version has served `after_swap_events` events."""
    triggers = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{cfg.group_id}-demo-watch",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    triggers.assign([TopicPartition(cfg.retrain.trigger_topic, 0, 0)])
    t0 = time.monotonic()
    seen_outcomes, last_progress, drift_said = 0, 0.0, False
    try:
        while time.monotonic() - t0 < max_seconds and engine.poll() is None:
            now = time.monotonic() - t0
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    sample = parse_metrics(resp.read().decode(), now)
                state.samples.append(sample)
            except OSError:
                sample = None
            if not drift_said and stream.yielded >= drift_at:
                drift_said = True
                say(f"[{now:5.1f} s] drift injected at event {drift_at:,}")
            if sample is not None and now - last_progress >= 5:
                last_progress = now
                say(f"[{now:5.1f} s] produced {stream.yielded:,}, engine consumed {sample.consumed:,}, serving "
                    f"v{sample.version}; largest feature PSI/threshold {sample.feature_ratio:.2f} ({sample.feature})")
            for m in triggers.consume(100, timeout=0.1):
                if m.error() is None:
                    trig = orjson.loads(m.value())
                    state.triggers.append(trig)
                    if len(state.triggers) == 1:
                        say(f"[{now:5.1f} s] RETRAINING TRIGGER published by the engine's monitors:")
                        for line in trigger_lines(trig):
                            say("  " + line)
            outcomes = list(worker.stats.outcomes)
            for o in outcomes[seen_outcomes:]:
                if o["decision"] in ("stale", "duplicate"):
                    continue  # other partitions' triggers about the replaced version (the worker logs them)
                say(f"[{now:5.1f} s] RETRAINING OUTCOME for trigger {o.get('trigger_id')}: {o['decision']} "
                    f"v{o.get('version')}")
                for line in outcome_lines(o):
                    say("  " + line)
                if o["decision"] == "promoted" and state.promoted is None:
                    state.promoted = o["version"]
            seen_outcomes = len(outcomes)
            if state.promoted is not None and state.swap_at is None and sample is not None \
                    and sample.version == state.promoted:
                state.swap_at = stream.yielded
                say(f"[{now:5.1f} s] the engine hot-swapped to v{state.promoted} (no restart); streaming "
                    f"{after_swap_events:,} more events")
            if state.swap_at is not None and stream.yielded >= max(drift_at, state.swap_at + after_swap_events):
                return
            time.sleep(0.5)  # the sampling period of /metrics (not a synchronisation)
        say(f"the loop did not complete within {max_seconds:.0f} s of live traffic"
             if engine.poll() is None else f"the engine exited early with code {engine.returncode}")
    finally:
        triggers.close()
