"""The benchmark workload as a Quix Streams app (quixstreams 3.x, its own virtualenv).

    .venv-quix/bin/python benchmarks/peers/quix_app.py peer.json

Idiomatic Quix Streams per its docs: a ``StreamingDataFrame`` over the clicks topic with the
event-time field as the message timestamp (``timestamp_extractor``), per-key ``State`` through
``apply(stateful=True)`` for per-user memory, a tumbling window with ``reduce(...).current()``
(both on its RocksDB state with changelog topics), one ONNX Runtime call per message, and
``processing_guarantee="exactly-once"`` when the run asks for exactly-once. Quix commits (under
exactly-once: a transaction) every ``commit_interval``; read_committed readers see scores only
then. Its default is 5 s; the benchmark sets 1 s (`PeerConfig.commit_interval_s`), a setting its
docs offer for lower latency, so a backlog of a few seconds spans several commits.

Features it computes (17 of the default spec's 38 columns; the rest are NaN): the 1 d tumbling
window's events, purchases and last price; per user: seconds since the last event and the last
cart add, session depth; the event itself: price and the one-hot columns. A ``.current()``
window emits one row per window the event updates, so only a tumbling window yields one row per
event to score; hopping (1 h, 7 d) and sliding (5 min) windows would emit several rows per event
(or one per step) with no way to join them back into one feature row, and distinct counts would
need a set per window. Quix processes one message at a time, so the model scores rows of one.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks.peers.common, without streamscore

from quixstreams import Application, State  # noqa: E402

from benchmarks.peers.common import Model, PeerConfig, event_features, score_record  # noqa: E402

DAY_MS = 86_400_000
GRACE_MS = 60_000  # streamscore's allowed lateness


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return int(value["ts"])


def user_memory(event: dict[str, Any], state: State) -> dict[str, Any]:
    """Recency and session depth from the user's state (before this event), then update it."""
    prev_ts, prev_cart = state.get("ts"), state.get("cart_ts")
    depth = state.get("depth", 0) + 1 if state.get("session") == event["session_id"] else 1
    ts = event["ts"]
    state.set("ts", max(prev_ts if prev_ts is not None else ts, ts))
    state.set("session", event["session_id"])
    state.set("depth", depth)
    if event["event_type"] == "add_to_cart":
        state.set("cart_ts", max(prev_cart if prev_cart is not None else ts, ts))
    event["_mem"] = {
        "secs_since_last_event": max(0, ts - prev_ts) / 1000 if prev_ts is not None else math.nan,
        "secs_since_last_cart_add": max(0, ts - prev_cart) / 1000 if prev_cart is not None else math.nan,
        "session_depth": depth,
    }
    return event


def day_init(event: dict[str, Any]) -> dict[str, Any]:
    return day_add({"n": 0, "pu": 0, "lts": -1, "lp": None}, event)


def day_add(agg: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The day's aggregates plus the event being processed (the reducer sees events in order)."""
    price = event.get("price")
    last = price is not None and event["ts"] >= agg["lts"]
    return {"n": agg["n"] + 1, "pu": agg["pu"] + (event["event_type"] == "purchase"),
            "lts": event["ts"] if last else agg["lts"], "lp": price if last else agg["lp"], "event": event}


def main(config_path: str) -> None:
    cfg = PeerConfig.load(config_path)
    model = Model(cfg.model_path, cfg.columns)
    app = Application(
        broker_address=cfg.bootstrap,
        consumer_group=cfg.app_id,
        auto_offset_reset="earliest",
        state_dir=cfg.state_dir,
        processing_guarantee="exactly-once" if cfg.guarantee == "exactly_once" else "at-least-once",
        commit_interval=cfg.commit_interval_s,
        loglevel="WARNING",
    )
    clicks = app.topic(cfg.input_topic, value_deserializer="json", key_deserializer="str",
                       timestamp_extractor=event_time)
    scores = app.topic(cfg.scores_topic, value_serializer="bytes", key_serializer="str")

    def score(window: dict[str, Any]) -> bytes:
        day = window["value"]
        event = day["event"]
        row = {"events_1d": day["n"], "purchases_1d": day["pu"],
               "last_price_1d": day["lp"] if day["lp"] is not None else math.nan, **event["_mem"]}
        row.update(event_features(event))
        return score_record(event, model.score(model.row(row))[0], "quix")

    sdf = app.dataframe(clicks)
    sdf = sdf.apply(user_memory, stateful=True)
    sdf = sdf.tumbling_window(duration_ms=DAY_MS, grace_ms=GRACE_MS).reduce(day_add, day_init).current()
    sdf = sdf.apply(score)
    # A window result carries the window start as its timestamp; the score is produced now
    # (and a start far from the broker's clock is refused by log.message.timestamp.*.max.ms).
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000))
    sdf.to_topic(scores)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1])
