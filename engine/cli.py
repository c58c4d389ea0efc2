"""The `streamscore` command line.

Subcommands: run, topics, train, features, demo, and the mounted groups broker, gen, model.
Heavy modules are imported inside commands so `--help` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from engine.cli_broker import broker_app
from engine.cli_gen import gen_app
from models.cli import model_app

app = typer.Typer(
    name="streamscore",
    help="Streaming real-time scoring: Kafka clicks in, windowed RocksDB features, ONNX scores out.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(broker_app, name="broker", help="Manage the local single-node Apache Kafka broker.")
app.add_typer(gen_app, name="gen", help="Generate synthetic clickstreams (files or live topics).")
app.add_typer(model_app, name="model", help="Inspect and govern the model registry.")
topics_app = typer.Typer(help="Create the engine's topics.", no_args_is_help=True)
features_app = typer.Typer(help="Inspect feature specs and build offline feature tables.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(features_app, name="features")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML engine config (see docs/configuration.md).")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _bootstrap(cfg_bootstrap: Optional[str]) -> str:
    from engine.broker import BrokerNotRunning, resolve_bootstrap

    if cfg_bootstrap:
        return cfg_bootstrap
    try:
        return resolve_bootstrap()
    except BrokerNotRunning as exc:
        _fail(str(exc))
        raise  # unreachable


def _load(config: Optional[Path], **overrides):  # type: ignore[no-untyped-def]
    from engine.config import ConfigError, load_config

    try:
        return load_config(config, **overrides)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    group_id: Optional[str] = typer.Option(None, help="Consumer group id (processes sharing it share partitions)."),
    max_seconds: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    max_events: Optional[int] = typer.Option(None, help="Stop after consuming this many messages."),
    idle_exit: Optional[float] = typer.Option(None, help="Stop after this many seconds without input."),
    metrics_port: Optional[int] = typer.Option(None, help="Serve /metrics and /healthz on this port (0: off)."),
    metrics_host: Optional[str] = typer.Option(None, help="Address the metrics endpoint binds."),
    state_dir: Optional[Path] = typer.Option(None, help="Directory of the per-partition RocksDB stores."),
    registry: Optional[Path] = typer.Option(None, help="Model registry root."),
    include_features: Optional[bool] = typer.Option(None, help="Write feature vectors into score records."),
    shadow: Optional[bool] = typer.Option(None, "--shadow/--no-shadow", help="Shadow-score with the challenger alias."),
    canary_share: Optional[float] = typer.Option(None, help="Share of entities answered by the canary alias (0: off)."),
    log_level: str = typer.Option("INFO", help="Python log level."),
) -> None:
    """Run one scoring process: consume clicks, score every event, publish to the scores topic.

    Start more processes with the same --group-id to scale out. Stops cleanly on SIGTERM/Ctrl-C
    (finishes the batch, commits) and prints a JSON summary.
    """
    import orjson

    from engine.runner import ScoringEngine, TopicsMissing
    from engine.serving import ModelUnavailable

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = _load(config, group_id=group_id, metrics_port=metrics_port, metrics_host=metrics_host, state_dir=state_dir,
                registry=registry, include_features=include_features, shadow=shadow, canary_share=canary_share)
    bootstrap = _bootstrap(cfg.bootstrap_servers)
    try:
        engine = ScoringEngine(cfg, bootstrap)
    except (ModelUnavailable, TopicsMissing) as exc:
        _fail(str(exc))
    stats = engine.run(max_seconds=max_seconds, idle_exit_s=idle_exit, max_events=max_events)
    typer.echo(orjson.dumps(stats.as_dict()).decode())


@topics_app.command("create")
def topics_create(
    config: Optional[Path] = ConfigOpt,
    partitions: int = typer.Option(4, help="Partitions of the input and scores topics."),
) -> None:
    """Create the input, scores and dead-letter topics (idempotent)."""
    from engine.topics import TopicSpec, ensure_topics

    cfg = _load(config)
    bootstrap = _bootstrap(cfg.bootstrap_servers)
    specs = [
        TopicSpec(cfg.input_topic, partitions),
        TopicSpec(cfg.scores_topic, partitions),
        TopicSpec(cfg.dlq_topic, 1, config={"max.message.bytes": "2097152"}),
    ]
    if cfg.sessions.closed_topic is not None:
        specs.append(TopicSpec(cfg.sessions.closed_topic, partitions))
    ensure_topics(bootstrap, specs)
    typer.echo(f"topics ready on {bootstrap}: " + " ".join(f"{t.name}({t.partitions})" for t in specs))


@features_app.command("show")
def features_show(config: Optional[Path] = ConfigOpt) -> None:
    """Print the running feature spec: hash, columns, and its YAML form."""
    import yaml

    spec = _load(config).features
    typer.echo(f"spec {spec.name}  hash {spec.hash}  {spec.width} columns")
    typer.echo(yaml.safe_dump(spec.to_dict(), sort_keys=False))


@app.command()
def train(
    events: Path = typer.Option(..., exists=True, dir_okay=False, help="Historical event log in topic order: .jsonl, .jsonl.gz or .parquet."),
    partitions: int = typer.Option(4, help="Partition count of the topic the log came from (lateness is per partition)."),
    horizon: str = typer.Option("1h", help="Label: purchase within this horizon after the event (e.g. 30m, 1h)."),
    config: Optional[Path] = ConfigOpt,
    registry: Optional[Path] = typer.Option(None, help="Model registry root."),
    promote: bool = typer.Option(True, help="Promote to champion if it beats the current champion."),
    model_kind: Optional[list[str]] = typer.Option(
        None, help="Kinds eligible to be registered: lightgbm, logreg (repeatable) [default: both, the better "
                   "on the holdout wins]."),
) -> None:
    """Build a point-in-time training set with the offline feature executor, train LightGBM and a
    logistic-regression baseline, export to ONNX, verify, evaluate on a time-gapped holdout,
    register with lineage, and (optionally) promote."""
    from features.spec import parse_duration
    from models.pipeline import train_from_log
    from models.train import KINDS

    kinds = tuple(model_kind or KINDS)
    if any(k not in KINDS for k in kinds):
        _fail(f"--model-kind must be one of {', '.join(KINDS)}, got {', '.join(kinds)}")
    cfg = _load(config, registry=registry)
    result = train_from_log(
        events, cfg.features, num_partitions=partitions, registry_root=cfg.registry,
        model_name=cfg.model_name, horizon_ms=parse_duration(horizon), schema=cfg.schema, promote=promote,
        candidates=kinds,
    )
    typer.echo(result.summary())


@app.command()
def demo(
    events: int = typer.Option(60_000, help="Historical events to train on."),
    live_seconds: float = typer.Option(20.0, help="How long to stream live events through the engine."),
    rate: int = typer.Option(2_000, help="Live events per second."),
    keep_broker: bool = typer.Option(False, help="Leave the broker running afterwards."),
) -> None:
    """The whole loop on this machine: broker, history, training, live scoring, summary."""
    from engine.demo import run_demo

    sys.exit(run_demo(history_events=events, live_seconds=live_seconds, rate=rate, keep_broker=keep_broker))


if __name__ == "__main__":
    app()
