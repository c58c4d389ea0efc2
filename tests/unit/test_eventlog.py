"""Event logs in every supported format replay to the same feature rows (features.eventlog)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.loadgen import write_jsonl, write_parquet
from features.clickstream import clickstream_spec
from features.eventlog import read_events
from features.offline import FeatureTable, replay_file
from features.schema import EventSchema
from features.synthetic import ClickstreamGenerator, GeneratorConfig

CONFIG = GeneratorConfig(n_events=6_000, n_users=200, seed=5, jitter_ms=2_000.0, late_fraction=0.01,
                         late_ms=120_000.0)


def same(a: FeatureTable, b: FeatureTable) -> None:
    assert a.X.tobytes() == b.X.tobytes() and a.event_ids == b.event_ids and a.late == b.late
    assert a.ts.tolist() == b.ts.tolist() and a.invalid == b.invalid


def test_jsonl_gzip_and_parquet_logs_give_identical_rows(tmp_path: Path) -> None:
    events = list(ClickstreamGenerator(CONFIG).events())
    write_jsonl(tmp_path / "log.jsonl", events)
    write_jsonl(tmp_path / "log.jsonl.gz", events)
    assert write_parquet(tmp_path / "log.parquet", events, row_group=1_000) == len(events)
    assert pq.read_schema(tmp_path / "log.parquet").field("ts").type == pa.timestamp("ms", tz="UTC")

    spec = clickstream_spec()
    tables = [replay_file(tmp_path / name, spec, 4) for name in ("log.jsonl", "log.jsonl.gz", "log.parquet")]
    assert len(tables[0]) > 5_000 and tables[0].late, "the log must exercise lateness"
    for other in tables[1:]:
        same(tables[0], other)
    # And the reader yields the very events the generator produced.
    assert list(read_events(tmp_path / "log.parquet", EventSchema(), {})) == events


def test_parquet_with_upstream_names_and_a_native_timestamp_column(tmp_path: Path) -> None:
    """A warehouse export: other column names (mapped by config), ts as naive µs timestamps
    (taken as UTC, truncated to ms), and one row that fails validation (counted, not fatal)."""
    events = list(ClickstreamGenerator(CONFIG).events())[:2_000]
    write_jsonl(tmp_path / "log.jsonl", events)
    rows = [{"uid": e["user_id"], "id": e["event_id"], "type": e["event_type"], "at_us": e["ts"] * 1000 + 999,
             "sid": e["session_id"], "product_id": e["product_id"], "price": e["price"], "device": e["device"],
             "page": e["page"], "country": e["country"], "referrer": e["referrer"]} for e in events]
    rows.insert(700, dict(rows[700], id="bad-1", price=-1.0))
    table = pa.Table.from_pylist(rows).set_column(
        3, "at_us", pa.array([r["at_us"] for r in rows], pa.timestamp("us")))
    pq.write_table(table, tmp_path / "export.parquet")
    schema = EventSchema(field_map={"user_id": "uid", "event_id": "id", "event_type": "type", "ts": "at_us",
                                    "session_id": "sid"})

    spec = clickstream_spec()
    exported = replay_file(tmp_path / "export.parquet", spec, 4, schema)
    assert exported.invalid == {"out_of_range": 1}
    expected = replay_file(tmp_path / "log.jsonl", spec, 4)
    expected.invalid = {"out_of_range": 1}
    same(expected, exported)


def test_gen_history_writes_parquet_and_refuses_bad_rows_there(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from engine.cli import app

    runner = CliRunner()
    out = tmp_path / "h.parquet"
    res = runner.invoke(app, ["gen", "history", "--out", str(out), "--events", "1000", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert pq.read_metadata(out).num_rows == 1_000
    res = runner.invoke(app, ["gen", "history", "--out", str(out), "--events", "10", "--bad-fraction", "0.1"])
    assert res.exit_code != 0 and "parquet" in res.output.lower()


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet"])
def test_missing_log_fails_clearly(tmp_path: Path, name: str) -> None:
    with pytest.raises((FileNotFoundError, OSError)):
        list(read_events(tmp_path / name, EventSchema(), {}))
