"""The retraining procedure: trigger + history -> train -> evaluate vs champion -> gate -> decide.

`retrain` runs one trigger (`models.trigger.RetrainTrigger`) to its end:

1. check the trigger against the running feature spec (a trigger for another spec is an error);
2. dedupe: if a version whose lineage carries the trigger's idempotency key exists, nothing is
   trained (decision ``duplicate``); if that version was left undecided by a crash between
   registration and decision, the decision is taken now from its recorded metrics. A trigger
   about a model version that is no longer the one `alias` serves (it was replaced since, e.g.
   by the retraining another partition's trigger started) trains nothing either (decision
   ``stale``): the replacement is watched by the monitors afresh;
3. load the history for the trigger's window through `load_history` (the input topic via
   `engine.history`, or a log file): by default everything retained before the window's end, or
   from ``start - policy.warmup_ms`` (see `RetrainPolicy.warmup_ms` for what that trades away);
4. `models.pipeline.build_training_set` (the engine's feature executor, the training labels);
   too few usable rows or positives is an error (`RetrainError`), nothing is registered;
5. `models.training_run.train_and_register` without promotion, with the trigger as ``lineage``
   (the candidate and the champion are evaluated on the same time-gapped holdout rows);
6. `models.gate.PromotionGate`: pass -> promote (compare-and-set on the champion the candidate
   was compared with); fail -> the candidate is registered as **rejected** with the reason.

Errors before a candidate exists raise (`RetrainError` for the user-level ones: bad trigger,
empty or too-small window); the champion is never touched then. Decisions are recorded in the
registry's audit log (promote / reject, actor `actor`) and returned as a `RetrainOutcome`, whose
`to_record` is the outcome record the worker publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from features.spec import FeatureSpec
from models.gate import PromotionGate
from models.labels import LabelDefinition
from models.pipeline import build_training_set
from models.profile import memory_ms
from models.registry import REJECTED, AliasMoved, Registry, RegistryError
from models.training_run import train_and_register
from models.trigger import RetrainTrigger

OUTCOME_SCHEMA_VERSION = 1
DECISIONS = ("promoted", "rejected", "registered", "duplicate", "stale", "failed")
DEFAULT_ACTOR = "retrain-worker"


class RetrainError(ValueError):
    """A trigger cannot be trained on (bad trigger, empty or too-small window); nothing registered."""


@dataclass(frozen=True)
class RetrainPolicy:
    """How a trigger becomes a candidate and when the candidate is promoted.

    Attributes:
        min_rows / min_positives: least usable (uncensored) rows / positive labels in the window.
        test_fraction: share of the window's rows (the latest) held out for evaluation.
        horizon_ms: label horizon when the champion records none (else the champion's is used,
            so the candidate predicts the same thing).
        promote: False registers candidates that pass the gate without promoting them.
        seed: training seed.
        gate: the promotion gate.
        warmup_ms: history replayed before the window start to build feature state. None (the
            default): all retained history, which makes every row equal to what the engine
            computed as long as the history holds everything the engine consumed. A duration
            (>= `min_warmup_ms`) reads less: window aggregates stay exact, but entity memory
            (recency of a filtered event such as the last cart add, the depth of a session) of
            an entity never idle for ``idle_ttl`` across the warm-up start can differ.
    """

    min_rows: int = 1_000
    min_positives: int = 20
    test_fraction: float = 0.2
    horizon_ms: int = 3_600_000
    promote: bool = True
    seed: int = 0
    gate: PromotionGate = field(default_factory=PromotionGate)
    warmup_ms: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.min_rows, int) or self.min_rows < 10:
            raise ValueError(f"min_rows must be an integer >= 10, got {self.min_rows!r}")
        if not isinstance(self.min_positives, int) or self.min_positives < 1:
            raise ValueError(f"min_positives must be an integer >= 1, got {self.min_positives!r}")
        if not 0.05 <= self.test_fraction <= 0.5:
            raise ValueError(f"test_fraction must be in [0.05, 0.5], got {self.test_fraction!r}")
        if not isinstance(self.horizon_ms, int) or self.horizon_ms <= 0:
            raise ValueError(f"horizon must be > 0 ms, got {self.horizon_ms!r}")


@dataclass
class History:
    """Events for a retraining run, as a loader returns them.

    Attributes:
        events: canonical events, in offset order within each partition.
        num_partitions: partitions of the topic they came from.
        invalid: records that failed validation, by reason (counted, not fatal).
        source: where they came from, recorded in the lineage (e.g. topic and offset ranges).
    """

    events: Iterable[dict[str, Any]]
    num_partitions: int
    invalid: dict[str, int] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


HistoryLoader = Callable[[int | None, int], History]
"""``(from_ms, to_ms) -> History``: events covering event times [from_ms, to_ms] at least, in
offset order per partition; ``from_ms`` None: from the start of the retained history."""


@dataclass
class RetrainOutcome:
    """What became of one trigger; `to_record` is the published outcome record (schema v1)."""

    decision: str
    reason: str
    model: str
    trigger_id: str | None = None
    idempotency_key: str | None = None
    version: int | None = None
    champion_before: int | None = None
    champion_after: int | None = None
    window: dict[str, int] | None = None
    rows: int | None = None
    positives: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {"schema_version": OUTCOME_SCHEMA_VERSION, **self.__dict__, "seconds": round(self.seconds, 3),
                "finished_at": int(time.time() * 1000)}

    def summary(self) -> str:
        what = f"{self.model} v{self.version}" if self.version is not None else self.model
        return f"{self.decision}: {what}: {self.reason}"

    @classmethod
    def failed(cls, reason: str, trigger: RetrainTrigger | None = None, model: str = "?",
               seconds: float = 0.0) -> RetrainOutcome:
        """The outcome of a trigger that produced no candidate."""
        if trigger is None:
            return cls(decision="failed", reason=reason, model=model, seconds=seconds)
        return cls(decision="failed", reason=reason, model=str(trigger.model.get("name", model)),
                   trigger_id=trigger.trigger_id, idempotency_key=trigger.idempotency_key,
                   window=dict(trigger.suggested_training_window), seconds=seconds)


def schedule_trigger(model: str, feature_spec: str, end_ms: int, window_ms: int,
                     champion_version: int | None = None, source: Mapping[str, Any] | None = None) -> RetrainTrigger:
    """A ``schedule`` trigger for the event-time window ``[end_ms - window_ms, end_ms]``. Its
    idempotency key is the model, spec and window, so the same schedule slot trains once."""
    start = int(end_ms) - int(window_ms)
    return RetrainTrigger(
        reason="schedule", model={"name": model, "version": champion_version}, feature_spec=feature_spec,
        detector={"name": "schedule", "params": {"window_ms": int(window_ms)}}, statistic=0.0, threshold=0.0,
        current={"start_ms": start, "end_ms": int(end_ms), "n": 0},
        suggested_training_window={"start_ms": start, "end_ms": int(end_ms)},
        idempotency_key=f"schedule:{model}:{feature_spec}:{start}:{int(end_ms)}",
        created_at=int(time.time() * 1000), source=dict(source or {}),
    )


def min_warmup_ms(spec: FeatureSpec) -> int:
    """The shortest warm-up allowed: the spec's memory (`models.profile.memory_ms`: the longest
    window, or the entity-memory TTL if longer). With it, window aggregates are exact and
    entities idle for the TTL are forgotten on both sides; memory of entities active without
    such a break can still differ (`RetrainPolicy`)."""
    return memory_ms(spec)


def version_for_key(registry: Registry, name: str, idempotency_key: str) -> int | None:
    """The version whose lineage records `idempotency_key` (the latest, if several), or None."""
    if name not in registry.models():
        return None
    for version in reversed(registry.versions(name)):
        if registry.resolve(name, version).manifest.lineage.get("idempotency_key") == idempotency_key:
            return version
    return None


def retrain(
    trigger: RetrainTrigger,
    load_history: HistoryLoader,
    spec: FeatureSpec,
    registry: Registry,
    policy: RetrainPolicy | None = None,
    *,
    alias: str = "champion",
    actor: str = DEFAULT_ACTOR,
    log: Callable[[str], None] | None = print,
) -> RetrainOutcome:
    """Run `trigger` through the procedure of the module docstring and return its outcome.
    `alias` is the alias the engines serve (``model_alias``): the candidate is compared with the
    version it holds and, if the gate passes, takes it over."""
    policy = policy or RetrainPolicy()
    say = log or (lambda _line: None)
    t0 = time.perf_counter()
    name = str(trigger.model["name"])
    start, end = trigger.window
    base = {"model": name, "trigger_id": trigger.trigger_id, "idempotency_key": trigger.idempotency_key,
            "window": {"start_ms": start, "end_ms": end}}
    if trigger.feature_spec != spec.hash:
        raise RetrainError(f"trigger {trigger.trigger_id} is for feature spec {trigger.feature_spec}, but this "
                           f"worker runs {spec.hash}; retrain with the matching spec")

    existing = version_for_key(registry, name, trigger.idempotency_key)
    if existing is not None:
        return _resume(registry, name, existing, policy, alias, actor, base, say, t0)

    champion = _champion(registry, name, alias)
    watched = trigger.model.get("version")
    if watched is not None and champion is not None and champion.version != watched:
        reason = (f"the trigger is about v{watched}, but {alias} is v{champion.version} now; the monitors watch "
                  "the new version afresh, so nothing is retrained")
        say(f"[retrain] stale trigger {trigger.trigger_id}: {reason}")
        return RetrainOutcome(decision="stale", reason=reason, champion_before=champion.version,
                              champion_after=champion.version, seconds=time.perf_counter() - t0, **base)
    label = (LabelDefinition.from_dict(champion.manifest.training.label) if champion is not None
             else LabelDefinition(horizon_ms=policy.horizon_ms))
    warmup = policy.warmup_ms
    if warmup is not None and warmup < min_warmup_ms(spec):
        raise RetrainError(f"warm-up {warmup} ms is shorter than the feature spec's memory ({min_warmup_ms(spec)} ms: "
                           "longest window / idle TTL); rows would lack window state")
    say(f"[retrain] trigger {trigger.trigger_id} ({trigger.reason}, key {trigger.idempotency_key}): window "
        f"{_iso(start)} .. {_iso(end)}, warm-up {'all retained history' if warmup is None else f'{warmup} ms'}; "
        f"champion {'v' + str(champion.version) if champion else 'none'}")
    history = load_history(None if warmup is None else start - warmup, end)
    events = list(history.events)
    if not events:
        raise RetrainError(f"no valid events in the history for window {_iso(start)} .. {_iso(end)} "
                           f"(source {history.source}, invalid {history.invalid})")
    data = build_training_set(events, spec, history.num_partitions, label.horizon_ms, window=(start, end),
                              invalid=history.invalid)
    usable = data.ts + label.horizon_ms <= data.data_end_ms
    rows, positives = int(usable.sum()), int(data.y[usable].sum())
    say(f"[retrain] {data.n_events:,} events read (invalid {sum(data.invalid.values()):,}, late {data.late:,}); "
        f"{len(data):,} rows in the window, {rows:,} with observed labels, {positives:,} positive")
    if rows < policy.min_rows or positives < policy.min_positives:
        raise RetrainError(f"window {_iso(start)} .. {_iso(end)} is too small: {rows:,} rows with observed labels "
                           f"(min {policy.min_rows:,}), {positives:,} positives (min {policy.min_positives:,})")

    lineage = {
        "trigger_id": trigger.trigger_id, "idempotency_key": trigger.idempotency_key,
        "trigger_reason": trigger.reason, "trigger_model": dict(trigger.model),
        "trigger_created_at": trigger.created_at, "data_window": {"start_ms": start, "end_ms": end},
        "warmup_ms": warmup, "feature_spec": spec.hash, "source": history.source,
        "events": data.n_events, "invalid": data.invalid,
    }
    result = train_and_register(
        data.X, data.y, data.ts, data.names, data.spec_hash, registry, name, label,
        test_fraction=policy.test_fraction, data_end_ms=data.data_end_ms, seed=policy.seed, promote=False,
        profile_warm_from_ms=data.warm_from_ms,
        alias=alias, actor=actor, reason=f"retrained for trigger {trigger.trigger_id} ({trigger.reason})", log=log,
        lineage=lineage,
    )
    outcome = _decide(registry, name, result.version, result.metrics, result.champion_before, policy, alias, actor,
                      base, say)
    outcome.rows, outcome.positives, outcome.source = rows, positives, history.source
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _champion(registry: Registry, name: str, alias: str) -> Any:
    try:
        return registry.resolve(name, alias)
    except (RegistryError, LookupError):
        return None


def _decide(registry: Registry, name: str, version: int, metrics: Mapping[str, Any], champion_before: int | None,
            policy: RetrainPolicy, alias: str, actor: str, base: dict[str, Any],
            say: Callable[[str], None]) -> RetrainOutcome:
    """Gate `version` on its recorded `metrics`; promote (if the champion is still
    `champion_before`) or reject it. Returns the outcome (decision and reason)."""
    gate = policy.gate.check(metrics)
    summary = _metric_summary(metrics, gate.checks)
    decision, reason, after = "rejected", gate.reason, champion_before
    if gate.passed and not policy.promote:
        decision, reason = "registered", gate.reason + " (promotion disabled)"
    elif gate.passed:
        try:
            registry.promote(name, version, alias=alias, actor=actor, reason=gate.reason, if_current=champion_before)
            decision, after = "promoted", version
        except AliasMoved as exc:
            reason = f"not promoted: the champion changed while the candidate was evaluated ({exc}); retrigger"
    if decision == "rejected":
        registry.reject(name, version, reason, actor=actor)
    say(f"[retrain] {decision} {name} v{version}: {reason}")
    return RetrainOutcome(decision=decision, reason=reason, version=version, champion_before=champion_before,
                          champion_after=after, metrics=summary, **base)


def _resume(registry: Registry, name: str, version: int, policy: RetrainPolicy, alias: str, actor: str,
            base: dict[str, Any], say: Callable[[str], None], t0: float) -> RetrainOutcome:
    """The key already produced `version`: report it, or decide it if a crash left it undecided."""
    status, why = registry.status(name, version)
    promoted = any(e.get("action") == "promote" and e.get("version") == version for e in registry.audit(name))
    manifest = registry.resolve(name, version).manifest
    if status == REJECTED or promoted or not policy.promote:
        state = "rejected" if status == REJECTED else ("promoted before" if promoted else "registered")
        reason = f"idempotency key already produced v{version} ({state}{': ' + why if why else ''}); not retrained"
        say(f"[retrain] duplicate: {reason}")
        return RetrainOutcome(decision="duplicate", reason=reason, version=version,
                              champion_before=manifest.parent_version, seconds=time.perf_counter() - t0, **base)
    say(f"[retrain] v{version} of this key was registered but not decided (interrupted run); deciding now")
    outcome = _decide(registry, name, version, manifest.metrics, manifest.parent_version, policy, alias, actor, base,
                      say)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _metric_summary(metrics: Mapping[str, Any], checks: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("n", "base_rate", "auc", "log_loss", "brier", "ece")
    test = metrics.get("test") or {}
    champion = metrics.get("champion") or {}
    return {
        "candidate": {k: test.get(k) for k in keys},
        "baseline": {k: ((metrics.get("baseline") or {}).get("test") or {}).get(k) for k in ("auc", "log_loss")},
        "champion": ({"version": champion.get("version"), **{k: (champion.get("test") or {}).get(k) for k in keys}}
                     if champion else None),
        "gate": dict(checks),
    }


def _iso(ms: int) -> str:
    return np.datetime_as_string(np.datetime64(int(ms), "ms"), unit="s") + "Z"
