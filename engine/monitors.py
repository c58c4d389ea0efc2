"""Drift and performance monitors inside the engine, per input partition, at micro-batch granularity.

`DriftMonitor` (one per engine process) watches the serving champion: its manifest's profile
is the reference (models/drift.py), its label horizon defines live outcomes (engine/labels.py),
its holdout metrics are the performance baseline. `PartitionMonitor` is the state of one
partition; the engine's loop calls `DriftMonitor.observe` once per partition and batch with the
batch's feature rows and champion scores, and gets back state records to write with the batch
and triggers to publish in the batch's transaction.

Per batch and partition (all vectorised over the batch except the label join, which touches only
the sampled entities' events):

1. **Windows.** The champion-answered rows are counted into the reference bins of every feature
   and of the score (`ReferenceBins.count`: one searchsorted per column, one bincount). A window
   closes at the end of the first batch at which it holds ``window_events`` rows or the
   partition's event time passed its first event + ``window_ms``. The first ``warmup_events``
   rows after the reference (re)started go into no window.
2. **Score detector.** ADWIN (river) is fed the means of consecutive chunks of ``score_chunk``
   scores; a detection whose relative change of the mean score is at least
   ``score_shift_floor`` is a prediction-drift signal of the current window.
3. **Labels.** Outcomes resolved by the label join (engine/labels.py: derived from purchases,
   or given by the label topic through `observe_labels`) accumulate into a performance window
   of ``label_window`` labels; a second ADWIN watches the calibration residual
   ``y - p`` label by label. A full performance window is evaluated with `models.evaluate`.
4. **Evaluation.** A closed window of at least ``min_window_events`` rows is compared with the
   reference: PSI, JS and binned KS per column, thresholds calibrated for its size
   (`NullCalibration`, Bonferroni over the m columns). A column drifts if its PSI exceeds both
   the calibrated threshold and ``psi_floor``. Signals per reason go to the partition's
   `TriggerPolicy` (warning, confirmation over ``confirm_windows``, cooldown, idempotency key).

State (windows, detectors, label-window pairs, trigger policy) is one record under `MONITOR_KEY`
in the partition's RocksDB store and its changelog, written with every batch (same WriteBatch,
same transaction), so a restart or a moved partition resumes where the committed batches left
it. The record is an explicit, versioned encoding (engine/state_codec.py: JSON fields and raw
array bytes; the ADWIN windows in river's own serialisation), not a pickle: a record of an
unknown version is refused with an error, an unreadable one restarts the partition's monitor.
When the watched champion changes, a partition's monitor switches reference at its next batch:
windows, detectors and performance window restart empty, the switch is logged, counted and kept
in the state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
import river
from river.drift import ADWIN

from engine.config import MonitorConfig
from engine.labels import LabelJoin, Resolved
from engine.state_codec import StateRecordError, UnknownStateVersion, pack, unpack
from engine.triggers import QUIET, Signal, TriggerContext, TriggerPolicy, Window
from models.drift import NullCalibration, ReferenceBins, compare, n_bucket
from models.evaluate import evaluate
from models.manifest import Manifest
from models.trigger import RetrainTrigger

log = logging.getLogger("streamscore.monitor")

MONITOR_KEY = "\x00monitor"
STATE_MAGIC = b"SSMON"
STATE_VERSION = 2  # 1 was a pickle (before this encoding); read as "start afresh"
LEGACY_PICKLE = b"SSMON1\n"
MAX_EVIDENCE = 10  # columns listed per drift trigger (decisive first)
SWITCHES_KEPT = 5
RECENT_CHUNKS = 8  # an ADWIN detection's size: mean of these last chunk means vs the mean before
RESIDUAL_CHUNK = 50  # calibration residuals y - p per ADWIN input (a single 0/1 outcome is too noisy)


class ChunkedAdwin:
    """River's ADWIN fed the means of consecutive chunks of `chunk` values (cheap: one update per
    chunk, vectorised means; and less noisy than single values). A detection is reported with the
    ADWIN estimate before it and the mean of the last `RECENT_CHUNKS` chunk means, since ADWIN's
    own estimate after the cut still holds much of the old window."""

    def __init__(self, chunk: int, delta: float) -> None:
        self.chunk = chunk
        self.adwin = ADWIN(delta=delta, clock=1)  # chunk means are few: test after each
        self.pending: list[float] = []
        self.recent: list[float] = []

    def to_state(self) -> tuple[dict[str, Any], np.ndarray]:
        """(JSON fields, the detector's bytes): river's own serialisation of its ADWIN window
        (`AdaptiveWindowing.__getstate__`, tied to the river release, which is recorded)."""
        fields = {"chunk": self.chunk, "delta": self.adwin.delta, "pending": self.pending, "recent": self.recent,
                  "drift": bool(self.adwin.drift_detected), "river": river.__version__}
        return fields, np.frombuffer(self.adwin._helper.__getstate__(), dtype=np.uint8)

    @classmethod
    def from_state(cls, fields: Mapping[str, Any], blob: np.ndarray) -> ChunkedAdwin:
        """The detector of `to_state`; restarts empty (logged) if another river release wrote it."""
        det = cls(int(fields["chunk"]), float(fields["delta"]))
        if fields.get("river") != river.__version__:
            log.warning("monitor detector state written by river %s, running %s: the detector restarts empty",
                        fields.get("river"), river.__version__)
            return det
        det.adwin._helper.__setstate__(blob.tobytes())
        det.adwin._drift_detected = bool(fields["drift"])
        det.pending = [float(v) for v in fields["pending"]]
        det.recent = [float(v) for v in fields["recent"]]
        return det

    def update(self, values: np.ndarray) -> list[dict[str, float]]:
        """Feed `values` (NaN ignored); return the detections as {mean_before, mean_after}."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if self.pending:
            v = np.concatenate([np.asarray(self.pending), v])
        k = self.chunk
        full = len(v) // k
        self.pending = v[full * k:].tolist()
        hits: list[dict[str, float]] = []
        if not full:
            return hits
        adwin, recent = self.adwin, self.recent
        for mean in v[:full * k].reshape(full, k).mean(axis=1).tolist():
            before = adwin.estimation
            adwin.update(mean)
            recent.append(mean)
            if len(recent) > RECENT_CHUNKS:
                del recent[0]
            if adwin.drift_detected:
                hits.append({"mean_before": before, "mean_after": sum(recent) / len(recent)})
        return hits


@dataclass
class Reference:
    """What one champion version is compared against, built once per version.

    Attributes:
        model: ``{"name", "version"}``.
        bins / calibration: the profile's bins and their null thresholds; None if the manifest
            has no usable profile (drift is then not monitored, labels still are).
        horizon_ms: the label horizon; None disables the label join.
        holdout: the manifest's holdout metrics (``metrics.test``).
        description: the trigger's ``reference`` field.
    """

    model: dict[str, Any]
    feature_spec: str
    bins: ReferenceBins | None
    calibration: NullCalibration | None
    horizon_ms: int | None
    holdout: dict[str, Any]
    description: dict[str, Any]
    score_mean: float | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, cfg: MonitorConfig) -> Reference:
        model = {"name": manifest.name, "version": manifest.version}
        bins = calibration = None
        try:
            bins = ReferenceBins.from_profile(manifest.profile or {}, manifest.feature_names)
            calibration = NullCalibration(bins, alpha=cfg.alpha, draws=cfg.calibration_draws)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("model %s v%s has no usable reference profile (%s): drift is not monitored for it",
                        manifest.name, manifest.version, exc)
        label = (manifest.training.label or {}) if manifest.training else {}
        horizon = label.get("horizon_ms")
        return cls(
            model=model, feature_spec=manifest.feature_spec, bins=bins, calibration=calibration,
            horizon_ms=int(horizon) if horizon else None,
            holdout=dict((manifest.metrics or {}).get("test") or {}),
            score_mean=((manifest.profile or {}).get("score") or {}).get("mean"),
            description={"source": f"manifest:{manifest.name}@v{manifest.version}",
                         "n": int((manifest.profile or {}).get("n_rows") or 0),
                         "start_ms": manifest.training.data_start_ms if manifest.training else None,
                         "end_ms": manifest.training.data_end_ms if manifest.training else None},
        )


