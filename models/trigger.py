"""The retraining trigger record: what a monitor publishes and the retraining worker consumes.

One JSON object per Kafka message on the trigger topic (default ``retrain.triggers``), keyed by
`RetrainTrigger.idempotency_key`. Schema (``schema_version`` 1; JSON Schema in
docs/schemas/retrain-trigger.v1.json)::

    schema_version      1
    trigger_id          str, unique per record (uuid4 hex)
    idempotency_key     str: the same condition seen twice (e.g. by a restarted monitor, or by
                        two processes for the same model version and window) yields the same key;
                        the worker trains at most once per key
    reason              feature_drift | prediction_drift | performance | schedule | volume
    model               {"name": str, "version": int}   the serving model that was watched
    feature_spec        str, the feature-spec hash the model serves with
    detector            {"name": str, "params": {...}}  e.g. {"name": "psi", "params": {"bins": 10}}
    statistic           float, the detector's decisive statistic
    threshold           float, the threshold it crossed
    reference           {"source": str, "n": int, "start_ms": int|None, "end_ms": int|None}
    current             {"start_ms": int, "end_ms": int, "n": int}   event-time window + sample size
    evidence            [{"name": str, "statistic": str, "value": float, "threshold": float,
                          "n": int, ...}, ...]   per feature / score / metric, decisive first
    suggested_training_window  {"start_ms": int, "end_ms": int}   event time, inclusive
    created_at          int, wall-clock epoch ms when the trigger was decided
    source              {"group": str, "partitions": [int], ...} who decided it (free-form)

Times are epoch milliseconds. Unknown extra keys are kept in `extra` and ignored by the worker;
a record with a newer ``schema_version`` is refused (`TriggerError`), so an old worker never
half-understands a new record.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

TRIGGER_SCHEMA_VERSION = 1
REASONS = ("feature_drift", "prediction_drift", "performance", "schedule", "volume")


class TriggerError(ValueError):
    """A trigger record is malformed; the message says which field and why."""


@dataclass(frozen=True)
class RetrainTrigger:
    """One retraining trigger (see module docstring for the wire format)."""

    reason: str
    model: dict[str, Any]
    feature_spec: str
    detector: dict[str, Any]
    statistic: float
    threshold: float
    current: dict[str, Any]
    suggested_training_window: dict[str, int]
    idempotency_key: str
    created_at: int
    reference: dict[str, Any] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    trigger_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    schema_version: int = TRIGGER_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise TriggerError("invalid retraining trigger: " + "; ".join(problems))

    @property
    def window(self) -> tuple[int, int]:
        """The suggested training window (start_ms, end_ms), event time, inclusive."""
        w = self.suggested_training_window
        return int(w["start_ms"]), int(w["end_ms"])

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _FIELDS if k != "extra"}
        return {**self.extra, **d}

    def to_json(self) -> bytes:
        """Compact JSON bytes (NaN/inf become null)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetrainTrigger:
        if not isinstance(d, Mapping):
            raise TriggerError(f"a trigger must be a JSON object, got {type(d).__name__}")
        version = d.get("schema_version", TRIGGER_SCHEMA_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version > TRIGGER_SCHEMA_VERSION:
            raise TriggerError(f"trigger schema_version {version!r} is not supported (this streamscore reads "
                               f"<= {TRIGGER_SCHEMA_VERSION}); upgrade the worker")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise TriggerError(f"trigger is missing required field(s) {missing}")
        known = {k: d[k] for k in _FIELDS if k in d and k != "extra"}
        extra = {k: v for k, v in d.items() if k not in _FIELDS}
        try:
            return cls(**known, extra=extra)
        except TypeError as exc:
            raise TriggerError(f"malformed trigger: {exc}") from None

    @classmethod
    def from_json(cls, raw: bytes | str) -> RetrainTrigger:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise TriggerError(f"trigger is not valid JSON: {exc}") from None
        return cls.from_dict(data)


_FIELDS = tuple(RetrainTrigger.__dataclass_fields__)
_REQUIRED = ("reason", "model", "feature_spec", "detector", "statistic", "threshold", "current",
             "suggested_training_window", "idempotency_key", "created_at")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _problems(t: RetrainTrigger) -> list[str]:
    p: list[str] = []
    if t.reason not in REASONS:
        p.append(f"reason {t.reason!r} is not one of {REASONS}")
    if not isinstance(t.model, Mapping) or not isinstance(t.model.get("name"), str) or not t.model.get("name"):
        p.append("model must be {'name': str, 'version': int}")
    elif t.model.get("version") is not None and not _is_int(t.model.get("version")):
        p.append(f"model.version must be an integer, got {t.model.get('version')!r}")
    if not isinstance(t.feature_spec, str) or not t.feature_spec:
        p.append("feature_spec must be a non-empty string (the feature-spec hash)")
    if not isinstance(t.detector, Mapping) or not isinstance(t.detector.get("name"), str):
        p.append("detector must be {'name': str, 'params': {...}}")
    if not _is_num(t.statistic):
        p.append(f"statistic must be a number, got {t.statistic!r}")
    if not _is_num(t.threshold):
        p.append(f"threshold must be a number, got {t.threshold!r}")
    if not isinstance(t.current, Mapping):
        p.append("current must be {'start_ms', 'end_ms', 'n'}")
    w = t.suggested_training_window
    if not isinstance(w, Mapping) or not _is_int(w.get("start_ms")) or not _is_int(w.get("end_ms")):
        p.append("suggested_training_window must be {'start_ms': int, 'end_ms': int}")
    elif w["start_ms"] >= w["end_ms"]:
        p.append(f"suggested_training_window is empty: start_ms {w['start_ms']} >= end_ms {w['end_ms']}")
    if not isinstance(t.idempotency_key, str) or not t.idempotency_key:
        p.append("idempotency_key must be a non-empty string")
    if not _is_int(t.created_at):
        p.append(f"created_at must be epoch milliseconds (int), got {t.created_at!r}")
    if not isinstance(t.evidence, list):
        p.append("evidence must be a list")
    if not isinstance(t.trigger_id, str) or not t.trigger_id:
        p.append("trigger_id must be a non-empty string")
    return p


__all__ = ["REASONS", "TRIGGER_SCHEMA_VERSION", "RetrainTrigger", "TriggerError"]
