"""Window semantics end to end, with expectations computed by hand from docs/features.md.

A small custom spec (tumbling 60 s, hopping 60 s by 20 s, sliding 30 s; count, sum, last, mean,
min, max, distinct, ratio, recency; grace 10 s) is given to a real engine process through its
YAML config; a model for that spec is registered; a handcrafted sequence goes through the real
broker. Every score record's `features` must equal the value worked out in the comments, and the
two events that arrive past the grace period must be dead-lettered as `late`, unscored.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.records import headers_dict
from features.partitioning import kafka_partition
from features.spec import Aggregate, FeatureSpec, Ratio, Recency, Window
from tests.integration.conftest import produce_all, read_all, register_small_model
from tests.integration.engine_process import CommittedOffsets, EngineProcesses, engine_yaml, wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 2
T0 = int(datetime(2026, 4, 1, tzinfo=timezone.utc).timestamp() * 1000)  # a multiple of every window
NAN = math.nan

TUMBLING, HOPPING, SLIDING = Window.tumbling("60s"), Window.hopping("60s", "20s"), Window.sliding("30s")
SPEC = FeatureSpec(
    name="windows-e2e",
    grace_ms=10_000,
    idle_ttl_ms=3_600_000,
    features=(
        Aggregate("t_count", "count", TUMBLING),
        Aggregate("t_spend", "sum", TUMBLING, "price"),
        Aggregate("t_last_price", "last", TUMBLING, "price"),
        Aggregate("h_count", "count", HOPPING),
        Aggregate("h_views", "count", HOPPING, where=("product_view",)),
        Aggregate("h_mean_price", "mean", HOPPING, "price"),
        Aggregate("h_min_price", "min", HOPPING, "price"),
        Aggregate("h_max_price", "max", HOPPING, "price"),
        Aggregate("s_count", "count", SLIDING),
        Aggregate("s_products", "distinct", SLIDING, "product_id"),
        Ratio("h_view_share", "h_views", "h_count"),
        Recency("since_last"),
        Recency("since_last_cart", where=("add_to_cart",)),
    ),
)

# alice and frank share a partition (so one watermark); carol is alone in the other one.
ALICE, FRANK, CAROL = "alice", "frank", "carol"


def ev(eid: str, user: str, sec: float, etype: str, price: float | None = None,
       product: str | None = None) -> dict[str, object]:
    return {"event_id": eid, "user_id": user, "session_id": f"s-{user}", "event_type": etype,
            "ts": T0 + int(sec * 1000), "price": price, "product_id": product}


# Topic order (= processing order within a partition). Times are seconds after T0.
# Windows read by an event at t:  tumbling [60*floor(t/60), +60);  hopping [p-40, p+20) with
# p = 20*floor(t/20);  sliding (t-30, t].  Partition watermark = max t so far - 10; late: t < it.
EVENTS = [
    ev("e1", ALICE, 5, "product_view", 10.0, "p1"),
    ev("e2", ALICE, 15, "product_view", 30.0, "p2"),
    ev("e3", FRANK, 18, "page_view"),
    ev("e4", ALICE, 20, "add_to_cart", 30.0, "p2"),  # starts the hopping pane [20, 40)
    ev("e5", ALICE, 12, "product_view", 4.0, "p1"),  # out of order, inside grace (wm 10)
    ev("e6", ALICE, 60, "page_view"),  # on the tumbling and hopping boundaries
    ev("e7", FRANK, 45, "product_view", 7.5, "p3"),  # max 60, wm 50: LATE
    ev("e8", FRANK, 50, "product_view", 8.0, "p3"),  # exactly at the watermark: on time
    ev("e9", ALICE, 79, "product_view", 20.0, "p1"),
    ev("e10", ALICE, 80, "purchase", 50.0, "p2"),  # starts the hopping pane [80, 100)
    ev("e11", CAROL, 10_000, "page_view"),  # far ahead, but in the other partition
    ev("e12", ALICE, 90, "page_view"),  # sliding (60, 90] leaves e6 (t=60) out
    ev("e13", FRANK, 69, "add_to_cart", 8.0, "p3"),  # max 90, wm 80: LATE (carol's 10000 is elsewhere)
]
LATE = {"e7", "e13"}

# Columns: t_count, t_spend, t_last_price | h_count, h_views, h_mean_price, h_min_price,
# h_max_price | s_count, s_products | h_view_share | since_last, since_last_cart
EXPECTED: dict[str, list[float]] = {
    # alice {e1@5}. tumbling [0,60): e1. hopping p=0 -> [-40,20): e1. sliding (-25,5]: e1.
    # No earlier event: both recencies NaN.
    "e1": [1, 10.0, 10.0, 1, 1, 10.0, 10.0, 10.0, 1, 1, 1 / 1, NAN, NAN],
    # tumbling [0,60): e1,e2 -> sum 10+30=40, last = price at the greatest t (15) = 30.
    # hopping [-40,20): e1,e2 -> mean 40/2=20, min 10, max 30. sliding (-15,15]: e1,e2 {p1,p2}.
    # since_last 15-5 = 10 s.
    "e2": [2, 40.0, 30.0, 2, 2, 20.0, 10.0, 30.0, 2, 2, 2 / 2, 10.0, NAN],
    # frank's first event: page_view, no price, no product. sum of nothing 0, last/mean/min/max
    # NaN, distinct 0, views 0 of 1 -> ratio 0.
    "e3": [1, 0.0, NAN, 1, 0, NAN, NAN, NAN, 1, 0, 0 / 1, NAN, NAN],
    # t=20: tumbling [0,60): e1,e2,e4 -> 10+30+30=70, last 30 (t=20). hopping p=20 -> [-20,40):
    # e1,e2,e4 -> views 2, mean 70/3, min 10, max 30. sliding (-10,20]: e1,e2,e4 {p1,p2}.
    # since_last 20-15 = 5; no cart add *before* this one -> NaN.
    "e4": [3, 70.0, 30.0, 3, 2, 70.0 / 3, 10.0, 30.0, 3, 2, 2 / 3, 5.0, NAN],
    # t=12 after t=20 (wm 20-10=10 <= 12: on time). tumbling [0,60): all four, sum in processing
    # order 10+30+30+4 = 74, last = price at the greatest t, still e4 (t=20) -> 30.
    # hopping p=0 -> [-40,20): e1,e2,e5 (e4's t=20 is outside) -> views 3, mean 44/3, min 4,
    # max 30. sliding (-18,12]: e1,e5 (later times excluded) -> distinct {p1} = 1.
    # recencies: latest earlier time 20 > 12 -> max(0, 12-20) = 0 for both.
    "e5": [4, 74.0, 30.0, 3, 3, 44.0 / 3, 4.0, 30.0, 2, 1, 3 / 3, 0.0, 0.0],
    # t=60 opens tumbling [60,120): only e6 -> sum 0, last NaN. hopping p=60 -> [20,80): e4,e6
    # -> views 0, prices {30} -> mean/min/max 30. sliding (30,60]: e6, no product -> 0.
    # since_last 60-20 = 40; since_last_cart 60-20 = 40.
    "e6": [1, 0.0, NAN, 2, 0, 30.0, 30.0, 30.0, 1, 0, 0 / 2, 40.0, 40.0],
    # e7 (t=45 < wm 50) is late: no row, frank's state unchanged.
    # frank t=50 >= wm 50. tumbling [0,60): e3,e8 -> sum 8, last 8. hopping p=40 -> [0,60): e3,e8
    # -> views 1, prices {8}. sliding (20,50]: e8 only (e3 at 18 is out) -> {p3}.
    # since_last 50-18 = 32.
    "e8": [2, 8.0, 8.0, 2, 1, 8.0, 8.0, 8.0, 1, 1, 1 / 2, 32.0, NAN],
    # t=79. tumbling [60,120): e6,e9 -> sum 20, last 20. hopping p=60 -> [20,80): e4,e6,e9 ->
    # views 1, prices 30 (pane 20) + 20 (pane 60) -> mean 50/2 = 25, min 20, max 30.
    # sliding (49,79]: e6,e9 -> {p1}. since_last 79-60 = 19; since_last_cart 79-20 = 59.
    "e9": [2, 20.0, 20.0, 3, 1, 25.0, 20.0, 30.0, 2, 1, 1 / 3, 19.0, 59.0],
    # t=80. tumbling [60,120): e6,e9,e10 -> sum 70, last 50. hopping p=80 -> [40,100): e6,e9,e10
    # -> views 1, prices 20, 50 -> mean 35, min 20, max 50. sliding (50,80]: e6,e9,e10 {p1,p2}.
    # since_last 80-79 = 1; since_last_cart 80-20 = 60.
    "e10": [3, 70.0, 50.0, 3, 1, 35.0, 20.0, 50.0, 3, 2, 1 / 3, 1.0, 60.0],
    # carol: the first event of partition 0, nothing else of hers.
    "e11": [1, 0.0, NAN, 1, 0, NAN, NAN, NAN, 1, 0, 0 / 1, NAN, NAN],
    # t=90 (partition 1's max 80 -> wm 70; carol's t=10000 is in partition 0 and does not count).
    # tumbling [60,120): e6,e9,e10,e12 -> sum 70; last skips null prices -> e10's 50.
    # hopping p=80 -> [40,100): e6,e9,e10,e12 -> views 1, mean 70/2 = 35, min 20, max 50.
    # sliding (60,90]: e9,e10,e12 -- e6 at exactly t=60 is out -> 3, {p1,p2}.
    # since_last 90-80 = 10; since_last_cart 90-20 = 70.
    "e12": [4, 70.0, 50.0, 4, 1, 35.0, 20.0, 50.0, 3, 2, 1 / 4, 10.0, 70.0],
    # e13 (t=69 < wm 90-10 = 80) is late.
}


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry whose champion is a small logistic regression over SPEC's columns."""
    return register_small_model(tmp_path / "registry", SPEC, "windows", seed=5)


