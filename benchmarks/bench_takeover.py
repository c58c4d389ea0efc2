"""Takeover benchmark: how long a survivor needs to resume a killed member's partitions, with and
without warm standby replicas (engine/standby.py), and the changelog restore rate.

Setup: a feature-state changelog of `--entities` entities (real end-of-stream states of a
feature-stage run, cycled over the keys; each record on its entity's partition, a meta record per
500 entities) on `--partitions` input partitions, and a model trained on generated history. Per
scenario (standby off, then on; each with its own group, changelog and state directories):

1. engine process A starts alone and restores the whole changelog; then process B joins and
   the cooperative-sticky assignor moves some partitions to B (restored there);
2. a paced stream (`--rate` events/s) keeps both scoring;
3. with standbys on, wait until B's standby replicas of A's partitions have caught up (B's
   /metrics); off, wait the same way for B's own restore only;
4. A is killed with SIGKILL. Measured: kill -> B's assignment of A's partitions (failure
   detection: the session timeout), B's restore (records, seconds; from its log), and assignment ->
   scoring: the create time of B's first score record on every one of A's partitions (the batch
   commits in its transaction right after): the takeover time. Also kill -> the first score of
   A's partitions visible to a read_committed consumer, which A's open transaction, if it had
   one, holds back until the broker aborts it (`transaction_timeout_ms` after it began).

Also: `engine.changelog.restore` of every partition of the changelog into a fresh store
(records/s, CPU seconds), as in a takeover without standby.

Runs against `KAFKA_BOOTSTRAP_SERVERS` (else a local broker it starts). Time: about 2 minutes at
the default 200,000 entities, 5-6 minutes at ``--entities 1000000`` on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from benchmarks.bench_features import machine_info
from benchmarks.bench_state import DictStore, loadavg, produce_all_of, rnd, run_feature_stage, say
from engine.broker import free_port
from engine.changelog import changelog_messages, changelog_topic, restore
from engine.config import RocksDBConfig
from engine.store import PartitionStore
from features.clickstream import clickstream_spec
from features.compute import FeatureComputer
from features.partitioning import kafka_partition
from features.schema import EventSchema
from features.synthetic import ClickstreamGenerator, GeneratorConfig

HISTORY_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
POOL_START = datetime(2026, 2, 1, tzinfo=timezone.utc)
SESSION_MS = 6_000  # the broker's minimum session timeout: failure detection takes this long
# The dead owner's open transaction hides everything after it from read_committed readers until
# the broker aborts it, this long after it began: it bounds "score visible", not the takeover.
TRANSACTION_MS = 10_000
META_EVERY = 500  # entities per synthetic changelog batch (one meta record each)

pc = time.perf_counter
_ASSIGNED = re.compile(r"^(\S+ \S+) INFO streamscore.engine: assigned \S+\[(\d+)\]: restored (\d+) changelog records "
                       r"in ([\d.]+) s", re.M)
_STANDBY = re.compile(r'^streamscore_standby_changelog_offset\{partition="(\d+)"\} (\S+)$', re.M)


def state_pool(users: int, events: int) -> tuple[list[bytes], bytes]:
    """Real encoded entity states (end of a feature-stage run) and that run's partition clock."""
    store = DictStore()
    run_feature_stage(store, FeatureComputer(clickstream_spec()), EventSchema(max_bytes=65_536),
                      [v for _, v in make_payloads_at(events, users, POOL_START)], 500)
    return list(store.d.values()), store.meta[0]


def make_payloads_at(n: int, users: int, start: datetime, seed: int = 7) -> list[tuple[bytes, bytes]]:
    cfg = GeneratorConfig(n_events=n, n_users=users, seed=seed, start=start, jitter_ms=1_000.0)
    return list(ClickstreamGenerator(cfg).payloads())


def produce_changelog(bootstrap: str, topic: str, partitions: int, entities: int, pool: list[bytes],
                      clock: bytes) -> int:
    """A compacted-changelog image of `entities` entities ``u0000000``...: each on its partition,
    a meta record (input offset 0: no input applied yet) after every META_EVERY of them.
    Returns the records written."""
    prod = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
                     "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    buckets: list[dict[str, bytes]] = [{} for _ in range(partitions)]
    records = 0

    def send(p: int) -> None:
        nonlocal records
        msgs = changelog_messages(buckets[p], clock, 0, p)
        records += len(msgs)
        buckets[p] = {}
        produce_all_of(prod, topic, msgs, p)

    for i in range(entities):
        key = f"u{i:07d}"
        p = kafka_partition(key.encode(), partitions)
        buckets[p][key] = pool[i % len(pool)]
        if len(buckets[p]) >= META_EVERY:
            send(p)
    for p in range(partitions):
        if buckets[p]:
            send(p)
    if prod.flush(180):
        raise RuntimeError(f"changelog {topic}: records undelivered")
    return records


