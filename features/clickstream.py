"""The default clickstream feature set (38 columns) for a purchase-propensity model.

Windows: a 5-minute sliding window (continuous), 1-hour hopping by 5 minutes, a 1-day tumbling
window and 7 days hopping by 1 day. Event types follow the generator's vocabulary (page_view,
search, product_view, add_to_cart, remove_from_cart, checkout, purchase).
"""

from __future__ import annotations

from features.spec import (
    Aggregate,
    CurrentValue,
    FeatureSpec,
    OneHot,
    Ratio,
    Recency,
    SessionDepth,
    Window,
)

EVENT_TYPES = ("page_view", "search", "product_view", "add_to_cart", "remove_from_cart", "checkout", "purchase")
DEVICES = ("mobile", "desktop", "tablet")
REFERRERS = ("direct", "search", "social", "email", "ads")


def clickstream_spec() -> FeatureSpec:
    """The default spec. Its hash changes only if these definitions (or the semantics) change."""
    s5m = Window.sliding("5m")
    h1h = Window.hopping("1h", "5m")
    t1d = Window.tumbling("1d")
    h7d = Window.hopping("7d", "1d")
    cart = ("add_to_cart",)
    view = ("product_view",)
    buy = ("purchase",)
    return FeatureSpec(
        name="clickstream-v1",
        entity="user_id",
        grace_ms=60_000,
        idle_ttl_ms=7 * 86_400_000,
        features=(
            # Right now: the last five minutes, continuously.
            Aggregate("events_5m", "count", s5m),
            Aggregate("product_views_5m", "count", s5m, where=view),
            Aggregate("distinct_products_5m", "distinct", s5m, "product_id"),
            # The last hour, in 5-minute hops.
            Aggregate("events_1h", "count", h1h),
            Aggregate("product_views_1h", "count", h1h, where=view),
            Aggregate("cart_adds_1h", "count", h1h, where=cart),
            Aggregate("cart_removes_1h", "count", h1h, where=("remove_from_cart",)),
            Aggregate("checkouts_1h", "count", h1h, where=("checkout",)),
            Aggregate("searches_1h", "count", h1h, where=("search",)),
            Aggregate("cart_value_1h", "sum", h1h, "price", where=cart),
            Aggregate("mean_view_price_1h", "mean", h1h, "price", where=view),
            Aggregate("max_view_price_1h", "max", h1h, "price", where=view),
            Aggregate("min_view_price_1h", "min", h1h, "price", where=view),
            Aggregate("distinct_sessions_1h", "distinct", h1h, "session_id"),
            Ratio("cart_per_view_1h", "cart_adds_1h", "product_views_1h"),
            # Today (UTC day).
            Aggregate("events_1d", "count", t1d),
            Aggregate("purchases_1d", "count", t1d, where=buy),
            Aggregate("last_price_1d", "last", t1d, "price"),
            # The last week, in daily hops.
            Aggregate("events_7d", "count", h7d),
            Aggregate("cart_adds_7d", "count", h7d, where=cart),
            Aggregate("purchases_7d", "count", h7d, where=buy),
            Aggregate("spend_7d", "sum", h7d, "price", where=buy),
            Aggregate("distinct_sessions_7d", "distinct", h7d, "session_id"),
            Ratio("purchases_per_session_7d", "purchases_7d", "distinct_sessions_7d"),
            # Recency and session.
            Recency("secs_since_last_event"),
            Recency("secs_since_last_cart_add", where=cart),
            SessionDepth("session_depth"),
            # The event itself.
            CurrentValue("price", "price"),
            OneHot("event_type", ("product_view", "add_to_cart", "checkout")),
            OneHot("device", DEVICES),
            OneHot("referrer", ("search", "social", "email", "ads")),
        ),
    )
