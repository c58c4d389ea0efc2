"""Session windows and closed-session records end to end: real broker, real engine processes,
RocksDB state, ONNX scoring.

1. A generated log (jitter, late events) goes through an engine process that is killed with
   SIGKILL mid-stream and restarted. Every score record's feature vector equals the offline
   replay's row bit for bit (session windows included), and the "session closed" topic holds
   exactly the offline replay's closed sessions, each once, with the same end and row (the
   restart's idle close reports the ones its deliberately slow sweep had not reached when input
   stopped).
2. An entity that stops sending gets its session-closed record while another entity of its
   partition keeps the watermark moving: no further event from it is needed.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from features.offline import replay
from features.partitioning import kafka_partition
from features.schema import EventSchema, InvalidEvent
from features.spec import Aggregate, FeatureSpec, Ratio, Recency, Window
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import produce_all, register_small_model
from tests.integration.engine_process import (
    CommittedOffsets,
    EngineProcesses,
    engine_yaml,
    scan_topic,
    score_vectors,
    vector_bytes,
    wait_until,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
S90, S20M = Window.session("90s"), Window.session("20m")
SPEC = FeatureSpec(
    name="sessions-e2e",
    grace_ms=30_000,
    idle_ttl_ms=86_400_000,
    features=(
        Aggregate("events_s90", "count", S90),
        Aggregate("views_s90", "count", S90, where=("product_view",)),
        Aggregate("spend_s90", "sum", S90, "price"),
        Aggregate("events_s20m", "count", S20M),
        Aggregate("mean_price_s20m", "mean", S20M, "price"),
        Aggregate("max_price_s20m", "max", S20M, "price"),
        Aggregate("products_s20m", "distinct", S20M, "product_id"),
        Aggregate("last_price_s20m", "last", S20M, "price"),
        Aggregate("duration_s20m", "duration", S20M),
        Ratio("views_per_event_s20m", "views_s90", "events_s20m"),
        Aggregate("events_5m", "count", Window.sliding("5m")),
        Recency("since_last"),
    ),
)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return register_small_model(tmp_path / "registry", SPEC, "sessions", seed=9)


class Tail:
    """A read_committed reader of a topic that keeps what it has read (await with a deadline)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.records: list[dict[str, Any]] = []
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tail-{topic}-{time.monotonic_ns()}",
                            "enable.auto.commit": False, "isolation.level": "read_committed"})
        self._c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def poll(self) -> list[dict[str, Any]]:
        for m in self._c.consume(500, timeout=0.2):
            if m.error() is None:
                record = orjson.loads(m.value())
                assert m.key().decode() == record["entity"], record
                self.records.append(record)
            elif m.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(m.error())
        return self.records

    def close(self) -> None:
        self._c.close()


def closed_key(r: dict[str, Any]) -> tuple[str, int, int]:
    return (r["entity"], r["gap_ms"], r["session_start"])


