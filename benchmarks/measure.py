"""End-to-end measurement of a system under test, from the outside, the same way for every engine.

* `ScoreReader`: a ``read_committed`` consumer of the score topic (a downstream consumer sees
  only committed transactions). For each score record it keeps the emission index of the event
  it answers (from ``event_id``) and the wall time the record became visible to this consumer:
  the return of a ``poll()`` (it blocks only until one record is there), with whatever else has
  already arrived drained at once by a non-blocking ``consume()``. (A blocking
  ``consume(n, timeout)`` returns only when n records are there or the timeout passed, which at
  light load stamps records up to the timeout late: it once added ~25 ms on average to every
  latency this harness measured.)
* `latency_account`: latency of event ``i`` = visible time of its first score - intended send
  time of ``i`` (`benchmarks.openloop`), in an HDR histogram (microsecond resolution, 3
  significant digits): p50, p90, p99, p99.9, max; duplicates (at-least-once redelivery) and
  missing events are counted, not folded in.
* `ProcessSampler`: CPU (share of one core) and RSS of the engine processes, every `interval_s`
  (psutil when installed, else /proc).
* `LagSampler`: the engine group's consumer lag on the input topic (end offsets - committed).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_HIGHEST_US = 3_600_000_000  # 1 h


def _index(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


def latency_histogram(latencies_s: np.ndarray) -> HdrHistogram:
    """An HDR histogram of latencies given in seconds, recorded in microseconds (>= 1 µs)."""
    hist = HdrHistogram(1, _HIGHEST_US, 3)
    us = np.clip(np.rint(np.asarray(latencies_s, dtype=np.float64) * 1e6), 1, _HIGHEST_US).astype(np.int64)
    values, counts = np.unique(us, return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist()):
        hist.record_value(v, c)
    return hist


def latency_account(intended: np.ndarray, index: np.ndarray, visible: np.ndarray,
                    expected: int | None = None) -> dict[str, Any]:
    """Latency figures (ms) of one run.

    Args:
        intended: intended send time (epoch s) of each emitted event, indexed by emission index.
        index: emission index of each score record seen, in the order seen.
        visible: the time (epoch s) each of those records became visible downstream.
        expected: how many events should have a score (default: all of `intended`).
    """
    index = np.asarray(index, dtype=np.int64)
    visible = np.asarray(visible, dtype=np.float64)
    n = len(intended) if expected is None else expected
    first_vis = np.full(len(intended), np.inf)
    valid = (index >= 0) & (index < len(intended))
    np.minimum.at(first_vis, index[valid], visible[valid])
    answered = np.isfinite(first_vis)
    lat = first_vis[answered] - intended[answered]
    out: dict[str, Any] = {
        "scores_seen": int(len(index)), "answered": int(answered.sum()),
        "duplicates": int(valid.sum() - answered.sum()), "unknown_index": int((~valid).sum()),
        "missing": int(max(n - answered.sum(), 0)),
    }
    if lat.size:
        hist = latency_histogram(lat)
        out["latency_ms"] = {f"p{q:g}": hist.get_value_at_percentile(q) / 1000.0 for q in PERCENTILES}
        out["latency_ms"]["max"] = hist.get_max_value() / 1000.0
        out["latency_ms"]["mean"] = round(hist.get_mean_value() / 1000.0, 3)
        out["latency_ms"]["min"] = hist.get_min_value() / 1000.0
        vis = first_vis[answered]
        span = float(vis.max() - vis.min())
        out["first_visible"], out["last_visible"] = float(vis.min()), float(vis.max())
        out["out_rate"] = round((len(vis) - 1) / span, 1) if span > 0 else None
    return out


def cdf_points(latencies_s: np.ndarray, points: int = 200) -> list[tuple[float, float]]:
    """(latency ms, quantile) pairs of the latency CDF, log-spaced in the tail (for plots)."""
    if not len(latencies_s):
        return []
    qs = 1.0 - np.logspace(0, -4, points)  # 0 .. 0.9999
    qs = np.concatenate([qs, [1.0]])
    vals = np.quantile(np.asarray(latencies_s) * 1000.0, qs)
    return [(round(float(v), 3), round(float(q), 6)) for v, q in zip(vals, qs)]


def per_second(times: np.ndarray, t0: float) -> list[int]:
    """Counts per whole second since `t0` (throughput timeline)."""
    if not len(times):
        return []
    bins = np.floor(np.asarray(times) - t0).astype(np.int64)
    bins = bins[bins >= 0]
    return np.bincount(bins).tolist() if len(bins) else []


class ScoreReader:
    """A read_committed consumer of the score topic on its own thread (see module docstring)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False, "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5, "enable.partition.eof": False,
        })
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._index: list[np.ndarray] = []
        self._visible: list[np.ndarray] = []
        self.count = 0
        self.first_seen: float | None = None  # wall time of the first record (after the last reset)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="score-reader", daemon=True)

    def start(self) -> ScoreReader:
        self._thread.start()
        return self

    def _loop(self) -> None:
        loads, poll, consume = orjson.loads, self._consumer.poll, self._consumer.consume
        while not self._stop.is_set():
            first = poll(0.05)
            if first is None:
                continue
            now = time.time()
            msgs = [first, *consume(1999, timeout=0)]
            idx = [_index(loads(m.value())["event_id"]) for m in msgs if m.error() is None and m.value()]
            with self._lock:
                self._index.append(np.asarray(idx, dtype=np.int64))
                self._visible.append(np.full(len(idx), now))
                self.count += len(idx)
                if self.first_seen is None and idx:
                    self.first_seen = now
        self._consumer.close()

    def wait_for(self, n: int, timeout_s: float, idle_s: float | None = None) -> bool:
        """Block until `n` records were seen (True), `timeout_s` passed, or nothing new arrived for
        `idle_s` seconds after the first record (False)."""
        deadline = time.monotonic() + timeout_s
        last, last_change = self.count, time.monotonic()
        while time.monotonic() < deadline:
            if self.count >= n:
                return True
            time.sleep(0.05)
            if self.count != last:
                last, last_change = self.count, time.monotonic()
            elif idle_s is not None and self.count and time.monotonic() - last_change > idle_s:
                return False
        return self.count >= n

    def reset(self) -> None:
        """Forget what was seen so far (after a warm-up)."""
        with self._lock:
            self._index, self._visible = [], []
            self.count = 0
            self.first_seen = None

    def stop(self) -> tuple[np.ndarray, np.ndarray]:
        """Stop reading; returns (emission index, visible time) of every record seen."""
        self._stop.set()
        self._thread.join(10)
        if not self._index:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        return np.concatenate(self._index), np.concatenate(self._visible)


