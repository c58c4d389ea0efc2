"""The retraining worker: consume triggers, retrain, gate, publish an outcome per trigger.

One `RetrainWorker` is a member of the consumer group ``retrain.group_id`` (default
``<group_id>.retrain``) on the trigger topic; triggers are keyed by idempotency key, so workers
sharing the group never train on the same trigger. Per trigger, in order:

1. parse it (`RetrainTrigger.from_json`; a bad record becomes a ``failed`` outcome);
2. `models.retraining.retrain` with the input topic as history (`engine.history`);
3. publish the outcome record (key = idempotency key) to the outcome topic and wait for the ack;
4. commit the trigger's offset.

The offset is committed only after the outcome is recorded, so a worker killed mid-run leaves the
trigger to the next one (at-least-once); a repeat is harmless because `retrain` dedupes by
idempotency key (and decides a version a crash left undecided). Every failure of one trigger (bad
record, history unavailable, too-small window, training error) is an outcome, never the end of
the worker; the champion is only ever changed by a candidate that passed the gate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from engine.config import EngineConfig
from engine.history import read_topic_history
from models.registry import Registry
from models.retraining import History, HistoryLoader, RetrainError, RetrainOutcome, retrain
from models.trigger import RetrainTrigger, TriggerError

log = logging.getLogger("streamscore.retrain")


class WorkerSetupError(RuntimeError):
    """The worker cannot start (broker unreachable, topics missing); the message says what to do."""


@dataclass
class WorkerStats:
    """Triggers handled by decision, and the outcomes in order."""

    decisions: Counter[str] = field(default_factory=Counter)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"triggers": sum(self.decisions.values()), "decisions": dict(self.decisions),
                "seconds": round(self.seconds, 3)}


def topic_history_loader(cfg: EngineConfig, bootstrap: str,
                         progress: Callable[[str], None] | None = None) -> HistoryLoader:
    """A `models.retraining.HistoryLoader` reading the engine's input topic."""
    def load(from_ms: int | None, _to_ms: int) -> History:
        return read_topic_history(bootstrap, cfg.input_topic, cfg.schema, from_ms, entity=cfg.features.entity,
                                  timestamp_slack_ms=cfg.retrain.timestamp_slack, progress=progress)
    return load


def run_trigger(raw: bytes | None, cfg: EngineConfig, registry: Registry, load_history: HistoryLoader,
                progress: Callable[[str], None] | None = None) -> RetrainOutcome:
    """One trigger record to its outcome; never raises for a problem of this trigger."""
    t0 = time.perf_counter()
    try:
        trigger = RetrainTrigger.from_json(raw if raw is not None else b"")
    except TriggerError as exc:
        return RetrainOutcome.failed(f"bad trigger record: {exc}", model=cfg.model_name)
    try:
        return retrain(trigger, load_history, cfg.features, registry, cfg.retrain.policy, alias=cfg.model_alias,
                       log=progress)
    except RetrainError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of this run is its outcome, not the worker's end
        log.exception("retraining for trigger %s failed", trigger.trigger_id)
        reason = f"{type(exc).__name__}: {exc}"
    return RetrainOutcome.failed(reason, trigger, seconds=time.perf_counter() - t0)


class RetrainWorker:
    """A long-running consumer of the trigger topic. `run()`; `stop()` ends it between triggers."""

    def __init__(self, cfg: EngineConfig, bootstrap: str) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.registry = Registry(cfg.registry)
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._load = topic_history_loader(cfg, bootstrap, progress=log.info)
        rc = cfg.retrain
        self._check_topics((cfg.input_topic, rc.trigger_topic, rc.outcome_topic))
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": rc.consumer_group(cfg.group_id),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": 30_000,
            "max.poll.interval.ms": 3_600_000,  # one trigger may train for a long time between polls
        })

    def _check_topics(self, topics: tuple[str, ...]) -> None:
        try:  # a probe that logs nothing: an unreachable broker is one clear error
            md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=10)
        except KafkaException as exc:
            raise WorkerSetupError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from None
        missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
        if missing:
            raise WorkerSetupError(f"topics {missing} do not exist on {self.bootstrap}: create them with "
                                   "`streamscore topics create`")

    def stop(self) -> None:
        """Finish the trigger in progress (publish, commit), then return from `run`."""
        self._stop.set()

    def run(self, idle_exit_s: float | None = None, max_triggers: int | None = None,
            max_seconds: float | None = None) -> WorkerStats:
        """Handle triggers until stopped, `max_triggers` handled, `idle_exit_s` seconds without a
        trigger, or `max_seconds` elapsed."""
        t0 = last = time.monotonic()
        rc = self.cfg.retrain
        self._consumer.subscribe([rc.trigger_topic])
        log.info("retrain worker: group %s, triggers from %s, outcomes to %s, history from %s",
                 rc.consumer_group(self.cfg.group_id), rc.trigger_topic, rc.outcome_topic, self.cfg.input_topic)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if max_triggers is not None and sum(self.stats.decisions.values()) >= max_triggers:
                    break
                if (idle_exit_s is not None and now - last >= idle_exit_s) or (
                        max_seconds is not None and now - t0 >= max_seconds):
                    break
                msg = self._consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    log.warning("trigger topic: %s", msg.error())
                    continue
                self._handle(msg)
                last = time.monotonic()
        finally:
            self._consumer.close()
            self.stats.seconds = time.monotonic() - t0
        return self.stats

    def _handle(self, msg: Message) -> None:
        log.info("trigger at %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
        outcome = run_trigger(msg.value(), self.cfg, self.registry, self._load, progress=log.info)
        record = outcome.to_record()
        record["trigger_offset"] = {"partition": msg.partition(), "offset": msg.offset()}
        key = (outcome.idempotency_key or outcome.trigger_id or f"offset-{msg.partition()}-{msg.offset()}").encode()
        errors: list[str] = []
        self._producer.produce(self.cfg.retrain.outcome_topic, orjson.dumps(record), key,
                               on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
        if self._producer.flush(30) != 0 or errors:
            raise RuntimeError(f"the outcome of trigger {outcome.trigger_id} was not acknowledged ({errors}); "
                               "the trigger stays uncommitted and will be retried")
        self._consumer.commit(message=msg, asynchronous=False)
        self.stats.decisions[outcome.decision] += 1
        self.stats.outcomes.append(record)
        log_at = logging.WARNING if outcome.decision == "failed" else logging.INFO
        log.log(log_at, "trigger %s: %s", outcome.trigger_id, outcome.summary())
