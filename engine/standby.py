"""Warm standby replicas: local copies of partitions this process does not own, kept current.

With ``standby.replicas`` = r > 0, a background thread keeps, for each input partition chosen for
this process (`standby_partitions`), the partition's RocksDB store under the usual path
``state_dir/<spec hash>/<topic>-<partition>`` up to date by reading the partition's changelog
(read_committed, ``assign()`` only, never in a consumer group) through the same
`ChangelogReplay` as a restore. When the group then assigns such a partition to this process,
the ordinary `engine.changelog.restore` starts from the store's changelog offset and replays only
the tail the standby had not applied yet: a takeover costs the tail, not the whole changelog.

Nothing about exactly-once changes: a standby store only ever holds complete, committed
changelog batches together with the changelog offset they reflect (exactly what a store left
behind by an earlier owner holds), and the owner's restore path is the one every assignment
takes. The standby store is never read for scoring or queries while it is a standby.

Which partitions: every `refresh_ms` the thread describes the consumer group (the broker's view
of members and their assignments). For each partition with an owner, the standbys are the
`replicas` other members that rank first by a hash of (partition, member id) (rendezvous
hashing: deterministic, spread evenly, and a membership change moves few standbys). Member ids
change when a process restarts, so a restart reshuffles its standbys. With ``replicas`` >= the
number of members - 1, every process stands by for every partition it does not own, so whoever
the assignor picks after a failure has a warm copy; with fewer, the assignor (cooperative-sticky,
which knows nothing of standbys) may pick a member without one, which then restores in full.

Ownership hand-over between the loop and the thread (one RocksDB handle per directory): the
loop calls `release(p)` before it opens partition p's store (on assignment) and `unown(p)` after
it closed it (on revocation). `release` waits for the thread to finish its current write and
closes the standby's handle (flushing it) before it returns.

Cost: the thread applies changelog records at the restore rate while it catches up (sharing the
interpreter with the loop; a hand-over waits for at most one slice of `FEED_BATCH` messages), then
only the owners' changelog traffic, plus one group description per `refresh_ms`. Disk: one store
per standby partition.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, Counter, Gauge

from engine.changelog import ChangelogReplay, changelog_reader_settings
from engine.config import RocksDBConfig, StandbyConfig
from engine.kafka_clients import client_settings
from engine.store import PartitionStore

log = logging.getLogger("streamscore.standby")

FEED_BATCH = 2_000  # messages per consume(): bounds how long `release` may wait for the lock
POLL_S = 0.2  # longest consume() wait: how soon the thread notices stop() or a new choice


def standby_partitions(owners: Mapping[int, str], members: Collection[str], me: str, replicas: int) -> set[int]:
    """The partitions `me` keeps standby replicas of.

    `owners`: partition -> member id of its owner (partitions without an owner get no standby);
    `members`: every member id of the group. A partition's standbys are the `replicas` members
    other than its owner with the smallest blake2b(partition, member id); `me` keeps the
    partitions it is one of those for. Pure and deterministic: every member computing this from
    the same group description agrees on every partition's standbys.
    """
    if replicas <= 0 or me not in members:
        return set()
    mine: set[int] = set()
    for partition, owner in owners.items():
        if owner == me:
            continue
        ranked = sorted((m for m in members if m != owner), key=lambda m: _rank(partition, m))
        if me in ranked[:replicas]:
            mine.add(partition)
    return mine


def _rank(partition: int, member: str) -> bytes:
    return hashlib.blake2b(f"{partition}\x00{member}".encode(), digest_size=8).digest()


class StandbyMetrics:
    """The standby thread's metrics, in the engine's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.partitions = Gauge("streamscore_standby_partitions", "Partitions kept as warm standby replicas",
                                registry=registry)
        self.records = Counter("streamscore_standby_records", "Changelog records applied to standby replicas",
                               registry=registry)
        self.offset = Gauge("streamscore_standby_changelog_offset",
                            "Next changelog offset a standby replica has not applied yet", ["partition"],
                            registry=registry)