def _f32(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_hand_computed_windows_through_the_engine(kafka_bootstrap: str, make_topic, registry: Path,
                                                  tmp_path: Path) -> None:
    assert kafka_partition(ALICE, PARTITIONS) == kafka_partition(FRANK, PARTITIONS) != kafka_partition(CAROL, PARTITIONS)
    assert set(EXPECTED) | LATE == {e["event_id"] for e in EVENTS} and not set(EXPECTED) & LATE
    assert all(len(v) == SPEC.width for v in EXPECTED.values())

    clicks, scores, dlq = make_topic("clicks", PARTITIONS), make_topic("scores", PARTITIONS), make_topic("dlq", 1)
    produce_all(kafka_bootstrap, clicks, [(e["user_id"].encode(), orjson.dumps(e)) for e in EVENTS])  # type: ignore[union-attr]
    config = engine_yaml(
        tmp_path / "engine.yaml", bootstrap_servers=kafka_bootstrap, group_id=f"g-{clicks}", input_topic=clicks,
        scores_topic=scores, dlq_topic=dlq, state_dir=tmp_path / "state", registry=registry, model_name="windows",
        include_features=True, features=SPEC.to_dict(),  # the spec travels as YAML, as documented
    )
    with EngineProcesses() as procs, CommittedOffsets(kafka_bootstrap, f"g-{clicks}", clicks, PARTITIONS) as c:
        engine = procs.start(config, "engine")
        wait_until(lambda: c.total() == len(EVENTS), 60, "every event committed", procs.logs)
        stats = engine.terminate()
    assert stats["consumed"] == len(EVENTS) and stats["scored"] == len(EXPECTED), stats
    assert stats["dead_lettered"] == {"late": len(LATE)}, stats

    records = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, scores, PARTITIONS)]
    assert sorted(r["event_id"] for r in records) == sorted(EXPECTED)
    for r in records:
        assert r["feature_spec"] == SPEC.hash and list(r["features"]) == list(SPEC.names)
        got = _f32([NAN if v is None else v for v in r["features"].values()])
        want = _f32(EXPECTED[r["event_id"]])
        wrong = {name: (float(g), float(w)) for name, g, w in zip(SPEC.names, got, want)
                 if g.tobytes() != w.tobytes()}
        assert not wrong, f"{r['event_id']}: (got, expected) {wrong}"

    dead = read_all(kafka_bootstrap, dlq, 1)
    assert sorted(orjson.loads(m.value())["event_id"] for m in dead) == sorted(LATE)
    for m in dead:
        h = headers_dict(m.headers())
        assert h["reason"] == "late" and int(h["source.partition"]) == kafka_partition(FRANK, PARTITIONS)
