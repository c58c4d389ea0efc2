"""Detection delay and false alarms of the engine's monitors on generated streams with known change points.

    python -m benchmarks.bench_drift [--users 2000] [--history 200000] [--live 150000] [--change-at 50000]
                                     [--stable 1000000] [--json benchmarks/results/drift.json]
    python -m benchmarks.bench_drift --cost [--engine-events 100000]   # monitor cost in a real engine

No Kafka: the monitor objects of the engine (`engine.monitors.DriftMonitor`, with its default
`MonitorConfig` unless overridden) are driven directly with what the engine would give them, per
micro-batch of `--batch` events on one partition: feature rows from `features.executor.process_batch`
(the function the engine and the offline replay run) and scores of a LightGBM model trained on
the stream's own history and exported to ONNX (`models.pipeline.train_from_log`, served with
`OnnxScorer`, so the reference profile and holdout metrics are the manifest's).

Streams (features/synthetic.py, one seed): the first `--history` events train the model; every
scenario continues the same process (the generator's drifted streams are byte-identical before
their change point) from warm feature state, for `--live` events with the change at
`--change-at` (abrupt) or ramped in five steps over the next `--ramp` events (gradual):

    mix_shift        device/referrer mix (features; gradual: strength 0.2 .. 1.0)
    price_shift      prices x1.5 (features; gradual: five x1.085 steps)
    score            the served scores x1.5 from the change on (a mis-calibrated deploy; score only)
    conversion_collapse  checkout->purchase on mobile x0.02 (labels; gradual: five x0.46 steps)
    stable           `--stable` events, no change (false alarms)

Reported per scenario: the first trigger after the change (reason, delay in events after the
change point and in event-time minutes), the first warning, triggers before the change point
(false alarms), and for the stable stream triggers and warnings per million events. Also the
monitors' cost: µs per event inside `DriftMonitor.observe` vs the feature + score stage measured
in the same run, and the ADWIN feeding choice (per event vs chunk means).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from features.synthetic import ClickstreamGenerator, Drift, GeneratorConfig
from engine.loadgen import write_jsonl
from engine.config import MonitorConfig
from engine.labels import LABEL_PREFIX
from engine.monitors import DriftMonitor, PartitionMonitor
from features.clickstream import clickstream_spec
from features.compute import FeatureComputer
from features.executor import PartitionClock, process_batch
from features.schema import EventSchema
from models.pipeline import train_from_log
from models.registry import Registry
from models.scorer import OnnxScorer

HORIZON_MS = 3_600_000


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # abrupt | gradual | stable
    expect: tuple[str, ...]  # trigger reasons that count as a detection
    drifts: tuple[Drift, ...] = ()
    score_factor: float = 1.0  # applied to served scores from the change point (score scenarios)


def scenarios(change: int, ramp: int, live: int, history: int) -> list[Scenario]:
    at = history + change
    steps = [at + i * ramp // 5 for i in range(5)]
    feat = ("feature_drift", "prediction_drift")
    return [
        Scenario("mix_shift", "abrupt", feat, (Drift("mix_shift", at),)),
        Scenario("mix_shift", "gradual", feat,
                 tuple(Drift("mix_shift", s, {"strength": 0.2 * (i + 1)}) for i, s in enumerate(steps))),
        Scenario("price_shift", "abrupt", feat, (Drift("price_shift", at, {"factor": 1.5}),)),
        Scenario("price_shift", "gradual", feat, tuple(Drift("price_shift", s, {"factor": 1.085}) for s in steps)),
        Scenario("score", "abrupt", ("prediction_drift",), score_factor=1.5),
        Scenario("conversion_collapse", "abrupt", ("performance",), (Drift("conversion_collapse", at),)),
        Scenario("conversion_collapse", "gradual", ("performance",),
                 tuple(Drift("conversion_collapse", s, {"factor": 0.46}) for s in steps)),
    ]


@dataclass
class Run:
    """What one scenario's stream did to the monitor."""

    events: int = 0
    triggers: list[dict[str, Any]] = field(default_factory=list)  # {reason, at, ts}
    warnings: list[dict[str, Any]] = field(default_factory=list)
    stage_s: float = 0.0  # features + scoring
    monitor_s: float = 0.0  # inside DriftMonitor.observe, calibration included
    calibration_s: float = 0.0  # of which one-off null calibrations (cached per n bucket for the process)
    change_ts: int | None = None
    windows: int = 0
    labels: int = 0
    max_psi: dict[str, float] = field(default_factory=dict)  # per column, over the evaluated windows


