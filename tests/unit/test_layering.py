"""The package layering: which top-level packages each layer may import.

features/  knows nothing of Kafka, RocksDB, models or the engine;
models/    knows nothing of the engine's loop or of Kafka;
engine/    composes features/ and models/, and never imports benchmarks/;
benchmarks/ may import everything (not checked).

Every .py file of a checked package is parsed with `ast` (nothing is imported), and every
`import x` / `from x import y` anywhere in it counts, including imports inside functions and
`if TYPE_CHECKING:` blocks; relative imports are resolved against the file's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN: dict[str, frozenset[str]] = {
    "features": frozenset({"engine", "models", "benchmarks", "confluent_kafka", "rocksdict"}),
    "models": frozenset({"engine", "benchmarks", "confluent_kafka"}),
    "engine": frozenset({"benchmarks"}),
}


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute dotted module name) of every import in `source`, the text of `module`
    (dotted name; `is_package` when the file is the package's __init__.py). For `from x import y`
    the module is `x` (`y` may be a submodule, so `x.y` is reported too)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target:
                found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}".lstrip(".")) for alias in node.names
                         if alias.name != "*")
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    """One line per import in `root`/`package`/ of a top-level package that layer must not import."""
    forbidden = FORBIDDEN[package]
    out = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root)
        module = ".".join(rel.with_suffix("").parts)
        is_package = path.name == "__init__.py"
        if is_package:
            module = module.removesuffix(".__init__")
        seen = set()
        for line, target in imported_modules(path.read_text(encoding="utf-8"), module, is_package):
            top = target.split(".")[0]
            if top in forbidden and (line, top) not in seen:
                seen.add((line, top))
                out.append(f"{rel}:{line} imports {target} ({package}/ must not import {top})")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    bad = violations(package)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_every_import_form_is_seen() -> None:
    src = (
        "import confluent_kafka\n"
        "import numpy as np, rocksdict.x\n"
        "from benchmarks.generator import G\n"
        "def f():\n"
        "    from engine import loadgen\n"
        "    if True:\n"
        "        import models.registry\n"
        "class C:\n"
        "    def m(self):\n"
        "        from .schema import X\n"
        "        from .. import engine\n"
        "        from ..models import y\n"
    )
    tops = {t.split(".")[0] for _, t in imported_modules(src, "features.spec")}
    assert tops == {"confluent_kafka", "numpy", "rocksdict", "benchmarks", "engine", "models", "features"}
    targets = {t for _, t in imported_modules(src, "features.spec")}
    assert {"features.schema", "features.schema.X", "models", "models.y", "engine.loadgen"} <= targets
    # In a package's __init__.py `.` is the package itself.
    assert imported_modules("from .spec import S\n", "features", is_package=True) == [
        (1, "features.spec"), (1, "features.spec.S")]


def test_a_wrong_way_import_is_reported(tmp_path: Path) -> None:
    pkg = tmp_path / "engine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "demo.py").write_text("def run():\n    from benchmarks.generator import ClickstreamGenerator\n")
    assert violations("engine", root=tmp_path) == [
        "engine/demo.py:2 imports benchmarks.generator (engine/ must not import benchmarks)"]
