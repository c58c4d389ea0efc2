"""Query-endpoint benchmark: query latency while the engine consumes a backlog, and what queries
cost the stream.

    python -m benchmarks.bench_query --json benchmarks/results/query.json [--events N] [--repeats R]

One broker (``KAFKA_BOOTSTRAP_SERVERS``, else a local one under /tmp, stopped at the end), a model
trained on 20k history events, a backlog of ``--events`` events of ``--users`` users on a
4-partition topic. Then, per repeat and in rotating order, the real `engine.runner.ScoringEngine`
(exactly-once, default batch) consumes the whole backlog from a fresh group and state directory
in each of four modes:

  ``off``     query endpoint off (``query.port: 0``): the baseline;
  ``idle``    endpoint on, no client: the cost of keeping serving records (one per entity per
              batch, in the WriteBatch and in the changelog);
  ``paced``   endpoint on, ``--clients`` clients sending ``--rate`` queries/s in total;
  ``closed``  endpoint on, the same clients back to back (as fast as answers come): the worst case.

Clients run in a separate process (one thread per client, one keep-alive connection each) so
their own Python work does not share the engine's GIL; they query random entities of the
backlog from the engine's first committed batch until it has consumed everything (entities not
scored yet answer 404; counted apart; status 0 counts connections the stopping engine closed).
Reported per mode, medians over repeats: the engine's steady events/s (first to last committed
batch) and its ratio to ``off``, the engine process's CPU per event (the loop, librdkafka and the
query thread), per-batch wall time p50/p99 (does the loop wait for queries?), query latency
p50/p99/max and queries/s, and the status mix. The machine is shared and has 2 cores for the broker, the engine and the clients:
compare ratios within a run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.broker import free_port
from engine.config import EngineConfig, QueryConfig
from engine.loadgen import produce, write_jsonl
from engine.runner import ScoringEngine
from engine.topics import TopicSpec, delete_topics, ensure_topics
from features.clickstream import clickstream_spec
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from models.pipeline import train_from_log

PARTITIONS = 4
MODES = ("off", "idle", "paced", "closed")
STREAM_START = datetime(2026, 2, 1, tzinfo=timezone.utc)
HISTORY_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
pc = time.perf_counter


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def rnd(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(float(x), nd)


# -- clients (a separate process) ----------------------------------------------------------------

def client_process(port: int, entities: list[str], clients: int, rate: float, seed: int, ready: Any, start: Any,
                   stop: Any, out: Any) -> None:
    """`clients` threads query random `entities` from `start` until `stop`; `rate` > 0 paces them
    (queries/s in total), 0 runs them back to back. Sets `ready` once running (the spawned
    interpreter's imports must not overlap the measurement). Puts a summary on `out`."""
    lat_us: list[list[float]] = [[] for _ in range(clients)]
    codes: list[Counter[int]] = [Counter() for _ in range(clients)]
    interval = clients / rate if rate > 0 else 0.0

    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        next_at = time.monotonic() + rng.random() * interval
        while not stop.is_set():
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing, not synchronisation
                next_at += interval
            entity = rng.choice(entities)
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/entities/{entity}")
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()  # the engine closed it (it stops at the end of the backlog): reconnect
                codes[i][0] += 1  # status 0: connection error
                continue
            lat_us[i].append((time.perf_counter() - t0) * 1e6)
            codes[i][resp.status] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.set()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    all_lat = [x for xs in lat_us for x in xs]
    total: Counter[int] = sum(codes, Counter())
    out.put({"queries": len(all_lat), "seconds": seconds, "qps": len(all_lat) / seconds if seconds else 0.0,
             "latency_us": {"p50": pct(all_lat, 50), "p90": pct(all_lat, 90), "p99": pct(all_lat, 99),
                            "max": max(all_lat, default=float("nan"))},
             "status": {str(k): v for k, v in sorted(total.items())}})


# -- one engine run ---------------------------------------------------------------------------

def run_mode(mode: str, bootstrap: str, topics: dict[str, str], registry: Path, root: Path, tag: str, n: int,
             entities: list[str], args: argparse.Namespace) -> dict[str, Any]:
    port = free_port() if mode != "off" else 0
    cfg = EngineConfig(group_id=f"bench-query-{tag}", input_topic=topics["clicks"], scores_topic=topics["scores"],
                       dlq_topic=topics["dlq"], state_dir=root / f"state-{tag}", registry=registry,
                       model_name="purchase", instance_id=tag, query=QueryConfig(port=port))
    engine = ScoringEngine(cfg, bootstrap)
    batches: list[tuple[float, float]] = []  # (end time, wall seconds) of every committed batch
    process = engine._process  # noqa: SLF001 - timed from outside; the engine is unchanged

    def timed(msgs: list[Any]) -> None:
        t0 = pc()
        process(msgs)
        t1 = pc()
        batches.append((t1, t1 - t0))

    engine._process = timed  # type: ignore[method-assign]  # noqa: SLF001
    ctx = mp.get_context("spawn")
    ready, start, stop, out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    client = None
    if mode in ("paced", "closed"):
        client = ctx.Process(target=client_process, args=(port, entities, args.clients,
                                                          args.rate if mode == "paced" else 0.0, args.seed, ready,
                                                          start, stop, out), daemon=True)
        client.start()
        if not ready.wait(120):
            raise RuntimeError("the query clients did not start")
    done = threading.Event()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["stats"] = engine.run(max_events=n, idle_exit_s=30.0, max_seconds=600.0)
        finally:
            done.set()

    thread = threading.Thread(target=target, name="engine")
    cpu0 = time.process_time()
    thread.start()
    while not batches and not done.is_set():
        time.sleep(0.01)  # the first committed batch starts the clients
    start.set()
    while not done.wait(0.005):  # polling, not synchronisation: stop the clients with the backlog
        if engine.stats.consumed >= n:
            break
    stop.set()
    done.wait()
    thread.join()
    cpu = time.process_time() - cpu0
    queries = out.get(timeout=60) if client is not None else None
    if client is not None:
        client.join(30)
    stats = result["stats"]
    steady = batches[-1][0] - (batches[0][0] - batches[0][1])
    batch_ms = [1000.0 * s for _, s in batches]
    return {
        "mode": mode, "tag": tag, "consumed": stats.consumed, "scored": stats.scored, "batches": len(batches),
        "events_per_s_steady": rnd(stats.consumed / steady), "steady_s": rnd(steady, 2),
        "engine_process_cpu_s": rnd(cpu, 2),
        "engine_cpu_us_per_event": rnd(1e6 * cpu / max(stats.consumed, 1), 2),
        "batch_ms": {"p50": rnd(pct(batch_ms, 50), 2), "p99": rnd(pct(batch_ms, 99), 2),
                     "max": rnd(max(batch_ms), 2)},
        "queries": queries,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    med = statistics.median
    out: dict[str, Any] = {}
    base = med([r["events_per_s_steady"] for r in runs if r["mode"] == "off"])
    for mode in MODES:
        rs = [r for r in runs if r["mode"] == mode]
        if not rs:
            continue
        eps = med([r["events_per_s_steady"] for r in rs])
        s: dict[str, Any] = {
            "events_per_s_steady": rnd(eps), "vs_off": rnd(eps / base, 3),
            "batch_ms_p50": rnd(med([r["batch_ms"]["p50"] for r in rs]), 2),
            "batch_ms_p99": rnd(med([r["batch_ms"]["p99"] for r in rs]), 2),
            "engine_cpu_us_per_event": rnd(med([r["engine_cpu_us_per_event"] for r in rs]), 2),
            "runs_events_per_s": [r["events_per_s_steady"] for r in rs],
        }
        qs = [r["queries"] for r in rs if r["queries"]]
        if qs:
            s["query_latency_us"] = {k: rnd(med([q["latency_us"][k] for q in qs])) for k in ("p50", "p90", "p99", "max")}
            s["queries_per_s"] = rnd(med([q["qps"] for q in qs]))
            s["status"] = dict(sum((Counter(q["status"]) for q in qs), Counter()))
        out[mode] = s
    return out


def print_report(res: dict[str, Any]) -> None:
    p = res["params"]
    print(f"\nquery endpoint vs stream: {p['events']:,} events backlog, {p['clients']} clients, "
          f"paced {p['rate']:.0f} q/s; medians of {p['repeats']} runs (load before {res['loadavg_before']})")
    print(f"{'mode':<8} {'events/s':>10} {'vs off':>7} {'CPU µs/event':>13} {'batch p50/p99 ms':>17} {'queries/s':>10} "
          f"{'query p50/p99/max µs':>22}  status")
    for mode, s in res["summary"].items():
        q = s.get("query_latency_us")
        lat = f"{q['p50']:.0f} / {q['p99']:.0f} / {q['max']:.0f}" if q else "-"
        qps = f"{s['queries_per_s']:.0f}" if q else "-"
        print(f"{mode:<8} {s['events_per_s_steady']:>10,.0f} {s['vs_off']:>7.3f} {s['engine_cpu_us_per_event']:>13.1f} "
              f"{s['batch_ms_p50']:>8.1f} / {s['batch_ms_p99']:<7.1f} {qps:>10} {lat:>22}  {s.get('status', '')}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_query", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000, help="backlog events per run")
    ap.add_argument("--users", type=int, default=3_000, help="simulated users")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode (rotating order)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent query clients")
    ap.add_argument("--rate", type=float, default=200.0, help="total queries/s of the paced mode")
    ap.add_argument("--train-events", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", dest="json_path", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="streamscore-bench-query-"))
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if not bootstrap:
        from engine.broker import LocalBroker

        broker = LocalBroker(home=root / "home", die_with_parent=True, quiet=True)
        bootstrap = broker.start(timeout=120)
    suffix = uuid.uuid4().hex[:8]
    topics = {"clicks": f"bq-clicks-{suffix}", "scores": f"bq-scores-{suffix}", "dlq": f"bq-dlq-{suffix}"}
    res: dict[str, Any] = {
        "benchmark": "query", "command": "python -m benchmarks.bench_query " + " ".join(argv or sys.argv[1:]),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": {"events": args.events, "users": args.users, "repeats": args.repeats, "clients": args.clients,
                   "rate": args.rate, "partitions": PARTITIONS, "seed": args.seed, "cpus": os.cpu_count()},
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        ensure_topics(bootstrap, [TopicSpec(topics["clicks"], PARTITIONS), TopicSpec(topics["scores"], PARTITIONS),
                                  TopicSpec(topics["dlq"], 1)])
        say(f"bench_query: broker {bootstrap}, training on {args.train_events:,} history events")
        history = root / "history.jsonl"
        write_jsonl(history, ClickstreamGenerator(GeneratorConfig(
            n_events=args.train_events, n_users=400, seed=3, start=HISTORY_START, jitter_ms=1_000.0)).events())
        train_from_log(history, clickstream_spec(), num_partitions=PARTITIONS, registry_root=root / "registry",
                       model_name="purchase", horizon_ms=3_600_000, promote=True, log=lambda s: None)
        gen = GeneratorConfig(n_events=args.events, n_users=args.users, seed=args.seed, start=STREAM_START,
                              jitter_ms=1_000.0)
        payloads = list(ClickstreamGenerator(gen).payloads())
        entities = sorted({orjson.loads(v)["user_id"] for _, v in payloads})
        produce(bootstrap, topics["clicks"], payloads, progress_every=0)
        say(f"  backlog: {len(payloads):,} events of {len(entities):,} entities")
        runs = []
        for rep in range(args.repeats):
            order = MODES[rep % len(MODES):] + MODES[:rep % len(MODES)]
            for mode in order:
                r = run_mode(mode, bootstrap, topics, root / "registry", root, f"{mode}-r{rep}-{suffix}",
                             len(payloads), entities, args)
                q = r["queries"]
                say(f"  {mode:<7} {r['events_per_s_steady']:>9,.0f} events/s, batch p99 {r['batch_ms']['p99']} ms"
                    + (f", {q['qps']:,.0f} q/s, p50 {q['latency_us']['p50']:.0f} µs p99 {q['latency_us']['p99']:.0f} µs"
                       if q else ""))
                runs.append(r)
        res["runs"] = runs
        res["summary"] = summarise(runs)
        res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        delete_topics(bootstrap, list(topics.values()))
        if broker is not None:
            broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    print_report(res)
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        say(f"wrote {args.json_path}")
    return res


if __name__ == "__main__":
    main()
