"""Model manifest: identity, compatibility contract, lineage, metrics and reference profile.

Stored twice per registered version:

1. ``manifest.json`` beside ``model.onnx`` — the authoritative copy; its ``sha256`` is the
   SHA-256 of the exact ``model.onnx`` bytes on disk.
2. Embedded in ``model.onnx`` under ONNX ``metadata_props["streamscore.manifest"]`` — the same
   JSON except ``sha256`` is null (a file cannot contain its own hash). It makes a copied
   model.onnx self-describing and lets the scorer detect an edited manifest.json.

Order of operations (done by `models.registry.Registry.register`): fill in name/version/parent,
``embed`` the manifest with ``sha256=None`` into the ONNX bytes, hash those final bytes, write
them as model.onnx and write manifest.json with the hash.

``schema_version`` is bumped on incompatible manifest changes; readers refuse newer schemas.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from models.contract import INPUT_NAME, OUTPUT_CONTRACT

SCHEMA_VERSION = 1
METADATA_KEY = "streamscore.manifest"


class ManifestError(ValueError):
    """A manifest is missing, malformed, or of an unsupported schema version."""


@dataclass
class TrainingInfo:
    """Lineage of the training data.

    Attributes:
        data_start_ms / data_end_ms: event-time range of the data (ms, inclusive).
        n_rows: rows passed to training (before censoring and the split).
        digest: `data_digest` of the feature matrix and labels as passed.
        label: the label definition, ``{"kind": "purchase_within", "horizon_ms": ...}``.
        split: how the rows were used (train/test rows, test start, gap, censored rows).
    """

    data_start_ms: int
    data_end_ms: int
    n_rows: int
    digest: str
    label: dict[str, Any]
    split: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """Everything needed to serve, audit and compare one model version. JSON via `to_json`.

    ``lineage`` says where a retrained version came from (``models.retraining``): parent version,
    trigger id, idempotency key, trigger reason, data window, feature-spec hash, history source.
    Empty for versions trained by hand; manifests written before it existed read as empty.
    """

    name: str
    feature_spec: str
    feature_names: list[str]
    model_kind: str
    training: TrainingInfo
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    sha256: str | None = None
    input_name: str = INPUT_NAME
    output: dict[str, Any] = field(default_factory=lambda: dict(OUTPUT_CONTRACT))
    created_at: str = field(default_factory=lambda: utc_now_iso())
    parent_version: int | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Indented JSON (NaN/inf become null)."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        schema = int(d.get("schema_version", SCHEMA_VERSION))
        if schema > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {schema} is newer than this streamscore understands ({SCHEMA_VERSION}); "
                "upgrade streamscore"
            )
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in d.items() if k in fields}
            kwargs["training"] = TrainingInfo(**d["training"])
            kwargs["feature_names"] = list(d["feature_names"])
            return cls(**kwargs)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed manifest: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ManifestError("manifest JSON is not an object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a ``Z`` suffix."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_digest(X: np.ndarray, y: np.ndarray) -> str:
    """``sha256:`` + SHA-256 over X's shape and float32 C-order bytes, then y as int8 bytes."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int8)
    h = hashlib.sha256()
    h.update(f"X float32 {X.shape};y int8 {y.shape};".encode())
    h.update(X.tobytes())
    h.update(y.tobytes())
    return "sha256:" + h.hexdigest()


def embed(onnx_bytes: bytes, manifest: Manifest) -> bytes:
    """`onnx_bytes` with `manifest` (``sha256`` forced to null) in ``metadata_props``; any earlier
    embedded manifest is replaced. Other metadata is kept."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)
    model.metadata_props.add(key=METADATA_KEY, value=manifest.replace(sha256=None).to_json())
    return model.SerializeToString()


def read_embedded(onnx_bytes: bytes) -> Manifest:
    """The manifest embedded in `onnx_bytes`; `ManifestError` if there is none."""
    import onnx

    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ManifestError(f"not an ONNX model: {exc}") from None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return Manifest.from_json(prop.value)
    raise ManifestError(f"ONNX model has no {METADATA_KEY!r} metadata (not exported by a streamscore registry)")


def manifest_differences(a: Manifest, b: Manifest, ignore: Sequence[str] = ("sha256",)) -> list[str]:
    """Top-level manifest fields whose values differ between `a` and `b` (JSON-normalised)."""
    da, db = orjson.loads(a.to_json()), orjson.loads(b.to_json())
    return [k for k in da if k not in ignore and da.get(k) != db.get(k)]
