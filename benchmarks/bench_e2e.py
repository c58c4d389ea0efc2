"""End-to-end benchmark: streamscore and its peers through Kafka, open-loop load, latency and throughput.

    python -m benchmarks.bench_e2e                 # quick profile (make bench), a few minutes
    python -m benchmarks.bench_e2e --full          # every scenario (make bench-full)
    python -m benchmarks.bench_e2e --tiny --engines streamscore   # seconds; what the test runs

Scenarios (`benchmarks.harness.run_once` for each run; all in one invocation, one broker, one
model, so ratios between systems are measured in one run):

* saturation: each system drains a backlog of ``--events`` events; streamscore exactly-once and
  at-least-once (``--full``: also two processes), Faust, Quix Streams;
* latency vs load: streamscore at ``--loads`` shares of its own saturation throughput in both
  guarantees, each peer at 50 % of its own; open-loop, ``--seconds`` per level;
* (``--full``, or alone with ``--state-only``) state-size scaling: streamscore saturation with
  ``--entities`` distinct users (RSS, disk, throughput);
* (``--full``) restore: restart on the kept disk and on a wiped disk (time to restore every
  partition from its changelog).

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a local broker under a temp directory
(stopped at the end). Before the first measured run, a discarded streamscore exactly-once drain
of ``--broker-warmup`` events warms the broker's JVM (JIT, page cache, transaction coordinator):
on 2 cores a cold broker competes for CPU with whichever system runs first (measured: the first
exactly-once drain 15,700 events/s on a fresh broker, 20,000-20,300 on a warm one). The model
is the registry's champion (``--registry``; trained once from a synthetic history if it has
none for the default feature spec). Output: ``--out`` directory
(default benchmarks/results/e2e): ``e2e.json`` (environment, config, every run), ``e2e.md`` (the
table) and PNG plots (`benchmarks.report`).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import Env, Procs, Target, _group_ready, run_once

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "e2e"
QUIX_PYTHON = REPO / ".venv-quix" / "bin" / "python"


def say(msg: str) -> None:
    print(f"[bench_e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def environment(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import confluent_kafka

    versions: dict[str, str] = {"python": platform.python_version(), "librdkafka": confluent_kafka.libversion()[0]}
    for pkg in ("confluent-kafka", "onnxruntime", "rocksdict", "numpy", "orjson", "faust-streaming", "aiokafka",
                "lightgbm", "hdrhistogram", "psutil"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if env.quix_python:
        out = subprocess.run([env.quix_python, "-c", "import quixstreams, confluent_kafka; "
                              "print(quixstreams.__version__, confluent_kafka.version()[0])"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            versions["quixstreams"], versions["quix confluent-kafka"] = out.stdout.split()
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from engine.broker import KAFKA_VERSION
        versions["kafka"] = KAFKA_VERSION
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "versions": versions,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()], "bootstrap": env.bootstrap,
            "partitions": env.partitions, "users": env.users, "model": str(env.model_path),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}


def champion(registry: Path, model_name: str, train_events: int, partitions: int) -> tuple[Path, list[str]]:
    """The registry's champion for the default spec (trained from a synthetic history if absent)."""
    from features.clickstream import clickstream_spec
    from models.registry import Registry, RegistryError

    spec = clickstream_spec()
    reg = Registry(registry)
    try:
        ref = reg.resolve(model_name, "champion")
        manifest = orjson.loads(ref.manifest_path.read_bytes())
        if manifest.get("feature_spec") == spec.hash:
            return ref.model_path, list(manifest["feature_names"])
    except (RegistryError, OSError, KeyError):
        pass
    from features.synthetic import ClickstreamGenerator, GeneratorConfig
    from engine.loadgen import write_jsonl
    from models.pipeline import train_from_log

    say(f"training the model from {train_events:,} synthetic history events into {registry}")
    history = registry.parent / "bench-history.jsonl"
    registry.mkdir(parents=True, exist_ok=True)
    write_jsonl(history, ClickstreamGenerator(GeneratorConfig(n_events=train_events, n_users=400, seed=3,
                                                              start="2026-01-01T00:00:00Z",
                                                              jitter_ms=1_000.0)).events())
    train_from_log(history, spec, num_partitions=partitions, registry_root=registry, model_name=model_name,
                   horizon_ms=3_600_000, promote=True, log=None)
    history.unlink()
    ref = reg.resolve(model_name, "champion")
    return ref.model_path, list(spec.names)


def _short(r: dict[str, Any]) -> str:
    lat = r.get("latency_ms", {})
    return (f"{r['label']:<22} {r['mode']:<10} rate {r.get('target_rate') or 'max'}: throughput "
            f"{r.get('throughput') or 0:,.0f}/s, p50 {lat.get('p50', float('nan')):.1f} ms, p99 "
            f"{lat.get('p99', float('nan')):.1f} ms, answered {r.get('answered', 0):,}/{r['events']:,}")


