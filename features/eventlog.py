"""Reading historical event logs for the offline executor: JSONL (optionally gzip) or Parquet.

A log holds upstream records in the order the live topic holds them (offset order per partition);
every reader yields canonical events (`features.schema`) in that order and counts the records
that fail validation by reason instead of failing. The schema's field mapping applies to both
formats: a Parquet column is an upstream field name.

- ``.jsonl`` / anything else: one JSON object per line (blank lines skipped);
  ``.gz``: the same, gzip-compressed.
- ``.parquet``: one row per event. Timestamp columns (any unit, with or without a time zone;
  naive ones are UTC) become epoch milliseconds, truncated; other columns are taken as their
  Python values, so a row validates exactly as the equivalent JSON object would.

A record that fails validation is counted, never fatal; a file that cannot be read in the format
its name says (not gzip, truncated, not Parquet) raises `EventLogError` naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from features.schema import EventSchema, InvalidEvent

PARQUET_BATCH_ROWS = 65_536


class EventLogError(ValueError):
    """The log file cannot be read in the format its name says; the message names the file."""


def read_events(path: str | Path, schema: EventSchema, invalid: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Canonical events from the log at `path` (format by suffix, see the module docstring)."""
    name = str(path)
    if name.endswith(".parquet"):
        return read_parquet(path, schema, invalid)
    return read_jsonl(path, schema, invalid)


def read_jsonl(path: str | Path, schema: EventSchema, invalid: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Canonical events from a JSONL file (gzip if the name ends in .gz), in file order."""
    fh: IO[bytes] = gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")  # noqa: SIM115
    with fh:
        try:
            for line in fh:
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                try:
                    yield schema.decode(line)
                except InvalidEvent as exc:
                    invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise EventLogError(f"{path} is not a readable gzip file ({exc}); a .gz log must be gzip-compressed "
                                "JSONL") from exc


def read_parquet(path: str | Path, schema: EventSchema, invalid: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Canonical events from a Parquet file, in row order."""
    import pyarrow as pa  # imported here: only the Parquet path needs it
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            names = batch.schema.names
            columns = []
            for column in batch.columns:
                if pa.types.is_timestamp(column.type):
                    column = column.cast(pa.timestamp("ms", column.type.tz), safe=False).cast(pa.int64())
                columns.append(column.to_pylist())
            for values in zip(*columns):
                try:
                    yield schema.from_mapping(dict(zip(names, values)))
                except InvalidEvent as exc:
                    invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
    except pa.ArrowException as exc:
        raise EventLogError(f"{path} is not a readable Parquet file: {exc}") from exc
