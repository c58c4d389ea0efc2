"""Unit tests for the synthetic clickstream generator, its sinks and its CLI (no Kafka needed)."""

from __future__ import annotations

import bisect
import functools
import gzip
import math
import re
from collections import Counter, defaultdict
from itertools import islice
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from engine import cli_gen as cli_mod
from engine.loadgen import DeliveryError, TokenBucket, produce, write_jsonl
from features.schema import CANONICAL_FIELDS
from features.synthetic import (
    BAD_KINDS,
    COUNTRIES,
    DEVICES,
    EVENT_TYPES,
    JITTER_CAP,
    PRODUCT_EVENT_TYPES,
    REFERRERS,
    ClickstreamGenerator,
    Drift,
    GeneratorConfig,
    corrupt_payload,
    encode,
)

FIELDS = CANONICAL_FIELDS  # the generator emits exactly the canonical event
MIN_TS = 946_684_800_000  # 2000-01-01
MAX_TS = 4_102_444_800_000  # 2100-01-01
HOUR = 3_600_000


def gen(**kw: object) -> list[dict]:
    """Events of GeneratorConfig(**kw) (n_events defaults to 20k); cached, so do not mutate."""
    kw.setdefault("n_events", 20_000)
    return _cached(GeneratorConfig(**kw))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=16)
def _cached(cfg: GeneratorConfig) -> list[dict]:
    return list(ClickstreamGenerator(cfg).events())


@pytest.fixture(scope="module")
def base() -> list[dict]:
    """A clean stream with ts in emission order (jitter 0)."""
    return gen(n_events=40_000, seed=11)


def contract_violation(payload: bytes) -> str | None:
    """Why a payload breaks the event contract, or None if it is a valid event."""
    if len(payload) > 1 << 20:
        return "oversize"
    try:
        ev = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "not json"
    if not isinstance(ev, dict):
        return "not an object"
    for k in FIELDS:
        if k not in ev:
            return f"missing {k}"
    if set(ev) != set(FIELDS):
        return "extra fields"
    for k in ("event_id", "user_id", "session_id", "page", "device", "country", "referrer", "event_type"):
        if not isinstance(ev[k], str):
            return f"{k} not str"
    if not re.fullmatch(r"u\d{6}", ev["user_id"]):
        return "user_id format"
    if ev["event_type"] not in EVENT_TYPES:
        return "event_type"
    if type(ev["ts"]) is not int or not MIN_TS <= ev["ts"] <= MAX_TS:
        return "ts"
    if ev["device"] not in DEVICES or ev["referrer"] not in REFERRERS or not re.fullmatch(r"[A-Z]{2}", ev["country"]):
        return "enum"
    price, pid = ev["price"], ev["product_id"]
    if ev["event_type"] in PRODUCT_EVENT_TYPES:
        if type(price) is not float or not math.isfinite(price) or price < 0 or round(price, 2) != price:
            return "price"
        if not isinstance(pid, str):
            return "product_id"
    elif price is not None or pid is not None:
        return "price/product_id on a non-product event"
    if not ev["page"].startswith("/"):
        return "page"
    return None


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_byte_identical_and_different_seed_differs() -> None:
    cfg = GeneratorConfig(
        n_events=5_000,
        seed=42,
        jitter_ms=1_500,
        late_fraction=0.01,
        bad_fraction=0.05,
        bad_kinds=tuple(k for k in BAD_KINDS if k != "oversize"),
        drifts=(Drift("price_shift", 0.5, {"factor": 2.0}), Drift.parse("mix_shift@3000")),
    )
    a = list(ClickstreamGenerator(cfg).payloads())
    b = list(ClickstreamGenerator(GeneratorConfig(**{**cfg.__dict__})).payloads())
    assert a == b
    g = ClickstreamGenerator(cfg)
    assert list(g.payloads()) == list(g.payloads())  # each call restarts from the seed
    other = list(ClickstreamGenerator(GeneratorConfig(**{**cfg.__dict__, "seed": 43})).payloads())
    assert other != a