def _run(env: Env, runs: list[dict[str, Any]], target: Target, mode: str, events: int,
         rate: float | None = None, scenario: str = "", **kw: Any) -> dict[str, Any] | None:
    say(f"run: {target.label} {mode} {events:,} events" + (f" at {rate:,.0f}/s" if rate else ""))
    try:
        r = run_once(env, target, mode, events, rate, **kw)
    except Exception as exc:  # noqa: BLE001 - one failed system must not lose the others' figures
        say(f"  FAILED: {exc}")
        runs.append({"label": target.label, "target": vars(target), "mode": mode, "events": events,
                     "target_rate": rate, "scenario": scenario, "error": str(exc)[-3000:]})
        return None
    r["scenario"] = scenario
    runs.append(r)
    say("  " + _short(r))
    if not r["complete"]:
        say(f"  incomplete: {r['missing']:,} events without a score")
    return r


def restore_scenario(env: Env, events: int) -> dict[str, Any]:
    """Saturation run kept on disk, then restart with the disk (restore from the store's changelog
    offset) and with a wiped disk (restore everything): seconds from process start until every
    partition is restored (the engine's "restored N changelog records" log lines), and their sum."""
    import yaml

    target = Target("streamscore", "exactly_once")
    first = run_once(env, target, "saturation", events, keep=True)
    work = next(p for p in env.root.iterdir() if p.name.startswith(f"{env.runs:02d}-"))
    conf_path = work / "engine-0.yaml"
    conf = yaml.safe_load(conf_path.read_text())
    out: dict[str, Any] = {"events": events, "throughput": first.get("throughput"), "restarts": {}}
    for case in ("restart", "wiped_disk"):
        if case == "wiped_disk":
            shutil.rmtree(conf["state_dir"], ignore_errors=True)
        procs = Procs(work)
        t0 = time.monotonic()
        procs.start(f"restore-{case}", [sys.executable, "-m", "engine.cli", "run", "--config", str(conf_path),
                                        "--log-level", "INFO"])
        log_path = work / f"restore-{case}.err"
        pattern = re.compile(r"restored (\d+) changelog records in ([\d.]+) s")
        try:
            _group_ready(env.bootstrap, conf["group_id"], env.partitions, 300, procs)
            deadline = time.monotonic() + 600  # assignment precedes the restore: await every partition's
            while len(pattern.findall(log_path.read_text(errors="replace"))) < env.partitions:
                procs.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"restore after {case} did not finish in 600 s")
                time.sleep(0.1)
            ready = time.monotonic() - t0
        finally:
            procs.stop()
        restored = [(int(n), float(s)) for n, s in pattern.findall(log_path.read_text(errors="replace"))]
        out["restarts"][case] = {"seconds_to_ready": round(ready, 2), "wall_s": round(time.monotonic() - t0, 2),
                                 "records_restored": sum(n for n, _ in restored),
                                 "restore_s_sum": round(sum(s for _, s in restored), 3)}
        say(f"  restore after {case}: {out['restarts'][case]}")
    shutil.rmtree(conf["state_dir"], ignore_errors=True)
    return out


