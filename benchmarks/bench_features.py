"""Throughput of the feature stage alone (no Kafka, no RocksDB, no model).

    python -m benchmarks.bench_features --events 200000 --users 5000 --json out.json

Builds a seeded clickstream with `features.synthetic` (event-time jitter and a few late
events), then times `features.executor.process_batch` with a dict store, micro-batches of
`--batch` events, the default 38-column spec: exactly what the engine and the offline replay run per partition,
including the decode/encode of every touched entity's state and the float32 row matrix.

Reported (median over `--repeats` runs, each from an empty store):

- feature stage: events/s and µs/event (single thread, so events/s per core);
- baselines on the same events: orjson payload decode alone (``orjson.loads`` per message: the
  cheapest possible stage), and the state round trip alone (decode + encode of the touched states
  per batch, as process_batch does, without computing features);
- a sha256 of all feature rows, so two implementations can be checked for identical output.

``--computer path/to/compute.py:FeatureComputer`` (or ``module:Class``) times another
implementation with the same driver, e.g. a saved copy of an older compute.py.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from engine.progress import Progress
from features.clickstream import clickstream_spec
from features.executor import PartitionClock, process_batch
from features.spec import FeatureSpec
from features.synthetic import ClickstreamGenerator, GeneratorConfig

DAY_MS = 86_400_000


def synthetic_events(n_events: int, n_users: int, seed: int = 1, sessions_per_user_day: float = 0.5,
                     zipf: float = 1.0, jitter_ms: float = 2_000.0,
                     late_fraction: float = 0.002) -> list[dict[str, Any]]:
    """Canonical events in emission order from `features.synthetic.ClickstreamGenerator` (the
    stream the demo, the tests and the other benchmarks use): event-time jitter `jitter_ms`
    (exponential), and a `late_fraction` of events 2-6 minutes late (past the default 60 s
    grace: dead-lettered)."""
    config = GeneratorConfig(n_events=n_events, n_users=n_users, seed=seed, jitter_ms=jitter_ms,
                             late_fraction=late_fraction, late_ms=120_000.0,
                             sessions_per_user_day=sessions_per_user_day, zipf_exponent=zipf)
    return list(ClickstreamGenerator(config).events())


def load_computer(ref: str | None) -> Callable[[FeatureSpec], Any]:
    """The FeatureComputer class: ours, or ``module:Class`` / ``path.py:Class``."""
    if not ref:
        from features.compute import FeatureComputer

        return FeatureComputer
    where, _, cls = ref.rpartition(":")
    if where.endswith(".py"):
        mod_spec = importlib.util.spec_from_file_location("_bench_compute", where)
        assert mod_spec and mod_spec.loader
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, cls)


def run_stage(computer: Any, spec: FeatureSpec, events: Sequence[dict[str, Any]], batch: int) -> tuple[float, list[np.ndarray], int]:
    """One timed pass from an empty store: seconds, row matrices, late count."""
    store: dict[str, bytes] = {}
    clock = PartitionClock(spec.grace_ms)
    out: list[np.ndarray] = []
    late = 0
    t0 = time.perf_counter()
    for s in range(0, len(events), batch):
        res = process_batch(computer, clock, events[s : s + batch], store)
        for key, raw in res.states.items():
            if raw is None:
                store.pop(key, None)
            else:
                store[key] = raw
        out.append(res.rows)
        late += len(res.late)
    return time.perf_counter() - t0, out, late


def state_round_trip(computer: Any, spec: FeatureSpec, events: Sequence[dict[str, Any]], batch: int) -> float:
    """Seconds to decode + encode the touched states of every batch (states as left by a run)."""
    store: dict[str, bytes] = {}
    clock = PartitionClock(spec.grace_ms)
    batches = []
    for s in range(0, len(events), batch):
        chunk = events[s : s + batch]
        keys = {e[spec.entity] for e in chunk}
        batches.append([store[k] for k in keys if k in store])
        res = process_batch(computer, clock, chunk, store)
        for key, raw in res.states.items():
            if raw is None:
                store.pop(key, None)
            else:
                store[key] = raw
    t0 = time.perf_counter()
    for raws in batches:
        for raw in raws:
            computer.encode(computer.decode(raw))
    return time.perf_counter() - t0


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "orjson": orjson.__version__,
        "git_head": commit,
    }


def with_session_features(spec: FeatureSpec) -> FeatureSpec:
    """`spec` plus events, spend and distinct products over a 30-minute session window."""
    from features.spec import Aggregate, Window

    s30 = Window.session("30m")
    extra = (Aggregate("events_session", "count", s30), Aggregate("spend_session", "sum", s30, "price"),
             Aggregate("products_session", "distinct", s30, "product_id"))
    return FeatureSpec(f"{spec.name}+sessions", spec.features + extra, spec.entity, spec.grace_ms, spec.idle_ttl_ms)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_features", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=500, help="events per process_batch call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sessions-per-user-day", type=float, default=0.5, help="mean session rate of a user")
    ap.add_argument("--zipf", type=float, default=1.0, help="activity skew: user weight ~ (rank + 10) ** -zipf")
    ap.add_argument("--computer", default=None, help="module:Class or file.py:Class (default: features.compute)")
    ap.add_argument("--json", dest="json_path", default=None, help="write the figures here")
    ap.add_argument("--spec", default=None,
                    help="feature spec YAML (FeatureSpec.to_dict shape); default: the 38-column clickstream spec")
    ap.add_argument("--with-sessions", action="store_true",
                    help="the default spec plus three 30-minute session-window features (cost of a session window)")
    args = ap.parse_args(argv)

    spec = clickstream_spec()
    if args.spec:
        import yaml

        spec = FeatureSpec.from_dict(yaml.safe_load(Path(args.spec).read_text()))
    elif args.with_sessions:
        spec = with_session_features(spec)
    t0 = time.perf_counter()
    events = synthetic_events(args.events, args.users, args.seed, args.sessions_per_user_day, args.zipf)
    span_days = (max(e["ts"] for e in events) - min(e["ts"] for e in events)) / DAY_MS
    gen_s = time.perf_counter() - t0
    payloads = [orjson.dumps(e) for e in events]
    computer = load_computer(args.computer)(spec)
    n = len(events)

    stage_s: list[float] = []
    digest = ""
    late = 0
    progress = Progress()  # a status line on a terminal, between (never inside) timed runs
    for i in range(args.repeats):
        progress("feature-stage runs", i, args.repeats)
        secs, mats, late = run_stage(computer, spec, events, args.batch)
        stage_s.append(secs)
        d = hashlib.sha256(b"".join(m.tobytes() for m in mats)).hexdigest()
        assert not digest or d == digest, "feature rows differ between repeats"
        digest = d

    parse_s = []
    loads = orjson.loads
    for _ in range(args.repeats):
        t = time.perf_counter()
        for p in payloads:
            loads(p)
        parse_s.append(time.perf_counter() - t)
    progress("feature-stage runs", args.repeats, args.repeats)
    state_s = [state_round_trip(computer, spec, events, args.batch) for _ in progress.iterate(
        range(args.repeats), "state round trips", args.repeats, every=1)]
    progress.close()

    def figures(secs: list[float]) -> dict[str, Any]:
        med = statistics.median(secs)
        return {"median_s": med, "events_per_s": n / med, "us_per_event": 1e6 * med / n,
                "runs_s": [round(s, 4) for s in secs]}

    result = {
        "benchmark": "feature_stage",
        "spec": spec.name,
        "spec_hash": spec.hash,
        "columns": spec.width,
        "computer": args.computer or "features.compute:FeatureComputer",
        "events": n,
        "users": args.users,
        "batch": args.batch,
        "repeats": args.repeats,
        "seed": args.seed,
        "sessions_per_user_day": args.sessions_per_user_day,
        "zipf": args.zipf,
        "span_days": round(span_days, 2),
        "late_events": late,
        "generate_s": round(gen_s, 2),
        "feature_stage": figures(stage_s),
        "baseline_orjson_payload_decode": figures(parse_s),
        "baseline_state_round_trip": figures(state_s),
        "rows_sha256": digest,
        "machine": machine_info(),
    }
    fs = result["feature_stage"]
    print(f"feature stage ({spec.width} columns, {n} events, {args.users} users, batch {args.batch}, "
          f"median of {args.repeats}): {fs['events_per_s']:,.0f} events/s per core, {fs['us_per_event']:.1f} µs/event")
    for label, key in (("orjson payload decode only", "baseline_orjson_payload_decode"),
                       ("state decode+encode only", "baseline_state_round_trip")):
        b = result[key]
        print(f"  baseline {label}: {b['events_per_s']:,.0f} events/s, {b['us_per_event']:.2f} µs/event")
    print(f"  late events: {late}; rows sha256 {digest[:16]}")
    if args.json_path:
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