def test_payloads_are_encoded_events_keyed_by_user(base: list[dict]) -> None:
    g = ClickstreamGenerator(GeneratorConfig(n_events=40_000, seed=11))
    assert sum(1 for _ in islice(g.payloads(), 40_001)) == len(base)
    pays = list(islice(g.payloads(), 10_000))
    for (k, v), ev in zip(pays, base[:10_000], strict=True):
        assert k == ev["user_id"].encode()
        assert v == encode(ev)


def test_endless_stream_and_start_time() -> None:
    g = ClickstreamGenerator(GeneratorConfig(n_events=None, start="2026-03-01T00:00:00+00:00", seed=3))
    evs = list(islice(g.events(), 3_000))
    assert len(evs) == 3_000
    assert evs[0]["ts"] >= 1_772_323_200_000  # 2026-03-01
    assert gen(n_events=0) == []


# --------------------------------------------------------------------------- schema


def test_every_good_event_matches_contract(base: list[dict]) -> None:
    for ev in base:
        assert tuple(ev) == FIELDS
        assert contract_violation(encode(ev)) is None, ev
    assert len({e["event_id"] for e in base}) == len(base)
    assert {e["event_type"] for e in base} == set(EVENT_TYPES)
    assert {e["country"] for e in base} <= set(COUNTRIES)
    owner: dict[str, str] = {}
    for e in base:  # a session belongs to one user, with one referrer and device
        assert owner.setdefault(e["session_id"], e["user_id"]) == e["user_id"]
    # device is fixed per user most of the time; country always
    per_user_dev: dict[str, Counter[str]] = defaultdict(Counter)
    per_user_country: dict[str, set[str]] = defaultdict(set)
    for e in base:
        per_user_dev[e["user_id"]][e["device"]] += 1
        per_user_country[e["user_id"]].add(e["country"])
    main = sum(c.most_common(1)[0][1] for c in per_user_dev.values())
    assert main / len(base) > 0.9
    assert all(len(c) == 1 for c in per_user_country.values())


def test_prices_are_fixed_per_product_and_lognormalish(base: list[dict]) -> None:
    seen: dict[str, float] = {}
    for e in base:
        if e["event_type"] in ("product_view", "add_to_cart"):
            assert seen.setdefault(e["product_id"], e["price"]) == e["price"]
    logp = np.log(np.array(list(seen.values())))
    assert 2.5 < float(np.median(logp)) < 4.0 and 0.6 < float(logp.std()) < 1.2


def test_time_scales(base: list[dict]) -> None:
    sess_ts: dict[str, list[int]] = defaultdict(list)
    user_sessions: dict[str, list[int]] = defaultdict(list)
    for e in base:
        if not sess_ts[e["session_id"]]:
            user_sessions[e["user_id"]].append(e["ts"])
        sess_ts[e["session_id"]].append(e["ts"])
    in_gaps = np.concatenate([np.diff(v) for v in sess_ts.values() if len(v) > 1])
    assert 5_000 < np.median(in_gaps) < 120_000  # seconds to minutes
    between = np.concatenate([np.diff(v) for v in user_sessions.values() if len(v) > 1])
    assert np.median(between) > 2 * HOUR  # hours
    assert np.percentile(between, 1) > 10 * 60_000


# --------------------------------------------------------------------------- event time vs emission order


def lateness(evs: list[dict]) -> np.ndarray:
    """max(ts of earlier-emitted events) - ts, per event (>0 means out of order)."""
    ts = np.array([e["ts"] for e in evs], dtype=np.int64)
    return np.maximum.accumulate(ts) - ts


def test_no_jitter_means_ordered_ts(base: list[dict]) -> None:
    assert lateness(base).max() == 0


