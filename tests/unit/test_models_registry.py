"""File-system registry: versions, aliases, audit, who-served, atomicity and concurrency."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.manifest import Manifest, read_embedded
from models.registry import (
    InvalidModel,
    NothingToRollBack,
    Registry,
    UnknownAlias,
    UnknownModel,
    UnknownVersion,
    parse_time_ms,
)
from models.testing import make_manifest, small_model_bytes, synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture(scope="module")
def model() -> tuple[bytes, list[str]]:
    X, y, _, names = synthetic_dataset(n=500, d=5, seed=3)
    return small_model_bytes(X, y, names), names


def test_register_writes_version_dirs_with_hash_and_embedded_manifest(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    reg = Registry(tmp_path / "reg")
    v1 = reg.register("purchase", blob, make_manifest(names), actor="alice", reason="first")
    v2 = reg.register("purchase", blob, make_manifest(names, parent_version=1), actor="bob", reason="second")
    assert (v1, v2) == (1, 2)
    vdir = tmp_path / "reg" / "purchase" / "versions" / "2"
    assert sorted(p.name for p in vdir.iterdir()) == ["manifest.json", "model.onnx"]
    data = (vdir / "model.onnx").read_bytes()
    manifest = Manifest.from_json((vdir / "manifest.json").read_bytes())
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.name == "purchase" and manifest.version == 2 and manifest.parent_version == 1
    embedded = read_embedded(data)
    assert embedded.version == 2 and embedded.sha256 is None and embedded == manifest.replace(sha256=None)
    assert reg.versions("purchase") == [1, 2] and reg.models() == ["purchase"]
    entries = reg.audit("purchase")
    assert [(e["action"], e["version"], e["actor"], e["reason"]) for e in entries] == [
        ("register", 1, "alice", "first"), ("register", 2, "bob", "second")]
    assert entries[1]["from_version"] == 1  # parent


def test_default_actor_is_user(tmp_path: Path, model, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    monkeypatch.setenv("USER", "carol")
    reg = Registry(tmp_path)
    reg.register("m", blob, make_manifest(names))
    assert reg.audit("m")[0]["actor"] == "carol"


def test_promote_rollback_demote_and_history(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.register("m", blob, make_manifest(names))
    assert reg.promote("m", 1, reason="initial") is None
    assert reg.promote("m", 2, reason="better") == 1
    assert reg.promote("m", 2, reason="again") == 2  # no-op, not audited
    assert reg.promote("m", 3, alias="canary", reason="try") is None
    assert reg.aliases("m") == {"champion": 2, "canary": 3}
    assert reg.resolve("m", "champion").version == 2
    assert reg.rollback("m", reason="regression") == 1
    assert reg.resolve("m").version == 1
    with pytest.raises(NothingToRollBack, match="no earlier version to roll back to"):
        reg.rollback("m", reason="again")
    assert reg.demote("m", alias="canary", reason="done") == 3
    with pytest.raises(UnknownAlias, match="'canary'"):
        reg.resolve("m", "canary")
    assert reg.rollback("m", alias="canary", reason="undo demote") == 3
    actions = [(e["action"], e.get("alias"), e["version"], e["from_version"]) for e in reg.audit("m")[3:]]
    assert actions == [("promote", "champion", 1, None), ("promote", "champion", 2, 1),
                       ("promote", "canary", 3, None), ("rollback", "champion", 1, 2),
                       ("demote", "canary", None, 3), ("rollback", "canary", 3, None)]
    hist = reg.alias_history("m", "champion")
    assert [h["version"] for h in hist] == [1, 2, 1] and hist[-1]["reason"] == "regression"
    raw = orjson.loads((tmp_path / "m" / "aliases.json").read_bytes())
    assert raw["aliases"] == {"champion": 1, "canary": 3}


def test_resolve_forms_and_clear_errors(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    reg = Registry(tmp_path)
    reg.register("m", blob, make_manifest(names))
    reg.register("m", blob, make_manifest(names))
    for ref in (2, "2", "v2"):
        r = reg.resolve("m", ref)
        assert r.version == 2 and r.model_path.is_file() and r.manifest.version == 2
    with pytest.raises(UnknownModel, match="no model 'x' in registry .* \\(models: m\\)"):
        reg.resolve("x", "champion")
    with pytest.raises(UnknownVersion, match=r"no version 9 \(versions: \[1, 2\]\)"):
        reg.resolve("m", 9)
    with pytest.raises(UnknownVersion):
        reg.promote("m", 9, reason="x")
    with pytest.raises(UnknownAlias, match="promote one with"):
        reg.resolve("m", "champion")
    with pytest.raises(NothingToRollBack):
        reg.rollback("m", reason="x")
    with pytest.raises(ValueError, match="model name"):
        reg.resolve("../etc", 1)
    with pytest.raises(ValueError, match="alias"):
        reg.promote("m", 1, alias="v3")
    assert isinstance(UnknownModel("x"), LookupError)  # engine.serving catches LookupError


def test_register_refuses_graph_that_breaks_contract(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    reg = Registry(tmp_path)
    with pytest.raises(InvalidModel, match=r"shape \[.*5\], expected \[None, 4\]"):
        reg.register("m", blob, make_manifest(names[:4]))
    with pytest.raises(InvalidModel, match="not a valid ONNX model"):
        reg.register("m", b"not onnx", make_manifest(names))
    with pytest.raises(InvalidModel, match="expected exactly \\['x'\\]"):
        reg.register("m", blob, make_manifest(names, input_name="x"))


def test_served_by_answers_from_audit_log(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    clock = FakeClock()
    reg = Registry(tmp_path, clock=clock)
    for _ in range(3):
        reg.register("m", blob, make_manifest(names))
    t_promote1 = int(clock.advance(10) * 1000)
    reg.promote("m", 1, reason="a")
    t_promote2 = int(clock.advance(60) * 1000)
    reg.promote("m", 3, reason="b")
    t_rollback = int(clock.advance(60) * 1000)
    reg.rollback("m", reason="c")
    t_demote = int(clock.advance(60) * 1000)
    reg.demote("m", reason="d")
    assert reg.served_by("m", "champion", t_promote1 - 1) is None
    assert reg.served_by("m", "champion", t_promote1) == 1
    assert reg.served_by("m", "champion", t_promote2 - 1) == 1
    assert reg.served_by("m", "champion", t_promote2 + 5) == 3
    assert reg.served_by("m", "champion", t_rollback) == 1
    assert reg.served_by("m", "champion", t_demote) is None
    assert reg.served_by("m", "canary", t_demote) is None
    assert reg.audit("m")[-1]["ts"].endswith("Z")


def test_list_show_diff(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    reg = Registry(tmp_path)
    reg.register("m", blob, make_manifest(names, auc=0.70))
    m2 = make_manifest(list(reversed(names)), feature_spec="fs-new", auc=0.75, params={"n_estimators": 50})
    m2.training.data_end_ms = 2 * 86_400_000
    reg.register("m", blob, m2)
    reg.register("other", blob, make_manifest(names))
    reg.promote("m", 2, reason="x")
    rows = reg.list()
    assert [(r.name, r.version) for r in rows] == [("m", 1), ("m", 2), ("other", 1)]
    assert rows[1].aliases == ["champion"] and rows[1].auc == 0.75
    assert [r.version for r in reg.list("m")] == [1, 2]
    overview = reg.show("m")
    assert overview["aliases"] == {"champion": 2} and len(overview["versions"]) == 2
    shown = reg.show("m", "champion")
    assert shown["aliases"] == ["champion"] and shown["manifest"]["version"] == 2
    d = reg.diff("m", 1, "champion")
    assert d["metrics"]["test.auc"]["delta"] == pytest.approx(0.05)
    assert d["feature_spec"] == {"v1": "fs-test", "v2": "fs-new", "same": False, "added": [], "removed": [],
                                 "reordered": True}
    assert d["params"] == {"n_estimators": {"v1": 20, "v2": 50}}
    assert d["training"]["data_end_ms"] == {"v1": 86_400_000, "v2": 2 * 86_400_000}


def test_reader_never_sees_a_half_written_version(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    reg = Registry(tmp_path)
    reg.register("m", blob, make_manifest(names))
    vroot = tmp_path / "m" / "versions"
    stop = threading.Event()
    problems: list[str] = []
    seen: set[str] = set()

    def reader() -> None:
        while not stop.is_set():
            for p in list(vroot.iterdir()):
                if not p.name.isdigit():
                    continue
                seen.add(p.name)
                try:
                    files = sorted(os.listdir(p))
                    if files != ["manifest.json", "model.onnx"]:
                        problems.append(f"{p.name}: {files}")
                        continue
                    m = Manifest.from_json((p / "manifest.json").read_bytes())
                    if hashlib.sha256((p / "model.onnx").read_bytes()).hexdigest() != m.sha256:
                        problems.append(f"{p.name}: hash mismatch")
                except Exception as exc:  # noqa: BLE001 - any failure is the bug under test
                    problems.append(f"{p.name}: {exc!r}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(25):
            reg.register("m", blob, make_manifest(names))
    finally:
        stop.set()
        t.join()
    assert problems == []
    assert len(seen) > 1 and reg.versions("m") == list(range(1, 27))
    assert not [p for p in vroot.iterdir() if p.name.startswith(".staging")]


def test_concurrent_registers_from_threads_get_distinct_versions(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    results: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker() -> None:
        reg = Registry(tmp_path)  # separate instances, like separate services
        barrier.wait()
        for _ in range(4):
            v = reg.register("m", blob, make_manifest(names), actor="t")
            with lock:
                results.append(v)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 25))
    reg = Registry(tmp_path)
    assert reg.versions("m") == list(range(1, 25))
    assert sorted(e["version"] for e in reg.audit("m")) == list(range(1, 25))


def test_concurrent_registers_from_processes_get_distinct_versions(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    blob, names = model
    (tmp_path / "model.onnx").write_bytes(blob)
    (tmp_path / "manifest.json").write_text(make_manifest(names).to_json())
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from models.manifest import Manifest
        from models.registry import Registry
        src = Path({str(tmp_path)!r})
        blob = (src / "model.onnx").read_bytes()
        m = Manifest.from_json((src / "manifest.json").read_bytes())
        reg = Registry(src / "reg")
        print(" ".join(str(reg.register("m", blob, m, actor=sys.argv[1])) for _ in range(4)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"p{i}"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    versions: list[int] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        versions += [int(v) for v in out.split()]
    assert sorted(versions) == list(range(1, 13))
    assert Registry(tmp_path / "reg").versions("m") == list(range(1, 13))


def test_version_numbers_are_never_reused(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    import shutil

    blob, names = model
    reg = Registry(tmp_path)
    reg.register("m", blob, make_manifest(names))
    reg.register("m", blob, make_manifest(names))
    shutil.rmtree(tmp_path / "m" / "versions" / "2")
    (tmp_path / "m" / "versions" / ".staging-3-crashed").mkdir()  # leftover of a crashed writer
    assert reg.register("m", blob, make_manifest(names)) == 3
    assert not (tmp_path / "m" / "versions" / ".staging-3-crashed").exists()


def test_parse_time_ms() -> None:
    assert parse_time_ms("1700000000000") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T22:13:20") == 1_700_000_000_000  # naive = UTC
    assert parse_time_ms("2023-11-15T00:13:20+02:00") == 1_700_000_000_000
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time_ms("yesterday")
    assert np.int64(parse_time_ms(5)) == 5


def test_reject_marks_a_version_that_only_an_explicit_promote_can_serve(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    from models.registry import REGISTERED, REJECTED, AliasMoved, RegistryError, RejectedVersion

    data, names = model
    reg = Registry(tmp_path)
    v1 = reg.register("purchase", data, make_manifest(names), reason="first")
    v2 = reg.register("purchase", data, make_manifest(names), reason="candidate")
    reg.promote("purchase", v1, reason="go")
    assert reg.status("purchase", v2) == (REGISTERED, None)
    reg.reject("purchase", v2, "gate failed: AUC 0.70 < champion v1 0.80 - 0.005", actor="retrain-worker")
    reg.reject("purchase", v2, "again")  # idempotent: the first reason stays, one audit line
    assert reg.status("purchase", v2) == (REJECTED, "gate failed: AUC 0.70 < champion v1 0.80 - 0.005")
    rejects = [e for e in reg.audit("purchase") if e["action"] == "reject"]
    assert [(e["version"], e["actor"]) for e in rejects] == [(v2, "retrain-worker")]
    rows = {r.version: r for r in reg.list("purchase")}
    assert (rows[v1].status, rows[v2].status) == (REGISTERED, REJECTED)
    assert reg.show("purchase", v2)["status"] == REJECTED
    with pytest.raises(RejectedVersion, match="rejected"):
        reg.promote("purchase", v2, reason="worker")
    with pytest.raises(RegistryError, match="held by"):
        reg.reject("purchase", v1, "the champion cannot be rejected")
    with pytest.raises(ValueError, match="reason"):
        reg.reject("purchase", v1, "")
    assert reg.resolve("purchase", "champion").version == v1
    with pytest.raises(AliasMoved):
        reg.promote("purchase", v2, reason="cas", allow_rejected=True, if_current=None)
    assert reg.promote("purchase", v2, reason="a human overrides", allow_rejected=True, if_current=v1) == v1
    assert reg.resolve("purchase", "champion").version == v2
    assert reg.status("purchase", v2)[0] == REJECTED, "the record of the rejection stays"


def test_manifests_without_lineage_still_read(tmp_path: Path, model) -> None:  # type: ignore[no-untyped-def]
    data, names = model
    reg = Registry(tmp_path)
    v = reg.register("purchase", data, make_manifest(names, lineage={"trigger_id": "t1", "parent_version": None}),
                     reason="x")
    assert reg.resolve("purchase", v).manifest.lineage == {"trigger_id": "t1", "parent_version": None}
    old = orjson.loads(make_manifest(names).to_json())
    del old["lineage"]
    assert Manifest.from_dict(old).lineage == {}
