"""Session-wide Kafka fixtures shared by every test directory.

kafka_bootstrap  one real broker for the whole session: $KAFKA_BOOTSTRAP_SERVERS if set, else a
                 LocalBroker (engine/broker.py) in a pytest tmp dir using the shared jar cache;
                 stopped at session end whatever happened (and SIGTERMed by Linux if pytest dies).
make_topic       factory for uniquely named topics, deleted when the test ends.

Only tests that request these fixtures touch Kafka; mark them `@pytest.mark.integration`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the session's broker ("host:port[,host:port]")."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
        return
    from engine.broker import LocalBroker

    broker = LocalBroker(home=tmp_path_factory.mktemp("kafka-broker"), die_with_parent=True)
    try:
        yield broker.start(timeout=90)
    finally:
        broker.stop()


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """`make_topic(prefix="t", partitions=1, compacted=False) -> name`: create a topic named
    `<prefix>-<12 hex>` (ready to use on return); every topic made is deleted at teardown.

    Topics keep their records forever (retention.ms=-1): tests produce records stamped with the
    generator's event times (January 2026), and the broker's default 7-day retention would delete
    them at its next retention check (every 5 min), in the middle of a slow test."""
    from engine.topics import TopicSpec, delete_topics, ensure_topics

    made: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, compacted: bool = False) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions, compacted, config={"retention.ms": "-1"})])
        made.append(name)
        return name

    yield make
    delete_topics(kafka_bootstrap, made)
