"""The promotion gate on recorded metrics, and the `retrain:` config section that sets it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import ConfigError, config_from_mapping
from models.gate import GateConfigError, PromotionGate

GATE = PromotionGate(max_auc_drop=0.005, max_log_loss_increase=0.005, max_ece=0.05)
unit = st.floats(0.0, 1.0, allow_nan=False)


def metrics(auc: float | None = 0.80, ll: float = 0.30, ece: float = 0.02, base_auc: float = 0.75,
            champion: dict[str, Any] | None = None, incomparable: str | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"test": {"auc": auc, "log_loss": ll, "ece": ece, "n": 1000},
                         "baseline": {"test": {"auc": base_auc, "log_loss": 0.32}}, "champion": None}
    if champion is not None or incomparable is not None:
        m["champion"] = {"version": 1, "test": champion, "incomparable": incomparable}
    return m


def test_a_worse_candidate_is_rejected_with_every_reason() -> None:
    r = GATE.check(metrics(auc=0.70, ll=0.40, ece=0.09, base_auc=0.72, champion={"auc": 0.80, "log_loss": 0.30}))
    assert not r.passed
    for words in ("AUC 0.7000 < champion v1 0.8000 - 0.005", "log loss 0.4000 > champion v1 0.3000 + 0.005",
                  "ECE 0.0900 > 0.05", "is below the logistic baseline 0.7200"):
        assert words in r.reason, r.reason
    assert {k for k, c in r.checks.items() if not c["ok"]} == {"auc", "log_loss", "ece", "baseline"}


def test_a_better_or_equal_candidate_passes() -> None:
    assert GATE.check(metrics(auc=0.85, ll=0.25, champion={"auc": 0.80, "log_loss": 0.30})).passed
    same = GATE.check(metrics(auc=0.80, ll=0.30, champion={"auc": 0.80, "log_loss": 0.30}))
    assert same.passed and "gate passed vs champion v1" in same.reason
    within = GATE.check(metrics(auc=0.796, ll=0.304, champion={"auc": 0.80, "log_loss": 0.30}))
    assert within.passed, "inside the margins"


def test_no_champion_leaves_the_absolute_checks_and_an_incomparable_champion_fails() -> None:
    assert GATE.check(metrics()).passed
    assert not GATE.check(metrics(ece=0.2)).passed
    r = GATE.check(metrics(incomparable="feature spec fs-a != fs-b"))
    assert not r.passed and "cannot score this holdout (feature spec fs-a != fs-b)" in r.reason
    assert not GATE.check(metrics(auc=None)).passed
    assert not GATE.check(metrics(base_auc=0.9)).passed
    assert PromotionGate(require_beat_baseline=False).check(metrics(base_auc=0.9)).passed


@given(auc=unit, c_auc=unit, ll=st.floats(0.01, 2.0), c_ll=st.floats(0.01, 2.0), ece=unit, base=unit,
       better=st.floats(0.0, 0.2))
def test_the_gate_is_monotone_and_matches_its_definition(auc: float, c_auc: float, ll: float, c_ll: float,
                                                          ece: float, base: float, better: float) -> None:
    m = metrics(auc=auc, ll=ll, ece=ece, base_auc=base, champion={"auc": c_auc, "log_loss": c_ll})
    r = GATE.check(m)
    expected = auc >= c_auc - 0.005 and ll <= c_ll + 0.005 and ece <= 0.05 and auc >= base
    assert r.passed == expected
    if r.passed:  # a candidate that is better on every metric passes too
        improved = metrics(auc=min(1.0, auc + better), ll=max(0.0, ll - better), ece=max(0.0, ece - better),
                           base_auc=base, champion={"auc": c_auc, "log_loss": c_ll})
        assert GATE.check(improved).passed
    else:
        assert r.reason.startswith("gate failed: ")


def test_gate_and_retrain_config_are_validated_naming_the_key() -> None:
    cfg = config_from_mapping({"retrain": {"gate": {"max_ece": 0.1, "require_beat_baseline": False},
                                           "history_retention": "60d", "warmup": "all", "min_rows": 500}})
    assert cfg.retrain.policy.gate == PromotionGate(max_ece=0.1, require_beat_baseline=False)
    assert cfg.retrain.history_retention == 60 * 86_400_000 and cfg.retrain.policy.warmup_ms is None
    assert cfg.retrain.policy.min_rows == 500 and cfg.retrain.consumer_group("g") == "g.retrain"
    other = config_from_mapping({"retrain": {"history_retention": -1, "warmup": "7d", "horizon": "30m"}}).retrain
    assert (other.history_retention, other.policy.warmup_ms, other.policy.horizon_ms) == (-1, 7 * 86_400_000, 1_800_000)
    assert config_from_mapping({"retrain": other.to_mapping()}).retrain == other
    assert config_from_mapping({"retrain": cfg.retrain.to_mapping()}).retrain == cfg.retrain
    for raw, words in [
        ({"retrain": {"trigger_topics": "x"}}, "unknown retrain keys ['trigger_topics']"),
        ({"retrain": {"gate": {"max_auc": 0.1}}}, "unknown gate keys ['max_auc']"),
        ({"retrain": {"gate": {"max_ece": 1.5}}}, "gate.max_ece must be a number in [0, 1]"),
        ({"retrain": {"min_positives": 0}}, "retrain: min_positives must be"),
        ({"retrain": {"warmup": "1d"}}, "retrain.warmup"),
        ({"retrain": {"history_retention": "10m"}}, "retrain.history_retention"),
        ({"retrain": {"trigger_topic": "t", "outcome_topic": "t"}}, "distinct"),
        ({"retrain": {"horizon": "soon"}}, "duration 'soon'"),
        ({"retrain": ["not", "a", "mapping"]}, "retrain must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=None) as info:
            config_from_mapping(raw)
        assert words in str(info.value), (raw, str(info.value))
    with pytest.raises(GateConfigError, match="require_beat_baseline"):
        PromotionGate(require_beat_baseline="yes")  # type: ignore[arg-type]


def test_a_selected_baseline_passes_the_baseline_check() -> None:
    """Training registers the better of LightGBM and the baseline; a selected baseline is not
    required to beat itself (its ONNX AUC may differ from the native one in the last digits)."""
    m = metrics(auc=0.7199999, ll=0.30, base_auc=0.72)
    assert not GATE.check(m).checks["baseline"]["ok"]
    assert GATE.check({**m, "selection": {"kind": "logreg"}}).checks["baseline"]["ok"]