@pytest.mark.parametrize("dist", ["exponential", "uniform", "halfnormal"])
def test_jitter_bounds_and_only_ts_changes(dist: str) -> None:
    clean = gen(seed=5, n_events=10_000)
    jit = gen(seed=5, n_events=10_000, jitter_ms=3_000, jitter_dist=dist)
    late = lateness(jit)
    assert (late > 0).mean() > 0.02  # out of order ...
    assert late.max() <= JITTER_CAP * 3_000  # ... but bounded by a few jitter scales
    shift = np.array([c["ts"] - j["ts"] for c, j in zip(clean, jit, strict=True)])
    assert shift.min() >= 0 and shift.max() <= JITTER_CAP * 3_000
    assert 1_000 < shift.mean() < 5_000
    strip = [{k: v for k, v in e.items() if k != "ts"} for e in jit]
    assert strip == [{k: v for k, v in e.items() if k != "ts"} for e in clean]


def test_late_fraction() -> None:
    clean = gen(seed=6)
    evs = gen(seed=6, jitter_ms=1_000, late_fraction=0.02, late_ms=600_000)
    shift = np.array([c["ts"] - e["ts"] for c, e in zip(clean, evs, strict=True)])
    very = shift >= 600_000
    assert 0.01 < very.mean() < 0.03
    assert shift.max() <= 3 * 600_000
    assert (shift[~very] <= JITTER_CAP * 1_000).all()


# --------------------------------------------------------------------------- activity / behaviour


