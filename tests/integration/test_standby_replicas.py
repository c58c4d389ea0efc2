"""The standby thread against the real broker and real RocksDB, without engine processes: it keeps
chosen partitions' stores current from their changelog, hands a store over on `release` (the
directory opens at once and a restore replays nothing), leaves it alone while owned, and picks it
up again from its changelog offset after `unown`. The choice of partitions is fixed here (the
group-description path runs in test_standby_takeover.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from engine.changelog import changelog_messages, restore
from engine.config import RocksDBConfig, StandbyConfig
from engine.standby import StandbyReplicas
from engine.store import PartitionStore
from tests.integration.engine_process import wait_until

pytestmark = pytest.mark.integration


class FixedChoice(StandbyReplicas):
    """Stands by for a fixed set of partitions instead of describing a consumer group."""

    wanted: set[int] = {0, 1}

    def _choose(self, admin: object) -> set[int] | None:  # type: ignore[override]
        return set(self.wanted)


def _produce_batches(bootstrap: str, topic: str, partition: int, first: int, batches: int, per: int,
                     version: bytes) -> int:
    """`batches` engine batches of `per` entities each on `partition`; returns records written."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    n = 0
    for b in range(batches):
        states = {f"u{i}": version + b"-%d" % i for i in range(first + b * per, first + (b + 1) * per)}
        for msg in changelog_messages(states, b"clock-" + version, first + (b + 1) * per, partition):
            producer.produce(topic, **msg)  # type: ignore[arg-type]
            n += 1
    assert producer.flush(30) == 0
    return n


def test_standby_thread_keeps_hands_over_and_resumes(kafka_bootstrap: str, make_topic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("standby-changelog", 2, compacted=True)
    ends = {p: _produce_batches(kafka_bootstrap, topic, p, 0, 6, 500, b"v1") for p in (0, 1)}
    registry = CollectorRegistry()
    root = tmp_path / "state"
    standby = FixedChoice(StandbyConfig(replicas=1, refresh_ms=100), bootstrap=kafka_bootstrap, group_id="unused",
                          input_topic="clicks", changelog=topic, state_root=root, rocksdb=RocksDBConfig(),
                          member_id=lambda: "me", registry=registry)

    def offset(p: int) -> float | None:
        return registry.get_sample_value("streamscore_standby_changelog_offset", {"partition": str(p)})

    standby.start()
    try:
        wait_until(lambda: offset(0) == ends[0] and offset(1) == ends[1], 60, "both standbys to catch up")
        assert standby.held() == {0, 1}
        assert registry.get_sample_value("streamscore_standby_records_total") == ends[0] + ends[1]

        # Hand-over: the directory opens at once, holds the whole changelog, and a restore has nothing to do.
        standby.release(0)
        assert standby.held() == {1}
        owner = PartitionStore(root / "clicks-0", RocksDBConfig())
        try:
            assert owner.changelog_offset() == ends[0] and owner.entity_count() == 3_000
            assert owner.read_meta() == (b"clock-v1", 3_000)
            assert restore(kafka_bootstrap, topic, 0, owner).records == 0

            # While owned, the thread leaves partition 0 alone and keeps partition 1 current.
            more = {p: _produce_batches(kafka_bootstrap, topic, p, 3_000, 2, 500, b"v2") for p in (0, 1)}
            wait_until(lambda: offset(1) == ends[1] + more[1], 60, "standby 1 to apply the new batches")
            assert standby.held() == {1} and offset(0) is None
            assert owner.changelog_offset() == ends[0], "nobody but the owner writes an owned store"
        finally:
            owner.close()

        # Revoked: the thread takes the store back and resumes from its changelog offset.
        standby.unown(0)
        wait_until(lambda: offset(0) == ends[0] + more[0], 60, "standby 0 to resume")
        assert registry.get_sample_value("streamscore_standby_records_total") == sum(ends.values()) + sum(more.values())
    finally:
        standby.stop()
    assert standby.error is None
    store = PartitionStore(root / "clicks-0", RocksDBConfig())
    try:
        assert store.entity_count() == 4_000 and store.read_meta() == (b"clock-v2", 4_000)
        assert store.multi_get(["u3999"]) == {"u3999": b"v2-3999"}
    finally:
        store.close()
