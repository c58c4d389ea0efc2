"""The benchmark workload as a Faust app (faust-streaming, its default aiokafka driver).

    BENCH_PEER_CONFIG=peer.json python -m benchmarks.peers.faust_app worker -l warn

Idiomatic Faust per its docs: a ``Record`` for the click, windowed ``Table``s on the RocksDB store
(``store="rocksdb://"``; faust-streaming opens it through rocksdict when that is installed, as it
is here) made relative to the event-time field, one non-windowed table for per-user memory, one
agent with ``concurrency=1`` (tables need one writer per partition), and the one-row ONNX call
made inline (tens of µs; a ``loop.run_in_executor`` round trip per event cost more than it
saved). Processing guarantee: Faust's default, at-least-once (offsets committed every
``broker_commit_interval``, 2.8 s). Settings that differ from Faust's defaults:
``producer_linger`` 5 ms (streamscore's ``linger.ms``; with the default 0 every score and
changelog record is its own produce request), and a ``Worker`` class without the terminal
spinner, which would otherwise keep the root logger at DEBUG (see `Worker`). Each event writes one
record per window it falls in (12 for 1 h hopping by 5 min, 1 for the day, 7 for the week) plus
one for the user, and each of those is a changelog record: that is how Faust's windowed tables
work, and it is what dominates this app's cost (benchmarks/README.md).

Features it computes (32 of the default spec's 38 columns; the rest are NaN):
* 1 h hopping by 5 min (one table, a dict of aggregates per window; the oldest window that holds
  the event is read, like streamscore's hopping semantics): events, product views, cart adds and
  removes, checkouts, searches, cart value, mean/max/min view price, cart adds per view;
* 1 d tumbling: events, purchases, last price; 7 d hopping by 1 d: events, cart adds,
  purchases, spend;
* per user: seconds since the last event and the last cart add, session depth;
* the event itself: price and the one-hot columns.
Not expressed: the 5-minute *sliding* (continuous) window (Faust windows are tumbling or
hopping) and distinct counts (sessions/products; a set per window would be needed).
"""

from __future__ import annotations

import logging
import math
import os
from datetime import timedelta
from typing import Any, Optional

import faust
import numpy as np

from benchmarks.peers.common import Model, PeerConfig, event_features, score_record

cfg = PeerConfig.load(os.environ["BENCH_PEER_CONFIG"])


