"""What `streamscore demo` reports about the closed loop: labels joined to scores, rolling AUC,
score distributions per phase, the trigger and the worker's outcome as text, the summary.

Everything here works on plain inputs (score records, the live events in stream order, trigger
and outcome records), so it is tested without a broker (tests/unit/test_demo_py).

Labels are `models.labels.purchase_within` over the live events the demo produced (the
training definition), joined to the score records by ``event_id``; an event whose horizon
passes the last live event time is censored (no label). Stream position = the event's index in
the produced stream (malformed payloads included), so positions line up with the drift point.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluate import evaluate
from models.labels import censor_mask, purchase_within


@dataclass
class LabelledScores:
    """Score records joined to their live outcome, in stream order (arrays of equal length)."""

    position: np.ndarray  # int64: index in the produced stream
    score: np.ndarray  # float64
    version: np.ndarray  # int64: model version that scored the event
    label: np.ndarray  # int8: purchase within the horizon (0 where censored)
    observed: np.ndarray  # bool: the label's horizon ended within the live data
    live_from: int = 0  # stream position where the rows start (`since`)

    def __len__(self) -> int:
        return len(self.position)

    def since(self, position: int) -> LabelledScores:
        """The rows at stream positions >= `position` (e.g. the live part after the history)."""
        m = self.position >= position
        return LabelledScores(self.position[m], self.score[m], self.version[m], self.label[m], self.observed[m],
                              position)


def label_scores(events: Sequence[Mapping[str, Any]], positions: Sequence[int], scores: Sequence[Mapping[str, Any]],
                 horizon_ms: int) -> LabelledScores:
    """Join `scores` (score records) to labels over `events` (the valid live events; `positions`
    their stream positions). Scores of events not among `events` are dropped."""
    ts = np.fromiter((e["ts"] for e in events), dtype=np.int64, count=len(events))
    labels = purchase_within([e["user_id"] for e in events], ts, [e["event_type"] for e in events], horizon_ms)
    observed = ~censor_mask(ts, horizon_ms, int(ts.max())) if len(ts) else np.zeros(0, dtype=bool)
    index = {e["event_id"]: i for i, e in enumerate(events)}
    rows = [(index[s["event_id"]], s) for s in scores if s["event_id"] in index]
    rows.sort(key=lambda r: positions[r[0]])
    at = np.array([i for i, _ in rows], dtype=np.int64)
    return LabelledScores(
        position=np.asarray(positions, dtype=np.int64)[at] if len(at) else np.zeros(0, dtype=np.int64),
        score=np.array([s["score"] for _, s in rows], dtype=np.float64),
        version=np.array([s["model"]["version"] for _, s in rows], dtype=np.int64),
        label=labels[at] if len(at) else np.zeros(0, dtype=np.int8),
        observed=observed[at] if len(at) else np.zeros(0, dtype=bool),
    )


@dataclass(frozen=True)
class ChunkAUC:
    """AUC of one model version over one chunk of the stream (observed labels only)."""

    start: int  # first stream position of the chunk
    end: int  # one past the last
    version: int
    n: int
    positives: int
    auc: float | None  # None: one class only, or fewer than `min_rows` rows


def rolling_auc(ls: LabelledScores, chunk: int, min_rows: int = 200) -> list[ChunkAUC]:
    """Per chunk of `chunk` stream positions, per version that scored events in it: the AUC."""
    out: list[ChunkAUC] = []
    if not len(ls):
        return out
    chunk_of = ls.position // chunk
    for c in np.unique(chunk_of):
        for v in np.unique(ls.version[chunk_of == c]):
            m = (chunk_of == c) & (ls.version == v) & ls.observed
            n, pos = int(m.sum()), int(ls.label[m].sum())
            auc = evaluate(ls.label[m], ls.score[m]).auc if n >= min_rows and 0 < pos < n else None
            out.append(ChunkAUC(int(c) * chunk, (int(c) + 1) * chunk, int(v), n, pos, auc))
    return out


@dataclass(frozen=True)
class Phase:
    """Scores and outcomes of one phase of the demo (e.g. v1 before the drift)."""

    name: str
    n: int
    mean: float
    p50: float
    p90: float
    observed: int
    positive_rate: float | None
    auc: float | None
    log_loss: float | None
    scores: np.ndarray = field(repr=False)


def phases(ls: LabelledScores, drift_at: int) -> list[Phase]:
    """v1 before the drift, each version after it (the versions in order of first appearance)."""
    out: list[Phase] = []
    masks = [(f"v{ls.version[0]} before drift" if len(ls) else "before drift", ls.position < drift_at)]
    after = ls.position >= drift_at
    for v in dict.fromkeys(ls.version[after].tolist()):
        masks.append((f"v{v} after drift", after & (ls.version == v)))
    for name, m in masks:
        s = ls.score[m]
        if not len(s):
            continue
        o = m & ls.observed
        metrics = evaluate(ls.label[o], ls.score[o]) if o.any() else None
        q = np.percentile(s, [50, 90])
        out.append(Phase(name, len(s), float(s.mean()), float(q[0]), float(q[1]), int(o.sum()),
                         metrics.base_rate if metrics else None, metrics.auc if metrics else None,
                         metrics.log_loss if metrics else None, s))
    return out


def _iso(ms: Any) -> str:
    if ms is None:
        return "?"
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def trigger_lines(t: Mapping[str, Any], evidence_rows: int = 4) -> list[str]:
    """A trigger record (`models.trigger.RetrainTrigger.to_dict()`) as readable lines."""
    cur, ref, model = t.get("current", {}), t.get("reference", {}), t.get("model", {})
    src = t.get("source", {})
    lines = [
        f"reason      : {t['reason']} about {model.get('name')} v{model.get('version')} "
        f"(partition {src.get('partition', '?')}, key {t['idempotency_key']})",
        f"decisive    : {t['detector']['name']} {t['statistic']:.3f} > threshold {t['threshold']:.3f}",
        f"window      : event time {_iso(cur.get('start_ms'))} .. {_iso(cur.get('end_ms'))}, n = {cur.get('n', 0):,} "
        f"(confirmed over {cur.get('windows_confirmed', '?')} windows); reference n = {ref.get('n', 0):,}",
    ]
    for e in t.get("evidence", [])[:evidence_rows]:
        extra = ""
        if "js" in e:
            extra = (f"  (calibrated {_num(e.get('psi_calibrated'))}; JS {_num(e.get('js'))}; "
                     f"KS {_num(e.get('ks'))} vs {_num(e.get('ks_threshold'))})")
        mark = ">" if e["value"] > e["threshold"] else "<="
        lines.append(f"evidence    : {e['name']:<28} {e['statistic']} {e['value']:.3f} {mark} {e['threshold']:.3f}  "
                     f"n {e.get('n', 0):,}{extra}")
    w = t.get("suggested_training_window", {})
    lines.append(f"train on    : {_iso(w.get('start_ms'))} .. {_iso(w.get('end_ms'))} (suggested window)")
    return lines


def outcome_lines(o: Mapping[str, Any]) -> list[str]:
    """An outcome record of the retraining worker as readable lines."""
    lines = [f"decision    : {o['decision']} {o['model']} v{o.get('version')} "
             f"(champion v{o.get('champion_before')} -> v{o.get('champion_after')}) in {o.get('seconds', 0):.1f} s"]
    if o.get("rows") is not None:
        lines.append(f"trained on  : {o['rows']:,} rows ({o.get('positives', 0):,} positive) from the clicks topic, "
                     f"window {_iso((o.get('window') or {}).get('start_ms'))} .. {_iso((o.get('window') or {}).get('end_ms'))}")
    m = o.get("metrics") or {}
    cand, champ = m.get("candidate") or {}, m.get("champion") or {}
    if cand:
        lines.append(f"holdout     : candidate AUC {_num(cand.get('auc'))} log loss {_num(cand.get('log_loss'))} "
                     f"ECE {_num(cand.get('ece'))}  vs champion v{champ.get('version')} AUC {_num(champ.get('auc'))} "
                     f"log loss {_num(champ.get('log_loss'))} ECE {_num(champ.get('ece'))}  (n {cand.get('n', 0):,})")
    lines.append(f"reason      : {o['reason']}")
    return lines


def loop_lines(ls: LabelledScores, drift_at: int, chunk: int) -> list[str]:
    """The before/after table and the rolling AUC per chunk."""
    lines = [f"{'phase':<20} {'scored':>8} {'mean':>6} {'p50':>6} {'p90':>6} {'labelled':>9} {'pos.rate':>8} "
             f"{'AUC':>6} {'logloss':>7}"]
    for p in phases(ls, drift_at):
        lines.append(f"{p.name:<20} {p.n:>8,} {p.mean:>6.3f} {p.p50:>6.3f} {p.p90:>6.3f} {p.observed:>9,} "
                     f"{_num(p.positive_rate):>8} {_num(p.auc):>6} {_num(p.log_loss):>7}")
    cells = [f"{c.start // 1000}k:v{c.version}={_num(c.auc, '.2f')}" for c in rolling_auc(ls, chunk)]
    lines.append(f"rolling AUC per {chunk:,} events (stream position:version=AUC):")
    lines.extend("  " + "  ".join(cells[i:i + 6]) for i in range(0, len(cells), 6))
    return lines


def print_summary(sent: int, stats: Mapping[str, Any], scores: Sequence[Mapping[str, Any]], dlq: Counter[str],
                  triggers: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]], promoted: int | None,
                  labelled: LabelledScores, drift_at: int, chunk: int, png: Path, wall_s: float) -> bool:
    """Print the demo's summary; True when the loop closed (a trigger, a promoted version that
    scored events) and every produced message was scored or dead-lettered."""
    accounted = len(scores) + sum(dlq.values())
    served = Counter(s["model"]["version"] for s in scores)
    print("\n================ streamscore demo summary ================")
    print(f"events produced to the clicks topic : {sent:,} (history {labelled.live_from:,}, then live; drift "
          f"injected at event {drift_at:,})")
    print(f"events consumed by the engine       : {stats['consumed']:,}")
    print(f"scores on the scores topic          : {len(scores):,}  by version {dict(sorted(served.items()))}")
    print(f"dead-lettered                       : {sum(dlq.values()):,}  {dict(dlq)}")
    print(f"accounted for (scores + DLQ)        : {accounted:,} of {sent:,}")
    lat = stats["latency_ms"]
    print(f"engine                              : {stats['batches']:,} micro-batches in {stats['seconds']:.0f} s; "
          f"latency produce->commit p50 {lat['p50']:.0f} ms  p99 {lat['p99']:.0f} ms")
    reasons = Counter(t["reason"] for t in triggers)
    print(f"retraining triggers published       : {len(triggers)}  {dict(reasons)}")
    if triggers:
        print("first trigger:")
        for line in trigger_lines(triggers[0]):
            print("  " + line)
    print(f"worker outcomes                     : {dict(Counter(o['decision'] for o in outcomes))}")
    for o in outcomes:
        if o["decision"] == "promoted":
            print("promotion:")
            for line in outcome_lines(o):
                print("  " + line)
    if promoted is not None and served.get(promoted):
        first = int(labelled.position[np.argmax(labelled.version == promoted)]) if len(labelled) else -1
        print(f"hot swap                            : the engine served v{promoted} from stream position {first:,} "
              f"without a restart; {served[promoted]:,} score records carry v{promoted}")
    print("scores and outcomes (labels: purchase within 1 h, from the live stream, joined by event_id):")
    for line in loop_lines(labelled, drift_at, chunk):
        print("  " + line)
    print(f"plot                                : {png}")
    print(f"demo wall time                      : {wall_s:.1f} s")
    problems = []
    if accounted != sent:
        problems.append(f"{sent - accounted} events unaccounted for")
    if not triggers:
        problems.append("no retraining trigger was published")
    if promoted is None:
        problems.append("no retrained version was promoted")
    elif not served.get(promoted):
        problems.append(f"no score record carries the promoted v{promoted}")
    print("RESULT: " + ("the loop closed (drift -> trigger -> retrained -> promoted -> served) and every event was "
                        "scored or dead-lettered" if not problems else "FAILED: " + "; ".join(problems)))
    return not problems
