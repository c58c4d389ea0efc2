"""One training run: split, train, export, verify, evaluate, profile, register, maybe promote.

`train_and_register` works on plain arrays (the caller builds X with the offline feature
executor and y with `models.labels`). Steps:

1. drop censored rows (label horizon past `data_end_ms`) if `data_end_ms` is given;
2. time-gapped split (`models.split`, gap defaults to the label horizon);
3. train LightGBM and the logistic-regression baseline on the train side;
4. export both to ONNX and measure each export against its native predict_proba;
5. select the candidate to register (`select_candidate`, rule `SELECTION_RULE`): among the
   eligible kinds (`candidates`, default both) whose ONNX export matches native predictions within
   `PARITY_ATOL`, the one with the higher holdout AUC of its ONNX scores (what would be served);
   a tie or an undefined AUC keeps LightGBM. If no eligible kind passes parity: `ParityError`,
   nothing registered. So a LightGBM that loses to its own baseline is never served over it;
6. evaluate on the test side: the selected model by its ONNX scores, the baseline natively (the
   reference the manifest records), and the current champion on the same rows through the
   verified scorer when its feature spec and names match;
7. profile the training rows and training scores (the warm rows from `profile_warm_from_ms`:
   `models.profile.warm_rows`);
8. register with a manifest whose ``parent_version`` is the current champion;
9. if `promote`: make it champion when there is none, or when its test AUC beats the champion's
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

from models.evaluate import Metrics, evaluate
from models.labels import LabelDefinition, censor_mask
from models.manifest import Manifest, TrainingInfo, data_digest
from models.profile import build_profile
from models.registry import Registry, RegistryError
from models.scorer import IncompatibleModel, OnnxScorer
from models.split import time_gapped_split
from models.train import KINDS, ParityError, export_onnx, onnx_scores, parity_max_diff, train

PARITY_ATOL = 1e-5
SELECTION_RULE = ("highest holdout AUC (ONNX scores) among the eligible kinds whose ONNX export matches native "
                  f"predict_proba within {PARITY_ATOL:g}; ties and undefined AUC keep lightgbm")


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
        if m.get("selection"):
            lines.append(f"  {m['selection']['decision']}")
        if champ.get("test"):
            lines.append(f"  champion v{champ['version']} on the same holdout: AUC {fmt(champ['test']['auc'])}")
        lines.append(f"  {self.decision}")
        return "\n".join(lines)


def select_candidate(
    test_by_kind: Mapping[str, Metrics],
    parity: Mapping[str, float],
    candidates: Sequence[str] = KINDS,
    atol: float = PARITY_ATOL,
) -> tuple[str | None, str]:
    """(kind to register, one-line reason) by `SELECTION_RULE`; kind is None if no eligible kind
    passes parity (the reason then says why)."""
    unknown = [k for k in candidates if k not in KINDS]
    if unknown or not candidates:
        raise ValueError(f"candidates must be a non-empty subset of {KINDS}, got {list(candidates)}")
    exact = [k for k in candidates if parity[k] <= atol]
    excluded = ", ".join(f"{k} differs by {parity[k]:.3g}" for k in candidates if k not in exact)
    if not exact:
        return None, f"no candidate's ONNX export matches its native model within {atol:g} ({excluded})"

    def rank(kind: str) -> tuple[float, bool]:
        auc = test_by_kind[kind].auc
        return (-1.0 if auc is None else auc, kind == "lightgbm")

    best = max(exact, key=rank)
    reason = f"selected {best}: holdout AUC " + ", ".join(
        f"{k} {_fmt(test_by_kind[k].auc)}" for k in sorted(exact, key=rank, reverse=True))
    if excluded:
        reason += f"; excluded for ONNX parity: {excluded}"
    return best, reason


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
    candidates: Sequence[str] = KINDS,
    log: Callable[[str], None] | None = print,
    lineage: Mapping[str, Any] | None = None,
    profile_warm_from_ms: int | None = None,
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
        candidates: model kinds eligible to be registered (``("lightgbm",)`` forces LightGBM).
        log: progress line sink (None for silence).
        profile_warm_from_ms: rows before this event time are cold start (truncated windows
            at the start of the replayed history) and are left out of the reference profile
            (`TrainingSet.warm_from_ms`; None profiles every training row).
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
    fitted = {kind: train(Xtr, ytr, names, kind=kind, params=params if kind == "lightgbm" else baseline_params,
                          seed=seed) for kind in KINDS}
    timings["train"] = time.perf_counter() - t
    say(f"[train] fitted lightgbm ({fitted['lightgbm'].params.get('n_estimators')} trees) and logreg baseline "
        f"in {timings['train']:.1f} s")

    t = time.perf_counter()
    exported = {kind: export_onnx(m, names) for kind, m in fitted.items()}
    check = np.concatenate([tr[_sample_rows(len(tr), parity_rows // 2, seed)],
                            te[_sample_rows(len(te), parity_rows // 2, seed)]])
    parity = {kind: parity_max_diff(fitted[kind], exported[kind], X[check])[0] for kind in KINDS}
    timings["export"] = time.perf_counter() - t
    say(f"[train] exported ONNX; parity on {len(check):,} rows: max |diff| "
        + ", ".join(f"{k} {parity[k]:.2e}" for k in KINDS))

    test_by_kind = {kind: evaluate(yte, onnx_scores(exported[kind], Xte)) for kind in KINDS}
    kind, selection = select_candidate(test_by_kind, parity, candidates, PARITY_ATOL)
    if kind is None:
        raise ParityError(selection + "; nothing registered")
    model, onnx_bytes, test_m = fitted[kind], exported[kind], test_by_kind[kind]
    baseline, base_m = fitted["logreg"], evaluate(yte, fitted["logreg"].predict_proba(Xte))
    score_tr = onnx_scores(onnx_bytes, Xtr)
    train_m = evaluate(ytr, score_tr)
    say(f"[train] {selection}")

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

    profile = build_profile(Xtr, names, scores=score_tr, ts=ts[tr], warm_from_ms=profile_warm_from_ms)
    metrics: dict[str, Any] = {
        "test": test_m.to_dict(),
        "train": {k: v for k, v in train_m.to_dict().items() if k != "reliability"},
        "baseline": {"kind": "logreg", "params": baseline.params, "test": base_m.to_dict()},
        "champion": ({"version": champion_ref.version, "alias": alias,
                      "test": champion_metrics.to_dict() if champion_metrics else None,
                      "incomparable": incomparable} if champion_ref is not None else None),
        "parity_max_abs_diff": {**parity, "rows": int(len(check))},
        "candidates": {k: {"test": m.to_dict(), "parity_max_abs_diff": parity[k]} for k, m in test_by_kind.items()},
        "selection": {"kind": kind, "rule": SELECTION_RULE, "eligible": list(candidates), "decision": selection},
    }
    manifest = Manifest(
        name=name, feature_spec=feature_spec, feature_names=names, model_kind=kind,
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
