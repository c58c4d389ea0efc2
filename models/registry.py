"""File-system model registry: versions, aliases with history, and an append-only audit log.

Layout under a root directory (local disk or shared storage mounted by every host)::

    <root>/<name>/versions/<version>/model.onnx      immutable once written
    <root>/<name>/versions/<version>/manifest.json   (sha256 of model.onnx inside)
    <root>/<name>/aliases.json                       alias -> version, plus per-alias history
    <root>/<name>/audit.jsonl                        one JSON object per line, append-only
    <root>/<name>/.lock                              writers' lock file

Guarantees:

- Versions are 1, 2, 3, ... per model, assigned under an exclusive lock (``fcntl.flock`` on
  ``.lock`` plus an in-process lock, so threads and processes are both serialised), never reused.
- A version directory appears atomically: it is written as ``versions/.staging-*`` in the same
  filesystem, fsync'ed and ``os.rename``d into place, so a reader sees either no version or one
  with both files complete. Leftover staging directories of a crashed writer are removed by the
  next writer.
- ``aliases.json`` is replaced atomically (temp file + ``os.replace``); every alias change and
  every registration appends one line to ``audit.jsonl`` (under the lock, fsync'ed).
- Aliases (``champion``, ``challenger``, ``canary``, or any name matching ``[A-Za-z][\\w-]*``)
  keep a stack of the versions they held: ``promote`` pushes, ``demote`` pushes "nothing",
  ``rollback`` pops back to the previous entry.
- A version can be marked **rejected** (``reject``: a retraining candidate that failed the
  promotion gate). The mark is an audit line, so it is as durable and append-only as the rest of
  the history; ``list``/``show`` report it as the version's status. ``promote`` refuses a rejected
  version unless the caller passes ``allow_rejected=True`` (an operator's explicit ``streamscore
  model promote``, recorded like every promotion); the retraining worker never does.

``fcntl`` locks work on local filesystems and on NFSv4; put the root on storage that honours them.
Model names and aliases are restricted to ``[A-Za-z0-9][A-Za-z0-9_.-]*`` so they are safe paths.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from models.contract import contract_problems
from models.manifest import Manifest, ManifestError, embed, sha256_hex

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
ACTIONS = ("register", "promote", "rollback", "demote", "reject")
REGISTERED, REJECTED = "registered", "rejected"  # version status
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
_VERSION = re.compile(r"^[vV]?(\d+)$")
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class RegistryError(Exception):
    """Base of registry errors; messages say what is wrong and what to do."""


class UnknownModel(RegistryError, LookupError):
    """No model of that name in the registry."""


class UnknownVersion(RegistryError, LookupError):
    """The model exists but not that version."""


class UnknownAlias(RegistryError, LookupError):
    """The model has no version under that alias."""


class NothingToRollBack(RegistryError):
    """The alias has no earlier version in its history."""


class CorruptEntry(RegistryError, ValueError):
    """A stored file (manifest.json) cannot be read; restore it from backup or re-register."""


class InvalidModel(RegistryError, ValueError):
    """The bytes or manifest offered to `register` do not form a servable model."""


class RejectedVersion(RegistryError):
    """The version was rejected (e.g. by the retraining gate); promote it only explicitly."""


class AliasMoved(RegistryError):
    """A conditional promote found the alias holding another version than the caller expected."""


_ANY = object()  # `promote(if_current=...)` default: no condition


@dataclass(frozen=True)
class ModelRef:
    """A resolved registry version: its directory (holding model.onnx + manifest.json)."""

    name: str
    version: int
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE


@dataclass(frozen=True)
class VersionInfo:
    """One row of `Registry.list`."""

    name: str
    version: int
    aliases: list[str]
    created_at: str
    model_kind: str
    feature_spec: str
    auc: float | None
    parent_version: int | None
    status: str = REGISTERED
    status_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Aliases:
    current: dict[str, int] = field(default_factory=dict)
    stacks: dict[str, list[int | None]] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({"aliases": self.current, "stacks": self.stacks, "history": self.history},
                            option=orjson.OPT_INDENT_2)


def _default_actor() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def parse_time_ms(value: str | int) -> int:
    """Epoch ms from an int, a digit string (ms) or an ISO 8601 time (naive means UTC)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


