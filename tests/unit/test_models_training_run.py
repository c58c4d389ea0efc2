"""train_and_register end to end on synthetic arrays: lineage, metrics, profile, promotion policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.labels import LabelDefinition
from models.manifest import data_digest
from models.registry import Registry
from models.scorer import OnnxScorer
from models.testing import synthetic_dataset
from models.evaluate import Metrics
from models.training_run import select_candidate, train_and_register

HORIZON = 3_600_000
LABEL = LabelDefinition(horizon_ms=HORIZON)
WEAK = {"n_estimators": 3, "num_leaves": 2, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    return synthetic_dataset(n=5_000, d=6, seed=7)


def test_first_run_registers_with_lineage_and_promotes(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    X, y, ts, names = data
    lines: list[str] = []
    data_end = int(ts.max())
    res = train_and_register(X, y, ts, names, "fs-a", tmp_path, "purchase", LABEL, data_end_ms=data_end,
                             log=lines.append, actor="ci")
    assert res.version == 1 and res.promoted and res.champion_before is None
    assert any("parity" in line for line in lines) and any("promoted v1" in line for line in lines)
    reg = Registry(tmp_path)
    assert reg.resolve("purchase", "champion").version == 1
    m = reg.resolve("purchase", 1).manifest
    assert m.sha256 and m.parent_version is None and m.model_kind == "lightgbm"
    assert m.feature_spec == "fs-a" and m.feature_names == names
    assert m.training.digest == data_digest(X, y) and m.training.n_rows == len(X)
    assert (m.training.data_start_ms, m.training.data_end_ms) == (int(ts.min()), data_end)
    assert m.training.label == {"kind": "purchase_within", "horizon_ms": HORIZON}
    split = m.training.split
    assert split["censored_rows"] == int((ts + HORIZON > data_end).sum()) > 0
    assert split["gap_ms"] == HORIZON and split["train_rows"] + split["test_rows"] + split["gap_rows_dropped"] \
        + split["censored_rows"] == len(X)
    test, base = m.metrics["test"], m.metrics["baseline"]["test"]
    assert test["n"] == split["test_rows"] and 0.6 < test["auc"] <= 1 and len(test["reliability"]) == 10
    assert m.metrics["baseline"]["kind"] == "logreg" and base["auc"] is not None
    assert m.metrics["parity_max_abs_diff"]["lightgbm"] < 1e-5
    assert list(m.profile["features"]) == names and m.profile["score"]["n"] == split["train_rows"]
    assert m.params["n_estimators"] == 150 and m.params["seed"] == 0
    assert [e["action"] for e in reg.audit("purchase")] == ["register", "promote"]
    assert reg.audit("purchase")[0]["actor"] == "ci"
    assert "purchase v1" in res.summary() and "baseline logreg" in res.summary()
    # the registered model serves through the verified scorer
    scorer = OnnxScorer.load(reg.resolve("purchase", "champion"), "fs-a", names)
    assert scorer.predict(X[:10]).shape == (10,)


def test_promotion_only_when_better_on_same_holdout(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    X, y, ts, names = data
    quiet = {"log": None}
    weak = train_and_register(X, y, ts, names, "fs-a", tmp_path, "purchase", LABEL, params=WEAK, **quiet)
    strong = train_and_register(X, y, ts, names, "fs-a", tmp_path, "purchase", LABEL.to_dict(), **quiet)
    assert weak.promoted and strong.promoted and strong.champion_before == 1
    champ = strong.metrics["champion"]
    assert champ["version"] == 1 and champ["test"]["n"] == strong.metrics["test"]["n"]  # same holdout
    assert strong.metrics["test"]["auc"] > champ["test"]["auc"]
    again_weak = train_and_register(X, y, ts, names, "fs-a", tmp_path, "purchase", LABEL, params=WEAK, **quiet)
    assert not again_weak.promoted and "does not beat champion v2" in again_weak.decision
    assert again_weak.manifest.parent_version == 2
    reg = Registry(tmp_path)
    assert reg.resolve("purchase", "champion").version == 2 and reg.versions("purchase") == [1, 2, 3]
    off = train_and_register(X, y, ts, names, "fs-a", tmp_path, "purchase", LABEL, promote=False, **quiet)
    assert not off.promoted and "promotion disabled" in off.decision


def test_incomparable_champion_is_not_replaced_automatically(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    X, y, ts, names = data
    train_and_register(X, y, ts, names, "fs-old", tmp_path, "purchase", LABEL, params=WEAK, log=None)
    lines: list[str] = []
    res = train_and_register(X, y, ts, names, "fs-new", tmp_path, "purchase", LABEL, log=lines.append)
    assert not res.promoted and "cannot be evaluated on this holdout" in res.decision
    assert "feature_spec mismatch" in res.metrics["champion"]["incomparable"]
    assert any("cannot score this holdout" in line for line in lines)


def test_gap_and_errors(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    X, y, ts, names = data
    res = train_and_register(X, y, ts, names, "fs-a", tmp_path, "m", LABEL, gap_ms=6 * HORIZON, params=WEAK, log=None)
    assert res.manifest.training.split["gap_ms"] == 6 * HORIZON
    with pytest.raises(ValueError, match="shapes disagree"):
        train_and_register(X, y[:-1], ts, names, "fs-a", tmp_path, "m", LABEL, log=None)
    with pytest.raises(ValueError, match="no training rows"):
        train_and_register(X, y, ts, names, "fs-a", tmp_path, "m", {"kind": "purchase_within", "horizon_ms": 10 ** 12},
                           log=None)


def test_the_better_kind_on_the_holdout_is_registered(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    """Issue 12.4: a LightGBM that loses to its logistic-regression baseline is not served over it."""
    X, y, ts, names = data
    res = train_and_register(X, y, ts, names, "fs-a", tmp_path, "purchase", LABEL, params=WEAK, log=None)
    cands = res.metrics["candidates"]
    assert cands["logreg"]["test"]["auc"] > cands["lightgbm"]["test"]["auc"]  # the weak forest loses
    assert res.manifest.model_kind == "logreg" and res.metrics["selection"]["kind"] == "logreg"
    assert res.metrics["test"]["auc"] == cands["logreg"]["test"]["auc"]
    assert "selected logreg" in res.summary()
    scorer = OnnxScorer.load(Registry(tmp_path).resolve("purchase", "champion"), "fs-a", names)
    assert scorer.manifest.model_kind == "logreg"
    forced = train_and_register(X, y, ts, names, "fs-a", tmp_path, "purchase", LABEL, params=WEAK, log=None,
                                candidates=("lightgbm",), promote=False)
    assert forced.manifest.model_kind == "lightgbm" and forced.metrics["selection"]["eligible"] == ["lightgbm"]


def _m(auc: float | None) -> Metrics:
    return Metrics(n=10, n_positive=5, base_rate=0.5, mean_score=0.5, auc=auc, log_loss=0.5, brier=0.2, ece=0.0)


def test_select_candidate_rule() -> None:
    both = {"lightgbm": _m(0.80), "logreg": _m(0.82)}
    exact = {"lightgbm": 1e-7, "logreg": 2e-7}
    assert select_candidate(both, exact)[0] == "logreg"
    assert select_candidate({"lightgbm": _m(0.8), "logreg": _m(0.8)}, exact)[0] == "lightgbm"  # tie
    assert select_candidate({"lightgbm": _m(None), "logreg": _m(None)}, exact)[0] == "lightgbm"
    kind, why = select_candidate(both, {"lightgbm": 1e-7, "logreg": 0.01})
    assert kind == "lightgbm" and "excluded for ONNX parity: logreg" in why
    kind, why = select_candidate(both, {"lightgbm": 0.02, "logreg": 0.01})
    assert kind is None and "no candidate" in why
    with pytest.raises(ValueError, match="subset"):
        select_candidate(both, exact, candidates=("xgboost",))
