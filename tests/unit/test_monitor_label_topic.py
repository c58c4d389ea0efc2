"""External outcomes (monitor.label_topic): label records parsed, joined to pending scores exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.label_topic import InvalidLabel, parse_label
from engine.labels import LabelJoin, Resolved
from tests.unit.test_monitor_triggers import schema_problems

H = 3_600_000


SCHEMA = orjson.loads((Path(__file__).resolve().parents[2] / "docs/schemas/label.v1.json").read_bytes())


def test_the_documented_schema_matches_the_parser() -> None:
    """Every field the parser reads is in the JSON schema, with the same required set."""
    assert set(SCHEMA["required"]) == {"event_id", "entity", "label"}
    assert set(SCHEMA["properties"]) == {"schema_version", "event_id", "entity", "label", "ts"}
    example = {"schema_version": 1, "event_id": "e1", "entity": "u1", "label": 1, "ts": 1}
    assert schema_problems(example, SCHEMA) == []
    assert parse_label(orjson.dumps(example), b"u1") == ("u1", "e1", 1)


def test_a_label_record_parses_and_bad_ones_say_why() -> None:
    ok = orjson.dumps({"schema_version": 1, "event_id": "e1", "entity": "u1", "label": 1, "ts": 5})
    assert parse_label(ok, b"u1") == ("u1", "e1", 1)
    assert parse_label(orjson.dumps({"event_id": 7, "entity": 42, "label": False}), b"42") == ("42", "7", 0)
    assert parse_label(orjson.dumps({"event_id": "e", "entity": "u", "label": 1}), None) == ("u", "e", 1)
    for value, key, needle in (
            (b"", b"u", "no value"), (b"{", b"u", "not JSON"), (b"[1]", b"u", "JSON object"),
            (orjson.dumps({"entity": "u", "label": 1}), b"u", "'event_id'"),
            (orjson.dumps({"event_id": "e", "entity": "", "label": 1}), b"", "'entity'"),
            (orjson.dumps({"event_id": "e", "entity": "u", "label": 2}), b"u", "0 or 1"),
            (orjson.dumps({"event_id": "e", "entity": "u", "label": 0.5}), b"u", "0 or 1"),
            (orjson.dumps({"event_id": "e", "entity": "u", "label": 1, "ts": "now"}), b"u", "'ts'"),
            (orjson.dumps({"event_id": "e", "entity": "u", "label": 1, "schema_version": 2}), b"u", "schema_version"),
            (orjson.dumps({"event_id": "e", "entity": "u", "label": 1}), b"v", "key")):
        with pytest.raises(InvalidLabel, match=needle):
            parse_label(value, key)


def _apply(join: LabelJoin, store: dict[str, bytes], changes: dict[str, bytes | None]) -> None:
    for k, v in changes.items():
        if v is None:
            store.pop(k, None)
        else:
            store[k] = v


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 300), users=st.integers(1, 20),
       chunk=st.integers(1, 50), early_share=st.floats(0.0, 0.5))
def test_every_labelled_event_resolves_once_with_its_label_in_any_order(seed: int, n: int, users: int, chunk: int,
                                                                        early_share: float) -> None:
    """Scored events and their labels interleaved in chunks, some labels before their event:
    each event resolves exactly once, with the label published for it and its own score."""
    rng = np.random.default_rng(seed)
    entities = [f"u{u}" for u in rng.integers(0, users, n)]
    ids = [f"e{i}" for i in range(n)]
    truth = rng.integers(0, 2, n)
    scores = rng.random(n)
    early = rng.random(n) < early_share
    join = LabelJoin(H, 1.0, 10_000, 1, external=True, wait_ms=10**12)
    store: dict[str, bytes] = {}
    out = Resolved()
    for i in [i for i in range(n) if early[i]]:
        changes, _ = join.resolve_external([(entities[i], ids[i], int(truth[i]))],
                                           {k: store.get(k) for k in join.keys([entities[i]])}, 0, out)
        _apply(join, store, changes)
    late = [i for i in range(n) if not early[i]]
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        keys = join.keys({entities[i] for i in idx})
        _apply(join, store, join.apply([entities[i] for i in idx], [1_000 * i for i in idx], ["view"] * len(idx),
                                       scores[idx], {k: store.get(k) for k in keys}, 0, out,
                                       event_ids=[ids[i] for i in idx]))
        ready = [i for i in late if i < start + chunk and i >= start]
        labels = [(entities[i], ids[i], int(truth[i])) for i in ready]
        changes, untracked = join.resolve_external(labels, {k: store.get(k) for k in join.keys(
            {e for e, _, _ in labels})}, 0, out)
        assert untracked == 0
        _apply(join, store, changes)
    assert len(out) == n and out.dropped == 0 and store == {}
    by_score = dict(zip(out.scores, out.labels))
    assert sorted(out.scores) == sorted(scores.tolist())
    assert all(by_score[float(scores[i])] == truth[i] for i in range(n))


def test_an_unlabelled_event_is_dropped_or_negative_after_the_wait() -> None:
    for missing, expect in (("drop", ([], 1)), ("negative", ([0], 0))):
        join = LabelJoin(H, 1.0, 32, 1, external=True, wait_ms=1_000, missing=missing)
        out = Resolved()
        changes = join.apply(["u"], [10_000], ["view"], np.array([0.3]), {}, 10_000, out, event_ids=["e"])
        assert len(out) == 0
        changes = join.sweep([(k, v) for k, v in changes.items() if v is not None], 11_001, out)
        assert (out.labels, out.expired) == expect
        assert changes == {next(iter(changes)): None}  # nothing left for the entity


def test_labels_of_entities_outside_the_sample_are_counted_not_kept() -> None:
    join = LabelJoin(H, 0.5, 32, 1, external=True)
    inside = next(f"u{i}" for i in range(100) if join.tracked(f"u{i}"))
    outside = next(f"u{i}" for i in range(100) if not join.tracked(f"u{i}"))
    changes, untracked = join.resolve_external([(outside, "e1", 1), (inside, "e2", 1)], {}, 0, Resolved())
    assert untracked == 1 and list(changes) == join.keys([inside])
