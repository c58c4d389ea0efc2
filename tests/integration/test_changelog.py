"""`engine.changelog.restore` against the real broker: which records it applies, where it
resumes, and the progress it reports."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import Producer

from engine.changelog import RESTORE_BATCH, changelog_messages, restore
from engine.config import RocksDBConfig
from engine.store import PartitionStore

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, batches: list[list[dict[str, object]]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for batch in batches:
        for msg in batch:
            producer.produce(topic, **msg)  # type: ignore[arg-type]
    assert producer.flush(30) == 0


def test_restore_applies_complete_batches_reports_progress_and_resumes(
    kafka_bootstrap: str, make_topic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = make_topic("changelog", 2, compacted=True)
    # 30 engine batches of 500 new entities each (tags 10..300): three store writes' worth.
    n, per = 3 * RESTORE_BATCH, 500
    first = [msg for b in range(n // per) for msg in changelog_messages(
        {f"u{i}": b"s1-%d" % i for i in range(b * per, (b + 1) * per)}, b"clock-1", 10 * (b + 1), partition=1)]
    # Then batch 2 rewrites u0 and deletes u1 (an expired entity); batch 3 never wrote its meta
    # record (at-least-once, crashed half-way): its u2 must not reach the store.
    second = changelog_messages({"u0": b"s2-0", "u1": None}, b"clock-2", 1_200, partition=1)
    unfinished = changelog_messages({"u2": b"s3-2"}, b"clock-3", 1_300, partition=1)[:-1]
    _produce(kafka_bootstrap, topic, [first, second, unfinished])
    end = len(first) + len(second) + len(unfinished)

    store = PartitionStore(tmp_path / "p1", RocksDBConfig())
    calls: list[tuple[int, int, int]] = []
    try:
        with caplog.at_level(logging.INFO, logger="streamscore.changelog"):
            result = restore(kafka_bootstrap, topic, 1, store,
                             on_progress=lambda r, o, e: calls.append((r, o, e)))
        assert result.records == end
        assert result.next_offset == len(first) + len(second), "resumes after the last complete batch"
        assert store.read_meta() == (b"clock-2", 1_200)
        assert store.changelog_offset() == result.next_offset
        got = store.multi_get(["u0", "u1", "u2", f"u{n - 1}"])
        assert got == {"u0": b"s2-0", "u1": None, "u2": b"s1-2", f"u{n - 1}": b"s1-%d" % (n - 1)}
        assert store.entity_count() == n - 1

        # Progress: one call per store write (at least RESTORE_BATCH entities, or the end),
        # offsets rising to where the restore stopped.
        assert len(calls) >= 2, calls
        offsets = [o for _, o, _ in calls]
        assert offsets == sorted(offsets) and offsets[-1] == result.next_offset
        assert {e for _, _, e in calls} == {end}
        assert any(f"restored {topic}[1]: {end} records" in r.getMessage() for r in caplog.records)

        # Batch 3 completes later: the next restore reads only from where the store stopped.
        _produce(kafka_bootstrap, topic, [changelog_messages({"u2": b"s3-2"}, b"clock-3", 1_300, partition=1)])
        again = restore(kafka_bootstrap, topic, 1, store)
        assert again.records == len(unfinished) + 2  # the unfinished record, then the full batch 3
        assert store.read_meta() == (b"clock-3", 1_300)
        assert store.multi_get(["u2"]) == {"u2": b"s3-2"}
    finally:
        store.close()

    other = PartitionStore(tmp_path / "p0", RocksDBConfig())
    try:
        assert restore(kafka_bootstrap, topic, 0, other).records == 0  # an empty partition
        assert other.read_meta() == (None, None)
    finally:
        other.close()
