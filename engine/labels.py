"""Live outcomes of scored events, derived from the input stream, joined in the partition's store.

The outcome of a scored event is the training label of models/labels.py, exactly: 1 iff the same
entity has a ``purchase`` with event time in ``(ts, ts + horizon_ms]``, else 0, with the horizon
of the serving model's manifest (``training.label.horizon_ms``). Live it is decided as follows,
per partition, in processing (offset) order:

- a purchase at ``t`` resolves every pending event of its entity with ``ts < t <= ts + h`` to 1;
- a newly scored event at ``ts`` resolves to 1 at once if a purchase already seen for its entity
  (arrived earlier but with a later event time) has ``ts < t <= ts + h``, else it becomes pending;
- a pending event resolves to 0 once the partition watermark passed ``ts + h``: every later
  on-time event, purchases included, has event time >= the watermark > ts + h.

So on the partition's on-time events the live label equals ``purchase_within`` (tested). A
purchase dead-lettered as late is not seen, which is the one way live and offline labels can
differ (offline, `purchase_within_events` counts late purchases).

State: only entities whose stable hash falls below ``label_sample`` are tracked (the same share
on every process). Each tracked entity has one record under ``LABEL_PREFIX + entity`` in the
partition's RocksDB store and changelog (NUL-prefixed keys are never entity keys): its pending
``(ts, score)`` pairs (at most ``max_pending``, the oldest dropped and counted) and the event
times of its purchases that may still resolve a future event (``t > watermark``). The records of
a batch's entities are read in the batch's one multi-get; records no event touches are resolved
by an incremental sweep (`LabelJoin.sweep`), a few per batch, so pending events of entities that
went quiet still resolve to 0 (at most one sweep pass after the watermark passed them).

A record also carries the model version whose scores it holds; pending scores of another version
are dropped when the record is read (the monitor switched reference).

**External outcomes** (``monitor.label_topic``; engine/label_topic.py reads the topic): the
outcome of a scored event is the label a record of the label topic gives its ``event_id``,
instead of being derived from purchases. Pending entries then also carry the event id; a label
resolves its pending event at once; a label that arrives before its event was scored waits in
the entity's record (``early``, at most ``max_pending``, until the watermark passed its arrival
by ``wait_ms``) and resolves the event when it is scored. A pending event whose label has not
come once the watermark passed ``ts + wait_ms`` is dropped (counted) or, with
``missing="negative"``, resolved to 0.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

LABEL_PREFIX = "\x00lbl:"
PURCHASE = "purchase"
_SAMPLE_SEED = 0x5EED_1AB1  # never change: it would change which entities are sampled


def label_key(entity: str) -> str:
    return LABEL_PREFIX + entity


def sample_position(entity: str) -> float:
    """The entity's stable position in [0, 1) for label sampling (CRC-32, seeded; independent of
    Kafka's partitioner and of canary routing)."""
    return zlib.crc32(entity.encode(), _SAMPLE_SEED) / 4294967296.0


@dataclass
class _Record:
    version: int | None
    pending: list[list[Any]] = field(default_factory=list)  # [ts, score] (+ event_id with a label topic)
    purchases: list[int] = field(default_factory=list)
    early: list[list[Any]] = field(default_factory=list)  # [event_id, label, watermark at arrival]

    def encode(self) -> bytes:
        d: dict[str, Any] = {"v": self.version, "p": self.pending, "b": self.purchases}
        if self.early:
            d["e"] = self.early
        return orjson.dumps(d)

    @classmethod
    def decode(cls, raw: bytes | None, version: int | None) -> _Record:
        if not raw:
            return cls(version)
        d = orjson.loads(raw)
        pending = d.get("p", []) if d.get("v") == version else []
        return cls(version, pending, d.get("b", []), d.get("e", []))


@dataclass
class Resolved:
    """Outcomes resolved so far: parallel lists of event times, scores and 0/1 labels (in
    resolution order), plus the pending events dropped by the per-entity cap."""

    ts: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    dropped: int = 0
    expired: int = 0  # with a label topic: pending events whose label did not come in time (dropped)

    def __len__(self) -> int:
        return len(self.labels)


