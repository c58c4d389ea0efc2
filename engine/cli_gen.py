"""``streamscore gen ...``: synthetic clickstream to a JSONL file or a Kafka topic."""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from engine.loadgen import produce, write_jsonl, write_parquet
from engine.progress import Progress
from features.synthetic import BAD_KINDS, ClickstreamGenerator, Drift, GeneratorConfig, parse_time

__all__ = ["gen_app"]

gen_app = typer.Typer(
    help="Synthetic clickstream generator (seedable, with jitter, drift and bad-message injection).",
    no_args_is_help=True,
    add_completion=False,
)

# -- shared generation options ------------------------------------------------
Users = Annotated[int, typer.Option("--users", min=1, help="Number of simulated users.")]
Seed = Annotated[int, typer.Option("--seed", help="Master seed; same options + seed -> byte-identical output.")]
Start = Annotated[str, typer.Option("--start", help="Simulation start, ISO-8601 (Z or offset; naive = UTC).")]
JitterMs = Annotated[
    float,
    typer.Option(
        "--jitter-ms",
        min=0.0,
        help="Scale (ms) of event-time jitter: ts = true time - jitter, jitter >= 0, capped at 8x scale. "
        "0 = ts in emission order.",
    ),
]
JitterDist = Annotated[str, typer.Option("--jitter-dist", help="Jitter distribution: exponential|uniform|halfnormal.")]
LateFraction = Annotated[
    float, typer.Option("--late-fraction", min=0.0, max=1.0, help="Fraction of events made very late.")
]
LateMs = Annotated[float, typer.Option("--late-ms", min=0.0, help="Late events lag by between 1x and 3x this many ms.")]
BadFraction = Annotated[
    float,
    typer.Option("--bad-fraction", min=0.0, max=1.0, help="Fraction of messages replaced by bad payloads."),
]
BadKinds = Annotated[
    str | None,
    typer.Option("--bad-kinds", help=f"Comma-separated subset of bad kinds (default all): {','.join(BAD_KINDS)}."),
]
DriftOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--drift",
        help="Drift injection KIND@AT[:k=v,...], repeatable. AT with a '.' is a fraction of --events, else an event "
        "index. Kinds: mix_shift (device/referrer mix; params strength, <device>=w, <referrer>=w), "
        "price_shift (factor=1.5), conversion_collapse (device=mobile, factor=0.02). "
        "E.g. --drift price_shift@0.5:factor=1.5",
    ),
]
Products = Annotated[int, typer.Option("--products", min=1, help="Catalogue size.")]


def _config(
    events: int | None,
    users: int,
    seed: int,
    start: str,
    jitter_ms: float,
    jitter_dist: str,
    late_fraction: float,
    late_ms: float,
    bad_fraction: float,
    bad_kinds: str | None,
    drift: list[str] | None,
    products: int,
) -> GeneratorConfig:
    try:
        kinds = tuple(k.strip() for k in bad_kinds.split(",") if k.strip()) if bad_kinds else BAD_KINDS
        return GeneratorConfig(
            n_events=events,
            n_users=users,
            seed=seed,
            start=parse_time(start),
            jitter_ms=jitter_ms,
            jitter_dist=jitter_dist,
            late_fraction=late_fraction,
            late_ms=late_ms,
            bad_fraction=bad_fraction,
            bad_kinds=kinds,
            drifts=tuple(Drift.parse(d) for d in (drift or [])),
            n_products=products,
        )
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from exc


def _counted(gen: ClickstreamGenerator, bad: Counter[str]) -> Iterator[tuple[bytes, bytes]]:
    for key, value, kind in gen.labelled_payloads():
        if kind is not None:
            bad[kind] += 1
        yield key, value


def _bad_note(bad: Counter[str]) -> str:
    return f", {sum(bad.values()):,} bad ({', '.join(f'{k}={v}' for k, v in sorted(bad.items()))})" if bad else ""


