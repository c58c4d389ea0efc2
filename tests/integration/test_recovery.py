"""Crash recovery against the real broker, real RocksDB and real engine processes.

Every test feeds the same generated log (jitter, late events, bad payloads) to engine processes
that are killed with SIGKILL, stopped, restarted or stripped of their disk, and then checks what a
read_committed consumer sees against the offline replay of the same log:

* every valid, non-late event has a score record (exactly one in exactly_once mode),
* each record's feature vector is bit-identical to the offline row of that event, which is only
  possible if the windowed aggregates, the partition clocks and the lateness decisions survived
  the crashes exactly (no event applied twice, none lost),
* every bad payload and every late event is dead-lettered (exactly once in exactly_once mode).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from engine.changelog import changelog_topic
from engine.config import EngineConfig
from engine.runner import ScoringEngine
from engine.topics import TopicSpec, delete_topics, ensure_topics
from features.clickstream import clickstream_spec
from features.offline import FeatureTable, replay
from features.partitioning import kafka_partition
from features.schema import EventSchema, InvalidEvent
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import PARTITIONS, TrainedModel, produce_all, read_all
from tests.integration.engine_process import (
    CommittedOffsets,
    EngineProcess,
    EngineProcesses,
    dead_letters,
    engine_yaml,
    score_vectors,
    wait_stable,
    wait_until,
)

pytestmark = pytest.mark.integration

LOG_EVENTS = 20_000
START = datetime(2026, 2, 10, tzinfo=timezone.utc)
SESSION_MS = 6_000  # the broker's minimum: a dead member's partitions move after this
ENGINE_SCHEMA = EventSchema(max_bytes=65_536)  # the engine's default schema


@dataclass(frozen=True)
class Log:
    """A generated input log and what the offline executor says about it."""

    payloads: list[tuple[bytes, bytes]]  # (key, value) in topic order
    offline: FeatureTable  # rows of the valid, non-late events
    bad: Counter[bytes]  # invalid payloads (dead-lettered with their validation reason)
    late: Counter[bytes]  # payloads of late events (dead-lettered with reason "late")

    @property
    def expected(self) -> dict[str, bytes]:
        return {eid: row.tobytes() for eid, row in zip(self.offline.event_ids, self.offline.X)}


def make_log(n: int, seed: int) -> Log:
    gen = GeneratorConfig(n_events=n, n_users=300, seed=seed, start=START, jitter_ms=1_000.0,
                          late_fraction=0.003, late_ms=120_000.0, bad_fraction=0.002)
    labelled = list(ClickstreamGenerator(gen).labelled_payloads())
    events, bad, value_of = [], Counter(), {}
    for _, value, kind in labelled:
        try:
            event = ENGINE_SCHEMA.decode(value)
        except InvalidEvent:
            assert kind is not None
            bad[value] += 1
            continue
        assert kind is None, f"generator's {kind} payload was accepted: {value[:200]!r}"
        events.append(event)
        value_of[event["event_id"]] = value
    offline = replay(events, clickstream_spec(), num_partitions=PARTITIONS)
    late = Counter(value_of[eid] for eid in offline.late)
    assert offline.late and bad, "the log must exercise lateness and bad input"
    return Log([(k, v) for k, v, _ in labelled], offline, bad, late)


@pytest.fixture(scope="module")
def log() -> Log:
    return make_log(LOG_EVENTS, seed=23)


@dataclass(frozen=True)
class Topics:
    clicks: str
    scores: str
    dlq: str

    @property
    def group(self) -> str:
        return f"g-{self.clicks}"


@pytest.fixture
def topics(make_topic) -> Topics:  # type: ignore[no-untyped-def]
    return Topics(make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1))


def _config(path: Path, bootstrap: str, t: Topics, model: TrainedModel, instance: str, **kw: object) -> Path:
    keys: dict[str, object] = dict(
        bootstrap_servers=bootstrap, group_id=t.group, input_topic=t.clicks, scores_topic=t.scores,
        dlq_topic=t.dlq, state_dir=path / instance / "state", instance_id=instance, registry=model.registry,
        model_name=model.name, include_features=True, session_timeout_ms=SESSION_MS,
    )
    keys.update(kw)
    return engine_yaml(path / instance / "engine.yaml", keys)


def assert_outputs(bootstrap: str, t: Topics, log: Log, exactly_once: bool = True) -> None:
    """Scores: every expected event (exactly once, or at least once), every vector == offline.
    DLQ: every bad payload and late event (exactly once, or at least once), nothing else.
    First waits for a killed process's open transaction to be aborted: until then it hides the
    survivors' committed records from read_committed readers."""
    wait_stable(bootstrap, {t.scores: PARTITIONS, t.dlq: 1})
    online = score_vectors(bootstrap, t.scores, PARTITIONS)
    expected = log.expected
    missing = expected.keys() - online.keys()
    unexpected = online.keys() - expected.keys()
    assert not missing and not unexpected, (f"{len(missing)} events without a score (e.g. {sorted(missing)[:3]}), "
                                            f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
    if exactly_once:
        dupes = {eid: len(v) for eid, v in online.items() if len(v) > 1}
        assert not dupes, f"{len(dupes)} events scored more than once, e.g. {list(dupes.items())[:3]}"
    skewed = [eid for eid, vectors in online.items() if any(v != expected[eid] for v in vectors)]
    assert not skewed, f"{len(skewed)} events have vectors that differ from the offline replay: {skewed[:5]}"

    dead = dead_letters(bootstrap, t.dlq)
    assert {r for r, _ in dead} <= {"late", "malformed_json", "not_an_object", "missing_field", "wrong_type",
                                    "bad_timestamp", "oversize"}, Counter(r for r, _ in dead)
    late = Counter(v for r, v in dead if r == "late")
    bad = Counter(v for r, v in dead if r != "late")
    if exactly_once:
        assert late == log.late, "late events must be dead-lettered exactly once"
        assert bad == log.bad, "bad payloads must be dead-lettered exactly once"
    else:
        assert late.keys() == log.late.keys() and bad.keys() == log.bad.keys()


def test_kill_9_repeatedly_exactly_once(kafka_bootstrap: str, topics: Topics, trained_model: TrainedModel,
                                        log: Log, tmp_path: Path) -> None:
    """SIGKILL the engine at four points (mid-batch, mid-transaction, whatever the moment is),
    restart it on the same disk each time; once, restart it on a *stale copy* of its disk (taken
    at the first crash), which the changelog must bring forward. The outputs are exactly once
    and bit-identical to the offline replay."""
    n = len(log.payloads)
    produce_all(kafka_bootstrap, topics.clicks, log.payloads)
    config = _config(tmp_path, kafka_bootstrap, topics, trained_model, "a")
    state = tmp_path / "a" / "state"
    snapshot = tmp_path / "snapshot"
    kills_at = [int(n * f) for f in (0.12, 0.35, 0.55, 0.75)]
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, topics.group, topics.clicks,
                                                      PARTITIONS) as committed:
        at_kill: list[int] = []
        for i, threshold in enumerate(kills_at):
            if i == 3:  # the disk goes back to what it held at the first crash
                shutil.rmtree(state)
                shutil.copytree(snapshot, state)
            proc = procs.start(config, f"run{i}")
            done = wait_until(lambda: (c := committed.total()) >= threshold and c, 90,
                              f"run{i} to commit {threshold} offsets", procs.logs)
            proc.kill()
            at_kill.append(done)
            assert done < n, f"run{i} finished everything before it could be killed ({done} committed)"
            if i == 0:
                shutil.copytree(state, snapshot)
        final = procs.start(config, "final")
        wait_until(lambda: committed.total() == n, 90, "all input committed", procs.logs, poll=0.1)
        stats = final.terminate()
        stale_restart = procs.started[3]
    assert at_kill == sorted(at_kill) and len(set(at_kill)) == len(at_kill), at_kill
    # The stale disk was brought forward from the changelog (it missed ~40% of the input's state).
    assert stale_restart.restored_records() > 0, stale_restart.tail()
    # Exactly-once: the store never runs ahead of the committed offsets, so nothing is skipped.
    assert 0 < stats["consumed"] <= n - at_kill[-1] and stats["skipped_already_applied"] == 0, stats
    assert_outputs(kafka_bootstrap, topics, log)


