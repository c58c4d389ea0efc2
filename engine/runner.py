"""The scoring loop: consume a micro-batch, update state, score, produce, commit.

One process runs one `ScoringEngine`, a member of the consumer group `group_id`. Per micro-batch:

1. ``consume`` up to `max_batch` messages, waiting at most until `batch_wait_ms` after the
   previous batch was cut (the batch window: compute and commit time count towards it);
2. per partition: decode + validate (bad → DLQ), one RocksDB multi-get for the batch's entities,
   `features.executor.process_batch` (late → DLQ), one ONNX call per serving model;
3. produce score records, DLQ records and the partition's state changelog records;
4. ``exactly_once``: one Kafka transaction holds the batch's outputs, changelog records and
   consumed offsets, committed atomically. With `commit_pipeline` (the default) the commit runs
   on a background thread while steps 1-2 of the next batch run, reading this batch's states
   from memory (`engine.inflight`); the next batch's outputs wait for its own transaction, which
   begins once this one committed. If this commit aborts, the next batch is discarded too and
   both rewind. ``at_least_once``: wait for the outputs' delivery, then for the changelog's
   (pipelined the same way), then commit offsets after step 5;
5. write each partition's new states, clock, applied offset and changelog position in one
   RocksDB WriteBatch (after the transaction committed, so the store never runs ahead of Kafka).

Recovery: on assignment a partition's store is brought up to the end of its committed changelog
(`engine.changelog.restore`), so a restart, a wiped disk or a partition moved to another process
resumes with exactly the state of the committed offsets. In at-least-once mode a redelivered
message below the store's applied offset is skipped: its outputs were delivered before the state
that includes it was written. See docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from engine.changelog import changelog_messages, changelog_topic, restore
from engine.config import EngineConfig
from engine.inflight import Committer, Outbox, PendingView, produce_all
from engine.kafka_clients import client_settings
from engine.label_topic import LABEL_INVALID, InvalidLabel, LabelTopicReader, parse_label
from engine.labels import LABEL_PREFIX
from engine.monitors import MONITOR_KEY, DriftMonitor, Evaluation, PartitionMonitor
from engine.observability import EngineMetrics, serve_http
from engine.query import QueryServer, client_id, drop_serving_of_deleted, serving_records
from engine.records import dlq_headers, score_records
from engine.serving import ModelRouter
from engine.sessions import closed_session_messages
from engine.stages import StageClock
from engine.standby import StandbyReplicas
from engine.store import PartitionStore
from engine.topics import TopicSpec, cluster_metadata, ensure_topics
from features.compute import FeatureComputer
from features.executor import PartitionClock, expired_keys, process_batch
from features.schema import LATE, InvalidEvent
from features.sessions import ClosedSession, close_sessions

log = logging.getLogger("streamscore.engine")

EMPTY = "empty"
PROGRESS_EVERY_S = 10.0
# Why `run` returned (RunStats.stop_reason).
STOPPED = "stopped"  # stop() or SIGTERM/SIGINT
IDLE = "idle"  # idle_exit_s: every held partition caught up, no input, for that long
MAX_SECONDS = "max_seconds"
MAX_EVENTS = "max_events"
NO_ASSIGNMENT = "no_assignment"  # idle_exit_s: held no partition for the bounded wait (not idle)
FAILED = "error"  # the loop raised
# With idle_exit_s, a process holding no partition waits this many session timeouts beyond
# idle_exit_s for one before giving up: a killed member's partitions are only reassigned once its
# session has timed out (and the rebalance completes).
ASSIGNMENT_WAIT_SESSIONS = 3
IDLE_SWEEP_CHUNK = 10_000  # stored records the idle close examines per partition per loop turn


class DeliveryFailed(RuntimeError):
    """Kafka did not acknowledge some output; the batch's offsets were not committed."""


class TopicsMissing(RuntimeError):
    """The engine's topics do not exist; the message says how to create them."""


@dataclass
class RunStats:
    """Counters of one `run`, counted when a batch is committed (also Prometheus metrics)."""

    consumed: int = 0
    scored: int = 0
    dead_lettered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped_applied: int = 0
    batches: int = 0
    aborted_batches: int = 0
    restored_records: int = 0
    expired_records: int = 0
    retrain_triggers: int = 0
    sessions_closed: int = 0
    seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    stop_reason: str = ""
    unconsumed: dict[int, int] = field(default_factory=dict)  # held partition -> messages left, at stop

    @property
    def dlq_total(self) -> int:
        return sum(self.dead_lettered.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "scored": self.scored,
            "dead_lettered": dict(self.dead_lettered),
            "skipped_already_applied": self.skipped_applied,
            "batches": self.batches,
            "aborted_batches": self.aborted_batches,
            "restored_records": self.restored_records,
            "expired_records": self.expired_records,
            "retrain_triggers": self.retrain_triggers,
            "sessions_closed": self.sessions_closed,
            "latency_ms": self.latency_ms,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.consumed / self.seconds, 1) if self.seconds else 0.0,
            "stop_reason": self.stop_reason,
            "unconsumed": {str(p): n for p, n in sorted(self.unconsumed.items())},
        }


@dataclass
class _BatchCounts:
    """Counts of the batch in flight; added to `RunStats` only once the batch is committed."""

    consumed: int = 0
    skipped: int = 0
    expired: int = 0
    scored: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dead: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    evaluations: list[Evaluation] = field(default_factory=list)
    closed: list[ClosedSession] = field(default_factory=list)  # reported with the batch (if configured)


@dataclass
class _Batch:
    """A computed micro-batch: its input, what it changes and what it produces. Lives from
    `_process` until it is committed (`_settle`) or aborted (`_abort`)."""

    msgs: list[Message]
    by_partition: dict[int, list[Message]]
    clocks_before: dict[int, int | None]  # every held partition's clock before the batch
    t0: float  # perf_counter when the batch began
    counts: _BatchCounts = field(default_factory=_BatchCounts)
    outbox: Outbox = field(default_factory=Outbox)
    # (partition, its state, new states, encoded clock, next input offset) per partition
    writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]] = field(default_factory=list)
    commits: list[TopicPartition] = field(default_factory=list)  # next input offsets


