"""Train a binary classifier on a plain float32 matrix and export it to ONNX.

Two kinds:

- ``"lightgbm"``: `lightgbm.LGBMClassifier`, deterministic (``deterministic=True,
  force_row_wise=True, num_threads=1`` and ``random_state=seed``: bit-identical models for the
  same data on any machine; one thread also avoids OpenMP spin contention on a busy 2-core box),
  150 trees by default. NaN is a missing value and +-inf a value, both handled natively.
- ``"logreg"``: the baseline, a scikit-learn ``Pipeline(inf_to_nan, SimpleImputer(median),
  StandardScaler, LogisticRegression)``. Feature vectors legitimately contain NaN (empty windows,
  no previous event) and can hold +-inf (float32 overflow), which the linear model cannot take:
  non-finite values are treated as missing and imputed with the training median. The exported
  graph does the same (``Where(IsInf(x), NaN, x)`` in front of the converted pipeline).

ONNX output contract (see `models.contract`): input ``features`` float32 ``[N, d]`` (columns in
`feature_names` order), single output ``score`` float32 ``[N]`` = P(y=1). ZipMap is disabled in
both converters and the converters' ``label``/``probabilities`` outputs are replaced by ``score``.
`verify_onnx_parity` checks ONNX Runtime against the native ``predict_proba`` on real rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models.contract import INPUT_NAME, OUTPUT_NAME, contract_problems, normalise_outputs

ModelKind = Literal["lightgbm", "logreg"]
KINDS: tuple[str, ...] = ("lightgbm", "logreg")

LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "objective": "binary",
    "n_estimators": 150,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "reg_lambda": 1.0,
    "colsample_bytree": 0.9,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbose": -1,
}
LOGREG_DEFAULTS: dict[str, Any] = {"C": 1.0, "max_iter": 1000, "impute_strategy": "median"}


class ParityError(AssertionError):
    """ONNX Runtime disagrees with the native model beyond the tolerance."""


@dataclass
class TrainedModel:
    """A fitted model plus what is needed to export and describe it.

    Attributes:
        kind: ``"lightgbm"`` or ``"logreg"``.
        estimator: the fitted scikit-learn-compatible estimator (has ``predict_proba``).
        feature_names: input column names, in matrix column order.
        params: the effective hyper-parameters (defaults merged with overrides), JSON-safe.
        seed: the random seed used.
    """

    kind: str
    estimator: Any
    feature_names: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Native P(y=1) for each row of `X` (float64 [n])."""
        return np.asarray(self.estimator.predict_proba(_as_matrix(X, len(self.feature_names)))[:, 1], dtype=np.float64)


def _as_matrix(X: np.ndarray, d: int | None = None) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D float32 matrix, got shape {X.shape}")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"X has {X.shape[1]} columns, the model has {d} features")
    return X