def _engine_config(config: Path | None):  # type: ignore[no-untyped-def]
    from engine.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _progress_every(seconds: float | None) -> float:
    """Seconds between produce progress lines: as given, else 5 on a terminal and none otherwise."""
    if seconds is not None:
        return seconds
    return 5.0 if sys.stderr.isatty() else 0.0


def _resolve(bootstrap: str | None) -> str:
    if bootstrap is not None:
        return bootstrap
    from engine.broker import BrokerNotRunning, resolve_bootstrap

    try:
        return resolve_bootstrap()
    except BrokerNotRunning as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@gen_app.command()
def history(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output path: JSONL ('-' = stdout, .gz = gzip) or .parquet (events only, no bad rows).")],
    events: Annotated[int, typer.Option("--events", "-n", min=0, help="Number of messages to write.")] = 100_000,
    users: Users = 2_000,
    seed: Seed = 0,
    start: Start = "2026-01-01T00:00:00Z",
    jitter_ms: JitterMs = 0.0,
    jitter_dist: JitterDist = "exponential",
    late_fraction: LateFraction = 0.0,
    late_ms: LateMs = 600_000.0,
    bad_fraction: BadFraction = 0.0,
    bad_kinds: BadKinds = None,
    drift: DriftOpt = None,
    products: Products = 5_000,
) -> None:
    """Write a synthetic clickstream history to a JSONL (or Parquet) file, one message per line, in emission order.

    Lines are in true-time (emission) order; `ts` is event time in epoch ms, lagging by the jitter.

    With --bad-fraction some lines are replaced by bad messages (malformed JSON, wrong types, ...);
    JSONL only (a Parquet row cannot hold malformed JSON).
    """
    parquet = str(out).endswith(".parquet")
    if parquet and bad_fraction > 0:
        raise typer.BadParameter("a .parquet history cannot hold bad messages: use JSONL or --bad-fraction 0",
                                 param_hint="--bad-fraction")
    cfg = _config(
        events, users, seed, start, jitter_ms, jitter_dist, late_fraction, late_ms, bad_fraction, bad_kinds, drift,
        products,
    )  # fmt: skip
    bad: Counter[str] = Counter()
    t0 = time.perf_counter()
    gen = ClickstreamGenerator(cfg)
    with Progress() as progress:
        items = progress.iterate(gen.events() if parquet else _counted(gen, bad), "generating", total=events)
        n = write_parquet(out, items) if parquet else write_jsonl(out, items)
    dt = time.perf_counter() - t0
    typer.echo(
        f"wrote {n:,} messages to {out}{_bad_note(bad)} in {dt:.2f}s ({n / max(dt, 1e-9):,.0f}/s), seed={seed}",
        err=str(out) == "-",
    )


