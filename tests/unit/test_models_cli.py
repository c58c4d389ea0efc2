"""`streamscore model ...` commands against a temporary registry."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from models.cli import model_app
from models.registry import Registry
from models.testing import make_manifest, small_model_bytes, synthetic_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    X, y, _, names = synthetic_dataset(n=400, d=5, seed=6)
    d = tmp_path_factory.mktemp("export")
    (d / "model.onnx").write_bytes(small_model_bytes(X, y, names))
    (d / "manifest.json").write_text(make_manifest(names).to_json())
    return d


def run(*args: str) -> str:
    result = runner.invoke(model_app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_full_governance_flow(tmp_path: Path, export_dir: Path) -> None:
    reg = ["--registry", str(tmp_path)]
    assert "registered purchase v1" in run("register", str(export_dir), "--reason", "first", "--actor", "ann", *reg)
    assert "registered purchase v2" in run("register", str(export_dir), "--reason", "second", *reg)
    assert "champion: none -> v1" in run("promote", "purchase", "1", "--reason", "go", *reg)
    assert "champion: v1 -> v2" in run("promote", "purchase", "2", "--reason", "better", *reg)
    assert "already v2" in run("promote", "purchase", "2", "--reason", "again", *reg)
    out = run("list", *reg)
    assert "purchase" in out and "champion" in out
    out = run("show", "purchase", "champion", *reg)
    assert "purchase v2" in out and "sha256" in out and "purchase_within" in out
    assert "champion -> v2" in run("show", "purchase", *reg)
    shown = orjson.loads(run("show", "purchase", "v1", "--json", *reg))
    assert shown["manifest"]["version"] == 1
    assert "v1 -> v2" in run("diff", "purchase", "1", "2", *reg)
    assert "champion: v2 -> v1 (rolled back)" in run("rollback", "purchase", "--reason", "oops", *reg)
    audit = run("audit", "purchase", *reg)
    assert "ann" in audit and "rollback" in audit and "oops" in audit
    entries = orjson.loads(run("audit", "purchase", "--json", *reg))
    assert [e["action"] for e in entries] == ["register", "register", "promote", "promote", "rollback"]
    at = entries[3]["ts_ms"]
    assert "champion at" in (out := run("who-served", "purchase", "--at", str(at), *reg)) and out.strip().endswith("v2")
    assert run("who-served", "purchase", "--at", "2000-01-01T00:00:00Z", *reg).startswith("no version")
    assert "canary: none -> v2" in run("promote", "purchase", "2", "--alias", "canary", "--reason", "c", *reg)
    assert "canary: v2 -> none" in run("demote", "purchase", "--alias", "canary", "--reason", "end", *reg)


def test_errors_exit_nonzero_with_message(tmp_path: Path, export_dir: Path) -> None:
    reg = ["--registry", str(tmp_path)]
    result = runner.invoke(model_app, ["show", "nope", *reg])
    assert result.exit_code == 1 and "no model 'nope'" in result.output
    run("register", str(export_dir), "--reason", "r", *reg)
    result = runner.invoke(model_app, ["rollback", "purchase", "--reason", "x", *reg])
    assert result.exit_code == 1 and "no earlier version" in result.output
    result = runner.invoke(model_app, ["promote", "purchase", "7", "--reason", "x", *reg])
    assert result.exit_code == 1 and "no version 7" in result.output
    result = runner.invoke(model_app, ["promote", "purchase", "1", *reg])
    assert result.exit_code != 0  # --reason is mandatory


def test_register_refuses_mismatched_sha(tmp_path: Path, export_dir: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes((export_dir / "model.onnx").read_bytes())
    names = make_manifest(["x"]).feature_names
    (bad / "manifest.json").write_text(make_manifest(names, sha256="0" * 64).to_json())
    result = runner.invoke(model_app, ["register", str(bad), "--reason", "x", "--registry", str(tmp_path / "r")])
    assert result.exit_code == 1 and "does not match the sha256" in result.output


def test_registry_root_from_environment(tmp_path: Path, export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_REGISTRY", str(tmp_path / "envreg"))
    run("register", str(export_dir), "--reason", "env")
    assert Registry(tmp_path / "envreg").versions("purchase") == [1]


def test_a_rejected_version_shows_its_status_and_can_be_promoted_explicitly(tmp_path: Path, export_dir: Path) -> None:
    reg = ["--registry", str(tmp_path)]
    run("register", str(export_dir), "--reason", "first", *reg)
    run("register", str(export_dir), "--reason", "candidate", *reg)
    run("promote", "purchase", "1", "--reason", "go", *reg)
    Registry(tmp_path).reject("purchase", 2, "gate failed: ECE 0.09 > 0.05", actor="retrain-worker")
    listing = run("list", *reg)
    assert [line.split()[3] for line in listing.splitlines()[1:]] == ["registered", "rejected"]
    assert "REJECTED: gate failed: ECE 0.09 > 0.05" in run("show", "purchase", *reg)
    assert "status        rejected: gate failed" in run("show", "purchase", "2", *reg)
    assert orjson.loads(run("list", "--json", *reg))[1]["status"] == "rejected"
    out = run("promote", "purchase", "2", "--reason", "operator override", *reg)
    assert "champion: v1 -> v2" in out and "had been rejected" in out
    assert "reject" in run("audit", "purchase", *reg)
