"""The state changelog: a compacted topic mirroring every partition store, and restore from it.

Changelog partition *p* mirrors the store of input partition *p*. Per micro-batch the engine
writes one record per touched entity (key = entity, value = ``b"<applied>|" + state``, or a
tombstone when the record expired) and then one metadata record (key ``\\x00meta``, value
``b"<clock>:<applied>"``: the encoded partition clock, `PartitionClock.encode`, and the next input
offset the state reflects).
``applied`` tags every record with its batch.

Restore applies an entity record only once a meta record with a tag >= its own has been read:
its batch's, or a later batch's when compaction removed the older meta records (only the latest
meta record survives compaction). In exactly-once mode the records are in the batch's Kafka
transaction, so aborted batches are never read at all; in at-least-once mode a batch that failed
half-way leaves records without a meta record, and the tag keeps them out of the store (its
events are reprocessed). Tombstones are always safe to apply: a record is deleted only when no
future event can read it.

The topic name includes the feature-spec hash: state written under one spec is meaningless
under another, so a spec change starts from a fresh changelog (and fresh local stores).

On assignment the engine calls `restore`, which replays the changelog partition from the offset
the local store last reflected (0 for an empty disk) up to the end of committed data, writing
into the store in WriteBatches. A store that is already current costs one watermark lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from engine.kafka_clients import client_settings
from engine.store import PartitionStore

log = logging.getLogger("streamscore.changelog")

META_KEY = b"\x00meta"
RESTORE_BATCH = 5_000
PROGRESS_LOG_S = 5.0  # restore progress is logged this often


def changelog_topic(group_id: str, input_topic: str, spec_hash: str) -> str:
    """Name of the changelog of `group_id`'s feature state over `input_topic` under a spec."""
    return f"{group_id}.{input_topic}.{spec_hash}.changelog"


def encode_meta(clock: bytes, applied: int) -> bytes:
    return clock + b":" + str(applied).encode()


def decode_meta(raw: bytes) -> tuple[bytes, int]:
    clock, _, applied = raw.partition(b":")
    return clock, int(applied)


def changelog_messages(states: Mapping[str, bytes | None], clock: bytes, applied: int,
                       partition: int) -> list[dict[str, object]]:
    """`produce_batch` messages for one partition's batch: entity records, then the meta record."""
    tag = str(applied).encode() + b"|"
    msgs: list[dict[str, object]] = [
        {"key": key.encode(), "value": None if value is None else tag + value, "partition": partition}
        for key, value in states.items()
    ]
    msgs.append({"key": META_KEY, "value": encode_meta(clock, applied), "partition": partition})
    return msgs


@dataclass
class RestoreResult:
    """What `restore` did: records applied, the changelog offset reached, wall time."""

    partition: int
    records: int
    next_offset: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def restore(
    bootstrap: str,
    topic: str,
    partition: int,
    store: PartitionStore,
    on_progress: Callable[[int, int, int], None] | None = None,
    timeout_s: float = 300.0,
    client: Mapping[str, Any] | None = None,
) -> RestoreResult:
    """Bring `store` up to the end of the committed changelog of `partition`.

    Reads with ``isolation.level=read_committed``: records of aborted (or still open)
    transactions are never applied. After every store write (each `RESTORE_BATCH` entities),
    `on_progress(records read, next changelog offset, end offset at start)` is called, and every
    `PROGRESS_LOG_S` seconds the progress is logged. Raises TimeoutError if the end is not
    reached in time. `client`: the user's Kafka settings (`engine.kafka_clients`).
    """
    t0 = time.perf_counter()
    start = store.changelog_offset() or 0
    consumer = Consumer(client_settings(bootstrap, client, defaults={
        "fetch.max.bytes": 52_428_800,
        "fetch.wait.max.ms": 10,  # at the end the broker would hold each fetch 500 ms (default)
    }, required={
        "group.id": f"streamscore-restore-{topic}",  # never commits; assign() only
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    }))
    records = 0
    next_offset = start
    try:
        tp = TopicPartition(topic, partition)
        low, high = consumer.get_watermark_offsets(tp, timeout=30)
        begin = max(start, low)
        if begin >= high:
            return RestoreResult(partition, 0, start, time.perf_counter() - t0)
        consumer.assign([TopicPartition(topic, partition, begin)])
        deadline = time.monotonic() + timeout_s
        next_log = time.monotonic() + PROGRESS_LOG_S
        reached_end = False
        pending: dict[str, tuple[int, bytes]] = {}  # entity -> (batch tag, state) awaiting its meta
        ready: dict[str, bytes | None] = {}
        meta: tuple[bytes, int] | None = None
        while not reached_end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restore of {topic}[{partition}] did not reach the end in {timeout_s} s")
            # Short wait: consume() returns at the timeout, not at the end of the partition.
            for m in consumer.consume(RESTORE_BATCH, timeout=0.1):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        reached_end = True
                        continue
                    raise RuntimeError(f"restore of {topic}[{partition}]: {err}")
                records += 1
                key, value = m.key(), m.value()
                if key == META_KEY:
                    meta = decode_meta(value)
                    tag = meta[1]
                    # A meta record completes every batch up to its tag: its own, and earlier ones
                    # whose meta record compaction removed. Higher tags are from a batch that failed
                    # half-way and was redone from a lower offset (at-least-once): they wait, and a
                    # completed batch that covers their events overwrites them first.
                    for k in [k for k, (t, _) in pending.items() if t <= tag]:
                        ready[k] = pending.pop(k)[1]
                    next_offset = m.offset() + 1
                elif value is None:
                    ready[key.decode()] = None
                    pending.pop(key.decode(), None)
                else:
                    tag_raw, _, state = value.partition(b"|")
                    pending[key.decode()] = (int(tag_raw), state)
            if meta is not None and (len(ready) >= RESTORE_BATCH or reached_end):
                store.write(ready, meta[0], meta[1], changelog_offset=next_offset)
                ready, meta = {}, None
                if on_progress:
                    on_progress(records, next_offset, high)
                if time.monotonic() >= next_log:
                    next_log += PROGRESS_LOG_S
                    log.info("restoring %s[%d]: %d records, offset %d of %d (%.0f%%)", topic, partition,
                             records, next_offset, high, 100.0 * (next_offset - begin) / max(high - begin, 1))
    finally:
        consumer.close()
    result = RestoreResult(partition, records, next_offset, time.perf_counter() - t0)
    if records:
        log.info("restored %s[%d]: %d records in %.2f s (%.0f/s), changelog offset %d",
                 topic, partition, records, result.seconds, result.rate, next_offset)
    return result
