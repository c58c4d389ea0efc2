"""The first vertical slice end to end against the real broker, real RocksDB and real ONNX Runtime:
clicks topic -> validate -> windowed state -> features -> ONNX -> scores topic, bad input -> DLQ."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.records import headers_dict
from features.clickstream import clickstream_spec
from features.offline import replay
from features.schema import EventSchema
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import (
    PARTITIONS,
    TrainedModel,
    committed_total,
    consume_n,
    engine_config,
    record_count,
    produce_all,
    running_engine,
    wait_for_stats,
)

pytestmark = pytest.mark.integration
LIVE_START = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _live_events(n: int, seed: int) -> list[dict]:
    cfg = GeneratorConfig(n_events=n, n_users=150, seed=seed, start=LIVE_START, jitter_ms=500.0)
    return list(ClickstreamGenerator(cfg).events())


def _bad_payloads(late_user: str) -> list[tuple[bytes, bytes, str]]:
    """(key, value, expected DLQ reason). The late one is produced last, a day behind its partition."""
    base = {"event_id": "bad", "user_id": "u-bad", "event_type": "page_view", "ts": 1_769_904_000_000}
    oversize = orjson.dumps({**base, "event_id": "big", "page": "x" * 100_000})
    return [
        (b"u-bad", b'{"event_id": "m1", "user_id": ', "malformed_json"),
        (b"u-bad", b"[1, 2, 3]", "not_an_object"),
        (b"u-bad", orjson.dumps({k: v for k, v in base.items() if k != "user_id"}), "missing_field"),
        (b"u-bad", orjson.dumps({**base, "price": "12.50"}), "wrong_type"),
        (b"u-bad", orjson.dumps(base)[:-1] + b', "price": NaN}', "malformed_json"),
        (b"u-bad", orjson.dumps({**base, "ts": -2_208_988_800_000}), "bad_timestamp"),
        (b"u-bad", oversize, "oversize"),
        (late_user.encode(), orjson.dumps({**base, "event_id": "late-1", "user_id": late_user,
                                          "ts": int(LIVE_START.timestamp() * 1000) - 86_400_000}), "late"),
    ]


def test_slice_scores_every_event_and_dead_letters_bad_input(
    kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path
) -> None:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    good = _live_events(3_000, seed=11)
    bad = _bad_payloads(late_user=good[-1]["user_id"])
    half = len(good) // 2
    as_kv = [(e["user_id"].encode(), orjson.dumps(e)) for e in good]
    invalid, late = bad[:-1], bad[-1]
    # Bad input in the middle of the stream: the engine must keep scoring what comes after it.
    produce_all(kafka_bootstrap, clicks, as_kv[:half] + [(k, v) for k, v, _ in invalid] + as_kv[half:] + [late[:2]])

    cfg = engine_config(tmp_path, trained_model, clicks, scores, dlq, include_features=True)
    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed == len(good) + len(bad))
    assert engine.stats.scored == len(good)

    score_msgs = consume_n(kafka_bootstrap, scores, len(good), PARTITIONS)
    assert record_count(kafka_bootstrap, scores, PARTITIONS) == len(good), "duplicate or extra scores"
    records = [orjson.loads(m.value()) for m in score_msgs]
    assert sorted(r["event_id"] for r in records) == sorted(e["event_id"] for e in good)
    spec = clickstream_spec()
    for m, r in zip(score_msgs, records):
        assert m.key().decode() == r["entity"]
        assert 0.0 <= r["score"] <= 1.0
        assert r["model"] == {"name": trained_model.name, "version": trained_model.version}
        assert r["feature_spec"] == spec.hash and r["variant"] == "champion"
        assert r["guarantee"] == "exactly_once" and r["scored_ts"] >= r["event_ts"] - 86_400_000

    # Features served online equal the offline replay of the same log, bit for bit.
    # The offline replay of the produced log (invalid payloads drop out exactly as online).
    late_event = EventSchema().decode(late[1])
    offline = replay([*good, late_event], spec, num_partitions=PARTITIONS)
    online = {r["event_id"]: np.array([np.nan if v is None else v for v in r["features"].values()], np.float32)
              for r in records}
    assert list(records[0]["features"]) == list(spec.names)
    assert len(offline) == len(good) and offline.late == [late_event["event_id"]]
    for eid, row in zip(offline.event_ids, offline.X):
        assert online[eid].tobytes() == row.tobytes(), f"feature skew on {eid}"

    dlq_msgs = consume_n(kafka_bootstrap, dlq, len(bad), 1)
    got = sorted((headers_dict(m.headers())["reason"], m.value()) for m in dlq_msgs)
    assert got == sorted((reason, value) for _, value, reason in bad), "DLQ must keep the original bytes"
    for m in dlq_msgs:
        h = headers_dict(m.headers())
        assert h["source.topic"] == clicks and int(h["source.offset"]) >= 0 and h["error"]

    # Offsets were committed for everything consumed.
    assert committed_total(kafka_bootstrap, cfg.group_id, clicks, PARTITIONS) == len(good) + len(bad)


def test_restart_resumes_from_committed_offsets_without_loss_or_duplicates(
    kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path
) -> None:
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    good = _live_events(2_000, seed=12)
    kv = [(e["user_id"].encode(), orjson.dumps(e)) for e in good]
    cfg = engine_config(tmp_path, trained_model, clicks, scores, dlq, max_batch=200)

    produce_all(kafka_bootstrap, clicks, kv[:1_000])
    with running_engine(cfg, kafka_bootstrap) as first:
        wait_for_stats(first, lambda s: s.consumed == 1_000)
    produce_all(kafka_bootstrap, clicks, kv[1_000:])
    with running_engine(cfg, kafka_bootstrap) as second:
        wait_for_stats(second, lambda s: s.consumed == 1_000)
    assert second.stats.skipped_applied == 0

    msgs = consume_n(kafka_bootstrap, scores, len(good), PARTITIONS)
    assert record_count(kafka_bootstrap, scores, PARTITIONS) == len(good)
    assert sorted(orjson.loads(m.value())["event_id"] for m in msgs) == sorted(e["event_id"] for e in good)


def test_a_bounded_run_says_what_it_left_and_idle_exit_drains_the_rest(
    kafka_bootstrap: str, make_topic, trained_model: TrainedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12, item 2: a run stopped by a bound (max_events here) with input left on its
    partitions says so (stop_reason, unconsumed, a warning), so it does not look like a drained
    input; a run with idle_exit stops only once it has consumed everything, reporting nothing left."""
    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    good = _live_events(2_000, seed=14)
    produce_all(kafka_bootstrap, clicks, [(e["user_id"].encode(), orjson.dumps(e)) for e in good])
    cfg = engine_config(tmp_path, trained_model, clicks, scores, dlq, max_batch=100)

    with caplog.at_level("WARNING", logger="streamscore.engine"):
        with running_engine(cfg, kafka_bootstrap, max_events=1) as first:
            stats = wait_for_stats(first, lambda s: s.stop_reason)
    assert stats.stop_reason == "max_events" and 0 < stats.consumed <= 100, stats.as_dict()
    left = sum(stats.unconsumed.values())
    assert 0 < left <= len(good) - stats.consumed, stats.as_dict()
    assert any("input left unconsumed" in r.getMessage() for r in caplog.records), caplog.text

    with running_engine(cfg, kafka_bootstrap, idle_exit_s=0.5) as second:
        rest = wait_for_stats(second, lambda s: s.stop_reason, timeout=90)
    assert rest.stop_reason == "idle" and rest.unconsumed == {}, rest.as_dict()
    assert stats.consumed + rest.consumed == len(good)
    assert committed_total(kafka_bootstrap, cfg.group_id, clicks, PARTITIONS) == len(good)
