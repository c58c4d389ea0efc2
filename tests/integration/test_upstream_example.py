"""The documented foreign-schema example end to end against the real broker: a REES46-shaped CSV
(generated, reshaped) trains a model by configuration alone, is replayed through Kafka with
`streamscore gen replay`, and the engine scores every record with the same derived event ids and
the same feature vectors as the offline replay."""

from __future__ import annotations

import importlib.util
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from engine.cli import app
from engine.config import load_config
from features.offline import replay_file
from features.synthetic import ClickstreamGenerator, GeneratorConfig
from tests.integration.conftest import PARTITIONS, consume_n, running_engine, wait_for_stats

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rees46"


def _sample_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("rees46_sample", EXAMPLE / "make_sample.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_rees46_csv_trains_replays_and_scores_by_configuration_alone(
    kafka_bootstrap: str, make_topic, tmp_path: Path
) -> None:
    sample = _sample_module()
    gen = GeneratorConfig(n_events=9_000, n_users=200, seed=23, start=datetime(2026, 1, 1, tzinfo=timezone.utc),
                          jitter_ms=0.0)
    csv_path = tmp_path / "rees46.csv"
    rows = sample.write_csv(csv_path, sample.to_rees46(ClickstreamGenerator(gen).events()))
    assert rows > 3_000

    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    doc = yaml.safe_load((EXAMPLE / "engine.yaml").read_text())
    doc.update(features=str(EXAMPLE / "features.yaml"), bootstrap_servers=kafka_bootstrap, input_topic=clicks,
               scores_topic=scores, dlq_topic=dlq, group_id=f"g-{clicks}", state_dir=str(tmp_path / "state"),
               registry=str(tmp_path / "registry"), model_name="rees46", include_features=True, batch_wait_ms=20)
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump(doc))
    cfg = load_config(config)
    assert set(cfg.features.extra_fields) == {"category", "brand"}

    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--events", str(csv_path), "--config", str(config),
                                  "--partitions", str(PARTITIONS), "--model-kind", "logreg"])
    assert trained.exit_code == 0, trained.output
    offline = replay_file(csv_path, cfg.features, PARTITIONS, cfg.schema)
    assert offline.invalid == {} and len(offline) > 3_000
    assert all(i.startswith("h") for i in offline.event_ids) and len(set(offline.event_ids)) == len(offline)
    # the extra columns reach the features: some rows have a category one-hot set, and some a brand
    names = list(cfg.features.names)
    assert offline.X[:, names.index("category=electronics.smartphone")].sum() > 0
    assert offline.X[:, names.index("brand=apple")].sum() > 0

    replayed = runner.invoke(app, ["gen", "replay", "--events", str(csv_path), "--config", str(config),
                                   "--progress-every", "0"])
    assert replayed.exit_code == 0, replayed.output
    assert f"replayed {rows:,} records" in replayed.output

    with running_engine(cfg, kafka_bootstrap) as engine:
        wait_for_stats(engine, lambda s: s.consumed >= rows, timeout=120)
    assert engine.stats.scored == len(offline) and engine.stats.dlq_total == rows - len(offline)
    records = [orjson.loads(m.value()) for m in consume_n(kafka_bootstrap, scores, len(offline), PARTITIONS)]
    online = {r["event_id"]: r for r in records if r["variant"] == "champion"}
    assert set(online) == set(offline.event_ids)  # derived ids agree online and offline
    for i, event_id in enumerate(offline.event_ids):
        got = np.array([np.nan if v is None else v for v in online[event_id]["features"].values()], dtype=np.float32)
        np.testing.assert_array_equal(got, offline.X[i], err_msg=event_id)
    assert {r["model"]["name"] for r in online.values()} == {"rees46"}
    assert all(0.0 <= r["score"] <= 1.0 for r in online.values())
