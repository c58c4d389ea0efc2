"""Queryable state against the real broker, real RocksDB and real ONNX Runtime.

* The endpoint answers, for every entity, exactly the feature vector and score the engine scored
  the entity's last event with (compared with the `include_features` score records), and the
  same answers after a restart on a wiped disk (serving records are restored from the changelog).
* Two engine processes: a query to the process that does not own the entity's partition is
  redirected (307) to the owner, which answers; with `query.proxy` the first process answers
  with the owner's answer itself.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
import pytest

from engine.broker import free_port
from engine.config import QueryConfig
from engine.query import http_get_json
from features.partitioning import kafka_partition
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import (
    PARTITIONS,
    TrainedModel,
    engine_config,
    produce_all,
    running_engine,
    wait_for_stats,
)
from tests.integration.engine_process import (
    CommittedOffsets,
    EngineProcesses,
    engine_yaml,
    scan_topic,
    wait_until,
)

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, tzinfo=timezone.utc)


def get(address: str, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return http_get_json(address, path)


def local_partitions(address: str) -> list[int] | None:
    """The partitions a process serves locally (None while it is not listening yet)."""
    try:
        return get(address, "/partitions")[1]["local"]
    except OSError:
        return None


def entity_path(entity: str) -> str:
    return f"/entities/{quote(entity, safe='')}"


def payloads(n: int, users: int, seed: int) -> list[tuple[bytes, bytes]]:
    """A generated stream with out-of-order, late and malformed events (so "the last event" is
    not simply the last line of an entity), dense enough (about a day) that no entity idles past
    the spec's idle TTL: an expired entity's serving record is deleted with its state."""
    cfg = GeneratorConfig(n_events=n, n_users=users, seed=seed, start=START, jitter_ms=1_000.0,
                          late_fraction=0.01, late_ms=120_000.0, bad_fraction=0.005, sessions_per_user_day=8.0)
    return [(k, v) for k, v, _ in ClickstreamGenerator(cfg).labelled_payloads()]


def last_scores(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """entity -> its last answering (non-shadow) score record, in the order the engine wrote them
    (an entity's records share one partition of the scores topic: key = entity)."""
    last: dict[str, dict[str, Any]] = {}

    def take(m: Any) -> None:
        r = orjson.loads(m.value())
        if r["variant"] != "challenger":
            last[r["entity"]] = r

    scan_topic(bootstrap, topic, PARTITIONS, take)
    return last


def assert_answers_match(address: str, expected: dict[str, dict[str, Any]]) -> None:
    bad = {e: get(address, entity_path(e))[0] for e in expected}
    bad = {e: c for e, c in bad.items() if c != 200}
    assert not bad, (len(bad), len(expected), sorted(bad.items())[:20])
    for entity, rec in expected.items():
        code, body, _ = get(address, entity_path(entity))
        assert code == 200, (entity, code, body)
        assert body["features"] == rec["features"], f"{entity}: vector differs from the scored one"
        assert list(body["features"]) == list(rec["features"]), "names must be in the spec's column order"
        score = body["score"]
        assert (score["score"], score["event_id"], score["event_ts"], score["model"], score["variant"]) == \
            (rec["score"], rec["event_id"], rec["event_ts"], rec["model"], rec["variant"]), entity
        assert body["partition"] == kafka_partition(entity, PARTITIONS)
        assert body["feature_spec"] == rec["feature_spec"]


def test_endpoint_answers_the_vector_the_last_event_was_scored_with(
        kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    items = payloads(4_000, users=150, seed=11)
    produce_all(kafka_bootstrap, clicks, items)
    port = free_port()
    cfg = engine_config(tmp_path, trained_model, clicks, scores, dlq, include_features=True,
                        query=QueryConfig(port=port))
    address = f"127.0.0.1:{port}"
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed == len(items), timeout=120)
        expected = last_scores(kafka_bootstrap, scores)
        assert len(expected) > 100
        assert_answers_match(address, expected)
        code, body, _ = get(address, entity_path("nobody-at-all"))
        assert code == 404 and body["error"] == "unknown_entity", body
        assert body["partition"] == kafka_partition("nobody-at-all", PARTITIONS)
        code, body, _ = get(address, "/entities/")
        assert code == 400, body

    # A fresh process on a wiped disk restores the serving records with the state.
    port2 = free_port()
    cfg2 = dataclasses.replace(cfg, state_dir=tmp_path / "wiped", query=QueryConfig(port=port2))
    with running_engine(cfg2, kafka_bootstrap) as engine:
        address2 = f"127.0.0.1:{port2}"
        wait_until(lambda: local_partitions(address2) == list(range(PARTITIONS)), 60,
                   "the restarted process to own every partition")
        assert engine.stats.restored_records > 0
        assert_answers_match(address2, expected)


def test_wrong_process_redirects_to_the_owner(kafka_bootstrap: str, make_topic, trained_model: TrainedModel,
                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    group = f"g-{clicks}"
    ports = {"a": free_port()}
    ports["b"] = free_port(exclude=(ports["a"],))
    addr = {name: f"127.0.0.1:{port}" for name, port in ports.items()}

    def config(name: str, proxy: bool) -> Path:
        return engine_yaml(
            tmp_path / name / "engine.yaml", bootstrap_servers=kafka_bootstrap, group_id=group, input_topic=clicks,
            scores_topic=scores, dlq_topic=dlq, state_dir=tmp_path / name / "state", instance_id=name,
            registry=trained_model.registry, model_name=trained_model.name, include_features=True,
            session_timeout_ms=6_000, query={"port": ports[name], "proxy": proxy})

    items = payloads(2_000, users=120, seed=5)
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, group, clicks, PARTITIONS) as committed:
        a = procs.start(config("a", proxy=False), "a")
        wait_until(lambda: a.assigned_now(), 60, "a's first assignment", procs.logs)
        b = procs.start(config("b", proxy=True), "b")

        def split() -> tuple[set[int], set[int]] | None:
            la, lb = set(local_partitions(addr["a"]) or ()), set(local_partitions(addr["b"]) or ())
            ok = la and lb and not la & lb and la | lb == set(range(PARTITIONS))
            return (la, lb) if ok else None

        a_parts, b_parts = wait_until(split, 90, "both processes to own partitions", procs.logs, poll=0.2)
        produce_all(kafka_bootstrap, clicks, items)
        wait_until(lambda: committed.total() == len(items), 90, "every event to be committed", procs.logs, poll=0.1)
        expected = last_scores(kafka_bootstrap, scores)
        on_a = sorted(e for e in expected if kafka_partition(e, PARTITIONS) in a_parts)
        on_b = sorted(e for e in expected if kafka_partition(e, PARTITIONS) in b_parts)
        assert on_a and on_b

        for entity in on_b[:20]:  # a does not own it: 307 to b, and b answers
            code, body, headers = get(addr["a"], entity_path(entity))
            assert code == 307, (code, body, a.tail())
            assert body["owner"] == addr["b"] and body["partition"] == kafka_partition(entity, PARTITIONS)
            location = urlsplit(headers["Location"])
            assert location.netloc == addr["b"]
            code, body, _ = get(location.netloc, location.path)
            assert code == 200 and body["owner"] == addr["b"], body
            assert body["features"] == expected[entity]["features"]
            assert body["score"]["event_id"] == expected[entity]["event_id"]

        for entity in on_a[:20]:  # b proxies: one request, the owner's answer
            code, body, _ = get(addr["b"], entity_path(entity))
            assert code == 200 and body["owner"] == addr["a"], (code, body, b.tail())
            assert body["features"] == expected[entity]["features"]

        # An unknown entity on the other process: redirected, then 404 at the owner.
        unknown = next(f"ghost-{i}" for i in range(1000) if kafka_partition(f"ghost-{i}", PARTITIONS) in b_parts)
        code, body, headers = get(addr["a"], entity_path(unknown))
        assert code == 307
        code, body, _ = get(addr["b"], urlsplit(headers["Location"]).path)
        assert code == 404 and body["error"] == "unknown_entity"
        a.terminate()
        b.terminate()