def start_two(procs: EngineProcesses, a_cfg: Path, b_cfg: Path) -> tuple[EngineProcess, EngineProcess]:
    """Start a, then b once a holds partitions; return when they hold all partitions between them."""
    a = procs.start(a_cfg, "a")
    wait_until(lambda: a.assigned_now(), 60, "a's first assignment", procs.logs)
    b = procs.start(b_cfg, "b")
    wait_until(lambda: a.assigned_now() and b.assigned_now() and
               a.assigned_now() | b.assigned_now() == set(range(PARTITIONS)), 60,
               "both processes to hold partitions", procs.logs)
    return a, b


def test_survivor_takes_over_a_killed_member(kafka_bootstrap: str, topics: Topics, trained_model: TrainedModel,
                                             log: Log, tmp_path: Path) -> None:
    """Two processes in one group, each with its own disk. Kill one mid-stream: after the session
    timeout the survivor gets its partitions, restores their state from the changelog (it never
    had it locally), and resumes at the committed offsets: outputs exactly once, no skew."""
    n = len(log.payloads)
    a_cfg = _config(tmp_path, kafka_bootstrap, topics, trained_model, "a")
    b_cfg = _config(tmp_path, kafka_bootstrap, topics, trained_model, "b")
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, topics.group, topics.clicks,
                                                      PARTITIONS) as committed:
        a, b = start_two(procs, a_cfg, b_cfg)
        a_parts, b_parts = a.assigned_now(), b.assigned_now()
        assert not a_parts & b_parts
        produce_all(kafka_bootstrap, topics.clicks, log.payloads)

        def both_progressed() -> bool:
            offsets = committed.per_partition()
            return (sum(offsets) >= 0.3 * n and all(offsets[p] > 0 for p in a_parts)
                    and all(offsets[p] > 0 for p in b_parts))

        wait_until(both_progressed, 90, "both processes to commit progress", procs.logs)
        a.kill()
        sizes = Counter(kafka_partition(key, PARTITIONS) for key, _ in log.payloads)
        at_kill = committed.per_partition()
        assert sum(at_kill[p] for p in a_parts) < sum(sizes[p] for p in a_parts), "a had finished its work"
        wait_until(lambda: committed.total() == n, 90, "the survivor to finish", procs.logs, poll=0.1)
        assert b.alive()
        held = b.assigned_now()
        stats = b.terminate()
    assert held == set(range(PARTITIONS)), b.tail()
    takeovers = [(p, restored) for p, restored in b.assignments() if p in a_parts]
    assert {p for p, _ in takeovers} == a_parts, b.tail()
    assert all(restored > 0 for _, restored in takeovers), f"state of {a_parts} not restored: {takeovers}"
    assert stats["restored_records"] == sum(r for _, r in b.assignments()) > 0, stats
    assert stats["skipped_already_applied"] == 0, stats
    assert_outputs(kafka_bootstrap, topics, log)


