"""Manifest JSON round trip, embedding into ONNX metadata, data digest."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from models.manifest import (
    METADATA_KEY,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    data_digest,
    embed,
    manifest_differences,
    read_embedded,
)
from models.profile import build_profile
from models.testing import make_manifest, small_model_bytes, synthetic_dataset


@pytest.fixture(scope="module")
def setup() -> tuple[bytes, Manifest]:
    X, y, _, names = synthetic_dataset(n=600, d=5, seed=2)
    X[:, 4] = np.nan  # an all-NaN column: profile stats become null
    manifest = make_manifest(names, X=X, y=y, profile=build_profile(X, names, scores=np.linspace(0, 1, len(X))),
                             version=3, parent_version=2, sha256="ab" * 32)
    return small_model_bytes(X, y, names), manifest


def test_json_round_trip(setup) -> None:  # type: ignore[no-untyped-def]
    _, m = setup
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.schema_version == SCHEMA_VERSION and again.created_at.endswith("Z")
    assert again.output["name"] == "score" and again.input_name == "features"
    assert again.training.label == {"kind": "purchase_within", "horizon_ms": 3_600_000}
    assert again.profile["features"]["f4_noise"]["mean"] is None


def test_embed_and_read_back(setup) -> None:  # type: ignore[no-untyped-def]
    blob, m = setup
    embedded = embed(blob, m)
    back = read_embedded(embedded)
    assert back.sha256 is None  # the embedded copy never carries the file's own hash
    assert back == m.replace(sha256=None)
    assert manifest_differences(back, m) == []
    # re-embedding replaces rather than duplicates, and keeps other metadata
    model = onnx.load_from_string(embedded)
    model.metadata_props.add(key="other", value="kept")
    twice = embed(embed(model.SerializeToString(), m.replace(version=4)), m.replace(version=5))
    props = [p.key for p in onnx.load_from_string(twice).metadata_props]
    assert props.count(METADATA_KEY) == 1 and "other" in props
    assert read_embedded(twice).version == 5


def test_read_embedded_errors(setup) -> None:  # type: ignore[no-untyped-def]
    blob, _ = setup
    with pytest.raises(ManifestError, match="no 'streamscore.manifest'"):
        read_embedded(blob)
    with pytest.raises(ManifestError, match="not an ONNX model"):
        read_embedded(b"\x00garbage\xff" * 10)


def test_schema_and_malformed_manifests(setup) -> None:  # type: ignore[no-untyped-def]
    _, m = setup
    d = m.to_dict()
    with pytest.raises(ManifestError, match="newer"):
        Manifest.from_dict({**d, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ManifestError, match="malformed"):
        Manifest.from_dict({k: v for k, v in d.items() if k != "training"})
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json("{nope")
    assert Manifest.from_dict({**d, "future_field": 1}) == m  # unknown keys are ignored


def test_manifest_differences_names_fields(setup) -> None:  # type: ignore[no-untyped-def]
    _, m = setup
    assert manifest_differences(m, m.replace(feature_spec="fs-other", params={"x": 1})) == ["feature_spec", "params"]


def test_data_digest_is_content_addressed() -> None:
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    d = data_digest(X, y)
    assert d.startswith("sha256:") and d == data_digest(X.astype(np.float64), y.astype(np.int64))
    assert d != data_digest(X, y[::-1]) and d != data_digest(X.reshape(3, 4), y)
    X2 = X.copy()
    X2[0, 0] = np.nextafter(np.float32(0), np.float32(1))
    assert d != data_digest(X2, y)
