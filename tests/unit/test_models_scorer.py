"""OnnxScorer: verification on load (each refusal names its problem) and native-equal scores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from models.manifest import Manifest
from models.registry import Registry
from models.scorer import IncompatibleModel, OnnxScorer
from models.testing import make_manifest, synthetic_dataset
from models.train import TrainedModel, export_onnx, train

SPEC = "fs-test"


@pytest.fixture(scope="module")
def trained() -> tuple[TrainedModel, np.ndarray, list[str]]:
    X, y, _, names = synthetic_dataset(n=2_000, d=6, seed=4)
    return train(X, y, names, kind="lightgbm", params={"n_estimators": 60}), X, names


@pytest.fixture()
def version_dir(tmp_path: Path, trained) -> Path:  # type: ignore[no-untyped-def]
    model, _, names = trained
    reg = Registry(tmp_path / "reg")
    v = reg.register("purchase", export_onnx(model), make_manifest(names, feature_spec=SPEC))
    reg.promote("purchase", v, reason="test")
    return reg.resolve("purchase", "champion").path


def test_load_and_predict_matches_native(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    model, X, names = trained
    scorer = OnnxScorer.load(version_dir, SPEC, names, threads=1)
    assert (scorer.name, scorer.version, scorer.feature_spec) == ("purchase", 1, SPEC)
    assert scorer.feature_names == tuple(names) and isinstance(scorer.manifest, Manifest)
    got = scorer.predict(X)
    assert got.dtype == np.float32 and got.shape == (len(X),)
    assert float(np.max(np.abs(got - model.predict_proba(X)))) < 1e-5
    assert scorer.predict(X[:0]).shape == (0,)
    assert np.array_equal(scorer.predict(X[:7].astype(np.float64)), got[:7])  # converted to float32
    with pytest.raises(ValueError, match=r"\[n, 6\]"):
        scorer.predict(X[:, :5])


def test_load_accepts_a_model_ref(tmp_path: Path, version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, names = trained
    ref = Registry(tmp_path / "reg").resolve("purchase", "champion")
    assert OnnxScorer.load(ref, SPEC, names).version == ref.version


def test_predict_is_one_session_run(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, X, names = trained
    scorer = OnnxScorer.load(version_dir, SPEC, names)
    calls = []
    real = scorer._session

    class Spy:
        def run(self, *a, **kw):  # type: ignore[no-untyped-def]
            calls.append(1)
            return real.run(*a, **kw)

    scorer._session = Spy()
    scorer.predict(X[:256])
    assert calls == [1]


def test_session_options_are_tuned(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    _, _, names = trained
    scorer = OnnxScorer.load(version_dir, SPEC, names, threads=2)
    opts = scorer._session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert scorer._session.get_providers() == ["CPUExecutionProvider"]


def test_refuses_tampered_model_bytes(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, names = trained
    path = version_dir / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IncompatibleModel, match="sha256 mismatch: model.onnx hashes to .* but manifest.json records"):
        OnnxScorer.load(version_dir, SPEC, names)


def test_refuses_other_feature_spec(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, names = trained
    with pytest.raises(IncompatibleModel, match="feature_spec mismatch: .*trained on feature spec fs-test but the "
                                                "engine runs fs-other. Retrain"):
        OnnxScorer.load(version_dir, "fs-other", names)


def test_refuses_other_input_order(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, names = trained
    swapped = [names[1], names[0], *names[2:]]
    with pytest.raises(IncompatibleModel, match=f"feature order differs: .*at column 0 the model expects "
                                                f"'{names[0]}' and the engine provides '{names[1]}'"):
        OnnxScorer.load(version_dir, SPEC, swapped)


def test_refuses_different_feature_set(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, names = trained
    with pytest.raises(IncompatibleModel, match=r"model has 6 features, engine provides 7.*not trained on: \['new'\]"):
        OnnxScorer.load(version_dir, SPEC, [*names, "new"])
    with pytest.raises(IncompatibleModel, match=f"engine does not compute: \\['{names[-1]}'\\]"):
        OnnxScorer.load(version_dir, SPEC, names[:-1])


def test_refuses_edited_manifest_json(version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, names = trained
    path = version_dir / "manifest.json"
    m = Manifest.from_json(path.read_bytes())
    path.write_text(m.replace(metrics={"test": {"auc": 0.99}}).to_json())
    with pytest.raises(IncompatibleModel, match=r"manifest.json differs from the manifest embedded .*\['metrics'\]"):
        OnnxScorer.load(version_dir, SPEC, names)


def test_refuses_incomplete_directory(tmp_path: Path, version_dir: Path, trained) -> None:  # type: ignore[no-untyped-def]
    _, _, names = trained
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(version_dir / "manifest.json", partial)
    with pytest.raises(IncompatibleModel, match="model.onnx is missing"):
        OnnxScorer.load(partial, SPEC, names)
