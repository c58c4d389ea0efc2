"""`streamscore model ...`: inspect and govern the model registry.

The registry root comes from ``--registry``, else ``$STREAMSCORE_REGISTRY``, else
``$STREAMSCORE_HOME/registry`` (``STREAMSCORE_HOME`` defaults to ``./.streamscore``). Every
change (register, promote, rollback, demote) is recorded in the model's audit log with the actor
(``--actor``, default ``$USER``) and the mandatory ``--reason``. Commands print human-readable
text; ``--json`` prints machine-readable JSON instead. Errors exit with status 1 and a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

model_app = typer.Typer(
    name="model",
    help="Inspect and govern the model registry (versions, aliases, audit log).",
    no_args_is_help=True,
    add_completion=False,
)

RegistryOpt = typer.Option(
    None, "--registry", help="Registry root [default: $STREAMSCORE_REGISTRY or $STREAMSCORE_HOME/registry "
                             "or ./.streamscore/registry]."
)
ActorOpt = typer.Option(None, "--actor", help="Who makes the change [default: $USER].")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")


def default_registry_root() -> Path:
    """The registry root used when --registry is not given (see module docstring)."""
    env = os.environ.get("STREAMSCORE_REGISTRY")
    if env:
        return Path(env)
    return Path(os.environ.get("STREAMSCORE_HOME", ".streamscore")) / "registry"


def _registry(root: Optional[Path]) -> Any:
    from models.registry import Registry

    return Registry(root if root is not None else default_registry_root())


@contextmanager
def _errors() -> Iterator[None]:
    from models.manifest import ManifestError
    from models.registry import RegistryError

    try:
        yield
    except (RegistryError, ManifestError, ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _print_json(obj: Any) -> None:
    import orjson

    typer.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() and abs(x) >= 1 else f"{x:.{digits}f}"
    return str(x)


def _ts(ms: Any) -> str:
    from datetime import datetime, timezone

    if not isinstance(ms, int):
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@model_app.command("list")
def list_models(
    name: Optional[str] = typer.Argument(None, help="Only this model."),
    registry: Optional[Path] = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List registered versions (all models, or NAME) with their aliases, kind, spec and test AUC."""
    with _errors():
        rows = _registry(registry).list(name)
        if as_json:
            _print_json([r.to_dict() for r in rows])
            return
        if not rows:
            typer.echo("no models registered")
            return
        typer.echo(f"{'MODEL':<16} {'VER':>4}  {'ALIASES':<20} {'STATUS':<10} {'KIND':<9} {'AUC':>7}  {'PARENT':>6}  "
                   f"{'CREATED':<24} FEATURE SPEC")
        for r in rows:
            typer.echo(f"{r.name:<16} {r.version:>4}  {','.join(r.aliases) or '-':<20} {r.status:<10} {r.model_kind:<9} "
                       f"{_fmt(r.auc):>7}  {_fmt(r.parent_version):>6}  {r.created_at:<24} {r.feature_spec}")


