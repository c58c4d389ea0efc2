"""Wall-clock session close end to end (`sessions.idle_watermark: wall_clock`): real broker, real
engine processes, RocksDB state, ONNX scoring.

A partition's input stops entirely after one entity's session, while the engine's other
partition stays busy: with event time alone nothing would ever close it (the watermark stays
put). With the wall-clock close its "session closed" record (closed_by "wall_clock") appears
within a deadline without further input to its partition. The engine is
then killed with SIGKILL and restarted on an empty disk: the raised watermark comes back from the
changelog, so an event that would have joined the reported session is dead-lettered as late
(the session is never reopened or reported twice), and a fresh event starts a new session, which
is itself closed by the wall clock.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from engine.records import headers_dict
from features.partitioning import kafka_partition
from features.spec import Aggregate, FeatureSpec, Window
from tests.integration.conftest import produce_all, register_small_model
from tests.integration.engine_process import CommittedOffsets, EngineProcesses, engine_yaml, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 2
# Event time may trail the wall clock by LAG_MS: the margin for an event to reach the engine
# (a loaded 2-core machine); a session closes LAG_MS after end + gap in wall-clock time.
GAP_MS, GRACE_MS, LAG_MS = 2_000, 1_000, 3_000
S2 = Window.session(GAP_MS)
SPEC = FeatureSpec(
    name="wall-clock-close",
    grace_ms=GRACE_MS,
    idle_ttl_ms=86_400_000,
    features=(
        Aggregate("events_s2", "count", S2),
        Aggregate("spend_s2", "sum", S2, "price"),
        Aggregate("duration_s2", "duration", S2),
        Aggregate("events_1m", "count", Window.sliding("1m")),
    ),
)


class Tail:
    """A read_committed reader of a topic that keeps what it has read (await with a deadline)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.messages: list[Any] = []
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tail-{topic}-{time.monotonic_ns()}",
                            "enable.auto.commit": False, "isolation.level": "read_committed"})
        self._c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def poll(self) -> list[Any]:
        for m in self._c.consume(500, timeout=0.2):
            if m.error() is None:
                self.messages.append(m)
            elif m.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(m.error())
        return self.messages

    def values(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value()) for m in self.poll()]

    def close(self) -> None:
        self._c.close()


def click(eid: str, user: str, ts: int, price: float | None = None) -> tuple[bytes, bytes]:
    e = {"event_id": eid, "user_id": user, "session_id": f"s-{user}", "event_type": "product_view",
         "ts": ts, "price": price, "product_id": "p1"}
    return user.encode(), orjson.dumps(e)


class BusyPartition:
    """Live events of `user` (event time = now) every ~10 ms from a thread, until closed: keeps
    the engine's loop turns fetching input from another partition."""

    def __init__(self, bootstrap: str, topic: str, user: str) -> None:
        self.sent = 0
        self._stop = threading.Event()
        self._producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 1})
        self._thread = threading.Thread(target=self._run, args=(topic, user), daemon=True)
        self._thread.start()

    def _run(self, topic: str, user: str) -> None:
        while not self._stop.wait(0.01):  # pacing of the load, not synchronisation
            key, value = click(f"busy{self.sent}", user, int(time.time() * 1000))
            self._producer.produce(topic, value, key)
            self._producer.poll(0)
            self.sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self._producer.flush(30) == 0