def test_zipf_activity_skew(base: list[dict]) -> None:
    counts = np.array(sorted(Counter(e["user_id"] for e in base).values(), reverse=True))
    n_users = 2_000
    assert counts[: n_users // 10].sum() / counts.sum() > 0.4  # top 10% of users: large share
    assert len(counts) > n_users * 0.8  # long tail is present
    assert np.median(counts) < counts.mean() / 2


def test_purchases_follow_checkout_and_cart(base: list[dict]) -> None:
    by_sess: dict[str, list[dict]] = defaultdict(list)
    for e in base:
        by_sess[e["session_id"]].append(e)
    n_pur = after_cart = after_checkout = 0
    for evs in by_sess.values():
        for i, e in enumerate(evs):
            if e["event_type"] == "purchase":
                n_pur += 1
                after_checkout += i > 0 and evs[i - 1]["event_type"] == "checkout"
                after_cart += any(x["event_type"] == "add_to_cart" for x in evs[:i])
    assert n_pur > 300
    assert after_checkout == n_pur
    assert after_cart / n_pur > 0.6  # the rest come back to a cart kept from an earlier session
    conv = sum(any(e["event_type"] == "purchase" for e in v) for v in by_sess.values()) / len(by_sess)
    assert 0.02 < conv < 0.2


def test_purchase_within_1h_is_predictable(base: list[dict]) -> None:
    purchases: dict[str, list[int]] = defaultdict(list)
    for e in base:
        if e["event_type"] == "purchase":
            purchases[e["user_id"]].append(e["ts"])
    label = []
    for e in base:
        pts = purchases.get(e["user_id"], [])
        i = bisect.bisect_right(pts, e["ts"])
        label.append(i < len(pts) and pts[i] - e["ts"] <= HOUR)
    y = np.array(label)
    et = np.array([e["event_type"] for e in base])
    rate = {t: y[et == t].mean() for t in EVENT_TYPES}
    base_rate = y[et != "purchase"].mean()
    assert rate["add_to_cart"] > 3 * base_rate
    assert rate["checkout"] > 5 * base_rate
    assert rate["page_view"] < base_rate
    # past purchasers buy again more often than users without purchases so far
    bought: set[str] = set()
    with_past, without = [], []
    for e, lab in zip(base, y, strict=True):
        (with_past if e["user_id"] in bought else without).append(lab)
        if e["event_type"] == "purchase":
            bought.add(e["user_id"])
    assert np.mean(with_past) > 1.5 * np.mean(without)


def test_conversion_depends_on_device_and_referrer(base: list[dict]) -> None:
    def conv(field: str, value: str) -> float:
        s = {e["session_id"] for e in base if e[field] == value}
        p = {e["session_id"] for e in base if e[field] == value and e["event_type"] == "purchase"}
        return len(p) / len(s)

    assert conv("device", "desktop") > 1.3 * conv("device", "mobile")
    assert conv("referrer", "email") > 1.5 * conv("referrer", "social")


# --------------------------------------------------------------------------- drift


def _split(kind: str, params: dict, at: float = 0.5, n: int = 20_000) -> tuple[list[dict], list[dict], list[dict]]:
    clean = gen(n_events=n, seed=9)
    drifted = gen(n_events=n, seed=9, drifts=(Drift(kind, at, params),))
    i = int(at * n)
    assert drifted[:i] == clean[:i]  # nothing changes before the point
    assert drifted[i:] != clean[i:]
    return drifted[:i], drifted[i:], clean[i:]


def test_drift_mix_shift() -> None:
    before, after, clean_after = _split("mix_shift", {})

    def share(evs: list[dict], field: str, value: str) -> float:
        return sum(e[field] == value for e in evs) / len(evs)

    assert share(after, "device", "mobile") > share(before, "device", "mobile") + 0.15
    assert share(after, "referrer", "social") > share(before, "referrer", "social") + 0.15
    assert abs(share(clean_after, "device", "mobile") - share(before, "device", "mobile")) < 0.05


def test_drift_price_shift() -> None:
    before, after, _ = _split("price_shift", {"factor": 1.5})
    base_price = {e["product_id"]: e["price"] for e in before if e["event_type"] == "product_view"}
    checked = 0
    for e in after:
        if e["event_type"] == "product_view" and e["product_id"] in base_price:
            assert e["price"] == round(base_price[e["product_id"]] * 1.5, 2)
            checked += 1
    assert checked > 1_000


def test_drift_conversion_collapse() -> None:
    before, after, clean_after = _split("conversion_collapse", {"device": "mobile", "factor": 0.0})

    def ratio(evs: list[dict], device: str) -> float:
        c = Counter(e["event_type"] for e in evs if e["device"] == device)
        return c["purchase"] / c["checkout"]

    assert ratio(before, "mobile") > 0.3
    assert ratio(after, "mobile") == 0.0
    assert ratio(clean_after, "mobile") > 0.3
    assert ratio(after, "desktop") > 0.5 * ratio(before, "desktop")


def test_drift_parse_and_validation() -> None:
    d = Drift.parse("price_shift@0.5:factor=1.5")
    assert d == Drift("price_shift", 0.5, {"factor": 1.5})
    assert d.param("factor", 1.0) == 1.5 and d.index(1000) == 500
    d2 = Drift.parse("conversion_collapse@2500:device=tablet,factor=0.1")
    assert d2.at == 2500 and d2.param("device", "mobile") == "tablet" and d2.index(None) == 2500
    assert hash(GeneratorConfig(drifts=(d, d2)))  # frozen + hashable
    bad_specs = ("price_shift", "nope@0.5", "price_shift@0.5:bogus=1", "price_shift@1.5", "mix_shift@0.5:social")
    for bad in (*bad_specs, "mix_shift@0.5:strength=2", "mix_shift@0.5:mobile=0,desktop=0,tablet=0"):
        with pytest.raises(ValueError):
            Drift.parse(bad)
    with pytest.raises(ValueError):
        GeneratorConfig(n_events=None, drifts=(d,))  # fraction of an endless stream


# --------------------------------------------------------------------------- bad payloads


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_corrupt_payload_kind_is_invalid(kind: str) -> None:
    rng = np.random.default_rng(1)
    good = gen(n_events=50, seed=1)
    for ev in [None, *good[:20]]:
        payload, k = corrupt_payload(rng, ev, kind=kind)
        assert k == kind
        assert b"\n" not in payload
        assert contract_violation(payload) is not None, payload[:300]
    if kind == "price_nan":
        assert any(lit in payload for lit in (b"NaN", b"Infinity"))
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)


