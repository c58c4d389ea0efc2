"""Open-loop load: produce a pre-generated stream on a fixed schedule, or as fast as possible.

Event ``i`` (emission index, the number in its ``event_id`` ``"<tag>-<i>"``) has an *intended send
time* ``t0 + i / rate`` (epoch seconds). The producer sends each event at (or, when it falls
behind, as soon as possible after) that time and never waits for the system under test, so a
slow consumer cannot slow the load down and hide its queueing (no coordinated omission). Latency
is measured from the intended send time, which also becomes the Kafka message timestamp
(CreateTime, ms). At ``rate=None`` the intended time is the moment the event was handed to the
producer.

Run as a process (``python -m benchmarks.openloop --spec spec.json``); it writes the intended
send times as a ``.npy`` array indexed by emission index and a JSON summary that says whether the
schedule was kept (`behind_max_s`, `behind_share`): a load generator that cannot keep its rate
reports it instead of silently measuring a lighter load.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# Sending granularity: one burst per tick carries every event whose intended time has come.
TICK_S = 0.001
BEHIND_TOLERANCE_S = 0.005  # the schedule counts as kept while the producer is at most this late


def event_index(event_id: str) -> int:
    """The emission index of a generator event id ``"<tag>-<index>"``."""
    return int(event_id.rsplit("-", 1)[1])


@dataclass(frozen=True)
class LoadSpec:
    """What the load process sends. Times in seconds; `rate` None = as fast as possible."""

    bootstrap: str
    topic: str
    events: int
    users: int
    seed: int
    rate: float | None
    start_at: float  # epoch s of event 0's intended send time; 0: as soon as the payloads are ready
    out_dir: str
    event_time_start_ms: int  # event time of the simulation start (the stream's first ts)


@dataclass(frozen=True)
class LoadSummary:
    """Outcome of one load process. `achieved_rate` = events / (last send - first intended)."""

    sent: int
    seconds: float
    achieved_rate: float
    target_rate: float | None
    behind_max_s: float
    behind_share: float  # share of ticks that started more than BEHIND_TOLERANCE_S late
    kept_rate: bool


def make_payloads(events: int, users: int, seed: int, start_ms: int) -> Iterator[tuple[bytes, bytes]]:
    """The stream's (key, value) payloads, generated lazily."""
    from features.synthetic import ClickstreamGenerator, GeneratorConfig

    cfg = GeneratorConfig(n_events=events, n_users=users, seed=seed, start=start_ms, jitter_ms=1_000.0)
    return ClickstreamGenerator(cfg).payloads()


def run_load(spec: LoadSpec, payloads: Iterable[tuple[bytes, bytes]]) -> tuple[LoadSummary, np.ndarray]:
    """Send `spec.events` of `payloads` per `spec`; returns the summary and the intended send times
    (epoch s). At a fixed rate the payloads are generated before the first send (so generating
    cannot make the schedule slip); as fast as possible they are generated while sending (a
    backlog of 12M events would otherwise hold ~2 KB per event in memory)."""
    from confluent_kafka import Producer

    producer = Producer({
        "bootstrap.servers": spec.bootstrap, "client.id": "streamscore-openloop", "enable.idempotence": True,
        "acks": "all", "partitioner": "murmur2_random", "linger.ms": 1,  # uncompressed: every peer's client reads it
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
    })
    n = spec.events
    stream = iter(payloads)
    listed: list[tuple[bytes, bytes]] = list(islice(stream, n)) if spec.rate is not None else []
    intended = np.empty(n, dtype=np.float64)
    produce, poll = producer.produce, producer.poll
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    def send(key: bytes, value: bytes, t: float) -> None:
        while True:
            try:
                produce(spec.topic, value=value, key=key, timestamp=int(t * 1000), on_delivery=on_delivery)
                return
            except BufferError:
                poll(0.01)

    t0 = spec.start_at or time.time() + 0.05
    while time.time() < t0:
        time.sleep(min(0.05, max(t0 - time.time(), 0)))
    ticks = late_ticks = 0
    behind_max = 0.0
    i = 0
    if spec.rate is None:
        while i < n:
            now = time.time()
            chunk = list(islice(stream, min(1000, n - i)))
            if not chunk:
                raise RuntimeError(f"load: the generator ended after {i} of {n} events")
            end = i + len(chunk)
            intended[i:end] = now
            for key, value in chunk:
                send(key, value, now)
            i = end
            poll(0)
    else:
        rate = spec.rate
        while i < n:
            now = time.time()
            due = min(n, int((now - t0) * rate) + 1)
            if due <= i:
                time.sleep(min(TICK_S, (i / rate + t0) - now))
                continue
            ticks += 1
            behind = now - (t0 + i / rate)
            behind_max = max(behind_max, behind)
            if behind > BEHIND_TOLERANCE_S:
                late_ticks += 1
            intended[i:due] = t0 + np.arange(i, due, dtype=np.float64) / rate
            for j in range(i, due):
                key, value = listed[j]
                send(key, value, intended[j])
            i = due
            poll(0)
            if errors:
                break
    last = time.time()
    left = producer.flush(60)
    if errors or left:
        raise RuntimeError(f"load: {len(errors)} delivery errors (first {errors[:1]}), {left} undelivered")
    seconds = last - t0
    behind_share = late_ticks / ticks if ticks else 0.0
    summary = LoadSummary(
        sent=n, seconds=round(seconds, 3), achieved_rate=round(n / seconds, 1) if seconds > 0 else float("inf"),
        target_rate=spec.rate, behind_max_s=round(behind_max, 4), behind_share=round(behind_share, 4),
        kept_rate=spec.rate is None or (behind_share < 0.05 and n / max(seconds, 1e-9) >= 0.97 * spec.rate),
    )
    return summary, intended


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.openloop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, required=True, help="JSON LoadSpec")
    args = ap.parse_args(argv)
    spec = LoadSpec(**orjson.loads(args.spec.read_bytes()))
    payloads = make_payloads(spec.events, spec.users, spec.seed, spec.event_time_start_ms)
    out = Path(spec.out_dir)
    (out / "load.ready").write_text(str(time.time()))
    summary, intended = run_load(spec, payloads)
    np.save(out / "intended.npy", intended)
    (out / "load.json").write_bytes(orjson.dumps(asdict(summary)))
    print(f"[openloop] {summary}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
