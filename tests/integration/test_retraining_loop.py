"""The retraining loop against the real broker: history read back from the input topic equals the
same history from a file; triggers on the trigger topic become outcomes (failed, promoted,
duplicate); a promoted candidate is picked up by a running engine and stamped on score records;
a worker that dies mid-run leaves its trigger to the next worker."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from confluent_kafka import Producer, TopicPartition
from typer.testing import CliRunner

import models.retraining as retraining
from engine.loadgen import write_jsonl
from engine.cli import app
from engine.config import EngineConfig
from engine.history import HistoryUnavailable, read_topic_history
from engine.retrain_config import RetrainConfig
from engine.retrain_worker import RetrainWorker
from features.clickstream import clickstream_spec
from features.eventlog import read_events
from features.schema import EventSchema
from models.gate import PromotionGate
from models.pipeline import build_training_set
from models.registry import Registry
from models.retraining import RetrainPolicy, min_warmup_ms
from tests.integration.conftest import committed_total, read_all, running_engine, wait_for_stats
from tests.retrain_data import (
    HORIZON_MS,
    PARTITIONS,
    champion_registry,
    drifted_events,
    post_drift_window,
    window_trigger,
)

pytestmark = pytest.mark.integration
SPEC = clickstream_spec()
RECORD_DELAY_MS = 250  # record timestamps: published a moment after the event happened
BAD = [b"{not json", b'{"event_id": "x"}', b"[]"]


def _produce(bootstrap: str, topic: str, events: list[dict[str, Any]], bad_every: int = 0) -> int:
    """Produce `events` keyed by user (murmur2), record timestamp = event time + a delay; every
    `bad_every`-th message is preceded by a malformed one. Returns the number of bad messages."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "enable.idempotence": True,
                         "linger.ms": 5})
    errors: list[str] = []
    bad = 0

    def sent(err: Any, _m: Any) -> None:
        if err:
            errors.append(str(err))

    for i, e in enumerate(events):
        key = e["user_id"].encode()
        if bad_every and i % bad_every == 0:
            producer.produce(topic, BAD[bad % len(BAD)], key, timestamp=e["ts"] + RECORD_DELAY_MS, on_delivery=sent)
            bad += 1
        producer.produce(topic, orjson.dumps(e), key, timestamp=e["ts"] + RECORD_DELAY_MS, on_delivery=sent)
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    return bad


def _file_events(tmp_path: Path, events: list[dict[str, Any]], bad_every: int) -> tuple[list[dict[str, Any]], dict]:
    """The same messages written to a JSONL file and read back as the file path reads them."""
    lines: list[bytes] = []
    bad = 0
    for i, e in enumerate(events):
        if bad_every and i % bad_every == 0:
            lines.append(BAD[bad % len(BAD)])
            bad += 1
        lines.append(orjson.dumps(e))
    path = tmp_path / "history.jsonl"
    write_jsonl(path, lines)
    invalid: dict[str, int] = {}
    return list(read_events(path, EventSchema(), invalid)), invalid


def test_rows_from_the_topic_equal_rows_from_the_same_events_in_a_file(
    kafka_bootstrap: str, make_topic, tmp_path: Path
) -> None:
    events = drifted_events(seed=7)[:12_000]
    clicks = make_topic("clicks", PARTITIONS)
    _produce(kafka_bootstrap, clicks, events, bad_every=997)
    from_file, invalid_file = _file_events(tmp_path, events, bad_every=997)
    ts = np.array([e["ts"] for e in events])
    window = (int(ts[8_000]), int(ts[11_000]))

    # Default warm-up: the whole retained topic. Every row, every column, every label is equal.
    history = read_topic_history(kafka_bootstrap, clicks, EventSchema(), None, progress=lambda _l: None)
    assert history.num_partitions == PARTITIONS and history.invalid == invalid_file
    assert history.source["records"] == len(events) + sum(invalid_file.values()) and history.source["misrouted"] == 0
    topic_rows = build_training_set(history.events, SPEC, PARTITIONS, HORIZON_MS, window=window)
    file_rows = build_training_set(from_file, SPEC, PARTITIONS, HORIZON_MS, window=window)
    assert len(topic_rows) > 2_000
    assert topic_rows.event_ids == file_rows.event_ids
    assert topic_rows.X.tobytes() == file_rows.X.tobytes()
    assert np.array_equal(topic_rows.y, file_rows.y) and topic_rows.data_end_ms == file_rows.data_end_ms

    # A warm-up duration: the reader seeks by record time and skips the early offsets, but loses
    # no event at or after the warm-up start, and the window aggregates stay exact.
    from_ms = window[0] - min_warmup_ms(SPEC)
    seeked = read_topic_history(kafka_bootstrap, clicks, EventSchema(), from_ms, timestamp_slack_ms=60_000,
                                progress=lambda _l: None)
    starts = [seeked.source["offsets"][str(p)][0] for p in range(PARTITIONS)]
    assert all(s > 0 for s in starts), f"the seek skipped nothing: {starts}"
    read_ids = {e["event_id"] for e in seeked.events}
    assert {e["event_id"] for e in events if e["ts"] >= from_ms} <= read_ids
    assert len(read_ids) < len(events)
    windowed = [i for i, n in enumerate(SPEC.names) if not n.startswith(("secs_since", "session_depth"))]
    seeked_rows = build_training_set(seeked.events, SPEC, PARTITIONS, HORIZON_MS, window=window)
    assert seeked_rows.event_ids == file_rows.event_ids
    assert seeked_rows.X[:, windowed].tobytes() == file_rows.X[:, windowed].tobytes()


