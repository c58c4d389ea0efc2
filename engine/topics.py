"""Topic administration over confluent_kafka's AdminClient: declare topics, create what is missing.

    ensure_topics(bootstrap, [TopicSpec("clicks", 4), TopicSpec("state", 4, compacted=True)])

`ensure_topics` is idempotent and safe to race (another process creating the same topic is fine),
returns once every topic is visible with a leader for each partition, and refuses an existing
topic whose partition count differs from the declaration (keys would map to other partitions, so
per-partition state would be wrong). Replication uses the cluster's default.replication.factor.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, NewTopic

from engine.broker import BrokerUnreachable, connect_timeout_s
from engine.kafka_clients import client_settings

__all__ = ["TopicError", "TopicSpec", "cluster_metadata", "delete_topics", "ensure_topics", "topic_config"]


class TopicError(RuntimeError):
    """A topic could not be created/deleted, or exists with a conflicting layout."""


@dataclass(frozen=True)
class TopicSpec:
    """A declared topic. `compacted` sets cleanup.policy=compact; `config` adds topic configs
    (string values, e.g. {"max.message.bytes": "2097152"})."""

    name: str
    partitions: int = 1
    compacted: bool = False
    config: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("topic name must be non-empty")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name!r}: partitions must be >= 1, got {self.partitions}")
        policy = (self.config or {}).get("cleanup.policy")
        if self.compacted and policy is not None and "compact" not in policy:
            raise ValueError(f"topic {self.name!r}: compacted=True conflicts with cleanup.policy={policy!r}")

    def topic_config(self) -> dict[str, str]:
        """The topic-level configs to create the topic with."""
        out = {key: str(value) for key, value in (self.config or {}).items()}
        if self.compacted:
            out.setdefault("cleanup.policy", "compact")
        return out

    def new_topic(self) -> NewTopic:
        return NewTopic(self.name, num_partitions=self.partitions, config=self.topic_config())


def _admin(bootstrap: str, client: Mapping[str, Any] | None) -> AdminClient:
    return AdminClient(client_settings(bootstrap, client))


def cluster_metadata(bootstrap: str, timeout: float | None = None,
                     client: Mapping[str, Any] | None = None) -> ClusterMetadata:
    """The cluster's metadata (brokers, topics), or BrokerUnreachable after `timeout` seconds
    (default `engine.broker.connect_timeout_s()`). `client`: the user's Kafka settings (security
    settings reach the probe too). The probe client logs nothing itself: an unreachable cluster is
    reported once, by the exception, not by librdkafka's retry lines."""
    wait = connect_timeout_s() if timeout is None else timeout
    admin = AdminClient(client_settings(bootstrap, client, required={"log_level": 0}))  # bad settings raise here
    try:
        return admin.list_topics(timeout=wait)
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"cannot reach Kafka at {bootstrap} within {wait:g} s ({_reason(exc)}): start it with `streamscore "
            "broker start`, or fix KAFKA_BOOTSTRAP_SERVERS / bootstrap_servers "
            "(STREAMSCORE_CONNECT_TIMEOUT sets the wait)") from exc


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def _error_code(exc: BaseException) -> Any:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].code()
    return None


def _partition_counts(admin: AdminClient, timeout: float) -> dict[str, int]:
    """Partition count of every topic that exists, with all partitions led."""
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicError(f"cannot reach Kafka to list topics: {exc}") from exc
    return {name: len(t.partitions) for name, t in md.topics.items()
            if t.error is None and all(p.leader >= 0 for p in t.partitions.values())}


def _check_partitions(specs: Iterable[TopicSpec], counts: Mapping[str, int]) -> None:
    for spec in specs:
        have = counts.get(spec.name)
        if have is not None and have != spec.partitions:
            raise TopicError(f"topic {spec.name!r} exists with {have} partitions but {spec.partitions} are "
                             "declared; delete the topic or change the declaration (partitions map keys to state)")


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30.0,
                  client: Mapping[str, Any] | None = None) -> list[str]:
    """Create the topics of `specs` that do not exist; return the names this call created.

    Existing topics are left as they are (their configs are not altered) but must have the
    declared partition count, else TopicError. Returns when every declared topic is visible with
    a leader for each partition, so clients can use them at once; raises TopicError after
    `timeout` seconds. `client`: the user's Kafka settings (`engine.kafka_clients`)."""
    specs = list(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate topic names in {names}")
    if not specs:
        return []
    cluster_metadata(bootstrap, min(timeout, connect_timeout_s()), client)  # fail fast, clearly, if unreachable
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap, client)
    counts = _partition_counts(admin, timeout)
    _check_partitions(specs, counts)
    missing = [s for s in specs if s.name not in counts]
    created = _create(admin, missing, timeout) if missing else []
    _await_visible(admin, specs, deadline)
    return created


def _create(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> list[str]:
    futures = admin.create_topics([s.new_topic() for s in specs], operation_timeout=timeout,
                                  request_timeout=timeout)
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5)
            created.append(name)
        except KafkaException as exc:
            if _error_code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent creator won the race
                raise TopicError(f"creating topic {name!r} failed: {exc}") from exc
    return created


def _await_visible(admin: AdminClient, specs: list[TopicSpec], deadline: float) -> None:
    """Poll metadata until every topic exists with led partitions (creation propagates async)."""
    while True:
        counts = _partition_counts(admin, max(1.0, deadline - time.monotonic()))
        _check_partitions(specs, counts)
        pending = [s.name for s in specs if s.name not in counts]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicError(f"topics {pending} not ready (no leader) before the deadline")
        time.sleep(0.05)  # poll interval


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 30.0,
                  client: Mapping[str, Any] | None = None) -> None:
    """Delete the named topics; topics that do not exist are ignored."""
    names = list(dict.fromkeys(names))
    if not names:
        return
    admin = _admin(bootstrap, client)  # keep a reference: a collected client fails its futures
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout + 5)
        except KafkaException as exc:
            if _error_code(exc) != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise TopicError(f"deleting topic {name!r} failed: {exc}") from exc


def topic_config(bootstrap: str, name: str, timeout: float = 30.0,
                 client: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The effective configuration of topic `name` (describe_configs), as strings."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    admin = _admin(bootstrap, client)  # keep a reference: a collected client fails its futures
    future = admin.describe_configs([resource], request_timeout=timeout)[resource]
    try:
        entries = future.result(timeout=timeout + 5)
    except KafkaException as exc:
        raise TopicError(f"describing topic {name!r} failed: {exc}") from exc
    return {key: entry.value for key, entry in entries.items()}
