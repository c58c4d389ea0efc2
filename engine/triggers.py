"""When a monitor's signal becomes a retraining trigger: hysteresis, cooldown, idempotency, fallbacks.

One `TriggerPolicy` per input partition (its state travels with the partition's monitor state).
A monitor evaluates windows; each evaluation reports, per reason, a `Signal` or nothing:

- a signal in a window whose predecessor had none is a **warning** (logged and counted, no
  trigger);
- a signal persisting for ``confirm_windows`` consecutive evaluations is **confirmed**: a
  `RetrainTrigger` is emitted, unless the same reason triggered on this partition less than
  ``cooldown_ms`` of event time before the window's end (then it is **suppressed**, counted);
- a window without the signal resets the count (hysteresis: one noisy window never triggers).

After a trigger the count restarts from zero. The idempotency key is
``<model name>/v<version>/<reason>/<bucket>`` with ``bucket = window end // key_bucket_ms``
(event time), so every partition and every restarted process that confirms the same condition
for the same model in the same bucket produces the same key; the retraining worker trains at
most once per key.

Fallbacks (off by default): ``schedule_ms`` triggers (reason "schedule") when that much event
time passed since the reference started or the last trigger of any reason on the partition;
``volume_events`` triggers (reason "volume") after that many events on the partition since then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.config import MonitorConfig
from models.trigger import REASONS, RetrainTrigger

WARNING, TRIGGER, SUPPRESSED, QUIET = "warning", "trigger", "suppressed", "quiet"


@dataclass(frozen=True)
class Signal:
    """Evidence that one reason holds in one evaluated window.

    Attributes:
        reason: one of `models.trigger.REASONS`.
        detector: ``{"name": str, "params": {...}}``.
        statistic / threshold: the decisive value and the threshold it crossed.
        evidence: per column or metric, decisive first (see `models.trigger`).
    """

    reason: str
    detector: dict[str, Any]
    statistic: float
    threshold: float
    evidence: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Window:
    """An evaluated window: event-time range (inclusive) and rows."""

    start_ms: int
    end_ms: int
    n: int

    def to_dict(self) -> dict[str, int]:
        return {"start_ms": int(self.start_ms), "end_ms": int(self.end_ms), "n": int(self.n)}


@dataclass(frozen=True)
class TriggerContext:
    """What every trigger of a partition's monitor says about the watched model and its origin."""

    model: dict[str, Any]
    feature_spec: str
    reference: dict[str, Any]
    source: dict[str, Any]


class TriggerPolicy:
    """Hysteresis, cooldown, idempotency and fallbacks for one partition (see module docstring).

    `state` is JSON-safe and is persisted with the partition's monitor state.
    """

    def __init__(self, cfg: MonitorConfig, state: dict[str, Any] | None = None,
                 wall_ms: Callable[[], int] | None = None) -> None:
        self.cfg = cfg
        self.state: dict[str, Any] = state or {"reasons": {}, "since_ms": None, "events": 0}
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))

    def _reason(self, reason: str) -> dict[str, Any]:
        return self.state["reasons"].setdefault(reason, {"consecutive": 0, "last_trigger_ms": None})

    def observe(self, reason: str, signal: Signal | None, window: Window,
                ctx: TriggerContext) -> tuple[str, RetrainTrigger | None]:
        """Account one evaluated window for `reason`; return (outcome, trigger or None) where the
        outcome is quiet | warning | suppressed | trigger."""
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}")
        st = self._reason(reason)
        if signal is None:
            st["consecutive"] = 0
            return QUIET, None
        st["consecutive"] += 1
        if st["consecutive"] < self.cfg.confirm_windows:
            return WARNING, None
        last = st["last_trigger_ms"]
        if last is not None and window.end_ms < last + self.cfg.cooldown_ms:
            return SUPPRESSED, None
        trigger = self._trigger(signal, window, ctx, confirmed=st["consecutive"])
        st["consecutive"] = 0
        st["last_trigger_ms"] = int(window.end_ms)
        self._restart_fallbacks(window.end_ms)
        return TRIGGER, trigger

    def count(self, events: int, end_ms: int | None) -> None:
        """Account `events` more events on the partition, the latest at event time `end_ms`."""
        self.state["events"] += int(events)
        if self.state["since_ms"] is None and end_ms is not None:
            self.state["since_ms"] = int(end_ms)

    def fallbacks(self, window: Window, ctx: TriggerContext) -> list[RetrainTrigger]:
        """Schedule and volume triggers that are due at `window`'s end (at most one, schedule first)."""
        cfg, st = self.cfg, self.state
        due: Signal | None = None
        if cfg.schedule_ms and st["since_ms"] is not None and window.end_ms - st["since_ms"] >= cfg.schedule_ms:
            elapsed = window.end_ms - st["since_ms"]
            due = Signal("schedule", {"name": "schedule", "params": {"schedule_ms": cfg.schedule_ms}},
                         float(elapsed), float(cfg.schedule_ms),
                         [{"name": "event_time_elapsed_ms", "statistic": "elapsed_ms", "value": float(elapsed),
                           "threshold": float(cfg.schedule_ms), "n": int(st["events"])}])
        elif cfg.volume_events and st["events"] >= cfg.volume_events:
            due = Signal("volume", {"name": "volume", "params": {"volume_events": cfg.volume_events}},
                         float(st["events"]), float(cfg.volume_events),
                         [{"name": "events", "statistic": "count", "value": float(st["events"]),
                           "threshold": float(cfg.volume_events), "n": int(st["events"])}])
        if due is None:
            return []
        self._reason(due.reason)["last_trigger_ms"] = int(window.end_ms)
        self._restart_fallbacks(window.end_ms)
        return [self._trigger(due, window, ctx, confirmed=1)]

    def _restart_fallbacks(self, end_ms: int) -> None:
        self.state["since_ms"] = int(end_ms)
        self.state["events"] = 0

    def idempotency_key(self, model: dict[str, Any], reason: str, end_ms: int) -> str:
        return f"{model['name']}/v{model.get('version')}/{reason}/{int(end_ms) // self.cfg.key_bucket_ms}"

    def _trigger(self, signal: Signal, window: Window, ctx: TriggerContext, confirmed: int) -> RetrainTrigger:
        end = int(window.end_ms)
        return RetrainTrigger(
            reason=signal.reason,
            model=dict(ctx.model),
            feature_spec=ctx.feature_spec,
            detector={"name": signal.detector["name"],
                      "params": {**signal.detector.get("params", {}), "confirm_windows": self.cfg.confirm_windows,
                                 "cooldown_ms": self.cfg.cooldown_ms}},
            statistic=float(signal.statistic),
            threshold=float(signal.threshold),
            current={**window.to_dict(), "windows_confirmed": confirmed},
            suggested_training_window={"start_ms": max(0, end - self.cfg.training_window_ms), "end_ms": end},
            idempotency_key=self.idempotency_key(ctx.model, signal.reason, end),
            created_at=self._wall_ms(),
            reference=dict(ctx.reference),
            evidence=list(signal.evidence),
            source=dict(ctx.source),
        )


__all__ = ["QUIET", "SUPPRESSED", "TRIGGER", "WARNING", "Signal", "TriggerContext", "TriggerPolicy", "Window"]