@dataclass
class _Partition:
    store: PartitionStore
    clock: PartitionClock
    applied: int | None  # next input offset the store reflects
    sweep_after: str | None = None  # the expiry sweep resumes after this key (None: from the start)
    # The group's committed offset when assigned (where consumption began; -1001: none), read
    # only for a partition that has returned nothing yet and so has no position (see `_lag`).
    start: int | None = None
    monitor: PartitionMonitor | None = None  # as of the last committed batch, plus the batch in flight
    last_input: float = field(default_factory=time.monotonic)  # wall clock (monotonic) of its last input
    idle_swept: bool = False  # swept whole since its last input (sessions.idle_close_ms)
    idle_after: str | None = None  # the idle sweep resumes after this key
    idle_swept_at: float = 0.0  # wall clock (monotonic) its last whole idle sweep ended
    # The batch in flight's states over the store (its transaction commits; store not yet written).
    pending: PendingView | None = None

    @property
    def view(self) -> PartitionStore | PendingView:
        """What the next batch reads: the store, with the batch in flight's states applied."""
        return self.store if self.pending is None else self.pending

    def reload_monitor(self) -> None:
        """The monitor state of the last batch, committed or in flight."""
        self.monitor = PartitionMonitor.decode(self.view.get(MONITOR_KEY))


