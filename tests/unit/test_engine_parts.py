"""Unit tests of engine parts that need no broker: config, records, latency, RocksDB store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.config import ConfigError, EngineConfig, RocksDBConfig, config_from_mapping, load_config
from engine.latency import LatencyRecorder
from engine.records import dlq_headers, headers_dict, score_records
from engine.store import PartitionStore


def test_config_defaults_are_valid() -> None:
    cfg = EngineConfig()
    assert cfg.features.width > 0 and cfg.guarantee == "exactly_once"


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"max_batch": 0}, "max_batch"),
        ({"commit_pipeline": "yes"}, "commit_pipeline"),
        ({"expiry_scan_per_batch": -1}, "expiry_scan_per_batch"),
        ({"guarantee": "maybe"}, "guarantee"),
        ({"bogus": 1}, "unknown config keys ['bogus']"),
        ({"scores_topic": "clicks"}, "distinct"),
        ({"rocksdb": {"compression": "gzip"}}, "rocksdb.compression"),
        ({"rocksdb": {"memtable_budget_mb": 0}}, "rocksdb.memtable_budget_mb must be >= 1"),
        ({"schema": {"field_map": {"uid": "x"}}}, "unknown canonical fields"),
        ({"features": {"features": [{"name": "a", "agg": "median", "window": {"kind": "tumbling", "size": "1m"}}]}},
         "median"),
    ],
)
def test_invalid_config_fails_fast_naming_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        config_from_mapping(raw)


def test_yaml_config_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("group_id: g1\nmax_batch: 7\nbootstrap_servers: file:1\nschema: {field_map: {user_id: uid}}\n")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "env:2")
    cfg = load_config(path, max_batch=9)
    assert (cfg.group_id, cfg.max_batch, cfg.bootstrap_servers) == ("g1", 9, "env:2")
    assert cfg.schema.decode(b'{"event_id":"e","uid":"u1","event_type":"x","ts":1767225600000}')["user_id"] == "u1"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_score_records_carry_lineage_and_optional_features() -> None:
    events = [{"event_id": "e1", "user_id": "u1", "ts": 5}, {"event_id": "e2", "user_id": "u2", "ts": 6}]
    rows = np.array([[1.0, np.nan], [2.0, 3.0]], dtype=np.float32)
    msgs = score_records(events, np.array([0.25, 0.75], dtype=np.float32), "user_id", {"name": "m", "version": 3},
                         "fs-x", "champion", "at_least_once", 99, rows, ("a", "b"))
    assert [m["key"] for m in msgs] == [b"u1", b"u2"]
    rec = orjson.loads(msgs[0]["value"])
    assert rec == {"schema_version": 1, "event_id": "e1", "entity": "u1", "score": 0.25,
                   "model": {"name": "m", "version": 3}, "feature_spec": "fs-x", "variant": "champion",
                   "guarantee": "at_least_once", "event_ts": 5, "scored_ts": 99, "features": {"a": 1.0, "b": None}}


def test_dlq_headers_round_trip() -> None:
    h = headers_dict(dlq_headers("late", "too old", "clicks", 3, 42, 1000))
    assert h == {"schema_version": "1", "reason": "late", "error": "too old", "source.topic": "clicks", "source.partition": "3",
                 "source.offset": "42", "source.timestamp": "1000"}


def test_latency_percentiles_within_bucket_error() -> None:
    rng = np.random.default_rng(1)
    values = rng.exponential(80.0, 50_000)
    rec = LatencyRecorder()
    for chunk in np.array_split(values, 50):
        rec.record(chunk)
    assert rec.total == 50_000
    for q in (50, 90, 99):
        exact = np.percentile(values, q)
        assert abs(rec.percentile(q) - exact) <= max(1.0, 0.03 * exact)
    assert np.isnan(LatencyRecorder().percentile(50))


def test_partition_store_batch_write_is_atomic_unit(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "clicks-0", RocksDBConfig(block_cache_mb=8))
    assert store.read_meta() == (None, None)
    store.write({"u1": b"s1", "u2": b"s2"}, b"123", 10)
    assert store.multi_get(["u1", "u2", "u3"]) == {"u1": b"s1", "u2": b"s2", "u3": None}
    store.write({"u1": None}, b"124", 12)
    assert store.multi_get(["u1"]) == {"u1": None}
    assert store.read_meta() == (b"124", 12)
    assert store.entity_count() == 1
    store.close()
    reopened = PartitionStore(tmp_path / "clicks-0", RocksDBConfig())
    assert reopened.read_meta() == (b"124", 12) and reopened.multi_get(["u2"]) == {"u2": b"s2"}
    reopened.close()


def test_stores_of_a_process_share_one_block_cache_and_memtable_budget(tmp_path: Path) -> None:
    """RocksDB memory is bounded per process: four partitions' memtables together are held to the
    budget (RocksDB flushes early, on its background threads), not 4 x write_buffer_mb, and reads
    fill one cache."""
    import os
    import time

    from engine.store import shared_memory

    cfg = RocksDBConfig(block_cache_mb=7, write_buffer_mb=32, memtable_budget_mb=4)
    stores = [PartitionStore(tmp_path / f"clicks-{p}", cfg) for p in range(4)]
    cache, memtables = shared_memory(7, 4)
    assert memtables.get_buffer_size() == 4 * 1024 * 1024
    peak = 0
    try:
        for batch in range(10):  # 4 stores x 10 x 1 MB: each store alone stays far below its 32 MB memtable
            for p, store in enumerate(stores):
                store.write({f"u{p}-{batch}-{i}": os.urandom(1_000) for i in range(1_000)}, b"1", batch)
            peak = max(peak, memtables.get_usage())
        assert peak > 1024 * 1024  # the budget tracks these stores' memtables
        # The early flushes run in the background: await them (an event, bounded) rather than time them.
        # Settled, the mutable memtables hold at most ~7/8 of the budget plus the last write (1 MB):
        # far from the 40 MB four unbudgeted memtables would hold.
        bound = 2 * memtables.get_buffer_size()
        deadline = time.monotonic() + 60
        while memtables.get_usage() > bound and time.monotonic() < deadline:
            time.sleep(0.05)
        assert memtables.get_usage() <= bound, memtables.get_usage()
        assert any(tmp_path.rglob("*.sst"))  # flushed long before any store reached 32 MB
        assert all(store.multi_get([f"u{p}-0-7"])[f"u{p}-0-7"] is not None for p, store in enumerate(stores))
        assert 0 < cache.get_usage() <= 7 * 1024 * 1024  # one cache served all four stores' reads
    finally:
        for store in stores:
            store.close()


def test_partition_store_scan_pages_entities_in_key_order(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "clicks-1", RocksDBConfig(block_cache_mb=8))
    try:
        keys = [f"u{i:03d}" for i in range(10)] + ["é", "a\x01b"]
        store.write({k: k.encode() for k in keys}, b"99", 5, changelog_offset=3)
        pages, after = [], None
        while True:
            page = store.scan(after, 4)
            pages.append([k for k, _ in page])
            if len(page) < 4:
                break
            after = page[-1][0]
        seen = [k for page in pages for k in page]
        # Every entity once, in byte order of the UTF-8 key; metadata keys never.
        assert seen == sorted(keys, key=str.encode)
        assert all(len(p) == 4 for p in pages[:-1]) and len(pages[-1]) < 4
        assert dict(store.scan(None, 100)) == {k: k.encode() for k in keys}
        assert store.scan(seen[-1], 4) == []
    finally:
        store.close()
