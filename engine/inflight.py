"""The batch in flight: what overlapping one batch's transaction commit with the next batch needs.

Exactly-once commits are pipelined (`EngineConfig.commit_pipeline`): while batch N's transaction
commits on a background thread (`Committer`; librdkafka blocks with the GIL released), the loop
consumes and computes batch N+1. Three things make that safe:

* N's stores are written only after N's commit returned, so N+1 reads state through a
  `PendingView`: the store with N's not-yet-written states applied on top (multi-get and key-order
  scans alike), exactly what it would read had N been written first;
* N+1 must not produce before its own transaction begins (one transaction per producer, and N's
  is still open), so its outputs queue in an `Outbox` and are produced after N's commit returned
  and N+1's transaction began;
* if N's commit fails, N+1's computed work is discarded with it (nothing of N+1 was produced) and
  both rewind to the last committed state (the loop's job, `engine.runner`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from confluent_kafka import Producer


class _Scannable(Protocol):
    def multi_get(self, keys: Iterable[str]) -> dict[str, bytes | None]: ...
    def get(self, key: str) -> bytes | None: ...
    def scan(self, after: str | None, limit: int) -> list[tuple[str, bytes]]: ...
    def scan_prefix(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, bytes]]: ...


class PendingView:
    """Reads of a `PartitionStore` as if `pending` (key -> encoded state, None deletes) had been
    written: the in-flight batch's states, not in the store until its transaction commits.

    Scans keep the store's contract (up to `limit` records in key order after `after`, metadata
    keys never, NUL-prefixed keys only through `scan_prefix`): the store is scanned for `limit`
    plus the number of pending deletions in range, which is enough for the first `limit` keys of
    the merged order to all lie within what the store returned.
    """

    def __init__(self, store: _Scannable, pending: Mapping[str, bytes | None]) -> None:
        self.store = store
        self.pending = pending
        self._sorted: list[str] | None = None  # pending keys in order, sorted on the first scan

    def multi_get(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        out = self.store.multi_get(keys)
        pending = self.pending
        for key in out:
            if key in pending:
                out[key] = pending[key]
        return out

    def get(self, key: str) -> bytes | None:
        return self.pending[key] if key in self.pending else self.store.get(key)

    def scan(self, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        # Entity records: keys at or after "\x01" (the store's own scan starts there).
        in_range = self._in_range(after, lambda k: k >= "\x01")
        records = self.store.scan(after, limit + _deletions(in_range))
        return merge_scan(records, len(records) == limit + _deletions(in_range), in_range, limit)

    def scan_prefix(self, prefix: str, after: str | None, limit: int) -> list[tuple[str, bytes]]:
        in_range = self._in_range(after, lambda k: k.startswith(prefix), start=prefix)
        extra = _deletions(in_range)
        records = self.store.scan_prefix(prefix, after, limit + extra)
        return merge_scan(records, len(records) == limit + extra, in_range, limit)

    def _in_range(self, after: str | None, keep: Callable[[str], bool],
                  start: str = "") -> list[tuple[str, bytes | None]]:
        """Pending (key, value) after `after` (and from `start`) that `keep` admits, in key order."""
        if self._sorted is None:
            self._sorted = sorted(self.pending)
        keys = self._sorted
        lo = bisect.bisect_right(keys, after) if after is not None else 0
        lo = max(lo, bisect.bisect_left(keys, start))
        out = []
        for key in keys[lo:]:
            if keep(key):
                out.append((key, self.pending[key]))
            elif start and key > start and not key.startswith(start):
                break  # past the prefix's keys
        return out


def _deletions(items: list[tuple[str, bytes | None]]) -> int:
    return sum(1 for _, value in items if value is None)


def merge_scan(records: list[tuple[str, bytes]], full: bool, pending: list[tuple[str, bytes | None]],
               limit: int) -> list[tuple[str, bytes]]:
    """The first `limit` records, in key order, of `records` (a key-order scan of a store, `full`
    if it stopped at its limit rather than at the end) with `pending` applied (None deletes).

    Pending keys beyond the last scanned record of a `full` scan are left out: keys of the store
    lie between them that this scan did not read. (The caller scans far enough that the first
    `limit` merged keys are covered.)
    """
    merged = dict(records)
    last = records[-1][0] if full and records else None
    for key, value in pending:
        if last is not None and key > last:
            break
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return sorted(merged.items())[:limit]


class Outbox:
    """Producer calls of a batch, queued while another batch's transaction is still open and
    produced in order by `send` (once the batch's own transaction began). Dead letters and
    triggers are single messages with headers; score and session records go as batches."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, Any, Any, Any]] = []

    def batch(self, topic: str, records: list[dict[str, Any]], on_delivery: Callable[..., None]) -> None:
        """Queue `produce_batch(topic, records)` (each record a dict with "value" and "key")."""
        self._calls.append(("batch", topic, records, on_delivery))

    def message(self, topic: str, value: bytes | None, key: bytes | None, on_delivery: Callable[..., None],
                headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one `produce(topic, value, key, headers=headers)`."""
        self._calls.append(("message", topic, (value, key, headers), on_delivery))

    def __len__(self) -> int:
        return len(self._calls)

    def send(self, producer: Producer) -> None:
        """Produce every queued call, in queue order, retrying on a full local queue; empties the box."""
        calls, self._calls = self._calls, []
        for kind, topic, payload, on_delivery in calls:
            if kind == "batch":
                produce_all(producer, topic, payload, on_delivery)
                continue
            value, key, headers = payload
            while True:
                try:
                    producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)


def produce_all(producer: Producer, topic: str, records: list[dict[str, Any]], on_delivery: Any,
                partition: int | None = None) -> None:
    """`produce_batch` that retries the records a full local queue refused, serving deliveries
    in between. `partition` routes the whole batch (librdkafka ignores a per-record partition)."""
    route = {} if partition is None else {"partition": partition}
    while True:
        try:
            queued = producer.produce_batch(topic, records, on_delivery=on_delivery, **route)
        except BufferError:  # nothing was queued: retry them all
            producer.poll(0.1)
            continue
        if queued == len(records):
            return
        # produce_batch marks each record it could not queue with "_error" (queue full).
        records = [r for r in records if "_error" in r]
        for r in records:
            r.pop("_error", None)
        producer.poll(0.1)


class Committer:
    """One background thread that runs transaction commits, one at a time. `submit` hands over a
    commit (the loop must not touch the producer until `wait` returned); `wait` blocks until it
    finished and returns its exception (None if it succeeded, or if nothing was in flight)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamscore-commit")
        self._future: Future[None] | None = None

    @property
    def busy(self) -> bool:
        """A commit was submitted and not yet waited for."""
        return self._future is not None

    def submit(self, commit: Callable[[], None]) -> None:
        if self._future is not None:
            raise RuntimeError("a commit is already in flight; wait() for it first")
        self._future = self._pool.submit(commit)

    def wait(self) -> BaseException | None:
        future, self._future = self._future, None
        if future is None:
            return None
        return future.exception()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