def test_sessions_online_equal_offline_and_closed_once_across_kill9(kafka_bootstrap: str, make_topic,
                                                                    registry: Path, tmp_path: Path) -> None:
    gen = GeneratorConfig(n_events=12_000, n_users=300, seed=17, start=datetime(2026, 5, 1, tzinfo=timezone.utc),
                          jitter_ms=3_000.0, late_fraction=0.003, late_ms=60_000.0)
    payloads = [(k, v) for k, v, _ in ClickstreamGenerator(gen).labelled_payloads()]
    schema = EventSchema(max_bytes=65_536)
    events = []
    for _, v in payloads:
        try:
            events.append(schema.decode(v))
        except InvalidEvent:  # pragma: no cover - bad_fraction is 0
            raise
    offline = replay(events, SPEC, num_partitions=PARTITIONS)
    want_closed = {s.key: s for s in offline.closed_sessions}
    assert len(offline.late) > 5 and len(want_closed) > 300, (len(offline.late), len(want_closed))

    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    closed_topic = make_topic("sessions", PARTITIONS)
    produce_all(kafka_bootstrap, clicks, payloads)
    config = engine_yaml(
        tmp_path / "engine.yaml", bootstrap_servers=kafka_bootstrap, group_id=f"g-{clicks}", input_topic=clicks,
        scores_topic=scores, dlq_topic=dlq, state_dir=tmp_path / "state", registry=registry, model_name="sessions",
        include_features=True, features=SPEC.to_dict(), max_batch=200, instance_id="sessions", session_timeout_ms=6_000,
        sessions={"closed_topic": closed_topic, "idle_close_ms": 500},
        expiry_scan_per_batch=1,  # a slow sweep: when input stops, it has not reached every closed session
    )
    tail = Tail(kafka_bootstrap, closed_topic, PARTITIONS)
    try:
        with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, f"g-{clicks}", clicks, PARTITIONS) as c:
            first = procs.start(config, "first")
            wait_until(lambda: c.total() >= len(payloads) // 3, 120, "a third committed", procs.logs)
            first.kill()  # mid-stream: an open transaction, a store behind the changelog
            assert c.total() < len(payloads), "the kill came too late to test anything"
            second = procs.start(config, "second")
            wait_until(lambda: c.total() == len(payloads), 180, "all input committed", procs.logs, poll=0.2)
            # Input has stopped: after 0.5 s of idleness the engine sweeps its stores whole.
            wait_until(lambda: len(tail.poll()) >= len(want_closed), 60,
                       f"{len(want_closed)} session-closed records", procs.logs)
            stats = second.terminate()
        assert stats["sessions_closed"] > 0, stats
        # Some sessions were closed by the watermark after the sweep had passed their entity:
        # only the idle close reported them.
        assert "idle close: partitions" in second.log(), second.tail()
        tail.poll()
    finally:
        tail.close()

    online = score_vectors(kafka_bootstrap, scores, PARTITIONS)
    assert not {eid for eid, v in online.items() if len(v) > 1}, "an event was scored twice"
    assert online.keys() == set(offline.event_ids)
    skewed = [eid for eid, row in zip(offline.event_ids, offline.X) if online[eid][0] != row.tobytes()]
    assert not skewed, f"{len(skewed)} vectors differ from the offline replay, e.g. {skewed[:5]}"

    counts = Counter(closed_key(r) for r in tail.records)
    assert not [k for k, n in counts.items() if n > 1], "a session was reported twice"
    assert counts.keys() == want_closed.keys(), (len(counts.keys() - want_closed.keys()),
                                                 len(want_closed.keys() - counts.keys()))
    for r in tail.records:
        want = want_closed[closed_key(r)]
        assert r["session_end"] == want.end and r["feature_spec"] == SPEC.hash
        assert list(r["features"]) == list(SPEC.names)
        assert vector_bytes(r["features"]) == want.vector().tobytes(), r
        assert 0.0 <= r["score"] <= 1.0 and r["variant"] == "champion" and r["guarantee"] == "exactly_once"


T0 = int(datetime(2026, 6, 1, tzinfo=timezone.utc).timestamp() * 1000)


def click(eid: str, user: str, sec: float, price: float | None = None) -> tuple[bytes, bytes]:
    e = {"event_id": eid, "user_id": user, "session_id": f"s-{user}", "event_type": "product_view",
         "ts": T0 + int(sec * 1000), "price": price, "product_id": "p1"}
    return user.encode(), orjson.dumps(e)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_an_idle_entitys_session_closes_without_further_events_from_it(kafka_bootstrap: str, make_topic,
                                                                       registry: Path, tmp_path: Path,
                                                                       guarantee: str) -> None:
    alice, bob = "alice", next(u for u in (f"bob{i}" for i in range(100))
                               if kafka_partition(u, PARTITIONS) == kafka_partition("alice", PARTITIONS))
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    closed_topic = make_topic("sessions", PARTITIONS)
    config = engine_yaml(
        tmp_path / "engine.yaml", bootstrap_servers=kafka_bootstrap, group_id=f"g-{clicks}", input_topic=clicks,
        scores_topic=scores, dlq_topic=dlq, state_dir=tmp_path / "state", registry=registry, model_name="sessions",
        include_features=True, features=SPEC.to_dict(), batch_wait_ms=20, guarantee=guarantee,
        sessions={"closed_topic": closed_topic},  # no idle close: the watermark and the sweep alone
    )
    tail = Tail(kafka_bootstrap, closed_topic, PARTITIONS)
    try:
        with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, f"g-{clicks}", clicks, PARTITIONS) as c:
            procs.start(config, "engine")
            # alice: three events, 0-40 s, then silence. Her 90 s session ends at 40 s.
            produce_all(kafka_bootstrap, clicks, [click("a1", alice, 0, 10.0), click("a2", alice, 20, 5.0),
                                                  click("a3", alice, 40, 1.5)])
            wait_until(lambda: c.total() == 3, 60, "alice's events committed", procs.logs)
            # bob moves the partition's watermark (max - 30 s grace) towards alice's end + 90 s =
            # 130 s, one event per batch, so no batch touches alice: only the sweep can close her.
            sent = 3

            def bob_at(sec: int) -> list[dict[str, Any]]:
                nonlocal sent
                produce_all(kafka_bootstrap, clicks, [click(f"b{sent}", bob, sec)])
                sent += 1
                wait_until(lambda: c.total() == sent, 60, "bob's event committed", procs.logs)
                return [r for r in tail.poll() if r["entity"] == alice]

            for sec in (60, 120, 150, 160):  # watermark <= 130 = end + gap: still open
                assert not bob_at(sec), (sec, tail.records)
            # From 161 on it is closed; the sweep (one stored record per message) reaches her
            # within a few of bob's batches.
            mine = next((found for sec in range(161, 181) if (found := bob_at(sec))), None)
            assert mine, f"alice's session was not reported within 20 of bob's events\n{procs.logs()}"
    finally:
        tail.close()
    assert len(mine) == 1, mine
    r = mine[0]
    assert (r["session_start"], r["session_end"], r["gap_ms"]) == (T0, T0 + 40_000, 90_000)
    # The row of her last event: 3 events, spend 16.5 in the 90 s session; the 20 m one agrees.
    f = r["features"]
    assert (f["events_s90"], f["spend_s90"], f["events_s20m"], f["max_price_s20m"]) == (3.0, 16.5, 3.0, 10.0)
    assert f["mean_price_s20m"] == np.float32(16.5 / 3).item() and f["last_price_s20m"] == 1.5
    assert f["duration_s20m"] == 40.0
    assert isinstance(r["score"], float) and r["guarantee"] == guarantee
