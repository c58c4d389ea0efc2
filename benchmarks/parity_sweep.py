"""Training parity sweep: `train_from_log` over many generated histories (seeds x sizes x partitions).

Every run must pass its own ONNX parity check (ONNX Runtime vs native predict_proba within 1e-5 on
2,000 rows) and register a model; the sweep counts failures and records the largest parity
difference, which kind was selected and its holdout AUC. A regression guard for issue 12.1 that
is too slow for the test suite (each run trains LightGBM and the baseline).

    python -m benchmarks.parity_sweep --seeds 10 --sizes 5000,20000,60000 --partitions 1,4 \
        --json benchmarks/results/parity_sweep.json
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from engine.loadgen import write_jsonl
from features.clickstream import clickstream_spec
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from models.pipeline import train_from_log
from models.train import ParityError


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run_one(seed: int, size: int, partitions: int, workdir: Path) -> dict[str, Any]:
    history = workdir / f"h-{seed}-{size}.jsonl"
    if not history.exists():
        write_jsonl(history, ClickstreamGenerator(GeneratorConfig(n_events=size, seed=seed, jitter_ms=2000.0)).events())
    t0 = time.perf_counter()
    row: dict[str, Any] = {"seed": seed, "events": size, "partitions": partitions}
    try:
        result = train_from_log(history, clickstream_spec(), partitions, workdir / f"reg-{seed}-{size}-{partitions}",
                                "purchase", 3_600_000, log=None)
    except ParityError as exc:
        return {**row, "ok": False, "error": str(exc), "seconds": round(time.perf_counter() - t0, 2)}
    m = result.manifest.metrics
    return {**row, "ok": True, "kind": result.manifest.model_kind,
            "parity_lightgbm": m["parity_max_abs_diff"]["lightgbm"], "parity_logreg": m["parity_max_abs_diff"]["logreg"],
            "auc": m["test"]["auc"], "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    ap.add_argument("--sizes", default="5000,20000,60000", help="history sizes (events), comma-separated")
    ap.add_argument("--partitions", default="1,4", help="partition counts, comma-separated")
    ap.add_argument("--json", type=Path, default=None, help="write the rows and the summary here")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    combos = [(s, n, p) for n in _ints(args.sizes) for s in range(args.seeds) for p in _ints(args.partitions)]
    with tempfile.TemporaryDirectory(prefix="parity-sweep-") as tmp:
        for i, (seed, size, parts) in enumerate(combos, 1):
            row = run_one(seed, size, parts, Path(tmp))
            rows.append(row)
            status = (f"ok  {row['kind']:<8} lightgbm parity {row['parity_lightgbm']:.1e}  AUC {row['auc']:.4f}"
                      if row["ok"] else f"FAIL {row['error']}")
            print(f"[{i}/{len(combos)}] seed {seed:>2} events {size:>6} partitions {parts}: {status} "
                  f"({row['seconds']:.1f} s)", flush=True)
    ok = [r for r in rows if r["ok"]]
    summary = {
        "runs": len(rows), "failures": len(rows) - len(ok),
        "max_parity_lightgbm": max((r["parity_lightgbm"] for r in ok), default=None),
        "selected": {k: sum(r.get("kind") == k for r in ok) for k in ("lightgbm", "logreg")},
        "python": platform.python_version(),
    }
    print(f"\n{summary['runs']} training runs, {summary['failures']} parity failures, max LightGBM parity "
          f"difference {summary['max_parity_lightgbm']:.2e}, selected {summary['selected']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps({"summary": summary, "rows": rows}, option=orjson.OPT_INDENT_2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
