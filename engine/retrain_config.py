"""The ``retrain:`` section of the engine configuration (`streamscore retrain`, docs/retraining.md).

The YAML section is flat; the worker's own settings live on `RetrainConfig`, the procedure's on
its `policy` (`models.retraining.RetrainPolicy`, with the gate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from features.spec import FeatureSpec, parse_duration
from models.gate import PromotionGate
from models.retraining import RetrainPolicy, min_warmup_ms

# YAML key -> RetrainPolicy field (durations where the field name ends in _ms)
POLICY_KEYS = {"min_rows": "min_rows", "min_positives": "min_positives", "test_fraction": "test_fraction",
               "horizon": "horizon_ms", "promote": "promote", "seed": "seed", "gate": "gate", "warmup": "warmup_ms"}


@dataclass(frozen=True)
class RetrainConfig:
    """Retraining worker settings (durations in ms; YAML also takes ``30d``, ``1h``, ...).

    Attributes:
        trigger_topic: where monitors publish `RetrainTrigger` records.
        outcome_topic: where the worker publishes one outcome record per trigger.
        group_id: the workers' consumer group; default ``<group_id>.retrain``.
        history_retention: ``retention.ms`` `streamscore topics create` gives the input topic,
            which is the history the worker trains from (-1: keep forever).
        timestamp_slack: how much earlier than its event time a record's Kafka timestamp may be
            (the history reader seeks that much earlier; used with a warm-up duration).
        policy: how a trigger becomes a candidate and when it is promoted. YAML keys:
            ``min_rows``, ``min_positives``, ``test_fraction``, ``horizon``, ``promote``, ``seed``,
            ``gate`` (`PromotionGate`) and ``warmup`` (``all``, the default, or a duration).
    """

    trigger_topic: str = "retrain.triggers"
    outcome_topic: str = "retrain.outcomes"
    group_id: str | None = None
    history_retention: int = 30 * 86_400_000
    timestamp_slack: int = 3_600_000
    policy: RetrainPolicy = field(default_factory=RetrainPolicy)

    def __post_init__(self) -> None:
        topics = (self.trigger_topic, self.outcome_topic)
        if not all(isinstance(t, str) and t for t in topics) or topics[0] == topics[1]:
            raise ValueError(f"retrain.trigger_topic and retrain.outcome_topic must be distinct names, got {topics}")
        if self.history_retention != -1 and self.history_retention < 3_600_000:
            raise ValueError(f"retrain.history_retention must be -1 (forever) or >= 1h, got {self.history_retention}")
        if not 0 <= self.timestamp_slack <= 30 * 86_400_000:
            raise ValueError(f"retrain.timestamp_slack must be in [0, 30d], got {self.timestamp_slack}")

    def spec_problem(self, spec: FeatureSpec) -> str | None:
        """Why these settings do not fit `spec` (a warm-up shorter than `min_warmup_ms`), or None."""
        warmup = self.policy.warmup_ms
        if warmup is not None and warmup < min_warmup_ms(spec):
            return (f"retrain.warmup ({warmup} ms) must be 'all' or >= {min_warmup_ms(spec)} ms (the feature "
                    "spec's longest window / idle TTL)")
        return None

    def consumer_group(self, engine_group: str) -> str:
        return self.group_id or f"{engine_group}.retrain"

    def to_mapping(self) -> dict[str, Any]:
        """The flat YAML form (`from_mapping` reads it back to an equal config)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy"}
        policy = {key: getattr(self.policy, name) for key, name in POLICY_KEYS.items()}
        policy["gate"] = self.policy.gate.to_dict()
        policy["warmup"] = "all" if policy["warmup"] is None else policy["warmup"]
        return {**own, **policy}

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> RetrainConfig:
        """From the YAML mapping; unknown keys and bad values raise ValueError naming the key."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"retrain must be a mapping, got {type(raw).__name__}")
        own = {f.name for f in dataclasses.fields(cls)} - {"policy"}
        unknown = sorted(set(raw) - own - set(POLICY_KEYS))
        if unknown:
            raise ValueError(f"unknown retrain keys {unknown}; valid keys are {sorted(own | set(POLICY_KEYS))}")
        try:
            kwargs = {k: v for k, v in raw.items() if k in own}
            for key in ("history_retention", "timestamp_slack"):
                if key in kwargs and kwargs[key] != -1:
                    kwargs[key] = parse_duration(kwargs[key])
            policy = {POLICY_KEYS[k]: v for k, v in raw.items() if k in POLICY_KEYS}
            if policy.get("warmup_ms") == "all":
                policy["warmup_ms"] = None
            for key in ("horizon_ms", "warmup_ms"):
                if policy.get(key) is not None:
                    policy[key] = parse_duration(policy[key])
            if "gate" in policy and not isinstance(policy["gate"], PromotionGate):
                policy["gate"] = PromotionGate.from_mapping(policy["gate"])
            return cls(**kwargs, policy=RetrainPolicy(**policy))
        except ValueError as exc:  # GateConfigError included
            text = str(exc)
            raise ValueError(text if text.startswith("retrain") else f"retrain: {text}") from None
        except TypeError as exc:
            raise ValueError(f"retrain: {exc}") from None
