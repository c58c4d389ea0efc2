"""Output sinks for the synthetic clickstream: JSONL files and a paced Kafka producer.

Items accepted by both sinks (mixed freely):

* ``dict`` events -> value ``orjson.dumps(event)``, key ``user_id`` UTF-8;
* ``bytes`` values -> key ``None``;
* ``(key, value)`` tuples as yielded by ``ClickstreamGenerator.payloads()``.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Union

import orjson

__all__ = ["DeliveryError", "ProduceSummary", "TokenBucket", "produce", "write_jsonl"]

Item = Union[Mapping[str, Any], bytes, tuple[bytes | None, bytes]]


def _kv(items: Iterable[Item]) -> Iterator[tuple[bytes | None, bytes]]:
    dumps = orjson.dumps
    for it in items:
        if isinstance(it, tuple):
            yield it  # type: ignore[misc]
        elif isinstance(it, bytes | bytearray | memoryview):
            yield None, bytes(it)
        else:
            uid = it.get("user_id")
            yield (uid.encode() if isinstance(uid, str) else None), dumps(it)


def write_jsonl(path: str | Path, events_or_bytes: Iterable[Item]) -> int:
    """Write one message per line to ``path`` and return the number of lines.

    ``path`` ``"-"`` writes to stdout; a ``.gz`` suffix writes gzip.  Keys are
    dropped.  Raises ``ValueError`` if a payload contains a newline byte (the
    generator's bad payloads never do).
    """
    close = True
    f: IO[bytes]
    if str(path) == "-":
        f, close = sys.stdout.buffer, False
    elif str(path).endswith(".gz"):
        f = gzip.open(path, "wb", compresslevel=5)  # type: ignore[assignment]
    else:
        f = open(path, "wb", buffering=1 << 20)  # noqa: SIM115
    n = 0
    try:
        buf: list[bytes] = []
        for _, value in _kv(events_or_bytes):
            if b"\n" in value:
                raise ValueError(f"payload #{n} contains a newline; cannot write it as JSONL")
            buf.append(value)
            n += 1
            if len(buf) >= 4096:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
        f.flush()
    finally:
        if close:
            f.close()
    return n


def write_parquet(path: str | Path, events: Iterable[Mapping[str, Any]], row_group: int = 65_536) -> int:
    """Write canonical events to a Parquet file, one row each, in order; return the row count.

    ``ts`` is stored as ``timestamp[ms, UTC]`` (what a warehouse export holds), the other fields
    as strings and a float64 price. `features.eventlog.read_parquet` reads it back to the same
    canonical events.
    """
    import pyarrow as pa  # imported here: only the Parquet path needs it
    import pyarrow.parquet as pq

    from features.schema import CANONICAL_FIELDS

    types = {name: pa.string() for name in CANONICAL_FIELDS} | {
        "ts": pa.timestamp("ms", tz="UTC"), "price": pa.float64()}
    arrow_schema = pa.schema([(name, types[name]) for name in CANONICAL_FIELDS])
    n = 0
    with pq.ParquetWriter(str(path), arrow_schema) as writer:
        it = iter(events)
        while chunk := list(islice(it, row_group)):
            writer.write_table(pa.Table.from_pylist([dict(e) for e in chunk], schema=arrow_schema))
            n += len(chunk)
    return n


class TokenBucket:
    """Token bucket pacing to ``rate`` tokens/s with ``burst`` capacity.

    ``acquire(n)`` takes ``n`` tokens, sleeping off any debt, so the long-run
    rate is exact even when ``n`` exceeds the burst (batches).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate, self.burst = float(rate), float(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = 0.0  # start empty: no initial burst above the rate
        self._t = clock()

    def acquire(self, n: int) -> float:
        """Take ``n`` tokens; return the seconds slept."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        self._sleep(wait)
        return wait


@dataclass(frozen=True)
class ProduceSummary:
    """Result of :func:`produce`.

    ``sent``: messages accepted by the producer (excludes locally rejected
    oversize ones); ``delivered``: acknowledged by the broker;
    ``rejected_oversize``: rejected as too large (locally or by the broker);
    ``bytes``: value bytes sent; ``rate`` = ``sent / seconds`` (events/s).
    """

    sent: int
    delivered: int
    rejected_oversize: int
    bytes: int
    seconds: float
    rate: float


class DeliveryError(RuntimeError):
    """Raised by :func:`produce` when messages failed delivery (after flushing)."""


def produce(
    bootstrap: str,
    topic: str,
    payloads: Iterable[Item],
    rate: float | None = None,
    *,
    max_events: int | None = None,
    max_seconds: float | None = None,
    batch_size: int | None = None,
    progress_every: float = 5.0,
    producer_config: Mapping[str, Any] | None = None,
    tolerate_oversize: bool = True,
    flush_timeout: float = 60.0,
    producer_factory: Callable[[dict[str, Any]], Any] | None = None,
    log: IO[str] | None = None,
) -> ProduceSummary:
    """Produce ``payloads`` to ``topic`` at ``rate`` events/s (``None`` = as fast as possible).

    Messages are keyed by user_id (UTF-8 bytes) so a user's events keep their
    emission order within a partition (the producer is idempotent).  Pacing is
    a token bucket charged once per batch of ``batch_size`` messages (default
    ~10 ms worth of events at ``rate``).  Stops after ``max_events`` messages,
    after ``max_seconds``, or when ``payloads`` is exhausted; then flushes.
    Progress goes to ``log`` (stderr) every ``progress_every`` seconds (0 = off).

    Oversize messages (librdkafka ``MSG_SIZE_TOO_LARGE``, e.g. the generator's
    payloads above the producer's ``message.max.bytes``) are counted in
    ``rejected_oversize`` when ``tolerate_oversize``; to actually deliver them
    raise ``message.max.bytes`` via ``producer_config`` *and* the topic's
    ``max.message.bytes``.  Any other delivery failure stops production and
    raises :class:`DeliveryError` after flushing, as does a flush timeout.
    Ctrl-C stops production early; the messages sent so far are flushed and
    summarised.  ``producer_factory`` (default ``confluent_kafka.Producer``)
    receives the merged config dict; tests pass a fake.  With the real producer,
    an unreachable cluster raises ``engine.broker.BrokerUnreachable`` and a missing
    topic ``engine.topics.TopicError`` before anything is produced (instead of
    librdkafka retrying each message until its timeout).
    """
    from confluent_kafka import KafkaError, KafkaException

    log = sys.stderr if log is None else log
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": "streamscore-loadgen",
        "enable.idempotence": True,
        "acks": "all",
        # Kafka's default (Java) partitioner: the offline feature replay routes keys the same way.
        "partitioner": "murmur2_random",
        "linger.ms": 20,
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }
    conf.update(producer_config or {})
    if producer_factory is None:
        from confluent_kafka import Producer

        from engine.topics import TopicError, cluster_metadata

        found = cluster_metadata(bootstrap, client=producer_config).topics.get(topic)
        if found is None or found.error is not None:
            raise TopicError(f"topic {topic!r} does not exist on {bootstrap}: create it with "
                             "`streamscore topics create` (or your cluster's tooling)")
        producer_factory = Producer
    producer = producer_factory(conf)

    if batch_size is None:
        batch_size = 1000 if not rate else max(1, min(2000, int(rate / 100)))
    bucket = TokenBucket(rate, burst=max(float(batch_size), rate / 10)) if rate else None

    too_large = KafkaError.MSG_SIZE_TOO_LARGE
    stats = {"delivered": 0, "rejected": 0}
    errors: list[Any] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            stats["delivered"] += 1
        elif tolerate_oversize and err.code() == too_large:
            stats["rejected"] += 1
        else:
            errors.append(err)

    it = _kv(payloads)
    if max_events is not None:
        it = islice(it, max_events)
    sent = nbytes = 0
    t0 = time.monotonic()
    next_report = t0 + progress_every if progress_every > 0 else float("inf")
    deadline = t0 + max_seconds if max_seconds is not None else float("inf")
    p_produce, p_poll = producer.produce, producer.poll

    try:
        while not errors:
            batch = list(islice(it, batch_size))
            if not batch:
                break
            if bucket is not None:
                bucket.acquire(len(batch))
            for key, value in batch:
                while True:
                    try:
                        p_produce(topic, value=value, key=key, on_delivery=on_delivery)
                        sent += 1
                        nbytes += len(value)
                        break
                    except BufferError:  # local queue full: serve callbacks, retry
                        p_poll(0.05)
                    except KafkaException as exc:  # e.g. larger than message.max.bytes
                        if tolerate_oversize and exc.args and exc.args[0].code() == too_large:
                            stats["rejected"] += 1
                            break
                        raise
            p_poll(0)
            now = time.monotonic()
            if now >= next_report:
                el = now - t0
                print(
                    f"[loadgen] {topic}: sent {sent:,} delivered {stats['delivered']:,} "
                    f"rejected {stats['rejected']:,} in {el:,.1f}s ({sent / el:,.0f} ev/s)",
                    file=log,
                    flush=True,
                )
                next_report = now + progress_every
            if now >= deadline:
                break
    except KeyboardInterrupt:  # stop early but still flush and report what was sent
        print(f"[loadgen] interrupted after {sent:,} messages; flushing", file=log, flush=True)

    remaining = producer.flush(flush_timeout)
    seconds = time.monotonic() - t0
    if hasattr(producer, "close"):
        producer.close()
    if errors:
        raise DeliveryError(f"{len(errors)} message(s) failed delivery to {topic!r}; first: {errors[0]}")
    if remaining:
        raise DeliveryError(f"{remaining} message(s) still undelivered after flush({flush_timeout}s) to {topic!r}")
    return ProduceSummary(
        sent=sent,
        delivered=stats["delivered"],
        rejected_oversize=stats["rejected"],
        bytes=nbytes,
        seconds=seconds,
        rate=sent / seconds if seconds > 0 else float("inf"),
    )
