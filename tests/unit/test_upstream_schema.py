"""Foreign upstreams by configuration: timestamp units and formats, event-type mapping, extra
categorical fields, derived event ids (equal from JSON, CSV and Parquet), CSV event logs."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.eventlog import read_events, upstream_messages
from features.schema import BAD_TIMESTAMP, WRONG_TYPE, EventSchema, InvalidEvent
from features.spec import FeatureSpec, OneHot

BASE = {"user_id": "u1", "event_type": "view"}
LO, HI = 946_684_800_000, 4_102_444_800_000


@settings(max_examples=300)
@given(st.integers(min_value=LO, max_value=HI - 1), st.integers(min_value=0, max_value=999_999))
def test_every_unit_floors_to_the_same_millisecond(ms: int, sub_ms_ns: int) -> None:
    ns = ms * 1_000_000 + sub_ms_ns  # a time inside millisecond `ms`
    cases = {
        "ns": [ns, str(ns)],
        "us": [ns // 1000, str(ns // 1000), (ns // 1000) + 0.25],
        "ms": [ms, str(ms), ms + 0.5],
        "s": [f"{ms // 1000}.{ms % 1000:03d}", float(f"{ms // 1000}.{ms % 1000:03d}")],
    }
    for unit, values in cases.items():
        schema = EventSchema(ts_unit=unit, derive_event_id=True)
        for value in values:
            assert schema.from_mapping({**BASE, "ts": value})["ts"] == ms, (unit, value)
    whole_s = EventSchema(ts_unit="s", derive_event_id=True).from_mapping({**BASE, "ts": ms // 1000})
    assert whole_s["ts"] == ms // 1000 * 1000


def test_iso_unit_and_strptime_format() -> None:
    iso = EventSchema(ts_unit="iso", derive_event_id=True)
    assert iso.from_mapping({**BASE, "ts": "2026-01-01T00:00:01.5Z"})["ts"] == 1_767_225_601_500
    with pytest.raises(InvalidEvent) as err:
        iso.from_mapping({**BASE, "ts": 1_767_225_601_500})
    assert err.value.reason == WRONG_TYPE and "ISO-8601" in err.value.detail
    fmt = EventSchema(ts_unit="iso", ts_format="%Y-%m-%d %H:%M:%S UTC", derive_event_id=True)
    assert fmt.from_mapping({**BASE, "ts": "2026-01-01 00:00:01 UTC"})["ts"] == 1_767_225_601_000
    with pytest.raises(InvalidEvent) as err:
        fmt.from_mapping({**BASE, "ts": "2026-01-01T00:00:01Z"})
    assert err.value.reason == BAD_TIMESTAMP and "%Y-%m-%d" in err.value.detail
    with pytest.raises(ValueError, match="ts_unit"):
        EventSchema(ts_unit="minutes")
    # seconds that land outside the plausible range are still absurd timestamps
    with pytest.raises(InvalidEvent) as err:
        EventSchema(ts_unit="s", derive_event_id=True).from_mapping({**BASE, "ts": 1_767_225_601_500})
    assert err.value.reason == BAD_TIMESTAMP


def test_event_types_and_extra_fields() -> None:
    schema = EventSchema(field_map={"ts": "time"}, event_types={"view": "product_view", "cart": "add_to_cart"},
                         extra_fields={"category": "category_code", "shop": "shop_id"}, derive_event_id=True)
    e = schema.from_mapping({"user_id": 7, "event_type": "cart", "time": LO, "category_code": "a.b", "shop_id": 12})
    assert (e["event_type"], e["category"], e["shop"], e["user_id"]) == ("add_to_cart", "a.b", "12", "7")
    assert schema.from_mapping({**BASE, "event_type": "wishlist", "time": LO})["event_type"] == "wishlist"
    assert schema.from_mapping({**BASE, "time": LO})["category"] is None
    with pytest.raises(InvalidEvent) as err:
        schema.from_mapping({**BASE, "time": LO, "category_code": [1]})
    assert err.value.reason == WRONG_TYPE and "category_code" in err.value.detail
    with pytest.raises(ValueError, match="extra_fields"):
        EventSchema(extra_fields={"price": "p"})


def test_spec_accepts_declared_extra_fields_and_hashes_them() -> None:
    feats = (OneHot("category", ("a", "b")),)
    with pytest.raises(ValueError, match="extra_fields"):
        FeatureSpec("s", feats)
    spec = FeatureSpec("s", feats, extra_fields=("category",))
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.hash != FeatureSpec("s", feats, extra_fields=("category", "brand")).hash
    plain = FeatureSpec("s", (OneHot("device", ("a",)),))
    assert "extra_fields" not in plain._semantics()  # specs without extras keep their hashes


@given(st.lists(st.fixed_dictionaries({
    "uid": st.integers(min_value=1, max_value=10**12),
    "kind": st.sampled_from(["view", "cart", "purchase"]),
    "t": st.integers(min_value=LO // 1000, max_value=HI // 1000 - 1),
    "price": st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda v: round(v, 2))),
    "cat": st.one_of(st.none(), st.text(alphabet="abc.", min_size=1, max_size=6)),
}), min_size=1, max_size=30))
@settings(max_examples=40, deadline=None)
def test_derived_ids_agree_between_json_csv_and_parquet(tmp_path_factory, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("logs")
    schema = EventSchema(field_map={"user_id": "uid", "event_type": "kind", "ts": "t"}, ts_unit="s",
                         extra_fields={"category": "cat"}, event_types={"cart": "add_to_cart"}, derive_event_id=True)
    (tmp / "log.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with open(tmp / "log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("uid", pa.int64()), ("kind", pa.string()), ("t", pa.int64()), ("price", pa.float64()), ("cat", pa.string())])),
        tmp / "log.parquet")
    decoded = {}
    for name in ("log.jsonl", "log.csv", "log.parquet"):
        invalid: dict[str, int] = {}
        decoded[name] = list(read_events(tmp / name, schema, invalid))
        assert invalid == {}, name
    assert decoded["log.jsonl"] == decoded["log.csv"] == decoded["log.parquet"]
    # and the messages a replay of the CSV produces decode to the same events online
    online = [schema.decode(value) for _, value in upstream_messages(tmp / "log.csv", schema)]
    assert online == decoded["log.jsonl"]
    keys = [key for key, _ in upstream_messages(tmp / "log.csv", schema)]
    assert keys == [str(r["uid"]).encode() for r in rows]


def test_csv_log_counts_bad_rows_and_reads_gzip(tmp_path: Path) -> None:
    import gzip

    text = ("event_id,user_id,event_type,ts,price\n"
            "e1,u1,view,2026-01-01T00:00:00Z,1.5\n"
            "e2,u1,view,1767225600001,\n"          # epoch ms, empty price = null
            "e3,,view,1767225600002,1\n"           # empty user = missing
            "e4,u1,view,1767225600003,cheap\n"     # price does not parse: wrong type
            "e5,u1,view,1767225600004,1,extra\n")  # more cells than names
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(text.encode()))
    invalid: dict[str, int] = {}
    events = list(read_events(tmp_path / "a.csv.gz", EventSchema(), invalid))
    assert [(e["event_id"], e["ts"], e["price"]) for e in events] == [
        ("e1", 1_767_225_600_000, 1.5), ("e2", 1_767_225_600_001, None)]
    assert invalid == {"missing_field": 1, "wrong_type": 1, "malformed_csv": 1}
    assert datetime.fromtimestamp(events[0]["ts"] / 1000, tz=timezone.utc).year == 2026
