"""The query endpoint's parts without Kafka: config, serving records, answers over real HTTP from
a real RocksDB store, and consistency of reads against a concurrent writer."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import ConfigError, EngineConfig, QueryConfig, RocksDBConfig, config_from_mapping
from engine.query import (
    SERVING_PREFIX,
    QueryServer,
    decode_serving,
    drop_serving_of_deleted,
    http_get_json,
    serving_records,
)
from engine.records import score_records
from engine.store import PartitionStore
from features.partitioning import kafka_partition

PARTITIONS = 4
NAMES = ["a", "b", "c"]
MODEL = {"name": "m", "version": 3}


class FixedOwners:
    """An owner table that never changes (the real one reads the consumer group)."""

    def __init__(self, owners: dict[int, str], partitions: int = PARTITIONS) -> None:
        self.owners = owners
        self.partitions = self.known_partitions = partitions
        self.misses = 0

    def owner(self, partition: int, miss: bool = False) -> str | None:
        self.misses += miss
        return self.owners.get(partition)

    def table(self) -> dict[int, str]:
        return dict(self.owners)

    def invalidate(self) -> None:
        pass


def make_server(owners: dict[int, str], proxy: bool = False) -> QueryServer:
    return QueryServer(QueryConfig(port=0, proxy=proxy, advertised="127.0.0.1:1"), "unused:1", "g", "clicks", NAMES,
                       "fs-test", grace_ms=1_000, owners=FixedOwners(owners))  # type: ignore[arg-type]


def get(port: int, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return http_get_json(f"127.0.0.1:{port}", path)


def entity_in(partition: int, prefix: str = "user") -> str:
    return next(f"{prefix}-{i}" for i in range(10_000) if kafka_partition(f"{prefix}-{i}", PARTITIONS) == partition)


# -- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "key"), [
    ({"port": -1}, "query.port"),
    ({"port": 70_000}, "query.port"),
    ({"host": ""}, "query.host"),
    ({"advertised": "no-port"}, "query.advertised"),
    ({"advertised": "h:0"}, "query.advertised"),
    ({"proxy": "yes"}, "query.proxy"),
])
def test_invalid_query_config_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        config_from_mapping({"query": raw})


def test_query_config_from_yaml_shape() -> None:
    cfg = config_from_mapping({"query": {"port": 8081, "advertised": "node-1:8081", "proxy": True}})
    assert cfg.query == QueryConfig(port=8081, advertised="node-1:8081", proxy=True)
    assert EngineConfig().query.port == 0  # off by default
    with pytest.raises(ConfigError, match="port_number"):
        config_from_mapping({"query": {"port_number": 1}})


# -- serving records ------------------------------------------------------------------------------

floats32 = st.floats(width=32, allow_nan=True, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(entities=st.lists(st.sampled_from(["u1", "u2", "ü3", "u/4"]), min_size=1, max_size=30), data=st.data())
def test_serving_record_is_the_last_event_with_the_score_record_vector(entities: list[str], data: Any) -> None:
    n = len(entities)
    rows = np.array(data.draw(st.lists(st.lists(floats32, min_size=3, max_size=3), min_size=n, max_size=n)),
                    np.float32)
    scores = np.array(data.draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)), np.float32)
    events = [{"event_id": f"e{i}", "user_id": e, "ts": 1_000 + i} for i, e in enumerate(entities)]
    stored = serving_records(events, scores, rows, "user_id", MODEL, "champion", scored_ts=5)
    published = [orjson.loads(m["value"]) for m in score_records(
        events, scores, "user_id", MODEL, "fs", "champion", "exactly_once", 5, rows, NAMES)]
    assert set(stored) == {SERVING_PREFIX + e for e in entities}
    for entity in set(entities):
        last = max(i for i, e in enumerate(entities) if e == entity)
        rec, row = decode_serving(stored[SERVING_PREFIX + entity])
        assert rec["event_id"] == f"e{last}" and rec["event_ts"] == 1_000 + last
        assert dict(zip(NAMES, row)) == published[last]["features"]  # NaN is null in both
        assert rec["score"] == published[last]["score"]


def test_deleted_entities_lose_their_serving_record() -> None:
    states: dict[str, bytes | None] = {"u1": b"s", "u2": None, SERVING_PREFIX + "u1": b"r"}
    drop_serving_of_deleted(states)
    assert states == {"u1": b"s", "u2": None, SERVING_PREFIX + "u1": b"r", SERVING_PREFIX + "u2": None}


# -- answers over HTTP -------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> PartitionStore:
    s = PartitionStore(tmp_path / "p", RocksDBConfig(block_cache_mb=8))
    yield s
    s.close()


def write_batch(store: PartitionStore, entity: str, ts: int, row: list[float], offset: int) -> None:
    events = [{"event_id": f"e{ts}", "user_id": entity, "ts": ts}]
    states: dict[str, bytes | None] = {entity: b"[1]"}
    states.update(serving_records(events, np.array([0.25], np.float32), np.array([row], np.float32), "user_id",
                                  MODEL, "champion", scored_ts=ts + 1))
    store.write(states, str(ts).encode(), offset)


def test_http_answers_local_missing_remote_and_unowned(store: PartitionStore) -> None:
    local = entity_in(0)
    server = make_server({0: "127.0.0.1:1", 1: "10.0.0.9:8081"})
    server.attach(0, store)
    write_batch(store, local, 5_000, [1.5, float("nan"), -2.0], offset=7)
    server.start()
    try:
        code, body, _ = get(server.port, f"/entities/{local}")
        assert code == 200
        assert body["features"] == {"a": 1.5, "b": None, "c": -2.0}
        assert body["score"] == {"score": 0.25, "model": MODEL, "variant": "champion", "event_id": "e5000",
                                 "event_ts": 5_000, "scored_ts": 5_001}
        assert body["partition"] == 0 and body["owner"] == "127.0.0.1:1" and body["applied_offset"] == 7
        assert body["partition_clock"] == {"max_event_ts": 5_000, "watermark": 4_000}

        code, body, _ = get(server.port, f"/entities/{entity_in(0, 'nobody')}")
        assert (code, body["error"]) == (404, "unknown_entity")

        remote = entity_in(1, "r/é")  # percent-encoded both ways
        code, body, headers = get(server.port, "/entities/" + remote.replace("/", "%2F").replace("é", "%C3%A9"))
        assert code == 307 and body["owner"] == "10.0.0.9:8081"
        assert headers["Location"] == "http://10.0.0.9:8081/entities/r%2F%C3%A9" + remote[3:]

        code, body, headers = get(server.port, f"/entities/{entity_in(2)}")
        assert code == 503 and body["error"] == "no_owner" and headers["Retry-After"] == "1"

        code, body, _ = get(server.port, f"/entities/{local}?x=1")
        assert code == 200  # a query string is ignored
        assert get(server.port, "/entities/")[0] == 400
        assert get(server.port, "/nope")[0] == 404
        assert get(server.port, "/partitions")[1]["local"] == [0]

        server.detach(0)  # revoked: the table says "here", the store is gone -> re-read, no owner
        code, body, _ = get(server.port, f"/entities/{local}")
        assert code == 503 and server.owners.misses == 1  # type: ignore[attr-defined]
    finally:
        server.shutdown()


def test_proxy_returns_the_owners_answer(store: PartitionStore) -> None:
    owner = make_server({})
    owner.attach(0, store)
    entity = entity_in(0)
    write_batch(store, entity, 9_000, [1.0, 2.0, 3.0], offset=1)
    owner.start()
    front = make_server({0: f"127.0.0.1:{owner.port}"}, proxy=True)
    front.start()
    try:
        code, body, _ = get(front.port, f"/entities/{entity}")
        assert code == 200 and body["features"] == {"a": 1.0, "b": 2.0, "c": 3.0}
        assert body["owner"] == "127.0.0.1:1"  # the owner's own (advertised) answer
    finally:
        front.shutdown()
        owner.shutdown()


def test_reads_are_consistent_with_a_concurrent_writer(store: PartitionStore) -> None:
    """Every answer's serving record and partition clock come from the same WriteBatch, while the
    writer keeps committing batches (the store's one writer, as in the engine)."""
    entity = entity_in(0)
    server = make_server({0: "127.0.0.1:1"})
    server.attach(0, store)
    write_batch(store, entity, 1, [0.0, 0.0, 0.0], offset=1)
    stop = threading.Event()

    def writer() -> None:
        ts = 2
        while not stop.is_set():
            write_batch(store, entity, ts, [float(ts), 0.0, 0.0], offset=ts)
            ts += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = set()
        deadline = time.monotonic() + 60
        while len(seen) < 50:  # answers from 50 different batches, read while the writer writes
            assert time.monotonic() < deadline, f"only {len(seen)} batches seen"
            code, body, _ = server.lookup(entity)
            assert code == 200
            ts = body["score"]["event_ts"]
            assert body["partition_clock"]["max_event_ts"] == ts == body["applied_offset"] == body["features"]["a"] or ts == 1
            seen.add(ts)
    finally:
        stop.set()
        thread.join()


def test_keep_alive_methods_and_shutdown(store: PartitionStore) -> None:
    """Many requests on one connection; non-GET and bodies refused; HTTP/1.0 closes; shutdown
    closes idle keep-alive connections (they must not outlive the engine's stores)."""
    server = make_server({})
    server.attach(0, store)
    entity = entity_in(0)
    write_batch(store, entity, 9_000, [1.0, 2.0, 3.0], offset=1)
    server.start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(50):
            conn.request("GET", f"/entities/{entity}")
            resp = conn.getresponse()
            assert resp.status == 200 and orjson.loads(resp.read())["score"]["event_ts"] == 9_000
        conn.request("POST", f"/entities/{entity}", body=b"{}")
        resp = conn.getresponse()
        assert resp.status == 400 and resp.getheader("Connection") == "close"
        resp.read()
        conn.close()
        conn.request("DELETE", f"/entities/{entity}")
        resp = conn.getresponse()
        assert resp.status == 405
        resp.read()
        conn._http_vsn_str = "HTTP/1.0"  # noqa: SLF001 - an HTTP/1.0 client
        conn.request("GET", f"/entities/{entity}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Connection") == "close"
        resp.read()
        conn.close()
        conn._http_vsn_str = "HTTP/1.1"  # noqa: SLF001
        conn.request("GET", f"/entities/{entity}")
        assert conn.getresponse().read()
        server.shutdown()
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", f"/entities/{entity}")
            conn.getresponse()
        assert server.local_partitions() == []
    finally:
        conn.close()
        server.shutdown()


def test_port_in_use_fails_at_start() -> None:
    first = make_server({})
    first.start()
    try:
        second = QueryServer(QueryConfig(port=first.port), "unused:1", "g", "clicks", NAMES, "fs-test", 1_000,
                             owners=FixedOwners({}))  # type: ignore[arg-type]
        with pytest.raises(OSError):
            second.start()
    finally:
        first.shutdown()
