"""Process logging: human-readable lines or JSON lines (one object per record, for log shippers).

The engine logs per batch or per lifecycle event, never per input event, at INFO and above.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import orjson

FORMATS = ("text", "json")


class JsonLinesFormatter(logging.Formatter):
    """``{"ts": ISO-8601 UTC, "level", "logger", "message", ["exc"]}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging to stderr at `level` in `fmt` (``text`` or ``json``); replaces earlier handlers."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR)")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