@dataclass
class PartitionMonitor:
    """The monitor state of one partition (see module docstring); `encode`/`decode` round-trip.

    The performance window keeps scores as float32 and labels as int8 (5 bytes per label, the
    bulk of the record when the window is full) and only its event-time range."""

    model: dict[str, Any] | None = None
    counts: np.ndarray | None = None
    n: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    seen: int = 0
    windows: int = 0
    score_adwin: ChunkedAdwin | None = None
    score_hits: list[dict[str, Any]] = field(default_factory=list)
    score_sum: float = 0.0  # finite scores of the open window
    score_n: int = 0
    score_shifted: bool = False  # an ADWIN detection of size >= score_shift_floor, not yet undone
    perf_first_ms: int | None = None  # event-time range of the performance window's events
    perf_last_ms: int | None = None
    perf_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    perf_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    resid_adwin: ChunkedAdwin | None = None
    resid_hits: list[dict[str, Any]] = field(default_factory=list)
    policy: dict[str, Any] | None = None
    labels_resolved: int = 0
    labels_dropped: int = 0
    labels_expired: int = 0  # label topic: scored events whose label did not come in time
    label_cursor: str | None = None
    switches: list[dict[str, Any]] = field(default_factory=list)

    _ARRAYS = ("counts", "perf_scores", "perf_labels")
    _DETECTORS = ("score_adwin", "resid_adwin")

    def encode(self) -> bytes:
        """The versioned record (engine/state_codec.py, version `STATE_VERSION`): scalars, lists
        and the trigger policy as JSON fields, count matrix, performance window and the ADWIN
        windows as raw array bytes."""
        fields: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for k, v in self.__dict__.items():
            if k in self._DETECTORS:
                if v is not None:
                    fields[k], arrays[k] = v.to_state()
            elif k in self._ARRAYS:
                if v is not None:
                    arrays[k] = v
            else:
                fields[k] = v
        return pack(STATE_MAGIC, STATE_VERSION, fields, arrays)

    @classmethod
    def decode(cls, raw: bytes | None) -> PartitionMonitor:
        """The stored state, or a fresh one for None, a record of the old pickle format or an
        unreadable record (logged: the partition's windows and detectors restart).

        Raises:
            UnknownStateVersion: a monitor record of a version this engine does not read (a
                newer release wrote it); refused rather than silently discarded.
        """
        if not raw:
            return cls()
        if raw.startswith(LEGACY_PICKLE):
            log.warning("monitor state in the old pickle format (before version %d); the partition's monitor "
                        "starts afresh", STATE_VERSION)
            return cls()
        try:
            _, fields, arrays = unpack(raw, STATE_MAGIC, (STATE_VERSION,))
            pm = cls()
            known = pm.__dict__
            for k, v in fields.items():
                if k in cls._DETECTORS:
                    known[k] = ChunkedAdwin.from_state(v, arrays[k])
                elif k in known:
                    known[k] = v
            for k in cls._ARRAYS:
                if k in arrays:
                    known[k] = arrays[k]
            return pm
        except UnknownStateVersion:
            raise
        except (StateRecordError, KeyError, TypeError, ValueError) as exc:
            log.warning("monitor state unreadable (%s); starting the partition's monitor afresh", exc)
            return cls()


