"""The demo's loop pieces without a broker: /metrics parsing against the engine's own metric
registry, labels joined to scores (vs a brute-force oracle), rolling AUC, phases, the printed
trigger and outcome, the summary's accounting and the PNG. The whole demo on the real broker is
tests/integration/test_demo.py."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from engine.demo_live import DriftSample, LiveStream, parse_metrics
from engine.demo_plot import plot
from engine.demo_report import LabelledScores, label_scores, phases, print_summary, rolling_auc, trigger_lines
from engine.demo_report import outcome_lines
from engine.observability import EngineMetrics
from features.synthetic import GeneratorConfig
from tests.retrain_data import window_trigger

H = 3_600_000


def test_parse_metrics_reads_the_engines_own_exposition() -> None:
    m = EngineMetrics()
    m.events_in.inc(1234)
    m.model_version.labels("purchase", "champion").set(2)
    mon = m.monitor
    for part, col, psi, thr in (("0", "device=mobile", 0.5, 0.25), ("1", "device=mobile", 0.1, 0.25),
                                ("1", "events_7d", 0.3, 0.6), ("0", "score", 0.2, 0.4)):
        mon.drift.labels(part, col, "psi").set(psi)
        mon.threshold.labels(part, col, "psi").set(thr)
        mon.drift.labels(part, col, "ks").set(9.0)  # other statistics are ignored
        mon.threshold.labels(part, col, "ks").set(1.0)
    s = parse_metrics(generate_latest(m.registry).decode(), t_s=1.5)
    assert s == DriftSample(t_s=1.5, consumed=1234, feature_ratio=2.0, feature="device=mobile", score_ratio=0.5,
                            version=2)


def test_parse_metrics_before_any_window_closed() -> None:
    s = parse_metrics(generate_latest(EngineMetrics().registry).decode(), t_s=0.0)
    assert s.consumed == 0 and math.isnan(s.feature_ratio) and math.isnan(s.score_ratio) and s.version is None


def _brute_labels(events: list[dict[str, Any]], h: int) -> list[int]:
    return [int(any(p["user_id"] == e["user_id"] and p["event_type"] == "purchase" and e["ts"] < p["ts"] <= e["ts"] + h
                    for p in events)) for e in events]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5 * H), st.sampled_from(["view", "purchase"]),
                          st.booleans(), st.integers(1, 3)), min_size=1, max_size=60),
       st.integers(0, 3))
def test_label_scores_joins_the_training_label_in_stream_order(rows: list[tuple[int, int, str, bool, int]],
                                                               skip: int) -> None:
    events = [{"event_id": f"e{i}", "user_id": f"u{u}", "ts": ts, "event_type": t} for i, (u, ts, t, _, _) in
              enumerate(rows)]
    positions = list(np.cumsum([gap for *_, gap in rows]))  # malformed payloads leave gaps
    scored = [e for e, (_, _, _, keep, _) in zip(events, rows, strict=True) if keep]
    records = [{"event_id": e["event_id"], "score": (i % 10) / 10, "model": {"version": 1 + i % 2}}
               for i, e in enumerate(reversed(scored))] + [{"event_id": "not-live", "score": 0.5, "model": {"version": 1}}]
    ls = label_scores(events, positions, records, H).since(positions[0] + skip)
    oracle = _brute_labels(events, H)
    end = max(e["ts"] for e in events)
    by_id = {r["event_id"]: r for r in records}
    expect = sorted((positions[i], oracle[i], e["ts"] + H <= end, by_id[e["event_id"]]["score"])
                    for i, e in enumerate(events) if e in scored and positions[i] >= positions[0] + skip)
    assert ls.position.tolist() == [p for p, *_ in expect]
    assert ls.label.tolist() == [y for _, y, *_ in expect]
    assert ls.observed.tolist() == [o for _, _, o, _ in expect]
    assert ls.score.tolist() == [s for *_, s in expect]


def _labelled(n: int = 12_000, swap: int = 8_000, seed: int = 0) -> LabelledScores:
    """v1 scores are noise; v2 (from `swap` on) ranks the outcome perfectly."""
    rng = np.random.default_rng(seed)
    pos = np.arange(n, dtype=np.int64)
    y = (rng.random(n) < 0.2).astype(np.int8)
    version = np.where(pos < swap, 1, 2)
    score = np.where(version == 2, 0.1 + 0.8 * y, rng.random(n))
    observed = pos < n - 500
    return LabelledScores(pos, score, version.astype(np.int64), y, observed)


def test_rolling_auc_per_chunk_and_version() -> None:
    ls = _labelled()
    cells = rolling_auc(ls, 3_000)
    assert [(c.start, c.version) for c in cells] == [(0, 1), (3_000, 1), (6_000, 1), (6_000, 2), (9_000, 2)]
    assert all(abs(c.auc - 0.5) < 0.1 for c in cells if c.version == 1)  # type: ignore[operator]
    assert all(c.auc == 1.0 for c in cells if c.version == 2)
    assert cells[-1].n == 2_500  # the censored tail does not count
    assert rolling_auc(ls, 3_000, min_rows=3_001)[0].auc is None


def test_phases_split_before_and_after_the_drift_by_version() -> None:
    got = phases(_labelled(), drift_at=4_000)
    assert [(p.name, p.n) for p in got] == [("v1 before drift", 4_000), ("v1 after drift", 4_000),
                                          ("v2 after drift", 4_000)]
    assert got[2].auc == 1.0 and got[2].observed == 3_500


def test_trigger_and_outcome_lines_show_the_evidence() -> None:
    trig = window_trigger((1_767_225_600_000, 1_767_484_800_000), key="purchase/v1/feature_drift/1").to_dict()
    text = "\n".join(trigger_lines(trig))
    assert "performance about purchase v1" in text and "key purchase/v1/feature_drift/1" in text
    assert "0.070 > threshold 0.050" in text and "auc" in text and "n = 1,000" in text
    assert "2026-01-01 00:00 .. 2026-01-04 00:00" in text
    outcome = {"decision": "promoted", "model": "purchase", "version": 2, "champion_before": 1, "champion_after": 2,
               "seconds": 3.2, "rows": 10_000, "positives": 240, "window": {"start_ms": 0, "end_ms": 1},
               "metrics": {"candidate": {"auc": 0.95, "log_loss": 0.06, "ece": 0.01, "n": 2_000},
                           "champion": {"version": 1, "auc": 0.87, "log_loss": 0.11, "ece": 0.04}},
               "reason": "gate passed"}
    text = "\n".join(outcome_lines(outcome))
    assert "promoted purchase v2 (champion v1 -> v2)" in text and "candidate AUC 0.950" in text
    assert "champion v1 AUC 0.870" in text


def _summary(capsys: pytest.CaptureFixture[str], tmp_path: Path, sent: int, triggers: int, promoted: int | None,
             versions: tuple[int, ...] = (1, 2)) -> tuple[bool, str]:
    scores = [{"model": {"version": v}} for v in versions for _ in range(3)]
    trig = window_trigger((0, 1)).to_dict()
    ok = print_summary(sent, {"consumed": sent, "batches": 2, "seconds": 1.0, "latency_ms": {"p50": 1, "p99": 2}},
                       scores, Counter(late=2), [trig] * triggers, [], promoted, _labelled(200, 100), 50, 50,
                       tmp_path / "x.png", 1.0)
    return ok, capsys.readouterr().out


def test_summary_passes_only_when_the_loop_closed_and_every_event_is_accounted_for(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ok, out = _summary(capsys, tmp_path, sent=8, triggers=1, promoted=2)
    assert ok and "accounted for (scores + DLQ)        : 8 of 8" in out and "RESULT: the loop closed" in out
    ok, out = _summary(capsys, tmp_path, sent=9, triggers=1, promoted=2)
    assert not ok and "FAILED: 1 events unaccounted for" in out
    ok, out = _summary(capsys, tmp_path, sent=8, triggers=0, promoted=None)
    assert not ok and "no retraining trigger was published; no retrained version was promoted" in out
    ok, out = _summary(capsys, tmp_path, sent=8, triggers=1, promoted=3)
    assert not ok and "no score record carries the promoted v3" in out


def test_plot_writes_a_png(tmp_path: Path) -> None:
    samples = [DriftSample(t, 1_000 * t, 0.5 + t / 10, "device=mobile", 0.2, 1 if t < 8 else 2) for t in range(12)]
    path = plot(tmp_path / "loop.png", _labelled(), samples, 4_000, 3_000, {"first v2 score": 8_000})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_live_stream_records_valid_events_and_stops() -> None:
    stream = LiveStream(GeneratorConfig(n_events=None, n_users=50, seed=3, bad_fraction=0.2))
    taken = []
    for key, value in stream:
        taken.append(value)
        if len(taken) == 500:
            stream.stop.set()
    assert len(taken) == 500 and stream.yielded == 500
    assert 0 < len(stream.values) < 500 and stream.positions == sorted(stream.positions)
    assert [taken[p] for p in stream.positions] == stream.values
    assert all(e["event_id"] for e in stream.events())
    assert orjson.loads(stream.values[0]) == stream.events()[0]
