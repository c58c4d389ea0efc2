"""`streamscore broker start|stop|status|logs`: the local single-node Kafka broker (engine/broker.py).

The broker's home is `$STREAMSCORE_HOME/broker` (default ./.streamscore/broker); the jar cache is
`$STREAMSCORE_KAFKA_CACHE` (default .cache/kafka-4.1.1 in the repository).
"""

from __future__ import annotations

import json
import time

import typer

from engine.broker import KAFKA_VERSION, BrokerError, LocalBroker, tail_lines

broker_app = typer.Typer(
    help="Manage the local single-node Apache Kafka broker.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(msg: str, code: int = 1) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@broker_app.command()
def start(
    timeout: float = typer.Option(60.0, help="Seconds to wait for the broker to answer."),
) -> None:
    """Start the local Kafka 4.1.1 broker (KRaft, one node) and print its bootstrap address.

    Idempotent: prints the address of the broker already running from this home.
    The first run fetches Kafka's jars with Maven (~20 s); later starts take ~3 s.
    Heap: $KAFKA_HEAP_OPTS (default -Xmx512m -Xms256m). Home: $STREAMSCORE_HOME/broker.
    The broker outlives this command; stop it with `streamscore broker stop`.
    """
    broker = LocalBroker()
    was_running = broker.running_state() is not None
    t0 = time.monotonic()
    try:
        bootstrap = broker.start(timeout=timeout)
    except BrokerError as exc:
        _fail(str(exc))
        return
    st = broker.status(probe=False)
    how = "already running" if was_running else f"started in {time.monotonic() - t0:.1f} s"
    typer.echo(f"Kafka {KAFKA_VERSION} broker {how} at {bootstrap} (pid {st.get('pid')}, home {broker.broker_dir})")
    typer.echo(f"logs: {broker.log_file}")


@broker_app.command()
def stop(
    timeout: float = typer.Option(30.0, help="Seconds to wait for a graceful shutdown before SIGKILL."),
) -> None:
    """Stop the local broker (SIGTERM, then SIGKILL after --timeout). Idempotent; topics persist."""
    broker = LocalBroker()
    t0 = time.monotonic()
    try:
        stopped = broker.stop(timeout=timeout)
    except BrokerError as exc:
        _fail(str(exc))
        return
    if stopped:
        typer.echo(f"broker stopped in {time.monotonic() - t0:.1f} s")
    else:
        typer.echo(f"no broker running from {broker.broker_dir}")


@broker_app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object."),
) -> None:
    """Show whether the local broker runs: pid, bootstrap, RSS, uptime. Exits 1 when it does not."""
    st = LocalBroker().status()
    if as_json:
        typer.echo(json.dumps(st))
    elif st["running"]:
        answering = "answering" if st.get("answering") else "NOT answering"
        rss = f"{st['rss_mb']:.0f} MB" if st.get("rss_mb") is not None else "?"
        typer.echo(f"running  {st['bootstrap']}  pid {st['pid']}  {answering}  rss {rss}  "
                   f"uptime {st['uptime_s']:.0f} s  heap {st['heap']}")
        typer.echo(f"home {st['home']}")
    else:
        stale = f" (stale state file: pid {st['stale_pid']} is gone)" if "stale_pid" in st else ""
        typer.echo(f"not running{stale}; home {st['home']}")
    if not st["running"]:
        raise typer.Exit(1)


@broker_app.command()
def logs(
    lines: int = typer.Option(50, "--lines", "-n", min=1, help="How many trailing lines to show."),
    jvm: bool = typer.Option(False, "--jvm", help="Show the JVM's stdout/stderr (kafka.out) instead."),
) -> None:
    """Print the last lines of the broker's log (WARN and up, plus startup lines)."""
    broker = LocalBroker()
    path = broker.stdout_file if jvm else broker.log_file
    if not path.exists():
        _fail(f"no log at {path}: the broker has not been started from this home")
    for line in tail_lines(path, lines):
        typer.echo(line)