def test_payloads_with_bad_fraction() -> None:
    n = 6_000
    clean = [v for _, v in ClickstreamGenerator(GeneratorConfig(n_events=n, seed=2)).payloads()]
    g = ClickstreamGenerator(GeneratorConfig(n_events=n, seed=2, bad_fraction=0.2))
    labelled = list(g.labelled_payloads())
    assert [(k, v) for k, v, _ in labelled] == list(g.payloads())
    assert len(labelled) == n
    kinds = Counter(kind for _, _, kind in labelled if kind)
    assert set(kinds) == set(BAD_KINDS)
    assert 0.17 < sum(kinds.values()) / n < 0.23
    for i, (key, value, kind) in enumerate(labelled):
        assert re.fullmatch(rb"u\d{6}", key)
        if kind is None:
            assert value == clean[i]  # good messages identical to the clean stream
            assert contract_violation(value) is None
        else:
            assert contract_violation(value) is not None


# --------------------------------------------------------------------------- sinks


def test_write_jsonl_roundtrip(tmp_path: Path) -> None:
    evs = gen(n_events=500, seed=4)
    p = tmp_path / "h.jsonl"
    assert write_jsonl(p, evs) == 500
    assert [orjson.loads(line) for line in p.read_bytes().splitlines()] == evs
    gz = tmp_path / "h.jsonl.gz"
    g = ClickstreamGenerator(GeneratorConfig(n_events=500, seed=4, bad_fraction=0.1, bad_kinds=("not_object",)))
    assert write_jsonl(gz, g.payloads()) == 500
    assert gzip.decompress(gz.read_bytes()).splitlines() == [v for _, v in g.payloads()]
    with pytest.raises(ValueError):
        write_jsonl(tmp_path / "x.jsonl", [b"{}\n{}"])


class FakeProducer:
    def __init__(self, conf: dict, fail_every: int = 0, queue_limit: int = 10**9) -> None:
        self.conf, self.fail_every, self.queue_limit = conf, fail_every, queue_limit
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.pending: list = []
        self.buffer_errors = 0

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery=None) -> None:  # noqa: ANN001
        if len(value) > 1_000_000:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        if len(self.pending) >= self.queue_limit:
            self.buffer_errors += 1
            raise BufferError("queue full")
        self.sent.append((key, value))
        fail = self.fail_every and len(self.sent) % self.fail_every == 0
        self.pending.append((on_delivery, KafkaError(KafkaError._MSG_TIMED_OUT) if fail else None))

    def poll(self, timeout: float = 0) -> int:
        n = len(self.pending)
        for cb, err in self.pending:
            cb(err, None)
        self.pending.clear()
        return n

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


def test_produce_paced_keyed_and_ordered() -> None:
    holder: list[FakeProducer] = []

    def factory(conf: dict) -> FakeProducer:
        holder.append(FakeProducer(conf, queue_limit=10))
        return holder[0]

    g = ClickstreamGenerator(GeneratorConfig(n_events=1_200, seed=8))
    summary = produce("h:9092", "clicks", g.payloads(), rate=4_000, producer_factory=factory, progress_every=0)
    p = holder[0]
    assert p.conf["bootstrap.servers"] == "h:9092" and p.conf["enable.idempotence"] is True
    assert p.sent == list(g.payloads())
    assert summary.sent == summary.delivered == 1_200 and summary.rejected_oversize == 0
    assert 0.25 < summary.seconds < 0.6  # 1200 events at 4000/s ~ 0.3 s
    assert 2_000 < summary.rate < 4_800
    assert p.buffer_errors > 0  # BufferError was retried, nothing lost


