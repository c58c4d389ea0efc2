"""Queryable state: an HTTP endpoint that answers an entity's live feature vector and latest score.

``GET /entities/<entity>`` (the entity percent-encoded) answers, from the local partition store:

    {"entity": str, "partition": int, "owner": "host:port", "feature_spec": "fs-…",
     "features": {name: float|null},         # the vector the engine scored the last event with
     "score": {"score": float, "model": {"name", "version"}, "variant": "champion"|"canary",
               "event_id": str, "event_ts": int ms, "scored_ts": int ms},
     "partition_clock": {"max_event_ts": int ms|null, "watermark": int ms|null}, "applied_offset": int}

**Which vector.** The answer is the feature vector *as of the entity's last scored event*:
exactly the row the model scored that event with (float32 values, NaN as null, names in the
spec's column order), the same vector a score record carries with ``include_features: true``.
It cannot be recomputed from the entity's window state alone: `CurrentValue` and `OneHot`
columns read the event's own fields, `Recency` reads the previous event time that the update
overwrote, and panes the event read may already be pruned by the watermark at the end of its
batch. So the engine keeps it: per micro-batch, for every entity scored in it, one *serving
record* (its last event's answer: score, model, event ids and row) under the key
``SERVING_PREFIX + entity`` of the partition's RocksDB store. Serving records travel with the
entity states: written in the same WriteBatch, and mirrored into the state changelog in the same
Kafka transaction, so they survive a restart, a wiped disk and a move to another process exactly
like the state does (`engine.changelog.restore` writes whatever keys the changelog holds). When
the entity's state record expires the serving record is deleted with it; the entity then answers
404 like one never seen. A challenger's shadow score is never a serving record.

**Reads.** One consistent RocksDB multi-get (the serving record, the partition clock and the
applied offset; RocksDB's MultiGet reads all keys from one implicit snapshot, so they belong to
the same committed batch) on the HTTP thread. The scoring loop never waits for a query: it takes
the registry lock only to attach or detach a partition's store at a rebalance, and a query holds
it for the duration of one multi-get (microseconds). What a query costs the loop is GIL time;
benchmarks/bench_query.py measures it.

**Ownership.** The entity's partition is `features.partitioning.kafka_partition(entity, n)` (the
producers' murmur2). When that partition is not local, the process answers ``307`` with
``Location: http://<owner>/entities/<entity>`` (or, with ``query.proxy``, fetches the owner's
answer once and returns it). The owner is found from the consumer group itself: every process
sets its consumer ``client.id`` to ``streamscore@<advertised host:port>``, and
`AdminClient.describe_consumer_groups` lists each member's client id and assigned partitions.
That table is cached; it is refreshed after this process's own rebalances, on a miss (no owner,
or the table says "here" but the partition is not local), and when older than
`OWNERS_MAX_AGE_S`. A partition no member owns (a rebalance in progress) answers ``503`` with
``Retry-After: 1``. An entity never scored by the owning process answers ``404``.

``GET /partitions`` answers the owner table and the local partitions (for operators and tests).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import orjson
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.config import QueryConfig
from engine.store import APPLIED_KEY, CLOCK_KEY, PartitionStore
from features.executor import PartitionClock
from features.partitioning import kafka_partition

log = logging.getLogger("streamscore.query")

#: Store key prefix of serving records. NUL-prefixed like the store's metadata keys, so the
#: expiry sweep and entity counts (which skip NUL-prefixed keys) never see them.
SERVING_PREFIX = "\x00serving/"
#: ``client.id`` prefix that carries a process's advertised query address.
CLIENT_ID_PREFIX = "streamscore@"
#: The owner table is re-read at least this often, whatever happened.
OWNERS_MAX_AGE_S = 10.0
#: ... and at most this often (misses of many clients at once share one refresh).
OWNERS_MIN_INTERVAL_S = 0.2
PROXIED_HEADER = "X-Streamscore-Proxied"
PROXY_TIMEOUT_S = 2.0
#: Longest request head (request line + headers) accepted; longer answers 431.
MAX_HEAD_BYTES = 16_384


# -- serving records (written by the scoring loop) -------------------------------------------------

def serving_records(events: Sequence[dict[str, Any]], scores: np.ndarray, rows: np.ndarray, entity_field: str,
                    model: Mapping[str, Any], variant: str, scored_ts: int) -> dict[str, bytes]:
    """Store entries (key ``SERVING_PREFIX + entity``) for one variant's answers of a batch: one
    per entity, from its last event in the batch (events are in processing order).

    Value: the answer's JSON (score, model, variant, event_id, event_ts, scored_ts), a newline
    (JSON written by orjson holds none), then the float32 row as raw little-endian bytes: exact,
    and 4 bytes a column where JSON would take up to 20 (see `decode_serving`)."""
    last = {e[entity_field]: i for i, e in enumerate(events)}
    out: dict[str, bytes] = {}
    row32 = np.ascontiguousarray(rows, dtype="<f4")
    for entity, i in last.items():
        event = events[i]
        out[SERVING_PREFIX + entity] = orjson.dumps({
            "score": scores[i].item(), "model": model, "variant": variant, "event_id": event["event_id"],
            "event_ts": event["ts"], "scored_ts": scored_ts,
        }) + b"\n" + row32[i].tobytes()
    return out


def decode_serving(raw: bytes) -> tuple[dict[str, Any], list[float | None]]:
    """(answer, feature row) of a serving record; NaN columns as None, as in score records."""
    head, _, row = raw.partition(b"\n")
    return orjson.loads(head), [None if v != v else v for v in np.frombuffer(row, dtype="<f4").tolist()]


def drop_serving_of_deleted(states: dict[str, bytes | None]) -> None:
    """Add a serving-record tombstone for every entity whose state the batch deletes (expired),
    so serving records never outlive their entity (state stays bounded by active entities)."""
    dead = [key for key, value in states.items() if value is None and not key.startswith("\x00")]
    for key in dead:
        states[SERVING_PREFIX + key] = None


def client_id(cfg: QueryConfig) -> str:
    """The consumer ``client.id`` that advertises this process's query address to the group."""
    return CLIENT_ID_PREFIX + advertised_address(cfg)


