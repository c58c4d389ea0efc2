"""The batch in flight (engine.inflight): reads through pending states equal reads after writing
them, against a real RocksDB store; the outbox produces in order; the committer reports; an
at-least-once offset commit that a rebalance refuses is not fatal."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from hypothesis import strategies as st

from engine.config import RocksDBConfig
from engine.inflight import Committer, Outbox, PendingView, merge_scan
from engine.runner import ScoringEngine
from engine.store import PartitionStore

# Entity keys, and NUL-prefixed keys like the monitors' label records and serving records.
KEYS = st.one_of(st.text(alphabet="abcdé", min_size=1, max_size=3),
                 st.text(alphabet="ab", max_size=2).map(lambda k: "\x00lbl:" + k),
                 st.text(alphabet="ab", max_size=2).map(lambda k: "\x00srv:" + k))
VALUES = st.binary(min_size=1, max_size=3)


def _logical(base: dict[str, bytes], pending: dict[str, bytes | None]) -> dict[str, bytes]:
    out = dict(base)
    for key, value in pending.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _expected_scan(data: dict[str, bytes], keep: Any, after: str | None, limit: int) -> list[tuple[str, bytes]]:
    return [(k, data[k]) for k in sorted(data) if keep(k) and (after is None or k > after)][:limit]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.dictionaries(KEYS, VALUES, max_size=25),
       pending=st.dictionaries(KEYS, st.one_of(st.none(), VALUES), max_size=15),
       after=st.one_of(st.none(), KEYS), limit=st.integers(1, 12))
def test_pending_view_reads_as_if_written(tmp_path_factory: pytest.TempPathFactory, base: dict[str, bytes],
                                          pending: dict[str, bytes | None], after: str | None, limit: int) -> None:
    store = PartitionStore(tmp_path_factory.mktemp("s") / "p-0", RocksDBConfig(block_cache_mb=8))
    try:
        store.write(base, b"clock", 1)
        view = PendingView(store, pending)
        data = _logical(base, pending)
        keys = sorted(set(base) | set(pending) | {"zz"})
        assert view.multi_get(keys) == {k: data.get(k) for k in keys}
        assert all(view.get(k) == data.get(k) for k in keys)
        # A scan resumes after a key it returned before: an entity key, or one with the prefix.
        entity_after = after if after is None or not after.startswith("\x00") else None
        assert view.scan(entity_after, limit) == _expected_scan(data, lambda k: not k.startswith("\x00"),
                                                                entity_after, limit)
        for prefix in ("\x00lbl:", "\x00srv:"):
            prefix_after = after if after is None or after.startswith(prefix) else None
            assert view.scan_prefix(prefix, prefix_after, limit) == _expected_scan(
                data, lambda k, p=prefix: k.startswith(p), prefix_after, limit)
    finally:
        store.close()


def test_merge_scan_leaves_out_pending_keys_beyond_a_full_scan() -> None:
    records = [("a", b"1"), ("c", b"3")]
    assert merge_scan(records, True, [("b", b"2"), ("d", b"4")], 2) == [("a", b"1"), ("b", b"2")]
    # The store was exhausted: pending keys after its last record belong to the result.
    assert merge_scan(records, False, [("a", None), ("d", b"4")], 5) == [("c", b"3"), ("d", b"4")]


class _Producer:
    """Records produce calls; refuses the first `full` calls with BufferError (a full local queue)."""

    def __init__(self, full: int = 0) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.full = full
        self.polls = 0

    def produce_batch(self, topic: str, records: list[dict[str, Any]], on_delivery: Any) -> int:
        if self.full:  # like librdkafka: queue the first record, mark the rest "_error"
            self.full -= 1
            for r in records[1:]:
                r["_error"] = "queue full"
            self.calls.append((topic, [records[0]["value"]]))
            return 1
        self.calls.append((topic, [r["value"] for r in records]))
        return len(records)

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None, on_delivery: Any = None) -> None:
        self.calls.append((topic, value))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_outbox_produces_in_queue_order_and_retries_a_full_queue() -> None:
    box = Outbox()
    box.batch("scores", [{"value": b"s1"}, {"value": b"s2"}], print)
    box.message("dlq", b"bad", b"k", print, headers=[("reason", b"late")])
    box.batch("scores", [{"value": b"s3"}], print)
    assert len(box) == 3
    producer = _Producer(full=1)
    box.send(producer)  # type: ignore[arg-type]
    assert producer.calls == [("scores", [b"s1"]), ("scores", [b"s2"]), ("dlq", b"bad"), ("scores", [b"s3"])]
    assert producer.polls == 1 and len(box) == 0


def test_committer_runs_one_commit_at_a_time_and_reports_its_error() -> None:
    committer = Committer()
    release = threading.Event()
    try:
        assert committer.wait() is None and not committer.busy
        committer.submit(lambda: None if release.wait(10) else None)
        assert committer.busy
        with pytest.raises(RuntimeError, match="already in flight"):
            committer.submit(lambda: None)
        release.set()
        assert committer.wait() is None and not committer.busy

        def fail() -> None:
            raise ValueError("broker said no")

        committer.submit(fail)
        error = committer.wait()
        assert isinstance(error, ValueError) and "broker said no" in str(error)
    finally:
        committer.close()


class _RefusingConsumer:
    def __init__(self, code: int) -> None:
        self.code = code

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        raise KafkaException(KafkaError(self.code, "refused"))


@pytest.mark.parametrize("code", [KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
                                  KafkaError.UNKNOWN_MEMBER_ID])
def test_at_least_once_offset_commit_refused_by_a_rebalance_is_not_fatal(code: int,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    engine = SimpleNamespace(_consumer=_RefusingConsumer(code))
    ScoringEngine._commit_offsets(engine, [TopicPartition("clicks", 0, 10)])  # type: ignore[arg-type]
    assert "offset commit refused during a rebalance" in caplog.text


def test_at_least_once_offset_commit_other_errors_propagate() -> None:
    engine = SimpleNamespace(_consumer=_RefusingConsumer(KafkaError._TRANSPORT))
    with pytest.raises(KafkaException):
        ScoringEngine._commit_offsets(engine, [TopicPartition("clicks", 0, 10)])  # type: ignore[arg-type]