class Registry:
    """A registry rooted at `root` (created on first write). `clock` returns epoch seconds (tests)."""

    def __init__(self, root: str | os.PathLike[str], clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._clock = clock

    # ------------------------------------------------------------------ paths & validation
    def _model_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"model name {name!r} must match {_NAME.pattern}")
        return self.root / name

    def _existing_model_dir(self, name: str) -> Path:
        d = self._model_dir(name)
        if not (d / "versions").is_dir():
            known = ", ".join(self.models()) or "none"
            raise UnknownModel(f"no model {name!r} in registry {self.root} (models: {known})")
        return d

    @staticmethod
    def _check_alias(alias: str) -> None:
        if not isinstance(alias, str) or not _ALIAS.match(alias) or _VERSION.match(alias):
            raise ValueError(f"alias {alias!r} must match {_ALIAS.pattern} and not look like a version")

    def models(self) -> list[str]:
        """Names of all models in the registry, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir() and _NAME.match(p.name))

    def versions(self, name: str) -> list[int]:
        """Registered versions of `name`, ascending."""
        vdir = self._existing_model_dir(name) / "versions"
        return sorted(int(p.name) for p in vdir.iterdir() if p.name.isdigit() and p.is_dir())

    # ------------------------------------------------------------------ locking & logs
    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        mdir = self._model_dir(name)
        (mdir / "versions").mkdir(parents=True, exist_ok=True)
        lock_path = mdir / ".lock"
        key = str(lock_path.resolve())
        with _PROCESS_LOCKS_GUARD:
            plock = _PROCESS_LOCKS.setdefault(key, threading.Lock())
        with plock, open(lock_path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield mdir
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _append_audit(self, mdir: Path, action: str, name: str, version: int | None, alias: str | None,
                      from_version: int | None, actor: str | None, reason: str, now: float) -> dict[str, Any]:
        entry = {
            "ts": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "ts_ms": int(now * 1000),
            "actor": actor or _default_actor(),
            "action": action,
            "model": name,
            "version": version,
            "alias": alias,
            "from_version": from_version,
            "reason": reason,
        }
        fd = os.open(mdir / "audit.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def audit(self, name: str) -> list[dict[str, Any]]:
        """All audit entries of `name`, oldest first (a torn last line from a crash is skipped)."""
        path = self._existing_model_dir(name) / "audit.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out

    def rejections(self, name: str) -> dict[int, dict[str, Any]]:
        """version -> the audit entry that rejected it (the first), for every rejected version."""
        out: dict[int, dict[str, Any]] = {}
        for entry in self.audit(name):
            if entry.get("action") == "reject" and isinstance(entry.get("version"), int):
                out.setdefault(entry["version"], entry)
        return out

    def status(self, name: str, version: int) -> tuple[str, str | None]:
        """(``"registered"`` or ``"rejected"``, the rejection reason or None) of a version."""
        self._require_version(self._existing_model_dir(name), name, int(version))
        entry = self.rejections(name).get(int(version))
        return (REJECTED, entry.get("reason")) if entry else (REGISTERED, None)

    def _read_aliases(self, mdir: Path) -> _Aliases:
        path = mdir / "aliases.json"
        if not path.exists():
            return _Aliases()
        raw = orjson.loads(path.read_bytes())
        return _Aliases(current={k: int(v) for k, v in raw.get("aliases", {}).items()},
                        stacks={k: list(v) for k, v in raw.get("stacks", {}).items()},
                        history={k: list(v) for k, v in raw.get("history", {}).items()})

    def aliases(self, name: str) -> dict[str, int]:
        """Current alias -> version map of `name`."""
        return dict(self._read_aliases(self._existing_model_dir(name)).current)

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        """Every change of `alias` on `name`, oldest first."""
        return list(self._read_aliases(self._existing_model_dir(name)).history.get(alias, []))

    # ------------------------------------------------------------------ writes
    def register(self, name: str, onnx_bytes: bytes, manifest: Manifest, actor: str | None = None,
                 reason: str = "") -> int:
        """Store a new version of `name`; return its number.

        The manifest's name, version and sha256 are set here: the manifest (sha256 null) is
        embedded into the ONNX bytes, the final bytes are hashed, and model.onnx + manifest.json
        appear together atomically. Raises `InvalidModel` if the graph violates the contract.
        """
        import onnx

        try:
            proto = onnx.load_from_string(onnx_bytes)
        except Exception as exc:  # noqa: BLE001
            raise InvalidModel(f"not a valid ONNX model: {exc}") from None
        problems = contract_problems(proto, len(manifest.feature_names), manifest.input_name)
        if problems:
            raise InvalidModel(f"refusing to register {name!r}: " + "; ".join(problems))
        if len(set(manifest.feature_names)) != len(manifest.feature_names):
            raise InvalidModel("manifest feature_names contains duplicates")

        with self._locked(name) as mdir:
            vdir = mdir / "versions"
            for stale in vdir.glob(".staging-*"):
                shutil.rmtree(stale, ignore_errors=True)
            version = self._next_version(mdir)
            final_manifest = manifest.replace(name=name, version=version, sha256=None)
            final_bytes = embed(onnx_bytes, final_manifest)
            final_manifest = final_manifest.replace(sha256=sha256_hex(final_bytes))
            stage = vdir / f".staging-{version}-{uuid.uuid4().hex}"
            stage.mkdir()
            try:
                _write_file(stage / MODEL_FILE, final_bytes)
                _write_file(stage / MANIFEST_FILE, final_manifest.to_json().encode())
                _fsync_dir(stage)
                os.rename(stage, vdir / str(version))
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            _fsync_dir(vdir)
            self._append_audit(mdir, "register", name, version, None, manifest.parent_version, actor, reason,
                               self._clock())
        return version

    def _next_version(self, mdir: Path) -> int:
        seen = [int(p.name) for p in (mdir / "versions").iterdir() if p.name.isdigit()]
        audit = mdir / "audit.jsonl"
        if audit.exists():  # never reuse a number, even if a version directory was deleted
            for line in audit.read_bytes().splitlines():
                try:
                    e = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if e.get("action") == "register" and isinstance(e.get("version"), int):
                    seen.append(e["version"])
        return max(seen, default=0) + 1

    def _require_version(self, mdir: Path, name: str, version: int) -> None:
        if not (mdir / "versions" / str(version) / MANIFEST_FILE).is_file():
            raise UnknownVersion(f"model {name!r} has no version {version} (versions: {self.versions(name)})")

    def _set_alias(self, name: str, alias: str, action: str, actor: str | None, reason: str,
                   choose: Callable[[_Aliases, str], tuple[int | None, bool]]) -> tuple[int | None, int | None]:
        """Under the lock: `choose` returns (new version or None, push?) given the alias state."""
        self._check_alias(alias)
        self._existing_model_dir(name)
        with self._locked(name) as mdir:
            state = self._read_aliases(mdir)
            previous = state.current.get(alias)
            new, push = choose(state, alias)
            if new == previous and action == "promote":
                return previous, new  # already there: no-op, nothing audited
            stack = state.stacks.setdefault(alias, [])
            if push:
                stack.append(new)
            else:
                stack.pop()
            if new is None:
                state.current.pop(alias, None)
            else:
                state.current[alias] = new
            now = self._clock()
            entry = self._append_audit(mdir, action, name, new, alias, previous, actor, reason, now)
            state.history.setdefault(alias, []).append(
                {k: entry[k] for k in ("ts", "ts_ms", "action", "version", "from_version", "actor", "reason")}
            )
            _write_atomic(mdir / "aliases.json", state.to_json())
            return previous, new

    def promote(self, name: str, version: int, alias: str = "champion", actor: str | None = None,
                reason: str = "", *, allow_rejected: bool = False, if_current: Any = _ANY) -> int | None:
        """Point `alias` at `version`; return the version it held before (None if none).
        Promoting the version the alias already holds is a no-op (not audited).

        A rejected version (`reject`) raises `RejectedVersion` unless `allow_rejected`.
        `if_current` (a version or None): promote only if the alias holds exactly that now,
        checked under the lock (compare-and-set), else `AliasMoved`.
        """
        version = int(version)
        self._require_version(self._existing_model_dir(name), name, version)
        if not allow_rejected:
            rejected = self.rejections(name).get(version)
            if rejected is not None:
                raise RejectedVersion(f"{name} v{version} was rejected ({rejected.get('reason')}); promote it "
                                      "explicitly with `streamscore model promote` if intended")

        def choose(state: _Aliases, a: str) -> tuple[int | None, bool]:
            held = state.current.get(a)
            if if_current is not _ANY and held != if_current:
                raise AliasMoved(f"{name} {a} holds {'v' + str(held) if held is not None else 'nothing'}, "
                                 f"not {'v' + str(if_current) if if_current is not None else 'nothing'} as expected")
            return version, True

        previous, _ = self._set_alias(name, alias, "promote", actor, reason, choose)
        return previous

    def reject(self, name: str, version: int, reason: str, actor: str | None = None) -> None:
        """Mark `version` rejected with `reason` (one audit line; idempotent). It stays stored and
        inspectable; `promote` then needs ``allow_rejected=True``. A version an alias holds now
        cannot be rejected (demote or roll back first)."""
        version = int(version)
        if not reason:
            raise ValueError("a rejection needs a reason")
        mdir = self._existing_model_dir(name)
        self._require_version(mdir, name, version)
        with self._locked(name) as mdir:
            held = sorted(a for a, v in self._read_aliases(mdir).current.items() if v == version)
            if held:
                raise RegistryError(f"{name} v{version} is held by {held}; it cannot be rejected")
            if version in self.rejections(name):
                return
            self._append_audit(mdir, "reject", name, version, None, None, actor, reason, self._clock())

    def demote(self, name: str, alias: str = "champion", actor: str | None = None, reason: str = "") -> int:
        """Remove `alias` (it then resolves to nothing); return the version it held.
        A later `rollback` restores that version."""
        def choose(state: _Aliases, a: str) -> tuple[int | None, bool]:
            if a not in state.current:
                raise UnknownAlias(f"model {name!r} has no alias {a!r} to demote (aliases: {state.current})")
            return None, True

        previous, _ = self._set_alias(name, alias, "demote", actor, reason, choose)
        assert previous is not None
        return previous

    def rollback(self, name: str, alias: str = "champion", actor: str | None = None, reason: str = "") -> int:
        """Point `alias` back at the version it held before its last promote/demote; return it.
        Raises `NothingToRollBack` when the alias has no earlier version."""
        def choose(state: _Aliases, a: str) -> tuple[int | None, bool]:
            stack = state.stacks.get(a, [])
            if len(stack) < 2 or stack[-2] is None:
                held = state.current.get(a)
                raise NothingToRollBack(
                    f"alias {a!r} of model {name!r} has no earlier version to roll back to "
                    f"(it holds {'v' + str(held) if held is not None else 'nothing'}; history: "
                    f"{[v for v in stack]}). Promote a specific version instead."
                )
            return stack[-2], False

        _, new = self._set_alias(name, alias, "rollback", actor, reason, choose)
        assert new is not None
        return new

    # ------------------------------------------------------------------ reads
    def resolve(self, name: str, alias_or_version: str | int = "champion") -> ModelRef:
        """The version dir for an alias (``"champion"``) or a version (``3``, ``"3"``, ``"v3"``)."""
        mdir = self._existing_model_dir(name)
        ref = alias_or_version
        match = _VERSION.match(ref) if isinstance(ref, str) else None
        if isinstance(ref, int) or match:
            version = int(ref) if isinstance(ref, int) else int(match.group(1))  # type: ignore[union-attr]
        else:
            current = self._read_aliases(mdir).current
            if ref not in current:
                raise UnknownAlias(
                    f"model {name!r} has no version under alias {ref!r} (aliases: {current or 'none'}); "
                    f"promote one with `streamscore model promote {name} <version> --alias {ref} --reason ...`"
                )
            version = current[ref]
        self._require_version(mdir, name, version)
        path = mdir / "versions" / str(version)
        try:
            manifest = Manifest.from_json((path / MANIFEST_FILE).read_bytes())
        except ManifestError as exc:
            raise CorruptEntry(f"{path / MANIFEST_FILE}: {exc}") from None
        return ModelRef(name=name, version=version, path=path, manifest=manifest)

    def list(self, name: str | None = None) -> list[VersionInfo]:
        """Every version of `name` (or of all models), with the aliases pointing at it."""
        out: list[VersionInfo] = []
        for model in [name] if name is not None else self.models():
            current = self.aliases(model)
            rejected = self.rejections(model)
            for version in self.versions(model):
                m = self.resolve(model, version).manifest
                test = m.metrics.get("test") or {}
                out.append(VersionInfo(
                    name=model, version=version, aliases=sorted(a for a, v in current.items() if v == version),
                    created_at=m.created_at, model_kind=m.model_kind, feature_spec=m.feature_spec,
                    auc=test.get("auc"), parent_version=m.parent_version,
                    status=REJECTED if version in rejected else REGISTERED,
                    status_reason=rejected[version].get("reason") if version in rejected else None,
                ))
        return out

    def show(self, name: str, alias_or_version: str | int | None = None) -> dict[str, Any]:
        """A model overview (aliases, versions) or, given a version/alias, that version's manifest
        plus its path and the aliases pointing at it."""
        if alias_or_version is None:
            return {"name": name, "aliases": self.aliases(name), "versions": [v.to_dict() for v in self.list(name)]}
        ref = self.resolve(name, alias_or_version)
        current = self.aliases(name)
        status, status_reason = self.status(name, ref.version)
        return {"path": str(ref.path), "aliases": sorted(a for a, v in current.items() if v == ref.version),
                "status": status, "status_reason": status_reason, "manifest": ref.manifest.to_dict()}

    def diff(self, name: str, v1: str | int, v2: str | int) -> dict[str, Any]:
        """What differs between two versions: test metrics (with deltas), feature spec and
        names, model kind, params, and training data range/size/digest/label/split."""
        a, b = self.resolve(name, v1).manifest, self.resolve(name, v2).manifest
        ma, mb = _flat_numbers(a.metrics), _flat_numbers(b.metrics)
        metrics = {}
        for key in sorted(set(ma) | set(mb)):
            x, y = ma.get(key), mb.get(key)
            metrics[key] = {"v1": x, "v2": y, "delta": (y - x) if x is not None and y is not None else None}
        names_a, names_b = list(a.feature_names), list(b.feature_names)
        feature = {
            "v1": a.feature_spec, "v2": b.feature_spec, "same": a.feature_spec == b.feature_spec,
            "added": [n for n in names_b if n not in names_a], "removed": [n for n in names_a if n not in names_b],
            "reordered": names_a != names_b and sorted(names_a) == sorted(names_b),
        }
        params = {k: {"v1": a.params.get(k), "v2": b.params.get(k)}
                  for k in sorted(set(a.params) | set(b.params)) if a.params.get(k) != b.params.get(k)}
        ta, tb = a.training.__dict__, b.training.__dict__
        training = {k: {"v1": ta.get(k), "v2": tb.get(k)} for k in ta if ta.get(k) != tb.get(k)}
        return {
            "name": name, "v1": a.version, "v2": b.version,
            "model_kind": {"v1": a.model_kind, "v2": b.model_kind},
            "sha256": {"v1": a.sha256, "v2": b.sha256},
            "metrics": metrics, "feature_spec": feature, "params": params, "training": training,
        }

    def served_by(self, name: str, alias: str, at_ms: int) -> int | None:
        """The version that held `alias` at epoch-ms `at_ms` according to the audit log (None if
        the alias pointed at nothing then). Uses the last alias change at or before `at_ms`."""
        held: int | None = None
        for entry in self.audit(name):
            if entry.get("alias") != alias or entry.get("action") not in ("promote", "rollback", "demote"):
                continue
            if entry["ts_ms"] > at_ms:
                break
            held = entry["version"]
        return held


def _flat_numbers(d: Any, prefix: str = "") -> dict[str, Any]:
    """Numeric leaves of nested metric dicts as ``a.b.c`` keys (lists such as reliability skipped)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat_numbers(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix[:-1]] = d
    return out