def bench_restore_rate(bootstrap: str, topic: str, partitions: int, root: Path) -> dict[str, Any]:
    """`restore` of every partition into a fresh store, one after the other (as a takeover
    without standby): records, wall seconds, process CPU seconds (RocksDB's threads included)."""
    out = []
    for p in range(partitions):
        path = root / f"restore-{p}"
        store = PartitionStore(path, RocksDBConfig())
        cpu0 = time.process_time()
        try:
            res = restore(bootstrap, topic, p, store)
        finally:
            store.close()
        out.append({"partition": p, "records": res.records, "seconds": rnd(res.seconds, 3),
                    "cpu_s": rnd(time.process_time() - cpu0, 2), "records_per_s": rnd(res.rate)})
        shutil.rmtree(path, ignore_errors=True)
    records = sum(x["records"] for x in out)
    seconds = sum(x["seconds"] for x in out)
    cpu = sum(x["cpu_s"] for x in out)
    return {"records": records, "seconds": rnd(seconds, 3), "records_per_s": rnd(records / seconds),
            "cpu_s": rnd(cpu, 2), "records_per_cpu_s": rnd(records / cpu) if cpu else None, "partitions": out}


class Engine:
    """One `streamscore run` process of the benchmark (log to a file, /metrics on a port)."""

    def __init__(self, root: Path, name: str, keys: dict[str, Any]) -> None:
        self.name = name
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / f"{name}.log"
        cfg = root / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({**keys, "instance_id": name, "state_dir": str(root / name / "state"),
                                       "metrics_port": self.port}))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--config", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assignments(self) -> list[dict[str, Any]]:
        """Every 'assigned' log line: partition, records restored, restore seconds, and when the
        line was logged (epoch s; it is logged once the restore is done)."""
        return [{"partition": int(m.group(2)), "restored": int(m.group(3)), "restore_s": float(m.group(4)),
                 "at": datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()}
                for m in _ASSIGNED.finditer(self.log())]

    def standby_offsets(self) -> dict[int, int]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        return {int(p): int(float(v)) for p, v in _STANDBY.findall(text)}

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def wait_for(cond: Any, timeout: float, what: str, engines: Sequence[Engine]) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {e.name}\n" + "\n".join(e.log().splitlines()[-15:]) for e in engines)
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}\n{tails}")
        if any(e.proc.poll() is not None for e in engines):
            raise RuntimeError(f"an engine exited while waiting for {what}")
        time.sleep(0.1)


