"""A typed reader of what the engine writes, for Python consumers downstream.

    from engine.reader import read_scores, score_consumer

    consumer = score_consumer("broker:9092", group_id="alerts", topic="scores")
    for record in read_scores(consumer, idle_timeout_s=30):
        if record.answer and record.score > 0.8:
            ...

`ScoreRecord` is the score record of docs/schemas/score.v1.json and `DeadLetter` the dead-letter
record of docs/schemas/dead-letter.v1.json. Both parse strictly the fields they need and ignore
unknown ones (fields are only added within a schema version); a record of a newer schema
version raises `UnsupportedSchemaVersion` rather than being misread. `score_consumer` reads with
``isolation.level=read_committed``: with the engine's exactly-once guarantee every input event's
score then appears exactly once. Only confluent-kafka and orjson are needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Message

from engine.records import DEAD_LETTER_SCHEMA_VERSION, SCORE_SCHEMA_VERSION, headers_dict

ANSWER_VARIANTS = frozenset({"champion", "canary"})


class UnsupportedSchemaVersion(ValueError):
    """A record written with a schema version this reader does not know."""


class MalformedRecord(ValueError):
    """A record that does not match its schema (names the field)."""


@dataclass(frozen=True, slots=True)
class ScoreRecord:
    """One score record (schema version 1). Times are epoch milliseconds UTC.

    Attributes:
        variant: champion | canary (the answer for the event) or challenger (a shadow score).
        features: the feature vector by name (None = NaN) when the engine includes it, else None.
        partition / offset: where the record was read (None when parsed from bytes alone).
    """

    event_id: str
    entity: str
    score: float
    model_name: str
    model_version: int
    feature_spec: str
    event_ts: int
    scored_ts: int
    variant: str
    guarantee: str
    features: Mapping[str, float | None] | None = None
    schema_version: int = SCORE_SCHEMA_VERSION
    partition: int | None = None
    offset: int | None = None

    @property
    def answer(self) -> bool:
        """True for the record that answers for its event (champion or canary), False for shadows."""
        return self.variant in ANSWER_VARIANTS

    @classmethod
    def from_json(cls, value: bytes | str, partition: int | None = None, offset: int | None = None) -> ScoreRecord:
        """Parse one record value; raises `UnsupportedSchemaVersion` or `MalformedRecord`."""
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise MalformedRecord(f"score record is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise MalformedRecord("score record is not a JSON object")
        version = obj.get("schema_version")
        if version != SCORE_SCHEMA_VERSION:
            raise UnsupportedSchemaVersion(
                f"score record has schema_version {version!r}; this reader knows {SCORE_SCHEMA_VERSION}")
        try:
            model = obj["model"]
            return cls(
                event_id=_typed(obj, "event_id", str), entity=_typed(obj, "entity", str),
                score=float(_typed(obj, "score", (int, float))), model_name=_typed(model, "name", str),
                model_version=_typed(model, "version", int), feature_spec=_typed(obj, "feature_spec", str),
                event_ts=_typed(obj, "event_ts", int), scored_ts=_typed(obj, "scored_ts", int),
                variant=_typed(obj, "variant", str), guarantee=_typed(obj, "guarantee", str),
                features=obj.get("features"), partition=partition, offset=offset,
            )
        except (KeyError, TypeError) as exc:
            raise MalformedRecord(f"score record lacks field {exc}") from None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter record: the original key and value bytes and why they were refused."""

    reason: str
    error: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def from_message(cls, msg: Message) -> DeadLetter:
        h = headers_dict(msg.headers())
        version = h.get("schema_version")
        if version != str(DEAD_LETTER_SCHEMA_VERSION):
            raise UnsupportedSchemaVersion(
                f"dead letter has schema_version {version!r}; this reader knows {DEAD_LETTER_SCHEMA_VERSION}")
        try:
            return cls(h["reason"], h["error"], h["source.topic"], int(h["source.partition"]),
                       int(h["source.offset"]), int(h["source.timestamp"]), msg.key(), msg.value())
        except (KeyError, ValueError) as exc:
            raise MalformedRecord(f"dead letter lacks or garbles header {exc}") from None


def _typed(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedRecord(f"field {name!r} has type {type(value).__name__}")
    return value


def score_consumer(bootstrap: str, group_id: str, topic: str = "scores",
                   settings: Mapping[str, Any] | None = None) -> Consumer:
    """A read_committed consumer in `group_id`, subscribed to `topic`, from the earliest offset
    when the group has none. `settings`: more librdkafka settings (security, client.id, ...);
    isolation.level stays read_committed."""
    conf = {"bootstrap.servers": bootstrap, "group.id": group_id, "auto.offset.reset": "earliest",
            **(settings or {}), "isolation.level": "read_committed"}
    consumer = Consumer(conf)
    consumer.subscribe([topic])
    return consumer


def read_scores(consumer: Consumer, *, max_records: int | None = None, idle_timeout_s: float | None = None,
                poll_s: float = 0.5, batch: int = 500) -> Iterator[ScoreRecord]:
    """Score records from `consumer` in partition order, until `max_records` were yielded or
    nothing arrived for `idle_timeout_s` (None: forever). Offsets commit as the consumer's
    ``enable.auto.commit`` says (default: periodically, after the records were yielded).
    Raises on a malformed record or an unknown schema version, naming partition and offset."""
    yielded = 0
    last = time.monotonic()
    while max_records is None or yielded < max_records:
        # Never take more than will be yielded: consumed offsets are stored for the next commit.
        want = batch if max_records is None else min(batch, max_records - yielded)
        msgs = consumer.consume(want, timeout=poll_s)
        if not msgs:
            if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                return
            continue
        last = time.monotonic()
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue  # e.g. partition EOF notifications
            try:
                yield ScoreRecord.from_json(m.value(), m.partition(), m.offset())
            except ValueError as exc:
                raise type(exc)(f"{m.topic()}[{m.partition()}]@{m.offset()}: {exc}") from None
            yielded += 1
            if max_records is not None and yielded >= max_records:
                return