def parse_variant(text: str) -> tuple[tuple[str, Any], ...]:
    """``"commit_pipeline=false,max_batch=500"`` -> (("commit_pipeline", False), ("max_batch", 500))."""
    import yaml

    pairs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--variant: expected KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), yaml.safe_load(value)))
    return tuple(pairs)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_e2e", description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every scenario (1 and 2 processes, 10-90 %% sweep, "
                                                        "state-size scaling, restore)")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke run (tests)")
    ap.add_argument("--engines", default="streamscore,faust,quix", help="comma list of systems to run")
    ap.add_argument("--events", type=int, default=None, help="backlog per saturation run (default 100000; full 200000)")
    ap.add_argument("--max-drain", type=float, default=None,
                    help="stop a saturation run this many seconds after its first score (default 20; full 120)")
    ap.add_argument("--seconds", type=float, default=None, help="length of each latency-vs-load run (default 10; full 30)")
    ap.add_argument("--loads", default=None, help="shares of saturation for the sweep (default 0.25,0.5,0.75; "
                                                   "full 0.1,0.3,0.5,0.7,0.9)")
    ap.add_argument("--rates", default=None, help="also run streamscore at these absolute rates (events/s, comma "
                                                   "list): variants compared at the same offered load")
    ap.add_argument("--entities", default="100000,1000000,10000000", help="state-size scaling (--full, --state-only)")
    ap.add_argument("--state-only", action="store_true",
                    help="only the state-size scaling scenario (streamscore exactly-once at each --entities)")
    ap.add_argument("--processes", default=None, help="streamscore process counts at saturation (default 1; full 1,2), "
                                                       "e.g. 1,2 for the scale-out ratio without the rest of --full")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--registry", type=Path, default=REPO / "benchmarks" / "results" / "registry")
    ap.add_argument("--train-events", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--broker-warmup", type=int, default=None,
                    help="events of a discarded streamscore drain before the measured runs, to warm the "
                         "broker up (default 100000; --tiny 0; 0 skips)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, configs)")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also run streamscore (both guarantees) with these engine config keys (YAML values), "
                         "e.g. commit_pipeline=false,max_batch=500: an A/B in one run (repeatable)")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    events = args.events or (2_000 if args.tiny else 200_000 if args.full else 100_000)
    seconds = args.seconds or (2.0 if args.tiny else 30.0 if args.full else 10.0)
    max_drain = args.max_drain or (10.0 if args.tiny else 120.0 if args.full else 20.0)
    loads = [float(x) for x in (args.loads or ("0.5" if args.tiny else "0.1,0.3,0.5,0.7,0.9" if args.full
                                               else "0.25,0.5,0.75")).split(",")]
    rates = [float(x) for x in args.rates.split(",") if x.strip()] if args.rates else []
    t_all = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="streamscore-e2e-"))
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from engine.broker import LocalBroker

        broker = LocalBroker(home=root / "home", die_with_parent=True, quiet=True)
        say("starting a local broker")
        bootstrap = broker.start(timeout=180)
    result: dict[str, Any] = {"benchmark": "e2e", "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": "python -m benchmarks.bench_e2e " + " ".join(argv if argv is not None else sys.argv[1:])}
    runs: list[dict[str, Any]] = []
    try:
        model_path, columns = champion(args.registry, "purchase", args.train_events, args.partitions)
        quix = str(QUIX_PYTHON) if QUIX_PYTHON.exists() and "quix" in engines else None
        if "quix" in engines and not quix:
            say("no .venv-quix: skipping Quix Streams (make bench-peers installs it)")
            engines.remove("quix")
        env = Env(bootstrap=bootstrap, root=root, registry=args.registry, model_name="purchase",
                  model_path=model_path, columns=columns, partitions=args.partitions, users=args.users,
                  seed=args.seed, quix_python=quix)
        result["environment"] = environment(env, args)
        result["config"] = {"events": events, "seconds": seconds, "loads": loads, "engines": engines,
                            "max_drain_s": max_drain}
        sat: dict[str, float] = {}
        targets = [Target("streamscore", "exactly_once"), Target("streamscore", "at_least_once")] \
            if "streamscore" in engines else []
        if "streamscore" in engines:
            for variant in args.variant:
                config = parse_variant(variant)
                targets += [Target("streamscore", "exactly_once", config=config),
                            Target("streamscore", "at_least_once", config=config)]
        processes = [int(x) for x in (args.processes or ("1,2" if args.full else "1")).split(",")]
        if "streamscore" in engines:
            for n in processes:
                if n > 1:
                    targets += [Target("streamscore", "exactly_once", n), Target("streamscore", "at_least_once", n)]
        if "faust" in engines:
            targets.append(Target("faust", "at_least_once"))
        if "quix" in engines:
            targets.append(Target("quix", "exactly_once"))
        warmup = args.broker_warmup if args.broker_warmup is not None else (0 if args.tiny else 100_000)
        if warmup > 0:
            say(f"broker warm-up: a discarded streamscore exactly-once drain of {warmup:,} events")
            warm_runs: list[dict[str, Any]] = []
            r = _run(env, warm_runs, Target("streamscore", "exactly_once"), "saturation", warmup,
                     scenario="broker warm-up", max_drain_s=max_drain)
            result["broker_warmup"] = {"events": warmup, "throughput": (r or {}).get("throughput"),
                                       "error": None if r else warm_runs[-1].get("error")}
        if args.state_only:
            targets = []
        for t in targets:
            r = _run(env, runs, t, "saturation", events, scenario="saturation", max_drain_s=max_drain)
            if r and r.get("throughput"):
                sat[t.label] = r["throughput"]
        for t in targets:
            if t.processes > 1 or t.label not in sat:
                continue
            levels = loads if t.engine == "streamscore" else [0.5]
            for share in levels:
                rate = sat[t.label] * share
                _run(env, runs, t, "rate", max(int(rate * seconds), 100), rate=rate, scenario=f"load {share:g}")
            for rate in rates if t.engine == "streamscore" else []:
                _run(env, runs, t, "rate", max(int(rate * seconds), 100), rate=rate, scenario=f"rate {rate:g}/s")
        if (args.full or args.state_only) and "streamscore" in engines:
            for n in (int(x) for x in args.entities.split(",")):
                env.users = n
                _run(env, runs, Target("streamscore", "exactly_once"), "saturation", int(n * 1.2),
                     scenario=f"state {n}", timeout_s=max(600.0, n / 2_000))
            env.users = args.users
        if args.full and "streamscore" in engines:
            say("restore scenario")
            result["restore"] = restore_scenario(env, events)
    finally:
        if broker is not None:
            broker.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["runs"] = runs
    result["environment"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["duration_s"] = round(time.monotonic() - t_all, 1)
    from benchmarks.report import write_report

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    table = write_report(result, args.out)
    print(table)
    say(f"wrote {args.out}/e2e.json, e2e.md and plots in {result['duration_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
