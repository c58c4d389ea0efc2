"""What both peers share: their JSON config, the model input row, and the score record.

Kept free of streamscore imports (the Quix peer runs in its own virtualenv, see
benchmarks/README.md): only numpy, onnxruntime and orjson.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

EVENT_COLUMNS = {  # the event itself: CurrentValue and OneHot columns of the default spec
    "price": lambda e: e["price"] if e.get("price") is not None else math.nan,
    **{f"event_type={c}": (lambda c: lambda e: float(e["event_type"] == c))(c)
       for c in ("product_view", "add_to_cart", "checkout")},
    **{f"device={c}": (lambda c: lambda e: float(e["device"] == c))(c) for c in ("mobile", "desktop", "tablet")},
    **{f"referrer={c}": (lambda c: lambda e: float(e["referrer"] == c))(c)
       for c in ("search", "social", "email", "ads")},
}


@dataclass(frozen=True)
class PeerConfig:
    """One peer run. `columns`: the model's input columns in order; a peer fills those it can
    express and leaves the others NaN (missing values, which the LightGBM model handles)."""

    bootstrap: str
    app_id: str
    input_topic: str
    scores_topic: str
    partitions: int
    model_path: str
    columns: list[str]
    state_dir: str
    guarantee: str = "at_least_once"
    commit_interval_s: float = 1.0  # Quix: how often it commits (a transaction, under exactly-once)

    @classmethod
    def load(cls, path: str) -> PeerConfig:
        with open(path, "rb") as f:
            return cls(**orjson.loads(f.read()))


class Model:
    """The registry's ONNX model on one ONNX Runtime thread (as the engine runs it)."""

    def __init__(self, path: str, columns: list[str]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.position = {c: i for i, c in enumerate(columns)}
        self.width = len(columns)

    def row(self, features: dict[str, float]) -> np.ndarray:
        """A (1, width) float32 row: the given features at their columns, NaN elsewhere."""
        x = np.full((1, self.width), np.nan, dtype=np.float32)
        for name, value in features.items():
            x[0, self.position[name]] = value
        return x

    def score(self, rows: np.ndarray) -> np.ndarray:
        """P(y=1) per row: the model contract's single ``score`` output (models/contract.py)."""
        return self.session.run(["score"], {self.input: rows})[0]


def event_features(event: dict[str, Any]) -> dict[str, float]:
    return {name: fn(event) for name, fn in EVENT_COLUMNS.items()}


def score_record(event: dict[str, Any], score: float, peer: str) -> bytes:
    """The score record (same fields as streamscore's that the harness reads)."""
    return orjson.dumps({"event_id": event["event_id"], "entity": event["user_id"], "score": float(score),
                         "event_ts": event["ts"], "scored_ts": int(time.time() * 1000), "peer": peer})