def advertised_address(cfg: QueryConfig) -> str:
    if cfg.advertised:
        return cfg.advertised
    host = socket.gethostname() if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    return f"{host}:{cfg.port}"


# -- the owner table ---------------------------------------------------------------------------

class OwnerDirectory:
    """Which process (advertised query address) owns each input partition, from the group.

    Thread-safe; `owner` may block for one admin round trip when the table is refreshed.
    """

    def __init__(self, bootstrap: str, group_id: str, topic: str) -> None:
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._group = group_id
        self._topic = topic
        self._lock = threading.Lock()
        self._owners: dict[int, str] = {}
        self._partitions = 0
        self._read_at = -1e18
        self._stale = True
        self.refreshes = 0

    def invalidate(self) -> None:
        """Re-read on next use (called after this process's rebalances)."""
        self._stale = True

    @property
    def partitions(self) -> int:
        """Partition count of the input topic (read with the owner table; 0: unknown yet)."""
        if self._partitions == 0:
            self.refresh()
        return self._partitions

    @property
    def known_partitions(self) -> int:
        """`partitions` as last read, without a round trip (0: not read yet)."""
        return self._partitions

    def owner(self, partition: int, miss: bool = False) -> str | None:
        """Advertised address of the member owning `partition` (None: nobody right now). `miss`:
        the caller found the cached answer wrong; re-read (rate-limited) before answering."""
        now = time.monotonic()
        if self._stale or miss or partition not in self._owners or now - self._read_at > OWNERS_MAX_AGE_S:
            if now - self._read_at >= OWNERS_MIN_INTERVAL_S or self._partitions == 0:
                self.refresh()
        return self._owners.get(partition)

    def table(self) -> dict[int, str]:
        return dict(self._owners)

    def refresh(self) -> None:
        with self._lock:
            self._stale = False
            self._read_at = time.monotonic()
            try:
                md = self._admin.list_topics(self._topic, timeout=5)
                topic = md.topics.get(self._topic)
                if topic is not None and topic.error is None:
                    self._partitions = len(topic.partitions)
                group = self._admin.describe_consumer_groups([self._group], request_timeout=5)[self._group].result()
            except Exception as exc:  # noqa: BLE001 - an unreachable cluster answers 503, never crashes
                log.warning("query: cannot read group %s: %s", self._group, exc)
                self._stale = True
                return
            owners: dict[int, str] = {}
            for member in group.members:
                if not member.client_id.startswith(CLIENT_ID_PREFIX) or member.assignment is None:
                    continue
                address = member.client_id[len(CLIENT_ID_PREFIX):]
                for tp in member.assignment.topic_partitions:
                    if tp.topic == self._topic:
                        owners[tp.partition] = address
            self._owners = owners
            self.refreshes += 1



# -- the server -------------------------------------------------------------------------------

Answer = tuple[int, dict[str, Any], dict[str, str]]  # HTTP status, JSON body, extra headers


