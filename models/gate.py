"""The promotion gate: may a retrained candidate replace the champion?

The gate reads the metrics `models.training_run.train_and_register` records, all measured on the
same time-gapped holdout rows: the candidate by its ONNX scores, the logistic-regression baseline,
and the current champion through the verified scorer. A candidate passes only if every check
passes:

- ``auc``: candidate AUC >= champion AUC - `max_auc_drop` (skipped when there is no champion);
- ``log_loss``: candidate log loss <= champion log loss + `max_log_loss_increase` (idem);
- ``ece``: candidate expected calibration error <= `max_ece`;
- ``baseline``: candidate AUC >= baseline AUC, if `require_beat_baseline` (training already
  registers the better of LightGBM and the baseline, `models.training_run.select_candidate`, so
  this holds unless the selection was restricted; a selected baseline passes by definition);
- a champion that cannot score the holdout (other feature spec or inputs) fails the gate: such a
  replacement is a human's decision;
- an undefined AUC (single-class holdout) fails the gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class GateConfigError(ValueError):
    """A gate threshold is out of range; the message names it."""


@dataclass(frozen=True)
class PromotionGate:
    """Thresholds of the gate (module docstring). Metric differences are absolute."""

    max_auc_drop: float = 0.005
    max_log_loss_increase: float = 0.005
    max_ece: float = 0.05
    require_beat_baseline: bool = True

    def __post_init__(self) -> None:
        for key in ("max_auc_drop", "max_log_loss_increase", "max_ece"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise GateConfigError(f"gate.{key} must be a number in [0, 1], got {value!r}")
        if not isinstance(self.require_beat_baseline, bool):
            raise GateConfigError(f"gate.require_beat_baseline must be true or false, got {self.require_beat_baseline!r}")

    def check(self, metrics: Mapping[str, Any]) -> GateResult:
        """Apply the gate to a training run's metrics (``manifest.metrics``)."""
        test = metrics.get("test") or {}
        baseline = (metrics.get("baseline") or {}).get("test") or {}
        champion = metrics.get("champion") or None
        checks: dict[str, dict[str, Any]] = {}
        failures: list[str] = []

        def record(name: str, ok: bool, value: Any, limit: Any, why: str) -> None:
            checks[name] = {"ok": ok, "value": value, "limit": limit}
            if not ok:
                failures.append(why)

        auc, ll, ece = test.get("auc"), test.get("log_loss"), test.get("ece")
        if auc is None:
            record("auc_defined", False, None, None, "holdout AUC is undefined (one class only)")
        record("ece", ece is not None and ece <= self.max_ece, ece, self.max_ece,
               f"ECE {_f(ece)} > {self.max_ece}")
        if self.require_beat_baseline:
            base_auc = baseline.get("auc")
            is_baseline = (metrics.get("selection") or {}).get("kind") == "logreg"
            ok = is_baseline or (auc is not None and base_auc is not None and auc >= base_auc)
            record("baseline", ok, auc, base_auc, f"AUC {_f(auc)} is below the logistic baseline {_f(base_auc)}")
        if champion is not None:
            champ = champion.get("test")
            version = champion.get("version")
            if not champ:
                record("champion_comparable", False, None, None,
                       f"champion v{version} cannot score this holdout ({champion.get('incomparable')})")
            else:
                c_auc, c_ll = champ.get("auc"), champ.get("log_loss")
                floor = None if c_auc is None else c_auc - self.max_auc_drop
                record("auc", auc is not None and floor is not None and auc >= floor, auc, floor,
                       f"AUC {_f(auc)} < champion v{version} {_f(c_auc)} - {self.max_auc_drop}")
                ceiling = None if c_ll is None else c_ll + self.max_log_loss_increase
                record("log_loss", ll is not None and ceiling is not None and ll <= ceiling, ll, ceiling,
                       f"log loss {_f(ll)} > champion v{version} {_f(c_ll)} + {self.max_log_loss_increase}")
        passed = not failures
        if passed:
            against = f"champion v{champion.get('version')}" if champion else "no champion"
            reason = f"gate passed vs {against}: AUC {_f(auc)}, log loss {_f(ll)}, ECE {_f(ece)}"
        else:
            reason = "gate failed: " + "; ".join(failures)
        return GateResult(passed=passed, reason=reason, checks=checks)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PromotionGate:
        """From a YAML mapping; unknown keys raise `GateConfigError` naming them."""
        if not isinstance(raw, Mapping):
            raise GateConfigError(f"gate must be a mapping, got {type(raw).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise GateConfigError(f"unknown gate keys {unknown}; valid keys are {sorted(known)}")
        return cls(**raw)


@dataclass(frozen=True)
class GateResult:
    """The gate's decision: `passed`, one readable `reason`, and each check's value and limit."""

    passed: bool
    reason: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"
