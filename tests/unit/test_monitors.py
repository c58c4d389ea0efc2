"""engine.monitors without Kafka: windows, signals, triggers, state round trip, switches, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import MonitorConfig
from engine.monitors import MONITOR_KEY, DriftMonitor, PartitionMonitor
from models.manifest import Manifest
from models.profile import build_profile
from models.testing import make_manifest, synthetic_dataset

HOUR = 3_600_000
T0 = 1_767_225_600_000


def _scores(X: np.ndarray) -> np.ndarray:
    z = 0.8 * np.nan_to_num(X[:, 0]) + 0.2 * np.log1p(np.abs(np.nan_to_num(X[:, 2]))) - 3.0
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def _manifest(version: int = 1, profile: bool = True) -> Manifest:
    X, _, _, names = synthetic_dataset(n=20_000, seed=0)
    m = make_manifest(names, profile=build_profile(X, names, scores=_scores(X)) if profile else {},
                      metrics={"test": {"auc": 0.75, "ece": 0.01, "log_loss": 0.3}})
    m.version = version
    return m


def _cfg(**kw: object) -> MonitorConfig:
    base = dict(window_events=2_000, min_window_events=500, warmup_events=0, confirm_windows=2, cooldown_ms=0,
                calibration_draws=200, label_sample=1.0, label_window=400)
    base.update(kw)
    return MonitorConfig(**base)  # type: ignore[arg-type]


def _events(n: int, seed: int, start: int = T0, purchase_rate: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ts = start + np.arange(n) * 1_000
    types = np.where(rng.random(n) < purchase_rate, "purchase", "page_view")
    return [{"user_id": f"u{u}", "ts": int(t), "event_type": str(k)}
            for u, t, k in zip(rng.integers(0, 300, n), ts, types)]


class Partition:
    """One partition's monitor with a dict as its store (written after each batch, as the engine does)."""

    def __init__(self, monitor: DriftMonitor, pm: PartitionMonitor | None = None) -> None:
        self.monitor = monitor
        self.pm = pm or PartitionMonitor()
        self.store: dict[str, bytes] = {}
        self.triggers: list = []
        self.evaluations: list = []

    def feed(self, X: np.ndarray, scores: np.ndarray, events: list[dict], batch: int = 250) -> None:
        for i in range(0, len(events), batch):
            evs = events[i:i + batch]
            keys = self.monitor.label_keys([e["user_id"] for e in evs])
            stored = {k: self.store.get(k) for k in keys}
            out = self.monitor.observe(self.pm, 0, evs, X[i:i + batch], scores[i:i + batch].astype(np.float64),
                                       stored, evs[-1]["ts"] - 60_000,
                                       scan_labels=lambda after, limit: sorted(
                                           (k, v) for k, v in self.store.items()
                                           if k.startswith("\x00lbl:") and (after is None or k > after))[:limit])
            for k, v in out.states.items():
                if v is None:
                    self.store.pop(k, None)
                else:
                    self.store[k] = v
            self.triggers += out.triggers
            self.evaluations.append(out.evaluation)


def _watching(manifest: Manifest | None = None, **kw: object) -> DriftMonitor:
    monitor = DriftMonitor(_cfg(**kw), "g", wall_ms=lambda: 7)
    monitor.watch(manifest or _manifest())
    return monitor


def test_stable_stream_raises_no_signal_and_a_price_shift_triggers_feature_drift() -> None:
    X, _, _, _ = synthetic_dataset(n=20_000, seed=11)
    stable = Partition(_watching(label_sample=0.0))
    stable.feed(X, _scores(X), _events(len(X), 1))
    assert stable.triggers == []
    assert not any(ev.outcomes for ev in stable.evaluations)
    assert stable.pm.windows == 10

    shifted = X.copy()
    shifted[:, 2] *= 2.5
    drifting = Partition(_watching(label_sample=0.0))
    drifting.feed(shifted[:6_000], _scores(X[:6_000]), _events(6_000, 2))
    reasons = [t.reason for t in drifting.triggers]
    assert reasons == ["feature_drift"]
    trigger = drifting.triggers[0]
    assert trigger.evidence[0]["name"] == "f2_price" and trigger.evidence[0]["value"] > trigger.evidence[0]["threshold"]
    assert trigger.current["n"] >= 2_000 and trigger.current["windows_confirmed"] == 2
    assert trigger.model == {"name": "purchase", "version": 1}
    warned = [o for ev in drifting.evaluations for o in ev.outcomes]
    assert warned[0] == ("warning", "feature_drift")


def test_score_jump_is_prediction_drift_by_psi_and_adwin() -> None:
    X, _, _, _ = synthetic_dataset(n=8_000, seed=12)
    scores = _scores(X)
    scores[3_000:] = np.clip(scores[3_000:] * 3.0, 0, 1)
    part = Partition(_watching(label_sample=0.0))
    part.feed(X, scores, _events(len(X), 3))
    drift = [t for t in part.triggers if t.reason == "prediction_drift"]
    assert drift, [t.reason for t in part.triggers]
    names = {e["statistic"] for e in drift[0].evidence}
    assert "psi" in names and "adwin_relative_change" in names