def test_a_stopped_partitions_last_session_closes_by_the_wall_clock_once_across_kill9(
        kafka_bootstrap: str, make_topic, tmp_path: Path) -> None:
    registry = register_small_model(tmp_path / "registry", SPEC, "wall", seed=3)
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    closed_topic = make_topic("sessions", PARTITIONS)
    state = tmp_path / "state"
    config = engine_yaml(
        tmp_path / "engine.yaml", bootstrap_servers=kafka_bootstrap, group_id=f"g-{clicks}", input_topic=clicks,
        scores_topic=scores, dlq_topic=dlq, state_dir=state, registry=registry, model_name="wall",
        include_features=True, features=SPEC.to_dict(), batch_wait_ms=20, instance_id="wall", session_timeout_ms=6_000,
        sessions={"closed_topic": closed_topic, "idle_close_ms": 300, "idle_watermark": "wall_clock",
                  "wall_clock_lag_ms": LAG_MS},
    )
    closed, scored, dead = (Tail(kafka_bootstrap, closed_topic, PARTITIONS), Tail(kafka_bootstrap, scores, PARTITIONS),
                            Tail(kafka_bootstrap, dlq, 1))
    pa = kafka_partition("alice", PARTITIONS)
    bob = next(u for u in (f"bob{i}" for i in range(100)) if kafka_partition(u, PARTITIONS) != pa)

    def alices(tail: Tail) -> list[dict[str, Any]]:
        return [v for v in tail.values() if v["entity"] == "alice"]
    try:
        with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, f"g-{clicks}", clicks, PARTITIONS) as c:
            first = procs.start(config, "first")
            wait_until(lambda: len(first.assigned_now()) == PARTITIONS, 60, "the engine's assignment", procs.logs)
            t0 = int(time.time() * 1000)  # live events: event time tracks the wall clock
            produce_all(kafka_bootstrap, clicks, [click("a1", "alice", t0 - 400, 10.0), click("a2", "alice", t0 - 200, 5.0),
                                                  click("a3", "alice", t0, 1.5)])
            wait_until(lambda: c.per_partition()[pa] == 3, 60, "alice's events committed", procs.logs)
            # Input to alice's partition stops entirely; the other partition stays busy. Her
            # partition's watermark stays at t0 - grace, which will never close [t0 - 400, t0]; the
            # wall clock does once now - lag > t0 + gap (~5 s from now).
            busy = BusyPartition(kafka_bootstrap, clicks, bob)
            try:
                [r] = wait_until(lambda: alices(closed), 60, "alice's session-closed record without further input",
                                 procs.logs)
            finally:
                busy.close()
            assert busy.sent > 50, busy.sent  # the other partition was busy all along
            assert (r["entity"], r["session_start"], r["session_end"], r["gap_ms"]) == ("alice", t0 - 400, t0, GAP_MS)
            assert r["closed_by"] == "wall_clock" and r["guarantee"] == "exactly_once"
            assert r["closed_ts"] > t0 + GAP_MS + LAG_MS  # not before the wall clock passed end + gap + lag
            assert r["features"] == {"events_s2": 3.0, "spend_s2": 16.5, "duration_s2": float(np.float32(0.4)),
                                    "events_1m": 3.0}
            assert "idle close: partitions" in first.log(), first.tail()

            # kill -9, and lose the disk: the state, raised watermark included, comes from the changelog.
            first.kill()
            shutil.rmtree(state)
            second = procs.start(config, "second")
            # 'joins' is on time for event time alone (>= t0 - grace) and within the gap of alice's
            # reported session: it would have joined it. The raised watermark makes it late.
            joins = click("a4", "alice", t0 + GAP_MS // 2, 100.0)
            produce_all(kafka_bootstrap, clicks, [joins])
            [d] = wait_until(dead.poll, 90, "the joining event's dead letter", procs.logs)
            assert d.value() == joins[1]
            h = headers_dict(d.headers())
            assert h["reason"] == "late" and "wall clock" in h["error"], h
            t1 = int(time.time() * 1000)  # the engine is live again: a new event is on time
            produce_all(kafka_bootstrap, clicks, [click("a5", "alice", t1, 2.0)])
            wait_until(lambda: c.per_partition()[pa] == 5, 60, "the restarted engine committed the new events",
                       procs.logs)
            def score_of(eid: str) -> list[dict[str, Any]]:
                return [v for m in scored.poll() if (v := orjson.loads(m.value()))["event_id"] == eid]

            [s] = wait_until(lambda: score_of("a5"), 60, "a5's score", procs.logs)
            assert s["features"]["events_s2"] == 1.0 and not score_of("a4")  # a new session; a4 not scored
            records = wait_until(lambda: len(alices(closed)) == 2 and alices(closed), 60,
                                 "the new session's session-closed record", procs.logs)
            second.terminate()
        assert [(x["session_start"], x["session_end"], x["closed_by"]) for x in records] == [
            (t0 - 400, t0, "wall_clock"), (t1, t1, "wall_clock")]  # each session once
        assert records[1]["features"]["events_s2"] == 1.0 and records[1]["features"]["spend_s2"] == 2.0
        assert len(dead.poll()) == 1 and len(alices(scored)) == 4  # the busy partition's events are all on time
    finally:
        for t in (closed, scored, dead):
            t.close()
