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

import http.client
import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import orjson
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.config import QueryConfig
from engine.store import APPLIED_KEY, CLOCK_KEY, PartitionStore
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


# -- serving records (written by the scoring loop) -------------------------------------------------

def serving_records(events: Sequence[dict[str, Any]], scores: np.ndarray, rows: np.ndarray, entity_field: str,
                    model: Mapping[str, Any], variant: str, scored_ts: int) -> dict[str, bytes]:
    """Store entries (key ``SERVING_PREFIX + entity``) for one variant's answers of a batch: one
    per entity, from its last event in the batch (events are in processing order)."""
    last = {e[entity_field]: i for i, e in enumerate(events)}
    out: dict[str, bytes] = {}
    for entity, i in last.items():
        event = events[i]
        out[SERVING_PREFIX + entity] = orjson.dumps({
            "score": scores[i].item(), "model": model, "variant": variant, "event_id": event["event_id"],
            "event_ts": event["ts"], "scored_ts": scored_ts, "row": rows[i].tolist(),  # NaN -> null
        })
    return out


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
        """Partition count of the input topic (read with the owner table)."""
        if self._partitions == 0:
            self.refresh()
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

    def close(self) -> None:
        self._admin = None  # type: ignore[assignment]


# -- the server -------------------------------------------------------------------------------

class QueryServer:
    """The query endpoint of one engine process.

    The scoring loop calls `attach` when it owns a partition's (restored) store and `detach`
    before it closes it; queries only ever read attached stores, under `_lock`.
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
        self._server: ThreadingHTTPServer | None = None
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
        """Bind and serve on a daemon thread (the bound port is `port`; useful with port 0)."""
        server = ThreadingHTTPServer((self.cfg.host, self.cfg.port), _handler(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="streamscore-query", daemon=True).start()
        log.info("query endpoint on %s:%d, advertised as %s", self.cfg.host, self.port, self.address)

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.cfg.port

    def shutdown(self) -> None:
        """Stop serving and detach every store (queries in flight finish or find none)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            self._stores.clear()
        self.owners.close()

    # -- answering ------------------------------------------------------------------------------

    def lookup(self, entity: str, proxied: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(HTTP status, JSON body, extra headers) of ``GET /entities/<entity>``."""
        if not entity:
            return 400, {"error": "bad_request", "detail": "empty entity"}, {}
        n = self.owners.partitions
        if n == 0:
            return 503, {"error": "no_topic", "detail": "input topic metadata unavailable"}, {"Retry-After": "1"}
        partition = kafka_partition(entity, n)
        local = self._read(partition, entity)
        if local is not None:
            return local
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

    def _read(self, partition: int, entity: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        with self._lock:
            store = self._stores.get(partition)
            if store is None:
                return None
            serving, clock, applied = store.read_consistent(((SERVING_PREFIX + entity).encode(), CLOCK_KEY, APPLIED_KEY))
        where = {"entity": entity, "partition": partition, "owner": self.address}
        if serving is None:
            return 404, {"error": "unknown_entity", "detail": "no score for this entity in its partition's store",
                         **where}, {}
        rec = orjson.loads(serving)
        max_ts = int(clock) if clock else None
        score = {k: rec[k] for k in ("score", "model", "variant", "event_id", "event_ts", "scored_ts")}
        return 200, {
            **where,
            "feature_spec": self.feature_spec,
            "features": dict(zip(self.names, rec["row"])),
            "score": score,
            "partition_clock": {"max_event_ts": max_ts,
                                "watermark": None if max_ts is None else max_ts - self.grace_ms},
            "applied_offset": int(applied) if applied is not None else None,
        }, {}

    def partitions_body(self) -> dict[str, Any]:
        self.owners.owner(-1)  # refresh if due
        return {"address": self.address, "partitions": self.owners.partitions, "local": self.local_partitions(),
                "owners": {str(p): a for p, a in sorted(self.owners.table().items())}}


def _fetch(owner: str, entity: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """The owner's answer (proxy mode), or None if it cannot be reached (then redirect)."""
    host, _, port = owner.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=PROXY_TIMEOUT_S)
    try:
        conn.request("GET", f"/entities/{quote(entity, safe='')}", headers={PROXIED_HEADER: "1"})
        resp = conn.getresponse()
        body = orjson.loads(resp.read())
        headers = {k: v for k, v in resp.getheaders() if k in ("Location", "Retry-After")}
        return resp.status, body, headers
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as exc:
        log.warning("query: proxy to %s failed: %s", owner, exc)
        return None
    finally:
        conn.close()


def _handler(server: QueryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            t0 = time.perf_counter()
            path = self.path.split("?", 1)[0]
            headers: dict[str, str] = {}
            if path.startswith("/entities/"):
                code, body, headers = server.lookup(unquote(path[len("/entities/"):]),
                                                    proxied=self.headers.get(PROXIED_HEADER) is not None)
            elif path == "/partitions":
                code, body = 200, server.partitions_body()
            else:
                code, body = 404, {"error": "not_found", "detail": "GET /entities/<entity> or /partitions"}
            payload = orjson.dumps(body)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            server.requests.labels(str(code)).inc()
            server.seconds.observe(time.perf_counter() - t0)

        def log_message(self, *args: Any) -> None:  # no per-request logging
            pass

    return Handler
