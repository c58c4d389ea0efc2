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
`ChangelogReplay` is the applying half, shared with the standby replicas (engine/standby.py):
keys stay raw bytes, each WriteBatch skips RocksDB's write-ahead log (the changelog is the
source of truth and every batch carries the changelog offset it reflects), and the store is
flushed before it is handed to the processing loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from engine.kafka_clients import client_settings
from engine.store import PartitionStore

log = logging.getLogger("streamscore.changelog")

META_KEY = b"\x00meta"
RESTORE_BATCH = 5_000  # messages per consume() call, and complete entity records per store write
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


class ChangelogReplay:
    """Applies one changelog partition's records to its store, complete batches only.

    Feed it the partition's messages in offset order (`feed`), then `write` what is complete.
    An entity record waits until a meta record with a tag >= its own has been read (see the
    module docstring); a tombstone applies at once. The store's changelog offset advances only
    with meta records, so a replay stopped anywhere resumes from the last complete batch it
    wrote, re-reading the records that were still waiting.

    Keys stay raw bytes throughout (no decode/encode); `write` puts them into one RocksDB
    WriteBatch without the WAL and `close` flushes the memtable (`PartitionStore.write_raw`).
    Used by `restore` (on assignment) and by the standby replicas (engine/standby.py).
    """

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.next_offset = store.changelog_offset() or 0  # after the last meta record read
        self.records = 0  # records read (entity, tombstone and meta)
        self.written = 0  # store writes so far
        self._pending: dict[bytes, bytes] = {}  # entity -> state, awaiting a meta record
        self._pending_tag: dict[bytes, int] = {}
        self._pending_max = -1  # highest tag in _pending
        self._ready: dict[bytes, bytes | None] = {}
        self._meta: tuple[bytes, int] | None = None  # of the last meta record read, not yet written
        self._tag_raw = b""  # cache: records of one batch share their tag
        self._tag = 0

    @property
    def ready(self) -> int:
        """Entity records complete and not yet written."""
        return len(self._ready)

    def feed(self, msgs: list[Message]) -> bool:
        """Take the partition's next messages; True if one of them is the end-of-partition event."""
        pending, pending_tag, ready = self._pending, self._pending_tag, self._ready
        end = False
        for m in msgs:
            key = m.key()
            if key is None:  # changelog records always have a key: this is an event or an error
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    end = True
                    continue
                raise RuntimeError(f"changelog {m.topic()}[{m.partition()}]: {err}")
            self.records += 1
            value = m.value()
            if key == META_KEY:
                meta = decode_meta(value)
                tag = meta[1]
                # A meta record completes every batch up to its tag: its own, and earlier ones
                # whose meta record compaction removed. Higher tags are from a batch that failed
                # half-way and was redone from a lower offset (at-least-once): they wait, and a
                # completed batch that covers their events overwrites them first.
                if self._pending_max <= tag:
                    ready.update(pending)
                    pending.clear()
                    pending_tag.clear()
                    self._pending_max = -1
                else:
                    for k in [k for k, t in pending_tag.items() if t <= tag]:
                        ready[k] = pending.pop(k)
                        del pending_tag[k]
                    self._pending_max = max(pending_tag.values(), default=-1)
                self._meta = meta
                self.next_offset = m.offset() + 1
            elif value is None:
                ready[key] = None
                if pending.pop(key, None) is not None:
                    del pending_tag[key]
            else:
                tag_raw, _, state = value.partition(b"|")
                if tag_raw != self._tag_raw:
                    self._tag_raw, self._tag = tag_raw, int(tag_raw)
                pending[key] = state
                pending_tag[key] = self._tag
                if self._tag > self._pending_max:  # an upper bound (an overwritten entry may have held it)
                    self._pending_max = self._tag
        return end

    def write(self) -> bool:
        """Write the complete records read so far, with the clock, applied input offset and
        changelog offset of the last meta record, in one WriteBatch. False if no meta record
        was read since the last write (nothing is complete)."""
        if self._meta is None:
            return False
        clock, applied = self._meta
        self.store.write_raw(self._ready, clock, applied, self.next_offset)
        self._ready, self._meta = {}, None
        self.written += 1
        return True


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
    reached in time. `client`: the user's Kafka settings (`engine.kafka_clients`). On return
    (or an exception) everything written is durable (`PartitionStore.flush`).
    """
    t0 = time.perf_counter()
    replay = ChangelogReplay(store)
    start = replay.next_offset
    consumer = Consumer(changelog_reader_settings(bootstrap, f"streamscore-restore-{topic}", client))
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
        while not reached_end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restore of {topic}[{partition}] did not reach the end in {timeout_s} s")
            # Short wait: consume() returns at the timeout, not at the end of the partition.
            reached_end = replay.feed(consumer.consume(RESTORE_BATCH, timeout=0.1))
            if (replay.ready >= RESTORE_BATCH or reached_end) and replay.write():
                if on_progress:
                    on_progress(replay.records, replay.next_offset, high)
                if time.monotonic() >= next_log:
                    next_log += PROGRESS_LOG_S
                    log.info("restoring %s[%d]: %d records, offset %d of %d (%.0f%%)", topic, partition,
                             replay.records, replay.next_offset, high,
                             100.0 * (replay.next_offset - begin) / max(high - begin, 1))
    finally:
        consumer.close()
        store.flush()
    result = RestoreResult(partition, replay.records, replay.next_offset, time.perf_counter() - t0)
    if result.records:
        log.info("restored %s[%d]: %d records in %.2f s (%.0f/s), changelog offset %d",
                 topic, partition, result.records, result.seconds, result.rate, result.next_offset)
    return result


def changelog_reader_settings(bootstrap: str, group_id: str, client: Mapping[str, Any] | None) -> dict[str, Any]:
    """Consumer settings of a changelog reader (restore, standby): read_committed, assign() only
    (`group_id` is never joined or committed to), end-of-partition events on, and fetches sized
    for bulk reads: one partition's fetch may bring 32 MB (librdkafka's default is 1 MB, which
    caps a single-partition replay at about one fetch round trip per MB)."""
    return client_settings(bootstrap, client, defaults={
        "auto.offset.reset": "earliest",  # an offset out of range (a recreated topic): replay it all
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 32 * 1024 * 1024,
        "queued.max.messages.kbytes": 128 * 1024,
        "queued.min.messages": 1_000_000,  # prefetch while the caller applies what it has
        "fetch.wait.max.ms": 10,  # at the end the broker would hold each fetch 500 ms (default)
    }, required={
        "group.id": group_id,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    })