@dataclass
class _Series:
    t: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # share of one core since the previous sample
    rss_mb: list[float] = field(default_factory=list)


def _proc_times(pid: int) -> tuple[float, float]:
    """(user+system CPU seconds, RSS bytes) of `pid` and its children, via psutil or /proc."""
    try:
        import psutil

        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
        cpu = rss = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        return cpu, rss
    except ImportError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tck, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


class ProcessSampler:
    """CPU and RSS of a set of processes (by pid, children included), sampled on a thread."""

    def __init__(self, pids: Sequence[int], interval_s: float = 0.5) -> None:
        self.pids = list(pids)
        self.interval_s = interval_s
        self.series = {pid: _Series() for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proc-sampler", daemon=True)
        self._cpu0: dict[int, float] = {}

    def start(self) -> ProcessSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        prev: dict[int, tuple[float, float]] = {}
        while True:
            now = time.time()
            for pid in self.pids:
                try:
                    cpu, rss = _proc_times(pid)
                except (OSError, ValueError, IndexError):
                    continue
                self._cpu0.setdefault(pid, cpu)
                if pid in prev:
                    t_prev, c_prev = prev[pid]
                    s = self.series[pid]
                    s.t.append(round(now, 3))
                    s.cpu.append(round((cpu - c_prev) / max(now - t_prev, 1e-6), 3))
                    s.rss_mb.append(round(rss / 1e6, 1))
                prev[pid] = (now, cpu)
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        out: dict[str, Any] = {"processes": {}}
        for pid, s in self.series.items():
            out["processes"][str(pid)] = {
                "t": s.t, "cpu": s.cpu, "rss_mb": s.rss_mb,
                "cpu_mean": round(float(np.mean(s.cpu)), 3) if s.cpu else None,
                "rss_max_mb": max(s.rss_mb) if s.rss_mb else None,
            }
        rss = [p["rss_max_mb"] for p in out["processes"].values() if p["rss_max_mb"] is not None]
        cpu = [p["cpu_mean"] for p in out["processes"].values() if p["cpu_mean"] is not None]
        out["rss_max_mb_total"] = round(sum(rss), 1) if rss else None
        out["cpu_mean_total"] = round(sum(cpu), 3) if cpu else None
        return out


def cpu_in_span(resources: dict[str, Any], t0: float, t1: float) -> float | None:
    """Mean CPU (cores, all sampled processes) over samples taken within [t0, t1] (epoch s):
    the measured span only, without start-up and idle tail."""
    total, any_sample = 0.0, False
    for p in resources.get("processes", {}).values():
        xs = [c for t, c in zip(p["t"], p["cpu"]) if t0 <= t <= t1]
        if xs:
            total += float(np.mean(xs))
            any_sample = True
    return round(total, 3) if any_sample else None


class LagSampler:
    """Consumer lag of `group` on `topic` (sum over partitions of end offset - committed offset)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, interval_s: float = 1.0) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self.topic, self.partitions, self.interval_s = topic, partitions, interval_s
        self.t: list[float] = []
        self.lag: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lag-sampler", daemon=True)

    def start(self) -> LagSampler:
        self._thread.start()
        return self

    def sample(self) -> int | None:
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        try:
            committed = self._consumer.committed(tps, timeout=5)
            lag = 0
            for tp in committed:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=5)
                lag += high - max(tp.offset, 0)
            return lag
        except KafkaException:
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            lag = self.sample()
            if lag is not None:
                self.t.append(round(time.time(), 3))
                self.lag.append(lag)
            self._stop.wait(self.interval_s)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()
        return {"t": self.t, "lag": self.lag, "max": max(self.lag) if self.lag else None}
