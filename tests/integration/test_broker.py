"""The real broker: keyed round trip, transactions, group offsets, topic admin, broker lifecycle.

Everything is awaited by consuming or polling against a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from engine.broker import BrokerError, BrokerNotRunning, LocalBroker, process_matches, read_state, resolve_bootstrap
from engine.topics import TopicError, TopicSpec, delete_topics, ensure_topics, topic_config

pytestmark = pytest.mark.integration

MakeTopic = Callable[..., str]
DEADLINE_S = 30.0


def consume_until(consumer: Consumer, done: Callable[[list[Message]], bool], what: str,
                  timeout: float = DEADLINE_S, limit: int | None = None) -> list[Message]:
    """Consume until `done(messages)` holds; fail after `timeout` s. `limit` caps the count read."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: condition not met within {timeout} s after {len(got)} messages")
        batch = consumer.consume(num_messages=(limit - len(got)) if limit else 500, timeout=0.1)
        for msg in batch:
            if msg.error() is not None:
                raise AssertionError(f"{what}: consumer error {msg.error()}")
            got.append(msg)
    return got


def produce_acked(producer: Producer, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    errors: list[str] = []
    for key, value in items:
        producer.produce(topic, value, key, on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
        producer.poll(0)
    assert producer.flush(DEADLINE_S) == 0, "messages still in flight after flush"
    assert not errors, errors


def reader(bootstrap: str, **extra: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest", **extra})


def test_keyed_messages_round_trip(kafka_bootstrap: str, make_topic: MakeTopic) -> None:
    topic = make_topic("roundtrip", partitions=3)
    sent = [(f"user-{i % 37}".encode(), str(i).encode()) for i in range(600)]
    produce_acked(Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5,
                            "partitioner": "murmur2_random"}), topic, sent)

    consumer = reader(kafka_bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
        got = consume_until(consumer, lambda m: len(m) >= len(sent), "round trip", limit=len(sent))
    finally:
        consumer.close()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    latest = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(3)})
    ends = [future.result(DEADLINE_S).offset for future in latest.values()]

    assert sorted((m.key(), m.value()) for m in got) == sorted(sent)
    assert sum(ends) == len(sent), "the log holds duplicates or extra records"
    partitions_of: dict[bytes, set[int]] = defaultdict(set)
    values_of: dict[bytes, list[int]] = defaultdict(list)
    for m in got:
        partitions_of[m.key()].add(m.partition())
        values_of[m.key()].append(int(m.value()))
    assert all(len(p) == 1 for p in partitions_of.values()), "a key was spread over partitions"
    assert {m.partition() for m in got} == {0, 1, 2}
    assert all(v == sorted(v) for v in values_of.values()), "per-key order was not preserved"