@gen_app.command()
def stream(
    bootstrap: Annotated[
        str | None,
        typer.Option("--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS",
                     help="Kafka bootstrap servers (default: the local broker of `streamscore broker start`)."),
    ] = None,
    topic: Annotated[str, typer.Option("--topic", "-t", help="Target topic.")] = "clicks",
    rate: Annotated[
        float | None, typer.Option("--rate", "-r", min=0.0, help="Target events/s (omit or 0 = unthrottled).")
    ] = None,
    events: Annotated[int | None, typer.Option("--events", "-n", min=0, help="Stop after this many messages.")] = None,
    seconds: Annotated[float | None, typer.Option("--seconds", min=0.0, help="Stop after this many seconds.")] = None,
    users: Users = 2_000,
    seed: Seed = 0,
    start: Start = "2026-01-01T00:00:00Z",
    jitter_ms: JitterMs = 0.0,
    jitter_dist: JitterDist = "exponential",
    late_fraction: LateFraction = 0.0,
    late_ms: LateMs = 600_000.0,
    bad_fraction: BadFraction = 0.0,
    bad_kinds: BadKinds = None,
    drift: DriftOpt = None,
    products: Products = 5_000,
    progress_every: Annotated[float | None, typer.Option(
        "--progress-every", help="Seconds between progress lines on stderr (0: none) [default: 5 on a terminal, "
                                 "none otherwise].")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Engine YAML config: its bootstrap_servers and `kafka:` client settings "
                               "(security.protocol, sasl.*, ...) apply to the producer.")] = None,
) -> None:
    """Produce a synthetic clickstream to a Kafka topic, keyed by user_id, paced to --rate events/s.

    Give --events and/or --seconds; whichever is reached first stops the run.

    --seconds with --rate (no --events) sizes the stream to rate*seconds, so fractional --drift points work.

    --seconds alone makes the stream endless; --drift then needs an event index.

    Messages are in emission order; `ts` is event time in epoch ms, lagging by the jitter.

    Bad payloads larger than the producer's message.max.bytes (e.g. oversize) are counted as rejected, not sent.
    """
    if events is None and seconds is None:
        raise typer.BadParameter("give --events and/or --seconds")
    kafka_settings: dict = {}
    if config is not None or any(v.startswith("STREAMSCORE_KAFKA__") for v in os.environ):
        engine_cfg = _engine_config(config)
        kafka_settings = dict(engine_cfg.kafka)
        bootstrap = bootstrap or engine_cfg.bootstrap_servers
    bootstrap = _resolve(bootstrap)
    rate = rate or None
    n = events
    if n is None and seconds is not None and rate is not None:
        n = math.ceil(rate * seconds)
    cfg = _config(
        n, users, seed, start, jitter_ms, jitter_dist, late_fraction, late_ms, bad_fraction, bad_kinds, drift, products
    )
    bad: Counter[str] = Counter()
    summary = produce(
        bootstrap,
        topic,
        _counted(ClickstreamGenerator(cfg), bad),
        rate=rate,
        max_events=events,
        max_seconds=seconds,
        progress_every=_progress_every(progress_every),
        producer_config=kafka_settings,
        log=sys.stderr,
    )
    typer.echo(
        f"sent {summary.sent:,} messages to {topic}{_bad_note(bad)} in {summary.seconds:.2f}s "
        f"({summary.rate:,.0f}/s achieved, target {rate or 'max'}), delivered {summary.delivered:,}, "
        f"rejected oversize {summary.rejected_oversize:,}"
    )


@gen_app.command()
def replay(
    events: Annotated[Path, typer.Option(
        "--events", exists=True, dir_okay=False,
        help="Event log in topic order: .jsonl[.gz], .csv[.gz] or .parquet, in the upstream's own schema.")],
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Engine YAML config: schema (field names, key), topic, bootstrap and kafka settings.")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", "-t", help="Target topic [default: the config's input_topic].")
    ] = None,
    rate: Annotated[float | None, typer.Option("--rate", "-r", min=0.0, help="Events/s (omit = unthrottled).")] = None,
    progress_every: Annotated[float | None, typer.Option(
        "--progress-every", help="Seconds between progress lines on stderr (0: none) [default: 5 on a terminal, "
                                 "none otherwise].")] = None,
) -> None:
    """Replay a historical event log to a topic, as its upstream would have produced it.

    JSONL lines go verbatim; CSV and Parquet rows as JSON objects typed like upstream JSON (see
    features/eventlog.py), keyed by the entity's upstream field, Kafka's default partitioner: the
    engine then decodes each record exactly as `streamscore train` did offline (same derived ids).
    """
    from features.eventlog import upstream_messages

    cfg = _engine_config(config)
    bootstrap = _resolve(cfg.bootstrap_servers)
    target = topic or cfg.input_topic
    invalid: dict[str, int] = {}
    summary = produce(bootstrap, target, upstream_messages(events, cfg.schema, cfg.features.entity, invalid),
                      rate=rate or None, progress_every=_progress_every(progress_every),
                      producer_config=dict(cfg.kafka),
                      log=sys.stderr)
    skipped = f", skipped {sum(invalid.values()):,} unreadable rows {invalid}" if invalid else ""
    typer.echo(f"replayed {summary.sent:,} records of {events} to {target} in {summary.seconds:.2f}s "
               f"({summary.rate:,.0f}/s){skipped}")