def _compact(bootstrap: str, topic: str) -> int:
    """Rewrite `topic` as Kafka's log cleaner may leave it: the last record of every key (the
    latest meta record included), in offset order. Returns the records kept."""
    latest: dict[tuple[int, bytes], tuple[int, bytes | None]] = {}
    for m in read_all(bootstrap, topic, PARTITIONS):
        latest[(m.partition(), m.key())] = (m.offset(), m.value())
    delete_topics(bootstrap, [topic])
    assert ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, compacted=True)]) == [topic]
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for (partition, key), (_, value) in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[1][0])):
        producer.produce(topic, value, key, partition=partition)
    assert producer.flush(30) == 0
    return len(latest)


@pytest.mark.parametrize("compacted", [False, True], ids=["full-changelog", "compacted-changelog"])
def test_wiped_state_dir_is_restored_from_the_changelog(kafka_bootstrap: str, topics: Topics,
                                                        trained_model: TrainedModel, log: Log, tmp_path: Path,
                                                        compacted: bool) -> None:
    """First half, clean stop, state directory deleted (a lost disk), second half: the new
    process rebuilds every partition from the changelog, and the second half's vectors (which
    read windows spanning both halves) equal the offline replay. With `compacted`, the changelog
    is first reduced to what log compaction keeps (older batches lose their meta records)."""
    n, half = len(log.payloads), len(log.payloads) // 2
    config = _config(tmp_path, kafka_bootstrap, topics, trained_model, "a")
    changelog = changelog_topic(topics.group, topics.clicks, clickstream_spec().hash)
    produce_all(kafka_bootstrap, topics.clicks, log.payloads[:half])
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, topics.group, topics.clicks,
                                                      PARTITIONS) as committed:
        first = procs.start(config, "first")
        wait_until(lambda: committed.total() == half, 90, "the first half committed", procs.logs)
        first_stats = first.terminate()
        shutil.rmtree(tmp_path / "a" / "state")
        changelog_records = _compact(bootstrap=kafka_bootstrap, topic=changelog) if compacted else \
            len(read_all(kafka_bootstrap, changelog, PARTITIONS))
        produce_all(kafka_bootstrap, topics.clicks, log.payloads[half:])
        second = procs.start(config, "second")
        wait_until(lambda: committed.total() == n, 90, "the second half committed", procs.logs)
        second_stats = second.terminate()
    assert first_stats["consumed"] == half and first_stats["restored_records"] == 0, first_stats
    # Every committed changelog record was read back, and nothing else.
    assert second_stats["restored_records"] == changelog_records > 0, second_stats
    assert second_stats["consumed"] == n - half and second_stats["skipped_already_applied"] == 0, second_stats
    assert_outputs(kafka_bootstrap, topics, log)