def test_produce_limits_oversize_and_errors() -> None:
    evs = gen(n_events=300, seed=8)
    s = produce("h", "t", evs, max_events=100, producer_factory=FakeProducer, progress_every=0)
    assert s.sent == 100
    big = [(b"u000001", b"x" * 2_000_000), *[(e["user_id"].encode(), encode(e)) for e in evs[:10]]]
    s = produce("h", "t", big, producer_factory=FakeProducer, progress_every=0)
    assert s.sent == 10 and s.rejected_oversize == 1
    with pytest.raises(KafkaException):
        produce("h", "t", big, producer_factory=FakeProducer, tolerate_oversize=False, progress_every=0)
    with pytest.raises(DeliveryError):
        produce("h", "t", evs, producer_factory=lambda c: FakeProducer(c, fail_every=7), progress_every=0)
    s = produce("h", "t", evs, max_seconds=0.0, batch_size=50, producer_factory=FakeProducer, progress_every=0)
    assert 0 < s.sent < 300  # stopped by the time limit after the first batch


def test_token_bucket_long_run_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(dt: float) -> None:
        slept.append(dt)
        now[0] += dt

    tb = TokenBucket(1_000, burst=100, clock=lambda: now[0], sleep=sleep)
    for _ in range(50):
        tb.acquire(200)  # batches larger than the burst still average out exactly
    assert now[0] == pytest.approx(10.0)
    now[0] += 100.0  # idle: tokens capped at burst
    t = now[0]
    tb.acquire(300)
    assert now[0] - t == pytest.approx(0.2)


# --------------------------------------------------------------------------- CLI


def test_cli_history(tmp_path: Path) -> None:
    out = tmp_path / "h.jsonl"
    args = ["history", "--out", str(out), "--events", "2000", "--users", "300", "--seed", "3", "--jitter-ms", "500"]
    args += ["--bad-fraction", "0.05", "--bad-kinds", "malformed_json,ts_absurd", "--drift", "price_shift@0.5:factor=2"]
    r = CliRunner().invoke(cli_mod.gen_app, args)
    assert r.exit_code == 0, r.output
    assert "wrote 2,000 messages" in r.output and "bad" in r.output
    cfg = GeneratorConfig(
        n_events=2000,
        n_users=300,
        seed=3,
        jitter_ms=500,
        bad_fraction=0.05,
        bad_kinds=("malformed_json", "ts_absurd"),
        drifts=(Drift("price_shift", 0.5, {"factor": 2.0}),),
    )
    assert out.read_bytes().splitlines() == [v for _, v in ClickstreamGenerator(cfg).payloads()]
    bad = CliRunner().invoke(cli_mod.gen_app, ["history", "--out", str(out), "--drift", "price_shift@0.5:x=1"])
    assert bad.exit_code != 0


def test_cli_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    def fake_produce(bootstrap: str, topic: str, payloads, **kw):  # noqa: ANN001, ANN003, ANN202
        calls.append({"bootstrap": bootstrap, "topic": topic, "n": sum(1 for _ in payloads), **kw})
        from engine.loadgen import ProduceSummary

        return ProduceSummary(calls[-1]["n"], calls[-1]["n"], 0, 0, 1.0, float(calls[-1]["n"]))

    monkeypatch.setattr(cli_mod, "produce", fake_produce)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    runner = CliRunner()
    r = runner.invoke(cli_mod.gen_app, ["stream", "--topic", "clicks", "--rate", "500", "--events", "1000"])
    assert r.exit_code == 0, r.output
    assert calls[-1]["bootstrap"] == "broker:9092" and calls[-1]["rate"] == 500 and calls[-1]["n"] == 1000
    assert "sent 1,000 messages to clicks" in r.output
    r = runner.invoke(cli_mod.gen_app, ["stream", "--rate", "100", "--seconds", "2", "--drift", "mix_shift@0.5"])
    assert r.exit_code == 0, r.output
    assert calls[-1]["n"] == 200 and calls[-1]["max_seconds"] == 2
    assert runner.invoke(cli_mod.gen_app, ["stream"]).exit_code != 0  # needs --events or --seconds
    assert runner.invoke(cli_mod.gen_app, ["stream", "--seconds", "1", "--drift", "mix_shift@0.5"]).exit_code != 0
