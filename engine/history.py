"""Reading event history back from the input topic, for retraining (docs/retraining.md).

The input topic is the event log: `streamscore topics create` gives it a long retention
(``retrain.history_retention_ms``), and `read_topic_history` reads an event-time range of it:

- a ``read_committed`` consumer (no group membership, nothing committed) assigned partition by
  partition;
- each partition is read from its earliest retained offset, or, given ``from_ms``, from
  ``offsets_for_times(from_ms - timestamp_slack_ms)`` on the Kafka record timestamps. That loses
  nothing as long as no record's timestamp is earlier than its event time by more than the slack
  (true for CreateTime stamped at publish, for LogAppendTime, and for producers that stamp
  records with the event time); records from before that point may be read too, they only add
  warm-up;
- each partition is read up to its end offset as it was when reading started (records appended
  later are left for the next run), in offset order;
- values are decoded with the engine's `EventSchema`: invalid records are counted by reason,
  not fatal (the engine dead-lettered them too).

The result is a `models.retraining.History` whose events are each partition's events in offset
order, partition after partition: what `features.offline.replay` needs to reproduce the engine's
per-partition state and lateness.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from features.partitioning import kafka_partition
from features.schema import EventSchema, InvalidEvent
from models.retraining import History

log = logging.getLogger("streamscore.history")
PROGRESS_EVERY_S = 5.0


class HistoryUnavailable(RuntimeError):
    """The topic cannot be read (broker unreachable, topic missing, reading stalled)."""


def read_topic_history(
    bootstrap: str,
    topic: str,
    schema: EventSchema,
    from_ms: int | None,
    *,
    entity: str = "user_id",
    timestamp_slack_ms: int = 3_600_000,
    stall_timeout_s: float = 30.0,
    progress: Callable[[str], None] | None = None,
) -> History:
    """Canonical events of `topic` from (about) event time `from_ms` to the current end.

    Args:
        from_ms: earliest event time needed (epoch ms; see the module docstring for the seek);
            None reads from the earliest retained record.
        entity: the canonical field the topic is keyed by; records whose partition is not the
            entity's Kafka partition are counted as ``misrouted`` in the source (the engine's
            state for such an entity is split over partitions, and replay cannot reproduce it).
        stall_timeout_s: give up when nothing arrives for this long before the end is reached.
        progress: sink for progress lines (every 5 s); None for the module logger.
    """
    say = progress or log.info
    n = topic_partitions(bootstrap, topic)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"streamscore-history-{uuid.uuid4().hex[:12]}",  # never joins or commits
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 52_428_800,
    })
    try:
        return _read(consumer, topic, n, schema, from_ms, entity, timestamp_slack_ms, stall_timeout_s, say)
    finally:
        consumer.close()


def topic_partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> int:
    """Partition count of `topic`; `HistoryUnavailable` if the broker does not answer within
    `timeout` or the topic does not exist. The probe client logs nothing (one clear error)."""
    try:
        md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise HistoryUnavailable(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise HistoryUnavailable(f"topic {topic!r} does not exist on {bootstrap} (create it with "
                                 "`streamscore topics create`)")
    return len(meta.partitions)


def _read(consumer: Consumer, topic: str, n: int, schema: EventSchema, from_ms: int | None, entity: str,
          slack_ms: int, stall_timeout_s: float, say: Callable[[str], None]) -> History:
    seek_ms = None if from_ms is None else max(0, from_ms - slack_ms)
    try:
        bounds = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)
                  for p in range(n)]
        found = ([low for low, _ in bounds] if seek_ms is None else
                 [tp.offset for tp in consumer.offsets_for_times([TopicPartition(topic, p, seek_ms) for p in range(n)],
                                                                 timeout=30)])
    except KafkaException as exc:
        raise HistoryUnavailable(f"cannot read offsets of {topic!r}: {exc}") from None
    ranges: dict[int, tuple[int, int]] = {}
    for p, (offset, (low, high)) in enumerate(zip(found, bounds)):
        ranges[p] = (high if offset < 0 else max(offset, low), high)  # < 0: no record at or after seek_ms
    todo = {p for p, (start, end) in ranges.items() if start < end}
    total = sum(end - start for start, end in ranges.values())
    where = "the earliest retained record" if seek_ms is None else f"record time {seek_ms} (event time - slack)"
    say(f"[history] {topic}: {n} partitions, reading {total:,} offsets from {where}")
    per_partition: dict[int, list[dict[str, Any]]] = {p: [] for p in range(n)}
    invalid: dict[str, int] = {}
    partition_of: dict[str, int] = {}
    misrouted = records = 0
    if todo:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in sorted(todo)])

    def done(p: int) -> None:
        if p in todo:
            todo.discard(p)
            consumer.pause([TopicPartition(topic, p)])  # stop fetching what was appended since

    last_progress = last_message = time.monotonic()
    while todo:
        msgs = consumer.consume(2000, timeout=0.5)
        now = time.monotonic()
        if msgs:
            last_message = now
        elif now - last_message > stall_timeout_s:
            raise HistoryUnavailable(f"reading {topic!r} stalled for {stall_timeout_s:.0f} s with partitions "
                                     f"{sorted(todo)} short of their end")
        for m in msgs:
            p = m.partition()
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done(p)
                    continue
                raise HistoryUnavailable(f"reading {topic!r} failed: {err}")
            if p not in todo or m.offset() >= ranges[p][1]:
                done(p)
                continue
            records += 1
            try:
                event = schema.decode(m.value())
            except InvalidEvent as exc:
                invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
            else:
                key = event[entity]
                home = partition_of.get(key)
                if home is None:
                    home = partition_of[key] = kafka_partition(key, n)
                misrouted += home != p
                per_partition[p].append(event)
            if m.offset() >= ranges[p][1] - 1:
                done(p)
        if now - last_progress >= PROGRESS_EVERY_S:
            last_progress = now
            say(f"[history] {topic}: {records:,} of <= {total:,} records read")
    if misrouted:
        log.warning("%s: %d records are not in their entity's partition; their rows may differ from what the "
                    "engine computed", topic, misrouted)
    events = [e for p in range(n) for e in per_partition[p]]
    say(f"[history] {topic}: {records:,} records read, {len(events):,} valid, invalid {invalid or 0}")
    source = {"kind": "topic", "topic": topic, "partitions": n, "seek_ms": seek_ms, "records": records,
              "offsets": {str(p): list(r) for p, r in ranges.items()}, "misrouted": misrouted}
    emptied = [p for p, (low, high) in enumerate(bounds) if low == high > 0]
    if emptied and not records:
        source["emptied_partitions"] = emptied
        source["note"] = (f"partitions {emptied} held records once but retain none (earliest offset == end "
                          "offset): the topic's retention deleted them; give the input topic retention.ms "
                          "covering the retraining windows (retrain.history_retention, or -1)")
    return History(events=events, num_partitions=n, invalid=invalid, source=source)
