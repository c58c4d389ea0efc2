"""`streamscore demo`: the whole loop on one machine, bounded in time, with a readable summary.

Steps: start (or reuse) the broker -> generate a clickstream history -> build point-in-time
features offline and train/export/register a model -> create fresh topics -> run the engine on a
live stream (with some malformed and late events) -> read the scores and dead letters back ->
print what happened -> stop everything this command started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from confluent_kafka import Consumer, KafkaError, TopicPartition

from engine.broker import LocalBroker, free_port
from engine.config import EngineConfig, streamscore_home
from engine.loadgen import produce, write_jsonl
from engine.records import headers_dict
from engine.topics import TopicSpec, ensure_topics
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from models.pipeline import train_from_log

PARTITIONS = 4
HISTORY_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _step(n: int, text: str) -> float:
    print(f"\n[{n}/6] {text}", flush=True)
    return time.perf_counter()


def _done(t0: float, text: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.1f} s {text}", flush=True)


def run_demo(history_events: int = 60_000, live_seconds: float = 20.0, rate: int = 2_000,
             keep_broker: bool = False, users: int = 2_000) -> int:
    """Run the demo; returns a process exit code (0 when every live event is accounted for)."""
    wall0 = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = streamscore_home() / "demo" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    broker: LocalBroker | None = None

    try:
        t = _step(1, "Kafka broker")
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            print(f"      using KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        else:
            broker = LocalBroker()
            was_running = broker.status().get("running", False)
            bootstrap = broker.start()
            if was_running:
                broker = None  # not ours to stop
        _done(t, f"({bootstrap})")

        t = _step(2, f"Generating {history_events:,} historical click events")
        history = run_dir / "history.jsonl"
        gen_cfg = GeneratorConfig(n_events=history_events, n_users=users, seed=7, start=HISTORY_START,
                                  jitter_ms=2_000.0)
        write_jsonl(history, ClickstreamGenerator(gen_cfg).events())
        _done(t, f"-> {history}")

        t = _step(3, "Offline features -> train LightGBM + baseline -> ONNX -> registry")
        cfg = EngineConfig(
            bootstrap_servers=bootstrap, group_id=f"demo-{stamp}", input_topic=f"demo-{stamp}-clicks",
            scores_topic=f"demo-{stamp}-scores", dlq_topic=f"demo-{stamp}-clicks.dlq",
            state_dir=run_dir / "state", registry=run_dir / "registry",
        )
        result = train_from_log(history, cfg.features, num_partitions=PARTITIONS, registry_root=cfg.registry,
                                model_name=cfg.model_name, horizon_ms=3_600_000, schema=cfg.schema, promote=True)
        print(result.summary())
        _done(t)

        t = _step(4, "Topics")
        ensure_topics(bootstrap, [
            TopicSpec(cfg.input_topic, PARTITIONS),
            TopicSpec(cfg.scores_topic, PARTITIONS),
            TopicSpec(cfg.dlq_topic, 1, config={"max.message.bytes": "2097152"}),
        ])
        _done(t, f"({cfg.input_topic}, {cfg.scores_topic}, {cfg.dlq_topic})")

        t = _step(5, f"Live: {rate:,} events/s for {live_seconds:.0f} s through the engine "
                     "(0.5 % malformed, some late)")
        engine_yaml = run_dir / "engine.yaml"
        metrics_port = free_port()
        engine_yaml.write_text(yaml.safe_dump({
            "bootstrap_servers": bootstrap, "group_id": cfg.group_id, "input_topic": cfg.input_topic,
            "scores_topic": cfg.scores_topic, "dlq_topic": cfg.dlq_topic,
            "state_dir": str(cfg.state_dir), "registry": str(cfg.registry), "metrics_port": metrics_port,
        }))
        engine = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", "--config", str(engine_yaml), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            if not _await_ready(metrics_port, engine):
                print("      the engine did not become ready (no partitions assigned within 60 s)")
                return 1
            live_start = HISTORY_START + timedelta(days=30)
            live_cfg = replace(gen_cfg, n_events=None, seed=8, start=live_start, bad_fraction=0.005,
                               late_fraction=0.002, late_ms=300_000.0)
            sent = produce(bootstrap, cfg.input_topic, ClickstreamGenerator(live_cfg).payloads(), rate=rate,
                           max_seconds=live_seconds, progress_every=5.0)
            caught_up = _await_committed(bootstrap, cfg.group_id, cfg.input_topic, sent.sent, engine)
        finally:
            engine.send_signal(signal.SIGTERM)
            out, _ = engine.communicate(timeout=60)
        stats = orjson.loads(out.strip().splitlines()[-1]) if engine.returncode == 0 and out.strip() else {}
        if not caught_up or engine.returncode != 0:
            print(f"      engine exited with {engine.returncode}; caught up: {caught_up}")
            return 1
        _done(t)

        _step(6, "Reading back the scores and dead letters")
        scores, dlq = _read_back(bootstrap, cfg)
        ok = _summary(sent.sent, stats, scores, dlq, time.perf_counter() - wall0)
        return 0 if ok else 1
    finally:
        if broker is not None and not keep_broker:
            broker.stop()
            print("broker stopped")


def _read_back(bootstrap: str, cfg: EngineConfig) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Every committed score record and the DLQ reasons, read to the end of each partition
    (counting records: the topics also hold transaction markers)."""
    scores: list[dict[str, Any]] = []
    dlq: Counter[str] = Counter()
    for topic, parts in ((cfg.scores_topic, PARTITIONS), (cfg.dlq_topic, 1)):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{cfg.group_id}-reader",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "enable.partition.eof": True})
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in range(parts)])
            at_end: set[int] = set()
            deadline = time.monotonic() + 60
            while len(at_end) < parts and time.monotonic() < deadline:
                for m in consumer.consume(1000, timeout=0.2):
                    if m.error() is not None:
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            at_end.add(m.partition())
                        continue
                    at_end.discard(m.partition())
                    if topic == cfg.scores_topic:
                        scores.append(orjson.loads(m.value()))
                    else:
                        dlq[headers_dict(m.headers()).get("reason", "?")] += 1
        finally:
            consumer.close()
    return scores, dlq


