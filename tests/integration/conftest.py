"""Fixtures for tests that run the engine: a trained model in a registry, an engine thread,
and consumers that await records (with deadlines, never sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from engine.config import EngineConfig
from engine.loadgen import write_jsonl
from engine.runner import RunStats, ScoringEngine
from features.clickstream import clickstream_spec
from features.spec import FeatureSpec
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from models.pipeline import train_from_log
from models.registry import Registry
from models.testing import make_manifest, small_model_bytes, synthetic_dataset
from tests.integration.engine_process import scan_topic

HISTORY_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
PARTITIONS = 4


@dataclass(frozen=True)
class TrainedModel:
    registry: Path
    history: Path
    name: str
    version: int


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A champion trained on 20k generated events with the default feature spec (~10 s)."""
    root = tmp_path_factory.mktemp("model")
    history = root / "history.jsonl"
    cfg = GeneratorConfig(n_events=20_000, n_users=400, seed=3, start=HISTORY_START, jitter_ms=1_000.0)
    write_jsonl(history, ClickstreamGenerator(cfg).events())
    result = train_from_log(history, clickstream_spec(), num_partitions=PARTITIONS, registry_root=root / "registry",
                            model_name="purchase", horizon_ms=3_600_000, promote=True)
    return TrainedModel(root / "registry", history, "purchase", result.version)


def register_small_model(root: Path, spec: FeatureSpec, name: str, seed: int = 5) -> Path:
    """A registry at `root` whose champion `name` is a small logistic regression over `spec`'s
    columns (synthetic data: the scores mean nothing, the vectors are what is tested)."""
    X, y, _, _ = synthetic_dataset(n=1_000, d=spec.width, seed=seed)
    reg = Registry(root)
    version = reg.register(name, small_model_bytes(X, y, spec.names, kind="logreg"),
                           make_manifest(spec.names, feature_spec=spec.hash, name=name), reason="test")
    reg.promote(name, version, reason="test")
    return root


def engine_config(tmp_path: Path, model: TrainedModel, clicks: str, scores: str, dlq: str, **kw: object) -> EngineConfig:
    return EngineConfig(group_id=f"g-{clicks}", input_topic=clicks, scores_topic=scores, dlq_topic=dlq,
                        state_dir=tmp_path / "state", registry=model.registry, model_name=model.name,
                        batch_wait_ms=20, **kw)  # type: ignore[arg-type]


@contextmanager
def running_engine(cfg: EngineConfig, bootstrap: str, **run_kw: object) -> Iterator[ScoringEngine]:
    """Run an engine on a thread; on exit stop it, join, and re-raise anything it raised."""
    engine = ScoringEngine(cfg, bootstrap)
    failure: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            engine.run(**run_kw)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=target, name="engine-under-test", daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        engine.stop()
        assert done.wait(60), "engine did not stop within 60 s"
        if failure:
            raise failure[0]


def wait_for_stats(engine: ScoringEngine, predicate, timeout: float = 60.0) -> RunStats:  # type: ignore[no-untyped-def]
    """Poll the engine's own counters (updated after each committed batch) until `predicate`."""
    deadline = time.monotonic() + timeout
    while not predicate(engine.stats):
        if time.monotonic() > deadline:
            raise AssertionError(f"engine stats never satisfied the condition: {engine.stats.as_dict()}")
        time.sleep(0.02)
    return engine.stats


def produce_all(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    """Produce keyed payloads with Kafka's default (murmur2) partitioning and wait for every ack."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "enable.idempotence": True, "linger.ms": 5, "message.max.bytes": 2_000_000})
    errors: list[str] = []
    for key, value in items:
        producer.produce(topic, value, key, on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors


def consume_n(bootstrap: str, topic: str, n: int, partitions: int, timeout: float = 60.0) -> list[Message]:
    """Read `n` committed records from the start of `topic`; fail if they do not arrive in time."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(out)} of {n} records arrived on {topic} within {timeout} s")
            out.extend(m for m in consumer.consume(1000, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return out


def read_all(bootstrap: str, topic: str, partitions: int, timeout: float = 60.0) -> list[Message]:
    """Every committed record of `topic`, read until each partition reports its end.

    Counts records, not offsets: a transactional topic also holds commit markers. Call it once
    the writers have stopped (or committed), so the end is final."""
    out: list[Message] = []
    scan_topic(bootstrap, topic, partitions, out.append, timeout)
    return out


def record_count(bootstrap: str, topic: str, partitions: int) -> int:
    """Number of committed records in `topic` (see `read_all`)."""
    return len(read_all(bootstrap, topic, partitions))


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Sum of the group's committed offsets on `topic` (0 for partitions without a commit)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()
