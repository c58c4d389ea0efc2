"""Standby replicas without Kafka: which partitions a member stands by for, and the changelog
replay they share with restore (against a reference model of the record format), and config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.changelog import META_KEY, ChangelogReplay, changelog_messages
from engine.config import ConfigError, RocksDBConfig, config_from_mapping
from engine.standby import standby_partitions
from engine.store import PartitionStore

# -- the choice of partitions ------------------------------------------------------------------


@st.composite
def groups(draw: st.DrawFn) -> tuple[dict[int, str], list[str], int]:
    members = draw(st.lists(st.text("abcdef0123456789-", min_size=1, max_size=12), min_size=1, max_size=8,
                            unique=True))
    partitions = draw(st.integers(0, 24))
    owners = {p: draw(st.sampled_from(members)) for p in range(partitions)
              if draw(st.booleans()) or len(members) > 1}  # sometimes unowned (mid-rebalance)
    return owners, members, draw(st.integers(0, 10))


@settings(max_examples=300, deadline=None)
@given(groups())
def test_every_owned_partition_gets_min_replicas_standbys_never_its_owner(g: tuple[dict[int, str], list[str], int]) -> None:
    owners, members, replicas = g
    chosen = {m: standby_partitions(owners, members, m, replicas) for m in members}
    for p, owner in owners.items():
        holders = [m for m in members if p in chosen[m]]
        assert owner not in holders
        assert len(holders) == min(replicas, len(members) - 1)
    for m in members:
        assert chosen[m] <= owners.keys(), "an unowned partition gets no standby"
        if replicas >= len(members) - 1:
            assert chosen[m] == {p for p, o in owners.items() if o != m}


@settings(max_examples=100, deadline=None)
@given(groups(), st.randoms(use_true_random=False))
def test_the_choice_does_not_depend_on_the_order_members_are_listed(g: tuple[dict[int, str], list[str], int],
                                                                    rnd) -> None:  # type: ignore[no-untyped-def]
    owners, members, replicas = g
    shuffled = list(members)
    rnd.shuffle(shuffled)
    for m in members:
        assert standby_partitions(owners, members, m, replicas) == standby_partitions(owners, shuffled, m, replicas)


def test_no_standbys_when_off_or_not_a_member() -> None:
    owners = {0: "a", 1: "b"}
    assert standby_partitions(owners, ["a", "b"], "a", 0) == set()
    assert standby_partitions(owners, ["a", "b"], "c", 3) == set()
    assert standby_partitions(owners, ["a", "b"], "a", 1) == {1}


# -- ChangelogReplay against a reference model ---------------------------------------------------


@dataclass
class FakeMessage:
    """The `confluent_kafka.Message` calls ChangelogReplay makes."""

    _key: bytes | None
    _value: bytes | None
    _offset: int
    _eof: bool = False

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def offset(self) -> int:
        return self._offset

    def error(self):  # type: ignore[no-untyped-def]
        from confluent_kafka import KafkaError

        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None


@dataclass
class Reference:
    """The record format's rules (engine/changelog.py) applied one record at a time."""

    store: dict[bytes, bytes] = field(default_factory=dict)
    meta: tuple[bytes, int] | None = None
    next_offset: int = 0
    pending: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    ready: dict[bytes, bytes | None] = field(default_factory=dict)

    def record(self, key: bytes, value: bytes | None, offset: int) -> None:
        if key == META_KEY:
            clock, _, applied = value.partition(b":")  # type: ignore[union-attr]
            tag = int(applied)
            for k in [k for k, (t, _) in self.pending.items() if t <= tag]:
                self.ready[k] = self.pending.pop(k)[1]
            for k, v in self.ready.items():  # a meta record makes everything ready durable
                if v is None:
                    self.store.pop(k, None)
                else:
                    self.store[k] = v
            self.ready = {}
            self.meta, self.next_offset = (clock, tag), offset + 1
        elif value is None:
            self.ready[key] = None
            self.pending.pop(key, None)
        else:
            tag_raw, _, state = value.partition(b"|")
            self.pending[key] = (int(tag_raw), state)


