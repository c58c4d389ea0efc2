"""The `streamscore` command line.

Subcommands: run, topics, train, features, demo, and the mounted groups broker, gen, model.
Heavy modules are imported inside commands so `--help` stays fast.

User errors are handled in one place, the root group (`_Root`): an exception listed in
`USER_ERRORS` (bad configuration, unreadable or invalid logs, broker not running or unreachable,
missing topics, no model, registry problems) ends in one `error: ...` line on stderr saying what
to fix and exit code 2 (the command line or configuration is wrong) or 1 (the environment or
the data is); `run` exits 3 when --idle-exit gave up waiting for an assignment. Anything else is
a bug and keeps its traceback. `--debug` (or STREAMSCORE_DEBUG=1) shows the traceback of user
errors too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from engine.cli_broker import broker_app
from engine.cli_gen import gen_app
from engine.cli_retrain import retrain_app
from models.cli import model_app

# Exceptions whose message tells the user what to fix: (module, class, exit code, message prefix).
# Matched by class through `sys.modules`, so handling an error imports nothing heavy: an exception
# of a module that was never imported cannot have been raised.
USER_ERRORS: tuple[tuple[str, str, int, str], ...] = (
    ("engine.config", "ConfigError", 2, ""),
    ("features.spec", "DurationError", 2, ""),
    ("engine.broker", "BrokerError", 1, ""),  # not running, unreachable, failed to start
    ("engine.topics", "TopicError", 1, ""),
    ("engine.runner", "TopicsMissing", 1, ""),
    ("engine.runner", "DeliveryFailed", 1, ""),
    ("engine.serving", "ModelUnavailable", 1, ""),
    ("features.eventlog", "EventLogError", 1, ""),
    ("models.pipeline", "NoValidEvents", 1, ""),
    ("models.split", "SplitError", 1, "not enough history for a time-gapped holdout, give a longer log: "),
    ("models.registry", "RegistryError", 1, ""),
    ("models.manifest", "ManifestError", 1, ""),
)
DEBUG = "streamscore.debug"  # ctx.meta key set by the root callback


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """(message, exit code) if `exc` is a user error (see `USER_ERRORS`), else None (a bug)."""
    for module, name, code, prefix in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return prefix + " ".join(str(exc).split()), code
    kafka = sys.modules.get("confluent_kafka")
    if kafka is not None and isinstance(exc, kafka.KafkaException):
        err = exc.args[0] if exc.args else None
        return f"Kafka: {err.str() if isinstance(err, kafka.KafkaError) else exc}", 1
    if isinstance(exc, OSError) and exc.filename is not None:  # a path that is missing, unreadable, ...
        return f"{exc.filename}: {exc.strerror or exc}", 1
    return None


class _Root(TyperGroup):
    """The root command group: turns user errors into one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # click's own exits and usage errors are not in USER_ERRORS
            known = user_error(exc)
            if known is None or ctx.meta.get(DEBUG):
                raise
            message, code = known
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    name="streamscore",
    help="Streaming real-time scoring: Kafka clicks in, windowed RocksDB features, ONNX scores out.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Root,
    pretty_exceptions_enable=False,  # plain tracebacks for bugs (never with locals); user errors: one line
)
app.add_typer(broker_app, name="broker", help="Manage the local single-node Apache Kafka broker.")
app.add_typer(gen_app, name="gen", help="Generate synthetic clickstreams (files or live topics).")
app.add_typer(model_app, name="model", help="Inspect and govern the model registry.")
app.add_typer(retrain_app, name="retrain", help="Retrain from the input topic on triggers, gate, promote.")
topics_app = typer.Typer(help="Create the engine's topics.", no_args_is_help=True)
features_app = typer.Typer(help="Inspect feature specs and build offline feature tables.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective engine configuration.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(features_app, name="features")
app.add_typer(config_app, name="config")

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML engine config (see docs/configuration.md).")


@app.callback()
def _root(ctx: typer.Context, debug: bool = typer.Option(
        False, "--debug", envvar="STREAMSCORE_DEBUG", help="Show the full traceback of user errors too.")) -> None:
    ctx.meta[DEBUG] = debug


def _fail(msg: str, code: int = 2) -> None:
    """End a command on a usage error found by the command itself: one line, exit `code`."""
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _bootstrap(cfg_bootstrap: Optional[str]) -> str:
    from engine.broker import resolve_bootstrap

    return cfg_bootstrap or resolve_bootstrap()


def _load(config: Optional[Path], **overrides):  # type: ignore[no-untyped-def]
    from engine.config import load_config

    return load_config(config, **overrides)


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    group_id: Optional[str] = typer.Option(None, help="Consumer group id (processes sharing it share partitions)."),
    max_seconds: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    max_events: Optional[int] = typer.Option(None, help="Stop after consuming this many messages."),
    idle_exit: Optional[float] = typer.Option(None, help=(
        "Stop after this many seconds idle: holding partitions, all caught up, no input. Waiting for an "
        "assignment is not idle; holding none for this + 3 session timeouts exits with code 3.")),
    metrics_port: Optional[int] = typer.Option(None, help="Serve /metrics and /healthz on this port (0: off)."),
    metrics_host: Optional[str] = typer.Option(None, help="Address the metrics endpoint binds."),
    state_dir: Optional[Path] = typer.Option(None, help="Directory of the per-partition RocksDB stores."),
    registry: Optional[Path] = typer.Option(None, help="Model registry root."),
    include_features: Optional[bool] = typer.Option(None, help="Write feature vectors into score records."),
    shadow: Optional[bool] = typer.Option(None, "--shadow/--no-shadow", help="Shadow-score with the challenger alias."),
    canary_share: Optional[float] = typer.Option(None, help="Share of entities answered by the canary alias (0: off)."),
    log_level: str = typer.Option("INFO", help="Python log level."),
    log_format: str = typer.Option("text", help="Log lines as text or json (one JSON object per line)."),
) -> None:
    """Run one scoring process: consume clicks, score every event, publish to the scores topic.

    Start more processes with the same --group-id to scale out. Stops cleanly on SIGTERM/Ctrl-C
    (finishes the batch, commits) and prints a JSON summary: `stop_reason` says why it stopped and
    `unconsumed` which held partitions still had input. Exit code 0, or 3 when --idle-exit gave up
    waiting for an assignment (input may be left unconsumed).
    """
    import orjson
    from confluent_kafka import KafkaError, KafkaException

    from engine.runner import NO_ASSIGNMENT, ScoringEngine

    from engine.logs import configure_logging

    try:
        configure_logging(log_level, log_format)
    except ValueError as exc:
        _fail(str(exc))
    cfg = _load(config, group_id=group_id, metrics_port=metrics_port, metrics_host=metrics_host, state_dir=state_dir,
                registry=registry, include_features=include_features, shadow=shadow, canary_share=canary_share)
    bootstrap = _bootstrap(cfg.bootstrap_servers)
    try:
        engine = ScoringEngine(cfg, bootstrap)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if not isinstance(err, KafkaError) or err.code() != KafkaError._INVALID_ARG:
            raise
        _fail(f"a Kafka client refused its settings: {err.str()} (check the kafka: section and "
              "STREAMSCORE_KAFKA__* variables; `streamscore config show`)")
    stats = engine.run(max_seconds=max_seconds, idle_exit_s=idle_exit, max_events=max_events)
    typer.echo(orjson.dumps(stats.as_dict()).decode())
    if stats.stop_reason == NO_ASSIGNMENT:
        typer.secho(f"error: no partition of {cfg.input_topic!r} was assigned to this process while --idle-exit "
                    f"waited (group {cfg.group_id!r}: do other members hold them all?); input may be left unconsumed",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(3)


@topics_app.command("create")
def topics_create(
    config: Optional[Path] = ConfigOpt,
    partitions: int = typer.Option(4, help="Partitions of the input and scores topics."),
) -> None:
    """Create the input, scores, dead-letter, retraining trigger and outcome topics (idempotent).

    The input topic is the history the retraining worker trains from: it is created with
    retention.ms = retrain.history_retention (default 30 days; -1 keeps it forever). An existing
    topic is left as it is; a shorter retention on it is reported."""
    from engine.topics import TopicError, TopicSpec, ensure_topics, topic_config

    cfg = _load(config)
    bootstrap = _bootstrap(cfg.bootstrap_servers)
    rc = cfg.retrain
    try:
        ensure_topics(bootstrap, [
            TopicSpec(cfg.input_topic, partitions, config={"retention.ms": str(rc.history_retention)}),
            TopicSpec(cfg.scores_topic, partitions),
            TopicSpec(cfg.dlq_topic, 1, config={"max.message.bytes": "2097152"}),
            TopicSpec(rc.trigger_topic, 1),
            TopicSpec(rc.outcome_topic, 1),
            *([TopicSpec(cfg.sessions.closed_topic, partitions)] if cfg.sessions.closed_topic is not None else []),
            *([TopicSpec(cfg.monitor.label_topic, partitions)] if cfg.monitor.label_topic is not None else []),
        ], client=cfg.kafka)
        retention = int(topic_config(bootstrap, cfg.input_topic, client=cfg.kafka).get("retention.ms", "-1"))
    except TopicError as exc:
        _fail(str(exc))
        return
    typer.echo(f"topics ready on {bootstrap}: {cfg.input_topic}({partitions}) {cfg.scores_topic}({partitions}) "
               f"{cfg.dlq_topic}(1) {rc.trigger_topic}(1) {rc.outcome_topic}(1)"
               + (f" {cfg.sessions.closed_topic}({partitions})" if cfg.sessions.closed_topic is not None else "")
               + (f" {cfg.monitor.label_topic}({partitions})" if cfg.monitor.label_topic is not None else ""))
    if retention != -1 and (rc.history_retention == -1 or retention < rc.history_retention):
        typer.secho(f"note: {cfg.input_topic} keeps {retention} ms of history, less than retrain.history_retention "
                    f"({rc.history_retention}); retraining windows cannot reach further back", err=True)


@config_app.command("show")
def config_show(
    config: Optional[Path] = ConfigOpt,
    full_spec: bool = typer.Option(False, help="Print the whole feature spec instead of its name and hash."),
) -> None:
    """Print the effective configuration (defaults < YAML < environment) as YAML, secrets masked.

    Secrets: the value of any key containing password, secret, token, jaas, credential, ... is
    shown as *****."""
    import yaml

    from engine.config import config_to_plain, masked

    cfg = _load(config)
    plain = config_to_plain(cfg)
    if not full_spec:
        plain["features"] = {"name": cfg.features.name, "hash": cfg.features.hash, "columns": cfg.features.width}
    typer.echo(yaml.safe_dump(masked(plain), sort_keys=False), nl=False)


@features_app.command("show")
def features_show(config: Optional[Path] = ConfigOpt) -> None:
    """Print the running feature spec: hash, columns, and its YAML form."""
    import yaml

    spec = _load(config).features
    typer.echo(f"spec {spec.name}  hash {spec.hash}  {spec.width} columns")
    typer.echo(yaml.safe_dump(spec.to_dict(), sort_keys=False))


@app.command()
def train(
    events: Path = typer.Option(..., exists=True, dir_okay=False, help="Historical event log in topic order: .jsonl[.gz], .csv[.gz] or .parquet (fields mapped by the config's schema)."),
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
    from engine.progress import Progress
    from features.spec import parse_duration
    from models.pipeline import train_from_log
    from models.train import KINDS

    kinds = tuple(model_kind or KINDS)
    if any(k not in KINDS for k in kinds):
        _fail(f"--model-kind must be one of {', '.join(KINDS)}, got {', '.join(kinds)}")
    cfg = _load(config, registry=registry)
    with Progress() as progress:
        def say(line: str) -> None:
            progress.close()  # a terminal's status line ends before a log line
            typer.echo(line)

        result = train_from_log(
            events, cfg.features, num_partitions=partitions, registry_root=cfg.registry,
            model_name=cfg.model_name, horizon_ms=parse_duration(horizon), schema=cfg.schema, promote=promote,
            candidates=kinds, progress=progress, log=say,
        )
    typer.echo(result.summary())


@app.command()
def demo(
    events: int = typer.Option(60_000, help="Historical events to train v1 on."),
    rate: int = typer.Option(2_000, help="Live events per second."),
    stable_events: int = typer.Option(16_000, help="Live events before the drift is injected."),
    after_swap_events: int = typer.Option(12_000, help="Live events to stream once the engine serves the retrained version."),
    max_live_seconds: float = typer.Option(150.0, help="Give up (exit 1) if the loop has not closed after this long."),
    keep_broker: bool = typer.Option(False, help="Leave the broker running afterwards."),
) -> None:
    """The closed loop on this machine: broker, history, v1, live scoring, drift, trigger, retrained v2
    promoted and served, summary and PNG."""
    from engine.demo import run_demo

    sys.exit(run_demo(history_events=events, rate=rate, stable_events=stable_events,
                      after_swap_events=after_swap_events, live_max_seconds=max_live_seconds, keep_broker=keep_broker))


if __name__ == "__main__":
    app()