def test_a_missing_topic_is_a_clear_error(kafka_bootstrap: str) -> None:
    with pytest.raises(HistoryUnavailable, match="does not exist"):
        read_topic_history(kafka_bootstrap, "no-such-topic-for-history", EventSchema(), None)


def _worker_config(tmp_path: Path, registry: Path, clicks: str, scores: str, dlq: str, triggers: str,
                   outcomes: str, bootstrap: str) -> EngineConfig:
    return EngineConfig(
        bootstrap_servers=bootstrap, group_id=f"g-{clicks}", input_topic=clicks, scores_topic=scores, dlq_topic=dlq,
        state_dir=tmp_path / "state", registry=registry, batch_wait_ms=20, model_poll_ms=0,
        retrain=RetrainConfig(trigger_topic=triggers, outcome_topic=outcomes,
                              policy=RetrainPolicy(gate=PromotionGate(require_beat_baseline=False))),
    )


def _send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0


def _outcomes(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in sorted(read_all(bootstrap, topic, 1), key=lambda m: m.offset())]


@pytest.fixture
def loop_topics(make_topic) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"clicks": make_topic("clicks", PARTITIONS), "scores": make_topic("scores", PARTITIONS),
            "dlq": make_topic("dlq", 1), "triggers": make_topic("triggers", 1), "outcomes": make_topic("outcomes", 1)}


