"""Wire formats the engine writes: score records and dead-letter records.

JSON Schemas: docs/schemas/score.v1.json and docs/schemas/dead-letter.v1.json; a typed reader for
Python consumers is `engine.reader`; docs/downstream.md. Within a schema version fields are only
ever added (readers ignore unknown fields); a removed or changed field bumps the version.

Score record (topic `scores`, key = entity, value = JSON, `schema_version` 1):

    {"schema_version": 1, "event_id": str, "entity": str, "score": float,
     "model": {"name": str, "version": int}, "feature_spec": "fs-…",
     "event_ts": int ms, "scored_ts": int ms, "variant": "champion"|"challenger"|"canary",
     "guarantee": "at_least_once"|"exactly_once", "features": {name: float|null}?}

Dead-letter record (topic `clicks.dlq`): key and value are the ORIGINAL bytes, untouched, so a
fixed consumer can replay them; the why travels in headers:

    schema_version    "1"
    reason            stable code (malformed_json, missing_field, …, late, empty)
    error             human-readable detail
    source.topic      input topic
    source.partition  decimal
    source.offset     decimal
    source.timestamp  the input message's Kafka timestamp, ms, decimal
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

SCORE_SCHEMA_VERSION = 1
DEAD_LETTER_SCHEMA_VERSION = 1


def score_records(
    events: Sequence[dict[str, Any]],
    scores: np.ndarray,
    entity_field: str,
    model: dict[str, Any],
    feature_spec: str,
    variant: str,
    guarantee: str,
    scored_ts: int,
    rows: np.ndarray | None = None,
    feature_names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Messages for `Producer.produce_batch`: one per event, key = entity, value = JSON."""
    out = []
    base = {"model": model, "feature_spec": feature_spec, "variant": variant, "guarantee": guarantee}
    for i, (event, score) in enumerate(zip(events, scores.tolist())):
        rec = {
            "schema_version": SCORE_SCHEMA_VERSION,
            "event_id": event["event_id"],
            "entity": event[entity_field],
            "score": score,
            **base,
            "event_ts": event["ts"],
            "scored_ts": scored_ts,
        }
        if rows is not None:
            rec["features"] = {n: (None if math.isnan(v) else v) for n, v in zip(feature_names, rows[i].tolist())}
        out.append({"key": event[entity_field].encode(), "value": orjson.dumps(rec)})
    return out


def dlq_headers(reason: str, error: str, topic: str, partition: int, offset: int, timestamp: int) -> list[tuple[str, bytes]]:
    return [
        ("schema_version", b"%d" % DEAD_LETTER_SCHEMA_VERSION),
        ("reason", reason.encode()),
        ("error", error.encode()[:4096]),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
        ("source.timestamp", str(timestamp).encode()),
    ]


def headers_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """Decode Kafka headers to a str dict (for consumers of the DLQ and for tests)."""
    return {k: v.decode() if v is not None else "" for k, v in (headers or [])}


SESSION_CLOSED_SCHEMA_VERSION = 1


def session_closed_records(
    closed: Sequence[Any],
    scores: Sequence[float],
    models: Sequence[dict[str, Any]],
    variants: Sequence[str],
    feature_spec: str,
    feature_names: Sequence[str],
    guarantee: str,
    closed_ts: int,
) -> list[dict[str, Any]]:
    """Messages for the `sessions.closed_topic`: one per `features.sessions.ClosedSession`,
    key = entity, value = JSON (`schema_version` 1):

        {"schema_version": 1, "entity": str, "gap_ms": int, "session_start": int ms,
         "session_end": int ms, "score": float, "model": {"name", "version"},
         "variant": "champion"|"canary", "feature_spec": "fs-…", "guarantee": str,
         "closed_ts": int ms (wall clock), "closed_by": "watermark"|"wall_clock",
         "features": {name: float|null}}

    ``features`` is the row of the last event processed into the session (float32 values, as
    scored); ``score`` is the serving model's score of that row when the session closed.
``closed_by`` says what closed it: the event-time watermark (the offline replay reports the same
session once its log's watermark passes it), or the wall-clock floor of an idle partition
(`sessions.idle_watermark: wall_clock`; docs/features.md, "Closed sessions").
    """
    out = []
    for s, score, model, variant in zip(closed, scores, models, variants):
        rec = {
            "schema_version": SESSION_CLOSED_SCHEMA_VERSION,
            "entity": s.entity,
            "gap_ms": s.window.size_ms,
            "session_start": s.start,
            "session_end": s.end,
            "score": score,
            "model": model,
            "variant": variant,
            "feature_spec": feature_spec,
            "guarantee": guarantee,
            "closed_ts": closed_ts,
            "closed_by": s.closed_by,
            "features": {n: (None if math.isnan(v) else v) for n, v in zip(feature_names, s.vector().tolist())},
        }
        out.append({"key": s.entity.encode(), "value": orjson.dumps(rec)})
    return out