@dataclass
class Evaluation:
    """What one batch's monitoring decided, applied to metrics after the batch committed."""

    partition: int
    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (outcome, reason)
    drift: dict[str, dict[str, float]] | None = None  # column -> {psi, js, ks, psi_threshold}
    performance: dict[str, float] | None = None
    window_fill: int = 0
    resolved: tuple[int, int] = (0, 0)  # (negatives, positives)
    expired: int = 0  # label topic: pending events dropped without a label
    untracked_labels: int = 0  # label-topic records of entities outside the label sample
    switched: bool = False
    seconds: float = 0.0
    triggers: list[RetrainTrigger] = field(default_factory=list)


@dataclass
class BatchOutcome:
    """Records to write with the batch (store + changelog) and triggers to publish in it."""

    states: dict[str, bytes | None]
    triggers: list[RetrainTrigger]
    evaluation: Evaluation


class DriftMonitor:
    """The engine's monitors. Owned by the processing loop; not thread-safe.

    Args:
        cfg: the `monitor` section of the engine config.
        group: the consumer group (the triggers' ``source``).
        wall_ms: wall clock in epoch ms (tests).
    """

    def __init__(self, cfg: MonitorConfig, group: str, wall_ms: Callable[[], int] | None = None) -> None:
        self.cfg = cfg
        self.group = group
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._references: dict[tuple[str, int | None], Reference] = {}
        self.reference: Reference | None = None
        self._join: LabelJoin | None = None

    # -- reference -----------------------------------------------------------------------------

    def watch(self, manifest: Manifest) -> None:
        """Watch the champion described by `manifest` (cheap if it is already watched). The
        null thresholds of every window size are computed here (about 0.1 s per size bucket,
        ~9 buckets with the defaults), not in a batch."""
        key = (manifest.name, manifest.version)
        ref = self._references.get(key)
        if ref is None:
            ref = Reference.from_manifest(manifest, self.cfg)
            if ref.calibration is not None:
                # Every window size a window can close at (min_window_events .. window_events, by
                # bucket), so no batch pays for a calibration.
                n = self.cfg.window_events
                while n >= self.cfg.min_window_events:
                    ref.calibration.thresholds(n)
                    n = n_bucket(n) - 1
                ref.calibration.thresholds(self.cfg.min_window_events)
            self._references = {key: ref}  # only the current one is kept
        if self.reference is None or self.reference.model != ref.model:
            log.info("monitoring %s v%s (drift %s, labels %s)", ref.model["name"], ref.model["version"],
                     "on" if ref.bins is not None else "off (no profile)",
                     f"horizon {ref.horizon_ms} ms" if ref.horizon_ms else "off (no horizon)")
        if self.reference is not ref:
            cfg = self.cfg
            self._join = (LabelJoin(ref.horizon_ms, cfg.label_sample, cfg.label_max_pending, ref.model["version"],
                                    external=cfg.label_topic is not None, wait_ms=cfg.label_wait_ms or None,
                                    missing=cfg.label_missing)
                          if ref.horizon_ms is not None and cfg.label_sample > 0 else None)
        self.reference = ref

    def label_keys(self, entities: Sequence[str]) -> list[str]:
        """Store keys the batch's multi-get must also read for the label join."""
        return self._join.keys(set(entities)) if self._join is not None else []

    def _switch(self, pm: PartitionMonitor, partition: int, ev: Evaluation) -> None:
        ref = self.reference
        assert ref is not None
        fresh = PartitionMonitor(model=dict(ref.model), policy=None,
                                 switches=(pm.switches + [{"from": pm.model, "to": dict(ref.model),
                                                           "at_ms": self._wall_ms()}])[-SWITCHES_KEPT:]
                                 if pm.model is not None else [])
        if pm.model is not None:
            log.info("partition %d: monitor switches reference from %s v%s to %s v%s; windows restart",
                     partition, pm.model.get("name"), pm.model.get("version"), ref.model["name"],
                     ref.model["version"])
            ev.switched = True
        pm.__dict__.update(fresh.__dict__)

    # -- the batch -----------------------------------------------------------------------------

    def observe(
        self,
        pm: PartitionMonitor,
        partition: int,
        events: Sequence[Mapping[str, Any]],
        rows: np.ndarray,
        scores: np.ndarray,
        stored: Mapping[str, bytes | None],
        watermark: int | None,
        entity_field: str = "user_id",
        scan_labels: Callable[[str | None, int], list[tuple[str, bytes]]] | None = None,
    ) -> BatchOutcome:
        """Monitor one partition's batch.

        Args:
            events: the batch's scored (on-time) events, offset order (with a label topic they
                need their ``event_id``).
            rows: their feature rows (float32 [n, d]).
            scores: the champion's score per event; NaN where the champion did not answer
                (canary rows): such rows are not monitored but still count as purchases.
            stored: the batch's multi-get result (must include `label_keys`).
            watermark: the partition's watermark after the batch.
            scan_labels: ``(after, limit) -> [(key, raw)]`` over the store's label records, for
                the sweep that resolves entities no event touches.
        """
        t0 = time.perf_counter()
        ev = Evaluation(partition)
        ref = self.reference
        if ref is None:
            return BatchOutcome({}, [], ev)
        if pm.model != ref.model:
            self._switch(pm, partition, ev)
        policy, ctx = self._policy(pm, partition)
        states: dict[str, bytes | None] = {}
        triggers: list[RetrainTrigger] = []
        n_events = len(events)
        ts = np.fromiter(map(itemgetter("ts"), events), dtype=np.int64, count=n_events)
        answered = ~np.isnan(scores) if n_events else np.zeros(0, dtype=bool)

        # 1-2: windows and the score detector, over the champion-answered rows after warm-up.
        idx = np.flatnonzero(answered)
        skip = max(0, min(len(idx), self.cfg.warmup_events - pm.seen))
        pm.seen += len(idx)
        idx = idx[skip:]
        if len(idx) and ref.bins is not None:
            live = ref.bins.count(rows[idx], scores[idx])
            pm.counts = live if pm.counts is None else pm.counts + live
            pm.n += len(idx)
            lo, hi = int(ts[idx].min()), int(ts[idx].max())
            pm.first_ms = lo if pm.first_ms is None else min(pm.first_ms, lo)
            pm.last_ms = hi if pm.last_ms is None else max(pm.last_ms, hi)
            self._feed_scores(pm, scores[idx])
        policy.count(len(idx), int(ts.max()) if n_events else None)

        # 3: labels
        join = self._join
        if join is not None:
            resolved = Resolved()
            states.update(join.apply(list(map(itemgetter(entity_field), events)), ts,
                                     list(map(itemgetter("event_type"), events)),
                                     scores, stored, watermark, resolved,
                                     event_ids=list(map(itemgetter("event_id"), events)) if join.external else None))
            self._sweep_labels(pm, join, n_events, states, watermark, scan_labels, resolved)
            triggers += self._labelled(pm, ref, resolved, policy, ctx, ev)

        # 4: a closed window
        ev.window_fill = pm.n
        closes = pm.n >= self.cfg.window_events or (
            pm.n >= self.cfg.min_window_events and n_events and int(ts.max()) >= pm.first_ms + self.cfg.window_ms)
        if closes and ref.bins is not None and pm.counts is not None:
            window = Window(pm.first_ms or 0, pm.last_ms or 0, pm.n)
            if pm.n >= self.cfg.min_window_events:
                feature_sig, score_sig, ev.drift = self._drift(pm, ref)
                triggers += self._decide(policy, "feature_drift", feature_sig, window, ctx, ev)
                triggers += self._decide(policy, "prediction_drift", score_sig, window, ctx, ev)
                triggers += policy.fallbacks(window, ctx)
                pm.windows += 1
            pm.counts, pm.n, pm.first_ms, pm.last_ms, pm.score_hits = None, 0, None, None, []
            pm.score_sum, pm.score_n = 0.0, 0
        pm.policy = policy.state
        states[MONITOR_KEY] = pm.encode()
        ev.triggers = triggers
        ev.seconds = time.perf_counter() - t0
        return BatchOutcome(states, triggers, ev)

    def observe_labels(
        self,
        pm: PartitionMonitor,
        partition: int,
        labels: Sequence[tuple[str, str, int]],
        stored: Mapping[str, bytes | None],
        watermark: int | None,
        scan_labels: Callable[[str | None, int], list[tuple[str, bytes]]] | None = None,
    ) -> BatchOutcome:
        """Apply records of the label topic, ``(entity, event_id, label)`` in offset order, of one
        partition: they resolve the partition's pending scored events (`LabelJoin.resolve_external`),
        feed the performance window and may confirm a performance trigger, as labels derived
        in `observe` do. `stored` holds the label records of `labels_keys(labels)`."""
        t0 = time.perf_counter()
        ev = Evaluation(partition)
        ref, join = self.reference, self._join
        if ref is None or join is None or not join.external:
            return BatchOutcome({}, [], ev)
        if pm.model != ref.model:
            self._switch(pm, partition, ev)
        policy, ctx = self._policy(pm, partition)
        resolved = Resolved()
        states, ev.untracked_labels = join.resolve_external(labels, stored, watermark, resolved)
        self._sweep_labels(pm, join, len(labels), states, watermark, scan_labels, resolved)
        triggers = self._labelled(pm, ref, resolved, policy, ctx, ev)
        pm.policy = policy.state
        states[MONITOR_KEY] = pm.encode()
        ev.triggers = triggers
        ev.seconds = time.perf_counter() - t0
        return BatchOutcome(states, triggers, ev)

    def labels_keys(self, labels: Sequence[tuple[str, str, int]]) -> list[str]:
        """Store keys `observe_labels` needs for these label-topic records."""
        return self.label_keys({entity for entity, _, _ in labels})

    def _policy(self, pm: PartitionMonitor, partition: int) -> tuple[TriggerPolicy, TriggerContext]:
        ref = self.reference
        assert ref is not None
        return (TriggerPolicy(self.cfg, pm.policy, self._wall_ms),
                TriggerContext(model=dict(ref.model), feature_spec=ref.feature_spec, reference=ref.description,
                               source={"group": self.group, "partition": partition, "partitions": [partition]}))

    def _sweep_labels(self, pm: PartitionMonitor, join: LabelJoin, n: int, states: dict[str, bytes | None],
                      watermark: int | None,
                      scan_labels: Callable[[str | None, int], list[tuple[str, bytes]]] | None,
                      resolved: Resolved) -> None:
        """Visit a few stored label records no record of this unit touched (expiry to 0 or drop).
        Label records grow by at most one per sampled event, so sweeping that many per batch
        keeps pace (a record is visited again after about one pass of the store)."""
        if scan_labels is None or watermark is None:
            return
        limit = max(16, math.ceil(n * self.cfg.label_sample))
        records = scan_labels(pm.label_cursor, limit)
        pm.label_cursor = records[-1][0] if len(records) == limit else None
        # A record this unit already rewrote is newer than the store's copy: leave it.
        states.update(join.sweep([(k, r) for k, r in records if k not in states], watermark, resolved))

    def _labelled(self, pm: PartitionMonitor, ref: Reference, resolved: Resolved, policy: TriggerPolicy,
                  ctx: TriggerContext, ev: Evaluation) -> list[RetrainTrigger]:
        """Resolved outcomes into the performance window; a full window is evaluated."""
        self._feed_labels(pm, resolved, ev)
        if len(pm.perf_labels) < self.cfg.label_window:
            return []
        sig, ev.performance, window = self._performance(pm, ref)
        return self._decide(policy, "performance", sig, window, ctx, ev)

    def _decide(self, policy: TriggerPolicy, reason: str, signal: Signal | None, window: Window,
                ctx: TriggerContext, ev: Evaluation) -> list[RetrainTrigger]:
        outcome, trigger = policy.observe(reason, signal, window, ctx)
        if outcome != QUIET:
            ev.outcomes.append((outcome, reason))
        return [trigger] if trigger is not None else []

    # -- score detector ------------------------------------------------------------------------

    def _feed_scores(self, pm: PartitionMonitor, scores: np.ndarray) -> None:
        if pm.score_adwin is None:
            pm.score_adwin = ChunkedAdwin(self.cfg.score_chunk, self.cfg.adwin_delta)
        finite = scores[np.isfinite(scores)]
        pm.score_sum += float(finite.sum())
        pm.score_n += len(finite)
        for hit in pm.score_adwin.update(finite):
            rel = abs(hit["mean_after"] - hit["mean_before"]) / max(abs(hit["mean_before"]), 1e-9)
            pm.score_hits.append({**hit, "at_event": pm.seen, "relative_change": rel})
            if rel >= self.cfg.score_shift_floor:
                pm.score_shifted = True

    # -- labels and performance ----------------------------------------------------------------

    def _feed_labels(self, pm: PartitionMonitor, resolved: Resolved, ev: Evaluation) -> None:
        pm.labels_expired += resolved.expired
        ev.expired = resolved.expired
        if not len(resolved):
            return
        positives = int(sum(resolved.labels))
        ev.resolved = (len(resolved) - positives, positives)
        pm.labels_resolved += len(resolved)
        pm.labels_dropped += resolved.dropped
        s = np.asarray(resolved.scores, dtype=np.float64)
        ok = (s >= 0.0) & (s <= 1.0)  # else not a probability (a broken model): not evaluable
        if not ok.any():
            return
        y = np.asarray(resolved.labels, dtype=np.int8)[ok]
        ts = np.asarray(resolved.ts, dtype=np.int64)[ok]
        lo, hi = int(ts.min()), int(ts.max())
        pm.perf_first_ms = lo if pm.perf_first_ms is None else min(pm.perf_first_ms, lo)
        pm.perf_last_ms = hi if pm.perf_last_ms is None else max(pm.perf_last_ms, hi)
        pm.perf_scores = np.concatenate([pm.perf_scores, s[ok].astype(np.float32)])
        pm.perf_labels = np.concatenate([pm.perf_labels, y])
        if pm.resid_adwin is None:
            pm.resid_adwin = ChunkedAdwin(RESIDUAL_CHUNK, self.cfg.adwin_delta)
        for hit in pm.resid_adwin.update(y - pm.perf_scores[-len(y):].astype(np.float64)):
            pm.resid_hits.append({**hit, "change": abs(hit["mean_after"] - hit["mean_before"])})

    def _performance(self, pm: PartitionMonitor,
                     ref: Reference) -> tuple[Signal | None, dict[str, float], Window]:
        y, p = pm.perf_labels, pm.perf_scores.astype(np.float64)
        window = Window(pm.perf_first_ms or 0, pm.perf_last_ms or 0, len(y))
        m = evaluate(y, p)
        cfg = self.cfg
        summary = {"auc": m.auc if m.auc is not None else float("nan"), "log_loss": m.log_loss, "ece": m.ece,
                   "base_rate": m.base_rate, "mean_score": m.mean_score, "n": float(m.n)}
        evidence: list[dict[str, Any]] = []
        hold_auc, hold_ece = ref.holdout.get("auc"), ref.holdout.get("ece")
        if m.auc is not None and hold_auc is not None and m.auc < hold_auc - cfg.auc_drop:
            evidence.append({"name": "auc", "statistic": "auc", "value": m.auc, "threshold": hold_auc - cfg.auc_drop,
                             "n": m.n, "holdout": hold_auc})
        if hold_ece is not None and m.ece > hold_ece + cfg.ece_rise:
            evidence.append({"name": "ece", "statistic": "ece", "value": m.ece, "threshold": hold_ece + cfg.ece_rise,
                             "n": m.n, "holdout": hold_ece})
        hold_gap = abs((ref.holdout.get("base_rate") or 0.0) - (ref.holdout.get("mean_score") or 0.0))
        gap = abs(m.base_rate - m.mean_score)
        if "base_rate" in ref.holdout and gap > hold_gap + cfg.calibration_shift:
            evidence.append({"name": "calibration_in_the_large", "statistic": "abs(base_rate - mean_score)",
                             "value": gap, "threshold": hold_gap + cfg.calibration_shift, "n": m.n,
                             "holdout": hold_gap})
        shifts = [h for h in pm.resid_hits if h["change"] >= cfg.calibration_shift]
        if shifts:
            worst = max(shifts, key=lambda h: h["change"])
            evidence.append({"name": "calibration_residual", "statistic": "adwin_mean_change",
                             "value": worst["change"], "threshold": cfg.calibration_shift, "n": m.n,
                             "mean_before": worst["mean_before"], "mean_after": worst["mean_after"]})
        for e in evidence:
            e.update({"log_loss": m.log_loss, "base_rate": m.base_rate, "mean_score": m.mean_score})
        fresh = PartitionMonitor()
        pm.perf_first_ms, pm.perf_last_ms, pm.perf_scores, pm.perf_labels, pm.resid_hits = \
            None, None, fresh.perf_scores, fresh.perf_labels, []
        if not evidence:
            return None, summary, window
        first = evidence[0]
        detector = {"name": "performance", "params": {"auc_drop": cfg.auc_drop, "ece_rise": cfg.ece_rise,
                                                      "calibration_shift": cfg.calibration_shift,
                                                      "label_window": cfg.label_window,
                                                      "label_sample": cfg.label_sample,
                                                      "adwin_delta": cfg.adwin_delta}}
        return Signal("performance", detector, float(first["value"]), float(first["threshold"]), evidence), \
            summary, window

    # -- drift ---------------------------------------------------------------------------------

    def _drift(self, pm: PartitionMonitor,
               ref: Reference) -> tuple[Signal | None, Signal | None, dict[str, dict[str, float]]]:
        assert ref.bins is not None and ref.calibration is not None and pm.counts is not None
        cfg = self.cfg
        stats = compare(ref.bins.ref_counts, pm.counts)
        thr = ref.calibration.thresholds(pm.n)
        psi_limit = np.maximum(thr["psi"], cfg.psi_floor)
        n_ref = ref.bins.n_ref
        table: dict[str, dict[str, float]] = {}
        rows: list[dict[str, Any]] = []
        for c, name in enumerate(ref.bins.names):
            entry = {"psi": float(stats["psi"][c]), "js": float(stats["js"][c]), "ks": float(stats["ks"][c]),
                     "psi_threshold": float(psi_limit[c]), "js_threshold": float(thr["js"][c]),
                     "ks_threshold": float(thr["ks"][c])}
            table[name] = entry
            rows.append({"name": name, "statistic": "psi", "value": entry["psi"], "threshold": entry["psi_threshold"],
                         "n": int(pm.n), "n_ref": int(n_ref[c]), "psi_calibrated": float(thr["psi"][c]),
                         "js": entry["js"], "js_threshold": entry["js_threshold"], "ks": entry["ks"],
                         "ks_threshold": entry["ks_threshold"], "drifted": entry["psi"] > entry["psi_threshold"]})
        rows.sort(key=lambda r: r["value"] / r["threshold"] if r["threshold"] > 0 else 0.0, reverse=True)
        params = {"alpha": cfg.alpha, "m": len(ref.bins.names), "psi_floor": cfg.psi_floor,
                  "calibration_draws": cfg.calibration_draws, "bins": ref.bins.width - 1}
        features = [r for r in rows if r["name"] != "score"]
        drifted = [r for r in features if r["drifted"]]
        feature_sig = None
        if drifted:
            feature_sig = Signal("feature_drift", {"name": "psi_calibrated", "params": params},
                                 drifted[0]["value"], drifted[0]["threshold"],
                                 (drifted + [r for r in features if not r["drifted"]])[:max(MAX_EVIDENCE, len(drifted))])
        score_sig = None
        score_row = next((r for r in rows if r["name"] == "score"), None)
        hits = self._adwin_evidence([h for h in pm.score_hits if h["relative_change"] >= cfg.score_shift_floor])
        shift = self._mean_shift(pm, ref)
        if shift is not None and shift["value"] < cfg.score_shift_floor:
            pm.score_shifted = False  # the level came back: an old detection no longer counts
        if score_row is not None and score_row["drifted"]:
            score_sig = Signal("prediction_drift", {"name": "psi_calibrated", "params": params},
                               score_row["value"], score_row["threshold"],
                               [score_row] + ([shift] if shift else []) + hits)
        elif pm.score_shifted and shift is not None:
            # ADWIN found the change point; the window's mean score, still shifted vs the
            # reference, confirms it window after window.
            score_sig = Signal("prediction_drift",
                               {"name": "adwin", "params": {"delta": cfg.adwin_delta, "chunk": cfg.score_chunk,
                                                            "score_shift_floor": cfg.score_shift_floor}},
                               shift["value"], cfg.score_shift_floor,
                               [shift] + hits + ([score_row] if score_row else []))
        return feature_sig, score_sig, table

    def _mean_shift(self, pm: PartitionMonitor, ref: Reference) -> dict[str, Any] | None:
        """The window's mean score vs the reference's, as relative change (None if unknown)."""
        if not pm.score_n or not ref.score_mean:
            return None
        mean = pm.score_sum / pm.score_n
        return {"name": "score", "statistic": "mean_relative_change",
                "value": abs(mean - ref.score_mean) / abs(ref.score_mean), "threshold": self.cfg.score_shift_floor,
                "n": int(pm.score_n), "mean": mean, "reference_mean": ref.score_mean}

    def _adwin_evidence(self, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": "score", "statistic": "adwin_relative_change", "value": h["relative_change"],
                 "threshold": self.cfg.score_shift_floor, "n": int(h["at_event"]), "mean_before": h["mean_before"],
                 "mean_after": h["mean_after"]} for h in hits[:MAX_EVIDENCE]]


__all__ = ["MONITOR_KEY", "BatchOutcome", "DriftMonitor", "Evaluation", "PartitionMonitor", "Reference"]