class QueryServer:
    """The query endpoint of one engine process.

    One asyncio event loop on its own thread serves every connection (HTTP/1.1 keep-alive), so
    however many clients there are, queries compete with the scoring loop for the GIL from one
    thread. Local answers are computed on the loop thread (a multi-get and a JSON encode);
    anything that may wait on the network (an owner-table refresh, a proxied request) runs on
    the loop's executor. The scoring loop calls `attach` when it owns a partition's (restored)
    store and `detach` before it closes it; queries only read attached stores, under `_lock`.
    """

    def __init__(self, cfg: QueryConfig, bootstrap: str, group_id: str, topic: str, feature_names: Sequence[str],
                 feature_spec: str, grace_ms: int, registry: CollectorRegistry | None = None,
                 owners: OwnerDirectory | None = None) -> None:
        self.cfg = cfg
        self.grace_ms = grace_ms
        self.address = advertised_address(cfg)
        self.names = list(feature_names)
        self.feature_spec = feature_spec
        self.owners = owners or OwnerDirectory(bootstrap, group_id, topic)
        self._stores: dict[int, PartitionStore] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port = cfg.port
        self._connections: set[asyncio.StreamWriter] = set()
        self.closing = False
        self.requests = Counter("streamscore_queries", "Entity queries answered, by HTTP status", ["code"],
                                registry=registry)
        self.seconds = Histogram("streamscore_query_seconds", "Wall time of answering one entity query",
                                 registry=registry,
                                 buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1))

    # -- partitions, from the scoring loop's thread ---------------------------------------------

    def attach(self, partition: int, store: PartitionStore) -> None:
        with self._lock:
            self._stores[partition] = store
        self.owners.invalidate()

    def detach(self, partition: int) -> None:
        """Stop reading `partition`'s store; returns once no query is reading it (close it after)."""
        with self._lock:
            self._stores.pop(partition, None)
        self.owners.invalidate()

    def local_partitions(self) -> list[int]:
        return sorted(self._stores)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (raises OSError if the address is taken) and serve on a daemon thread."""
        loop = asyncio.new_event_loop()
        bound: list[Any] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(asyncio.start_server(
                    self._serve, self.cfg.host, self.cfg.port, limit=MAX_HEAD_BYTES))
            except OSError as exc:
                bound.append(exc)
                ready.set()
                return
            bound.append(server)
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=run, name="streamscore-query", daemon=True)
        self._thread.start()
        ready.wait()
        if isinstance(bound[0], OSError):
            raise bound[0]
        self._loop = loop
        self._port = bound[0].sockets[0].getsockname()[1]
        log.info("query endpoint on %s:%d, advertised as %s", self.cfg.host, self._port, self.address)

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the OS's pick for port 0 in tests)."""
        return self._port

    def shutdown(self) -> None:
        """Stop serving, close every connection, detach every store."""
        self.closing = True
        loop, self._loop = self._loop, None
        if loop is not None:
            def stop() -> None:
                for writer in list(self._connections):
                    writer.close()
                loop.stop()

            loop.call_soon_threadsafe(stop)
            assert self._thread is not None
            self._thread.join(10)
        with self._lock:
            self._stores.clear()

    # -- answering ------------------------------------------------------------------------------

    def lookup(self, entity: str, proxied: bool = False) -> Answer:
        """The answer of ``GET /entities/<entity>`` (blocking; the server splits it in two)."""
        answer, partition = self._lookup_local(entity)
        return answer if answer is not None else self._lookup_remote(entity, partition, proxied)

    def _lookup_local(self, entity: str) -> tuple[Answer | None, int]:
        """The answer if the entity's partition is local (or the request is bad), else (None,
        partition); partition -1 when the partition count is not known yet."""
        if not entity:
            return (400, {"error": "bad_request", "detail": "empty entity"}, {}), -1
        n = self.owners.known_partitions
        if n == 0:
            return None, -1
        partition = kafka_partition(entity, n)
        with self._lock:
            store = self._stores.get(partition)
            if store is None:
                return None, partition
            serving, clock, applied = store.read_consistent(
                ((SERVING_PREFIX + entity).encode(), CLOCK_KEY, APPLIED_KEY))
        where = {"entity": entity, "partition": partition, "owner": self.address}
        if serving is None:
            return (404, {"error": "unknown_entity", "detail": "no score for this entity in its partition's store",
                          **where}, {}), partition
        rec, row = decode_serving(serving)
        pclock = PartitionClock.decode(self.grace_ms, clock)
        score = {k: rec[k] for k in ("score", "model", "variant", "event_id", "event_ts", "scored_ts")}
        return (200, {
            **where,
            "feature_spec": self.feature_spec,
            "features": dict(zip(self.names, row)),
            "score": score,
            "partition_clock": {"max_event_ts": pclock.max_ts, "watermark": pclock.watermark},
            "applied_offset": int(applied) if applied is not None else None,
        }, {}), partition

    def _lookup_remote(self, entity: str, partition: int, proxied: bool) -> Answer:
        """Redirect (or proxy) to the owner of `partition`; may block on the network."""
        if partition < 0:
            if self.owners.partitions == 0:
                return 503, {"error": "no_topic", "detail": "input topic metadata unavailable"}, {"Retry-After": "1"}
            answer, partition = self._lookup_local(entity)
            if answer is not None:
                return answer
        owner = self.owners.owner(partition)
        if owner == self.address:  # the table says "here", the store says otherwise: stale
            owner = self.owners.owner(partition, miss=True)
        where = {"entity": entity, "partition": partition, "owner": owner}
        if owner is None or owner == self.address:
            return 503, {"error": "no_owner", "detail": "partition is not assigned right now", **where}, \
                {"Retry-After": "1"}
        if self.cfg.proxy and not proxied:
            answer = _fetch(owner, entity)
            if answer is not None:
                return answer
        return 307, {"error": "not_local", **where}, {"Location": f"http://{owner}/entities/{quote(entity, safe='')}"}

    def partitions_body(self) -> dict[str, Any]:
        self.owners.owner(-1)  # refresh if due
        return {"address": self.address, "partitions": self.owners.partitions, "local": self.local_partitions(),
                "owners": {str(p): a for p, a in sorted(self.owners.table().items())}}

    # -- HTTP -----------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests in order, one response each (one write: head and body)."""
        self._connections.add(writer)
        try:
            while not self.closing:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, {"error": "headers_too_large"}, {}, close=True))
                    break
                t0 = time.perf_counter()
                code, body, headers, close = await self._request(head)
                writer.write(_response(code, body, headers, close))
                self.requests.labels(str(code)).inc()
                self.seconds.observe(time.perf_counter() - t0)
                if close:
                    break
                if writer.transport.get_write_buffer_size() > 65_536:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _request(self, head: bytes) -> tuple[int, dict[str, Any], dict[str, str], bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, {"error": "bad_request", "detail": "malformed request line"}, {}, True
        method, target, version = parts
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        connection = fields.get("connection", "").lower()
        close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        if "content-length" in fields or "transfer-encoding" in fields:
            return 400, {"error": "bad_request", "detail": "requests carry no body"}, {}, True
        if method != "GET":
            return 405, {"error": "method_not_allowed", "detail": "GET only"}, {"Allow": "GET"}, close
        path = target.split("?", 1)[0]
        loop = asyncio.get_running_loop()
        if path.startswith("/entities/"):
            entity = unquote(path[len("/entities/"):])
            answer, partition = self._lookup_local(entity)
            if answer is None:
                answer = await loop.run_in_executor(None, self._lookup_remote, entity, partition,
                                                    PROXIED_HEADER.lower() in fields)
            return (*answer, close)
        if path == "/partitions":
            return 200, await loop.run_in_executor(None, self.partitions_body), {}, close
        return 404, {"error": "not_found", "detail": "GET /entities/<entity> or /partitions"}, {}, close


_REASONS = {200: "OK", 307: "Temporary Redirect", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _response(code: int, body: dict[str, Any], headers: Mapping[str, str], close: bool) -> bytes:
    payload = orjson.dumps(body)
    head = [f"HTTP/1.1 {code} {_REASONS.get(code, '')}", "Content-Type: application/json",
            f"Content-Length: {len(payload)}"]
    head.extend(f"{k}: {v}" for k, v in headers.items())
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def http_get_json(address: str, path: str, headers: Mapping[str, str] | None = None,
                  timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded JSON body, response headers) of one ``GET http://<address><path>``,
    redirects not followed. A minimal client for the proxy, tests and benchmarks."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read()), dict(resp.getheaders())
    finally:
        conn.close()


def _fetch(owner: str, entity: str) -> Answer | None:
    """The owner's answer (proxy mode), or None if it cannot be reached (then redirect)."""
    try:
        code, body, headers = http_get_json(owner, f"/entities/{quote(entity, safe='')}", {PROXIED_HEADER: "1"},
                                            PROXY_TIMEOUT_S)
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as exc:
        log.warning("query: proxy to %s failed: %s", owner, exc)
        return None
    return code, body, {k: v for k, v in headers.items() if k in ("Location", "Retry-After")}
