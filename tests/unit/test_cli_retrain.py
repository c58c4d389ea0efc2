"""`streamscore retrain once` from a log file, and its user errors: one line, exit 2, champion kept."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from engine.loadgen import write_jsonl
from engine.cli import app
from models.registry import Registry
from tests.retrain_data import champion_registry, drifted_events, post_drift_window, window_trigger

runner = CliRunner()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.jsonl"
    write_jsonl(path, drifted_events())
    return path


@pytest.fixture
def setup(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Registry]:
    reg = champion_registry(tmp_path / "registry", tmp_path_factory)
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"registry": str(reg.root),
                                      "retrain": {"gate": {"require_beat_baseline": False}}}))
    return config, reg


def _once(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["retrain", "once", *args])
    return result.exit_code, result.output


def test_once_from_a_file_with_a_schedule_window_promotes(setup, history: Path) -> None:  # type: ignore[no-untyped-def]
    config, reg = setup
    start, end = post_drift_window(drifted_events())
    days = (end - start) / 86_400_000
    code, out = _once("--window-days", f"{days:.4f}", "--end", str(end), "--events", str(history),
                      "--config", str(config), "--json")
    assert code == 0, out
    record = orjson.loads(out.strip().splitlines()[-1])
    assert record["decision"] == "promoted" and record["version"] == 2 and record["champion_before"] == 1
    assert record["idempotency_key"].startswith("schedule:purchase:")
    assert any(line.startswith("[retrain]") for line in out.splitlines()), "progress lines"
    assert reg.resolve("purchase", "champion").version == 2
    assert reg.resolve("purchase", 2).manifest.lineage["source"] == {"kind": "file", "path": str(history)}
    code, again = _once("--window-days", f"{days:.4f}", "--end", str(end), "--events", str(history),
                        "--config", str(config))
    assert code == 0 and again.strip().splitlines()[-1].startswith("duplicate: purchase v2")


def test_user_errors_end_in_one_line_and_exit_2(setup, history: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, reg = setup
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    bad_reason = tmp_path / "reason.json"
    bad_reason.write_bytes(window_trigger((1, 2)).to_json().replace(b'"performance"', b'"vibes"'))
    end = post_drift_window(drifted_events())[1]
    tiny = tmp_path / "tiny.json"
    tiny.write_bytes(window_trigger((end - 1_800_000, end)).to_json())
    foreign = tmp_path / "foreign.json"
    foreign.write_bytes(window_trigger((end - 86_400_000, end), spec_hash="fs-0123456789abcdef").to_json())
    ev = ["--events", str(history), "--config", str(config)]
    cases = [
        ((), "exactly one of --trigger"),
        (("--trigger", str(bad_json), *ev), "trigger is not valid JSON"),
        (("--trigger", str(bad_reason), *ev), "reason 'vibes' is not one of"),
        (("--trigger", str(tmp_path / "missing.json"), *ev), "does not exist"),
        (("--trigger", str(tiny), *ev), "is too small"),
        (("--trigger", str(foreign), *ev), "is for feature spec fs-0123456789abcdef"),
        (("--window-days", "0", *ev), "--window-days must be > 0"),
        (("--window-days", "3", "--end", "yesterday", *ev), "neither epoch milliseconds nor an ISO 8601"),
    ]
    for args, words in cases:
        code, out = _once(*args)
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0], (args, out)
    assert reg.versions("purchase") == [1] and reg.resolve("purchase", "champion").version == 1


def test_an_unreachable_broker_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = runner.invoke(app, ["retrain", "worker", "--registry", str(tmp_path), "--idle-exit", "1"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "cannot reach Kafka at 127.0.0.1:1" in errors[0], result.output