@model_app.command()
def show(
    name: str = typer.Argument(..., help="Model name."),
    ref: Optional[str] = typer.Argument(None, help="Version (3 or v3) or alias (champion); omit for an overview."),
    registry: Optional[Path] = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a model's aliases and versions, or one version's manifest (lineage, metrics, params)."""
    with _errors():
        info = _registry(registry).show(name, ref)
        if as_json:
            _print_json(info)
            return
        if ref is None:
            typer.echo(f"model {name}")
            typer.echo("aliases: " + (", ".join(f"{a} -> v{v}" for a, v in sorted(info["aliases"].items())) or "none"))
            for v in info["versions"]:
                rejected = f"  REJECTED: {v['status_reason']}" if v["status"] == "rejected" else ""
                typer.echo(f"  v{v['version']:<4} {','.join(v['aliases']) or '-':<20} AUC {_fmt(v['auc'])}  "
                           f"{v['created_at']}  {v['feature_spec']}{rejected}")
            return
        m = info["manifest"]
        tr = m["training"]
        test = m["metrics"].get("test") or {}
        base = (m["metrics"].get("baseline") or {}).get("test") or {}
        typer.echo(f"{m['name']} v{m['version']}  ({m['model_kind']})  aliases: {', '.join(info['aliases']) or '-'}")
        typer.echo(f"status        {info['status']}" + (f": {info['status_reason']}" if info["status_reason"] else ""))
        typer.echo(f"path          {info['path']}")
        typer.echo(f"sha256        {m['sha256']}")
        typer.echo(f"created       {m['created_at']}   parent v{_fmt(m['parent_version'])}")
        typer.echo(f"feature spec  {m['feature_spec']}  ({len(m['feature_names'])} inputs into {m['input_name']!r})")
        typer.echo(f"output        {m['output']}")
        typer.echo(f"label         {tr['label']}")
        typer.echo(f"training data {_ts(tr['data_start_ms'])} .. {_ts(tr['data_end_ms'])}  rows {tr['n_rows']:,}  "
                   f"digest {tr['digest']}")
        typer.echo(f"split         {tr.get('split')}")
        for label, mm in (("test", test), ("baseline", base)):
            if mm:
                typer.echo(f"{label:<13} n={mm.get('n')} base rate {_fmt(mm.get('base_rate'))}  AUC {_fmt(mm.get('auc'))}"
                           f"  log loss {_fmt(mm.get('log_loss'))}  Brier {_fmt(mm.get('brier'))}  ECE {_fmt(mm.get('ece'))}")
        typer.echo(f"params        {m['params']}")
        if m.get("lineage"):
            typer.echo(f"lineage       {m['lineage']}")


@model_app.command()
def register(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Directory with model.onnx + manifest.json."),
    name: Optional[str] = typer.Option(None, help="Register under this name [default: the manifest's name]."),
    reason: str = typer.Option(..., help="Why this model is registered (audit log)."),
    actor: Optional[str] = ActorOpt,
    registry: Optional[Path] = RegistryOpt,
) -> None:
    """Register DIRECTORY (model.onnx + manifest.json) as a new version.

    Use it for models exported or trained elsewhere. If the manifest records a sha256 it must
    match model.onnx; the registry re-embeds the manifest and re-hashes the stored bytes.
    """
    from models.manifest import Manifest, sha256_hex

    with _errors():
        data = (directory / "model.onnx").read_bytes()
        manifest = Manifest.from_json((directory / "manifest.json").read_bytes())
        if manifest.sha256 is not None and manifest.sha256 != sha256_hex(data):
            raise ValueError(f"{directory}/model.onnx does not match the sha256 in its manifest.json; refusing")
        target = name or manifest.name
        version = _registry(registry).register(target, data, manifest, actor=actor, reason=reason)
        typer.echo(f"registered {target} v{version}")


def _moved(name: str, alias: str, before: int | None, after: int | None) -> str:
    """The one-line report of an alias change, e.g. ``purchase champion: v1 -> v2``."""
    def show(v: int | None) -> str:
        return "none" if v is None else f"v{v}"

    return f"{name} {alias}: {show(before)} -> {show(after)}"


@model_app.command()
def promote(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version to promote."),
    alias: str = typer.Option("champion", help="Alias to point at VERSION (champion, challenger, canary, ...)."),
    reason: str = typer.Option(..., help="Why (audit log)."),
    actor: Optional[str] = ActorOpt,
    registry: Optional[Path] = RegistryOpt,
) -> None:
    """Point ALIAS (default champion) at VERSION; running engines pick it up on their next load.

    A version the retraining gate rejected can be promoted this way (the only way); the audit log
    records the promotion like any other."""
    with _errors():
        reg = _registry(registry)
        before = reg.aliases(name).get(alias)
        if before == version:
            typer.echo(f"{name} {alias} is already v{version}; nothing changed")
            return
        status, why = reg.status(name, version)
        reg.promote(name, version, alias=alias, actor=actor, reason=reason, allow_rejected=True)
        typer.echo(_moved(name, alias, before, version))
        if status == "rejected":
            typer.echo(f"note: v{version} had been rejected ({why}); promoted explicitly")


@model_app.command()
def rollback(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Option("champion", help="Alias to roll back."),
    reason: str = typer.Option(..., help="Why (audit log)."),
    actor: Optional[str] = ActorOpt,
    registry: Optional[Path] = RegistryOpt,
) -> None:
    """Point ALIAS back at the version it held before its last promote/demote."""
    with _errors():
        reg = _registry(registry)
        before = reg.aliases(name).get(alias)
        version = reg.rollback(name, alias=alias, actor=actor, reason=reason)
        typer.echo(_moved(name, alias, before, version) + " (rolled back)")


@model_app.command()
def demote(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Option(..., help="Alias to remove."),
    reason: str = typer.Option(..., help="Why (audit log)."),
    actor: Optional[str] = ActorOpt,
    registry: Optional[Path] = RegistryOpt,
) -> None:
    """Remove ALIAS so it points at nothing (e.g. end a canary); `rollback` restores it."""
    with _errors():
        version = _registry(registry).demote(name, alias=alias, actor=actor, reason=reason)
        typer.echo(_moved(name, alias, version, None))


@model_app.command()
def diff(
    name: str = typer.Argument(..., help="Model name."),
    v1: str = typer.Argument(..., help="Version or alias."),
    v2: str = typer.Argument(..., help="Version or alias."),
    registry: Optional[Path] = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compare two versions: test metrics (with deltas), feature spec, params, training data."""
    with _errors():
        d = _registry(registry).diff(name, v1, v2)
        if as_json:
            _print_json(d)
            return
        typer.echo(f"{name}: v{d['v1']} -> v{d['v2']}")
        typer.echo(f"kind          {d['model_kind']['v1']} -> {d['model_kind']['v2']}")
        fs = d["feature_spec"]
        typer.echo(f"feature spec  {'same' if fs['same'] else 'DIFFERENT'}: {fs['v1']} -> {fs['v2']}")
        if fs["added"] or fs["removed"] or fs["reordered"]:
            typer.echo(f"  added {fs['added']}  removed {fs['removed']}  reordered {fs['reordered']}")
        typer.echo("metrics")
        shown = ("auc", "log_loss", "brier", "ece", "base_rate", "n")
        for prefix in ("test.", "baseline.test."):
            for metric in shown:
                m = d["metrics"].get(prefix + metric)
                if m is None:
                    continue
                delta = f"{m['delta']:+.4f}" if m["delta"] is not None else ""
                typer.echo(f"  {prefix + metric:<28} {_fmt(m['v1']):>10} -> {_fmt(m['v2']):>10}  {delta}")
        typer.echo("params" + ("" if d["params"] else "        same"))
        for key, p in d["params"].items():
            typer.echo(f"  {key:<28} {p['v1']!r} -> {p['v2']!r}")
        typer.echo("training" + ("" if d["training"] else "      same"))
        for key, p in d["training"].items():
            v1s, v2s = (_ts(p["v1"]), _ts(p["v2"])) if key.endswith("_ms") else (p["v1"], p["v2"])
            typer.echo(f"  {key:<28} {v1s} -> {v2s}")


@model_app.command()
def audit(
    name: str = typer.Argument(..., help="Model name."),
    registry: Optional[Path] = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Print the model's audit log (registrations and alias changes), oldest first."""
    with _errors():
        entries = _registry(registry).audit(name)
        if as_json:
            _print_json(entries)
            return
        for e in entries:
            target = f"{e['alias']} -> v{e['version']}" if e.get("alias") else f"v{e['version']}"
            relation = "parent" if e["action"] == "register" else "was"
            frm = f" ({relation} v{e['from_version']})" if e.get("from_version") is not None else ""
            typer.echo(f"{e['ts']}  {e['actor']:<12} {e['action']:<9} {target}{frm}  {e.get('reason') or ''}")


@model_app.command("who-served")
def who_served(
    name: str = typer.Argument(..., help="Model name."),
    at: str = typer.Option(..., "--at", help="Time: ISO 8601 (naive = UTC) or epoch milliseconds."),
    alias: str = typer.Option("champion", help="Alias."),
    registry: Optional[Path] = RegistryOpt,
) -> None:
    """Which version held ALIAS at time --at, according to the audit log."""
    from models.registry import parse_time_ms

    with _errors():
        at_ms = parse_time_ms(at)
        version = _registry(registry).served_by(name, alias, at_ms)
        when = _ts(at_ms)
        if version is None:
            typer.echo(f"no version of {name} held {alias} at {when}")
            return
        typer.echo(f"{name} {alias} at {when}: v{version}")
