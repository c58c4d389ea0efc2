"""Prometheus metrics and the HTTP health endpoint of one engine process.

``GET /metrics`` serves the Prometheus exposition; ``GET /healthz`` returns JSON
``{"status": "ok"|"starting"|"stalled", ...}`` with HTTP 200 when ok, 503 otherwise. A process is
"stalled" when it has assigned partitions but has not finished a poll loop for 30 s.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STALL_AFTER_S = 30.0


class EngineMetrics:
    """The engine's metrics, in their own registry (several engines may share a test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("streamscore_events_in", "Input messages consumed", registry=r)
        self.scored = Counter("streamscore_scored", "Events scored and published", ["variant"], registry=r)
        self.dead_lettered = Counter("streamscore_dead_lettered", "Messages sent to the DLQ", ["reason"], registry=r)
        self.skipped_applied = Counter(
            "streamscore_skipped_already_applied", "Redelivered messages already in the state store", registry=r
        )
        self.batch_seconds = Histogram(
            "streamscore_batch_seconds", "Wall time of one micro-batch, consume to commit", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.batch_size = Histogram(
            "streamscore_batch_size", "Messages per micro-batch", registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
        )
        self.restored_records = Counter(
            "streamscore_restored_changelog_records", "State records restored from the changelog", registry=r
        )
        self.restore_remaining = Gauge(
            "streamscore_restore_remaining_offsets", "Changelog offsets left to restore, by input partition",
            ["partition"], registry=r,
        )
        self.expired_records = Counter(
            "streamscore_expired_records", "Idle entity records deleted by the expiry sweep", registry=r
        )
        self.aborted_batches = Counter("streamscore_aborted_batches", "Batch transactions aborted", registry=r)
        self.assigned = Gauge("streamscore_assigned_partitions", "Input partitions owned", registry=r)
        self.model_version = _VersionGauge(registry=r)
        self.models_refused = Counter(
            "streamscore_models_refused", "Model versions refused at load (hash, spec or input mismatch)", registry=r
        )
        self.monitor = MonitorMetrics(r)
        self.last_loop = time.monotonic()
        self.health_extra: dict[str, Any] = {}

    def health(self) -> tuple[int, dict[str, Any]]:
        age = time.monotonic() - self.last_loop
        assigned = int(self.assigned._value.get())  # noqa: SLF001 - prometheus has no public getter
        status = "ok" if age < STALL_AFTER_S else "stalled"
        body = {"status": status, "seconds_since_loop": round(age, 3), "assigned_partitions": assigned,
                **self.health_extra}
        return (200 if status == "ok" else 503), body


class MonitorMetrics:
    """Metrics of the drift and performance monitors (engine/monitors.py), per input partition.

    Gauges hold the statistics of the last evaluated window (drift) or label window
    (performance); counters count warnings, suppressed and published triggers, label outcomes,
    reference switches and the seconds spent in the monitors (their cost)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.drift = Gauge("streamscore_drift_statistic", "Drift statistic of the last closed window vs the reference",
                           ["partition", "column", "statistic"], registry=r)
        self.threshold = Gauge("streamscore_drift_threshold", "Threshold of a drift statistic for the last window "
                               "(PSI: max(calibrated, floor))", ["partition", "column", "statistic"], registry=r)
        self.window_fill = Gauge("streamscore_monitor_window_events", "Rows in the partition's open drift window",
                                 ["partition"], registry=r)
        self.performance = Gauge("streamscore_monitor_performance", "Metric of the last label window (auc, log_loss, "
                                 "ece, base_rate, mean_score, n)", ["partition", "metric"], registry=r)
        self.warnings = Counter("streamscore_monitor_warnings", "Windows with an unconfirmed drift/decay signal",
                                ["reason"], registry=r)
        self.suppressed = Counter("streamscore_monitor_suppressed", "Confirmed signals suppressed by the cooldown",
                                  ["reason"], registry=r)
        self.triggers = Counter("streamscore_retrain_triggers", "Retraining triggers published", ["reason"], registry=r)
        self.labels = Counter("streamscore_monitor_labels_resolved", "Live outcomes joined to scores", ["label"],
                              registry=r)
        self.switches = Counter("streamscore_monitor_reference_switches", "Partition monitors that switched to a new "
                                "champion's reference", registry=r)
        self.seconds = Counter("streamscore_monitor_seconds", "Wall time spent in the monitors", registry=r)

    def apply(self, ev: Any) -> None:
        """Publish one committed batch's `engine.monitors.Evaluation`."""
        p = str(ev.partition)
        self.window_fill.labels(p).set(ev.window_fill)
        self.seconds.inc(ev.seconds)
        if ev.switched:
            self.switches.inc()
        negatives, positives = ev.resolved
        if negatives:
            self.labels.labels("0").inc(negatives)
        if positives:
            self.labels.labels("1").inc(positives)
        for outcome, reason in ev.outcomes:
            counter = {"warning": self.warnings, "suppressed": self.suppressed, "trigger": self.triggers}.get(outcome)
            if counter is not None:
                counter.labels(reason).inc()
        if ev.drift:
            for column, stats in ev.drift.items():
                for name in ("psi", "js", "ks"):
                    self.drift.labels(p, column, name).set(stats[name])
                    self.threshold.labels(p, column, name).set(stats[f"{name}_threshold"])
        if ev.performance:
            for metric, value in ev.performance.items():
                self.performance.labels(p, metric).set(value)


class _VersionGauge:
    """``streamscore_model_version{name, variant}``; a variant that stops serving is removed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauge = Gauge("streamscore_model_version", "Serving model version", ["name", "variant"],
                            registry=registry)
        self._names: dict[str, str] = {}

    def labels(self, name: str, variant: str) -> Gauge:
        old = self._names.get(variant)
        if old is not None and old != name:
            self._gauge.remove(old, variant)
        self._names[variant] = name
        return self._gauge.labels(name, variant)

    def remove_variant(self, variant: str) -> None:
        name = self._names.pop(variant, None)
        if name is not None:
            self._gauge.remove(name, variant)


def serve_http(metrics: EngineMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the /metrics + /healthz server on a daemon thread; returns it (call .shutdown())."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/metrics":
                code, body, ctype = 200, generate_latest(metrics.registry), "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                code, payload = metrics.health()
                body, ctype = orjson.dumps(payload), "application/json"
            else:
                code, body, ctype = 404, b"not found\n", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # quiet: no per-request logging
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="streamscore-http", daemon=True).start()
    return server
