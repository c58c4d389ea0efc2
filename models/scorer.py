"""Verified ONNX Runtime scorer for a registered model version.

`OnnxScorer.load` refuses (raises `IncompatibleModel`) unless every check passes:

1. the directory holds model.onnx and manifest.json;
2. SHA-256 of model.onnx equals ``manifest.sha256`` (not corrupted or swapped after registration);
3. ``manifest.feature_spec`` equals the spec hash the caller runs;
4. ``manifest.feature_names`` equal the caller's names, in the same order;
5. the graph has the contract's single float32 input ``[None, d]`` (named ``manifest.input_name``)
   and the ``score`` output (see `models.contract`);
6. the manifest embedded in model.onnx equals manifest.json apart from ``sha256`` (manifest.json
   not edited after registration).

The session is tuned for small latency-bound batches on a shared CPU: ``intra_op_num_threads =
threads``, ``inter_op_num_threads = 1``, sequential execution, all graph optimisations,
CPUExecutionProvider only. `predict` is exactly one ``session.run`` per call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import OUTPUT_NAME, contract_problems
from models.manifest import Manifest, ManifestError, manifest_differences, read_embedded, sha256_hex

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class IncompatibleModel(RuntimeError):
    """The model must not be served; the message names the mismatch and what to do about it."""


def _names_problem(model_names: Sequence[str], expected: Sequence[str]) -> str | None:
    model_names, expected = list(model_names), list(expected)
    if model_names == expected:
        return None
    missing = [n for n in model_names if n not in expected]
    extra = [n for n in expected if n not in model_names]
    if not missing and not extra and len(model_names) == len(expected):
        i = next(i for i, (a, b) in enumerate(zip(model_names, expected)) if a != b)
        return (f"feature order differs: same {len(expected)} features, but at column {i} the model expects "
                f"{model_names[i]!r} and the engine provides {expected[i]!r}")
    parts = [f"model has {len(model_names)} features, engine provides {len(expected)}"]
    if missing:
        parts.append(f"model needs features the engine does not compute: {missing}")
    if extra:
        parts.append(f"engine computes features the model was not trained on: {extra}")
    return "feature names differ: " + "; ".join(parts)


class OnnxScorer:
    """A loaded, verified model. Attributes: name, version, feature_spec, feature_names, manifest, path."""

    def __init__(self, session: Any, manifest: Manifest, path: Path) -> None:
        self._session = session
        self.manifest = manifest
        self.path = path
        self.name: str = manifest.name
        self.version: int = int(manifest.version) if manifest.version is not None else 0
        self.feature_spec: str = manifest.feature_spec
        self.feature_names: tuple[str, ...] = tuple(manifest.feature_names)
        self._input = manifest.input_name
        self._outputs = [OUTPUT_NAME]
        self._width = len(self.feature_names)

    @classmethod
    def load(
        cls,
        model_dir_or_ref: str | os.PathLike[str] | Any,
        expected_feature_spec: str,
        expected_feature_names: Sequence[str],
        threads: int = 1,
    ) -> OnnxScorer:
        """Load and verify a version directory (or a `models.registry.ModelRef`); see module doc."""
        path = Path(getattr(model_dir_or_ref, "path", model_dir_or_ref))
        model_path, manifest_path = path / MODEL_FILE, path / MANIFEST_FILE
        for p in (model_path, manifest_path):
            if not p.is_file():
                raise IncompatibleModel(f"{p} is missing: {path} is not a complete registry version; "
                                        "resolve the model through the registry or re-register it")
        try:
            manifest = Manifest.from_json(manifest_path.read_bytes())
        except ManifestError as exc:
            raise IncompatibleModel(f"{manifest_path}: {exc}; re-register the model") from None
        label = f"model {manifest.name!r} v{manifest.version}"
        data = model_path.read_bytes()
        digest = sha256_hex(data)
        if digest != manifest.sha256:
            raise IncompatibleModel(
                f"{label}: sha256 mismatch: model.onnx hashes to {digest} but manifest.json records "
                f"{manifest.sha256}; the file was modified or corrupted after registration. Do not serve it: "
                "restore the file from the registry's storage or register the model again."
            )
        if manifest.feature_spec != expected_feature_spec:
            raise IncompatibleModel(
                f"{label}: feature_spec mismatch: the model was trained on feature spec {manifest.feature_spec} "
                f"but the engine runs {expected_feature_spec}. Retrain on the running spec (`streamscore train`) "
                "or run the engine with the feature spec the model was trained on."
            )
        problem = _names_problem(manifest.feature_names, expected_feature_names)
        if problem:
            raise IncompatibleModel(f"{label}: {problem}. Retrain on the running feature spec or fix the spec.")

        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:  # noqa: BLE001
            raise IncompatibleModel(f"{label}: model.onnx is not a valid ONNX model: {exc}") from None
        problems = contract_problems(proto, len(expected_feature_names), manifest.input_name)
        if problems:
            raise IncompatibleModel(f"{label}: graph does not match the input/output contract: "
                                    + "; ".join(problems) + ". Re-export the model with models.train.export_onnx.")
        try:
            embedded = read_embedded(data)
        except ManifestError as exc:
            raise IncompatibleModel(f"{label}: {exc}; register the model through the registry") from None
        changed = manifest_differences(embedded, manifest)
        if changed:
            raise IncompatibleModel(
                f"{label}: manifest.json differs from the manifest embedded in model.onnx in {changed}; "
                "manifest.json was edited after registration. Restore it or register the model again."
            )
        del proto

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        return cls(session, manifest, path)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(y=1) for each row of float32 `X` [n, d] (columns in `feature_names` order): float32 [n].
        One ONNX Runtime call."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self._width:
            raise ValueError(f"expected a float32 [n, {self._width}] matrix, got shape {X.shape}")
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return self._session.run(self._outputs, {self._input: X})[0]

    def __repr__(self) -> str:
        return f"OnnxScorer({self.name!r} v{self.version}, {self.feature_spec}, {self._width} features)"
