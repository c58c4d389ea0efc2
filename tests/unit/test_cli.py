"""The `streamscore` CLI: every command has --help, and bad input fails fast with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from engine.cli import app

runner = CliRunner()


def _command_paths(group, prefix=()):  # type: ignore[no-untyped-def]
    for name, cmd in getattr(group, "commands", {}).items():
        path = (*prefix, name)
        yield path
        yield from _command_paths(cmd, path)


PATHS = list(_command_paths(get_command(app)))


def test_cli_tree_covers_every_group() -> None:
    tops = {p[0] for p in PATHS}
    assert {"run", "train", "demo", "broker", "gen", "model", "topics", "features"} <= tops
    assert len(PATHS) >= 20


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) for p in PATHS])
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 3


def test_run_with_invalid_config_fails_fast_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_batch: 0\n")
    result = runner.invoke(app, ["run", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "max_batch must be >= 1" in result.output


def test_run_without_a_model_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No broker is needed to discover that there is no model: the engine loads it before Kafka.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = runner.invoke(app, ["run", "--registry", str(tmp_path / "empty-registry")])
    assert result.exit_code == 1  # the environment lacks a model (2: the command line or config is wrong)
    assert "streamscore train" in result.output
