"""The optional label topic: external outcomes of scored events, read next to the input topic.

A label record (JSON, docs/schemas/label.v1.json) is keyed by the entity and says what the
outcome of one scored event was::

    {"schema_version": 1, "event_id": "e-123", "entity": "u-42", "label": 1, "ts": 1767225600000}

``event_id`` and ``entity`` are the scored event's (``entity`` is the value of the feature spec's
entity field); ``label`` is 0 or 1; ``ts`` (optional, epoch ms) is when the outcome happened and
is informational. A record that is not such an object, or whose key is not its entity, goes to
the DLQ with reason ``label_invalid`` (the original bytes, the error, the source offset).

**Co-partitioning.** The label topic must have as many partitions as the input topic and be
keyed by the entity with the same partitioner, so the labels of an entity land in the partition
number of its events. The engine reads label partition p exactly while it owns input partition
p (`LabelTopicReader`: a second consumer of the same group id, assigned by hand, never joining
the group), so the join is local: the partition's RocksDB store holds the pending scored events
the labels resolve (engine/labels.py).

**Exactly-once.** The labels polled in one loop turn are a unit of work of their own: the label
records and monitor state they change go to the store's changelog, the triggers they confirm to
the trigger topic, and the label partitions' next offsets are committed to the group, all in one
Kafka transaction (at-least-once: delivered, then committed); the store is written after it
commits. On assignment a label partition resumes at the group's committed offset for it, so a
restart or a moved partition applies each label exactly once against the restored store.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from engine.kafka_clients import client_settings

log = logging.getLogger("streamscore.labels")

LABEL_INVALID = "label_invalid"  # DLQ reason of a label record that cannot be used
LABEL_SCHEMA_VERSION = 1


class InvalidLabel(ValueError):
    """A label record that cannot be used; the message says why."""


def parse_label(value: bytes | None, key: bytes | None) -> tuple[str, str, int]:
    """``(entity, event_id, label)`` of a label record, or InvalidLabel."""
    if not value:
        raise InvalidLabel("label record has no value")
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidLabel(f"label record is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise InvalidLabel("label record must be a JSON object")
    version = d.get("schema_version", LABEL_SCHEMA_VERSION)
    if version != LABEL_SCHEMA_VERSION:
        raise InvalidLabel(f"label schema_version {version!r} is not {LABEL_SCHEMA_VERSION}")
    entity, event_id, label = d.get("entity"), d.get("event_id"), d.get("label")
    for name, v in (("entity", entity), ("event_id", event_id)):
        if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "":
            raise InvalidLabel(f"label field {name!r} must be a non-empty string or integer, got {v!r}")
    if isinstance(label, bool):
        label = int(label)
    if label not in (0, 1):
        raise InvalidLabel(f"label field 'label' must be 0 or 1, got {d.get('label')!r}")
    ts = d.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise InvalidLabel(f"label field 'ts' must be epoch milliseconds (integer) or absent, got {ts!r}")
    entity, event_id = str(entity), str(event_id)
    if key is not None and key.decode(errors="replace") != entity:
        raise InvalidLabel(f"label record key {key!r} is not its entity {entity!r} (labels must be keyed by "
                           "entity to land in the partition of the entity's events)")
    return entity, event_id, int(label)


class LabelTopicReader:
    """Reads label partition p while the engine owns input partition p (see module docstring).

    A plain consumer with the engine's group id that never subscribes (so it never joins the
    group or takes part in rebalances); the engine assigns and revokes its partitions from its
    own rebalance callbacks, and commits its offsets in the engine's transactions.
    """

    def __init__(self, bootstrap: str, topic: str, group_id: str, kafka: Mapping[str, Any] | None = None) -> None:
        self.topic = topic
        self._consumer = Consumer(client_settings(bootstrap, kafka, defaults={
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10,
        }, required={"group.id": group_id, "enable.auto.commit": False, "isolation.level": "read_committed",
                     "enable.partition.eof": False}))
        self._owned: set[int] = set()
        self._paused: set[int] = set()

    def assign(self, partitions: list[int]) -> None:
        """Start reading these label partitions at the group's committed offsets (earliest without)."""
        todo = [p for p in partitions if p not in self._owned]
        if not todo:
            return
        committed = self._consumer.committed([TopicPartition(self.topic, p) for p in todo], timeout=30)
        self._consumer.incremental_assign(
            [TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
             for tp in committed])
        self._owned.update(todo)

    def revoke(self, partitions: list[int]) -> None:
        gone = [p for p in partitions if p in self._owned]
        if gone:
            self._consumer.incremental_unassign([TopicPartition(self.topic, p) for p in gone])
            self._owned.difference_update(gone)
            self._paused.difference_update(gone)

    def pause(self, partition: int) -> None:
        """Stop fetching `partition` (its input partition has no applied state yet)."""
        if partition in self._owned and partition not in self._paused:
            self._consumer.pause([TopicPartition(self.topic, partition)])
            self._paused.add(partition)

    def resume_ready(self, ready: set[int]) -> None:
        """Resume the paused partitions in `ready`."""
        back = [p for p in self._paused if p in ready]
        if back:
            self._consumer.resume([TopicPartition(self.topic, p) for p in back])
            self._paused.difference_update(back)

    def poll(self, max_messages: int) -> dict[int, list[Message]]:
        """The label messages fetched so far (no waiting), by partition, offset order."""
        if not self._owned:
            return {}
        out: dict[int, list[Message]] = defaultdict(list)
        for m in self._consumer.consume(max_messages, timeout=0):
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("label consumer error: %s", err)
                continue
            out[m.partition()].append(m)
        return out

    def rewind(self, partition: int, offset: int) -> None:
        """Read `partition` again from `offset` (its unit of work was aborted)."""
        if partition in self._owned:
            self._consumer.seek(TopicPartition(self.topic, partition, offset))

    def close(self) -> None:
        self._consumer.close()


__all__ = ["LABEL_INVALID", "InvalidLabel", "LabelTopicReader", "parse_label"]