def train(
    X: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    kind: ModelKind = "lightgbm",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> TrainedModel:
    """Fit a `kind` classifier on float32 `X` [n, d] and binary `y` [n]; deterministic given `seed`.

    `params` override the defaults (`LIGHTGBM_DEFAULTS` / `LOGREG_DEFAULTS`). Raises ValueError on
    shape mismatches, non-binary labels, or a single class.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    names = tuple(feature_names)
    X = _as_matrix(X, len(names))
    y = np.asarray(y)
    if y.shape != (X.shape[0],):
        raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},)")
    if len(set(names)) != len(names):
        raise ValueError("feature_names contains duplicates")
    classes = set(np.unique(y).tolist())
    if not classes <= {0, 1}:
        raise ValueError(f"y must be 0/1, found values {sorted(classes)[:5]}")
    if classes != {0, 1}:
        raise ValueError(f"y has a single class {sorted(classes)}: cannot train a classifier")
    y = y.astype(np.int32)

    if kind == "lightgbm":
        import lightgbm as lgb

        merged = {**LIGHTGBM_DEFAULTS, **(params or {}), "random_state": seed}
        estimator = lgb.LGBMClassifier(**merged)
        estimator.fit(X, y)  # unnamed columns: spec names may contain characters LightGBM rejects
        # Serve and predict with float32-exact thresholds: same predictions on float32 inputs, and
        # the ONNX export computes the same function (see `float32_exact_booster`).
        estimator._Booster = float32_exact_booster(estimator.booster_)
    else:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, StandardScaler

        merged = {**LOGREG_DEFAULTS, **(params or {}), "random_state": seed}
        lr_params = {k: v for k, v in merged.items() if k != "impute_strategy"}
        estimator = Pipeline([
            ("finite", FunctionTransformer(inf_to_nan, feature_names_out="one-to-one")),
            ("impute", SimpleImputer(strategy=merged["impute_strategy"], keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(**lr_params)),
        ])
        estimator.fit(X, y)
    return TrainedModel(kind=kind, estimator=estimator, feature_names=names, params=_json_safe(merged), seed=seed)


class UnsupportedTree(ValueError):
    """A LightGBM split that the float32 ONNX tree ensemble cannot reproduce exactly."""


# LightGBM's decision_type bits (include/LightGBM/tree.h): 1 = categorical, 2 = default left,
# (>> 2) & 3 = missing type (0 None, 1 Zero, 2 NaN).
_CATEGORICAL, _DEFAULT_LEFT = 1, 2
_MISSING_NONE, _MISSING_ZERO = 0, 1


def _float32_floor(t: float) -> float:
    """The largest float32 value <= `t`, as a Python float (exactly representable in float32)."""
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf), dtype=np.float32)
    return float(f)


def float32_exact_booster(booster: Any) -> Any:
    """`booster` rewritten so that ONNX's float32 tree ensemble computes exactly its predictions.

    LightGBM compares each input (a float32 widened to float64) with a float64 threshold ``t``;
    ONNX Runtime compares the float32 input with ``t`` rounded to the *nearest* float32, so an input
    between ``t`` and that rounding takes the other branch (issue: a 20,000-event history trained a
    model whose ONNX scores differed by 0.023). For every float32 ``x``, ``x <= t`` holds exactly
    when ``x <= floor32(t)`` (the largest float32 not above ``t``), so replacing each numerical
    threshold by ``floor32(t)`` changes no prediction of the native model on float32 inputs and makes
    the float32 comparison exact. Also, for splits whose missing type is None LightGBM sends NaN
    where 0.0 goes, and ``default_left`` is unused; it is set to ``0 <= t`` so that converters
    that route NaN by ``default_left`` route it like LightGBM does. Splits with missing type Zero
    (``zero_as_missing=True``) or categorical splits are refused (`UnsupportedTree`).
    """
    import lightgbm as lgb

    out: list[str] = []
    lines = booster.model_to_string().split("\n")
    thresholds: list[float] | None = None
    for line in lines:
        if line.startswith("tree_sizes="):
            continue  # byte offsets of the trees: stale once thresholds are rewritten; optional
        if line.startswith("threshold="):
            thresholds = [float(v) for v in line[len("threshold="):].split()]
            out.append(line)  # rewritten when decision_type (the next field) is known
            continue
        if line.startswith("decision_type=") and thresholds is not None:
            types = [int(v) for v in line[len("decision_type="):].split()]
            if len(types) != len(thresholds):  # pragma: no cover - LightGBM format change
                raise UnsupportedTree("LightGBM model string: threshold and decision_type lengths differ")
            new_t, new_d = [], []
            for t, d in zip(thresholds, types, strict=True):
                if d & _CATEGORICAL:
                    raise UnsupportedTree("categorical splits are not supported by the float32 export")
                missing = (d >> 2) & 3
                if missing == _MISSING_ZERO:
                    raise UnsupportedTree("zero-as-missing splits are not supported; train with zero_as_missing=False")
                t = _float32_floor(t)
                if missing == _MISSING_NONE:
                    d = (d | _DEFAULT_LEFT) if 0.0 <= t else (d & ~_DEFAULT_LEFT)
                new_t.append(repr(t))
                new_d.append(str(d))
            out[-1] = "threshold=" + " ".join(new_t)
            out.append("decision_type=" + " ".join(new_d))
            thresholds = None
            continue
        out.append(line)
    return lgb.Booster(model_str="\n".join(out))


def inf_to_nan(X: np.ndarray) -> np.ndarray:
    """X with +-inf replaced by NaN (the baseline treats non-finite values as missing)."""
    X = np.asarray(X, dtype=np.float32)
    return np.where(np.isinf(X), np.float32(np.nan), X)


def _prepend_inf_to_nan(model: Any) -> Any:
    """Insert ``Where(IsInf(features), NaN, features)`` in front of every consumer of the input:
    the ONNX twin of the baseline's `inf_to_nan` step (skl2onnx cannot convert that step)."""
    from onnx import TensorProto, helper

    finite = "streamscore_features_finite"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == INPUT_NAME:
                node.input[i] = finite
    nan = helper.make_tensor("streamscore_nan", TensorProto.FLOAT, [], [float("nan")])
    model.graph.initializer.append(nan)
    front = [
        helper.make_node("IsInf", [INPUT_NAME], ["streamscore_is_inf"], name="streamscore_is_inf"),
        helper.make_node("Where", ["streamscore_is_inf", nan.name, INPUT_NAME], [finite], name="streamscore_finite"),
    ]
    nodes = front + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _json_safe(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            value = value.item()
        out[str(key)] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
    return out


def export_onnx(trained: TrainedModel, feature_names: Sequence[str] | None = None) -> bytes:
    """Serialize `trained` to ONNX bytes satisfying the contract in `models.contract`.

    `feature_names` (default: the training names) must equal the training names; they fix ``d``.
    """
    names = tuple(feature_names) if feature_names is not None else trained.feature_names
    if names != trained.feature_names:
        raise ValueError("feature_names differ from the names the model was trained with")
    d = len(names)
    if trained.kind == "lightgbm":
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat

        model = onnxmltools.convert_lightgbm(
            trained.estimator, initial_types=[(INPUT_NAME, MlFloat([None, d]))], zipmap=False,
            name="streamscore_lightgbm",
        )
    elif trained.kind == "logreg":
        import skl2onnx
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.linear_model import LogisticRegression

        from sklearn.pipeline import Pipeline

        steps = trained.estimator.steps
        if steps[0][0] != "finite":  # pragma: no cover - built by `train`
            raise ValueError("unexpected logreg pipeline layout")
        model = skl2onnx.convert_sklearn(
            Pipeline(steps[1:]), initial_types=[(INPUT_NAME, FloatTensorType([None, d]))],
            options={LogisticRegression: {"zipmap": False}}, target_opset={"": 15, "ai.onnx.ml": 3},
            name="streamscore_logreg",
        )
        model = _prepend_inf_to_nan(model)
    else:
        raise ValueError(f"unknown model kind {trained.kind!r}")
    model = normalise_outputs(model, "probabilities")
    model.producer_name = "streamscore"
    model.doc_string = (
        f"streamscore {trained.kind} model. Input {INPUT_NAME!r} float32 [N, {d}], output "
        f"{OUTPUT_NAME!r} float32 [N] = P(label=1)."
    )
    problems = contract_problems(model, d)
    if problems:  # pragma: no cover - would be a converter regression
        raise RuntimeError("exported graph violates the contract: " + "; ".join(problems))
    return model.SerializeToString()


def onnx_scores(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """``score`` of `onnx_bytes` on `X` with a plain CPU ONNX Runtime session (float32 [n])."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: _as_matrix(X)})[0]


def parity_max_diff(trained: TrainedModel, onnx_bytes: bytes, X: np.ndarray) -> tuple[float, int]:
    """(max |ONNX score - native predict_proba| over the rows of `X`, the row where it occurs).
    A NaN on only one side counts as an infinite difference."""
    X = _as_matrix(X, len(trained.feature_names))
    if X.shape[0] == 0:
        raise ValueError("parity check needs at least one row")
    native = trained.predict_proba(X)
    got = onnx_scores(onnx_bytes, X).astype(np.float64)
    if got.shape != native.shape:
        raise ParityError(f"ONNX score has shape {got.shape}, native {native.shape}")
    diff = np.where(np.isnan(got) != np.isnan(native), np.inf, np.nan_to_num(np.abs(got - native), nan=0.0))
    worst = int(np.argmax(diff))
    return float(diff[worst]), worst


def verify_onnx_parity(trained: TrainedModel, onnx_bytes: bytes, X: np.ndarray, atol: float = 1e-5) -> float:
    """Raise `ParityError` unless ONNX Runtime's score is within `atol` of native predict_proba on
    every row of `X`; return the max absolute difference."""
    max_diff, worst = parity_max_diff(trained, onnx_bytes, X)
    if max_diff > atol:
        X = _as_matrix(X)
        native = trained.predict_proba(X[worst:worst + 1])[0]
        got = onnx_scores(onnx_bytes, X[worst:worst + 1])[0]
        raise ParityError(
            f"{trained.kind}: ONNX Runtime differs from native predict_proba by up to {max_diff:.3g} "
            f"(> atol {atol:g}) at row {worst}: onnx {got:.8f} vs native {native:.8f}"
        )
    return max_diff


__all__ = [
    "KINDS", "LIGHTGBM_DEFAULTS", "LOGREG_DEFAULTS", "ParityError", "TrainedModel", "export_onnx",
    "inf_to_nan", "onnx_scores", "parity_max_diff", "train", "verify_onnx_parity",
]