class DictLabels:
    """The label records of one partition in a dict, with the sweep's ordered scan."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self._order: list[str] = []
        self._pos = 0

    def scan(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        if after is None or self._pos >= len(self._order):
            self._order, self._pos = sorted(self.store), 0
        out = []
        while self._pos < len(self._order) and len(out) < limit:
            key = self._order[self._pos]
            self._pos += 1
            if key in self.store:
                out.append((key, self.store[key]))
        return out

    def apply(self, states: dict[str, bytes | None]) -> None:
        for k, v in states.items():
            if k.startswith(LABEL_PREFIX):
                if v is None:
                    self.store.pop(k, None)
                else:
                    self.store[k] = v


def _canonical(gen: GeneratorConfig, schema: EventSchema) -> Iterator[dict[str, Any]]:
    for e in ClickstreamGenerator(gen).events():
        yield schema.from_mapping(e)


def _batches(it: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for e in it:
        batch.append(e)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def feature_batch(computer: FeatureComputer, clock: PartitionClock, events: list[dict[str, Any]],
                  state: dict[str, bytes]) -> Any:
    """`process_batch` on a dict store (one partition), the store updated in place."""
    stored: dict[str, bytes | None] = {e["user_id"]: state.get(e["user_id"]) for e in events}
    result = process_batch(computer, clock, events, stored)
    for k, v in result.states.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    return result


def run_stream(gen: GeneratorConfig, skip: int, change_at: int | None, scenario: Scenario, state: dict[str, bytes],
               clock: PartitionClock, computer: FeatureComputer, scorer: OnnxScorer, monitor: DriftMonitor,
               batch: int) -> Run:
    """Events `skip`.. of `gen` from the warm `state`, through features, scores and the monitor."""
    schema = EventSchema(max_bytes=65_536)
    run = Run()
    pm = PartitionMonitor()
    labels = DictLabels()
    stream = _canonical(gen, schema)
    for _ in range(skip):
        next(stream)
    calibration = monitor.reference.calibration if monitor.reference is not None else None
    calibrated_before = calibration.seconds if calibration is not None else 0.0
    index = 0  # live events seen
    for events in _batches(stream, batch):
        t0 = time.perf_counter()
        result = feature_batch(computer, clock, events, state)
        scored = [events[i] for i in result.scored]
        scores = scorer.predict(result.rows).astype(np.float64)
        t1 = time.perf_counter()
        if change_at is not None and scenario.score_factor != 1.0:
            pos = index + np.asarray(result.scored)
            scores = np.where(pos >= change_at, np.clip(scores * scenario.score_factor, 0, 1), scores)
        if change_at is not None and run.change_ts is None and index + len(events) > change_at:
            run.change_ts = int(events[max(0, change_at - index)]["ts"])
        t2 = time.perf_counter()
        keys = monitor.label_keys([e["user_id"] for e in scored])
        label_stored = {k: labels.store.get(k) for k in keys}
        out = monitor.observe(pm, 0, scored, result.rows, scores, label_stored, clock.watermark,
                              scan_labels=labels.scan)
        labels.apply(out.states)
        run.monitor_s += time.perf_counter() - t2
        run.stage_s += t1 - t0
        index += len(events)
        last_ts = int(events[-1]["ts"])
        for t in out.triggers:
            run.triggers.append({"reason": t.reason, "at": index, "ts": last_ts, "detector": t.detector["name"],
                                 "statistic": t.statistic, "threshold": t.threshold,
                                 "top": t.evidence[0]["name"] if t.evidence else None})
        for column, st in (out.evaluation.drift or {}).items():
            run.max_psi[column] = max(run.max_psi.get(column, 0.0), st["psi"])
        for outcome, reason in out.evaluation.outcomes:
            if outcome == "warning":
                run.warnings.append({"reason": reason, "at": index, "ts": last_ts})
    run.events = index
    if calibration is not None:  # calibrations inside observe (windows of new sizes)
        run.calibration_s = calibration.seconds - calibrated_before
    run.windows = pm.windows
    run.labels = pm.labels_resolved
    return run


def adwin_feeding_cost(n: int = 200_000, chunk: int = 32) -> dict[str, float]:
    """µs per score of feeding river's ADWIN per event vs per chunk mean (as the monitor does)."""
    from river.drift import ADWIN

    scores = np.random.default_rng(0).beta(1, 9, n)
    a = ADWIN()
    t = time.perf_counter()
    for s in scores.tolist():
        a.update(s)
    per_event = (time.perf_counter() - t) / n * 1e6
    b = ADWIN(clock=1)
    t = time.perf_counter()
    for m in scores[: n // chunk * chunk].reshape(-1, chunk).mean(axis=1).tolist():
        b.update(m)
    per_chunk = (time.perf_counter() - t) / n * 1e6
    return {"per_event_us": round(per_event, 3), "chunk_means_us": round(per_chunk, 3), "chunk": chunk}


def engine_share(bootstrap: str, registry: Path, payloads: list[tuple[bytes, bytes]], root: Path,
                 modes: tuple[bool, ...] = (True, False)) -> dict[str, Any]:
    """The monitors' share of a real engine's time: one exactly-once engine process (in this
    process) consumes `payloads` from a fresh 4-partition topic on `bootstrap`, once per mode
    (monitors on, off). Per mode: wall and CPU time per event (CPU = this process's CPU time,
    librdkafka's threads included), the loop's stage times per event (engine/stages.py), and
    with the monitors on ``streamscore_monitor_seconds`` (wall time inside `DriftMonitor.observe`)
    per event and as a share of the run's wall time and of the loop's staged time."""
    import uuid

    from engine.config import EngineConfig
    from engine.runner import ScoringEngine
    from engine.topics import TopicSpec, delete_topics, ensure_topics

    out: dict[str, Any] = {}
    tag = uuid.uuid4().hex[:8]
    names = {k: f"bench-drift-{k}-{tag}" for k in ("clicks", "scores", "dlq", "triggers")}
    ensure_topics(bootstrap, [TopicSpec(names["clicks"], 4), TopicSpec(names["scores"], 4), TopicSpec(names["dlq"], 1),
                              TopicSpec(names["triggers"], 1)])
    try:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"})
        for key, value in payloads:
            while True:
                try:
                    producer.produce(names["clicks"], value, key)
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.flush(60)
        for enabled in modes:
            cfg = EngineConfig(group_id=f"bench-drift-{tag}-{enabled}", input_topic=names["clicks"],
                               scores_topic=names["scores"], dlq_topic=names["dlq"], registry=registry,
                               model_name="purchase", state_dir=root / f"state-{enabled}", instance_id=f"{tag}{enabled}",
                               monitor=replace(MonitorConfig(), enabled=enabled, trigger_topic=names["triggers"]))
            engine = ScoringEngine(cfg, bootstrap)
            cpu0 = time.process_time()
            stats = engine.run(max_events=len(payloads), idle_exit_s=20.0)
            cpu = time.process_time() - cpu0
            n = stats.consumed or 1
            spent = engine.metrics.registry.get_sample_value("streamscore_monitor_seconds_total") or 0.0
            staged = sum(engine.stages.totals.values())
            out["on" if enabled else "off"] = {
                "events": stats.consumed, "seconds": round(stats.seconds, 2),
                "events_per_s": round(stats.consumed / stats.seconds, 1),
                "us_per_event": round(stats.seconds / n * 1e6, 2),
                "cpu_us_per_event": round(cpu / n * 1e6, 2),
                "stages_us_per_event": {k: round(v / n * 1e6, 2) for k, v in engine.stages.totals.items()},
                "staged_us_per_event": round(staged / n * 1e6, 2),
                "monitor_seconds": round(spent, 3),
                "monitor_us_per_event": round(spent / n * 1e6, 3),
                "monitor_share": round(spent / stats.seconds, 4) if stats.seconds else None,
                "monitor_share_of_staged": round(spent / staged, 4) if staged else None}
    finally:
        delete_topics(bootstrap, list(names.values()))
    if "on" in out and "off" in out:
        on, off = out["on"], out["off"]
        out["difference"] = {"us_per_event": round(on["us_per_event"] - off["us_per_event"], 2),
                             "cpu_us_per_event": round(on["cpu_us_per_event"] - off["cpu_us_per_event"], 2),
                             "cpu_share": round((on["cpu_us_per_event"] - off["cpu_us_per_event"])
                                                / on["cpu_us_per_event"], 4)}
    return out


def print_engine_share(engine: dict[str, Any]) -> None:
    on = engine["on"]
    print(f"engine, monitors on: {on['events']:,} events, {on['us_per_event']} µs/event wall, "
          f"{on['cpu_us_per_event']} µs/event CPU; monitor {on['monitor_us_per_event']} µs/event = "
          f"{100 * on['monitor_share']:.1f} % of wall, {100 * on['monitor_share_of_staged']:.1f} % of the loop's "
          f"staged time; stages µs/event {on['stages_us_per_event']}")
    if "off" in engine:
        off, d = engine["off"], engine["difference"]
        print(f"engine, monitors off: {off['us_per_event']} µs/event wall, {off['cpu_us_per_event']} µs/event CPU; "
              f"on - off: {d['us_per_event']} µs/event wall, {d['cpu_us_per_event']} µs/event CPU "
              f"({100 * d['cpu_share']:.1f} % of the CPU per event)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--history", type=int, default=200_000, help="events that train the model")
    ap.add_argument("--live", type=int, default=150_000, help="live events per drift scenario")
    ap.add_argument("--change-at", type=int, default=50_000, help="change point, live events")
    ap.add_argument("--ramp", type=int, default=40_000, help="events over which a gradual change ramps")
    ap.add_argument("--stable", type=int, default=1_000_000, help="events of the stable stream")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", default=None, help="comma-separated scenario names (and 'stable')")
    ap.add_argument("--engine-events", type=int, default=0,
                    help="also run a real engine on this many events, monitors on and off "
                         "(needs KAFKA_BOOTSTRAP_SERVERS)")
    ap.add_argument("--cost", action="store_true",
                    help="only the monitors' cost in a real engine (no detection scenarios): one exactly-once "
                         "engine on --engine-events events (default 100,000), monitors on, then off; needs "
                         "KAFKA_BOOTSTRAP_SERVERS; writes --json (default benchmarks/results/drift-cost.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a monitor config key (e.g. psi_floor=0.15); repeatable")
    ap.add_argument("--json", default=None, help="default benchmarks/results/drift.json (drift-cost.json with --cost)")
    args = ap.parse_args(argv)
    if args.json is None:
        args.json = "benchmarks/results/drift-cost.json" if args.cost else "benchmarks/results/drift.json"
    if args.cost and not args.engine_events:
        args.engine_events = 100_000

    spec = clickstream_spec()
    computer = FeatureComputer(spec)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = type(getattr(MonitorConfig(), key))(value)
    cfg = replace(MonitorConfig(), **overrides)
    base = GeneratorConfig(n_events=None, n_users=args.users, seed=args.seed, jitter_ms=1_000.0)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        hist = Path(tmp) / "history.jsonl"
        write_jsonl(hist, ClickstreamGenerator(replace(base, n_events=args.history)).events())
        result = train_from_log(hist, spec, num_partitions=1, registry_root=Path(tmp) / "registry",
                                model_name="purchase", horizon_ms=HORIZON_MS, log=None)
        ref = Registry(Path(tmp) / "registry").resolve("purchase", result.version)
        scorer = OnnxScorer.load(ref.path, spec.hash, spec.names)
        manifest = scorer.manifest
        print(f"trained purchase v{result.version} on {args.history:,} events "
              f"(holdout AUC {manifest.metrics['test']['auc']:.3f}, ECE {manifest.metrics['test']['ece']:.3f}) "
              f"in {time.perf_counter() - t_start:.0f} s")

        engine: dict[str, Any] | None = None
        if args.engine_events:
            bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            if not bootstrap:
                raise SystemExit("--engine-events needs KAFKA_BOOTSTRAP_SERVERS (e.g. `streamscore broker start`)")
            payloads = list(ClickstreamGenerator(replace(base, n_events=args.engine_events, seed=args.seed + 1)).payloads())
            engine = engine_share(bootstrap, Path(tmp) / "registry", payloads, Path(tmp))
            print_engine_share(engine)
            if args.cost:
                report = {"benchmark": "drift-cost", "config": {**vars(args), "monitor": cfg.__dict__},
                          "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                      "load": os.getloadavg()},
                          "engine": engine, "seconds": round(time.perf_counter() - t_start, 1)}
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
                print(f"wrote {args.json}")
                return report

        # Warm state at the end of the history, shared by every scenario.
        state: dict[str, bytes] = {}
        clock = PartitionClock(spec.grace_ms)
        schema = EventSchema(max_bytes=65_536)
        for events in _batches((schema.from_mapping(e) for e in
                                ClickstreamGenerator(replace(base, n_events=args.history)).events()), args.batch):
            feature_batch(computer, clock, events, state)

        only = set(args.only.split(",")) if args.only else None
        rows: list[dict[str, Any]] = []
        stage_s = monitor_s = calibration_s = 0.0
        events_total = 0
        todo = [s for s in scenarios(args.change_at, args.ramp, args.live, args.history)
                if only is None or s.name in only]
        if only is None or "stable" in only:
            todo.append(Scenario("stable", "stable", ()))
        for sc in todo:
            t0 = time.perf_counter()
            live = args.stable if sc.kind == "stable" else args.live
            gen = replace(base, n_events=args.history + live, drifts=sc.drifts)
            monitor = DriftMonitor(cfg, "bench")
            monitor.watch(manifest)
            change = None if sc.kind == "stable" else args.change_at
            run = run_stream(gen, args.history, change, sc, copy.copy(state), copy.deepcopy(clock), computer, scorer,
                             monitor, args.batch)
            stage_s += run.stage_s
            monitor_s += run.monitor_s
            calibration_s += run.calibration_s
            events_total += run.events
            rows.append(summarise(sc, run, change))
            r = rows[-1]
            print(f"  {sc.name:<20} {sc.kind:<8} {run.events:>9,} events in {time.perf_counter() - t0:5.0f} s: "
                  f"detected {r['detected_reason']} after {r['delay_events']} events; "
                  f"false alarms {r['false_alarms']}; largest PSI {r['max_psi']}", flush=True)

    steady = monitor_s - calibration_s
    cost = {"feature_score_us_per_event": round(stage_s / events_total * 1e6, 2),
            "monitor_us_per_event": round(steady / events_total * 1e6, 3),
            "monitor_share_of_feature_score_stage": round(steady / stage_s, 4),
            "calibration_seconds_one_off": round(calibration_s, 2),
            "monitor_us_per_event_with_calibration": round(monitor_s / events_total * 1e6, 3),
            "adwin": adwin_feeding_cost()}
    report = {"benchmark": "drift", "config": {**vars(args), "monitor": cfg.__dict__, "horizon_ms": HORIZON_MS},
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "scenarios": rows, "cost": cost, "engine": engine, "seconds": round(time.perf_counter() - t_start, 1)}
    print_table(rows, cost)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.json}")
    return report