@pytest.fixture
def champion(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return champion_registry(tmp_path / "registry", tmp_path_factory)


def test_triggers_become_outcomes_and_the_engine_serves_the_promoted_version(
    kafka_bootstrap: str, loop_topics: dict[str, str], champion: Registry, tmp_path: Path
) -> None:
    t = loop_topics
    events = drifted_events()
    cfg = _worker_config(tmp_path, champion.root, t["clicks"], t["scores"], t["dlq"], t["triggers"], t["outcomes"],
                         kafka_bootstrap)
    window = post_drift_window(events)
    good = window_trigger(window, key="drift-abc")
    end = window[1]
    triggers = [
        (b"bad", b"{not a trigger"),
        (b"small", window_trigger((end - 1_800_000, end), key="small").to_json()),
        (b"foreign", window_trigger(window, key="foreign", spec_hash="fs-0123456789abcdef").to_json()),
        (b"drift-abc", good.to_json()),
        (b"drift-abc", window_trigger(window, key="drift-abc").to_json()),  # the monitor said it twice
    ]
    # The live stream after the history, scored once the new champion is in place.
    live = [dict(e, event_id=f"live-{i}", ts=e["ts"] + (end - events[0]["ts"]) + 3_600_000)
            for i, e in enumerate(events[:1_500])]

    with running_engine(cfg, kafka_bootstrap) as engine:
        _produce(kafka_bootstrap, t["clicks"], events)
        wait_for_stats(engine, lambda s: s.consumed == len(events), timeout=180)
        assert engine.metrics.health()[1]["models"]["champion"]["version"] == 1
        _send(kafka_bootstrap, t["triggers"], triggers)
        worker = RetrainWorker(cfg, kafka_bootstrap)
        stats = worker.run(max_triggers=len(triggers), max_seconds=600)
        assert sum(stats.decisions.values()) == len(triggers), stats.as_dict()
        _produce(kafka_bootstrap, t["clicks"], live)
        wait_for_stats(engine, lambda s: s.consumed == len(events) + len(live), timeout=120)
        assert engine.metrics.health()[1]["models"]["champion"]["version"] == 2

    outcomes = _outcomes(kafka_bootstrap, t["outcomes"])
    assert [o["decision"] for o in outcomes] == ["failed", "failed", "failed", "promoted", "duplicate"], outcomes
    assert "bad trigger record" in outcomes[0]["reason"]
    assert "too small" in outcomes[1]["reason"] and outcomes[1]["idempotency_key"] == "small"
    assert "feature spec fs-0123456789abcdef" in outcomes[2]["reason"]
    promoted = outcomes[3]
    assert promoted["trigger_id"] == good.trigger_id and promoted["version"] == 2
    assert promoted["champion_before"] == 1 and promoted["champion_after"] == 2
    assert promoted["metrics"]["candidate"]["auc"] > promoted["metrics"]["champion"]["auc"]
    assert promoted["source"]["kind"] == "topic" and promoted["source"]["topic"] == t["clicks"]
    assert outcomes[4]["version"] == 2
    assert committed_total(kafka_bootstrap, cfg.retrain.consumer_group(cfg.group_id), t["triggers"], 1) == 5

    lineage = champion.resolve("purchase", 2).manifest.lineage
    assert (lineage["trigger_id"], lineage["idempotency_key"], lineage["parent_version"]) == (good.trigger_id,
                                                                                           "drift-abc", 1)
    assert lineage["data_window"] == {"start_ms": window[0], "end_ms": window[1]}
    assert champion.versions("purchase") == [1, 2], "failed triggers registered nothing, the duplicate trained nothing"

    live_ids = {e["event_id"] for e in live}
    versions: dict[str, set[int]] = {"live": set(), "history": set()}
    for m in read_all(kafka_bootstrap, t["scores"], PARTITIONS):
        r = orjson.loads(m.value())
        versions["live" if r["event_id"] in live_ids else "history"].add(r["model"]["version"])
    assert versions == {"live": {2}, "history": {1}}, versions


def test_a_worker_that_dies_mid_run_leaves_the_trigger_to_the_next(
    kafka_bootstrap: str, loop_topics: dict[str, str], champion: Registry, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = loop_topics
    events = drifted_events()
    cfg = _worker_config(tmp_path, champion.root, t["clicks"], t["scores"], t["dlq"], t["triggers"], t["outcomes"],
                         kafka_bootstrap)
    _produce(kafka_bootstrap, t["clicks"], events)
    trigger = window_trigger(post_drift_window(events), key="drift-crash")
    _send(kafka_bootstrap, t["triggers"], [(b"drift-crash", trigger.to_json())])
    real = retraining._decide

    def die(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt("the worker process dies after registering, before deciding")

    monkeypatch.setattr(retraining, "_decide", die)
    with pytest.raises(KeyboardInterrupt):
        RetrainWorker(cfg, kafka_bootstrap).run(max_triggers=1, max_seconds=300)
    assert champion.versions("purchase") == [1, 2] and champion.resolve("purchase", "champion").version == 1
    group = cfg.retrain.consumer_group(cfg.group_id)
    assert committed_total(kafka_bootstrap, group, t["triggers"], 1) == 0, "nothing committed for an unfinished run"

    monkeypatch.setattr(retraining, "_decide", real)
    stats = RetrainWorker(cfg, kafka_bootstrap).run(max_triggers=1, max_seconds=300)
    assert dict(stats.decisions) == {"promoted": 1}
    (outcome,) = _outcomes(kafka_bootstrap, t["outcomes"])
    assert outcome["version"] == 2 and outcome["trigger_id"] == trigger.trigger_id
    assert champion.versions("purchase") == [1, 2], "the repeat decided v2 instead of training again"
    assert champion.resolve("purchase", "champion").version == 2
    assert committed_total(kafka_bootstrap, group, t["triggers"], 1) == 1


def test_the_cli_worker_and_one_shot_report_setup_errors_in_one_line(
    kafka_bootstrap: str, loop_topics: dict[str, str], champion: Registry, tmp_path: Path
) -> None:
    t = loop_topics
    config = tmp_path / "engine.yaml"
    base = {"bootstrap_servers": kafka_bootstrap, "group_id": f"g-{t['clicks']}", "input_topic": t["clicks"],
            "scores_topic": t["scores"], "dlq_topic": t["dlq"], "registry": str(champion.root),
            "retrain": {"trigger_topic": t["triggers"], "outcome_topic": t["outcomes"]}}
    config.write_text(yaml.safe_dump(base))
    result = CliRunner().invoke(app, ["retrain", "worker", "--config", str(config), "--idle-exit", "1"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout.strip().splitlines()[-1])["triggers"] == 0

    for key, value, words in [("input_topic", "no-such-clicks", "['no-such-clicks'] do not exist"),
                              ("retrain", {"trigger_topic": "no-such-triggers", "outcome_topic": t["outcomes"]},
                               "['no-such-triggers'] do not exist")]:
        config.write_text(yaml.safe_dump({**base, key: value}))
        result = CliRunner().invoke(app, ["retrain", "worker", "--config", str(config), "--idle-exit", "1"])
        assert result.exit_code == 2 and words in result.output, result.output
    config.write_text(yaml.safe_dump({**base, "input_topic": "no-such-clicks"}))
    result = CliRunner().invoke(app, ["retrain", "once", "--window-days", "3", "--config", str(config)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "'no-such-clicks' does not exist" in errors[0], result.output
    assert champion.versions("purchase") == [1]


def test_topics_create_gives_the_input_topic_its_history_retention(kafka_bootstrap: str, tmp_path: Path) -> None:
    from engine.topics import delete_topics, topic_config

    stamp = uuid.uuid4().hex[:12]
    names = {"input_topic": f"hist-clicks-{stamp}", "scores_topic": f"hist-scores-{stamp}",
             "dlq_topic": f"hist-dlq-{stamp}"}
    retrain = {"trigger_topic": f"hist-triggers-{stamp}", "outcome_topic": f"hist-outcomes-{stamp}",
               "history_retention": "45d"}
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"bootstrap_servers": kafka_bootstrap, **names, "retrain": retrain}))
    try:
        result = CliRunner().invoke(app, ["topics", "create", "--config", str(config), "--partitions", "2"])
        assert result.exit_code == 0, result.output
        assert topic_config(kafka_bootstrap, names["input_topic"])["retention.ms"] == str(45 * 86_400_000)
        for topic in (retrain["trigger_topic"], retrain["outcome_topic"]):
            assert "retention.ms" in topic_config(kafka_bootstrap, topic)
        config.write_text(yaml.safe_dump({"bootstrap_servers": kafka_bootstrap, **names,
                                          "retrain": {**retrain, "history_retention": -1}}))
        again = CliRunner().invoke(app, ["topics", "create", "--config", str(config), "--partitions", "2"])
        assert again.exit_code == 0 and "less than retrain.history_retention" in again.output, again.output
    finally:
        delete_topics(kafka_bootstrap, [*names.values(), retrain["trigger_topic"], retrain["outcome_topic"]])


def test_records_outside_their_entitys_partition_are_counted(kafka_bootstrap: str, make_topic) -> None:
    from features.partitioning import kafka_partition

    topic = make_topic("clicks", 2)
    events = drifted_events(seed=9)[:400]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for e in events:  # an upstream that ignores the key when choosing the partition
        producer.produce(topic, orjson.dumps(e), e["user_id"].encode(), partition=0)
    assert producer.flush(30) == 0
    history = read_topic_history(kafka_bootstrap, topic, EventSchema(), None, progress=lambda _l: None)
    expected = sum(kafka_partition(e["user_id"], 2) == 1 for e in events)
    assert 0 < expected < len(events)
    assert history.source["misrouted"] == expected and len(history.events) == len(events)


def test_a_history_emptied_by_retention_says_so(kafka_bootstrap: str, make_topic) -> None:
    """Records written and then deleted (what a retention shorter than the event times' age does at the
    broker's next check) leave earliest == end offset: the history names the cause instead of
    reporting an unexplained empty window."""
    from confluent_kafka.admin import AdminClient

    topic = make_topic("clicks", 2)
    _produce(kafka_bootstrap, topic, drifted_events(seed=9)[:200])
    kept = read_topic_history(kafka_bootstrap, topic, EventSchema(), None, progress=lambda _l: None)
    assert len(kept.events) == 200 and "note" not in kept.source

    ends = {p: int(end) for p, (_start, end) in kept.source["offsets"].items()}
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    done = admin.delete_records([TopicPartition(topic, int(p), end) for p, end in ends.items()])
    for future in done.values():
        future.result(timeout=30)
    emptied = read_topic_history(kafka_bootstrap, topic, EventSchema(), None, progress=lambda _l: None)
    assert emptied.events == [] and emptied.source["records"] == 0
    assert "retention deleted them" in emptied.source["note"], emptied.source
    assert emptied.source["emptied_partitions"] == sorted(int(p) for p, end in ends.items() if end > 0)
