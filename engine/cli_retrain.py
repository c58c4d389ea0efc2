"""`streamscore retrain worker|once`: the retraining worker and one-shot retraining (docs/retraining.md).

Exit codes: 0 when the run ended with a decision (promoted, rejected, registered, duplicate);
2 with one ``error:`` line for a user error (bad trigger file, empty or too-small window, topic
missing, broker unreachable, failed training run). The champion is unchanged in every error case.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Optional

import typer

retrain_app = typer.Typer(
    help="Retrain from the event history on triggers, gate the candidate, promote or reject it.",
    no_args_is_help=True,
    add_completion=False,
)
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML engine config (see docs/configuration.md).")


def _fail(msg: str) -> None:
    from engine.cli import _fail as fail  # imported late: engine.cli mounts this module

    fail(msg)


def _config(config: Optional[Path], registry: Optional[Path]) -> Any:
    from engine.cli import _load

    return _load(config, registry=registry)


def _bootstrap(cfg: Any) -> str:
    from engine.cli import _bootstrap as bootstrap

    return bootstrap(cfg.bootstrap_servers)


@retrain_app.command()
def worker(
    config: Optional[Path] = ConfigOpt,
    registry: Optional[Path] = typer.Option(None, help="Model registry root."),
    idle_exit: Optional[float] = typer.Option(None, help="Stop after this many seconds without a trigger."),
    max_triggers: Optional[int] = typer.Option(None, help="Stop after handling this many triggers."),
    log_level: str = typer.Option("INFO", help="Python log level."),
) -> None:
    """Consume retraining triggers (retrain.trigger_topic) and handle each to an outcome.

    Per trigger: read the window's history from the input topic, train, evaluate against the
    champion on the same holdout, promote if the gate passes or register the candidate as rejected,
    publish an outcome record to retrain.outcome_topic, then commit the trigger. Workers sharing
    the group (retrain.group_id) split the triggers. Stops cleanly on SIGTERM/Ctrl-C after the
    trigger in progress and prints a JSON summary.
    """
    import orjson
    from confluent_kafka import KafkaException

    from engine.retrain_worker import RetrainWorker, WorkerSetupError

    from engine.logs import configure_logging

    try:
        configure_logging(log_level)
    except ValueError as exc:
        _fail(str(exc))
    cfg = _config(config, registry)
    bootstrap = _bootstrap(cfg)
    try:
        w = RetrainWorker(cfg, bootstrap)
    except WorkerSetupError as exc:
        _fail(str(exc))
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop())
    try:
        stats = w.run(idle_exit_s=idle_exit, max_triggers=max_triggers)
    except KafkaException as exc:
        _fail(f"Kafka failed; the trigger in progress stays uncommitted for the next worker: {exc}")
        return
    except RuntimeError as exc:  # an outcome the broker did not acknowledge
        _fail(str(exc))
        return
    typer.echo(orjson.dumps(stats.as_dict()).decode())


@retrain_app.command()
def once(
    trigger: Optional[Path] = typer.Option(None, "--trigger", dir_okay=False, help="A trigger record (JSON file)."),
    window_days: Optional[float] = typer.Option(None, help="Instead of --trigger: a schedule trigger for the last D days."),
    end: Optional[str] = typer.Option(None, help="End of the --window-days window: ISO 8601 or epoch ms [default: now]."),
    events: Optional[Path] = typer.Option(None, dir_okay=False, help="Train from this event log (.jsonl, .jsonl.gz, "
                                                                     ".parquet) instead of the input topic."),
    partitions: int = typer.Option(4, help="With --events: partitions of the topic the log came from."),
    config: Optional[Path] = ConfigOpt,
    registry: Optional[Path] = typer.Option(None, help="Model registry root."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome record as JSON."),
) -> None:
    """Handle one trigger now: from --trigger FILE.json, or a schedule trigger built from
    --window-days (and --end). History comes from the input topic, or from --events FILE."""
    import orjson

    from engine.history import HistoryUnavailable
    from models.registry import Registry, RegistryError, parse_time_ms
    from models.retraining import History, RetrainError, retrain, schedule_trigger
    from models.trigger import RetrainTrigger, TriggerError

    if (trigger is None) == (window_days is None):
        _fail("give exactly one of --trigger FILE.json or --window-days D")
    if events is not None and not events.is_file():
        _fail(f"event log {events} does not exist")
    cfg = _config(config, registry)
    reg = Registry(cfg.registry)
    try:
        if trigger is not None:
            if not trigger.is_file():
                _fail(f"trigger file {trigger} does not exist")
            trig = RetrainTrigger.from_json(trigger.read_bytes())
        else:
            if window_days is None or window_days <= 0:
                _fail(f"--window-days must be > 0, got {window_days}")
            end_ms = parse_time_ms(end) if end is not None else int(time.time() * 1000)
            champion = reg.aliases(cfg.model_name).get(cfg.model_alias) if cfg.model_name in reg.models() else None
            trig = schedule_trigger(cfg.model_name, cfg.features.hash, end_ms, int(window_days * 86_400_000),
                                    champion, source={"cli": "streamscore retrain once"})
    except (TriggerError, ValueError) as exc:
        _fail(str(exc))
        return

    if events is not None:
        from features.eventlog import read_events

        def load(_from_ms: int | None, _to_ms: int) -> History:
            invalid: dict[str, int] = {}
            return History(events=list(read_events(events, cfg.schema, invalid)), num_partitions=partitions,
                           invalid=invalid, source={"kind": "file", "path": str(events)})
    else:
        from engine.retrain_worker import topic_history_loader

        load = topic_history_loader(cfg, _bootstrap(cfg), progress=typer.echo)
    try:
        outcome = retrain(trig, load, cfg.features, reg, cfg.retrain.policy, alias=cfg.model_alias,
                          actor="retrain-once", log=typer.echo)
    except (RetrainError, HistoryUnavailable, RegistryError) as exc:
        _fail(str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - a failed training run: one line, champion untouched
        _fail(f"training failed: {type(exc).__name__}: {exc}")
        return
    if as_json:
        typer.echo(orjson.dumps(outcome.to_record(), option=orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        typer.echo(outcome.summary())