def summarise(sc: Scenario, run: Run, change: int | None) -> dict[str, Any]:
    after = [t for t in run.triggers if change is not None and t["at"] > change]
    before = [t for t in run.triggers if change is None or t["at"] <= change]
    hit = next((t for t in after if t["reason"] in sc.expect), None)
    warn = next((w for w in run.warnings if change is not None and w["at"] > change and w["reason"] in sc.expect), None)
    per_million = 1e6 / run.events if run.events else 0.0
    return {
        "scenario": sc.name, "kind": sc.kind, "events": run.events, "expect": list(sc.expect),
        "detected_reason": hit["reason"] if hit else None,
        "delay_events": (hit["at"] - change) if hit and change is not None else None,
        "delay_minutes": round((hit["ts"] - run.change_ts) / 60_000, 1) if hit and run.change_ts else None,
        "first_warning_delay_events": (warn["at"] - change) if warn and change is not None else None,
        "decisive": hit["top"] if hit else None,
        "false_alarms": len(before),
        "false_alarms_per_million": round(len(before) * per_million, 2),
        "warnings_before_change_per_million": round(
            sum(1 for w in run.warnings if change is None or w["at"] <= change) * per_million, 2),
        "triggers": run.triggers, "windows": run.windows, "labels_resolved": run.labels,
        "max_psi": dict(sorted(run.max_psi.items(), key=lambda kv: -kv[1])[:5]),
    }


