"""Throughput and latency of the scoring stage alone (no Kafka, no RocksDB, no feature code).

    python -m benchmarks.bench_scoring --json out.json [--repeats 5] [--min-time 0.25]

Trains two models on synthetic data with the engine's input width (the default clickstream spec,
38 columns; `models.testing.synthetic_dataset`, NaNs included): LightGBM with the training
pipeline's defaults (150 trees, 31 leaves: what `streamscore train` ships) and the
logistic-regression baseline. Both are registered in a temporary registry with the running spec
hash and loaded exactly as the engine loads them (`engine.serving.load_serving_model`: sha256,
spec, names and contract verified; one intra-op thread).

Reported per model and batch size (1, 16, 64, 256, 1024), medians over `--repeats`:

- rows/s per core: ``ServingModel.predict`` on one thread (ONNX Runtime ``intra_op_num_threads=1``);
- p50 / p99 latency of one call (µs), pooled over all repeats;
- wrapper / plain: time per call of ``ServingModel.predict`` over a bare ``InferenceSession.run``
  on the same session and batch (interleaved, paired per repeat; 1.0 = no overhead);
- verified load time of each model (what a hot swap stalls the loop for).

And for the router (`ModelRouter.score`, the per-partition call of the engine loop) with
LightGBM models: p50 / p99 per micro-batch for the champion alone, and for champion + challenger
(shadow) + canary at 10 %, all three LightGBM of the same size (up to three ONNX calls; the
canary hash of each entity included).

Wrapper and plain calls are timed alternately, call by call, so both see the same machine state;
p99 on a shared host mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

BATCH_SIZES = (1, 16, 64, 256, 1024)
KINDS = ("lightgbm", "logreg")
NAME = "purchase"


def _build_registry(root: Path, n_train: int, seed: int) -> dict[str, int]:
    """Register a LightGBM and a logreg model (engine spec hash + names); kind -> version."""
    from features.clickstream import clickstream_spec
    from models.registry import Registry
    from models.testing import make_manifest, small_model_bytes, synthetic_dataset

    spec = clickstream_spec()
    X, y, _, _ = synthetic_dataset(n=n_train, d=spec.width, seed=seed)
    reg = Registry(root)
    versions = {}
    for kind in KINDS:
        t0 = time.perf_counter()
        onnx_bytes = small_model_bytes(X, y, spec.names, kind=kind)
        versions[kind] = reg.register(NAME, onnx_bytes, make_manifest(spec.names, feature_spec=spec.hash,
                                                                      model_kind=kind), reason="benchmark")
        print(f"  trained {kind} on {n_train:,} x {spec.width} in {time.perf_counter() - t0:.1f} s "
              f"({len(onnx_bytes):,} bytes ONNX)", file=sys.stderr)
    reg.promote(NAME, versions["lightgbm"], reason="benchmark")
    # Challenger and canary: LightGBM models of the same size (copies registered as new versions).
    ref = reg.resolve(NAME, versions["lightgbm"])
    for alias in ("challenger", "canary"):
        copy = reg.register(NAME, ref.model_path.read_bytes(), ref.manifest.replace(version=None, sha256=None),
                            reason="benchmark")
        reg.promote(NAME, copy, alias=alias, reason="benchmark")
    return versions


def _time_calls(fn: Callable[[], Any], min_time: float, min_calls: int = 20) -> list[int]:
    """Per-call wall times (ns) of `fn` for at least `min_time` seconds and `min_calls` calls."""
    clock = time.perf_counter_ns
    out: list[int] = []
    deadline = clock() + int(min_time * 1e9)
    while len(out) < min_calls or clock() < deadline:
        t0 = clock()
        fn()
        out.append(clock() - t0)
    return out


def _time_pairs(a: Callable[[], Any], b: Callable[[], Any], min_time: float, min_pairs: int = 30
                ) -> tuple[list[int], list[int]]:
    """Per-call times (ns) of `a` and `b` called alternately (a b b a a b ...): both see the same
    machine state, so their ratio holds up on a busy host."""
    clock = time.perf_counter_ns
    ta: list[int] = []
    tb: list[int] = []
    deadline = clock() + int(min_time * 1e9)
    i = 0
    while len(ta) < min_pairs or clock() < deadline:
        first, second, tf, ts = (a, b, ta, tb) if i % 2 == 0 else (b, a, tb, ta)
        t0 = clock()
        first()
        t1 = clock()
        second()
        t2 = clock()
        tf.append(t1 - t0)
        ts.append(t2 - t1)
        i += 1
    return ta, tb


def _pct(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, dtype=np.float64), q)) / 1000.0


def bench_model(model: Any, pool: np.ndarray, repeats: int, min_time: float) -> dict[str, Any]:
    """Per batch size: rows/s per core, p50/p99 µs, plain session p50, wrapper/plain ratio."""
    session, feeds_name, outputs = model._session, model._feeds_name, model._outputs  # noqa: SLF001
    out: dict[str, Any] = {}
    for batch in BATCH_SIZES:
        rows = np.ascontiguousarray(pool[:batch], dtype=np.float32)
        assert np.array_equal(model.predict(rows), session.run(outputs, {feeds_name: rows})[0])

        def wrapper() -> None:
            model.predict(rows)

        def plain() -> None:
            session.run(outputs, {feeds_name: rows})

        for _ in range(30):  # warm up both paths (allocator, caches)
            wrapper()
            plain()
        throughput, ratios, wrapped_all, plain_all = [], [], [], []
        for _ in range(repeats):
            w = _time_calls(wrapper, min_time / 2)  # throughput: back-to-back calls, as the loop makes
            throughput.append(batch * len(w) / (sum(w) / 1e9))
            wp, pp = _time_pairs(wrapper, plain, min_time / 2)
            ratios.append(statistics.median(wp) / statistics.median(pp))
            wrapped_all += w
            plain_all += pp
        out[str(batch)] = {
            "rows_per_s": round(statistics.median(throughput), 1),
            "p50_us": round(_pct(wrapped_all, 50), 2),
            "p99_us": round(_pct(wrapped_all, 99), 2),
            "plain_p50_us": round(_pct(plain_all, 50), 2),
            "wrapper_ratio": round(statistics.median(ratios), 3),
            "calls": len(wrapped_all),
        }
    return out


def bench_router(cfg: Any, pool: np.ndarray, repeats: int, min_time: float, n_users: int = 5_000
                 ) -> dict[str, Any]:
    """`ModelRouter.score` per micro-batch for champion-only and champion+shadow+canary."""
    from engine.serving import ModelRouter

    rng = np.random.default_rng(11)
    setups = {
        "champion": cfg.with_overrides(shadow=False, canary_share=0.0),
        "champion+shadow+canary10%": cfg.with_overrides(shadow=True, canary_share=0.1),
    }
    out: dict[str, Any] = {}
    for label, c in setups.items():
        router = ModelRouter(c)
        res: dict[str, Any] = {"serving": router.describe()}
        for batch in BATCH_SIZES:
            rows = np.ascontiguousarray(pool[:batch], dtype=np.float32)
            # Zipf-ish entity draw (few heavy users), like the generator: bucket cache hits are realistic.
            ids = np.minimum(rng.zipf(1.3, size=(64, batch)), n_users)
            batches = [[f"user-{i:06d}" for i in row] for row in ids]
            k = [0]

            def call() -> None:
                k[0] = (k[0] + 1) % len(batches)
                router.score(batches[k[0]], rows)

            for _ in range(20):
                call()
            samples: list[int] = []
            for _ in range(repeats):
                samples += _time_calls(call, min_time / 2)
            res[str(batch)] = {"p50_us": round(_pct(samples, 50), 2), "p99_us": round(_pct(samples, 99), 2),
                               "calls": len(samples)}
        out[label] = res
    return out


def bench_load(cfg: Any, versions: dict[str, int], repeats: int) -> dict[str, Any]:
    """Verified load (resolve + sha256 + checks + session) in ms, median and max over repeats."""
    from engine.serving import load_serving_model

    out = {}
    for kind, version in versions.items():
        load_serving_model(cfg, str(version))  # first load pays imports / allocator warm-up
        times = [load_serving_model(cfg, str(version)).load_ms for _ in range(max(repeats, 5))]
        out[kind] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="Write the results here.")
    ap.add_argument("--repeats", type=int, default=5, help="Repeats per measurement (medians reported).")
    ap.add_argument("--min-time", type=float, default=0.25, help="Seconds per repeat and measurement.")
    ap.add_argument("--train-rows", type=int, default=20_000, help="Synthetic training rows per model.")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from engine.config import EngineConfig
    from engine.serving import load_serving_model
    from features.clickstream import clickstream_spec
    from models.testing import synthetic_dataset

    spec = clickstream_spec()
    pool, _, _, _ = synthetic_dataset(n=max(BATCH_SIZES), d=spec.width, seed=99)  # unseen rows
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "onnxruntime": ort.__version__},
        "settings": {"repeats": args.repeats, "min_time_s": args.min_time, "batch_sizes": list(BATCH_SIZES),
                     "features": spec.width, "onnx_threads": 1, "train_rows": args.train_rows},
    }
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        print("building models ...", file=sys.stderr)
        versions = _build_registry(Path(tmp) / "registry", args.train_rows, seed=5)
        cfg = EngineConfig(registry=Path(tmp) / "registry", model_name=NAME, onnx_threads=1, model_poll_ms=3_600_000)
        result["load_ms"] = bench_load(cfg, versions, args.repeats)
        result["models"] = {}
        for kind in KINDS:
            print(f"timing {kind} ...", file=sys.stderr)
            result["models"][kind] = bench_model(load_serving_model(cfg, str(versions[kind])), pool, args.repeats,
                                                 args.min_time)
        print("timing the router ...", file=sys.stderr)
        result["router_lightgbm"] = bench_router(cfg, pool, args.repeats, args.min_time)

    print(f"\nscoring, one thread (rows/s = per core); medians of {args.repeats} repeats; "
          f"{spec.width} features; onnxruntime {ort.__version__}")
    print(f"{'model':<9} {'batch':>5} {'rows/s/core':>12} {'p50 µs':>9} {'p99 µs':>9} {'plain p50':>10} "
          f"{'wrapper/plain':>13}")
    for kind, per in result["models"].items():
        for batch, m in per.items():
            print(f"{kind:<9} {batch:>5} {m['rows_per_s']:>12,.0f} {m['p50_us']:>9.1f} {m['p99_us']:>9.1f} "
                  f"{m['plain_p50_us']:>10.1f} {m['wrapper_ratio']:>13.3f}")
    print("\nverified load (hot swap stall): " + ", ".join(
        f"{k} {v['median_ms']} ms (max {v['max_ms']})" for k, v in result["load_ms"].items()))
    print("\nModelRouter.score per micro-batch, LightGBM champion (µs p50 / p99):")
    for label, res in result["router_lightgbm"].items():
        cells = "  ".join(f"{b}: {res[str(b)]['p50_us']:.0f}/{res[str(b)]['p99_us']:.0f}" for b in BATCH_SIZES)
        print(f"  {label:<27} {cells}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