def test_transactions_commit_visible_abort_hidden(kafka_bootstrap: str, make_topic: MakeTopic) -> None:
    topic = make_topic("txn")
    committed = [b"c%d" % i for i in range(10)]
    aborted = [b"a%d" % i for i in range(5)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{topic}", "linger.ms": 5})
    producer.init_transactions(DEADLINE_S)
    for batch, commit in ((committed, True), (aborted, False), ([b"end"], True)):
        producer.begin_transaction()
        for value in batch:
            producer.produce(topic, value, b"k")
        assert producer.flush(DEADLINE_S) == 0  # the records are in the log either way
        if commit:
            producer.commit_transaction(DEADLINE_S)
        else:
            producer.abort_transaction(DEADLINE_S)

    def read(isolation: str) -> list[bytes]:
        consumer = reader(kafka_bootstrap, **{"isolation.level": isolation})
        try:
            consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            msgs = consume_until(consumer, lambda m: bool(m) and m[-1].value() == b"end", f"read {isolation}")
        finally:
            consumer.close()
        return [m.value() for m in msgs]

    assert read("read_committed") == committed + [b"end"]
    # The aborted records really were written: an uncommitted reader sees them.
    assert read("read_uncommitted") == committed + aborted + [b"end"]


def test_committed_group_offsets_resume_a_new_consumer(kafka_bootstrap: str, make_topic: MakeTopic) -> None:
    topic = make_topic("group")
    group = f"group-{topic}"
    produce_acked(Producer({"bootstrap.servers": kafka_bootstrap}), topic,
                  [(None, str(i).encode()) for i in range(10)])
    conf = {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}

    first = Consumer(conf)
    try:
        first.subscribe([topic])
        head = consume_until(first, lambda m: len(m) >= 4, "first consumer", limit=4)
        first.commit(message=head[-1], asynchronous=False)
    finally:
        first.close()
    assert [m.value() for m in head] == [b"0", b"1", b"2", b"3"]

    second = Consumer(conf)
    try:
        assert second.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 4
        second.subscribe([topic])
        rest = consume_until(second, lambda m: len(m) >= 6, "second consumer", limit=6)
    finally:
        second.close()
    assert [m.value() for m in rest] == [str(i).encode() for i in range(4, 10)]


def test_ensure_topics_idempotent_and_compacted(kafka_bootstrap: str) -> None:
    plain, compact = f"ensure-{uuid.uuid4().hex[:12]}", f"ensure-{uuid.uuid4().hex[:12]}-compact"
    specs = [TopicSpec(plain, 3), TopicSpec(compact, 2, compacted=True, config={"min.cleanable.dirty.ratio": "0.1"})]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        assert sorted(ensure_topics(kafka_bootstrap, specs)) == sorted([plain, compact])
        assert ensure_topics(kafka_bootstrap, specs) == [], "second call must create nothing"
        topics = admin.list_topics(timeout=10).topics
        assert len(topics[plain].partitions) == 3 and len(topics[compact].partitions) == 2

        compact_cfg = topic_config(kafka_bootstrap, compact)
        assert compact_cfg["cleanup.policy"] == "compact"
        assert compact_cfg["min.cleanable.dirty.ratio"] == "0.1"
        assert topic_config(kafka_bootstrap, plain)["cleanup.policy"] == "delete"

        with pytest.raises(TopicError, match="exists with 3 partitions but 5"):
            ensure_topics(kafka_bootstrap, [TopicSpec(plain, 5)])
    finally:
        delete_topics(kafka_bootstrap, [plain, compact])

    deadline = time.monotonic() + DEADLINE_S
    while {plain, compact} & set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "deleted topics still listed"
        time.sleep(0.05)  # poll interval: deletion propagates asynchronously
    delete_topics(kafka_bootstrap, [plain])  # deleting a missing topic is not an error


def test_make_topic_compacted(kafka_bootstrap: str, make_topic: MakeTopic) -> None:
    name = make_topic("mk", partitions=2, compacted=True)
    assert name.startswith("mk-")
    assert topic_config(kafka_bootstrap, name)["cleanup.policy"] == "compact"


def _jvms_using(config: Path) -> list[int]:
    """Pids of live processes whose command line names `config` (this home's broker JVM)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        if process_matches(int(proc.name), str(config.resolve())):
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java to start a second broker")
def test_local_broker_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second broker in its own home: idempotent start, status, resolution, and a stop that
    leaves no JVM behind. (Restart with reused ports and kept topics: verified by hand, ~5 s more.)"""
    broker = LocalBroker(home=tmp_path / "home", die_with_parent=True)
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and not broker.jars_ready():
        pytest.skip("external broker in use and no cached Kafka jars")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    try:
        bootstrap = broker.start(timeout=90)
        state = read_state(broker.broker_dir)
        assert state is not None and state.bootstrap == bootstrap
        assert broker.start() == bootstrap, "start() of a running broker returns its address"
        assert read_state(broker.broker_dir) == state, "... without launching another JVM"
        st = broker.status()
        assert st["running"] and st["answering"] and st["pid"] == state.pid
        assert 50 < st["rss_mb"] < 2_000
        assert resolve_bootstrap(broker.home) == bootstrap
        assert _jvms_using(broker.config_file) == [state.pid]

        assert broker.stop() is True
        assert _jvms_using(broker.config_file) == [], "a broker JVM survived stop()"
        assert not broker.state_file.exists() and broker.status()["running"] is False
        assert broker.stop() is False
        with pytest.raises(BrokerNotRunning, match="streamscore broker start"):
            resolve_bootstrap(broker.home)
    finally:
        broker.stop()
    assert _jvms_using(broker.config_file) == []


@pytest.mark.skipif(shutil.which("java") is None, reason="needs java")
def test_jvm_dying_at_startup_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    broker = LocalBroker(home=tmp_path / "home", heap="-Xmx1k", die_with_parent=True)
    if not broker.jars_ready():
        pytest.skip("no cached Kafka jars")
    broker.data_dir.mkdir(parents=True)
    (broker.data_dir / "meta.properties").write_text("version=1\n")  # skip formatting: the JVM dies first
    with pytest.raises(BrokerError, match="(?s)exited with code 1 during startup.*Too small maximum heap"):
        broker.start(timeout=60)
    assert not broker.state_file.exists()
    assert _jvms_using(broker.config_file) == []