def print_table(rows: list[dict[str, Any]], cost: dict[str, Any]) -> None:
    print()
    print(f"{'scenario':<20} {'kind':<8} {'events':>9} {'detected by':<17} {'delay ev':>9} {'delay min':>9} "
          f"{'warn ev':>8} {'false/1M':>9} {'decisive':<22}")
    for r in rows:
        print(f"{r['scenario']:<20} {r['kind']:<8} {r['events']:>9,} {str(r['detected_reason'] or '-'):<17} "
              f"{str(r['delay_events'] if r['delay_events'] is not None else '-'):>9} "
              f"{str(r['delay_minutes'] if r['delay_minutes'] is not None else '-'):>9} "
              f"{str(r['first_warning_delay_events'] if r['first_warning_delay_events'] is not None else '-'):>8} "
              f"{r['false_alarms_per_million']:>9} {str(r['decisive'] or '-'):<22}")
    print(f"\nmonitor cost: {cost['monitor_us_per_event']} µs/event vs feature+score stage "
          f"{cost['feature_score_us_per_event']} µs/event ({100 * cost['monitor_share_of_feature_score_stage']:.1f} %), "
          f"plus one-off calibrations {cost['calibration_seconds_one_off']} s "
          f"({cost['monitor_us_per_event_with_calibration']} µs/event over this run); "
          f"ADWIN per event {cost['adwin']['per_event_us']} µs vs chunk means {cost['adwin']['chunk_means_us']} µs")


if __name__ == "__main__":
    main()
