"""Write a small REES46-shaped CSV from the synthetic generator (no downloaded data needed).

    python examples/rees46/make_sample.py --out rees46-sample.csv --events 20000

The generator's product events are reshaped to the export's columns: event_time as
"YYYY-MM-DD hh:mm:ss UTC" (whole seconds, as the export has), event types view/cart/
remove_from_cart/purchase (page views, searches and checkouts have no REES46 counterpart and are
dropped), integer user and product ids, a category and brand derived from the product id, and no
event id. `to_rees46` is what the example's test uses.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id",
           "user_session")
TYPES = {"product_view": "view", "add_to_cart": "cart", "remove_from_cart": "remove_from_cart", "purchase": "purchase"}
CATEGORIES = ("electronics.smartphone", "computers.notebook", "appliances.kitchen.washer", "apparel.shoes", "")
BRANDS = ("samsung", "apple", "xiaomi", "bosch", "")


def to_rees46(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """REES46 rows (all cells strings, empty = missing) of the generator's product events."""
    for e in events:
        kind = TYPES.get(e["event_type"])
        if kind is None or e.get("product_id") is None:
            continue
        pid = int(e["product_id"].lstrip("p"))
        when = datetime.fromtimestamp(e["ts"] // 1000, tz=timezone.utc)
        yield {
            "event_time": when.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "event_type": kind,
            "product_id": str(1_000_000 + pid),
            "category_id": str(2_053_013_555_631_882_000 + pid % len(CATEGORIES)),
            "category_code": CATEGORIES[pid % len(CATEGORIES)],
            "brand": BRANDS[(pid // 7) % len(BRANDS)],
            "price": "" if e.get("price") is None else f"{e['price']:.2f}",
            "user_id": str(500_000_000 + int(e["user_id"].lstrip("u"))),
            "user_session": e.get("session_id") or "",
        }


def write_csv(path: str | Path, rows: Iterable[dict[str, str]]) -> int:
    """Write `rows` with the export's header; returns the row count."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from features.synthetic import ClickstreamGenerator, GeneratorConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--events", type=int, default=20_000, help="generator events (about 60%% are kept)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    cfg = GeneratorConfig(n_events=args.events, n_users=args.users, seed=args.seed,
                          start=datetime(2026, 1, 1, tzinfo=timezone.utc))
    n = write_csv(args.out, to_rees46(ClickstreamGenerator(cfg).events()))
    print(f"wrote {n:,} REES46-shaped rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
