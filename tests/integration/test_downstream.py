"""Downstream readers against the real broker: what the engine writes validates against the
published JSON Schemas, the typed reader reads it, and both runnable examples (a plain
confluent-kafka consumer and a Faust app) react to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from engine.reader import DeadLetter, ScoreRecord, read_scores, score_consumer
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import (
    PARTITIONS,
    TrainedModel,
    engine_config,
    produce_all,
    read_all,
    running_engine,
    wait_for_stats,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "docs" / "schemas"
N_EVENTS = 1_500
BAD = [b'{"user_id": "u-bad", "event_type": ', b"[1]", b'{"user_id": "u-bad"}']


@pytest.fixture(scope="module")
def scored_topics(kafka_bootstrap: str, trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory):
    """An engine run that wrote N_EVENTS answering scores and len(BAD) dead letters; the topics
    live for the module (deleted at its end)."""
    from engine.topics import TopicSpec, delete_topics, ensure_topics

    tmp = tmp_path_factory.mktemp("downstream")
    stamp = f"{time.time_ns():x}"
    clicks, scores, dlq = f"ds-clicks-{stamp}", f"ds-scores-{stamp}", f"ds-dlq-{stamp}"
    ensure_topics(kafka_bootstrap, [TopicSpec(clicks, PARTITIONS), TopicSpec(scores, PARTITIONS), TopicSpec(dlq, 1)])
    try:
        gen = GeneratorConfig(n_events=N_EVENTS, n_users=80, seed=41, start=datetime(2026, 2, 1, tzinfo=timezone.utc))
        events = list(ClickstreamGenerator(gen).events())
        produce_all(kafka_bootstrap, clicks, [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
                    + [(b"u-bad", raw) for raw in BAD])
        cfg = engine_config(tmp, trained_model, clicks, scores, dlq, shadow=False)
        with running_engine(cfg, kafka_bootstrap) as engine:
            wait_for_stats(engine, lambda s: s.consumed >= N_EVENTS + len(BAD))
        assert engine.stats.scored == N_EVENTS and engine.stats.dlq_total == len(BAD)
        yield {"scores": scores, "dlq": dlq, "tmp": tmp}
    finally:
        delete_topics(kafka_bootstrap, [clicks, scores, dlq])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scores(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_all(bootstrap, topic, PARTITIONS)]


def test_records_validate_against_the_published_schemas(kafka_bootstrap: str, scored_topics) -> None:
    score_schema = json.loads((SCHEMAS / "score.v1.json").read_text())
    dlq_schema = json.loads((SCHEMAS / "dead-letter.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(score_schema)
    jsonschema.Draft202012Validator.check_schema(dlq_schema)
    records = _scores(kafka_bootstrap, scored_topics["scores"])
    assert len(records) == N_EVENTS
    for rec in records:
        jsonschema.validate(rec, score_schema, cls=jsonschema.Draft202012Validator)
    with pytest.raises(jsonschema.ValidationError):  # the schema can fail: a record without its version
        jsonschema.validate({k: v for k, v in records[0].items() if k != "schema_version"}, score_schema)
    letters = read_all(kafka_bootstrap, scored_topics["dlq"], 1)
    assert sorted(m.value() for m in letters) == sorted(BAD)
    for m in letters:
        headers = {k: v.decode() for k, v in m.headers()}
        jsonschema.validate(headers, dlq_schema, cls=jsonschema.Draft202012Validator)
        letter = DeadLetter.from_message(m)
        assert letter.value == m.value() and letter.source_topic.startswith("ds-clicks-")


def test_typed_reader_reads_every_score_once(kafka_bootstrap: str, scored_topics) -> None:
    raw = {r["event_id"]: r for r in _scores(kafka_bootstrap, scored_topics["scores"])}
    consumer = score_consumer(kafka_bootstrap, f"typed-{time.time_ns()}", scored_topics["scores"])
    try:
        got = list(read_scores(consumer, max_records=N_EVENTS, idle_timeout_s=30))
    finally:
        consumer.close()
    assert len(got) == N_EVENTS and {r.event_id for r in got} == set(raw)
    for r in got:
        assert isinstance(r, ScoreRecord) and r.answer and r.score == raw[r.event_id]["score"]
        assert (r.model_name, r.model_version) == (raw[r.event_id]["model"]["name"], raw[r.event_id]["model"]["version"])


def test_plain_consumer_example_prints_the_high_scores(kafka_bootstrap: str, scored_topics) -> None:
    records = _scores(kafka_bootstrap, scored_topics["scores"])
    threshold = sorted(r["score"] for r in records)[len(records) // 2]
    expected = {r["event_id"] for r in records if r["score"] >= threshold}
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "downstream" / "plain_consumer.py"), "--bootstrap", kafka_bootstrap,
         "--topic", scored_topics["scores"], "--group", f"printer-{time.time_ns()}", "--threshold", str(threshold),
         "--max-records", str(N_EVENTS), "--idle-exit", "30"],
        capture_output=True, timeout=120, cwd=scored_topics["tmp"], check=False)
    assert out.returncode == 0, out.stderr.decode()
    printed = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert {p["event_id"] for p in printed} == expected and len(printed) == len(expected)
    assert f"read {N_EVENTS} score records, {len(expected)} at or above" in out.stderr.decode()


def test_faust_app_alerts_on_scores_above_the_threshold(kafka_bootstrap: str, scored_topics, make_topic) -> None:
    records = _scores(kafka_bootstrap, scored_topics["scores"])
    threshold = sorted(r["score"] for r in records)[(3 * len(records)) // 4]
    expected = {r["event_id"] for r in records if r["score"] >= threshold}
    alerts = make_topic("alerts", 1)
    tmp = scored_topics["tmp"]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "SCORES_TOPIC": scored_topics["scores"],
           "ALERTS_TOPIC": alerts, "ALERT_THRESHOLD": repr(threshold), "FAUST_APP_ID": f"alerts-{alerts}",
           "FAUST_DATADIR": str(tmp / f"faust-{alerts}"), "FAUST_WEB_PORT": str(_free_port())}
    log_path = tmp / f"faust-{alerts}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "downstream" / "faust_alerts.py"),
                                 "worker", "-l", "info"], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"alert-reader-{alerts}",
                       "isolation.level": "read_committed", "enable.auto.commit": False})
    reader.assign([TopicPartition(alerts, 0, 0)])
    got: list[dict] = []
    try:
        deadline = time.monotonic() + 180
        while len(got) < len(expected):
            assert proc.poll() is None, f"faust worker exited\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, (f"{len(got)} of {len(expected)} alerts within 180 s\n"
                                                 f"{log_path.read_text()[-4000:]}")
            got.extend(orjson.loads(m.value()) for m in reader.consume(500, timeout=0.5) if m.error() is None)
        # nothing more arrives: the worker has committed its input, no duplicates follow
        extra_deadline = time.monotonic() + 3
        while time.monotonic() < extra_deadline:
            got.extend(orjson.loads(m.value()) for m in reader.consume(500, timeout=0.5) if m.error() is None)
    finally:
        reader.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    ids = [a["event_id"] for a in got]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert all(a["score"] >= threshold and a["threshold"] == threshold for a in got)