def _await_ready(port: int, engine: subprocess.Popen[str], timeout_s: float = 60.0) -> bool:
    """Wait until the engine's /healthz reports assigned partitions (it has joined the group)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and engine.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if orjson.loads(resp.read()).get("assigned_partitions", 0) > 0:
                    return True
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)  # polling another process's readiness
    return False


def _await_committed(bootstrap: str, group: str, topic: str, total: int, engine: subprocess.Popen[str],
                     timeout_s: float = 120.0) -> bool:
    """Wait until the engine's group has committed offsets for all `total` input messages."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and engine.poll() is None:
            tps = probe.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
            if sum(max(tp.offset, 0) for tp in tps) >= total:
                return True
            time.sleep(0.25)  # polling another process's progress
        return False
    finally:
        probe.close()


def _summary(sent: int, stats: dict[str, Any], scores: list[dict[str, Any]], dlq: Counter[str],
             wall_s: float) -> bool:
    values = np.array([s["score"] for s in scores]) if scores else np.zeros(0)
    accounted = len(scores) + sum(dlq.values())
    print("\n================ streamscore demo summary ================")
    print(f"events produced to the clicks topic : {sent:,}")
    print(f"events consumed by the engine       : {stats['consumed']:,}")
    print(f"scores on the scores topic          : {len(scores):,}")
    print(f"dead-lettered                       : {sum(dlq.values()):,}  {dict(dlq)}")
    print(f"accounted for (scores + DLQ)        : {accounted:,} of {sent:,}")
    print(f"engine                              : {stats['batches']:,} micro-batches in {stats['seconds']:.0f} s, "
          f"paced by the live stream ({stats['events_per_second']:,.0f} events/s over its lifetime)")
    lat = stats["latency_ms"]
    print(f"end-to-end latency, produce->commit : p50 {lat['p50']:.0f} ms  p90 {lat['p90']:.0f} ms  "
          f"p99 {lat['p99']:.0f} ms")
    if scores:
        q = np.percentile(values, [50, 90, 99])
        model = scores[0]["model"]
        print(f"model                               : {model['name']} v{model['version']} "
              f"(feature spec {scores[0]['feature_spec']})")
        print(f"score distribution                  : mean {values.mean():.3f}  p50 {q[0]:.3f}  "
              f"p90 {q[1]:.3f}  p99 {q[2]:.3f}")
        top = sorted(scores, key=lambda s: -s["score"])[:3]
        print("highest-scored events               : " + ", ".join(
            f"{s['entity']} {s['score']:.2f}" for s in top))
        print(f"sample record                       : {orjson.dumps(scores[0]).decode()}")
    print(f"demo wall time                      : {wall_s:.1f} s")
    ok = accounted == sent
    print("RESULT: " + ("every event was scored or dead-lettered" if ok else
                        f"MISMATCH: {sent - accounted} events unaccounted for"))
    return ok