class ScoreWatch:
    """A reader of the scores topic: per partition, when (epoch s) each score record became
    visible to this reader, and its create time (the producing engine's clock, epoch s).

    ``read_uncommitted`` sees a record as soon as the engine produced it (its batch commits one
    transaction later); ``read_committed`` once no open transaction before it remains."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, isolation: str) -> None:
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"watch-{topic}", "enable.auto.commit": False,
                            "isolation.level": isolation, "fetch.wait.max.ms": 10})
        self._c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.seen: dict[int, list[float]] = {p: [] for p in range(partitions)}
        self.created: dict[int, list[float]] = {p: [] for p in range(partitions)}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for m in self._c.consume(10_000, timeout=0.05):
                if m.error() is None:
                    self.seen[m.partition()].append(time.time())
                    self.created[m.partition()].append(m.timestamp()[1] / 1000.0)

    def first_after(self, partitions: set[int], t: float) -> float | None:
        """When the first record of `partitions` was seen after `t`."""
        times = [x for p in partitions for x in self.seen[p] if x > t]
        return min(times) if times else None

    def first_created_after(self, partitions: set[int], t: float) -> dict[int, float]:
        """Per partition, the create time of its first record created after `t`."""
        out = {}
        for p in partitions:
            times = [x for x in self.created[p] if x > t]
            if times:
                out[p] = min(times)
        return out

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self._c.close()


def run_scenario(bootstrap: str, root: Path, args: argparse.Namespace, registry: Path, pool: list[bytes],
                 clock: bytes, standby: bool) -> dict[str, Any]:
    from engine.loadgen import produce
    from engine.topics import TopicSpec, delete_topics, ensure_topics

    tag = f"{'standby' if standby else 'plain'}-{int(time.time())}"
    clicks, scores, dlq, group = f"clicks-{tag}", f"scores-{tag}", f"dlq-{tag}", f"takeover-{tag}"
    spec = clickstream_spec()
    changelog = changelog_topic(group, clicks, spec.hash)
    ensure_topics(bootstrap, [TopicSpec(clicks, args.partitions), TopicSpec(scores, args.partitions),
                              TopicSpec(dlq, 1), TopicSpec(changelog, args.partitions, compacted=True)])
    t0 = pc()
    records = produce_changelog(bootstrap, changelog, args.partitions, args.entities, pool, clock)
    say(f"  [{tag}] changelog: {records:,} records in {pc() - t0:.1f} s")
    out: dict[str, Any] = {"standby": standby, "changelog_records": records}
    if not standby:
        say(f"  [{tag}] restore rate (fresh stores, all partitions)")
        out["restore_rate"] = bench_restore_rate(bootstrap, changelog, args.partitions, root / tag)
        say(f"    {out['restore_rate']['records_per_s']:,.0f} records/s, {out['restore_rate']['cpu_s']} CPU s")
    keys = {"bootstrap_servers": bootstrap, "group_id": group, "input_topic": clicks, "scores_topic": scores,
            "dlq_topic": dlq, "registry": str(registry), "model_name": "purchase",
            "session_timeout_ms": SESSION_MS, "transaction_timeout_ms": TRANSACTION_MS, "standby": {"replicas": 1 if standby else 0, "refresh_ms": 1000}}
    # The live stream starts a minute after the restored partition clock: nothing in it is late.
    start = datetime.fromtimestamp(int(clock) / 1000 + 60, tz=timezone.utc)
    stream = make_payloads_at(int(args.rate * args.stream_s), 20_000, start, seed=11)
    watch = ScoreWatch(bootstrap, scores, args.partitions, "read_committed")
    produced = ScoreWatch(bootstrap, scores, args.partitions, "read_uncommitted")
    engines: list[Engine] = []
    stop_stream = threading.Event()
    producer: threading.Thread | None = None
    try:
        a = Engine(root / tag, "a", keys)
        engines.append(a)
        wait_for(lambda: len(a.assignments()) >= args.partitions, 600, "A's restore of every partition", engines)
        out["a_initial_restore"] = a.assignments()
        b = Engine(root / tag, "b", keys)
        engines.append(b)
        wait_for(lambda: b.assignments(), 600, "B's first assignment", engines)
        live = (p for p in stream if not stop_stream.is_set())  # ends when the scenario does
        producer = threading.Thread(target=lambda: produce(bootstrap, clicks, live, rate=args.rate,
                                                           progress_every=0), daemon=True)
        producer.start()

        def a_parts() -> set[int]:
            held = {x["partition"] for x in a.assignments()}
            return held - {x["partition"] for x in b.assignments()}

        wait_for(lambda: watch.first_after(a_parts(), 0) and watch.first_after({x["partition"] for x in b.assignments()}, 0),
                 300, "both processes to score", engines)
        parts = a_parts()
        if standby:
            ends = {p: _changelog_end(bootstrap, changelog, p) for p in parts}
            t_wait = pc()
            wait_for(lambda: all(b.standby_offsets().get(p, -1) >= ends[p] - 1 for p in parts), 600,
                     "B's standbys to catch up", engines)
            out["standby_catch_up_s"] = rnd(pc() - t_wait, 1)
        time.sleep(2.0)  # steady scoring on both before the kill (not a synchronisation)
        load = loadavg()
        killed_at = time.time()
        a.kill()
        def taken_over() -> list[dict[str, Any]]:
            return [x for x in b.assignments() if x["partition"] in parts and x["at"] > killed_at]

        # B scores a partition only once its restore is done (logged): a score visible after
        # that is B's (A died a session timeout earlier; the watch keeps up with the stream).
        # A record created after the kill is B's (A is dead); B scores a partition only once its
        # restore is done (logged), so a record seen after that by the read_committed reader is B's too.
        wait_for(lambda: {x["partition"] for x in taken_over()} == parts
                 and len(produced.first_created_after(parts, killed_at)) == len(parts)
                 and watch.first_after(parts, max(x["at"] for x in taken_over())), 120, "B to score A's partitions", [b])
        took = taken_over()
        restored_at = max(x["at"] for x in took)
        assigned_at = min(x["at"] - x["restore_s"] for x in took)
        first_produced = max(produced.first_created_after(parts, killed_at).values())  # every partition scored
        first_score = watch.first_after(parts, restored_at)
        assert first_score is not None
        out.update({
            "partitions_taken_over": sorted(parts),
            "restored_records": sum(x["restored"] for x in took),
            "restore_s": rnd(sum(x["restore_s"] for x in took), 3),
            "kill_to_assignment_s": rnd(assigned_at - killed_at, 2),
            "assignment_to_restored_s": rnd(restored_at - assigned_at, 2),
            "assignment_to_scoring_s": rnd(first_produced - assigned_at, 2),
            "kill_to_scoring_s": rnd(first_produced - killed_at, 2),
            "kill_to_first_score_visible_s": rnd(first_score - killed_at, 2),
            "loadavg_at_kill": load,
        })
        say(f"  [{tag}] takeover: restored {out['restored_records']:,} records in {out['restore_s']} s; "
            f"assignment -> scoring {out['assignment_to_scoring_s']} s; "
            f"kill -> scoring {out['kill_to_scoring_s']} s, "
            f"-> first score visible {out['kill_to_first_score_visible_s']} s")
    finally:
        stop_stream.set()
        if producer is not None:
            producer.join(30)
        for e in engines:
            e.kill(signal.SIGTERM if e.proc.poll() is None else signal.SIGKILL)
        watch.close()
        produced.close()
        delete_topics(bootstrap, [clicks, scores, dlq, changelog])  # ~1 GB at 1M entities on a shared broker
    return out


def _changelog_end(bootstrap: str, topic: str, partition: int) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "x", "isolation.level": "read_committed"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1]
    finally:
        c.close()


def train_model(root: Path, events: int, partitions: int) -> Path:
    from engine.loadgen import write_jsonl
    from models.pipeline import train_from_log

    history = root / "history.jsonl"
    cfg = GeneratorConfig(n_events=events, n_users=400, seed=3, start=HISTORY_START, jitter_ms=1_000.0)
    write_jsonl(history, ClickstreamGenerator(cfg).events())
    registry = root / "registry"
    train_from_log(history, clickstream_spec(), num_partitions=partitions, registry_root=registry, model_name="purchase",
                   horizon_ms=3_600_000, promote=True, log=lambda s: None)
    return registry


def bootstrap_servers(root: Path) -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    from engine.broker import LocalBroker

    broker = LocalBroker(home=root / "home", die_with_parent=True, quiet=True)
    try:
        yield broker.start(timeout=120)
    finally:
        broker.stop()


def print_report(res: dict[str, Any]) -> None:
    print(f"\ntakeover at {res['entities']:,} entities on {res['partitions']} partitions "
          f"(stream {res['rate']} events/s; session timeout {SESSION_MS} ms, transaction timeout "
          f"{TRANSACTION_MS} ms):")
    print("| standby | restored records | restore s | assignment -> scoring s "
          "| kill -> scoring s | kill -> first score visible (read_committed) s |")
    print("|---|---|---|---|---|---|")
    for s in res["scenarios"]:
        print(f"| {'on' if s['standby'] else 'off'} | {s['restored_records']:,} | {s['restore_s']} | "
              f"{s['assignment_to_scoring_s']} | {s['kill_to_scoring_s']} | "
              f"{s['kill_to_first_score_visible_s']} |")
    rr = res["scenarios"][0].get("restore_rate")
    if rr:
        print(f"restore into fresh stores: {rr['records']:,} records, {rr['records_per_s']:,.0f} records/s, "
              f"{rr['records_per_cpu_s'] or 0:,.0f} records per CPU-second")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_takeover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=200_000, help="entities in the changelog (default 200000)")
    ap.add_argument("--partitions", type=int, default=2, help="input partitions (default 2)")
    ap.add_argument("--rate", type=float, default=1_000.0, help="events/s of the live stream (default 1000)")
    ap.add_argument("--stream-s", type=float, default=600.0, help="longest the live stream runs (s)")
    ap.add_argument("--train-events", type=int, default=20_000, help="history events to train the model")
    ap.add_argument("--skip", default="", help="comma list of scenarios to skip: plain,standby")
    ap.add_argument("--json", dest="json_path", type=Path, default=None, help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    res: dict[str, Any] = {"benchmark": "takeover", "entities": args.entities, "partitions": args.partitions,
                           "rate": args.rate, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "machine": machine_info(), "loadavg_before": loadavg()}
    try:
        say(f"state pool and model ({args.train_events:,} history events)")
        pool, clock = state_pool(5_000, 100_000)
        res["state_bytes_mean"] = rnd(sum(map(len, pool)) / len(pool))
        registry = train_model(root, args.train_events, args.partitions)
        for bootstrap in bootstrap_servers(root):
            res["scenarios"] = [run_scenario(bootstrap, root, args, registry, pool, clock, standby)
                                for standby in (False, True)
                                if ("standby" if standby else "plain") not in args.skip.split(",")]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    res["loadavg_after"] = loadavg()
    print_report(res)
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        say(f"wrote {args.json_path}")
    return res


if __name__ == "__main__":
    main()
