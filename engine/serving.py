"""The models the engine serves: resolved from the registry, verified, routed per entity.

Loading refuses a model that is missing, whose bytes do not match their sha256, whose manifest
was edited, whose graph breaks the ONNX contract, or whose feature-spec hash or feature names
differ from the running feature spec: serving it would silently score with features it was not
trained on. At start a refused champion raises `ModelUnavailable` (nothing to serve); later a
refused version is logged once, listed in `describe()` and the current model keeps serving.

`ModelRouter` is what the loop talks to, once per micro-batch:

- ``refresh()`` between batches (never inside one), so a batch is scored by one set of models.
  At most every ``model_poll_ms`` it stats the model's ``aliases.json``; when the file changed it
  re-reads the aliases and loads (verified) every alias that points at a new version, then swaps.
  A load takes tens of milliseconds (docs/models.md has the figures) and happens on the loop's
  thread: one batch is delayed by that much, no batch is ever scored by a half-swapped set.
- ``score(entities, rows)`` returns one `VariantScores` per variant that has rows:

  ``champion``    the answer for every row not routed to the canary;
  ``canary``      the answer for rows whose entity's `canary_bucket` is below ``canary_share``
                  (only when ``canary_share > 0`` and the ``canary`` alias exists);
  ``challenger``  a shadow score for every row (when ``shadow`` is on and the ``challenger``
                  alias exists): extra records, never an answer.

Each batch row gets exactly one answer (champion or canary), so downstream consumers that ignore
``variant == "challenger"`` see one score per event.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.config import EngineConfig
from models.registry import Registry
from models.scorer import IncompatibleModel, OnnxScorer

log = logging.getLogger("streamscore.serving")

CHAMPION, CHALLENGER, CANARY = "champion", "challenger", "canary"
#: Key of the entity hash behind canary routing. Never change it: it would move entities
#: between champion and canary (and make old score records unexplainable by `variant_for`).
CANARY_HASH_KEY = b"streamscore-canary-v1"
#: Most refusals kept in `describe()` (oldest dropped first).
MAX_REFUSALS = 20
#: Entities whose canary bucket is remembered (cleared when full; ~150 B each).
BUCKET_CACHE_MAX = 65_536
_F32 = np.dtype(np.float32)
#: Verified models kept loaded after they stop serving, so a rollback swaps without a reload.
RETIRED_KEEP = 2


class ModelUnavailable(RuntimeError):
    """No servable model; the message says why and how to fix it."""


@dataclass
class ServingModel:
    """A verified ONNX scorer plus its identity as written into score records.

    Attributes:
        scorer: the verified `OnnxScorer`.
        load_ms: wall time of resolving + verifying + creating the ONNX Runtime session.
    """

    scorer: OnnxScorer
    load_ms: float = 0.0
    _session: Any = field(init=False, repr=False)
    _feeds_name: str = field(init=False, repr=False)
    _outputs: list[str] = field(init=False, repr=False)
    _width: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Hot path: a conforming float32 C-contiguous matrix goes straight to session.run.
        self._session = self.scorer._session  # noqa: SLF001 - same package, deliberate fast path
        self._feeds_name = self.scorer.manifest.input_name
        self._outputs = list(self.scorer._outputs)  # noqa: SLF001
        self._width = len(self.scorer.feature_names)

    @property
    def name(self) -> str:
        return self.scorer.name

    @property
    def version(self) -> int:
        return self.scorer.version

    @property
    def ref(self) -> dict[str, Any]:
        return {"name": self.scorer.name, "version": self.scorer.version}

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """P(label=1) for each row of a float32 [n, width] matrix: one ONNX Runtime call."""
        if type(rows) is np.ndarray and rows.dtype is _F32:
            shape = rows.shape
            if len(shape) == 2 and shape[1] == self._width and shape[0] and rows.flags.c_contiguous:
                return self._session.run(self._outputs, {self._feeds_name: rows})[0]
        return self.scorer.predict(rows)  # converts, validates the shape, handles n == 0


@dataclass
class VariantScores:
    """Scores one variant produced for a batch.

    Attributes:
        variant: champion | challenger | canary.
        model: ``{"name", "version"}`` for the score records.
        index: positions (into the batch's rows) these scores are for; None means all rows.
        scores: float32 scores aligned with `index`.
    """

    variant: str
    model: dict[str, Any]
    index: np.ndarray | None
    scores: np.ndarray


# ---------------------------------------------------------------------------------- routing


_BUCKET_HASH = hashlib.blake2b(digest_size=8, key=CANARY_HASH_KEY)


def canary_bucket(entity: str) -> float:
    """The entity's stable position in [0, 1): keyed BLAKE2b-64 of its UTF-8 key / 2**64, i.e.
    ``int.from_bytes(blake2b(entity.encode(), digest_size=8, key=CANARY_HASH_KEY).digest(), "big") / 2**64``.

    Independent of Kafka's murmur2 partitioning (so a canary is not a set of partitions), the same
    on every process, host and restart. An entity is routed to the canary iff its bucket is below
    ``canary_share``, so raising the share only adds entities (nobody flips back and forth).
    """
    h = _BUCKET_HASH.copy()  # copying the keyed state is cheaper than re-keying
    h.update(entity.encode())
    return int.from_bytes(h.digest(), "big") / 18446744073709551616.0  # 2**64


def variant_for(entity: str, canary_share: float) -> str:
    """``"canary"`` or ``"champion"``: which alias answers `entity` at `canary_share`
    (given that a canary was being served)."""
    return CANARY if canary_share > 0.0 and canary_bucket(entity) < canary_share else CHAMPION


def served_version(registry: Registry, name: str, entity: str, at_ms: int, canary_share: float = 0.0,
                   model_alias: str = CHAMPION) -> tuple[str, int | None]:
    """Audit helper: (variant, version) that answered `entity` at epoch-ms `at_ms`, from the
    registry's audit log and the engine's `canary_share` at that time (an engine setting, not in
    the registry). It is what the aliases said; the engine follows them within `model_poll_ms` +
    one batch and keeps the previous version when it refuses one, so the score records' ``model``
    field is the ground truth (see docs/models.md, "Which model scored entity X at time T")."""
    if variant_for(entity, canary_share) == CANARY:
        version = registry.served_by(name, CANARY, at_ms)
        if version is not None:
            return CANARY, version
    return CHAMPION, registry.served_by(name, model_alias, at_ms)


# ---------------------------------------------------------------------------------- loading


def _refusal_code(message: str) -> str:
    """A stable short code for an `IncompatibleModel` message (the message keeps the detail)."""
    for needle, code in (
        ("sha256 mismatch", "sha256_mismatch"),
        ("feature_spec mismatch", "feature_spec_mismatch"),
        ("feature names differ", "feature_names_mismatch"),
        ("feature order differs", "feature_names_mismatch"),
        ("is missing", "missing_files"),
        ("differs from the manifest embedded", "manifest_edited"),
        ("graph does not match", "contract_violation"),
        ("not a valid ONNX model", "invalid_onnx"),
    ):
        if needle in message:
            return code
    return "invalid_model"


class _Refused(Exception):
    def __init__(self, version: int | None, code: str, detail: str) -> None:
        super().__init__(detail)
        self.version, self.code, self.detail = version, code, detail


def _load(cfg: EngineConfig, registry: Registry, alias_or_version: str | int) -> ServingModel:
    """Resolve an alias or version and load it verified; raises `_Refused` (version may be None)."""
    t0 = time.perf_counter()
    try:
        ref = registry.resolve(cfg.model_name, alias_or_version)
    except (LookupError, FileNotFoundError, ValueError) as exc:
        raise _Refused(None, "unresolvable", str(exc)) from None
    try:
        scorer = OnnxScorer.load(ref.path, expected_feature_spec=cfg.features.hash,
                                 expected_feature_names=cfg.features.names, threads=cfg.onnx_threads)
    except IncompatibleModel as exc:
        raise _Refused(ref.version, _refusal_code(str(exc)), str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. ONNX Runtime cannot build the session
        raise _Refused(ref.version, "load_error", f"{type(exc).__name__}: {exc}") from None
    return ServingModel(scorer, load_ms=(time.perf_counter() - t0) * 1000.0)


def load_serving_model(cfg: EngineConfig, alias: str | None = None) -> ServingModel:
    """Resolve `cfg.model_name`@`alias` (default `cfg.model_alias`) and load it verified."""
    alias = alias or cfg.model_alias
    try:
        return _load(cfg, Registry(cfg.registry), alias)
    except _Refused as exc:
        if exc.version is None:
            raise ModelUnavailable(
                f"no model {cfg.model_name!r} with alias {alias!r} in registry {cfg.registry}: {exc.detail}. "
                "Train and promote one with `streamscore train --events <history.jsonl>`."
            ) from None
        raise ModelUnavailable(
            f"refusing {cfg.model_name} v{exc.version} ({alias}): {exc.detail} To serve the previous version: "
            f"`streamscore model rollback {cfg.model_name} --alias {alias} --reason ...`."
        ) from None


# ---------------------------------------------------------------------------------- the router


def _file_sig(path: os.PathLike[str] | str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ModelRouter:
    """Which model scores which row. Owned by the processing loop; not thread-safe.

    Args:
        cfg: the engine config (model_name, model_alias, registry, model_poll_ms, shadow,
            canary_share, features, onnx_threads).
        clock: monotonic seconds (tests).
    """

    def __init__(self, cfg: EngineConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.registry = Registry(cfg.registry)
        self._clock = clock
        self._aliases_path = self.registry.root / cfg.model_name / "aliases.json"
        self._alias_of = {CHAMPION: cfg.model_alias, CHALLENGER: CHALLENGER, CANARY: CANARY}
        self._wanted = [CHAMPION] + ([CHALLENGER] if cfg.shadow else []) + ([CANARY] if cfg.canary_share > 0 else [])
        self._serving: dict[str, ServingModel] = {}
        self._retired: OrderedDict[int, ServingModel] = OrderedDict()
        # version -> (code, detail, signature of its files when refused); retried if the files change
        self._refused_versions: dict[int, tuple[str, str, tuple[Any, ...]]] = {}
        self._refusals: list[dict[str, Any]] = []
        self._notes: set[tuple[str, Any]] = set()  # warnings logged once
        self._buckets: dict[str, float] = {}
        self.refused_total = 0
        self.swaps = 0
        self._aliases_sig = _file_sig(self._aliases_path)
        self._aliases: dict[str, int] = {}
        self._next_poll = clock() + cfg.model_poll_ms / 1000.0
        self.champion = load_serving_model(cfg)  # refuse to start without a servable champion
        self._serving[CHAMPION] = self.champion
        self._aliases = self._current_aliases() or {}
        for variant in self._wanted[1:]:
            self._sync_variant(variant, self._aliases)
        log.info("serving %s", self._summary())

    # -- registry polling ----------------------------------------------------------------------

    def _current_aliases(self) -> dict[str, int] | None:
        try:
            return self.registry.aliases(self.cfg.model_name)
        except Exception as exc:  # noqa: BLE001 - keep serving whatever the registry does
            self._warn_once(("aliases", str(exc)), "cannot read aliases of %s in %s: %s; keeping the current models",
                            self.cfg.model_name, self.registry.root, exc)
            return None

    def refresh(self) -> bool:
        """Pick up registry changes. Called between micro-batches.

        True if `describe()` changed: a serving model was swapped, added or removed, or a version
        was refused (so the caller republishes it to metrics and /healthz).
        """
        now = self._clock()
        if now < self._next_poll:
            return False
        self._next_poll = now + self.cfg.model_poll_ms / 1000.0
        sig = _file_sig(self._aliases_path)
        if sig == self._aliases_sig and not self._refused_files_changed():
            return False
        aliases = self._current_aliases()
        if aliases is None:
            return False
        self._aliases_sig, self._aliases = sig, aliases
        before = self.describe()
        for variant in self._wanted:
            self._sync_variant(variant, aliases)
        changed = self.describe() != before
        if changed:
            log.info("serving %s", self._summary())
        return changed

    def _refused_files_changed(self) -> bool:
        """True if a refused version that an alias still wants has different files now (restored)."""
        for variant in self._wanted:
            version = self._aliases.get(self._alias_of[variant])
            refused = self._refused_versions.get(version) if version is not None else None
            if refused is not None and refused[2] != self._version_sig(version):
                return True
        return False

    def _version_sig(self, version: int) -> tuple[Any, ...]:
        vdir = self.registry.root / self.cfg.model_name / "versions" / str(version)
        return (_file_sig(vdir / "model.onnx"), _file_sig(vdir / "manifest.json"))

    def _sync_variant(self, variant: str, aliases: dict[str, int] | None) -> None:
        """Make `variant` serve what its alias points at, if that version is servable."""
        if aliases is None:
            return
        alias = self._alias_of[variant]
        current = self._serving.get(variant)
        want = aliases.get(alias)
        if want is None:
            if variant == CHAMPION:
                self._warn_once(("no-champion", current.version if current else None),
                                "alias %r of %s points at nothing; keeping v%s. Promote or roll back a version.",
                                alias, self.cfg.model_name, current.version if current else None)
            elif current is not None:
                log.info("%s alias %r removed: no longer serving %s v%d", variant, alias, current.name,
                         current.version)
                self._retire(self._serving.pop(variant))
            return
        if current is not None and current.version == want:
            return
        model = self._obtain(variant, alias, want)
        if model is None:
            return
        old = self._serving.get(variant)
        self._serving[variant] = model
        if variant == CHAMPION:
            self.champion = model
        self.swaps += 1
        log.info("%s: %s %s -> v%d (load %.1f ms)", variant, self.cfg.model_name,
                 f"v{old.version}" if old else "none", model.version, model.load_ms)
        if old is not None:
            self._retire(old)

    def _obtain(self, variant: str, alias: str, version: int) -> ServingModel | None:
        """A verified model of `version`: already loaded, retired, or loaded now; None if refused."""
        for m in self._serving.values():
            if m.version == version:
                return m
        if version in self._retired:
            return self._retired.pop(version)
        refused = self._refused_versions.get(version)
        if refused is not None:
            if refused[2] == self._version_sig(version):
                return None
            del self._refused_versions[version]  # its files changed: verify again
        sig = self._version_sig(version)
        try:
            model = _load(self.cfg, self.registry, version)
        except _Refused as exc:
            self._refuse(variant, alias, version, exc.code, exc.detail, sig)
            return None
        if model.version != version:  # manifest says otherwise: treat as tampering
            self._refuse(variant, alias, version, "version_mismatch",
                         f"manifest of version {version} says version {model.version}", sig)
            return None
        return model

    def _refuse(self, variant: str, alias: str, version: int, code: str, detail: str, sig: tuple[Any, ...]) -> None:
        self._refused_versions[version] = (code, detail, sig)
        self.refused_total += 1
        keeping = self._serving.get(variant)
        self._refusals.append({"alias": alias, "version": version, "reason": code, "detail": detail,
                               "at_ms": int(time.time() * 1000)})
        del self._refusals[:-MAX_REFUSALS]
        log.warning("REFUSED %s v%d for alias %r (%s): %s; %s", self.cfg.model_name, version, alias, code, detail,
                    f"keeping v{keeping.version}" if keeping else f"serving no {variant}")

    def _retire(self, model: ServingModel) -> None:
        if any(m is model for m in self._serving.values()):
            return
        self._retired[model.version] = model
        self._retired.move_to_end(model.version)
        while len(self._retired) > RETIRED_KEEP:
            self._retired.popitem(last=False)

    def _warn_once(self, key: tuple[str, Any], msg: str, *args: Any) -> None:
        if key not in self._notes:
            self._notes.add(key)
            log.warning(msg, *args)

    # -- introspection -------------------------------------------------------------------------

    @property
    def challenger(self) -> ServingModel | None:
        return self._serving.get(CHALLENGER)

    @property
    def canary(self) -> ServingModel | None:
        return self._serving.get(CANARY)

    @property
    def refused(self) -> list[dict[str, Any]]:
        """The most recent refusals (oldest first): ``{alias, version, reason, detail, at_ms}``."""
        return [dict(r) for r in self._refusals]

    def _summary(self) -> str:
        return ", ".join(f"{v}=v{m.version}" for v, m in self._serving.items())

    def describe(self) -> dict[str, Any]:
        """Serving versions per variant (for /healthz, the version gauge and logs).

        ``{variant: {"name", "version", "alias", "load_ms", ...}}`` with ``share`` on the canary
        entry. The champion entry (always present) also carries ``refused``: the recent refusals
        of any alias, ``[{alias, version, reason}]``, and ``refused_total``.
        """
        out: dict[str, Any] = {}
        for variant in (CHAMPION, CANARY, CHALLENGER):
            m = self._serving.get(variant)
            if m is None:
                continue
            entry = {**m.ref, "alias": self._alias_of[variant], "load_ms": round(m.load_ms, 1)}
            if variant == CANARY:
                entry["share"] = self.cfg.canary_share
            out[variant] = entry
        out[CHAMPION]["refused"] = [{k: r[k] for k in ("alias", "version", "reason")} for r in self._refusals]
        out[CHAMPION]["refused_total"] = self.refused_total
        return out

    # -- scoring -------------------------------------------------------------------------------

    def canary_mask(self, entities: Sequence[str]) -> np.ndarray:
        """Boolean [n]: which rows the canary answers (all False without a canary)."""
        share = self.cfg.canary_share
        if CANARY not in self._serving or share <= 0.0:
            return np.zeros(len(entities), dtype=bool)
        cache = self._buckets
        if len(cache) > BUCKET_CACHE_MAX:
            cache.clear()
        get = cache.get
        out = np.empty(len(entities), dtype=bool)
        for i, e in enumerate(entities):
            b = get(e)
            if b is None:
                b = cache[e] = canary_bucket(e)
            out[i] = b < share
        return out

    def score(self, entities: Sequence[str], rows: np.ndarray) -> list[VariantScores]:
        """Score a batch: one ONNX call per serving model (champion, canary, challenger)."""
        out: list[VariantScores] = []
        canary = self._serving.get(CANARY)
        mask = self.canary_mask(entities) if canary is not None else None
        if mask is not None and mask.any():
            to_canary = np.flatnonzero(mask)
            to_champion = np.flatnonzero(~mask)
            if len(to_champion):
                out.append(VariantScores(CHAMPION, self.champion.ref, to_champion,
                                         self.champion.predict(rows[to_champion])))
            out.append(VariantScores(CANARY, canary.ref, to_canary, canary.predict(rows[to_canary])))
        else:
            out.append(VariantScores(CHAMPION, self.champion.ref, None, self.champion.predict(rows)))
        challenger = self._serving.get(CHALLENGER)
        if challenger is not None:
            out.append(VariantScores(CHALLENGER, challenger.ref, None, challenger.predict(rows)))
        return out