class ScoringEngine:
    """One scoring process. Create, then `run()`; `stop()` (or SIGTERM) ends it after the batch."""

    def __init__(self, cfg: EngineConfig, bootstrap: str) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.metrics = EngineMetrics()
        self.stats = RunStats()
        self.latency = self.metrics.latency
        self.stages = StageClock(self.metrics.registry)
        self._stop = threading.Event()
        self._eos = cfg.guarantee == "exactly_once"
        self._computer = FeatureComputer(cfg.features)
        self._router = ModelRouter(cfg)
        self._monitor = DriftMonitor(cfg.monitor, cfg.group_id) if cfg.monitor.enabled else None
        self._monitor_failures = 0
        self._partitions: dict[int, _Partition] = {}
        self._delivery_errors: list[str] = []
        self._changelog_next: dict[int, int] = {}
        self._counts = _BatchCounts()  # of the batch being computed
        self._outbox = Outbox()  # its outputs, produced once its transaction began
        self._committer = Committer()  # the background commit (transaction, or deliveries)
        self._inflight: _Batch | None = None  # the batch being committed
        self._aborted_in_poll: list[_Batch] = []  # aborted while draining in a rebalance callback
        self._refused_seen = 0
        self._lag_labels: set[str] = set()
        self._state_root = cfg.state_dir / cfg.features.hash
        self._changelog = changelog_topic(cfg.group_id, cfg.input_topic, cfg.features.hash)
        self._closed_topic = cfg.sessions.closed_topic  # None: closed sessions are not reported
        md = cluster_metadata(bootstrap, client=cfg.kafka)  # BrokerUnreachable, before any client retries
        required: dict[str, Any] = {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"}
        if self._eos:
            required["transactional.id"] = self._transactional_id()
            required["transaction.timeout.ms"] = cfg.transaction_timeout_ms
        self._query = QueryServer(cfg.query, bootstrap, cfg.group_id, cfg.input_topic, self._computer.names,
                                  cfg.features.hash, cfg.features.grace_ms, self.metrics.registry) if cfg.query.port else None
        self._producer = Producer(client_settings(
            bootstrap, cfg.kafka, defaults={"linger.ms": 5, "compression.type": "lz4"}, required=required))
        self._prepare_topics(md)
        if self._eos:
            # Fences any earlier incarnation with the same id and aborts its open transaction.
            self._producer.init_transactions(60)
        self._consumer = Consumer(client_settings(bootstrap, cfg.kafka, defaults={
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": max(500, cfg.session_timeout_ms // 5),
            "fetch.wait.max.ms": max(1, min(cfg.batch_wait_ms, 100)),
        }, required={
            "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": cfg.session_timeout_ms,
            "enable.partition.eof": False,
            **({"client.id": client_id(cfg.query)} if self._query else {}),  # advertises the query address
        }))
        label_topic = cfg.monitor.label_topic if cfg.monitor.enabled else None
        self._labels = LabelTopicReader(bootstrap, label_topic, cfg.group_id, cfg.kafka) if label_topic else None
        self._standby = StandbyReplicas(
            cfg.standby, bootstrap=bootstrap, group_id=cfg.group_id, input_topic=cfg.input_topic,
            changelog=self._changelog, state_root=self._state_root, rocksdb=cfg.rocksdb,
            member_id=self._member_id, registry=self.metrics.registry, client=cfg.kafka,
        ) if cfg.standby.replicas > 0 else None
        self._publish_models()

    def _member_id(self) -> str | None:
        """This process's member id in the group (None before it joined); for the standby thread."""
        try:
            return self._consumer.memberid()
        except (KafkaException, RuntimeError):
            return None

    def _transactional_id(self) -> str:
        # Stable per process identity: a restart of the same instance (same state directory)
        # fences its predecessor at once instead of waiting for the transaction timeout.
        instance = self.cfg.instance_id or hashlib.blake2b(
            str(self.cfg.state_dir.resolve()).encode(), digest_size=6).hexdigest()
        return f"streamscore-{self.cfg.group_id}-{instance}"

    def _prepare_topics(self, md: Any) -> None:
        wanted = [self.cfg.input_topic, self.cfg.scores_topic, self.cfg.dlq_topic]
        if self._closed_topic is not None:
            wanted.append(self._closed_topic)
        missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
        if missing:
            raise TopicsMissing(f"topics {missing} do not exist on {self.bootstrap}: create them with "
                                "`streamscore topics create` (or your cluster's tooling)")
        partitions = len(md.topics[self.cfg.input_topic].partitions)
        labels = self.cfg.monitor.label_topic if self.cfg.monitor.enabled else None
        if labels is not None:
            if labels not in md.topics or md.topics[labels].error is not None:
                raise TopicsMissing(f"monitor.label_topic {labels!r} does not exist on {self.bootstrap}: create it "
                                    f"with {partitions} partitions (`streamscore topics create` does)")
            if len(md.topics[labels].partitions) != partitions:
                raise TopicsMissing(f"monitor.label_topic {labels!r} has {len(md.topics[labels].partitions)} "
                                    f"partitions, the input topic {partitions}: labels must be co-partitioned with "
                                    "the input (same partition count, keyed by entity)")
        specs = [TopicSpec(self._changelog, partitions, compacted=True)]
        if self.cfg.monitor.enabled and self.cfg.monitor.trigger_topic not in md.topics:
            specs.append(TopicSpec(self.cfg.monitor.trigger_topic, 1))
        ensure_topics(self.bootstrap, specs, client=self.cfg.kafka)

    def _publish_models(self) -> None:
        serving = self._router.describe()
        for variant in ("champion", "challenger", "canary"):
            ref = serving.get(variant)
            if ref is None:  # a demoted variant must not keep reporting its last version
                self.metrics.model_version.remove_variant(variant)
            else:
                self.metrics.model_version.labels(ref["name"], variant).set(ref["version"])
        self.metrics.model_loaded = serving["champion"].get("version") is not None
        refused = serving["champion"].get("refused_total", 0)
        self.metrics.models_refused.inc(refused - self._refused_seen)
        self._refused_seen = refused
        self.metrics.health_extra["models"] = serving
        if self._monitor is not None:
            self._monitor.watch(self._router.champion.scorer.manifest)

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit, and return."""
        self.metrics.stopping = True
        self._stop.set()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """First SIGTERM/SIGINT: drain (finish the batch, commit, leave the group). A second one
        exits at once with 128 + signum; exactly-once loses nothing (the open transaction is
        aborted), at-least-once may repeat the batch."""
        if self._stop.is_set():
            log.warning("second signal %d: exiting without draining", signum)
            os._exit(128 + signum)
        log.info("signal %d: finishing the batch, committing and leaving the group", signum)
        self.stop()

    def run(self, max_seconds: float | None = None, idle_exit_s: float | None = None,
            max_events: int | None = None) -> RunStats:
        """Process until stopped, `max_seconds` elapsed, `max_events` consumed, or idle for
        `idle_exit_s`. Always closes cleanly; `stop_reason` of the stats says which.

        Idle means: the process holds at least one partition, every held partition is caught up
        (its position is at the end of committed data, by the consumer's cached end offsets) and
        no input arrived, continuously for `idle_exit_s`. Waiting for an assignment (say, while a
        killed member's session times out) is not idleness: with `idle_exit_s`, a process that
        holds no partition waits up to `idle_exit_s` + ASSIGNMENT_WAIT_SESSIONS session timeouts
        for one, then stops with `stop_reason` NO_ASSIGNMENT (the CLI exits non-zero). At any stop,
        `unconsumed` lists the held partitions known to have input left (max_seconds, max_events,
        stop() can leave some; idle cannot), and a warning is logged.
        """
        http = serve_http(self.metrics, self.cfg.metrics_port, self.cfg.metrics_host) if self.cfg.metrics_port else None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        self._consumer.subscribe(
            [self.cfg.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        start = last_progress = time.monotonic()
        idle_since: float | None = None  # since when every held partition is caught up, no input
        unassigned_since: float | None = start  # since when no partition is held
        assignment_wait_s = (idle_exit_s or 0.0) + ASSIGNMENT_WAIT_SESSIONS * self.cfg.session_timeout_ms / 1000.0
        wait_s = self.cfg.batch_wait_ms / 1000.0
        reason = STOPPED
        try:
            if self._query:
                self._query.start()  # raises if the port is taken (then closes like any stop)
            if self._standby:
                self._standby.start()
            cut: float | None = None  # when the last non-empty batch was cut (monotonic)
            while not self._stop.is_set():
                # The batch window runs from the previous batch's cut, not from this call: time
                # spent computing and committing counts towards it (see `batch_wait_ms`).
                timeout = wait_s if cut is None else wait_s - (time.monotonic() - cut)
                msgs = self._consumer.consume(self.cfg.max_batch, timeout=max(timeout, 0.001))
                now = time.monotonic()
                cut = now if msgs else None
                self.metrics.last_loop = now
                if self._aborted_in_poll:  # a rebalance callback drained a commit that aborted
                    msgs = self._rewind_after_poll(msgs)
                if self._router.refresh():  # rate-limited by model_poll_ms; between batches only
                    self._publish_models()
                if msgs:
                    self._process(msgs)
                else:
                    self._settle()  # nothing to overlap with: finish the batch in flight
                if self._labels is not None:
                    self._process_labels()
                if self.cfg.sessions.idle_close_ms is not None:  # after the batch: its partitions are not idle
                    self._close_idle_partitions(now)
                if self._partitions:
                    unassigned_since = None
                elif unassigned_since is None:
                    unassigned_since = now
                if idle_exit_s is not None:
                    if msgs or not self._partitions or not self._caught_up():
                        idle_since = None
                    elif idle_since is None:
                        idle_since = now
                    if idle_since is not None and now - idle_since >= idle_exit_s:
                        reason = IDLE
                        break
                    if unassigned_since is not None and now - unassigned_since >= assignment_wait_s:
                        reason = NO_ASSIGNMENT
                        break
                if max_seconds is not None and now - start >= max_seconds:
                    reason = MAX_SECONDS
                    break
                if max_events is not None and self._consumed_so_far() >= max_events:
                    reason = MAX_EVENTS
                    break
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    log.info("progress %s", self.stats.as_dict())
        except BaseException:
            reason = FAILED
            raise
        finally:
            self.stats.stop_reason = reason
            self._drain(commit=reason != FAILED)
            try:
                self._report_stop(reason, assignment_wait_s)
            except (KafkaException, RuntimeError) as exc:  # the report must not hide the loop's own error
                log.warning("could not read the partitions' positions at stop: %s", exc)
            self.stats.seconds = time.monotonic() - start
            self.stats.latency_ms = self.latency.summary()
            if self._query:
                self._query.shutdown()  # detaches every store before _close closes them
            self._close()
            if http:
                http.shutdown()
        return self.stats

    def _consumed_so_far(self) -> int:
        """Consumed by committed batches and the batch in flight."""
        return self.stats.consumed + (self._inflight.counts.consumed if self._inflight else 0)

    def _drain(self, commit: bool) -> None:
        """At stop: finish the batch in flight (`commit`), or, after an error, only wait for its
        commit to return (its outcome no longer matters: the process is going down, and what
        was not committed is redone by the next owner)."""
        try:
            if commit:
                self._settle()
        except (KafkaException, RuntimeError) as exc:  # redone by the next owner of the partitions
            log.error("the last batch was not committed: %s", exc)
            self.stats.stop_reason = FAILED
        finally:
            self._committer.wait()
            self._inflight = None
            self._committer.close()

    def _lag(self) -> dict[int, int | None]:
        """Messages left to consume on each held partition: the consumer's cached end offset
        (of committed data: read_committed) minus its position, without network I/O except once
        per assignment for a partition that has returned nothing yet (it has no position: its
        consumption began at the group's committed offset, or at the log start without one).
        None where not known yet (no fetch response since the assignment)."""
        tps = [TopicPartition(self.cfg.input_topic, p) for p in self._partitions]
        positions = self._consumer.position(tps) if tps else []
        unread = [TopicPartition(tp.topic, tp.partition) for tp in positions
                  if tp.offset < 0 and self._partitions[tp.partition].start is None]
        if unread:
            try:
                for tp in self._consumer.committed(unread, timeout=10):
                    self._partitions[tp.partition].start = tp.offset
            except KafkaException as exc:  # unknown for now: asked again next time
                log.debug("committed offsets not available: %s", exc)
        lag: dict[int, int | None] = {}
        for tp in positions:
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            pos = tp.offset
            if pos < 0:
                start = self._partitions[tp.partition].start
                if start is None:
                    pos = -1  # not known yet
                elif start < 0:
                    pos = low  # no committed offset: auto.offset.reset=earliest
                else:
                    pos = start
            lag[tp.partition] = max(high - pos, 0) if high >= 0 and pos >= 0 else None
        return lag

    def _caught_up(self) -> bool:
        return all(n == 0 for n in self._lag().values())

    def _report_stop(self, reason: str, assignment_wait_s: float) -> None:
        """Record the input known to be left on held partitions and say why the loop stopped."""
        self.stats.unconsumed = {p: n for p, n in self._lag().items() if n}
        if reason == NO_ASSIGNMENT:
            log.error("stopping: no partition of %s was assigned to this process for %.0f s (another member "
                      "holds them all, or the group did not rebalance); consumed %d",
                      self.cfg.input_topic, assignment_wait_s, self.stats.consumed)
        elif self.stats.unconsumed:
            log.warning("stopping (%s) with input left unconsumed on held partitions: %s messages by partition",
                        reason, self.stats.unconsumed)
        else:
            log.info("stopping (%s); consumed %d", reason, self.stats.consumed)

    def _close(self) -> None:
        if self._standby:
            self._standby.stop()  # before the revocations below hand partitions back to it
        try:
            self._producer.flush(30)
            self._consumer.close()  # revokes (closing stores) and leaves the group
            if self._labels is not None:
                self._labels.close()
            self._producer.close()
        finally:
            for part in self._partitions.values():
                part.store.close()
            self._partitions.clear()

    # -- rebalancing ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.restoring.update(tp.partition for tp in partitions)  # not ready until restored
        for tp in partitions:
            if self._standby:
                self._standby.release(tp.partition)  # its warm store: restore replays only the tail
            store = PartitionStore(self._state_root / f"{tp.topic}-{tp.partition}", self.cfg.rocksdb)
            result = restore(self.bootstrap, self._changelog, tp.partition, store,
                             on_progress=self._restore_progress(tp.partition), client=self.cfg.kafka)
            self.stats.restored_records += result.records
            self.metrics.restored_records.inc(result.records)
            self.metrics.restore_remaining.labels(str(tp.partition)).set(0)
            self.metrics.restoring.discard(tp.partition)
            clock_raw, applied = store.read_meta()
            clock = PartitionClock.decode(self.cfg.features.grace_ms, clock_raw)
            part = _Partition(store, clock, applied)
            if self._monitor is not None:
                part.reload_monitor()
            self._partitions[tp.partition] = part
            self._changelog_next[tp.partition] = result.next_offset
            if self._query:
                self._query.attach(tp.partition, store)
            log.info("assigned %s[%d]: restored %d changelog records in %.2f s; state reflects offsets < %s",
                     tp.topic, tp.partition, result.records, result.seconds, applied)
        if self._labels is not None:
            self._labels.assign([tp.partition for tp in partitions])
        self.metrics.assigned.set(len(self._partitions))

    def _restore_progress(self, partition: int) -> Callable[[int, int, int], None]:
        """Progress callback of one partition's restore: metrics, and liveness for /healthz (the
        loop does not turn while a restore runs)."""
        def progress(records: int, offset: int, end: int) -> None:
            self.metrics.restore_remaining.labels(str(partition)).set(max(end - offset, 0))
            self.metrics.last_loop = time.monotonic()

        return progress

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Callbacks run inside consume(), between batches; only a batch's commit can be in
        # flight (commit_pipeline). Finish it first: its offsets must be committed (or
        # aborted) before the partitions move, and its stores written before they close.
        self._settle(in_poll=True)
        if self._labels is not None:
            self._labels.revoke([tp.partition for tp in partitions])
        for tp in partitions:
            part = self._partitions.pop(tp.partition, None)
            self.metrics.restoring.discard(tp.partition)
            if str(tp.partition) in self._lag_labels:
                self._lag_labels.discard(str(tp.partition))
                self.metrics.consumer_lag.remove(str(tp.partition))
            if self._query:
                self._query.detach(tp.partition)
            if part is not None:
                part.store.close()
                log.info("revoked %s[%d]", tp.topic, tp.partition)
            if self._standby:
                self._standby.unown(tp.partition)  # may stay warm as a standby
        self.metrics.assigned.set(len(self._partitions))

    # -- the batch ------------------------------------------------------------------------------

    def _process(self, msgs: list[Message]) -> None:
        """Compute the batch, then hand its commit to the `Committer` (`_commit`) and return:
        the next batch computes while it commits, and `_settle` finishes it."""
        t0 = time.perf_counter()
        self.stages.start()
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            by_partition[m.partition()].append(m)

        batch = _Batch(msgs, by_partition, {p: part.clock.max_ts for p, part in self._partitions.items()}, t0)
        self._counts, self._outbox = batch.counts, batch.outbox
        for partition, pmsgs in by_partition.items():
            part = self._partitions.get(partition)
            if part is None:  # revoked between fetch and now: another member will redo these
                continue
            next_offset = pmsgs[-1].offset() + 1
            batch.counts.consumed += len(pmsgs)
            part.last_input, part.idle_swept, part.idle_after = time.monotonic(), False, None
            states = self._score_partition(part, pmsgs)
            if self.cfg.expiry_scan_per_batch and part.clock.watermark is not None:
                self._sweep(part, states, min(len(pmsgs), self.cfg.expiry_scan_per_batch))
            if self._query:
                drop_serving_of_deleted(states)
            # The store's applied mark never moves back: a batch of redelivered messages that
            # were all skipped (below the mark) must not lower it, or the rest are re-applied.
            applied = max(next_offset, part.applied or 0)
            batch.writes.append((partition, part, states, part.clock.encode(), applied))
            batch.commits.append(TopicPartition(self.cfg.input_topic, partition, next_offset))
        self._report_closed()
        self.stages.skip()
        self._commit(batch)

    def _commit(self, batch: _Batch) -> None:
        """Wait for the previous batch's commit (exactly_once: if it aborts, this batch is
        discarded with it), then produce this batch's outputs and hand its commit to the
        committer thread: exactly_once, the changelog joins the transaction and the thread sends
        the offsets and commits it; at_least_once, the thread waits for the outputs' delivery,
        then produces the changelog and waits for it (`_settle` writes the stores, then commits
        the offsets). The next batch computes meanwhile (`commit_pipeline`)."""
        if not self._settle(also_discard=batch):
            self.stages.finish()
            return
        if self._eos:
            self._producer.begin_transaction()
            try:
                batch.outbox.send(self._producer)
                self._produce_changelog(batch.writes)
            except KafkaException as exc:
                if not _abortable(exc):
                    raise
                self._abort_transaction()
                self._abort([batch], exc)
                self.stages.finish()
                return
            group = self._consumer.consumer_group_metadata()
            commit: Callable[[], None] = lambda: self._commit_transaction(batch.commits, group)  # noqa: E731
        else:
            batch.outbox.send(self._producer)
            commit = lambda: self._deliver(batch.writes)  # noqa: E731
        for _, part, states, _, _ in batch.writes:
            part.pending = PendingView(part.store, states)
        self.stages.lap("produce")
        self._inflight = batch
        self._committer.submit(commit)
        if not self.cfg.commit_pipeline:
            self._settle()
        self.stages.finish()

    def _deliver(self, writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]]) -> None:
        """at_least_once, on the committer thread: the batch's outputs are acknowledged, then its
        changelog (which must never run ahead of the outputs)."""
        self._await_deliveries()
        self._produce_changelog(writes)
        self._await_deliveries()

    def _settle(self, also_discard: _Batch | None = None, in_poll: bool = False) -> bool:
        """Wait for the batch in flight's commit. Committed: write its stores (at_least_once: then
        commit its offsets) and count it; True. exactly_once, aborted (an abortable error): rewind
        it, and `also_discard` (the batch computed on top of it, nothing of which was produced),
        to the last committed state; False. `in_poll` (inside a rebalance callback): the rewind's
        seeks wait until consume() returned (`_rewind_after_poll`). True when nothing was in
        flight. Any other error of the commit (at_least_once: any error) is raised."""
        batch = self._inflight
        if batch is None:
            return True
        exc = self._committer.wait()
        self._inflight = None
        self.stages.lap("commit")  # the commit's wait not hidden behind this batch's compute
        for _, part, *_ in batch.writes:
            part.pending = None
        if exc is not None:
            if not self._eos:
                raise exc
            if self._delivery_errors:
                errors, self._delivery_errors = self._delivery_errors[:5], []
                raise DeliveryFailed(f"outputs of the batch were not delivered: {errors}. Offsets were not "
                                     "committed; the batch will be redelivered on restart.") from exc
            if not isinstance(exc, KafkaException) or not _abortable(exc):
                raise exc
            self._abort_transaction()
            if in_poll:
                self._aborted_in_poll.append(batch)
                self._abort([], exc)
            else:
                self._abort([batch] if also_discard is None else [batch, also_discard], exc)
            return False
        self._write_stores(batch)
        if batch.commits and not self._eos:
            self._commit_offsets(batch.commits)
            self.stages.lap("commit")
        self._account(batch)
        return True

    def _commit_offsets(self, commits: list[TopicPartition]) -> None:
        """at_least_once: commit the batch's offsets. A commit the group refuses because it is
        rebalancing (or moved on to a newer generation) is not fatal: the batch's outputs and
        changelog were delivered and its stores written with the applied offset, so whoever
        consumes these partitions next (this process or another, restoring the changelog) skips
        the batch's messages instead of applying them twice."""
        try:
            self._consumer.commit(offsets=commits, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not isinstance(err, KafkaError) or err.code() not in _REBALANCE_REFUSALS:
                raise
            log.warning("offset commit refused during a rebalance (%s); the next owner skips the applied "
                        "messages", err.str())

    def _write_stores(self, batch: _Batch) -> None:
        for partition, part, states, clock, next_offset in batch.writes:
            if self._partitions.get(partition) is not part:  # revoked meanwhile: its store is closed
                continue
            part.store.write(states, clock, next_offset, changelog_offset=self._changelog_next.get(partition))
            part.applied = next_offset
        self.stages.lap("state_write")

    def _record_lag(self, commits: list[TopicPartition]) -> None:
        """Consumer lag per partition from the high watermark of the last fetch (no broker call)."""
        for tp in commits:
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                label = str(tp.partition)
                self._lag_labels.add(label)
                self.metrics.consumer_lag.labels(label).set(max(high - tp.offset, 0))

    def _sweep(self, part: _Partition, states: dict[str, bytes | None], limit: int) -> None:
        """Check the next `limit` stored records and delete those that expired without being
        touched: tombstones join the batch's `states`, so they reach the store and the changelog
        with the batch (in its transaction). At one record per event, the sweep keeps pace with
        the only way state grows (each event adds at most one entity)."""
        records = part.view.scan(part.sweep_after, limit)
        part.sweep_after = records[-1][0] if len(records) == limit else None
        untouched = [(key, raw) for key, raw in records if key not in states]
        if self._closed_topic is not None:
            self._close_sessions(part, untouched, states)
            return
        for key in expired_keys(self._computer, untouched, part.clock.watermark):  # type: ignore[arg-type]
            states[key] = None
            self._counts.expired += 1

    def _close_sessions(self, part: _Partition, records: list[tuple[str, bytes]],
                        states: dict[str, bytes | None]) -> None:
        """The sweep when closed sessions are reported: close the sessions of `records` that the
        watermark has passed (and delete dead records, as `expired_keys` would)."""
        closed, changed = close_sessions(self._computer, records, part.clock.watermark,  # type: ignore[arg-type]
                                         part.clock.event_watermark)
        self._counts.closed.extend(closed)
        self._counts.expired += sum(1 for raw in changed.values() if raw is None)
        states.update(changed)

    def _report_closed(self) -> None:
        """Produce the batch's closed-session records (in its transaction), if configured."""
        if self._closed_topic is None or not self._counts.closed:
            return
        msgs = closed_session_messages(self._counts.closed, self._router, self.cfg.features,
                                       self.cfg.guarantee, int(time.time() * 1000))
        self._outbox.batch(self._closed_topic, msgs, self._on_delivery)

    def _close_idle_partitions(self, now: float) -> None:
        """`sessions.idle_close_ms`: sweep the stores of partitions without input for that long
        (also while other partitions are busy), `IDLE_SWEEP_CHUNK` records per partition per loop
        turn until each is swept whole (once per idle spell), reporting the sessions their
        watermark has already closed. Each turn
        that closes something is a transaction of its own: records, changelog, and the (unmoved)
        input offsets, which fences it like a batch if the group has moved on.

        With `sessions.idle_watermark: wall_clock`, each whole sweep starts by raising the
        partition's watermark to wall-clock now - lag (`_raise_floor`), and sweeps repeat every
        `idle_close_ms` while the partition stays idle. The raised clock is written with the
        sweep's state, changelog and records (so recovery restores it with the sessions it
        closed); a raise that closed nothing is persisted by the next unit of work that writes."""
        idle_s = self.cfg.sessions.idle_close_ms / 1000.0  # type: ignore[operator]
        wall = self.cfg.sessions.idle_watermark == "wall_clock"
        due = [(p, part) for p, part in self._partitions.items()
               if now - part.last_input >= idle_s and part.clock.watermark is not None and part.applied is not None
               and (not part.idle_swept or (wall and now - part.idle_swept_at >= idle_s))]
        if not due:
            return
        if not self._settle():  # a unit of work of its own: the batch in flight commits first
            return  # it aborted and rewound; sweep on a later turn
        self._counts, self._outbox = _BatchCounts(), Outbox()
        writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]] = []
        cursors: list[tuple[_Partition, str | None]] = []
        for p, part in due:
            if wall and part.idle_after is None:  # a whole sweep begins
                self._raise_floor(part)
            states: dict[str, bytes | None] = {}
            records = part.store.scan(part.idle_after, IDLE_SWEEP_CHUNK)
            self._close_sessions(part, records, states)
            cursors.append((part, records[-1][0] if len(records) == IDLE_SWEEP_CHUNK else None))
            if states:
                writes.append((p, part, states, part.clock.encode(), part.applied))  # type: ignore[arg-type]
        if writes:
            commits = [TopicPartition(self.cfg.input_topic, p, applied) for p, _, _, _, applied in writes]
            if not self._commit_outputs(writes, commits):
                return
            for partition, part, states, clock, applied in writes:
                part.store.write(states, clock, applied, changelog_offset=self._changelog_next.get(partition))
            self._account_closed(self._counts)
            self.stats.expired_records += self._counts.expired
            self.metrics.expired_records.inc(self._counts.expired)
            log.info("idle close: partitions %s, %d sessions closed", [p for p, *_ in writes], len(self._counts.closed))
        for part, after in cursors:
            part.idle_after, part.idle_swept = after, after is None
            if after is None:
                part.idle_swept_at = now

    def _raise_floor(self, part: _Partition) -> None:
        """`sessions.idle_watermark: wall_clock`: raise an idle partition's watermark to wall-clock
        now - `wall_clock_lag_ms` (never lowering it). Sound when event time tracks the wall clock
        within the lag: an event that arrives later with a smaller ts is late."""
        lag = self.cfg.sessions.lag_ms(self.cfg.features.grace_ms)
        part.clock.raise_floor(int(time.time() * 1000) - lag)

    def _commit_outputs(self, writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]],
                        commits: list[TopicPartition], produce: Callable[[], None] | None = None,
                        what: str = "idle-close") -> bool:
        """Outputs of a unit of work without input (the idle close, a label unit): what `produce`
        produces (default: the closed-session records) and the changelog, in one transaction with
        `commits` (exactly_once), or delivered in that order (at_least_once). False if the
        transaction was aborted (nothing visible; retried later). The caller settles the batch in
        flight first (one transaction per producer)."""
        if self._committer.busy:
            raise RuntimeError("internal error: a unit of work began while a batch was still committing")
        if self._eos:
            self._producer.begin_transaction()
        try:
            (produce or self._report_closed)()  # may add to writes and commits, and to the outbox
            self._outbox.send(self._producer)
            if self._eos:
                self._produce_changelog(writes)
                self._await_deliveries()
                self._commit_transaction(commits, self._consumer.consumer_group_metadata())
            else:
                self._await_deliveries()
                self._produce_changelog(writes)
                self._await_deliveries()
        except KafkaException as exc:
            if not self._eos or not _abortable(exc):
                raise
            log.warning("aborting %s transaction (%s); will retry", what, exc)
            self._abort_transaction()
            return False
        return True

    def _account_closed(self, counts: _BatchCounts) -> None:
        """Count the committed unit of work's reported sessions (expired records: `_account`)."""
        if self._closed_topic is not None:
            self.stats.sessions_closed += len(counts.closed)
            self.metrics.sessions_closed.inc(len(counts.closed))

    def _account(self, batch: _Batch) -> None:
        """Count a committed batch: stats, metrics, end-to-end latency, consumer lag."""
        c, msgs = batch.counts, batch.msgs
        self._account_closed(c)
        self.stats.consumed += c.consumed
        self.stats.expired_records += c.expired
        self.metrics.expired_records.inc(c.expired)
        self.stats.skipped_applied += c.skipped
        self.metrics.events_in.inc(c.consumed)
        self.metrics.skipped_applied.inc(c.skipped)
        for variant, n in c.scored.items():
            self.metrics.scored.labels(variant).inc(n)
            if variant != "challenger":  # shadow scores are extra records, not answers
                self.stats.scored += n
        for reason, n in c.dead.items():
            self.stats.dead_lettered[reason] += n
            self.metrics.dead_lettered.labels(reason).inc(n)
        for ev in c.evaluations:
            self.metrics.monitor.apply(ev)
            for t in ev.triggers:
                self.stats.retrain_triggers += 1
                log.info("retraining trigger %s: %s for %s v%s, %s %.4g > %.4g (partition %d, key %s)", t.trigger_id,
                         t.reason, t.model["name"], t.model.get("version"), t.detector["name"], t.statistic,
                         t.threshold, ev.partition, t.idempotency_key)
            for outcome, reason in ev.outcomes:
                if outcome == "warning":
                    log.info("monitor warning: %s signal on partition %d (unconfirmed)", reason, ev.partition)
        self.stats.batches += 1
        self.metrics.batch_size.observe(len(msgs))
        self.metrics.batch_seconds.observe(time.perf_counter() - batch.t0)
        created = np.fromiter((m.timestamp()[1] for m in msgs), dtype=np.float64, count=len(msgs))
        self.latency.record(time.time() * 1000.0 - created)
        self._record_lag(batch.commits)

    def _commit_transaction(self, commits: list[TopicPartition], group: Any) -> None:
        """The open transaction's input offsets, then its commit (which first waits for every
        record of the transaction to be delivered, serving their delivery callbacks). Runs on
        the committer's thread for a batch; raises what librdkafka raised."""
        if commits:
            self._producer.send_offsets_to_transaction(commits, group, 30)
        while True:
            try:
                self._producer.commit_transaction(60)
                return
            except KafkaException as exc:
                if exc.args[0].retriable():
                    continue
                raise

    def _abort_transaction(self) -> None:
        """Abort the open transaction. Its undelivered records are purged, and their delivery
        errors ("purged") say nothing about the next transaction: forget them."""
        self._producer.abort_transaction(60)
        self._delivery_errors.clear()

    def _abort(self, batches: list[_Batch], exc: KafkaException) -> None:
        """After `abort_transaction`: rewind `batches` (oldest first) to the last committed state.
        Nothing of them is visible, their stores were not written; clocks and monitors go back,
        their input is re-read from each partition's first message in them."""
        log.warning("aborted the batch transaction (%s); re-reading from the committed offsets", exc)
        self.stats.aborted_batches += 1
        self.metrics.aborted_batches.inc()
        self._rewind(batches)

    def _rewind(self, batches: list[_Batch]) -> None:
        """Clocks and monitors of `batches`' held partitions back to before the oldest of them;
        each partition seeks to its first message in them."""
        clocks: dict[int, int | None] = {}
        firsts: dict[int, int] = {}
        for batch in reversed(batches):  # the oldest batch's clock and first offset win
            clocks.update(batch.clocks_before)
            firsts.update((p, pmsgs[0].offset()) for p, pmsgs in batch.by_partition.items())
        for partition, offset in firsts.items():
            part = self._partitions.get(partition)
            if part is None:
                continue
            part.clock.max_ts = clocks.get(partition)
            if self._monitor is not None:
                part.reload_monitor()
            self._consumer.seek(TopicPartition(self.cfg.input_topic, partition, offset))

    def _rewind_after_poll(self, msgs: list[Message]) -> list[Message]:
        """A rebalance callback drained a commit that aborted (`_settle` in_poll): rewind that
        batch now, and drop the returned messages of its partitions (fetched before the rewind,
        they follow the aborted batch; the seek re-reads them in order)."""
        aborted, self._aborted_in_poll = self._aborted_in_poll, []
        self._rewind(aborted)
        rewound = {p for batch in aborted for p in batch.by_partition}
        return [m for m in msgs if m.partition() not in rewound]

    def _score_partition(self, part: _Partition, msgs: list[Message]) -> dict[str, bytes | None]:
        schema = self.cfg.schema
        events: list[dict[str, Any]] = []
        sources: list[Message] = []
        applied = part.applied
        for m in msgs:
            if applied is not None and m.offset() < applied:
                self._counts.skipped += 1
                continue
            raw = m.value()
            if not raw:
                self._dead_letter(m, EMPTY, "message has no value")
                continue
            try:
                events.append(schema.decode(raw))
            except InvalidEvent as exc:
                self._dead_letter(m, exc.reason, exc.detail)
                continue
            sources.append(m)
        self.stages.lap("decode")
        if not events:
            return {}

        entity = self.cfg.features.entity
        keys = {e[entity] for e in events}
        if self._monitor is not None:
            keys.update(self._monitor.label_keys(list(keys)))
        stored = part.view.multi_get(keys)  # one multi-get: feature states and label records
        self.stages.lap("state_read")
        result = process_batch(self._computer, part.clock, events, stored)
        self.stages.lap("features")
        self._counts.closed.extend(result.closed)
        for i in result.late:
            self._dead_letter(
                sources[i], LATE,
                f"event time {events[i]['ts']} ms is older than the partition watermark "
                + _watermark_origin(part.clock, events[i]["ts"]),
            )
        if result.scored:
            scored_events = [events[i] for i in result.scored]
            scored_ts = int(time.time() * 1000)
            champion = np.full(len(scored_events), np.nan, dtype=np.float64)
            variants = self._router.score([e[entity] for e in scored_events], result.rows)
            self.stages.lap("model")
            for vs in variants:
                if vs.variant == "champion":
                    champion[slice(None) if vs.index is None else vs.index] = vs.scores
                evs, rows = scored_events, result.rows
                if vs.index is not None:
                    evs, rows = [scored_events[i] for i in vs.index], result.rows[vs.index]
                records = score_records(
                    evs, vs.scores, entity, vs.model, self.cfg.features.hash, vs.variant, self.cfg.guarantee,
                    scored_ts, rows if self.cfg.include_features else None, self._computer.names,
                )
                self._outbox.batch(self.cfg.scores_topic, records, self._on_delivery)
                if self._query and vs.variant != "challenger":  # the answer, in the batch's WriteBatch + changelog
                    result.states.update(serving_records(evs, vs.scores, rows, entity, vs.model, vs.variant, scored_ts))
                self._counts.scored[vs.variant] += len(records)
            self.stages.lap("produce")
            if self._monitor is not None and part.monitor is not None:
                self._observe(part, msgs[0].partition(), scored_events, result.rows, champion, stored,
                              result.states)
            self.stages.lap("monitor")
        return result.states

    def _observe(self, part: _Partition, partition: int, events: list[dict[str, Any]], rows: np.ndarray,
                 champion: np.ndarray, stored: dict[str, bytes | None], states: dict[str, bytes | None]) -> None:
        """Feed the batch to the partition's monitor; its records join the batch's `states` and its
        triggers go to the trigger topic, both in the batch's transaction. A monitor failure is
        logged and costs only the monitor's batch (its state goes back to the last commit)."""
        assert self._monitor is not None and part.monitor is not None
        try:
            outcome = self._monitor.observe(
                part.monitor, partition, events, rows, champion, stored, part.clock.watermark,
                entity_field=self.cfg.features.entity,
                scan_labels=lambda after, limit: part.view.scan_prefix(LABEL_PREFIX, after, limit))
        except Exception:  # noqa: BLE001 - monitoring must never stop scoring
            self._monitor_failures += 1
            log.exception("monitor failed on partition %d (failure %d); its batch is not monitored",
                          partition, self._monitor_failures)
            part.reload_monitor()
            return
        self._take_outcome(outcome, states)

    def _take_outcome(self, outcome: Any, states: dict[str, bytes | None]) -> None:
        """A monitor outcome's records join `states`; its triggers are produced (in the open
        transaction); its evaluation is applied to metrics once the unit of work commits."""
        states.update(outcome.states)
        for trigger in outcome.triggers:
            self._outbox.message(self.cfg.monitor.trigger_topic, trigger.to_json(), trigger.idempotency_key.encode(),
                                 self._on_delivery)
        self._counts.evaluations.append(outcome.evaluation)

    def _process_labels(self) -> None:
        """One unit of work of label-topic records (engine/label_topic.py), if any were fetched:
        per owned partition, parse (bad → DLQ), resolve pending scored events, feed the
        performance window; the changed records, triggers, dead letters and the label
        partitions' offsets in one transaction (exactly_once), the store written after it."""
        reader = self._labels
        assert reader is not None and self._monitor is not None
        reader.resume_ready({p for p, part in self._partitions.items() if part.applied is not None})
        polled = reader.poll(self.cfg.max_batch)
        if not polled:
            return
        self._settle()  # a unit of work of its own: the batch in flight commits (or rewinds) first
        self._counts, self._outbox = _BatchCounts(), Outbox()
        writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]] = []
        commits: list[TopicPartition] = []
        first: dict[int, int] = {}

        def apply() -> None:  # inside the transaction: dead letters and triggers are produced
            for p, lmsgs in polled.items():
                part = self._partitions.get(p)
                if part is None:  # revoked since the fetch: the next owner reads them
                    continue
                if part.applied is None or part.monitor is None:  # nothing scored here yet: wait for it
                    reader.pause(p)
                    reader.rewind(p, lmsgs[0].offset())
                    continue
                first[p] = lmsgs[0].offset()
                states = self._apply_labels(part, p, lmsgs)
                writes.append((p, part, states, part.clock.encode(), part.applied))
                commits.append(TopicPartition(reader.topic, p, lmsgs[-1].offset() + 1))

        if not self._commit_outputs(writes, commits, produce=apply, what="label"):
            for p, offset in first.items():  # nothing of the unit is visible: read the labels again
                reader.rewind(p, offset)
                if p in self._partitions:
                    self._partitions[p].reload_monitor()
            return
        for partition, part, states, clock, applied in writes:
            part.store.write(states, clock, applied, changelog_offset=self._changelog_next.get(partition))
        if commits and not self._eos:
            self._commit_offsets(commits)
        self._account_labels()

    def _apply_labels(self, part: _Partition, partition: int, msgs: list[Message]) -> dict[str, bytes | None]:
        """Parse one partition's label messages (bad → DLQ) and feed them to its monitor; the
        records to write (empty if the monitor failed: logged, the labels are not applied)."""
        assert self._monitor is not None and part.monitor is not None
        labels: list[tuple[str, str, int]] = []
        for m in msgs:
            try:
                labels.append(parse_label(m.value(), m.key()))
            except InvalidLabel as exc:
                self._dead_letter(m, LABEL_INVALID, str(exc))
        states: dict[str, bytes | None] = {}
        if not labels:
            return states
        stored = part.store.multi_get(self._monitor.labels_keys(labels))
        try:
            outcome = self._monitor.observe_labels(
                part.monitor, partition, labels, stored, part.clock.watermark,
                scan_labels=lambda after, limit: part.store.scan_prefix(LABEL_PREFIX, after, limit))
        except Exception:  # noqa: BLE001 - monitoring must never stop scoring
            self._monitor_failures += 1
            log.exception("monitor failed on the labels of partition %d; they are not applied", partition)
            part.reload_monitor()
            return states
        self._take_outcome(outcome, states)
        return states

    def _account_labels(self) -> None:
        """Count a committed label unit's dead letters, evaluations and triggers."""
        c = self._counts
        for reason, n in c.dead.items():
            self.stats.dead_lettered[reason] += n
            self.metrics.dead_lettered.labels(reason).inc(n)
        for ev in c.evaluations:
            self.metrics.monitor.apply(ev)
            self.stats.retrain_triggers += len(ev.triggers)
            for t in ev.triggers:
                log.info("retraining trigger %s: %s for %s v%s (labels of partition %d, key %s)", t.trigger_id,
                         t.reason, t.model["name"], t.model.get("version"), ev.partition, t.idempotency_key)

    def _produce_changelog(self, writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]]) -> None:
        for partition, _, states, clock, next_offset in writes:
            msgs = changelog_messages(states, clock, next_offset, partition)
            # Changelog partition = input partition. produce_batch ignores a per-message
            # "partition" (librdkafka only honours it with RD_KAFKA_MSG_F_PARTITION, which
            # confluent-kafka does not set): only the batch-level argument routes.
            produce_all(self._producer, self._changelog, msgs, self._on_changelog_delivery, partition=partition)

    def _dead_letter(self, m: Message, reason: str, detail: str) -> None:
        _, ts = m.timestamp()
        headers = dlq_headers(reason, detail, m.topic(), m.partition(), m.offset(), ts)
        self._outbox.message(self.cfg.dlq_topic, m.value(), m.key(), self._on_delivery, headers=headers)
        self._counts.dead[reason] += 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    def _on_changelog_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")
        else:
            p = msg.partition()
            self._changelog_next[p] = max(self._changelog_next.get(p, 0), msg.offset() + 1)

    def _await_deliveries(self) -> None:
        remaining = self._producer.flush(60)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors[:5], []
            raise DeliveryFailed(
                f"{remaining} messages undelivered after 60 s; errors: {errors}. "
                "Offsets were not committed; the batch will be redelivered on restart."
            )


def _watermark_origin(clock: PartitionClock, ts: int) -> str:
    """What made an event at `ts` late: the wall-clock floor (constant in a batch) if it is below
    it, else the event-time watermark."""
    if clock.floor is not None and ts < clock.floor:
        return f"{clock.floor} ms, raised from the wall clock while the partition was idle (sessions.idle_watermark)"
    return f"(max event time - grace {clock.grace_ms} ms)"


# Offset commit errors of a member whose group is rebalancing or has moved on without it.
_REBALANCE_REFUSALS = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS,
                                 KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID})


def _abortable(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.txn_requires_abort()
