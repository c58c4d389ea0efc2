"""One tiny end-to-end benchmark scenario on the real broker: streamscore only, no peers.

An open-loop run at a fixed rate through a real `streamscore run` process: every event is scored
exactly once, latencies are positive and bounded, the load kept its schedule, the engine's stage
timers were scraped, and the report renders. Figures are not asserted (benchmarks print them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_e2e import champion
from benchmarks.harness import Env, Target, run_once
from benchmarks.report import write_report
from engine.stages import STAGES
from tests.integration.conftest import PARTITIONS, TrainedModel

pytestmark = pytest.mark.integration


def test_open_loop_run_accounts_for_every_event(kafka_bootstrap: str, trained_model: TrainedModel,
                                                tmp_path: Path) -> None:
    model_path, columns = champion(trained_model.registry, trained_model.name, 0, PARTITIONS)
    env = Env(bootstrap=kafka_bootstrap, root=tmp_path / "runs", registry=trained_model.registry,
              model_name=trained_model.name, model_path=model_path, columns=columns, partitions=PARTITIONS,
              users=300)
    events = 1_500
    r = run_once(env, Target("streamscore", "at_least_once"), "rate", events, rate=500.0, timeout_s=120)

    assert r["warmup"]["all_scored"]
    assert r["complete"] and r["answered"] == events and r["missing"] == 0
    assert r["duplicates"] == 0 and r["unknown_index"] == 0
    assert r["load"]["sent"] == events and r["load"]["kept_rate"], r["load"]
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"] < 60_000
    assert set(r["stages"]["us_per_event"]) <= set(STAGES)
    assert {"decode", "features", "model", "commit"} <= set(r["stages"]["us_per_event"])
    assert r["stages"]["events"] >= events  # warm-up events are scored by the same process
    assert r["resources"]["rss_max_mb_total"] > 0

    out = tmp_path / "report"
    out.mkdir()
    text = write_report({"runs": [r]}, out)
    assert "streamscore ALO" in text
    assert all((out / f).stat().st_size > 0 for f in ("e2e.md", "latency_cdf.png", "latency_vs_load.png", "throughput.png"))