class StandbyReplicas:
    """The background thread that keeps this process's standby replicas current.

    Thread-safety: `release`, `unown` and `stop` are called by the processing loop (the
    consumer's rebalance callbacks run on it); everything else runs on the thread. A lock
    guards the replicas and the owned set; Kafka and admin calls happen outside it.
    """

    def __init__(self, cfg: StandbyConfig, *, bootstrap: str, group_id: str, input_topic: str, changelog: str,
                 state_root: Path, rocksdb: RocksDBConfig, member_id: Callable[[], str | None],
                 registry: CollectorRegistry, client: Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg
        self._group = group_id
        self._input = input_topic
        self._changelog = changelog
        self._state_root = state_root
        self._rocksdb = rocksdb
        self._member_id = member_id
        self._metrics = StandbyMetrics(registry)
        self._bootstrap = bootstrap
        self._client = client
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._replicas: dict[int, ChangelogReplay] = {}  # guarded by _lock
        self._owned: set[int] = set()  # partitions the loop owns or is taking over; guarded by _lock
        self._caught_up: set[int] = set()  # reached the end of committed changelog at least once
        self._wanted: set[int] = set()  # the last choice (thread only)
        self._assigned: dict[int, ChangelogReplay] = {}  # partition -> replica the reader was assigned for (thread only)
        self._thread = threading.Thread(target=self._run, name="streamscore-standby", daemon=True)
        self.error: BaseException | None = None  # why the thread stopped, if it failed

    # -- the loop's side ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and close every standby store (flushed)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            for p in list(self._replicas):
                self._close(p)

    def release(self, partition: int) -> None:
        """The loop takes `partition` over: close its standby store (if any) and keep the thread
        off it until `unown`. Returns once the store's directory is free to open."""
        with self._lock:
            self._owned.add(partition)
            if partition in self._replicas:
                offset = self._replicas[partition].next_offset
                self._close(partition)
                log.info("standby %s[%d] handed to the owner at changelog offset %d",
                         self._changelog, partition, offset)

    def unown(self, partition: int) -> None:
        """The loop closed `partition`'s store: the thread may keep it as a standby again."""
        with self._lock:
            self._owned.discard(partition)

    def held(self) -> set[int]:
        """Partitions currently kept as standby replicas."""
        with self._lock:
            return set(self._replicas)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        admin = AdminClient(client_settings(self._bootstrap, self._client))
        reader = Consumer(changelog_reader_settings(self._bootstrap, f"streamscore-standby-{self._changelog}",
                                                    self._client))
        next_refresh = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_refresh:
                    next_refresh = now + self.cfg.refresh_ms / 1000.0
                    choice = self._choose(admin)
                    if choice is not None:
                        self._wanted = choice
                self._reconcile(reader)
                if not self._assigned:
                    self._stop.wait(POLL_S)
                    continue
                msgs = reader.consume(FEED_BATCH, timeout=POLL_S)
                if msgs:
                    self._apply(msgs)
        except BaseException as exc:  # the loop keeps scoring; takeovers restore in full
            self.error = exc
            log.error("standby replicas stopped: %s", exc, exc_info=True)
        finally:
            reader.close()

    def _choose(self, admin: AdminClient) -> set[int] | None:
        """This process's standby partitions by the group's current description; None if the
        group could not be described (the previous choice stays)."""
        me = self._member_id()
        if not me:
            return None
        try:
            desc = admin.describe_consumer_groups([self._group], request_timeout=10)[self._group].result()
        except KafkaException as exc:
            log.debug("could not describe group %s: %s", self._group, exc)
            return None
        owners: dict[int, str] = {}
        for member in desc.members:
            if member.assignment is None:
                continue
            for tp in member.assignment.topic_partitions:
                if tp.topic == self._input:
                    owners[tp.partition] = member.member_id
        return standby_partitions(owners, [m.member_id for m in desc.members], me, self.cfg.replicas)

    def _reconcile(self, reader: Consumer) -> None:
        """Open stores for newly wanted partitions, close the ones no longer wanted, and make the
        reader's assignment match (each partition from its store's changelog offset)."""
        with self._lock:
            keep = self._wanted - self._owned
            for p in list(self._replicas):
                if p not in keep:
                    self._close(p)
            for p in keep - self._replicas.keys():
                store = PartitionStore(self._state_root / f"{self._input}-{p}", self._rocksdb)
                self._replicas[p] = ChangelogReplay(store)
                log.info("standby %s[%d] from changelog offset %d", self._changelog, p,
                         self._replicas[p].next_offset)
            replicas = dict(self._replicas)
            self._metrics.partitions.set(len(replicas))
        # A partition is (re)assigned to the reader when its replica is new: a replica closed
        # and reopened resumes from its store's changelog offset, not from the reader's position.
        gone = [p for p, r in self._assigned.items() if replicas.get(p) is not r]
        new = [p for p, r in replicas.items() if self._assigned.get(p) is not r]
        if gone:
            reader.incremental_unassign([TopicPartition(self._changelog, p) for p in gone])
            for p in gone:
                del self._assigned[p]
        if new:
            reader.incremental_assign([TopicPartition(self._changelog, p, replicas[p].next_offset) for p in new])
            self._assigned.update((p, replicas[p]) for p in new)

    def _apply(self, msgs: list[Message]) -> None:
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for m in msgs:
            by_partition[m.partition()].append(m)
        with self._lock:
            for p, ms in by_partition.items():
                replay = self._replicas.get(p)
                if replay is None:  # released (or no longer wanted) since the fetch: not ours now
                    continue
                before = replay.records
                end = replay.feed(ms)
                if replay.write():
                    self._metrics.offset.labels(str(p)).set(replay.next_offset)
                self._metrics.records.inc(replay.records - before)
                if end and p not in self._caught_up:
                    self._caught_up.add(p)
                    log.info("standby %s[%d] caught up at changelog offset %d", self._changelog, p,
                             replay.next_offset)

    def _close(self, partition: int) -> None:
        """Close a standby store (lock held). Its reader assignment is dropped by `_reconcile`."""
        replay = self._replicas.pop(partition)
        replay.store.flush()
        replay.store.close()
        self._caught_up.discard(partition)
        self._metrics.offset.remove(str(partition))
        self._metrics.partitions.set(len(self._replicas))
