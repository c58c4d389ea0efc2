"""State-store benchmark: the feature stage with RocksDB, the whole engine on Kafka, state size, restore.

    python -m benchmarks.bench_state --json benchmarks/results/state.json [--events N] [--quick]

Four measurements, all on one synthetic stream (`features.synthetic.ClickstreamGenerator`,
``--events`` events of ``--users`` users, event-time jitter 1 s, no late or bad events):

1. **Feature stage with state in RocksDB, no Kafka** (single thread = per core). The engine's
   per-partition loop minus model and Kafka, in micro-batches of ``--batch``: ``EventSchema.decode``
   of every payload -> one ``PartitionStore.multi_get`` -> ``process_batch`` -> one
   ``PartitionStore.write`` (one WriteBatch). Compared with the same loop on a dict store and with
   ``benchmarks.bench_features.run_stage`` (process_batch + dict, events pre-decoded), and with the
   DESIGN.md "Measured stage limits" (prototype ~60k events/s/core end to end; target: our feature
   stage within 1.5x of it). Interleaved repeats, each from an empty store; medians.
2. **The real engine with Kafka in and out**: a local broker (own home under /tmp, stopped at the
   end), a model trained with `models.pipeline.train_from_log`, the stream pre-produced to a
   4-partition topic, then `engine.runner.ScoringEngine` in this process consuming the backlog, for
   exactly_once / at_least_once x max_batch 500 / 2000 (each run: fresh group, changelog, state).
   Reported: events/s (steady = first batch start to last batch end; wall = `run()` including group
   join and close), per-batch time, where the batch time goes (instance-level timers around the
   engine's own methods; nothing in the engine is changed), CPU of this process and of the broker.
3. **State size on disk vs entities**: K entities (default 1k, 10k, 100k) written in WriteBatches
   of ``--batch`` with states drawn from the real end-of-stream states of (1); ``du`` of the store
   directory as written (WAL + memtable), after flush and after full compaction; bytes per entity;
   mean encoded state size; random multi-get / WriteBatch cost per entity at that size.
4. **Restore**: `engine.changelog.restore` of every partition of each run's changelog (from (2),
   first repeat) into a fresh store: records, seconds, records/s; the restored entity states are
   compared with the engine's own store.

``--quick`` (~1 min): 20k events, 3 stage repeats, 1 engine run per setting. The full run
(100k events, 5 stage repeats, 3 engine runs per setting) takes 2-5 min on 2 cores (2.2 min idle).
The machine is shared: load averages are recorded next to every section, and events per
CPU-second are reported beside events per wall-second.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.bench_features import machine_info, run_stage
from engine.config import EngineConfig, RocksDBConfig
from engine.store import APPLIED_KEY, CLOCK_KEY, PartitionStore, rocksdb_options
from features.clickstream import clickstream_spec
from features.compute import FeatureComputer
from features.executor import PartitionClock, process_batch
from features.schema import EventSchema
from features.synthetic import ClickstreamGenerator, GeneratorConfig

# DESIGN.md, "Measured stage limits on this class of machine (2 cores, Python 3.11)".
DESIGN_PROTOTYPE_EPS = 60_000.0  # parse -> 6 aggregates in one record -> 32 features -> LightGBM -> orjson
DESIGN_TARGET_FACTOR = 1.5       # our feature stage within 1.5x of the measured limit
DESIGN_US = {"orjson_loads_event": 0.45, "rocksdb_get": 1.5, "rocksdb_put": 1.5, "writebatch_put": 1.45}

PARTITIONS = 4
STREAM_START = datetime(2026, 2, 1, tzinfo=timezone.utc)
HISTORY_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
GUARANTEES = ("exactly_once", "at_least_once")

pc = time.perf_counter


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def rnd(x: float, nd: int = 1) -> float:
    return round(float(x), nd)


def du_bytes(path: Path) -> dict[str, int]:
    """`du` of a directory: allocated bytes (`du -sB1`), apparent bytes (`du -sb`), SST bytes."""
    def du(flag: str) -> int:
        out = subprocess.run(["du", flag, str(path)], capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])

    sst = sum(p.stat().st_size for p in path.glob("*.sst"))
    return {"du_allocated": du("-sB1"), "du_apparent": du("-sb"), "sst": sst}


def make_payloads(n: int, users: int, seed: int) -> list[tuple[bytes, bytes]]:
    cfg = GeneratorConfig(n_events=n, n_users=users, seed=seed, start=STREAM_START, jitter_ms=1_000.0)
    return list(ClickstreamGenerator(cfg).payloads())


def versions() -> dict[str, str]:
    import confluent_kafka
    import onnxruntime
    import rocksdict  # noqa: F401
    from importlib.metadata import version

    out = {"rocksdict": version("rocksdict"), "confluent_kafka": confluent_kafka.version()[0],
           "librdkafka": confluent_kafka.libversion()[0], "onnxruntime": onnxruntime.__version__}
    try:
        from engine.broker import KAFKA_VERSION
        out["kafka"] = KAFKA_VERSION
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20)
        out["java"] = (java.stderr or java.stdout).splitlines()[0] if (java.stderr or java.stdout) else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ---------------------------------------------------------------------------------------------
# 1. Feature stage with state in RocksDB (no Kafka)
# ---------------------------------------------------------------------------------------------

class DictStore:
    """In-memory stand-in with `PartitionStore`'s hot-path calls (multi_get, write)."""

    def __init__(self) -> None:
        self.d: dict[str, bytes] = {}
        self.meta: tuple[bytes, int] = (b"", 0)

    def multi_get(self, keys: Any) -> dict[str, bytes | None]:
        d = self.d
        return {k: d.get(k) for k in keys}

    def write(self, states: dict[str, bytes | None], clock: bytes, applied: int,
              changelog_offset: int | None = None) -> None:
        d = self.d
        for k, v in states.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        self.meta = (clock, applied)

    def close(self) -> None:
        pass