def _rewind(bootstrap: str, t: Topics, offsets: list[int], timeout: float = 60.0) -> None:
    """Commit `offsets` for the group, as a crash between the store write and the offset commit
    leaves them (here thousands of messages back instead of one batch). Retried until the group
    is empty (the killed member is expelled after its session timeout)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": t.group, "enable.auto.commit": False})
    try:
        def attempt() -> bool:
            try:
                consumer.commit(offsets=[TopicPartition(t.clicks, p, o) for p, o in enumerate(offsets)],
                                asynchronous=False)
                return True
            except KafkaException:
                return False

        wait_until(attempt, timeout, "the group to accept the rewound offsets", poll=0.5)
    finally:
        consumer.close()


def test_kill_9_at_least_once(kafka_bootstrap: str, topics: Topics, trained_model: TrainedModel, log: Log,
                              tmp_path: Path) -> None:
    """at_least_once: kill -9 mid-run, then rewind the group's committed offsets to an earlier
    point. The restarted engine re-reads thousands of messages its store already reflects: it
    must skip exactly those (state applied once), lose nothing, and every record, repeats
    included, must carry the offline vector. Only the batch in flight at the crash may repeat."""
    n = len(log.payloads)
    max_batch = 500
    produce_all(kafka_bootstrap, topics.clicks, log.payloads)
    config = _config(tmp_path, kafka_bootstrap, topics, trained_model, "a", guarantee="at_least_once",
                     max_batch=max_batch)
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, topics.group, topics.clicks,
                                                      PARTITIONS) as committed:
        first = procs.start(config, "first")

        def early_progress() -> list[int] | None:
            offsets = committed.per_partition()
            return offsets if sum(offsets) >= 0.15 * n else None

        early = wait_until(early_progress, 90, "early progress", procs.logs)
        wait_until(lambda: committed.total() >= 0.5 * n, 90, "half the input committed", procs.logs)
        first.kill()
        _rewind(kafka_bootstrap, topics, early)
        assert committed.per_partition() == early
        second = procs.start(config, "second")
        wait_until(lambda: committed.total() == n, 90, "all input committed", procs.logs, poll=0.1)
        stats = second.terminate()
    applied = second.applied_at_assignment()
    assert set(applied) == set(range(PARTITIONS)), second.tail()
    behind = [(applied[p] or 0) - early[p] for p in range(PARTITIONS)]  # None: never processed
    assert min(behind) >= 0, (applied, early)
    rewound = sum(behind)
    assert rewound >= 0.25 * n, (applied, early)
    assert stats["skipped_already_applied"] == rewound, stats
    assert stats["consumed"] == n - sum(early), stats
    assert_outputs(kafka_bootstrap, topics, log, exactly_once=False)
    repeated = sum(len(v) - 1 for v in score_vectors(kafka_bootstrap, topics.scores, PARTITIONS).values())
    assert repeated <= max_batch, f"{repeated} repeated scores: more than the batch in flight at the crash"


def test_idle_exit_waits_for_a_killed_members_partitions(kafka_bootstrap: str, topics: Topics,
                                                        trained_model: TrainedModel, log: Log, tmp_path: Path) -> None:
    """Issue 12, item 2. A holds every partition and is killed with SIGKILL; input waits on the
    topic. B, started right away with `--idle-exit 1`, gets nothing until A's session times out
    (~6 s). That wait is not idleness: B must stay, take the partitions, consume everything,
    then stop as idle (rc 0, nothing unconsumed), with outputs exactly once."""
    n = len(log.payloads)
    half = n // 2
    a_cfg = _config(tmp_path, kafka_bootstrap, topics, trained_model, "a")
    b_cfg = _config(tmp_path, kafka_bootstrap, topics, trained_model, "b")
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, topics.group, topics.clicks,
                                                      PARTITIONS) as committed:
        a = procs.start(a_cfg, "a")
        wait_until(lambda: a.assigned_now() == set(range(PARTITIONS)), 60, "a to hold every partition", procs.logs)
        produce_all(kafka_bootstrap, topics.clicks, log.payloads[:half])
        wait_until(lambda: committed.total() >= half // 4, 90, "a to commit progress", procs.logs)
        a.kill()
        produce_all(kafka_bootstrap, topics.clicks, log.payloads[half:])
        b = procs.start(b_cfg, "b", "--idle-exit", "1")
        stats = b.wait(120)
        final = committed.total()
    assert final == n, f"b exited with {n - final} messages uncommitted: {stats}\n{b.tail()}"
    assert stats["stop_reason"] == "idle" and stats["unconsumed"] == {}, stats
    assert stats["consumed"] >= n - half, stats
    assert {p for p, _ in b.assignments()} == set(range(PARTITIONS)), b.tail()
    assert_outputs(kafka_bootstrap, topics, log)


def test_idle_exit_without_an_assignment_exits_non_zero(kafka_bootstrap: str, make_topic,  # type: ignore[no-untyped-def]
                                                        trained_model: TrainedModel, tmp_path: Path) -> None:
    """A live member holds the only partition: a second process with --idle-exit never gets one.
    It must not report success: after idle-exit + 3 session timeouts it exits with code 3, says so
    on stderr, and its summary's stop_reason is no_assignment."""
    one = Topics(make_topic("clicks", 1), make_topic("scores", 1), make_topic("dlq", 1))
    a_cfg = _config(tmp_path, kafka_bootstrap, one, trained_model, "a")
    b_cfg = _config(tmp_path, kafka_bootstrap, one, trained_model, "b")
    with EngineProcesses() as procs:
        a = procs.start(a_cfg, "a")
        wait_until(lambda: a.assigned_now() == {0}, 60, "a to hold the partition", procs.logs)
        b = procs.start(b_cfg, "b", "--idle-exit", "0.5")
        wait_until(lambda: not b.alive(), 90, "b to give up waiting for an assignment", procs.logs, poll=0.2)
        assert a.alive() and a.assigned_now() == {0}, a.tail()
        rc = b.proc.returncode
        stats = b.stats()
    assert rc == 3, b.tail()
    assert stats["stop_reason"] == "no_assignment" and stats["consumed"] == 0 and not b.assignments(), stats
    assert "no partition of" in b.log() and "Traceback" not in b.log(), b.tail()


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_sigterm_mid_stream_drains_commits_and_exits_0(kafka_bootstrap: str, topics: Topics,
                                                        trained_model: TrainedModel, log: Log, tmp_path: Path,
                                                        guarantee: str) -> None:
    """SIGTERM while input is still arriving: the process finishes its batch, commits, leaves the
    group and exits 0 in bounded time; a successor resumes at the committed offsets. Nothing is
    lost or duplicated, in both guarantees (a drained at-least-once stop repeats nothing)."""
    n = len(log.payloads)
    half = n // 2
    produce_all(kafka_bootstrap, topics.clicks, log.payloads[:half])
    config = _config(tmp_path, kafka_bootstrap, topics, trained_model, "a", guarantee=guarantee, max_batch=200)
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, topics.group, topics.clicks,
                                                      PARTITIONS) as committed:
        first = procs.start(config, "first")
        wait_until(lambda: committed.total() >= 2_000, 90, "first to commit 2,000 offsets", procs.logs)
        rest = threading.Thread(target=produce_all, args=(kafka_bootstrap, topics.clicks, log.payloads[half:]))
        rest.start()
        t0 = time.monotonic()
        stats_first = first.terminate(timeout=30)
        stopped_in = time.monotonic() - t0
        rest.join(60)
        assert "finishing the batch" in first.log()
        at_stop = committed.total()
        assert stats_first["consumed"] == at_stop, (stats_first, at_stop)  # everything consumed was committed
        second = procs.start(config, "second")
        wait_until(lambda: committed.total() == n, 90, "all input committed", procs.logs, poll=0.1)
        stats_second = second.terminate(timeout=30)
    assert stopped_in < 30
    assert stats_first["consumed"] + stats_second["consumed"] == n, (stats_first, stats_second)
    assert stats_second["skipped_already_applied"] == 0
    assert_outputs(kafka_bootstrap, topics, log, exactly_once=True)


