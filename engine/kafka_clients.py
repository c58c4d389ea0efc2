"""Settings of every confluent-kafka client the engine creates: the user's passthrough merged in.

The engine's config has a `kafka:` mapping of librdkafka settings (security.protocol, sasl.*,
ssl.*, client.id, statistics.interval.ms, ...) that goes into *every* client the engine creates
(scoring consumer and producer, restore consumer, admin clients of the topic helpers), so a
secured cluster needs configuration only. `client_settings` builds one client's dict:

    client's tuning defaults  <  user `kafka:` mapping  <  the client's required settings

Required settings are what the engine's guarantees rest on. Some keys belong to the engine
altogether (`OWNED`: bootstrap.servers, group.id, transactional.id, ... each has its own config
key); others must have one value (`FIXED`: enable.auto.commit=false, isolation.level=
read_committed, ...). `check_user_settings` rejects a user mapping that sets an owned key or a
fixed key to another value, with a message naming the key, so the conflict fails at start rather
than silently weakening exactly-once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Keys the engine sets itself, and the config key (or reason) to use instead.
OWNED: dict[str, str] = {
    "bootstrap.servers": "set `bootstrap_servers` (or KAFKA_BOOTSTRAP_SERVERS)",
    "group.id": "set `group_id`",
    "transactional.id": "derived per process from `instance_id` / state_dir",
    "transaction.timeout.ms": "set `transaction_timeout_ms`",
    "session.timeout.ms": "set `session_timeout_ms`",
    "enable.partition.eof": "each engine client sets it for its own reading loop",
}

# Keys whose value the engine's guarantees depend on; a user value must be equal.
FIXED: dict[str, Any] = {
    "enable.auto.commit": False,            # offsets commit with the batch (transaction or sync)
    "isolation.level": "read_committed",    # never read aborted outputs or changelog records
    "enable.idempotence": True,             # no duplicates from producer retries
    "acks": "all",                          # required by idempotence
    "partitioner": "murmur2_random",        # Kafka's Java partitioner: the offline replay routes alike
    "partition.assignment.strategy": "cooperative-sticky",  # revocation only between batches
}

_EQUIVALENT = {"-1": "all"}  # acks=-1 means acks=all


class KafkaSettingConflict(ValueError):
    """A user Kafka setting conflicts with one the engine requires."""


def _norm(value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value).strip().lower()
    return _EQUIVALENT.get(text, text)


def check_user_settings(user: Mapping[str, Any], where: str = "kafka") -> None:
    """Raise `KafkaSettingConflict` naming ``<where>.<key>`` if `user` sets an engine-owned key,
    gives a fixed key another value, or holds a value that is not a scalar."""
    for key, value in user.items():
        if not isinstance(key, str) or not key:
            raise KafkaSettingConflict(f"{where}: setting names must be non-empty strings, got {key!r}")
        if key in OWNED:
            raise KafkaSettingConflict(f"{where}.{key} is set by the engine: {OWNED[key]}")
        if isinstance(value, (Mapping, list, tuple)) or value is None:
            raise KafkaSettingConflict(f"{where}.{key} must be a string, number or boolean, got {value!r}")
        if key in FIXED and _norm(value) != _norm(FIXED[key]):
            raise KafkaSettingConflict(
                f"{where}.{key}={value!r} conflicts with the engine's required {key}={_norm(FIXED[key])} "
                "(exactly-once and online/offline parity depend on it); remove the setting")


def client_settings(
    bootstrap: str,
    user: Mapping[str, Any] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    required: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One client's settings: `defaults` < `user` < `required` (+ bootstrap.servers).

    Raises `KafkaSettingConflict` if `user` conflicts with `required` or with the engine's
    owned/fixed keys (see the module docstring)."""
    user = dict(user or {})
    check_user_settings(user)
    required = {"bootstrap.servers": bootstrap, **(required or {})}
    for key, value in required.items():
        if key in user and _norm(user[key]) != _norm(value):
            raise KafkaSettingConflict(f"kafka.{key}={user[key]!r} conflicts with the engine's {key}={value!r}")
    return {**(defaults or {}), **user, **required}