def run_feature_stage(store: Any, computer: FeatureComputer, schema: EventSchema,
                      values: Sequence[bytes], batch: int) -> dict[str, Any]:
    """The engine's per-partition loop without model and Kafka; phase times per micro-batch."""
    entity = computer.spec.entity
    clock = PartitionClock(computer.spec.grace_ms)
    decode = schema.decode
    t_dec = t_get = t_pb = t_put = 0.0
    keys_read = keys_written = late = 0
    cpu0 = time.process_time()
    t0 = pc()
    for s in range(0, len(values), batch):
        chunk = values[s:s + batch]
        a = pc()
        events = [decode(v) for v in chunk]
        b = pc()
        stored = store.multi_get({e[entity] for e in events})
        c = pc()
        res = process_batch(computer, clock, events, stored)
        d = pc()
        store.write(res.states, clock.encode(), s + len(chunk))
        e = pc()
        t_dec += b - a
        t_get += c - b
        t_pb += d - c
        t_put += e - d
        keys_read += len(stored)
        keys_written += len(res.states)
        late += len(res.late)
    seconds = pc() - t0
    cpu = time.process_time() - cpu0
    n = len(values)
    return {
        "seconds": seconds, "cpu_seconds": cpu, "events_per_s": n / seconds, "events_per_cpu_s": n / cpu,
        "us_per_event": 1e6 * seconds / n,
        "phases_s": {"decode": t_dec, "multi_get": t_get, "process_batch": t_pb, "write": t_put},
        "keys_read": keys_read, "keys_written": keys_written, "late": late,
    }