def test_state_round_trip_mid_window_continues_instead_of_restarting() -> None:
    X, _, _, _ = synthetic_dataset(n=6_000, seed=13)
    X[:, 2] *= 2.5
    scores, events = _scores(X), _events(6_000, 4, purchase_rate=0.05)
    whole = Partition(_watching())
    whole.feed(X, scores, events)

    first = Partition(_watching())
    first.feed(X[:3_250], scores[:3_250], events[:3_250])
    raw = first.store[MONITOR_KEY]
    resumed = Partition(_watching(), PartitionMonitor.decode(raw))  # a new process reads the store
    resumed.store = dict(first.store)
    assert resumed.pm.n == first.pm.n == 1_250 and resumed.pm.seen == 3_250
    resumed.feed(X[3_250:], scores[3_250:], events[3_250:])
    assert [(t.reason, t.idempotency_key, t.statistic) for t in first.triggers + resumed.triggers] == \
        [(t.reason, t.idempotency_key, t.statistic) for t in whole.triggers]
    assert resumed.pm.labels_resolved == whole.pm.labels_resolved
    assert np.array_equal(resumed.pm.counts, whole.pm.counts) if whole.pm.counts is not None else True


def test_a_new_champion_switches_reference_and_restarts_windows() -> None:
    X, _, _, _ = synthetic_dataset(n=3_000, seed=14)
    monitor = _watching()
    part = Partition(monitor)
    part.feed(X[:1_500], _scores(X[:1_500]), _events(1_500, 5))
    assert part.pm.n == 1_500 and part.pm.model == {"name": "purchase", "version": 1}
    monitor.watch(_manifest(version=2))
    part.feed(X[1_500:1_750], _scores(X[1_500:1_750]), _events(250, 6))
    assert part.pm.model == {"name": "purchase", "version": 2}
    assert part.pm.n == 250 and part.pm.seen == 250
    assert part.evaluations[-1].switched
    assert part.pm.switches[-1]["from"] == {"name": "purchase", "version": 1}


def test_bad_input_never_crashes_the_monitor() -> None:
    X, _, _, _ = synthetic_dataset(n=3_000, seed=15)
    X[::7] = np.nan
    X[::11, 1] = np.inf
    X[::13, 2] = -np.inf
    scores = _scores(X).astype(np.float64)
    scores[::5] = np.nan  # rows the champion did not answer
    scores[::17] = 7.5  # a broken model: not a probability
    events = _events(3_000, 7, purchase_rate=0.1)
    part = Partition(_watching())
    part.feed(X, scores, events)
    assert part.pm.windows == 1 and part.pm.labels_resolved > 0
    assert all(0.0 <= s <= 1.0 for s in part.pm.perf_scores)
    no_profile = Partition(_watching(_manifest(profile=False)))
    no_profile.feed(X, scores, events)
    assert {t.reason for t in no_profile.triggers} <= {"performance"}  # random labels: no drift without a profile
    assert no_profile.pm.windows == 0 and no_profile.pm.labels_resolved > 0


def test_unreadable_state_starts_afresh() -> None:
    assert PartitionMonitor.decode(b"garbage").n == 0
    assert PartitionMonitor.decode(b"SSMON1\n" + b"\x80\x05broken").n == 0
    assert PartitionMonitor.decode(None).model is None


def test_collapsed_outcomes_trigger_performance() -> None:
    """Scores promise ~20 % purchases, nobody buys: calibration decays, confirmed over 2 label windows."""
    X, _, _, _ = synthetic_dataset(n=12_000, seed=16)
    scores = np.full(len(X), 0.2, dtype=np.float32)
    part = Partition(_watching(window_events=50_000))
    part.feed(X, scores, _events(len(X), 8, purchase_rate=0.0))
    perf = [t for t in part.triggers if t.reason == "performance"]
    assert perf, [o for ev in part.evaluations for o in ev.outcomes]
    assert perf[0].evidence[0]["name"] == "ece" and perf[0].evidence[0]["value"] == pytest.approx(0.2, abs=0.01)


def test_warmup_rows_go_into_no_window() -> None:
    X, _, _, _ = synthetic_dataset(n=1_000, seed=17)
    part = Partition(_watching(warmup_events=600))
    part.feed(X, _scores(X), _events(1_000, 9))
    assert part.pm.seen == 1_000 and part.pm.n == 400


def test_monitor_config_is_validated_with_the_key_named() -> None:
    from engine.config import ConfigError, config_from_mapping

    assert config_from_mapping({}).monitor.enabled is True
    assert config_from_mapping({"monitor": {"enabled": False}}).monitor.enabled is False
    for raw, needle in (({"monitor": {"windows": 3}}, "monitor.windows"),
                        ({"monitor": {"alpha": 1.5}}, "monitor.alpha"),
                        ({"monitor": {"label_sample": -0.1}}, "monitor.label_sample"),
                        ({"monitor": {"min_window_events": 50_000}}, "monitor.min_window_events"),
                        ({"monitor": {"trigger_topic": "clicks"}}, "monitor.trigger_topic"),
                        ({"monitor": ["on"]}, "monitor must be a mapping")):
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            config_from_mapping(raw)
