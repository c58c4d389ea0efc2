"""Run the engine as a real OS process (`python -m engine.cli run --config <yaml>`) for crash tests.

    cfg = engine_yaml(tmp_path / "a.yaml", bootstrap_servers=..., group_id=..., state_dir=..., ...)
    with EngineProcesses() as procs, CommittedOffsets(bootstrap, group, topic, partitions) as committed:
        a = procs.start(cfg, "a")
        wait_until(lambda: committed.total() >= 5_000, 60, "progress", procs.logs)
        a.kill()                       # kill -9: no flush, no commit, no close
        b = procs.start(cfg, "a2")     # same config: same state_dir and instance_id
        stats = b.terminate()          # SIGTERM: finish the batch, commit, print the JSON stats

Every process started through `EngineProcesses` is killed (SIGKILL) when the block exits, whatever
happened. Logs (stderr) and stdout go to files next to the config, so a failing test can show
them; `restored_records()` reads the engine's "assigned ...: restored N changelog records" log
lines, the only evidence a killed process leaves.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from engine.config import EngineConfig, MonitorConfig, QueryConfig, RocksDBConfig, SessionsConfig, StandbyConfig
from engine.retrain_config import RetrainConfig
from engine.records import headers_dict
from features.schema import EventSchema
from features.spec import FeatureSpec

REPO = Path(__file__).resolve().parents[2]
_ASSIGNED = re.compile(r"assigned (\S+)\[(\d+)\]: restored (\d+) changelog records.*state reflects offsets < (\w+)")
_REVOKED = re.compile(r"revoked (\S+)\[(\d+)\]")


def _plain(value: Any) -> Any:
    """A YAML-safe form of a config value (paths, specs, nested dataclasses)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, FeatureSpec):
        return value.to_dict()
    if isinstance(value, RetrainConfig):
        return value.to_mapping()
    if isinstance(value, (RocksDBConfig, EventSchema, MonitorConfig, QueryConfig, SessionsConfig, StandbyConfig)):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def engine_yaml(path: Path, config: EngineConfig | Mapping[str, Any] | None = None, **keys: Any) -> Path:
    """Write an engine YAML config to `path`: the given EngineConfig (every field) or mapping,
    updated with `keys`. Returns `path`."""
    if isinstance(config, EngineConfig):
        raw: dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    else:
        raw = dict(config or {})
    raw.update(keys)
    doc = {k: _plain(v) for k, v in raw.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class EngineProcess:
    """One `streamscore run` OS process."""

    def __init__(self, config: Path, name: str, extra_args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.name = name
        self.stdout_path = config.parent / f"{name}.stdout"
        self.log_path = config.parent / f"{name}.log"
        env = dict(os.environ)
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # the YAML says where the broker is
        env.setdefault("STREAMSCORE_HOME", str(config.parent / ".streamscore"))
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.stdout_path, "wb") as out, open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "run", "--config", str(config), "--log-level", "INFO",
                 *extra_args],
                cwd=REPO, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )
        self.killed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 and reap."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.killed = True

    def terminate(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGTERM (clean stop: finish the batch, commit, close) and return the JSON stats line."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for a clean exit (rc 0) and return the JSON stats it printed."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"engine {self.name} did not exit within {timeout} s\n{self.tail()}") from None
        assert rc == 0, f"engine {self.name} exited with {rc}\n{self.tail()}"
        return self.stats()

    def stats(self) -> dict[str, Any]:
        lines = [ln for ln in self.stdout_path.read_bytes().splitlines() if ln.startswith(b"{")]
        assert lines, f"engine {self.name} printed no stats\n{self.tail()}"
        return orjson.loads(lines[-1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 40) -> str:
        return f"--- {self.log_path} (last {n} lines) ---\n" + "\n".join(self.log().splitlines()[-n:])

    def assignments(self) -> list[tuple[int, int]]:
        """(partition, restored changelog records) of every assignment logged so far."""
        return [(int(m.group(2)), int(m.group(3))) for m in _ASSIGNED.finditer(self.log())]

    def assigned_now(self) -> set[int]:
        """Partitions held according to the log (assigned and not revoked since)."""
        held: set[int] = set()
        for line in self.log().splitlines():
            if (m := _ASSIGNED.search(line)) is not None:
                held.add(int(m.group(2)))
            elif (m := _REVOKED.search(line)) is not None:
                held.discard(int(m.group(2)))
        return held

    def applied_at_assignment(self) -> dict[int, int | None]:
        """partition -> the input offset its store reflected after restore, at its last assignment."""
        return {int(m.group(2)): None if m.group(4) == "None" else int(m.group(4))
                for m in _ASSIGNED.finditer(self.log())}

    def restored_records(self) -> int:
        return sum(n for _, n in self.assignments())


class EngineProcesses:
    """Starts engine processes; SIGKILLs any still running on exit."""

    def __init__(self) -> None:
        self.started: list[EngineProcess] = []

    def start(self, config: Path, name: str, *extra_args: str) -> EngineProcess:
        p = EngineProcess(config, name, tuple(extra_args))
        self.started.append(p)
        return p

    def __enter__(self) -> EngineProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.started:
            if p.alive():
                p.kill()

    def logs(self) -> str:
        """Tails of every process's log, for assertion messages."""
        return "\n".join(p.tail(25) for p in self.started)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               on_timeout: Callable[[], str] | None = None, poll: float = 0.05) -> Any:
    """Poll `predicate` until it returns a truthy value (returned); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{extra}")
        time.sleep(poll)


_COORDINATOR_MOVING = frozenset((KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                 KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT))


class CommittedOffsets:
    """A reusable reader of a group's committed offsets on a topic (one consumer, many polls)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                   "enable.auto.commit": False,
                                   "isolation.level": "read_uncommitted"})  # no wait on open transactions

    def per_partition(self, timeout: float = 30.0) -> list[int]:
        """Committed offset per partition (0 where none). Retries while the group coordinator
        moves or loads (a fresh broker answers NOT_COORDINATOR for a while)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return [max(tp.offset, 0) for tp in self._consumer.committed(self._tps, timeout=10)]
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def total(self) -> int:
        return sum(self.per_partition())

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> CommittedOffsets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading what the engine wrote ------------------------------------------------------------


def vector_bytes(features: Mapping[str, float | None]) -> bytes:
    """The float32 bytes of a score record's feature vector (null = NaN): a cheap exact digest,
    comparable with ``FeatureTable.X[i].tobytes()``."""
    return np.array([np.nan if v is None else v for v in features.values()], np.float32).tobytes()


def wait_stable(bootstrap: str, topics: Mapping[str, int], timeout: float = 60.0) -> None:
    """Wait until no open transaction holds back read_committed readers of `topics` (name ->
    partitions): every partition's last stable offset equals its high watermark. After a process
    is killed mid-transaction that takes up to the transaction timeout plus the broker's abort
    check interval; call it once the surviving writers have stopped."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]

    def ends(level: IsolationLevel) -> dict[tuple[str, int], int]:
        futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, isolation_level=level,
                                     request_timeout=10)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def stable() -> bool:
        return ends(IsolationLevel.READ_COMMITTED) == ends(IsolationLevel.READ_UNCOMMITTED)

    wait_until(stable, timeout, f"open transactions on {sorted(topics)} to be aborted", poll=0.2)