@st.composite
def changelogs(draw: st.DrawFn) -> list[tuple[bytes, bytes | None]]:
    """Engine batches (exactly-once and at-least-once shapes): entity records and tombstones,
    then the meta record, sometimes missing (a batch that failed half-way), tags sometimes
    going back (a batch redone from a lower offset)."""
    keys = [f"u{i}" for i in range(draw(st.integers(1, 12)))]
    out: list[tuple[bytes, bytes | None]] = []
    tag = 0
    for b in range(draw(st.integers(0, 25))):
        tag = max(1, tag + draw(st.integers(-3, 5)))
        states = {k: (None if draw(st.integers(0, 5)) == 0 else f"s{b}-{k}".encode())
                  for k in draw(st.lists(st.sampled_from(keys), max_size=6, unique=True))}
        msgs = changelog_messages(states, f"c{b}".encode(), tag, 0)
        if draw(st.integers(0, 6)) == 0:
            msgs = msgs[:-1]
        out += [(m["key"], m["value"]) for m in msgs]  # type: ignore[misc]
    return out


@settings(max_examples=200, deadline=None)
@given(changelogs(), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_replay_in_any_slicing_equals_the_reference(tmp_path_factory: pytest.TempPathFactory,
                                                    log: list[tuple[bytes, bytes | None]], cuts: list[int]) -> None:
    ref = Reference()
    for offset, (k, v) in enumerate(log):
        ref.record(k, v, offset)
    msgs = [FakeMessage(k, v, o) for o, (k, v) in enumerate(log)] + [FakeMessage(None, None, len(log), _eof=True)]
    store = PartitionStore(tmp_path_factory.mktemp("replay") / "p", RocksDBConfig())
    try:
        replay = ChangelogReplay(store)
        i, end = 0, False
        for c in cuts * (len(msgs) // max(1, min(cuts)) + 1):  # feed in slices of varying size, writing after each
            if i >= len(msgs):
                break
            end = replay.feed(msgs[i:i + c])  # type: ignore[arg-type]
            replay.write()
            i += c
        assert end and replay.records == len(log)
        assert replay.next_offset == ref.next_offset
        got = {k.encode(): v for k, v in store.scan(None, 10_000)}
        # Tombstones after the last meta record may or may not be applied yet (always safe).
        last_meta = max((o for o, (k, _) in enumerate(log) if k == META_KEY), default=-1)
        trailing = {k for k, v in log[last_meta + 1:] if v is None}
        for k in got.keys() | ref.store.keys():
            assert got.get(k) == ref.store.get(k) or (k in trailing and k not in got), k
        assert store.read_meta() == ((ref.meta[0], ref.meta[1]) if ref.meta else (None, None))
        assert store.changelog_offset() == (ref.next_offset if ref.meta else None)
        store.flush()
    finally:
        store.close()


# -- config ----------------------------------------------------------------------------------------


def test_standby_config_defaults_off_and_bad_values_name_the_key() -> None:
    assert config_from_mapping({}).standby.replicas == 0
    assert config_from_mapping({"standby": {"replicas": 2, "refresh_ms": 1000}}).standby.replicas == 2
    for bad, key in [({"replicas": -1}, "standby.replicas"), ({"replicas": True}, "standby.replicas"),
                     ({"refresh_ms": 10}, "standby.refresh_ms"), ({"spare": 1}, "standby.spare")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_from_mapping({"standby": bad})


def test_a_store_left_by_replay_reopens_with_its_offsets(tmp_path: Path) -> None:
    """WAL-less replay writes survive a close (flush) and reopen."""
    store = PartitionStore(tmp_path / "p", RocksDBConfig())
    replay = ChangelogReplay(store)
    msgs = changelog_messages({"u1": b"x", "u2": b"y"}, b"clock", 7, 0)
    replay.feed([FakeMessage(m["key"], m["value"], o) for o, m in enumerate(msgs)])  # type: ignore[misc]
    assert replay.write()
    store.close()
    again = PartitionStore(tmp_path / "p", RocksDBConfig())
    try:
        assert again.read_meta() == (b"clock", 7) and again.changelog_offset() == 3
        assert again.multi_get(["u1", "u2"]) == {"u1": b"x", "u2": b"y"}
    finally:
        again.close()
