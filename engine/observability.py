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
        self.sessions_closed = Counter(
            "streamscore_sessions_closed", "Closed sessions reported on sessions.closed_topic", registry=r
        )
        self.assigned = Gauge("streamscore_assigned_partitions", "Input partitions owned", registry=r)
        self.model_version = _VersionGauge(registry=r)
        self.models_refused = Counter(
            "streamscore_models_refused", "Model versions refused at load (hash, spec or input mismatch)", registry=r
        )
        self.last_loop = time.monotonic()
        self.health_extra: dict[str, Any] = {}

    def health(self) -> tuple[int, dict[str, Any]]:
        age = time.monotonic() - self.last_loop
        assigned = int(self.assigned._value.get())  # noqa: SLF001 - prometheus has no public getter
        status = "ok" if age < STALL_AFTER_S else "stalled"
        body = {"status": status, "seconds_since_loop": round(age, 3), "assigned_partitions": assigned,
                **self.health_extra}
        return (200 if status == "ok" else 503), body


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
