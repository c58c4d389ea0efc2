"""Reading historical event logs for the offline executor: JSONL, CSV (optionally gzip) or Parquet.

A log holds upstream records in the order the live topic holds them (offset order per partition);
every reader yields canonical events (`features.schema`) in that order and counts the records
that fail validation by reason instead of failing. The schema's field mapping applies to both
formats: a Parquet column is an upstream field name.

- ``.jsonl`` / anything else: one JSON object per line (blank lines skipped);
  ``.gz``: the same, gzip-compressed.
- ``.csv`` / ``.csv.gz``: a header row, then one row per event (RFC 4180 quoting). CSV has no
  types, so `csv_record` types each row as an upstream JSON object would be: an empty cell is
  null, the price column a number, the timestamp column an integer or number if it looks like
  one (else the string, for ISO-8601 or ``ts_format``), everything else a string.
- ``.parquet``: one row per event. Timestamp columns (any unit, with or without a time zone;
  naive ones are UTC) become epoch milliseconds, truncated; other columns are taken as their
  Python values, so a row validates exactly as the equivalent JSON object would.

A record that fails validation is counted, never fatal; a file that cannot be read in the format
its name says (not gzip, truncated, not Parquet) raises `EventLogError` naming the file.
`upstream_messages` turns a log back into the messages an upstream would produce, for replaying it
to a topic (`streamscore gen replay`): a replayed record decodes online exactly as it does here.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from features.schema import EventSchema, InvalidEvent

PARQUET_BATCH_ROWS = 65_536
MALFORMED_CSV = "malformed_csv"  # a CSV row with more cells than the header has names


class EventLogError(ValueError):
    """The log file cannot be read in the format its name says; the message names the file."""


def read_events(path: str | Path, schema: EventSchema, invalid: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Canonical events from the log at `path` (format by suffix, see the module docstring)."""
    name = str(path)
    if name.endswith(".parquet"):
        return read_parquet(path, schema, invalid)
    if name.endswith((".csv", ".csv.gz")):
        return _validated(read_csv_records(path, schema, invalid), schema, invalid)
    return read_jsonl(path, schema, invalid)


def upstream_messages(path: str | Path, schema: EventSchema, key_field: str = "user_id",
                      invalid: dict[str, int] | None = None) -> Iterator[tuple[bytes | None, bytes]]:
    """The log as the (key, value) messages the upstream would have produced, in log order, for
    replaying it to a topic: JSONL lines verbatim (invalid ones too: online they are
    dead-lettered as offline they are counted), CSV and Parquet rows as JSON objects typed like
    upstream JSON. Key: the UTF-8 decimal/string of the canonical `key_field`'s upstream value
    (the entity; None if absent)."""
    invalid = {} if invalid is None else invalid
    key_col = schema.upstream_name(key_field)
    name = str(path)
    if not name.endswith((".parquet", ".csv", ".csv.gz")):
        with _open(path) as fh:
            for line in fh:
                line = line.rstrip(b"\r\n")
                if line:
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        obj = None
                    yield (_key(obj.get(key_col)) if isinstance(obj, dict) else None), line
        return
    records = _parquet_records(path) if name.endswith(".parquet") else read_csv_records(path, schema, invalid)
    for record in records:
        yield _key(record.get(key_col)), orjson.dumps(record)


def _key(value: Any) -> bytes | None:
    return None if value is None or isinstance(value, (bool, float, dict, list)) else str(value).encode()


def _open(path: str | Path) -> IO[bytes]:
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")  # noqa: SIM115


def _validated(records: Iterator[dict[str, Any]], schema: EventSchema,
               invalid: dict[str, int]) -> Iterator[dict[str, Any]]:
    for record in records:
        try:
            yield schema.from_mapping(record)
        except InvalidEvent as exc:
            invalid[exc.reason] = invalid.get(exc.reason, 0) + 1


def read_csv_records(path: str | Path, schema: EventSchema, invalid: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Typed upstream records of a CSV log (gzip if the name ends in .gz), in file order."""
    ts_col, price_col = schema.upstream_name("ts"), schema.upstream_name("price")
    with _open(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        for row in csv.DictReader(text):
            if None in row:  # more cells than header names
                invalid[MALFORMED_CSV] = invalid.get(MALFORMED_CSV, 0) + 1
                continue
            yield csv_record(row, ts_col, price_col)


def csv_record(row: dict[str, str | None], ts_col: str, price_col: str) -> dict[str, Any]:
    """One CSV row typed like the equivalent upstream JSON object (see the module docstring).
    A cell that does not parse stays a string, so the schema rejects it with the usual reason."""
    record: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
    price = record.get(price_col)
    if price is not None:
        try:
            record[price_col] = float(price)
        except ValueError:
            pass
    ts = record.get(ts_col)
    if ts is not None and ts.lstrip("-").isdigit():
        record[ts_col] = int(ts)
    elif ts is not None:
        try:
            record[ts_col] = float(ts)
        except ValueError:
            pass
    return record


def read_jsonl(path: str | Path, schema: EventSchema, invalid: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Canonical events from a JSONL file (gzip if the name ends in .gz), in file order."""
    fh: IO[bytes] = _open(path)
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
    return _validated(_parquet_records(path), schema, invalid)


def _parquet_records(path: str | Path) -> Iterator[dict[str, Any]]:
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
                yield dict(zip(names, values))
    except pa.ArrowException as exc:
        raise EventLogError(f"{path} is not a readable Parquet file: {exc}") from exc
