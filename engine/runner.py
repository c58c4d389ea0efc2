"""The scoring loop: consume a micro-batch, update state, score, produce, commit.

One process runs one `ScoringEngine`, a member of the consumer group `group_id`. Per micro-batch:

1. ``consume`` up to `max_batch` messages, waiting at most `batch_wait_ms` for them;
2. per partition: decode + validate (bad → DLQ), one RocksDB multi-get for the batch's entities,
   `features.executor.process_batch` (late → DLQ), one ONNX call per serving model;
3. produce score records, DLQ records and the partition's state changelog records;
4. ``exactly_once``: one Kafka transaction holds the batch's outputs, changelog records and
   consumed offsets, committed atomically. ``at_least_once``: wait for the outputs' delivery,
   then for the changelog's, then commit offsets after step 5;
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
from engine.latency import LatencyRecorder
from engine.observability import EngineMetrics, serve_http
from engine.records import dlq_headers, score_records
from engine.serving import ModelRouter
from engine.sessions import closed_session_messages
from engine.store import PartitionStore
from engine.topics import TopicSpec, ensure_topics
from features.compute import FeatureComputer
from features.executor import PartitionClock, expired_keys, process_batch
from features.schema import LATE, InvalidEvent
from features.sessions import ClosedSession, close_sessions

log = logging.getLogger("streamscore.engine")

EMPTY = "empty"
PROGRESS_EVERY_S = 10.0
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
    sessions_closed: int = 0
    seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)

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
            "sessions_closed": self.sessions_closed,
            "latency_ms": self.latency_ms,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.consumed / self.seconds, 1) if self.seconds else 0.0,
        }


@dataclass
class _BatchCounts:
    """Counts of the batch in flight; added to `RunStats` only once the batch is committed."""

    consumed: int = 0
    skipped: int = 0
    expired: int = 0
    scored: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dead: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    closed: list[ClosedSession] = field(default_factory=list)  # reported with the batch (if configured)


@dataclass
class _Partition:
    store: PartitionStore
    clock: PartitionClock
    applied: int | None  # next input offset the store reflects
    sweep_after: str | None = None  # the expiry sweep resumes after this key (None: from the start)
    last_input: float = field(default_factory=time.monotonic)  # wall clock (monotonic) of its last input
    idle_swept: bool = False  # swept whole since its last input (sessions.idle_close_ms)
    idle_after: str | None = None  # the idle sweep resumes after this key


class ScoringEngine:
    """One scoring process. Create, then `run()`; `stop()` (or SIGTERM) ends it after the batch."""

    def __init__(self, cfg: EngineConfig, bootstrap: str) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.metrics = EngineMetrics()
        self.stats = RunStats()
        self.latency = LatencyRecorder()
        self._stop = threading.Event()
        self._eos = cfg.guarantee == "exactly_once"
        self._computer = FeatureComputer(cfg.features)
        self._router = ModelRouter(cfg)
        self._partitions: dict[int, _Partition] = {}
        self._delivery_errors: list[str] = []
        self._changelog_next: dict[int, int] = {}
        self._counts = _BatchCounts()
        self._refused_seen = 0
        self._state_root = cfg.state_dir / cfg.features.hash
        self._changelog = changelog_topic(cfg.group_id, cfg.input_topic, cfg.features.hash)
        self._closed_topic = cfg.sessions.closed_topic  # None: closed sessions are not reported
        producer_conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
        }
        if self._eos:
            producer_conf["transactional.id"] = self._transactional_id()
            producer_conf["transaction.timeout.ms"] = cfg.transaction_timeout_ms
        self._producer = Producer(producer_conf)
        self._prepare_topics()
        if self._eos:
            # Fences any earlier incarnation with the same id and aborts its open transaction.
            self._producer.init_transactions(60)
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": cfg.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": cfg.session_timeout_ms,
            "heartbeat.interval.ms": max(500, cfg.session_timeout_ms // 5),
            "enable.partition.eof": False,
            "fetch.wait.max.ms": max(1, min(cfg.batch_wait_ms, 100)),
        })
        self._publish_models()

    def _transactional_id(self) -> str:
        # Stable per process identity: a restart of the same instance (same state directory)
        # fences its predecessor at once instead of waiting for the transaction timeout.
        instance = self.cfg.instance_id or hashlib.blake2b(
            str(self.cfg.state_dir.resolve()).encode(), digest_size=6).hexdigest()
        return f"streamscore-{self.cfg.group_id}-{instance}"

    def _prepare_topics(self) -> None:
        md = self._producer.list_topics(timeout=30)
        wanted = [self.cfg.input_topic, self.cfg.scores_topic, self.cfg.dlq_topic]
        if self._closed_topic is not None:
            wanted.append(self._closed_topic)
        missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
        if missing:
            raise TopicsMissing(f"topics {missing} do not exist on {self.bootstrap}: create them with "
                                "`streamscore topics create` (or your cluster's tooling)")
        partitions = len(md.topics[self.cfg.input_topic].partitions)
        ensure_topics(self.bootstrap, [TopicSpec(self._changelog, partitions, compacted=True)])

    def _publish_models(self) -> None:
        serving = self._router.describe()
        for variant in ("champion", "challenger", "canary"):
            ref = serving.get(variant)
            if ref is None:  # a demoted variant must not keep reporting its last version
                self.metrics.model_version.remove_variant(variant)
            else:
                self.metrics.model_version.labels(ref["name"], variant).set(ref["version"])
        refused = serving["champion"].get("refused_total", 0)
        self.metrics.models_refused.inc(refused - self._refused_seen)
        self._refused_seen = refused
        self.metrics.health_extra["models"] = serving

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the current batch, commit, and return."""
        self._stop.set()

    def run(self, max_seconds: float | None = None, idle_exit_s: float | None = None,
            max_events: int | None = None) -> RunStats:
        """Process until stopped, `max_seconds` elapsed, `max_events` consumed, or no input for
        `idle_exit_s` (counted from the start until the first message). Always closes cleanly."""
        http = serve_http(self.metrics, self.cfg.metrics_port, self.cfg.metrics_host) if self.cfg.metrics_port else None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self._consumer.subscribe(
            [self.cfg.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        start = last_input = last_progress = time.monotonic()
        wait_s = self.cfg.batch_wait_ms / 1000.0
        try:
            while not self._stop.is_set():
                msgs = self._consumer.consume(self.cfg.max_batch, timeout=max(wait_s, 0.001))
                now = time.monotonic()
                self.metrics.last_loop = now
                if self._router.refresh():  # rate-limited by model_poll_ms; between batches only
                    self._publish_models()
                if not msgs and self.cfg.sessions.idle_close_ms is not None:
                    self._close_idle_partitions(now)
                if msgs:
                    self._process(msgs)
                    last_input = now
                elif idle_exit_s is not None and now - last_input >= idle_exit_s:
                    break
                if max_seconds is not None and now - start >= max_seconds:
                    break
                if max_events is not None and self.stats.consumed >= max_events:
                    break
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    log.info("progress %s", self.stats.as_dict())
        finally:
            self.stats.seconds = time.monotonic() - start
            self.stats.latency_ms = self.latency.summary()
            self._close()
            if http:
                http.shutdown()
        return self.stats

    def _close(self) -> None:
        try:
            self._producer.flush(30)
            self._consumer.close()  # revokes (closing stores) and leaves the group
            self._producer.close()
        finally:
            for part in self._partitions.values():
                part.store.close()
            self._partitions.clear()

    # -- rebalancing ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            store = PartitionStore(self._state_root / f"{tp.topic}-{tp.partition}", self.cfg.rocksdb)
            result = restore(self.bootstrap, self._changelog, tp.partition, store,
                             on_progress=self._restore_progress(tp.partition))
            self.stats.restored_records += result.records
            self.metrics.restored_records.inc(result.records)
            self.metrics.restore_remaining.labels(str(tp.partition)).set(0)
            clock_raw, applied = store.read_meta()
            clock = PartitionClock.decode(self.cfg.features.grace_ms, clock_raw)
            self._partitions[tp.partition] = _Partition(store, clock, applied)
            self._changelog_next[tp.partition] = result.next_offset
            log.info("assigned %s[%d]: restored %d changelog records in %.2f s; state reflects offsets < %s",
                     tp.topic, tp.partition, result.records, result.seconds, applied)
        self.metrics.assigned.set(len(self._partitions))

    def _restore_progress(self, partition: int) -> Callable[[int, int, int], None]:
        """Progress callback of one partition's restore: metrics, and liveness for /healthz (the
        loop does not turn while a restore runs)."""
        def progress(records: int, offset: int, end: int) -> None:
            self.metrics.restore_remaining.labels(str(partition)).set(max(end - offset, 0))
            self.metrics.last_loop = time.monotonic()

        return progress

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches complete (commit included) before the next consume(), where callbacks run,
        # so there is nothing in flight to flush here: just release the stores.
        for tp in partitions:
            part = self._partitions.pop(tp.partition, None)
            if part is not None:
                part.store.close()
                log.info("revoked %s[%d]", tp.topic, tp.partition)
        self.metrics.assigned.set(len(self._partitions))

    # -- the batch ------------------------------------------------------------------------------

    def _process(self, msgs: list[Message]) -> None:
        t0 = time.perf_counter()
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            by_partition[m.partition()].append(m)

        self._counts = _BatchCounts()
        commits: list[TopicPartition] = []
        writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]] = []
        clocks_before = {p: part.clock.max_ts for p, part in self._partitions.items()}
        if self._eos:
            self._producer.begin_transaction()
        try:
            for partition, pmsgs in by_partition.items():
                part = self._partitions.get(partition)
                if part is None:  # revoked between fetch and now: another member will redo these
                    continue
                next_offset = pmsgs[-1].offset() + 1
                self._counts.consumed += len(pmsgs)
                part.last_input, part.idle_swept, part.idle_after = time.monotonic(), False, None
                states = self._score_partition(part, pmsgs)
                if self.cfg.expiry_scan_per_batch and part.clock.watermark is not None:
                    self._sweep(part, states, min(len(pmsgs), self.cfg.expiry_scan_per_batch))
                # The store's applied mark never moves back: a batch of redelivered messages that
                # were all skipped (below the mark) must not lower it, or the rest are re-applied.
                applied = max(next_offset, part.applied or 0)
                writes.append((partition, part, states, part.clock.encode(), applied))
                commits.append(TopicPartition(self.cfg.input_topic, partition, next_offset))
            self._report_closed()
            if self._eos:
                self._produce_changelog(writes)
                self._await_deliveries()
                if commits:
                    self._producer.send_offsets_to_transaction(
                        commits, self._consumer.consumer_group_metadata(), 30)
                self._commit_transaction()
            else:
                self._await_deliveries()  # outputs first: the changelog must never run ahead of them
                self._produce_changelog(writes)
                self._await_deliveries()
        except KafkaException as exc:
            if not self._eos or not _abortable(exc):
                raise
            self._abort(by_partition, clocks_before, exc)
            return

        for partition, part, states, clock, next_offset in writes:
            part.store.write(states, clock, next_offset, changelog_offset=self._changelog_next.get(partition))
            part.applied = next_offset
        if commits and not self._eos:
            self._consumer.commit(offsets=commits, asynchronous=False)
        self._account_closed()
        self._account(msgs, t0)

    def _sweep(self, part: _Partition, states: dict[str, bytes | None], limit: int) -> None:
        """Check the next `limit` stored records and delete those that expired without being
        touched: tombstones join the batch's `states`, so they reach the store and the changelog
        with the batch (in its transaction). At one record per event, the sweep keeps pace with
        the only way state grows (each event adds at most one entity)."""
        records = part.store.scan(part.sweep_after, limit)
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
        closed, changed = close_sessions(self._computer, records, part.clock.watermark)  # type: ignore[arg-type]
        self._counts.closed.extend(closed)
        self._counts.expired += sum(1 for raw in changed.values() if raw is None)
        states.update(changed)

    def _report_closed(self) -> None:
        """Produce the batch's closed-session records (in its transaction), if configured."""
        if self._closed_topic is None or not self._counts.closed:
            return
        msgs = closed_session_messages(self._counts.closed, self._router, self.cfg.features,
                                       self.cfg.guarantee, int(time.time() * 1000))
        self._produce_batch(self._closed_topic, msgs, self._on_delivery)

    def _close_idle_partitions(self, now: float) -> None:
        """`sessions.idle_close_ms`: sweep the stores of partitions without input for that long,
        `IDLE_SWEEP_CHUNK` records per partition per loop turn until each is swept whole (once
        per idle spell), reporting the sessions their watermark has already closed. Each turn
        that closes something is a transaction of its own: records, changelog, and the (unmoved)
        input offsets, which fences it like a batch if the group has moved on."""
        idle_s = self.cfg.sessions.idle_close_ms / 1000.0  # type: ignore[operator]
        due = [(p, part) for p, part in self._partitions.items()
               if not part.idle_swept and now - part.last_input >= idle_s and part.clock.watermark is not None
               and part.applied is not None]
        if not due:
            return
        self._counts = _BatchCounts()
        writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]] = []
        cursors: list[tuple[_Partition, str | None]] = []
        for p, part in due:
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
            self._account_closed()
            self.stats.expired_records += self._counts.expired
            self.metrics.expired_records.inc(self._counts.expired)
            log.info("idle close: partitions %s, %d sessions closed", [p for p, *_ in writes], len(self._counts.closed))
        for part, after in cursors:
            part.idle_after, part.idle_swept = after, after is None

    def _commit_outputs(self, writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]],
                        commits: list[TopicPartition]) -> bool:
        """Outputs of a unit of work without input (the idle close): closed-session records and
        changelog, in one transaction with `commits` (exactly_once), or delivered in that order
        (at_least_once). False if the transaction was aborted (nothing visible; retried later)."""
        if self._eos:
            self._producer.begin_transaction()
        try:
            self._report_closed()
            if self._eos:
                self._produce_changelog(writes)
                self._await_deliveries()
                self._producer.send_offsets_to_transaction(commits, self._consumer.consumer_group_metadata(), 30)
                self._commit_transaction()
            else:
                self._await_deliveries()
                self._produce_changelog(writes)
                self._await_deliveries()
        except KafkaException as exc:
            if not self._eos or not _abortable(exc):
                raise
            log.warning("aborting idle-close transaction (%s); will retry", exc)
            self._producer.abort_transaction(60)
            return False
        return True

    def _account_closed(self) -> None:
        """Count the committed unit of work's reported sessions (expired records: `_account`)."""
        if self._closed_topic is not None:
            self.stats.sessions_closed += len(self._counts.closed)
            self.metrics.sessions_closed.inc(len(self._counts.closed))

    def _account(self, msgs: list[Message], t0: float) -> None:
        c = self._counts
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
        self.stats.batches += 1
        self.metrics.batch_size.observe(len(msgs))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        created = np.fromiter((m.timestamp()[1] for m in msgs), dtype=np.float64, count=len(msgs))
        self.latency.record(time.time() * 1000.0 - created)

    def _commit_transaction(self) -> None:
        while True:
            try:
                self._producer.commit_transaction(60)
                return
            except KafkaException as exc:
                if exc.args[0].retriable():
                    continue
                raise

    def _abort(self, by_partition: dict[int, list[Message]], clocks_before: dict[int, int | None],
               exc: KafkaException) -> None:
        """Abort the batch's transaction and rewind to the last committed state: nothing of the
        batch is visible, the stores were not written, clocks go back, input is re-read."""
        log.warning("aborting batch transaction (%s); re-reading from the committed offsets", exc)
        self._producer.abort_transaction(60)
        self.stats.aborted_batches += 1
        self.metrics.aborted_batches.inc()
        for partition, pmsgs in by_partition.items():
            part = self._partitions.get(partition)
            if part is None:
                continue
            part.clock.max_ts = clocks_before.get(partition)
            self._consumer.seek(TopicPartition(self.cfg.input_topic, partition, pmsgs[0].offset()))

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
        if not events:
            return {}

        entity = self.cfg.features.entity
        stored = part.store.multi_get({e[entity] for e in events})
        result = process_batch(self._computer, part.clock, events, stored)
        self._counts.closed.extend(result.closed)
        for i in result.late:
            self._dead_letter(
                sources[i], LATE,
                f"event time {events[i]['ts']} ms is older than the partition watermark "
                f"(max event time - grace {self.cfg.features.grace_ms} ms)",
            )
        if result.scored:
            scored_events = [events[i] for i in result.scored]
            scored_ts = int(time.time() * 1000)
            for vs in self._router.score([e[entity] for e in scored_events], result.rows):
                evs, rows = scored_events, result.rows
                if vs.index is not None:
                    evs, rows = [scored_events[i] for i in vs.index], result.rows[vs.index]
                records = score_records(
                    evs, vs.scores, entity, vs.model, self.cfg.features.hash, vs.variant, self.cfg.guarantee,
                    scored_ts, rows if self.cfg.include_features else None, self._computer.names,
                )
                self._produce_batch(self.cfg.scores_topic, records, self._on_delivery)
                self._counts.scored[vs.variant] += len(records)
        return result.states

    def _produce_changelog(self, writes: list[tuple[int, _Partition, dict[str, bytes | None], bytes, int]]) -> None:
        for partition, _, states, clock, next_offset in writes:
            msgs = changelog_messages(states, clock, next_offset, partition)
            # Changelog partition = input partition. produce_batch ignores a per-message
            # "partition" (librdkafka only honours it with RD_KAFKA_MSG_F_PARTITION, which
            # confluent-kafka does not set): only the batch-level argument routes.
            self._produce_batch(self._changelog, msgs, self._on_changelog_delivery, partition=partition)

    def _produce_batch(self, topic: str, records: list[dict[str, Any]], on_delivery: Any,
                       partition: int | None = None) -> None:
        route = {} if partition is None else {"partition": partition}
        while True:
            try:
                queued = self._producer.produce_batch(topic, records, on_delivery=on_delivery, **route)
            except BufferError:
                queued = 0
            if queued == len(records):
                return
            # Local queue full: serve deliveries, then retry the messages that were not queued.
            records = [r for r in records if "_error" in r]
            for r in records:
                r.pop("_error", None)
            self._producer.poll(0.1)

    def _dead_letter(self, m: Message, reason: str, detail: str) -> None:
        _, ts = m.timestamp()
        headers = dlq_headers(reason, detail, m.topic(), m.partition(), m.offset(), ts)
        while True:
            try:
                self._producer.produce(self.cfg.dlq_topic, m.value(), m.key(), headers=headers,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)
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


def _abortable(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.txn_requires_abort()
