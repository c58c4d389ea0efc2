"""Signals and log formats of the engine process (no broker needed)."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import orjson
import pytest

from engine import runner
from engine.logs import JsonLinesFormatter, configure_logging
from engine.observability import EngineMetrics, serve_http


def test_first_signal_drains_second_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(runner.os, "_exit", exits.append)
    stopped = threading.Event()
    fake = SimpleNamespace(_stop=stopped, stop=stopped.set)
    runner.ScoringEngine._on_signal(fake, 15, None)  # type: ignore[arg-type]
    assert stopped.is_set() and exits == []
    runner.ScoringEngine._on_signal(fake, 15, None)  # type: ignore[arg-type]
    assert exits == [143]


def test_json_lines_log_format() -> None:
    record = logging.LogRecord("streamscore.engine", logging.INFO, __file__, 1, "assigned %s[%d]", ("clicks", 2), None)
    doc = orjson.loads(JsonLinesFormatter().format(record))
    assert doc["level"] == "INFO" and doc["logger"] == "streamscore.engine" and doc["message"] == "assigned clicks[2]"
    assert doc["ts"].endswith("+00:00")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("LOUD", "text")


def test_readiness_reasons_and_http_routes() -> None:
    m = EngineMetrics()
    code, body = m.readiness()
    assert code == 503 and body["reasons"] == ["no partitions assigned", "no champion model loaded"]
    m.assigned.set(2)
    m.model_loaded = True
    m.restoring.add(1)
    assert m.readiness()[1]["reasons"] == ["restoring partitions [1]"]
    m.restoring.clear()
    assert m.readiness() == (200, {"ready": True, "reasons": [], "assigned_partitions": 2})
    server = serve_http(m, 0)
    port = server.server_address[1]
    try:
        for path in ("/livez", "/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                assert resp.status == 200
        m.stopping = True
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert err.value.code == 503 and b"stopping" in err.value.read()
    finally:
        server.shutdown()
