"""One benchmark run of one system under test: fresh topics, its processes, open-loop load, measurement.

A run (`run_once`) is either
* ``saturation``: the whole stream is produced first (a backlog), then the system's processes
  start and drain it; throughput = scored events / (last score visible - first score visible);
* ``rate``: the processes start, join their group, then the load process sends the stream on a
  fixed schedule (`benchmarks.openloop`); latency = score visible - intended send time.

Systems (`Target`): ``streamscore`` (`streamscore run`, exactly-once or at-least-once, 1..n
processes), ``faust`` and ``quix`` (benchmarks/peers). Every system reads the same bytes from a
topic of the same partition count, on the same broker, and publishes JSON score records keyed by
user with the event's ``event_id``; the harness measures all of them from the outside with the
same read_committed consumer, process sampler and lag sampler (`benchmarks.measure`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.measure import (LagSampler, ProcessSampler, ScoreReader, cdf_points, cpu_in_span, latency_account,
                                per_second)
from benchmarks.openloop import LoadSpec

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("streamscore", "faust", "quix")


@dataclass(frozen=True)
class Target:
    """A system under test: `engine` (one of ENGINES), its guarantee and process count."""

    engine: str
    guarantee: str = "exactly_once"
    processes: int = 1
    max_batch: int | None = None  # streamscore only (None: the engine's default)
    # streamscore only: more engine config keys, e.g. (("commit_pipeline", False),); named in the label
    config: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        g = {"exactly_once": "EOS", "at_least_once": "ALO"}[self.guarantee]
        extra = "".join(f" {k}={v}" for k, v in self.config)
        return f"{self.engine} {g}" + (f" x{self.processes}" if self.processes > 1 else "") + extra


@dataclass
class Env:
    """What every run of one benchmark invocation shares."""

    bootstrap: str
    root: Path  # scratch directory (topics' state dirs, configs, logs)
    registry: Path
    model_name: str
    model_path: Path
    columns: list[str]
    partitions: int = 4
    users: int = 5_000
    seed: int = 7
    quix_python: str | None = None  # the Quix peer's interpreter (its own venv), None: skip quix
    runs: int = 0
    logs: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """The processes of one system under test; stopped with SIGTERM, killed after a grace."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(self.workdir / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
        err = open(self.workdir / f"{name}.err", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err, env={**os.environ, **(env or {})},
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    @property
    def pids(self) -> list[int]:
        return [p.pid for _, p in self.procs]

    def check_alive(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                tail = (self.workdir / f"{name}.err").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {p.returncode} before the run ended:\n{tail}")

    def stop(self, grace_s: float = 20.0) -> dict[str, int | None]:
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        codes: dict[str, int | None] = {}
        for name, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            codes[name] = p.returncode
        return codes


def _group_ready(bootstrap: str, group: str, partitions: int, timeout_s: float, procs: Procs) -> float:
    """Wait until `group` is stable with all `partitions` assigned; returns the seconds waited."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        procs.check_alive()
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
            assigned = sum(len(m.assignment.topic_partitions) for m in desc.members if m.assignment)
            if desc.state == ConsumerGroupState.STABLE and assigned >= partitions:
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - the group does not exist yet
            pass
        time.sleep(0.25)
    raise TimeoutError(f"group {group} not stable with {partitions} partitions assigned after {timeout_s} s")


def _scrape(port: int) -> dict[str, float]:
    """streamscore's stage totals and input count from its /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("streamscore_stage_seconds_sum{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            out[stage] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("streamscore_events_in_total "):
            out["_events"] = float(line.rsplit(" ", 1)[1])
    return out


def _start_target(env: Env, target: Target, tag: str, topics: dict[str, str], work: Path,
                  procs: Procs) -> tuple[str, list[int]]:
    """Start the system's processes; returns its consumer group and the metrics ports (streamscore)."""
    import yaml

    ports: list[int] = []
    if target.engine == "streamscore":
        group = f"ss-{tag}"
        for i in range(target.processes):
            port = free_port()
            ports.append(port)
            conf = {"bootstrap_servers": env.bootstrap, "group_id": group, "input_topic": topics["in"],
                    "scores_topic": topics["out"], "dlq_topic": topics["dlq"], "guarantee": target.guarantee,
                    "state_dir": str(work / f"state-{i}"), "registry": str(env.registry),
                    "model_name": env.model_name, "instance_id": f"{tag}-{i}", "metrics_port": port}
            if target.max_batch:
                conf["max_batch"] = target.max_batch
            conf.update(target.config)
            path = work / f"engine-{i}.yaml"
            path.write_text(yaml.safe_dump(conf))
            procs.start(f"streamscore-{i}", [sys.executable, "-m", "engine.cli", "run", "--config", str(path),
                                             "--log-level", "WARNING"])
        return group, ports
    group = f"{target.engine}-{tag}"
    peer = {"bootstrap": env.bootstrap, "app_id": group, "input_topic": topics["in"], "scores_topic": topics["out"],
            "partitions": env.partitions, "model_path": str(env.model_path), "columns": env.columns,
            "state_dir": str(work / "state"), "guarantee": target.guarantee}
    path = work / "peer.json"
    path.write_bytes(orjson.dumps(peer))
    if target.engine == "faust":
        procs.start("faust", [sys.executable, "-m", "benchmarks.peers.faust_app", "worker", "-l", "warn"],
                    env={"BENCH_PEER_CONFIG": str(path)})
    elif target.engine == "quix":
        if not env.quix_python:
            raise RuntimeError("the Quix peer needs its virtualenv: make bench-peers (see benchmarks/README.md)")
        procs.start("quix", [env.quix_python, str(REPO / "benchmarks/peers/quix_app.py"), str(path)])
    else:
        raise ValueError(f"unknown engine {target.engine!r}; known: {ENGINES}")
    return group, ports


def _create_topics(env: Env, tag: str) -> dict[str, str]:
    from engine.topics import TopicSpec, ensure_topics

    topics = {"in": f"bench-{tag}-clicks", "out": f"bench-{tag}-scores", "dlq": f"bench-{tag}-dlq"}
    ensure_topics(env.bootstrap, [TopicSpec(topics["in"], env.partitions), TopicSpec(topics["out"], env.partitions),
                                  TopicSpec(topics["dlq"], 1)])
    return topics


def _load(env: Env, topics: dict[str, str], work: Path, events: int, rate: float | None,
          event_time_start_s: float, seed: int | None = None) -> subprocess.Popen[bytes]:
    """Start the load process (it sends as soon as its payloads are generated)."""
    work.mkdir(parents=True, exist_ok=True)
    spec = LoadSpec(bootstrap=env.bootstrap, topic=topics["in"], events=events, users=env.users,
                    seed=env.seed if seed is None else seed, rate=rate, start_at=0.0, out_dir=str(work),
                    event_time_start_ms=int(event_time_start_s * 1000))
    path = work / "load-spec.json"
    path.write_bytes(orjson.dumps(asdict(spec)))
    return subprocess.Popen([sys.executable, "-m", "benchmarks.openloop", "--spec", str(path)], cwd=REPO,
                            stdout=open(work / "load.out", "wb"), stderr=open(work / "load.err", "wb"))  # noqa: SIM115


def _wait_load(proc: subprocess.Popen[bytes], work: Path, timeout_s: float) -> dict[str, Any]:
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"load process did not finish in {timeout_s:.0f} s") from None
    if code != 0:
        raise RuntimeError(f"load process failed ({code}): {(work / 'load.err').read_text()[-2000:]}")
    return orjson.loads((work / "load.json").read_bytes())


WARMUP_EVENTS = 1_000
WARMUP_EVENT_TIME_OFFSET_S = 30 * 86_400  # warm-up events lie in the past: the measured ones are never late


def _warm_up(env: Env, topics: dict[str, str], work: Path, reader: ScoreReader, timeout_s: float) -> dict[str, Any]:
    """Send WARMUP_EVENTS (another seed, event time a month back) and wait until all are scored:
    the system's start-up (group join, state restore, first fetches, model load) is then behind
    it and out of the measured latencies. The reader forgets them."""
    t0 = time.monotonic()
    _wait_load(_load(env, topics, work / "warmup", WARMUP_EVENTS, None, time.time() - WARMUP_EVENT_TIME_OFFSET_S,
                     seed=env.seed + 1_000), work / "warmup", timeout_s)
    scored = reader.wait_for(WARMUP_EVENTS, timeout_s)
    reader.reset()
    return {"events": WARMUP_EVENTS, "seconds": round(time.monotonic() - t0, 2), "all_scored": scored}


def run_once(env: Env, target: Target, mode: str, events: int, rate: float | None = None,
             timeout_s: float = 600.0, keep: bool = False, max_drain_s: float | None = None) -> dict[str, Any]:
    """One run (see the module docstring); returns its figures. `rate` (events/s) for mode 'rate'.
    `max_drain_s` (saturation): stop measuring this long after the first score even if the backlog
    is not drained (a slow system then reports its rate over that span, `complete` False)."""
    if mode not in ("saturation", "rate"):
        raise ValueError(f"mode must be saturation or rate, got {mode!r}")
    env.runs += 1
    tag = f"{env.runs:02d}-{target.engine}-{target.guarantee[:3]}-{target.processes}-{mode}-{os.getpid()}"
    work = env.root / tag
    work.mkdir(parents=True)
    topics = _create_topics(env, tag)
    procs = Procs(work)
    reader = ScoreReader(env.bootstrap, topics["out"], env.partitions).start()
    result: dict[str, Any] = {"target": asdict(target), "label": target.label, "mode": mode, "events": events,
                              "target_rate": rate, "partitions": env.partitions}
    t_start = time.time()
    try:
        if mode == "saturation":
            result["load"] = _wait_load(_load(env, topics, work, events, None, time.time()), work, timeout_s)
        group, ports = _start_target(env, target, tag, topics, work, procs)
        sampler = ProcessSampler(procs.pids).start()
        lag = LagSampler(env.bootstrap, group, topics["in"], env.partitions).start()
        try:
            result["ready_s"] = round(_group_ready(env.bootstrap, group, env.partitions, 120, procs), 2)
            if mode == "rate":
                result["warmup"] = _warm_up(env, topics, work, reader, timeout_s)
                load = _load(env, topics, work, events, rate, time.time())
            t_measure = time.time()
            done = False
            deadline = time.monotonic() + timeout_s
            while not done and time.monotonic() < deadline:
                done = reader.wait_for(events, timeout_s=1.0)
                procs.check_alive()
                if max_drain_s and reader.first_seen and time.time() - reader.first_seen > max_drain_s:
                    break
            if mode == "rate":
                result["load"] = _wait_load(load, work, 60)
            stages = [_scrape(p) for p in ports] if ports else []
        finally:
            result["resources"] = sampler.stop()
            result["lag"] = lag.stop()
            result["exit_codes"] = procs.stop()
        index, visible = reader.stop()
        intended = np.load(work / "intended.npy")
        result.update(latency_account(intended, index, visible, expected=events))
        result["complete"] = result["answered"] >= events
        answered = np.unique(index[(index >= 0) & (index < len(intended))])
        first = np.full(len(intended), np.inf)
        np.minimum.at(first, index, visible)
        ok = np.isfinite(first)
        result["latency_cdf"] = cdf_points(first[ok] - intended[ok])
        result["out_per_s"] = per_second(first[ok], t_measure)
        if mode == "saturation":
            result["throughput"] = result.get("out_rate")
        else:
            result["throughput"] = round(len(answered) / max(float(first[ok].max()) - intended[0], 1e-9), 1) if ok.any() else 0
        if stages:
            result["stages"] = stage_breakdown(stages)
        result["wall_s"] = round(time.time() - t_start, 1)
        # CPU while the measured events flowed (first score visible .. last), not start-up or idle.
        span0 = float(first[ok].min()) if mode == "saturation" and ok.any() else float(intended[0])
        cpu = cpu_in_span(result["resources"], span0, float(first[ok].max())) if ok.any() else None
        result["resources"]["cpu_in_span"] = cpu
        if cpu and result.get("throughput"):
            result["events_per_cpu_s"] = round(result["throughput"] / cpu, 1)
        result["state_disk_mb"] = round(sum(_du(p) for p in work.glob("state*")) / 1e6, 2)
    finally:
        if reader._thread.is_alive():  # noqa: SLF001 - an exception left it running
            reader.stop()
        procs.stop()
        if not keep:
            shutil.rmtree(work / "state", ignore_errors=True)
            for p in work.glob("state-*"):
                shutil.rmtree(p, ignore_errors=True)
    return result


def _du(path: Path) -> int:
    """Bytes allocated under `path` (`du -sB1`)."""
    out = subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout else 0


def stage_breakdown(scrapes: list[dict[str, float]]) -> dict[str, Any]:
    """Per-stage µs per event and share, summed over the engine processes."""
    totals: dict[str, float] = {}
    events = 0.0
    for s in scrapes:
        events += s.get("_events", 0.0)
        for k, v in s.items():
            if not k.startswith("_"):
                totals[k] = totals.get(k, 0.0) + v
    whole = sum(totals.values())
    return {"events": int(events), "seconds": {k: round(v, 3) for k, v in totals.items()},
            "us_per_event": {k: round(1e6 * v / events, 2) for k, v in totals.items()} if events else {},
            "share": {k: round(v / whole, 3) for k, v in totals.items()} if whole else {}}
