"""Warm standby replicas against the real broker, real RocksDB and real engine processes.

Two processes with ``standby.replicas: 1`` each keep the other's partitions warm. After the first
half of the log, the owner of half the partitions is killed with SIGKILL once the survivor's
standbys have applied its whole changelog; the survivor takes over replaying only the tail (here:
nothing), then scores the second half. Outputs are checked as in test_recovery: every event
scored exactly once with the offline replay's feature vector, which needs the taken-over windows,
clocks and lateness decisions to be exactly those the killed owner had committed.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from engine.broker import free_port
from engine.changelog import META_KEY, changelog_topic
from features.clickstream import clickstream_spec
from features.partitioning import kafka_partition
from tests.integration.conftest import PARTITIONS, TrainedModel, produce_all, read_all
from tests.integration.engine_process import CommittedOffsets, EngineProcesses, wait_until
from tests.integration.test_recovery import Log, Topics, _config, assert_outputs, make_log, start_two

pytestmark = pytest.mark.integration

_OFFSET = re.compile(r'^streamscore_standby_changelog_offset\{partition="(\d+)"\} (\S+)$', re.M)


def standby_offsets(port: int) -> dict[int, int]:
    """partition -> next changelog offset the process's standby replica has not applied (/metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {int(p): int(float(v)) for p, v in _OFFSET.findall(text)}


@pytest.fixture(scope="module")
def log() -> Log:
    return make_log(12_000, seed=31)


@pytest.fixture
def topics(make_topic) -> Topics:  # type: ignore[no-untyped-def]
    return Topics(make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1))


def test_survivor_with_a_warm_standby_takes_over_replaying_only_the_tail(
        kafka_bootstrap: str, topics: Topics, trained_model: TrainedModel, log: Log, tmp_path: Path) -> None:
    n = len(log.payloads)
    half = n // 2
    ports = {"a": free_port(), "b": free_port()}
    standby = {"replicas": 1, "refresh_ms": 300}
    a_cfg = _config(tmp_path, kafka_bootstrap, topics, trained_model, "a", standby=standby, metrics_port=ports["a"])
    b_cfg = _config(tmp_path, kafka_bootstrap, topics, trained_model, "b", standby=standby, metrics_port=ports["b"])
    changelog = changelog_topic(topics.group, topics.clicks, clickstream_spec().hash)
    sizes = Counter(kafka_partition(key, PARTITIONS) for key, _ in log.payloads[:half])
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, topics.group, topics.clicks,
                                                      PARTITIONS) as committed:
        a, b = start_two(procs, a_cfg, b_cfg)
        a_parts = a.assigned_now()
        produce_all(kafka_bootstrap, topics.clicks, log.payloads[:half])
        wait_until(lambda: committed.per_partition() == [sizes[p] for p in range(PARTITIONS)], 120,
                   "the first half to be committed", procs.logs, poll=0.1)

        # The owner is idle now: its changelog ends with its last batch's meta record. Wait until
        # b's standbys reflect exactly that (the committed end, by a read_committed reader).
        last_meta = {p: -1 for p in a_parts}
        for m in read_all(kafka_bootstrap, changelog, PARTITIONS):
            if m.partition() in a_parts and m.key() == META_KEY:
                last_meta[m.partition()] = max(last_meta[m.partition()], m.offset())
        assert all(o >= 0 for o in last_meta.values()), last_meta
        wait_until(lambda: all(standby_offsets(ports["b"]).get(p, -1) == last_meta[p] + 1 for p in a_parts), 60,
                   "b's standbys to apply a's whole changelog", procs.logs, poll=0.1)
        assert not set(standby_offsets(ports["b"])) & b.assigned_now(), "b keeps no standby of its own partitions"

        a.kill()
        wait_until(lambda: b.assigned_now() == set(range(PARTITIONS)), 60, "b to take a's partitions over",
                   procs.logs, poll=0.1)
        produce_all(kafka_bootstrap, topics.clicks, log.payloads[half:])
        wait_until(lambda: committed.total() == n, 120, "b to finish the second half", procs.logs, poll=0.1)
        stats = b.terminate()
    takeovers = {p: restored for p, restored in b.assignments() if p in a_parts}
    assert set(takeovers) == a_parts, b.tail()
    # Only the tail after the standby's offset is replayed: here none (a's last batch was applied).
    assert all(restored == 0 for restored in takeovers.values()), (takeovers, last_meta)
    for p in a_parts:
        assert f"standby {changelog}[{p}] handed to the owner at changelog offset {last_meta[p] + 1}" in b.log(), b.tail()
    assert stats["skipped_already_applied"] == 0, stats
    assert_outputs(kafka_bootstrap, topics, log)