class LabelJoin:
    """Joins outcomes to champion scores for one partition (stateless: state is passed in/out).

    Args:
        horizon_ms: the label horizon of the watched model.
        sample: share of entities tracked (0 disables, 1 tracks every entity).
        max_pending: most unresolved events kept per entity.
        version: the watched model version (pending scores of other versions are dropped).
    """

    def __init__(self, horizon_ms: int, sample: float, max_pending: int, version: int | None,
                 external: bool = False, wait_ms: int | None = None, missing: str = "drop") -> None:
        if horizon_ms <= 0:
            raise ValueError(f"horizon_ms must be > 0, got {horizon_ms}")
        self.horizon_ms = int(horizon_ms)
        self.sample = float(sample)
        self.max_pending = int(max_pending)
        self.version = version
        self.external = external  # outcomes from the label topic (`resolve_external`), not purchases
        self.wait_ms = int(wait_ms or horizon_ms)
        self.missing = missing
        self._sampled: dict[str, bool] = {}

    def tracked(self, entity: str) -> bool:
        got = self._sampled.get(entity)
        if got is None:
            if len(self._sampled) > 65_536:
                self._sampled.clear()
            got = self._sampled[entity] = sample_position(entity) < self.sample
        return got

    def keys(self, entities: Iterable[str]) -> list[str]:
        """Store keys of the label records of the tracked entities among `entities`."""
        if self.sample <= 0.0:
            return []
        return [label_key(e) for e in entities if self.tracked(e)]

    def apply(
        self,
        entities: Sequence[str],
        ts: Sequence[int],
        event_types: Sequence[str],
        scores: np.ndarray,
        stored: Mapping[str, bytes | None],
        watermark: int | None,
        out: Resolved,
        event_ids: Sequence[str] | None = None,
    ) -> dict[str, bytes | None]:
        """Process one partition's on-time events of a batch (offset order).

        `scores[i]` is the champion score of event i, NaN if the champion did not answer it (it
        still counts as a purchase). `stored` holds the label records of the batch (from the
        multi-get; missing keys = no record). Resolved outcomes are appended to `out`; returns
        the new records of the touched entities (None deletes). With `external` outcomes,
        `event_ids` is required and purchases mean nothing.
        """
        if self.external:
            return self._apply_external(entities, ts, event_ids or [], scores, stored, watermark, out)
        if self.sample <= 0.0:
            return {}
        h = self.horizon_ms
        live: dict[str, _Record] = {}
        tracked = {e for e in set(entities) if self.tracked(e)}
        if not tracked:
            return {}
        for i in [i for i, e in enumerate(entities) if e in tracked]:
            entity = entities[i]
            rec = live.get(entity)
            if rec is None:
                rec = live[entity] = _Record.decode(stored.get(label_key(entity)), self.version)
            t = int(ts[i])
            if event_types[i] == PURCHASE:
                _resolve(rec, lambda p_ts, t=t: p_ts < t <= p_ts + h, 1, out)
                rec.purchases.append(t)
            s = float(scores[i])
            if not math.isnan(s):
                if any(t < b <= t + h for b in rec.purchases):
                    _emit(out, t, s, 1)
                else:
                    rec.pending.append([t, s])
                    if len(rec.pending) > self.max_pending:
                        rec.pending.pop(0)
                        out.dropped += 1
        return {label_key(e): self._settle(rec, watermark, out) for e, rec in live.items()}

    def _apply_external(self, entities: Sequence[str], ts: Sequence[int], event_ids: Sequence[str],
                        scores: np.ndarray, stored: Mapping[str, bytes | None], watermark: int | None,
                        out: Resolved) -> dict[str, bytes | None]:
        live: dict[str, _Record] = {}
        for i, entity in enumerate(entities):
            s = float(scores[i])
            if math.isnan(s) or not self.tracked(entity):
                continue
            rec = live.get(entity)
            if rec is None:
                rec = live[entity] = _Record.decode(stored.get(label_key(entity)), self.version)
            eid, t = str(event_ids[i]), int(ts[i])
            hit = next((j for j, e in enumerate(rec.early) if e[0] == eid), None)
            if hit is not None:
                _emit(out, t, s, int(rec.early.pop(hit)[1]))
                continue
            rec.pending.append([t, s, eid])
            if len(rec.pending) > self.max_pending:
                rec.pending.pop(0)
                out.dropped += 1
        return {label_key(e): self._settle(rec, watermark, out) for e, rec in live.items()}

    def resolve_external(self, labels: Sequence[tuple[str, str, int]], stored: Mapping[str, bytes | None],
                         watermark: int | None, out: Resolved) -> tuple[dict[str, bytes | None], int]:
        """Apply label-topic records ``(entity, event_id, label)`` (offset order) to the stored
        label records (`stored` must hold ``label_key(entity)`` of each tracked entity); returns
        (the changed records, None deletes; how many labels concerned untracked entities)."""
        live: dict[str, _Record] = {}
        untracked = 0
        for entity, eid, label in labels:
            if not self.tracked(entity):
                untracked += 1
                continue
            rec = live.get(entity)
            if rec is None:
                rec = live[entity] = _Record.decode(stored.get(label_key(entity)), self.version)
            hit = next((j for j, p in enumerate(rec.pending) if len(p) > 2 and p[2] == eid), None)
            if hit is not None:
                t, s, _ = rec.pending.pop(hit)
                _emit(out, int(t), float(s), label)
                continue
            rec.early = [e for e in rec.early if e[0] != eid] + [[eid, int(label), watermark]]
            if len(rec.early) > self.max_pending:
                rec.early.pop(0)
        return {label_key(e): self._settle(rec, watermark, out) for e, rec in live.items()}, untracked

    def sweep(self, records: Iterable[tuple[str, bytes]], watermark: int | None,
              out: Resolved) -> dict[str, bytes | None]:
        """Resolve expired pending events of stored records no event touched; returns the records
        that changed (None deletes)."""
        changed: dict[str, bytes | None] = {}
        for key, raw in records:
            rec = _Record.decode(raw, self.version)
            before = (len(rec.pending), len(rec.purchases), len(rec.early))
            value = self._settle(rec, watermark, out)
            if value is None or (len(rec.pending), len(rec.purchases), len(rec.early)) != before:
                changed[key] = value
        return changed

    def _settle(self, rec: _Record, watermark: int | None, out: Resolved) -> bytes | None:
        """Resolve pending events whose horizon the watermark passed to 0; forget purchases no
        future on-time event can count; the encoded record, or None when nothing is left."""
        if watermark is not None and self.external:
            w = self.wait_ms
            if self.missing == "negative":
                _resolve(rec, lambda p_ts: p_ts + w < watermark, 0, out)
            else:
                kept = [p for p in rec.pending if not p[0] + w < watermark]
                out.expired += len(rec.pending) - len(kept)
                rec.pending = kept
            rec.early = [e for e in rec.early if e[2] is None or not e[2] + w < watermark]
        elif watermark is not None:
            h = self.horizon_ms
            _resolve(rec, lambda p_ts: p_ts + h < watermark, 0, out)
            rec.purchases = [b for b in rec.purchases if b > watermark]
        if not rec.pending and not rec.purchases and not rec.early:
            return None
        return rec.encode()


def _emit(out: Resolved, ts: int, score: float, label: int) -> None:
    out.ts.append(ts)
    out.scores.append(score)
    out.labels.append(label)


def _resolve(rec: _Record, resolves: Callable[[int], bool], label: int, out: Resolved) -> None:
    """Move the pending events of `rec` whose event time satisfies `resolves` to `out` as `label`."""
    keep = []
    for p in rec.pending:
        if resolves(p[0]):
            _emit(out, int(p[0]), p[1], label)
        else:
            keep.append(p)
    rec.pending = keep


def decode_pending(raw: bytes) -> list[tuple[int, float]]:
    """The pending (ts, score) pairs of a stored label record (tests and tooling)."""
    return [(int(t), float(s)) for t, s in orjson.loads(raw).get("p", [])]


__all__ = ["LABEL_PREFIX", "LabelJoin", "Resolved", "decode_pending", "label_key", "sample_position"]

