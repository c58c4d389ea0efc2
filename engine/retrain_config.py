"""The ``retrain:`` section of the engine configuration (`streamscore retrain`, docs/retraining.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from features.spec import FeatureSpec, parse_duration
from models.gate import PromotionGate
from models.retraining import RetrainPolicy, min_warmup_ms

DURATION_KEYS = ("history_retention", "timestamp_slack", "horizon", "warmup")


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining worker settings. Durations accept ``30d``, ``1h``, ... or milliseconds.

    Attributes:
        trigger_topic: where monitors publish `RetrainTrigger` records.
        outcome_topic: where the worker publishes one outcome record per trigger.
        group_id: the workers' consumer group; default ``<group_id>.retrain``.
        history_retention: ``retention.ms`` `streamscore topics create` gives the input topic,
            which is the history the worker trains from (-1: keep forever).
        warmup: history replayed before a window's start: ``all`` (default, null too) reads the
            whole retained topic, exact; a duration (>= the spec's longest window and idle TTL)
            reads less at the cost described in `models.retraining.RetrainPolicy`.
        timestamp_slack: how much earlier than its event time a record's Kafka timestamp may be
            (the history reader seeks that much earlier; used with a warm-up duration).
        horizon: label horizon when the champion records none.
        min_rows / min_positives / test_fraction / promote / seed: `RetrainPolicy`.
        gate: `PromotionGate` thresholds.
    """

    trigger_topic: str = "retrain.triggers"
    outcome_topic: str = "retrain.outcomes"
    group_id: str | None = None
    history_retention: int = 30 * 86_400_000
    warmup: int | None = None
    timestamp_slack: int = 3_600_000
    horizon: int = 3_600_000
    min_rows: int = 1_000
    min_positives: int = 20
    test_fraction: float = 0.2
    promote: bool = True
    seed: int = 0
    gate: PromotionGate = field(default_factory=PromotionGate)

    def __post_init__(self) -> None:
        topics = (self.trigger_topic, self.outcome_topic)
        if not all(isinstance(t, str) and t for t in topics) or topics[0] == topics[1]:
            raise ValueError(f"retrain.trigger_topic and retrain.outcome_topic must be distinct names, got {topics}")
        if self.history_retention != -1 and self.history_retention < 3_600_000:
            raise ValueError(f"retrain.history_retention must be -1 (forever) or >= 1h, got {self.history_retention}")
        if not 0 <= self.timestamp_slack <= 30 * 86_400_000:
            raise ValueError(f"retrain.timestamp_slack must be in [0, 30d], got {self.timestamp_slack}")
        self.policy()  # validates the policy keys

    def policy(self) -> RetrainPolicy:
        try:
            return RetrainPolicy(min_rows=self.min_rows, min_positives=self.min_positives,
                                 test_fraction=self.test_fraction, horizon_ms=self.horizon, promote=self.promote,
                                 seed=self.seed, gate=self.gate, warmup_ms=self.warmup)
        except ValueError as exc:
            raise ValueError(f"retrain.{exc}") from None

    def spec_problem(self, spec: FeatureSpec) -> str | None:
        """Why these settings do not fit `spec` (a warm-up shorter than `min_warmup_ms`), or None."""
        if self.warmup is not None and self.warmup < min_warmup_ms(spec):
            return (f"retrain.warmup ({self.warmup} ms) must be 'all' or >= {min_warmup_ms(spec)} ms (the feature "
                    "spec's longest window / idle TTL)")
        return None

    def consumer_group(self, engine_group: str) -> str:
        return self.group_id or f"{engine_group}.retrain"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RetrainConfig:
        """From the YAML mapping; unknown keys and bad values raise ValueError naming the key."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"retrain must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown retrain keys {unknown}; valid keys are {sorted(known)}")
        kwargs = dict(raw)
        try:
            if kwargs.get("warmup") in ("all", None):
                kwargs["warmup"] = None
            for key in DURATION_KEYS:
                if kwargs.get(key) is not None and not (key == "history_retention" and kwargs[key] == -1):
                    kwargs[key] = parse_duration(kwargs[key])
            if "gate" in kwargs and not isinstance(kwargs["gate"], PromotionGate):
                kwargs["gate"] = PromotionGate.from_mapping(kwargs["gate"])
        except (TypeError, ValueError) as exc:  # GateConfigError included
            raise ValueError(f"retrain: {exc}") from None
        return cls(**kwargs)