class Worker(faust.Worker):
    """Faust's worker without its terminal spinner.

    With a log level of WARN or above (``-l warn``), Faust's worker hooks a progress spinner into
    the root logger and sets the root logger's level to DEBUG for the process's lifetime, so that
    every log call turns the spinner. Every ``log.debug`` in aiokafka's and Faust's per-record
    produce path (three or more per changelog record) then builds a LogRecord and runs the
    handlers, which drop it: ~14 % of the event loop at saturation (py-spy). Without the spinner,
    the root logger keeps the level asked for.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        pass


app = faust.App(
    cfg.app_id,
    broker=f"kafka://{cfg.bootstrap}",
    store="rocksdb://",
    datadir=cfg.state_dir,
    topic_partitions=cfg.partitions,
    processing_guarantee=cfg.guarantee,
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    producer_linger=0.005,  # as streamscore's linger.ms=5; Faust's default 0 sends a request per record
    Worker=Worker,
)


class Click(faust.Record, serializer="json"):
    event_id: str
    user_id: str
    session_id: str
    event_type: str
    ts: int  # event time, epoch ms
    page: str
    product_id: Optional[str]
    price: Optional[float]
    device: str
    country: str
    referrer: str
    ts_s: float = 0.0  # event time in seconds: Faust windows count in seconds

    def __post_init__(self) -> None:
        self.ts_s = self.ts / 1000.0


clicks = app.topic(cfg.input_topic, key_type=str, value_type=Click)
scores = app.topic(cfg.scores_topic, key_type=str, value_serializer="raw")

H1 = app.Table("h1h", default=dict).hopping(3600, 300, expires=timedelta(hours=2)).relative_to_field(Click.ts_s)
D1 = app.Table("t1d", default=dict).tumbling(86400, expires=timedelta(days=2)).relative_to_field(Click.ts_s)
D7 = app.Table("h7d", default=dict).hopping(7 * 86400, 86400, expires=timedelta(days=8)).relative_to_field(Click.ts_s)
USERS = app.Table("users", default=dict)

model = Model(cfg.model_path, cfg.columns)


def _add(agg: dict[str, Any], c: Click) -> dict[str, Any]:
    """One click into a window's aggregates (a new dict: table values are replaced, not mutated)."""
    agg = dict(agg)
    et, price = c.event_type, c.price
    agg["n"] = agg.get("n", 0) + 1
    if et == "product_view":
        agg["pv"] = agg.get("pv", 0) + 1
        if price is not None:
            agg["vs"] = agg.get("vs", 0.0) + price
            agg["vn"] = agg.get("vn", 0) + 1
            agg["vmax"] = max(agg.get("vmax", -math.inf), price)
            agg["vmin"] = min(agg.get("vmin", math.inf), price)
    elif et == "add_to_cart":
        agg["ca"] = agg.get("ca", 0) + 1
        agg["cv"] = agg.get("cv", 0.0) + (price or 0.0)
    elif et == "remove_from_cart":
        agg["cr"] = agg.get("cr", 0) + 1
    elif et == "checkout":
        agg["co"] = agg.get("co", 0) + 1
    elif et == "search":
        agg["se"] = agg.get("se", 0) + 1
    elif et == "purchase":
        agg["pu"] = agg.get("pu", 0) + 1
        agg["sp"] = agg.get("sp", 0.0) + (price or 0.0)
    if price is not None and c.ts >= agg.get("lts", -1):
        agg["lts"], agg["lp"] = c.ts, price
    return agg


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def features(c: Click) -> dict[str, float]:
    uid, ts = c.user_id, c.ts_s
    for table in (H1, D1, D7):
        table[uid].apply(_add, c)
    h = H1[uid][H1.table.window.earliest(ts)]  # the full hour ending with the event's 5-min pane
    d = D1[uid].value()  # the window of the event's time field
    w = D7[uid][D7.table.window.earliest(ts)]
    u = USERS[uid]
    prev_ts, prev_cart = u.get("ts"), u.get("cart_ts")
    depth = u.get("depth", 0) + 1 if u.get("session") == c.session_id else 1
    USERS[uid] = {"ts": max(prev_ts or c.ts, c.ts), "session": c.session_id, "depth": depth,
                  "cart_ts": max(prev_cart or c.ts, c.ts) if c.event_type == "add_to_cart" else prev_cart}
    vn = h.get("vn", 0)
    row = {
        "events_1h": h.get("n", 0), "product_views_1h": h.get("pv", 0), "cart_adds_1h": h.get("ca", 0),
        "cart_removes_1h": h.get("cr", 0), "checkouts_1h": h.get("co", 0), "searches_1h": h.get("se", 0),
        "cart_value_1h": h.get("cv", 0.0), "mean_view_price_1h": _ratio(h.get("vs", 0.0), vn),
        "max_view_price_1h": h.get("vmax", math.nan), "min_view_price_1h": h.get("vmin", math.nan),
        "cart_per_view_1h": _ratio(h.get("ca", 0), h.get("pv", 0)),
        "events_1d": d.get("n", 0), "purchases_1d": d.get("pu", 0), "last_price_1d": d.get("lp", math.nan),
        "events_7d": w.get("n", 0), "cart_adds_7d": w.get("ca", 0), "purchases_7d": w.get("pu", 0),
        "spend_7d": w.get("sp", 0.0),
        "secs_since_last_event": max(0, c.ts - prev_ts) / 1000 if prev_ts is not None else math.nan,
        "secs_since_last_cart_add": max(0, c.ts - prev_cart) / 1000 if prev_cart is not None else math.nan,
        "session_depth": depth,
    }
    row.update(event_features(c.asdict()))
    return row


@app.agent(clicks, concurrency=1)
async def score(stream: faust.StreamT[Click]) -> None:
    async for click in stream:
        # One ONNX row takes tens of µs: calling it inline blocks the loop less than a thread
        # pool round trip per event (submit, wake-up, future callback) costs.
        p: np.ndarray = model.score(model.row(features(click)))
        await scores.send(key=click.user_id, value=score_record(click.asdict(), p[0], "faust"))


if __name__ == "__main__":
    app.main()
