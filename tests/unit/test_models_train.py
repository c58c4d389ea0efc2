"""Training, ONNX export and the output contract, ONNX Runtime parity with native models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.contract import INPUT_NAME, OUTPUT_NAME, contract_problems
from models.testing import synthetic_dataset
from models.train import ParityError, TrainedModel, export_onnx, onnx_scores, train, verify_onnx_parity


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    return synthetic_dataset(n=3_000, d=8, seed=1)


@pytest.fixture(scope="module")
def models(data) -> dict[str, tuple[TrainedModel, bytes]]:  # type: ignore[no-untyped-def]
    X, y, _, names = data
    out = {}
    for kind in ("lightgbm", "logreg"):
        m = train(X, y, names, kind=kind, seed=0)  # type: ignore[arg-type]
        out[kind] = (m, export_onnx(m, names))
    return out


@pytest.mark.parametrize("kind", ["lightgbm", "logreg"])
def test_onnx_matches_native_predict_proba(kind: str, data, models) -> None:  # type: ignore[no-untyped-def]
    X, _, _, _ = data
    trained, blob = models[kind]
    assert np.isnan(X).any(), "the data must exercise missing values"
    max_diff = verify_onnx_parity(trained, blob, X, atol=1e-5)
    assert max_diff < 1e-5
    got = onnx_scores(blob, X)
    assert got.dtype == np.float32 and got.shape == (len(X),)
    assert float(np.max(np.abs(got - trained.predict_proba(X)))) == pytest.approx(max_diff)
    # rows never seen in training, including all-NaN and extreme values
    rng = np.random.default_rng(5)
    extra = np.vstack([np.full((1, X.shape[1]), np.nan), rng.normal(0, 50, size=(200, X.shape[1]))]).astype(np.float32)
    assert verify_onnx_parity(trained, blob, extra) < 1e-5


@pytest.mark.parametrize("kind", ["lightgbm", "logreg"])
def test_exported_graph_satisfies_contract(kind: str, data, models) -> None:  # type: ignore[no-untyped-def]
    _, _, _, names = data
    model = onnx.load_from_string(models[kind][1])
    assert contract_problems(model, len(names)) == []
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    assert "ZipMap" not in {n.op_type for n in model.graph.node}
    sess = ort.InferenceSession(models[kind][1], providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.type == "tensor(float)" and inp.shape[1] == len(names) and not isinstance(inp.shape[0], int)
    assert out.name == "score" and out.type == "tensor(float)" and len(out.shape) == 1
    probs = sess.run(None, {INPUT_NAME: np.zeros((3, len(names)), np.float32)})[0]
    assert probs.shape == (3,) and np.all((probs >= 0) & (probs <= 1))


def test_lightgbm_training_is_deterministic(data, models) -> None:  # type: ignore[no-untyped-def]
    X, y, _, names = data
    again = train(X, y, names, kind="lightgbm", seed=0)
    assert np.array_equal(again.predict_proba(X), models["lightgbm"][0].predict_proba(X))
    assert again.params["deterministic"] is True and again.params["force_row_wise"] is True
    assert again.params["n_estimators"] == 150 and again.params["random_state"] == 0


def test_lightgbm_parity_with_nan_in_a_column_that_had_none_in_training() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3_000, 4)).astype(np.float32)
    X[:, 1] = np.round(np.abs(X[:, 1]) * 3)  # a count with zeros, never NaN in training
    y = ((X[:, 0] + 0.5 * X[:, 1] + rng.normal(size=3_000)) > 1.5).astype(int)
    m = train(X, y, ["a", "b", "c", "d"], params={"n_estimators": 40})
    live = X[:300].copy()
    live[:, 0] = np.nan
    live[:150, 1] = np.nan  # LightGBM maps NaN to 0 for a feature without missing values
    assert verify_onnx_parity(m, export_onnx(m), live) < 1e-5


@pytest.mark.parametrize("kind", ["lightgbm", "logreg"])
def test_infinities_train_and_keep_parity(kind: str) -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2_000, 4)).astype(np.float32)
    X[:40, 2], X[40:80, 2], X[80:120, 3] = np.inf, -np.inf, np.nan  # float32 overflow happens in features
    y = ((X[:, 0] + rng.normal(size=2_000)) > 1.0).astype(int)
    m = train(X, y, list("abcd"), kind=kind, params={"n_estimators": 30} if kind == "lightgbm" else None)  # type: ignore[arg-type]
    live = X[:300].copy()
    live[150:200, 0], live[200:250, 1] = np.inf, -np.inf
    assert verify_onnx_parity(m, export_onnx(m), live) < 1e-5
    assert np.isfinite(m.predict_proba(live)).all()


def test_parity_failure_reports_max_diff(data, models) -> None:  # type: ignore[no-untyped-def]
    X, _, _, _ = data
    with pytest.raises(ParityError, match=r"differs from native predict_proba by up to [0-9.e+-]+ \(> atol"):
        verify_onnx_parity(models["lightgbm"][0], models["logreg"][1], X)


def test_params_override_and_input_validation(data) -> None:  # type: ignore[no-untyped-def]
    X, y, _, names = data
    m = train(X[:500], y[:500], names, kind="lightgbm", params={"n_estimators": 7})
    assert m.estimator.n_estimators == 7 and m.params["n_estimators"] == 7
    with pytest.raises(ValueError, match="single class"):
        train(X[:50], np.zeros(50), names)
    with pytest.raises(ValueError, match="columns"):
        train(X[:, :3], y, names)
    with pytest.raises(ValueError, match="kind"):
        train(X, y, names, kind="xgboost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="feature_names differ"):
        export_onnx(m, list(reversed(names)))