class _AbortingEngine(ScoringEngine):
    """The engine, with an abortable error injected into the transaction commit of chosen batches
    (the Nth commits, counted from 1). The real transaction is open on the real broker with the
    batch's records and offsets in it; the engine must abort it and rewind. With the commit
    pipeline, each failing commit first waits until the next batch has been computed on top of
    the committing one, so every injected abort discards a batch in flight."""

    def __init__(self, cfg: EngineConfig, bootstrap: str, fail_commits: set[int]) -> None:
        super().__init__(cfg, bootstrap)
        self.fail_commits = fail_commits
        self.commits = 0
        self.discarded_in_flight = 0
        self._next_computed = threading.Event()

    def _commit_transaction(self, commits: list[TopicPartition], group: object) -> None:
        self.commits += 1
        if self.commits not in self.fail_commits:
            super()._commit_transaction(commits, group)
            return
        if self.cfg.commit_pipeline:
            assert self._next_computed.wait(60), "the next batch was never computed"
        self._producer.send_offsets_to_transaction(commits, group, 30)
        raise KafkaException(KafkaError(KafkaError._STATE, f"injected into commit {self.commits}",
                                        txn_requires_abort=True))

    def _settle(self, also_discard=None, in_poll=False):  # type: ignore[no-untyped-def]
        if also_discard is not None:
            self._next_computed.set()
        committed = super()._settle(also_discard, in_poll)
        self._next_computed.clear()
        if not committed and also_discard is not None:
            self.discarded_in_flight += 1
        return committed