def bench_feature_stage(payloads: list[tuple[bytes, bytes]], batch: int, repeats: int, root: Path,
                        rocks_cfg: RocksDBConfig) -> tuple[dict[str, Any], list[bytes]]:
    spec = clickstream_spec()
    computer = FeatureComputer(spec)
    schema = EventSchema(max_bytes=65_536)  # EngineConfig's default schema
    values = [v for _, v in payloads]
    decoded = [schema.decode(v) for v in values]
    n = len(values)
    runs: dict[str, list[dict[str, Any]]] = {"rocksdb": [], "dict": [], "bench_features.run_stage": []}
    final_states: list[bytes] = []
    rows_per_store: dict[str, int] = {}
    for r in range(repeats):
        say(f"  feature stage repeat {r + 1}/{repeats} (load {loadavg()[0]})")
        path = root / f"stage-{r}"
        store = PartitionStore(path, rocks_cfg)
        try:
            res = run_feature_stage(store, computer, schema, values, batch)
            rows_per_store["rocksdb"] = store.entity_count()
        finally:
            store.close()
        shutil.rmtree(path, ignore_errors=True)
        runs["rocksdb"].append(res)
        ds = DictStore()
        runs["dict"].append(run_feature_stage(ds, computer, schema, values, batch))
        rows_per_store["dict"] = len(ds.d)
        final_states = list(ds.d.values())
        cpu0 = time.process_time()
        secs, _, late = run_stage(computer, spec, decoded, batch)
        cpu = time.process_time() - cpu0
        runs["bench_features.run_stage"].append({
            "seconds": secs, "cpu_seconds": cpu, "events_per_s": n / secs, "events_per_cpu_s": n / cpu,
            "us_per_event": 1e6 * secs / n, "late": late})

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "median_seconds": rnd(med([x["seconds"] for x in rs]), 4),
            "events_per_s": rnd(med([x["events_per_s"] for x in rs])),
            "events_per_cpu_s": rnd(med([x["events_per_cpu_s"] for x in rs])),
            "us_per_event": rnd(med([x["us_per_event"] for x in rs]), 2),
        }
        if "phases_s" in rs[0]:
            out["phases_us_per_event"] = {k: rnd(1e6 * med([x["phases_s"][k] for x in rs]) / n, 3)
                                          for k in rs[0]["phases_s"]}
            out["multi_get_us_per_key"] = rnd(1e6 * med([x["phases_s"]["multi_get"] for x in rs]) / rs[0]["keys_read"], 3)
            out["write_us_per_key"] = rnd(1e6 * med([x["phases_s"]["write"] for x in rs]) / rs[0]["keys_written"], 3)
            out["keys_per_batch"] = rnd(rs[0]["keys_read"] / -(-n // batch), 1)
        return out

    # Calibration against DESIGN's figures (measured on the same class of machine, presumably
    # less loaded): orjson.loads of our payloads, the first figure DESIGN gives.
    loads = orjson.loads
    cal = []
    for _ in range(max(5, repeats)):
        c0 = time.process_time()
        for v in values:
            loads(v)
        cal.append(time.process_time() - c0)
    orjson_us = 1e6 * med(cal) / n
    result: dict[str, Any] = {
        "calibration": {"orjson_loads_us_per_event_cpu": rnd(orjson_us, 3),
                        "design_orjson_loads_us": DESIGN_US["orjson_loads_event"],
                        "slowdown_vs_design": rnd(orjson_us / DESIGN_US["orjson_loads_event"], 2)},
        "events": n, "batch": batch, "repeats": repeats, "entities_at_end": rows_per_store,
        "late": runs["rocksdb"][0]["late"],
        "variants": {k: {"median": summary(v), "runs": [{kk: (rnd(vv, 4) if isinstance(vv, float) else
                                                             ({p: rnd(t, 4) for p, t in vv.items()} if isinstance(vv, dict) else vv))
                                                         for kk, vv in x.items()} for x in v]}
                     for k, v in runs.items()},
    }
    rk, dc = result["variants"]["rocksdb"]["median"], result["variants"]["dict"]["median"]
    ours = rk["events_per_s"]
    # Paired per repeat (same load moment): RocksDB loop time / dict loop time.
    paired = [a["seconds"] / b["seconds"] for a, b in zip(runs["rocksdb"], runs["dict"])]
    result["rocksdb_over_dict_time"] = rnd(med(paired), 3)
    result["state_io_share_rocksdb"] = rnd((rk["phases_us_per_event"]["multi_get"] + rk["phases_us_per_event"]["write"])
                                           / rk["us_per_event"], 3)
    keys_per_event = runs["rocksdb"][0]["keys_read"] / n
    result["design"] = {
        "prototype_end_to_end_events_per_s_per_core": DESIGN_PROTOTYPE_EPS,
        "target_factor": DESIGN_TARGET_FACTOR,
        "limit_over_ours_wall": rnd(DESIGN_PROTOTYPE_EPS / ours, 2),
        "limit_over_ours_cpu": rnd(DESIGN_PROTOTYPE_EPS / rk["events_per_cpu_s"], 2),
        "within_target": DESIGN_PROTOTYPE_EPS / rk["events_per_cpu_s"] <= DESIGN_TARGET_FACTOR,
        # The same ratio if this machine's CPU were as fast as when DESIGN's figures were taken
        # (scaled by the orjson calibration; a rough correction for load, not a measurement).
        "limit_over_ours_cpu_calibrated": rnd(DESIGN_PROTOTYPE_EPS / rk["events_per_cpu_s"]
                                              / max(orjson_us / DESIGN_US["orjson_loads_event"], 1e-9), 2),
        "design_us": DESIGN_US,
        # What DESIGN's per-operation figures predict for our state I/O (per event, at our
        # keys-per-event): one get and one WriteBatch put per touched entity per batch.
        "design_state_io_us_per_event": rnd(keys_per_event * (DESIGN_US["rocksdb_get"] + DESIGN_US["writebatch_put"]), 3),
        "ours_state_io_us_per_event": rnd(rk["phases_us_per_event"]["multi_get"] + rk["phases_us_per_event"]["write"], 3),
        "ours_decode_us_per_event": rk["phases_us_per_event"]["decode"],
        "ours_process_batch_us_per_event": rk["phases_us_per_event"]["process_batch"],
        "dict_events_per_s": dc["events_per_s"],
    }
    return result, final_states


# ---------------------------------------------------------------------------------------------
# 3. State size on disk vs entities
# ---------------------------------------------------------------------------------------------

def bench_state_size(pool: list[bytes], sizes: Sequence[int], root: Path, rocks_cfg: RocksDBConfig,
                     batch: int, io_batches: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    pool = [pool[i] for i in rng.permutation(len(pool))]  # mix heavy and light users
    pool_sizes = np.fromiter((len(v) for v in pool), dtype=np.int64, count=len(pool))
    out: dict[str, Any] = {
        "state_source": f"end-of-stream states of the feature-stage run ({len(pool)} entities), cycled over the keys",
        "pool_entities": len(pool),
        "pool_encoded_bytes": {"mean": rnd(pool_sizes.mean()), "p50": rnd(pct(pool_sizes, 50)),
                               "p90": rnd(pct(pool_sizes, 90)), "p99": rnd(pct(pool_sizes, 99)),
                               "max": int(pool_sizes.max())},
        "compression": rocks_cfg.compression,
        "sizes": [],
    }
    for k in sizes:
        say(f"  state size: {k:,} entities (load {loadavg()[0]})")
        path = root / f"size-{k}"
        store = PartitionStore(path, rocks_cfg)
        encoded = 0
        t0 = pc()
        for s in range(0, k, batch):
            states = {f"u{i:07d}": pool[i % len(pool)] for i in range(s, min(k, s + batch))}
            encoded += sum(len(v) for v in states.values())
            store.write(states, b"1770000000000", s + batch)
        write_s = pc() - t0
        db = store._db  # noqa: SLF001 - benchmark: flush/compact are not part of the store's API
        as_written = du_bytes(path)
        t1 = pc()
        db.flush()
        flushed = du_bytes(path)
        db.compact_range(None, None)
        compact_s = pc() - t1
        compacted = du_bytes(path)
        # Random-key state I/O at this size (after compaction: reads come from SST files/cache).
        get_us: list[float] = []
        put_us: list[float] = []
        n_io = 0
        for _ in range(io_batches):
            ids = rng.choice(k, size=min(batch, k), replace=False)
            keys = [f"u{i:07d}" for i in ids]
            a = pc()
            got = store.multi_get(keys)
            b = pc()
            store.write(got, b"1770000000000", k)
            c = pc()
            get_us.append(1e6 * (b - a) / len(keys))  # per batch: medians resist preemption spikes
            put_us.append(1e6 * (c - b) / len(keys))
            n_io += len(keys)
        store.close()
        shutil.rmtree(path, ignore_errors=True)
        row = {
            "entities": k,
            "mean_encoded_state_bytes": rnd(encoded / k),
            "encoded_total": encoded,
            "as_written": as_written,
            "after_flush": flushed,
            "after_compaction": compacted,
            "bytes_per_entity": {
                "as_written_du": rnd(as_written["du_allocated"] / k),
                "after_flush_du": rnd(flushed["du_allocated"] / k),
                "after_compaction_du": rnd(compacted["du_allocated"] / k),
                "after_compaction_sst": rnd(compacted["sst"] / k),
            },
            "compressed_over_encoded": rnd(compacted["sst"] / encoded, 3),
            "write_entities_per_s": rnd(k / write_s),
            "flush_compact_s": rnd(compact_s, 3),
            "random_multi_get_us_per_key": rnd(med(get_us), 3),
            "random_writebatch_us_per_key": rnd(med(put_us), 3),
            "io_batch_keys": min(batch, k),
            "io_keys": n_io,
        }
        out["sizes"].append(row)
    return out


# ---------------------------------------------------------------------------------------------
# 2. The engine with Kafka in and out
# ---------------------------------------------------------------------------------------------

class PhaseTimers:
    """Exclusive (self) and inclusive wall time of wrapped callables, nesting-aware."""

    def __init__(self) -> None:
        self.excl: dict[str, float] = defaultdict(float)
        self.incl: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []

    def wrap(self, name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        stack, excl, incl, calls = self._stack, self.excl, self.incl, self.calls

        @functools.wraps(fn)
        def timed(*args: Any, **kw: Any) -> Any:
            label = name(*args, **kw) if callable(name) else name
            stack.append(0.0)
            t = pc()
            try:
                return fn(*args, **kw)
            finally:
                dt = pc() - t
                child = stack.pop()
                excl[label] += dt - child
                incl[label] += dt
                calls[label] += 1
                if stack:
                    stack[-1] += dt
        return timed


class Instrumented:
    """Timers around a `ScoringEngine`'s own methods (instance attributes shadow the class's;
    module-level callables of engine.runner and PartitionStore methods are patched and restored)."""

    def __init__(self, engine: Any) -> None:
        import engine.runner as runner_mod

        self.engine = engine
        self.t = PhaseTimers()
        self.batches: list[tuple[float, float, int]] = []  # (start, seconds, messages)
        self.sub_batches: list[int] = []
        t = self.t
        process = engine._process  # noqa: SLF001

        def timed_process(msgs: list[Any]) -> None:
            start = pc()
            process(msgs)
            self.batches.append((start, pc() - start, len(msgs)))

        engine._process = t.wrap("process(other: group, begin txn, send offsets, commit offsets, account)", timed_process)
        score = engine._score_partition  # noqa: SLF001

        def timed_score(part: Any, msgs: list[Any]) -> Any:
            self.sub_batches.append(len(msgs))
            return score(part, msgs)

        engine._score_partition = t.wrap("score_partition(other: decode+validate, key set, lists)", timed_score)
        engine._produce_changelog = t.wrap("changelog_messages (build)", engine._produce_changelog)  # noqa: SLF001
        engine._produce_batch = t.wrap(lambda topic, *_a, **_k: f"produce_batch[{'changelog' if topic.endswith('.changelog') else topic}]",
                                       engine._produce_batch)  # noqa: SLF001
        engine._await_deliveries = t.wrap("flush (await deliveries)", engine._await_deliveries)  # noqa: SLF001
        engine._commit_transaction = t.wrap("commit_transaction", engine._commit_transaction)  # noqa: SLF001
        engine._account = t.wrap("account (metrics, latency)", engine._account)  # noqa: SLF001
        engine._router.score = t.wrap("onnx (router.score)", engine._router.score)  # noqa: SLF001
        self._patches = [
            (runner_mod, "process_batch", t.wrap("process_batch (features)", runner_mod.process_batch)),
            (runner_mod, "score_records", t.wrap("score_records (JSON)", runner_mod.score_records)),
            (PartitionStore, "multi_get", t.wrap("rocksdb multi_get", PartitionStore.multi_get)),
            (PartitionStore, "write", t.wrap("rocksdb write (WriteBatch)", PartitionStore.write)),
        ]
        self._saved = [(obj, attr, obj.__dict__[attr]) for obj, attr, _ in self._patches]
        for obj, attr, fn in self._patches:
            setattr(obj, attr, fn)

    def restore(self) -> None:
        for obj, attr, fn in self._saved:
            setattr(obj, attr, fn)


def _proc_cpu_s(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_engine_once(bootstrap: str, broker_pid: int | None, root: Path, registry: Path, tag: str,
                    guarantee: str, max_batch: int, n: int) -> dict[str, Any]:
    from engine.runner import ScoringEngine

    state_dir = root / f"state-{tag}"
    cfg = EngineConfig(group_id=f"bench-{tag}", input_topic="clicks", scores_topic="scores",
                       dlq_topic="clicks.dlq", state_dir=state_dir, registry=registry, model_name="purchase",
                       max_batch=max_batch, guarantee=guarantee, instance_id=tag, metrics_port=0)
    load0 = loadavg()
    t0 = pc()
    engine = ScoringEngine(cfg, bootstrap)
    init_s = pc() - t0
    inst = Instrumented(engine)
    cpu0, thr0, bcpu0 = time.process_time(), time.thread_time(), _proc_cpu_s(broker_pid)
    w0 = pc()
    try:
        stats = engine.run(max_events=n, idle_exit_s=10.0, max_seconds=max(600.0, n / 200.0))
    finally:
        inst.restore()
    wall = pc() - w0
    cpu, thr, bcpu1 = time.process_time() - cpu0, time.thread_time() - thr0, _proc_cpu_s(broker_pid)
    b = inst.batches
    if not b:
        raise RuntimeError(f"engine run {tag} processed no batch: {stats.as_dict()}")
    steady = (b[-1][0] + b[-1][1]) - b[0][0]
    per_batch_ms = [1000.0 * s for _, s, _ in b]
    in_batches = sum(s for _, s, _ in b)
    timers = {k: rnd(1000.0 * v, 1) for k, v in sorted(inst.t.excl.items(), key=lambda kv: -kv[1])}
    timers["between batches (consume, model refresh, loop)"] = rnd(1000.0 * (steady - in_batches), 1)
    consumed = stats.consumed
    out = {
        "tag": tag, "guarantee": guarantee, "max_batch": max_batch,
        "consumed": consumed, "scored": stats.scored, "dead_lettered": dict(stats.dead_lettered),
        "batches": stats.batches, "aborted_batches": stats.aborted_batches,
        "engine_init_s": rnd(init_s, 2),
        "run_wall_s": rnd(wall, 2),
        "startup_to_first_batch_s": rnd(b[0][0] - w0, 2),
        "steady_s": rnd(steady, 3),
        "events_per_s_steady": rnd(consumed / steady),
        "events_per_s_wall": rnd(consumed / wall),
        "events_per_cpu_s_process": rnd(consumed / cpu) if cpu else None,
        "cpu_process_s": rnd(cpu, 2),
        "cpu_main_thread_s": rnd(thr, 2),
        "main_thread_core_share": rnd(thr / wall, 2),
        "broker_cpu_s": rnd(bcpu1 - bcpu0, 2) if bcpu0 is not None and bcpu1 is not None else None,
        "batch_messages": {"mean": rnd(statistics.fmean(x for _, _, x in b)), "max": max(x for _, _, x in b)},
        "partition_sub_batch": {"count": len(inst.sub_batches), "mean": rnd(statistics.fmean(inst.sub_batches)),
                                "p50": rnd(pct(inst.sub_batches, 50))},
        "batch_ms": {"mean": rnd(statistics.fmean(per_batch_ms), 2), "p50": rnd(pct(per_batch_ms, 50), 2),
                     "p90": rnd(pct(per_batch_ms, 90), 2), "p99": rnd(pct(per_batch_ms, 99), 2),
                     "max": rnd(max(per_batch_ms), 2)},
        "batch_us_per_event": rnd(1e6 * in_batches / max(consumed, 1), 2),
        "phase_ms_total": timers,
        "phase_share": {k: rnd(v / (1000.0 * steady), 3) for k, v in timers.items()},
        "restored_records_at_start": stats.restored_records,
        "loadavg_before": load0, "loadavg_after": loadavg(),
        "state_dir": str(state_dir / cfg.features.hash),
        "changelog_topic": engine._changelog,  # noqa: SLF001
    }
    if consumed < n:
        out["warning"] = f"consumed {consumed} < {n} events"
    return out


def engine_store_size(state_root: Path) -> dict[str, Any]:
    """Disk use of an engine's per-partition stores as the engine left them (no forced flush)."""
    from rocksdict import Rdict

    parts = {}
    total = ents = 0
    for p in sorted(state_root.glob("clicks-*")):
        size = du_bytes(p)
        db = Rdict(str(p), rocksdb_options(RocksDBConfig()))
        try:
            n = sum(1 for k in db.keys() if not k.startswith(b"\x00"))
        finally:
            db.close()
        parts[p.name] = {"entities": n, **size}
        total += size["du_allocated"]
        ents += n
    return {"partitions": parts, "entities": ents, "du_allocated": total,
            "bytes_per_entity": rnd(total / ents) if ents else None}


def _entity_items(path: Path) -> tuple[dict[bytes, bytes], tuple[Any, Any]]:
    from rocksdict import Rdict

    db = Rdict(str(path), rocksdb_options(RocksDBConfig()))
    try:
        items = {k: v for k, v in db.items() if not k.startswith(b"\x00")}
        meta = (db.get(CLOCK_KEY), db.get(APPLIED_KEY))
    finally:
        db.close()
    return items, meta


def timed_restore(bootstrap: str, topic: str, partition: int, store: PartitionStore) -> tuple[Any, dict[str, Any]]:
    """`engine.changelog.restore` with timers: setup (consumer, watermarks, assign), time inside
    ``consume()`` calls (fetch + waits), store writes, and the rest (record loop, close)."""
    import engine.changelog as cl

    calls: list[tuple[float, float, int]] = []
    writes: list[float] = []
    base, orig_write = cl.Consumer, PartitionStore.__dict__["write_raw"]

    class TimedConsumer(base):  # type: ignore[misc, valid-type]
        def consume(self, *a: Any, **kw: Any) -> Any:
            t = pc()
            msgs = super().consume(*a, **kw)
            calls.append((t, pc() - t, len(msgs)))
            return msgs

    def timed_write(self: PartitionStore, *a: Any, **kw: Any) -> None:
        t = pc()
        orig_write(self, *a, **kw)
        writes.append(pc() - t)

    cl.Consumer = TimedConsumer
    PartitionStore.write_raw = timed_write  # type: ignore[method-assign]
    t0 = pc()
    try:
        res = cl.restore(bootstrap, topic, partition, store)
    finally:
        cl.Consumer = base
        PartitionStore.write_raw = orig_write  # type: ignore[method-assign]
    total = pc() - t0
    in_consume = sum(d for _, d, _ in calls)
    setup = (calls[0][0] - t0) if calls else total
    timed_out = [d for _, d, n in calls if n < cl.RESTORE_BATCH and d >= 0.9]
    return res, {
        "setup_s": rnd(setup, 3), "consume_calls": len(calls), "in_consume_s": rnd(in_consume, 3),
        "consume_calls_waiting_full_timeout": len(timed_out), "waiting_s": rnd(sum(timed_out), 3),
        "store_write_s": rnd(sum(writes), 4), "store_writes": len(writes),
        "other_s": rnd(total - setup - in_consume - sum(writes), 3),
    }


def bench_restore(bootstrap: str, run: dict[str, Any], root: Path, repeats: int) -> dict[str, Any]:
    per_part = []
    for p in range(PARTITIONS):
        recs, secs, details, match = [], [], [], None
        for r in range(repeats):
            path = root / f"restore-{run['tag']}-{p}-{r}"
            store = PartitionStore(path, RocksDBConfig())
            try:
                res, detail = timed_restore(bootstrap, run["changelog_topic"], p, store)
            finally:
                store.close()
            recs.append(res.records)
            secs.append(res.seconds)
            details.append(detail)
            if r == 0:
                mine = _entity_items(path)
                engine = _entity_items(Path(run["state_dir"]) / f"clicks-{p}")
                match = {"entities_restored": len(mine[0]), "entities_in_engine_store": len(engine[0]),
                         "states_equal": mine[0] == engine[0],
                         "clock_and_applied": {"restored": [x.decode() if x else x for x in mine[1]],
                                               "engine": [x.decode() if x else x for x in engine[1]]},
                         "clock_and_applied_equal": mine[1] == engine[1]}
            shutil.rmtree(path, ignore_errors=True)
        i = secs.index(sorted(secs)[len(secs) // 2])  # the median run's breakdown
        waits = details[i]["waiting_s"]
        per_part.append({"partition": p, "records": recs[0], "median_s": rnd(secs[i], 3),
                         "records_per_s": rnd(recs[0] / secs[i]) if secs[i] > 0 else None,
                         "records_per_s_without_consume_timeouts": rnd(recs[0] / (secs[i] - waits)) if secs[i] > waits else None,
                         "breakdown": details[i], "runs_s": [rnd(s, 3) for s in secs], **(match or {})})
    total_recs = sum(x["records"] for x in per_part)
    total_s = sum(x["median_s"] for x in per_part)
    total_wait = sum(x["breakdown"]["waiting_s"] for x in per_part)
    return {"run": run["tag"], "changelog_topic": run["changelog_topic"], "repeats": repeats,
            "records": total_recs, "seconds": rnd(total_s, 3),
            "records_per_s": rnd(total_recs / total_s) if total_s else None,
            "waiting_in_consume_timeouts_s": rnd(total_wait, 3),
            "records_per_s_without_consume_timeouts": rnd(total_recs / (total_s - total_wait)) if total_s > total_wait else None,
            "entities_restored": sum(x.get("entities_restored", 0) for x in per_part),
            "entities_in_engine_stores": sum(x.get("entities_in_engine_store", 0) for x in per_part),
            "all_equal_to_engine_store": all(x.get("states_equal") and x.get("clock_and_applied_equal") for x in per_part),
            "partitions": per_part}


def produce_all_of(prod: Any, topic: str, msgs: list[dict[str, Any]], partition: int) -> None:
    """`produce_batch` of `msgs` to `partition`, re-queueing the ones a full local queue refused."""
    while msgs:
        try:
            queued = prod.produce_batch(topic, msgs, partition=partition)
        except BufferError:
            queued = 0
        if queued == len(msgs):
            break
        msgs = [{k: v for k, v in m.items() if k != "_error"} for m in msgs if "_error" in m]
        prod.poll(0.1)
    prod.poll(0)


def bench_restore_synthetic(bootstrap: str, pool: list[bytes], k: int, root: Path, batch: int,
                            repeats: int) -> dict[str, Any]:
    """Restore of a changelog partition holding exactly one record per entity (a fully compacted
    changelog of `k` entities, states from the feature-stage run) plus one meta record per
    `batch` entities, written with `changelog_messages` (explicit partition 0)."""
    from confluent_kafka import Producer

    from engine.changelog import changelog_messages
    from engine.topics import TopicSpec, ensure_topics

    topic = f"bench-synthetic-{k}.changelog"
    ensure_topics(bootstrap, [TopicSpec(topic, 1, compacted=True)])
    prod = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                     "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    t0 = pc()
    nbytes = 0
    for s in range(0, k, batch):
        states = {f"u{i:07d}": pool[i % len(pool)] for i in range(s, min(k, s + batch))}
        nbytes += sum(len(v) for v in states.values())
        produce_all_of(prod, topic, changelog_messages(states, b"1770000000000", s + batch, 0), 0)
    left = prod.flush(120)
    produce_s = pc() - t0
    if left:
        raise RuntimeError(f"{left} synthetic changelog records undelivered")
    runs = []
    for r in range(repeats):
        path = root / f"restore-synthetic-{k}-{r}"
        store = PartitionStore(path, RocksDBConfig())
        try:
            res, detail = timed_restore(bootstrap, topic, 0, store)
            entities = store.entity_count()
        finally:
            store.close()
        shutil.rmtree(path, ignore_errors=True)
        runs.append({"records": res.records, "seconds": rnd(res.seconds, 3), "entities": entities, **detail})
    secs = [x["seconds"] for x in runs]
    i = secs.index(sorted(secs)[len(secs) // 2])
    mid = runs[i]
    return {"entities": k, "records": mid["records"], "encoded_bytes": nbytes, "produce_s": rnd(produce_s, 2),
            "repeats": repeats, "median_s": mid["seconds"],
            "records_per_s": rnd(mid["records"] / mid["seconds"]),
            "records_per_s_without_consume_timeouts": rnd(mid["records"] / (mid["seconds"] - mid["waiting_s"]))
            if mid["seconds"] > mid["waiting_s"] else None,
            "all_entities_restored": all(x["entities"] == k for x in runs), "runs": runs}


def bench_kafka(payloads: list[tuple[bytes, bytes]], root: Path, args: argparse.Namespace,
                pool: list[bytes]) -> dict[str, Any]:
    from engine.broker import LocalBroker
    from engine.loadgen import produce, write_jsonl
    from engine.topics import TopicSpec, ensure_topics
    from models.pipeline import train_from_log

    out: dict[str, Any] = {"partitions": PARTITIONS, "events": len(payloads), "repeats": args.kafka_repeats,
                           "max_batches": args.max_batches, "guarantees": list(GUARANTEES),
                           "note": "one Python process (the engine loop on one thread plus librdkafka threads); "
                                   "the broker JVM runs on the same 2 cores"}
    broker = LocalBroker(home=root / "home", die_with_parent=True, quiet=True)
    t0 = pc()
    bootstrap = broker.start(timeout=120)
    out["broker_start_s"] = rnd(pc() - t0, 1)
    state = broker.running_state()
    broker_pid = state.pid if state else None
    try:
        ensure_topics(bootstrap, [TopicSpec("clicks", PARTITIONS), TopicSpec("scores", PARTITIONS),
                                  TopicSpec("clicks.dlq", 1)])
        say(f"  broker at {bootstrap}; training the model ({args.train_events:,} history events)")
        history = root / "history.jsonl"
        hcfg = GeneratorConfig(n_events=args.train_events, n_users=400, seed=3, start=HISTORY_START, jitter_ms=1_000.0)
        write_jsonl(history, ClickstreamGenerator(hcfg).events())
        t0 = pc()
        trained = train_from_log(history, clickstream_spec(), num_partitions=PARTITIONS, registry_root=root / "registry",
                                 model_name="purchase", horizon_ms=3_600_000, promote=True, log=lambda s: say("   " + s))
        out["model"] = {"name": "purchase", "version": trained.version, "train_s": rnd(pc() - t0, 1),
                        "history_events": args.train_events}
        say(f"  producing the backlog: {len(payloads):,} events to clicks[{PARTITIONS}]")
        summ = produce(bootstrap, "clicks", payloads, progress_every=0)
        out["produce"] = {"sent": summ.sent, "delivered": summ.delivered, "seconds": rnd(summ.seconds, 2),
                          "events_per_s": rnd(summ.rate)}
        runs: list[dict[str, Any]] = []
        for rep in range(args.kafka_repeats):
            for g in GUARANTEES:
                for mb in args.max_batches:
                    tag = f"{'eos' if g == 'exactly_once' else 'alo'}-b{mb}-r{rep}"
                    say(f"  engine run {tag} (load {loadavg()[0]})")
                    res = run_engine_once(bootstrap, broker_pid, root, root / "registry", tag, g, mb, len(payloads))
                    say(f"    {res['events_per_s_steady']:,.0f} events/s steady, batch p50 {res['batch_ms']['p50']} ms")
                    runs.append(res)
        out["runs"] = runs
        summary = {}
        for g in GUARANTEES:
            for mb in args.max_batches:
                rs = [r for r in runs if r["guarantee"] == g and r["max_batch"] == mb]
                key = f"{g}/{mb}"
                phase_keys = rs[0]["phase_share"].keys()
                summary[key] = {
                    "events_per_s_steady": rnd(med([r["events_per_s_steady"] for r in rs])),
                    "events_per_s_wall": rnd(med([r["events_per_s_wall"] for r in rs])),
                    "events_per_cpu_s_process": rnd(med([r["events_per_cpu_s_process"] for r in rs])),
                    "main_thread_core_share": rnd(med([r["main_thread_core_share"] for r in rs]), 2),
                    "batch_ms_p50": rnd(med([r["batch_ms"]["p50"] for r in rs]), 2),
                    "batch_ms_p99": rnd(med([r["batch_ms"]["p99"] for r in rs]), 2),
                    "batch_us_per_event": rnd(med([r["batch_us_per_event"] for r in rs]), 2),
                    "batch_messages_mean": rnd(med([r["batch_messages"]["mean"] for r in rs])),
                    "partition_sub_batch_mean": rnd(med([r["partition_sub_batch"]["mean"] for r in rs])),
                    "phase_share": {k: rnd(med([r["phase_share"][k] for r in rs]), 3) for k in phase_keys},
                    "runs_events_per_s_steady": [r["events_per_s_steady"] for r in rs],
                }
        out["summary"] = summary
        first = [r for r in runs if r["tag"].endswith("-r0")]
        out["engine_store_size"] = {r["tag"]: engine_store_size(Path(r["state_dir"])) for r in first}
        say("  restoring changelogs")
        out["restore"] = [bench_restore(bootstrap, r, root, args.restore_repeats) for r in first]
        if pool and args.restore_entities:
            say(f"  restoring a synthetic compacted changelog of {args.restore_entities:,} entities")
            out["restore_synthetic"] = bench_restore_synthetic(bootstrap, pool, args.restore_entities, root,
                                                               args.batch, args.restore_repeats)
    finally:
        t0 = pc()
        broker.stop()
        out["broker_stop_s"] = rnd(pc() - t0, 1)
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def print_report(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"\nstreamscore state benchmark — {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
          f"rocksdict {m['versions'].get('rocksdict')}, load avg at start {m['loadavg_start']}, end {m['loadavg_end']}")
    fs = res.get("feature_stage")
    if fs:
        print(f"\n1. feature stage, no Kafka ({fs['events']:,} events, batch {fs['batch']}, "
              f"{fs['entities_at_end']['dict']:,} entities, median of {fs['repeats']}; single thread):")
        print(f"   {'variant':<26} {'events/s':>9} {'ev/CPU-s':>9} {'µs/ev':>7}  decode  get    feat   write (µs/ev)")
        for name, v in fs["variants"].items():
            md = v["median"]
            ph = md.get("phases_us_per_event")
            cells = (f"  {ph['decode']:>5.2f} {ph['multi_get']:>5.2f} {ph['process_batch']:>6.1f} {ph['write']:>5.2f}"
                     if ph else "  (process_batch + dict only, pre-decoded)")
            print(f"   {name:<26} {md['events_per_s']:>9,.0f} {md['events_per_cpu_s']:>9,.0f} {md['us_per_event']:>7.1f}{cells}")
        d = fs["design"]
        rk = fs["variants"]["rocksdb"]["median"]
        print(f"   RocksDB/dict time {fs['rocksdb_over_dict_time']:.3f}; state I/O {100 * fs['state_io_share_rocksdb']:.1f}% of the "
              f"stage ({d['ours_state_io_us_per_event']:.2f} µs/ev; DESIGN per-op figures predict "
              f"{d['design_state_io_us_per_event']:.2f}); multi_get {rk['multi_get_us_per_key']:.2f} µs/key, "
              f"write {rk['write_us_per_key']:.2f} µs/key, {rk['keys_per_batch']:.0f} keys/batch")
        print(f"   DESIGN prototype limit {d['prototype_end_to_end_events_per_s_per_core']:,.0f} ev/s/core end to end: "
              f"limit/ours = {d['limit_over_ours_wall']:.2f}x wall, {d['limit_over_ours_cpu']:.2f}x per CPU-s "
              f"(target <= {d['target_factor']}x: {'MET' if d['within_target'] else 'NOT MET'})")
        cal = fs["calibration"]
        print(f"   calibration: orjson.loads {cal['orjson_loads_us_per_event_cpu']:.2f} µs/event CPU here vs "
              f"{cal['design_orjson_loads_us']} in DESIGN ({cal['slowdown_vs_design']:.1f}x); scaled by that, "
              f"limit/ours ~ {d['limit_over_ours_cpu_calibrated']:.2f}x")
    kf = res.get("kafka")
    if kf:
        print(f"\n2. engine with Kafka in and out ({kf['events']:,}-event backlog, {kf['partitions']} partitions, "
              f"median of {kf['repeats']}; one process, broker on the same cores):")
        print(f"   {'guarantee/max_batch':<22} {'ev/s':>7} {'ev/s wall':>9} {'ev/CPU-s':>9} {'py core':>7} "
              f"{'msgs/b':>6} {'sub/p':>6} {'batch p50':>9} {'p99 ms':>7} {'µs/ev':>6}")
        for key, s in kf["summary"].items():
            print(f"   {key:<22} {s['events_per_s_steady']:>7,.0f} {s['events_per_s_wall']:>9,.0f} "
                  f"{s['events_per_cpu_s_process']:>9,.0f} {s['main_thread_core_share']:>7.2f} {s['batch_messages_mean']:>6.0f} "
                  f"{s['partition_sub_batch_mean']:>6.0f} {s['batch_ms_p50']:>9.1f} {s['batch_ms_p99']:>7.1f} "
                  f"{s['batch_us_per_event']:>6.1f}")
        print("   where the time goes (share of steady wall time; exclusive):")
        for key, s in kf["summary"].items():
            top = sorted(s["phase_share"].items(), key=lambda kv: -kv[1])[:7]
            print(f"   {key:<22} " + ", ".join(f"{k.split(' (')[0]} {100 * v:.0f}%" for k, v in top))
        print("\n4. restore from changelog (fresh store, all partitions):")
        for r in kf.get("restore", []):
            print(f"   {r['run']:<12} {r['records']:>8,} records in {r['seconds']:.2f} s = {r['records_per_s']:>8,.0f} records/s "
                  f"({r['waiting_in_consume_timeouts_s']:.1f} s waiting in consume timeouts; without them "
                  f"{r['records_per_s_without_consume_timeouts'] or 0:,.0f}/s); entities restored {r['entities_restored']:,} "
                  f"of {r['entities_in_engine_stores']:,}; equal to engine stores: {r['all_equal_to_engine_store']}")
            bad = [x["partition"] for x in r["partitions"] if not (x.get("states_equal") and x.get("clock_and_applied_equal"))]
            if bad:
                print(f"   {'':<12} partitions differing from the engine's store: {bad}")
        rs = kf.get("restore_synthetic")
        if rs:
            print(f"   synthetic compacted changelog, 1 partition: {rs['records']:,} records ({rs['entities']:,} entities) in "
                  f"{rs['median_s']:.2f} s = {rs['records_per_s']:,.0f} records/s (without consume timeouts "
                  f"{rs['records_per_s_without_consume_timeouts'] or 0:,.0f}/s); all restored: {rs['all_entities_restored']}")
        es = kf.get("engine_store_size", {})
        if es:
            print("   engine stores as left after the run (no forced compaction): " + "; ".join(
                f"{k} {v['entities']:,} entities {v['du_allocated'] / 1e6:.1f} MB ({v['bytes_per_entity']:,.0f} B/entity)"
                for k, v in es.items()))
    ss = res.get("state_size")
    if ss:
        pe = ss["pool_encoded_bytes"]
        print(f"\n3. state size on disk ({ss['compression']}; encoded state per entity mean {pe['mean']:.0f} B, "
              f"p50 {pe['p50']:.0f}, p99 {pe['p99']:.0f}, max {pe['max']}):")
        print(f"   {'entities':>9} {'as written':>11} {'flushed':>10} {'compacted':>10} {'B/entity':>9} {'sst B/ent':>9} "
              f"{'sst/enc':>7} {'get µs/key':>10} {'put µs/key':>10}")
        for row in ss["sizes"]:
            print(f"   {row['entities']:>9,} {row['as_written']['du_allocated'] / 1e6:>9.1f}MB "
                  f"{row['after_flush']['du_allocated'] / 1e6:>8.1f}MB {row['after_compaction']['du_allocated'] / 1e6:>8.1f}MB "
                  f"{row['bytes_per_entity']['after_compaction_du']:>9,.0f} {row['bytes_per_entity']['after_compaction_sst']:>9,.0f} "
                  f"{row['compressed_over_encoded']:>7.2f} {row['random_multi_get_us_per_key']:>10.2f} "
                  f"{row['random_writebatch_us_per_key']:>10.2f}")
    print(f"\ntotal {res['duration_s']:.0f} s")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_state", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=None, help="stream length (default 100000; --quick 20000)")
    ap.add_argument("--users", type=int, default=5_000, help="simulated users (Zipf activity; not all are active)")
    ap.add_argument("--batch", type=int, default=500, help="micro-batch size of the feature-stage loop and state writes")
    ap.add_argument("--repeats", type=int, default=None, help="feature-stage repeats (default 5; --quick 3)")
    ap.add_argument("--kafka-repeats", type=int, default=None, help="engine runs per setting (default 3; --quick 1)")
    ap.add_argument("--restore-repeats", type=int, default=None, help="restores per partition (default 3; --quick 1)")
    ap.add_argument("--restore-entities", type=int, default=None,
                    help="entities of the synthetic compacted changelog restored in 4. (default 100000; --quick 50000; 0 skips)")
    ap.add_argument("--max-batches", type=lambda s: [int(x) for x in s.split(",")], default=[500, 2000])
    ap.add_argument("--entities", type=lambda s: [int(x) for x in s.split(",")], default=[1_000, 10_000, 100_000],
                    help="entity counts for the state-size measurement")
    ap.add_argument("--train-events", type=int, default=None, help="history events to train the model (default 20000, as the integration tests; smaller histories can fail the ONNX parity check)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: stage,kafka,size")
    ap.add_argument("--quick", action="store_true", help="small, ~1 min")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (broker home, stores)")
    ap.add_argument("--json", dest="json_path", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    q = args.quick
    args.events = args.events or (20_000 if q else 100_000)
    args.repeats = args.repeats or (3 if q else 5)
    args.kafka_repeats = args.kafka_repeats or (1 if q else 3)
    args.restore_repeats = args.restore_repeats or (1 if q else 3)
    args.train_events = args.train_events or 20_000
    if args.restore_entities is None:
        args.restore_entities = 50_000 if q else 100_000
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    rocks_cfg = RocksDBConfig()

    started = time.time()
    t_all = pc()
    machine = machine_info()
    machine["versions"] = versions()
    machine["loadavg_start"] = loadavg()
    machine["python_executable"] = sys.executable
    machine["platform_node"] = platform.node()
    root = Path(tempfile.mkdtemp(prefix="streamscore-bench-state-"))
    say(f"bench_state: {args.events:,} events, {args.users:,} users, temp dir {root}, load {machine['loadavg_start']}")
    result: dict[str, Any] = {
        "benchmark": "state",
        "command": "python -m benchmarks.bench_state " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "params": {"events": args.events, "users": args.users, "batch": args.batch, "repeats": args.repeats,
                   "kafka_repeats": args.kafka_repeats, "restore_repeats": args.restore_repeats,
                   "restore_entities": args.restore_entities, "max_batches": args.max_batches, "entities": args.entities, "train_events": args.train_events,
                   "seed": args.seed, "quick": q, "partitions": PARTITIONS, "stream_start": STREAM_START.isoformat(),
                   "jitter_ms": 1000.0, "rocksdb": vars(rocks_cfg), "spec": clickstream_spec().name,
                   "spec_hash": clickstream_spec().hash, "columns": clickstream_spec().width},
        "loadavg": {},
    }
    try:
        t0 = pc()
        payloads = make_payloads(args.events, args.users, args.seed)
        result["params"]["generate_s"] = rnd(pc() - t0, 2)
        result["params"]["mean_payload_bytes"] = rnd(statistics.fmean(len(v) for _, v in payloads))
        pool: list[bytes] = []
        if "stage" not in skip or "size" not in skip:
            say("1. feature stage with RocksDB vs dict")
            result["loadavg"]["feature_stage_before"] = loadavg()
            fs, pool = bench_feature_stage(payloads, args.batch, args.repeats if "stage" not in skip else 1, root, rocks_cfg)
            if "stage" not in skip:
                result["feature_stage"] = fs
        if "kafka" not in skip:
            say("2. engine with Kafka (and 4. restore)")
            result["loadavg"]["kafka_before"] = loadavg()
            result["kafka"] = bench_kafka(payloads, root, args, pool)
        if "size" not in skip:
            say("3. state size on disk")
            result["loadavg"]["state_size_before"] = loadavg()
            result["state_size"] = bench_state_size(pool, args.entities, root, rocks_cfg, args.batch,
                                                    io_batches=40 if q else 100, seed=args.seed)
    finally:
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    machine["loadavg_end"] = loadavg()
    result["duration_s"] = rnd(pc() - t_all, 1)
    print_report(result)
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        print(f"wrote {args.json_path}")
    return result


if __name__ == "__main__":
    main()
