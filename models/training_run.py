"""One training run: split, train, export, verify, evaluate, profile, register, maybe promote.

`train_and_register` works on plain arrays (the caller builds X with the offline feature
executor and y with `models.labels`). Steps:

1. drop censored rows (label horizon past `data_end_ms`) if `data_end_ms` is given;
2. time-gapped split (`models.split`, gap defaults to the label horizon);
3. train LightGBM and the logistic-regression baseline on the train side;
4. export both to ONNX; the LightGBM export must match native predict_proba within 1e-5 (else
   `ParityError`, nothing registered); the baseline's parity is recorded;
5. evaluate on the test side: the model by its ONNX scores (what would be served), the baseline
   natively (it is a reference, never served), and the current champion on the same rows
   through the verified scorer when its feature spec and names match;
6. profile the training rows and training scores;
7. register with a manifest whose ``parent_version`` is the current champion;
8. if `promote`: make it champion when there is none, or when its test AUC beats the champion's
   AUC on the same holdout by more than `min_auc_gain`. A champion that cannot score these rows
   (different feature spec) is never replaced automatically: promote explicitly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.evaluate import evaluate
from models.labels import LabelDefinition, censor_mask
from models.manifest import Manifest, TrainingInfo, data_digest
from models.profile import build_profile
from models.registry import Registry, RegistryError
from models.scorer import IncompatibleModel, OnnxScorer
from models.split import time_gapped_split
from models.train import export_onnx, onnx_scores, parity_max_diff, train, verify_onnx_parity


@dataclass
class TrainingRunResult:
    """Outcome of `train_and_register`."""

    name: str
    version: int
    promoted: bool
    decision: str
    manifest: Manifest
    champion_before: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.metrics

    def summary(self) -> str:
        """A few human-readable lines: version, holdout metrics vs baseline/champion, decision."""
        m = self.manifest.metrics
        test, base = m["test"], m["baseline"]["test"]
        champ = m.get("champion") or {}
        fmt = _fmt
        lines = [
            f"{self.name} v{self.version} ({self.manifest.model_kind}, spec {self.manifest.feature_spec}, "
            f"sha256 {self.manifest.sha256[:12] if self.manifest.sha256 else '?'})",
            f"  holdout n={test['n']:,} base rate {test['base_rate']:.4f}: AUC {fmt(test['auc'])}  "
            f"log loss {test['log_loss']:.4f}  Brier {test['brier']:.4f}  ECE {test['ece']:.4f}",
            f"  baseline logreg: AUC {fmt(base['auc'])}  log loss {base['log_loss']:.4f}",
        ]
        if champ.get("test"):
            lines.append(f"  champion v{champ['version']} on the same holdout: AUC {fmt(champ['test']['auc'])}")
        lines.append(f"  {self.decision}")
        return "\n".join(lines)


def _sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def train_and_register(
    X: np.ndarray,
    y: np.ndarray,
    ts: np.ndarray,
    feature_names: Sequence[str],
    feature_spec: str,
    registry: Registry | str | os.PathLike[str],
    name: str,
    label_def: LabelDefinition | Mapping[str, Any],
    gap_ms: int | None = None,
    *,
    test_fraction: float = 0.2,
    data_end_ms: int | None = None,
    params: Mapping[str, Any] | None = None,
    baseline_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    promote: bool = True,
    alias: str = "champion",
    min_auc_gain: float = 0.0,
    actor: str | None = None,
    reason: str = "",
    parity_rows: int = 2_000,
    log: Callable[[str], None] | None = print,
    lineage: Mapping[str, Any] | None = None,
) -> TrainingRunResult:
    """Run the whole training procedure (module docstring) and return the registered version.

    Args:
        X: float32 [n, d] point-in-time features, columns in `feature_names` order.
        y: 0/1 labels [n] per `label_def`; ts: int64 event times (ms) [n].
        feature_spec: hash of the feature spec X was computed with (``FeatureSpec.hash``).
        registry: a `Registry` or its root directory.
        label_def: `LabelDefinition` or ``{"kind": "purchase_within", "horizon_ms": ...}``.
        gap_ms: train/test gap; default the label horizon.
        data_end_ms: last event time of the source data; if given, rows whose label horizon
            extends past it are dropped. Pass None if `y` already excludes censored rows.
        promote: promote to `alias` if better (see module docstring).
        log: progress line sink (None for silence).
        lineage: recorded as the manifest's ``lineage`` (e.g. the retraining trigger; see
            `models.retraining`); ``parent_version`` is filled in with the champion's version.
    """
    say = log or (lambda _line: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reg = registry if isinstance(registry, Registry) else Registry(registry)
    label = label_def if isinstance(label_def, LabelDefinition) else LabelDefinition.from_dict(label_def)
    names = list(feature_names)
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.asarray(y).astype(np.int8)
    ts = np.asarray(ts).astype(np.int64)
    if X.ndim != 2 or X.shape != (len(y), len(names)) or ts.shape != y.shape:
        raise ValueError(f"shapes disagree: X {X.shape}, y {y.shape}, ts {ts.shape}, {len(names)} feature names")
    if len(y) == 0:
        raise ValueError("no rows to train on")
    digest = data_digest(X, y)
    data_start, data_end = int(ts.min()), int(data_end_ms if data_end_ms is not None else ts.max())

    keep = np.ones(len(y), dtype=bool)
    if data_end_ms is not None:
        keep = ~censor_mask(ts, label.horizon_ms, data_end_ms)
    n_censored = int((~keep).sum())
    rows = np.flatnonzero(keep)
    split = time_gapped_split(ts[rows], label.horizon_ms, test_fraction=test_fraction, gap_ms=gap_ms)
    tr, te = rows[split.train], rows[split.test]
    Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    say(f"[train] {len(y):,} rows, {len(names)} features, spec {feature_spec}; censored {n_censored:,}; "
        f"train {len(tr):,} / gap {split.n_dropped:,} / test {len(te):,} (test from ts {split.cut_ms}); "
        f"base rate train {ytr.mean():.4f} test {yte.mean():.4f}")

    t = time.perf_counter()
    model = train(Xtr, ytr, names, kind="lightgbm", params=params, seed=seed)
    baseline = train(Xtr, ytr, names, kind="logreg", params=baseline_params, seed=seed)
    timings["train"] = time.perf_counter() - t
    say(f"[train] fitted lightgbm ({model.params.get('n_estimators')} trees) and logreg baseline "
        f"in {timings['train']:.1f} s")

    t = time.perf_counter()
    onnx_bytes = export_onnx(model, names)
    baseline_bytes = export_onnx(baseline, names)
    check = np.concatenate([tr[_sample_rows(len(tr), parity_rows // 2, seed)],
                            te[_sample_rows(len(te), parity_rows // 2, seed)]])
    parity = verify_onnx_parity(model, onnx_bytes, X[check])  # the served model: must match
    parity_base, _ = parity_max_diff(baseline, baseline_bytes, X[check])  # reference only: recorded
    timings["export"] = time.perf_counter() - t
    if parity_base > 1e-5:
        say(f"[train] note: the baseline's ONNX export differs from sklearn by {parity_base:.2e} (baseline is "
            "evaluated natively; it is not served)")
    say(f"[train] exported ONNX ({len(onnx_bytes):,} bytes); parity on {len(check):,} rows: max |diff| "
        f"lightgbm {parity:.2e}, logreg {parity_base:.2e}")

    score_te = onnx_scores(onnx_bytes, Xte)
    score_tr = onnx_scores(onnx_bytes, Xtr)
    test_m = evaluate(yte, score_te)
    base_m = evaluate(yte, baseline.predict_proba(Xte))
    train_m = evaluate(ytr, score_tr)
    say(f"[train] holdout AUC lightgbm {_fmt(test_m.auc)} vs logreg {_fmt(base_m.auc)}; "
        f"log loss {test_m.log_loss:.4f} vs {base_m.log_loss:.4f}; ECE {test_m.ece:.4f}")
    if test_m.auc is not None and base_m.auc is not None and base_m.auc > test_m.auc:
        say("[train] WARNING: the logistic-regression baseline beats LightGBM on the holdout; check the "
            "features and params before relying on this model")

    champion_ref, champion_metrics, incomparable = None, None, None
    try:
        champion_ref = reg.resolve(name, alias)
    except (RegistryError, LookupError):
        champion_ref = None
    if champion_ref is not None:
        try:
            scorer = OnnxScorer.load(champion_ref, feature_spec, names)
            champion_metrics = evaluate(yte, scorer.predict(Xte))
            say(f"[train] current {alias} v{champion_ref.version} on the same holdout: AUC {_fmt(champion_metrics.auc)}")
        except IncompatibleModel as exc:
            incomparable = str(exc)
            say(f"[train] current {alias} v{champion_ref.version} cannot score this holdout: {exc}")

    profile = build_profile(Xtr, names, scores=score_tr)
    metrics: dict[str, Any] = {
        "test": test_m.to_dict(),
        "train": {k: v for k, v in train_m.to_dict().items() if k != "reliability"},
        "baseline": {"kind": "logreg", "params": baseline.params, "test": base_m.to_dict()},
        "champion": ({"version": champion_ref.version, "alias": alias,
                      "test": champion_metrics.to_dict() if champion_metrics else None,
                      "incomparable": incomparable} if champion_ref is not None else None),
        "parity_max_abs_diff": {"lightgbm": parity, "logreg": parity_base, "rows": int(len(check))},
    }
    manifest = Manifest(
        name=name, feature_spec=feature_spec, feature_names=names, model_kind="lightgbm",
        training=TrainingInfo(data_start_ms=data_start, data_end_ms=data_end, n_rows=int(len(y)), digest=digest,
                              label=label.to_dict(), split={**split.describe(), "censored_rows": n_censored,
                                                            "test_fraction": test_fraction}),
        params={**model.params, "seed": seed}, metrics=metrics, profile=profile,
        parent_version=champion_ref.version if champion_ref is not None else None,
        lineage=({**lineage, "parent_version": champion_ref.version if champion_ref is not None else None}
                 if lineage is not None else {}),
    )
    version = reg.register(name, onnx_bytes, manifest, actor=actor,
                           reason=reason or f"training run on {len(y):,} rows ({feature_spec})")
    registered = reg.resolve(name, version).manifest
    say(f"[train] registered {name} v{version} in {reg.root}")

    promoted = False
    if not promote:
        decision = f"not promoted (promotion disabled); promote with `streamscore model promote {name} {version}`"
    elif champion_ref is None:
        promoted, decision = True, f"promoted v{version} to {alias} (there was none)"
    elif champion_metrics is None:
        decision = (f"not promoted: {alias} v{champion_ref.version} cannot be evaluated on this holdout "
                    f"(different feature spec or inputs); promote explicitly if intended")
    elif test_m.auc is None or champion_metrics.auc is None:
        decision = "not promoted: holdout has a single class, AUC undefined"
    elif test_m.auc > champion_metrics.auc + min_auc_gain:
        promoted = True
        decision = (f"promoted v{version} to {alias}: holdout AUC {test_m.auc:.4f} > "
                    f"v{champion_ref.version} {champion_metrics.auc:.4f}")
    else:
        decision = (f"not promoted: holdout AUC {test_m.auc:.4f} does not beat {alias} "
                    f"v{champion_ref.version} {champion_metrics.auc:.4f} (+{min_auc_gain})")
    if promoted:
        reg.promote(name, version, alias=alias, actor=actor, reason=decision)
    say(f"[train] {decision}")
    timings["total"] = time.perf_counter() - t0
    return TrainingRunResult(name=name, version=version, promoted=promoted, decision=decision, manifest=registered,
                             champion_before=champion_ref.version if champion_ref is not None else None,
                             timings_s=timings)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