@pytest.mark.parametrize("pipeline", [True, False])
def test_aborted_commits_rewind_exactly_once(kafka_bootstrap: str, topics: Topics, trained_model: TrainedModel,
                                             log: Log, tmp_path: Path, pipeline: bool) -> None:
    """Abortable errors at three transaction commits (with the commit pipeline: each with the next
    batch computed on top of the aborting one, and discarded with it). Nothing of an aborted
    batch is visible, clocks, states and monitors go back, the input is re-read: the outputs are
    exactly once and bit-identical to the offline replay, and every message is consumed once."""
    n = len(log.payloads)
    produce_all(kafka_bootstrap, topics.clicks, log.payloads)
    cfg = EngineConfig(group_id=topics.group, input_topic=topics.clicks, scores_topic=topics.scores,
                       dlq_topic=topics.dlq, state_dir=tmp_path / "state", registry=trained_model.registry,
                       model_name=trained_model.name, include_features=True, max_batch=300, batch_wait_ms=20,
                       commit_pipeline=pipeline)
    engine = _AbortingEngine(cfg, kafka_bootstrap, fail_commits={2, 5, 9})
    stats = engine.run(idle_exit_s=3.0, max_seconds=180)
    assert stats.stop_reason == "idle", stats.as_dict()
    assert stats.aborted_batches == 3 and stats.consumed == n, stats.as_dict()
    assert engine.discarded_in_flight == (3 if pipeline else 0)
    assert_outputs(kafka_bootstrap, topics, log)