def scan_topic(bootstrap: str, topic: str, partitions: int, on_message: Callable[[Any], None],
               timeout: float = 120.0) -> int:
    """Call `on_message` for every committed record of `topic` (read_committed, from offset 0,
    until each partition reports its end) without keeping them; return the count. Call it once
    the writers have stopped (or committed everything), so the end is final."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"scan-{topic}-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "fetch.max.bytes": 52_428_800})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    at_end: set[int] = set()
    count = 0
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: partitions {set(range(partitions)) - at_end} did not reach the end")
            for m in consumer.consume(2000, timeout=0.2):
                err = m.error()
                if err is None:
                    on_message(m)
                    count += 1
                    at_end.discard(m.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    raise AssertionError(f"{topic}: {err}")
    finally:
        consumer.close()
    return count


def score_vectors(bootstrap: str, topic: str, partitions: int) -> dict[str, list[bytes]]:
    """event_id -> feature-vector digests of every committed score record (one per record, so
    duplicates show as lists longer than 1). Asserts each record's key is its entity."""
    out: dict[str, list[bytes]] = {}

    def take(m: Any) -> None:
        r = orjson.loads(m.value())
        assert m.key().decode() == r["entity"], r
        assert r["variant"] == "champion", r
        out.setdefault(r["event_id"], []).append(vector_bytes(r["features"]))

    scan_topic(bootstrap, topic, partitions, take)
    return out


def dead_letters(bootstrap: str, topic: str) -> list[tuple[str, bytes]]:
    """(reason header, original value) of every committed dead letter of a 1-partition DLQ."""
    out: list[tuple[str, bytes]] = []
    scan_topic(bootstrap, topic, 1, lambda m: out.append((headers_dict(m.headers())["reason"], m.value())))
    return out
