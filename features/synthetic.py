"""Synthetic clickstream generator (pure generation, no Kafka).

The generator simulates an e-commerce site and yields click events in
**emission order** -- the order an upstream service would publish them to the
``clicks`` topic.  Everything is driven by ``numpy.random.Generator`` instances
derived from one seed, so the same :class:`GeneratorConfig` always produces a
byte-identical stream.

Event contract (one JSON object per message, keys always in this order)::

    event_id    str   unique within a stream ("<tag>-<emission index>")
    user_id     str   "u000123"
    session_id  str   unique per session ("<tag>-s<n>")
    event_type  str   page_view | search | product_view | add_to_cart |
                      remove_from_cart | checkout | purchase
    ts          int   EVENT time, epoch milliseconds (UTC)
    page        str   "/", "/c/<cat>", "/search", "/p/<id>", "/cart", "/checkout", ...
    product_id  str | None   "p01234" for product events, checkout and purchase
    price       float | None >= 0, 2 decimals; unit price for product_view /
                      add_to_cart / remove_from_cart, cart total for checkout /
                      purchase; None for page_view and search
    device      str   mobile | desktop | tablet (fixed per user, occasionally
                      another device for one session)
    country     str   ISO-3166 alpha-2, fixed per user
    referrer    str   direct | search | social | email | ads (per session)

Simulation model
----------------
* Users have a latent purchase propensity ~ Beta(1, 10) and a Zipf-Mandelbrot
  activity weight (rank + 10) ** -zipf_exponent, so a few heavy users produce a
  large share of the traffic and there is a long tail.
* Each user starts sessions as a Poisson process (``sessions_per_user_day`` on
  average, scaled by the activity weight) with a minimum 15 min gap, so gaps
  between a user's sessions are typically hours.  Users who abandon a cart
  often come back soon (minutes to ~2 h), frequently via a reminder email, with
  the cart still filled and an increased intent to buy.
* Inside a session event types follow a Markov chain (page_view -> search /
  product_view, product_view -> add_to_cart, add_to_cart -> checkout ->
  purchase, exits anywhere).  Cart, checkout and purchase probabilities scale
  with ``propensity * device multiplier * referrer multiplier * session noise``,
  so purchase-within-a-horizon is predictable from recent behaviour (cart adds,
  checkouts, product views, past purchases, session depth, recency).
* Inter-event gaps inside a session are log-normal (seconds to minutes).
* Product popularity is Zipf-like; each product has a fixed log-normal price.

Event time vs emission order
----------------------------
Events are emitted in true-time order.  ``ts`` is ``true_time - jitter`` with
``jitter >= 0`` drawn from ``jitter_dist`` with scale ``jitter_ms`` and capped
at ``JITTER_CAP * jitter_ms``; hence ``ts`` is out of order relative to
emission order by at most ``JITTER_CAP * jitter_ms`` (plus, for the optional
``late_fraction`` of events, ``ts = true_time - delay`` with
``delay`` uniform in ``[late_ms, 3 * late_ms]``).  ``jitter_ms = 0`` and
``late_fraction = 0`` give a perfectly ordered ``ts``.  Jitter/lateness use
their own random stream: changing them changes only ``ts``, never the
underlying sequence of events.

Drift
-----
:class:`Drift` changes the generating process from an emission index on
(``at`` as a fraction of ``n_events`` or an absolute index).  Events before
that index are byte-identical to the stream without the drift.
See :data:`DRIFT_KINDS` and :class:`Drift` for the kinds and their params.

Bad payloads
------------
With ``bad_fraction > 0``, :meth:`ClickstreamGenerator.payloads` replaces that
fraction of the emitted messages by bad ones (see :data:`BAD_KINDS`).  Choice:
*replacement*, decided by an independent random stream -- the stream keeps
``n_events`` messages, message ``i`` is either bad or exactly
``encode(event i)`` of the clean stream, so good payloads are a subsequence of
the ``bad_fraction = 0`` stream and are byte-identical to it.
"""

from __future__ import annotations

import math
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from heapq import heapify, heapreplace
from itertools import accumulate

import numpy as np
import orjson

__all__ = [
    "BAD_KINDS",
    "BAD_KIND_WEIGHTS",
    "COUNTRIES",
    "DEFAULT_START",
    "DEVICES",
    "DRIFT_KINDS",
    "EVENT_TYPES",
    "JITTER_CAP",
    "PRODUCT_EVENT_TYPES",
    "REFERRERS",
    "ClickstreamGenerator",
    "Drift",
    "GeneratorConfig",
    "corrupt_payload",
    "encode",
    "parse_time",
]

EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "search",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
)
#: Event types that carry a non-null ``price`` (and ``product_id``).
PRODUCT_EVENT_TYPES: frozenset[str] = frozenset(EVENT_TYPES[2:])
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
REFERRERS: tuple[str, ...] = ("direct", "search", "social", "email", "ads")
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN", "BR", "CA", "JP", "AU", "NL", "ES", "IT")
DRIFT_KINDS: tuple[str, ...] = ("mix_shift", "price_shift", "conversion_collapse")
#: Kinds of bad payloads produced by :func:`corrupt_payload`.
BAD_KINDS: tuple[str, ...] = (
    "malformed_json",  # truncated / broken JSON text
    "not_object",  # valid JSON, but an array / string / number
    "missing_user_id",  # object without "user_id"
    "ts_not_date",  # "ts" is a non-date string
    "price_string",  # "price" is a string
    "price_nan",  # literal NaN / Infinity / -Infinity price (not valid JSON)
    "ts_absurd",  # ts in year 1900 or 3000
    "oversize",  # valid object padded to ~200 KiB (over the engine's 64 KiB limit, under the broker's 1 MB)
)
#: Relative frequency of each bad kind in :meth:`ClickstreamGenerator.payloads`
#: (oversize payloads are ~200 KiB each, so they are made rare).
BAD_KIND_WEIGHTS: Mapping[str, float] = {k: (0.05 if k == "oversize" else 1.0) for k in BAD_KINDS}
OVERSIZE_BYTES = 200 * 1024
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
#: Jitter is capped at JITTER_CAP * jitter_ms.
JITTER_CAP = 8.0
JITTER_DISTS: tuple[str, ...] = ("exponential", "uniform", "halfnormal")

# event type codes used by the simulation
_PV, _SE, _PR, _AC, _RC, _CO, _PU, _EXIT = range(8)

_BASE_DEVICE_P = (0.55, 0.35, 0.10)
_BASE_REFERRER_P = (0.30, 0.30, 0.15, 0.10, 0.15)
_SHIFT_DEVICE_P = (0.85, 0.10, 0.05)
_SHIFT_REFERRER_P = (0.10, 0.10, 0.45, 0.05, 0.30)
_COUNTRY_P = (0.32, 0.10, 0.09, 0.07, 0.10, 0.06, 0.06, 0.06, 0.04, 0.04, 0.03, 0.03)
_DEVICE_MULT = (0.75, 1.35, 1.0)
_REFERRER_MULT = (1.2, 1.0, 0.45, 1.6, 0.8)
_DAY_MS = 86_400_000
_MIN_SESSION_GAP_MS = 15 * 60_000
_MAX_SESSION_EVENTS = 80
# median in-session gap (ms) *after* an event of the given type
_GAP_MEDIAN_MS = (15_000.0, 10_000.0, 35_000.0, 12_000.0, 8_000.0, 45_000.0, 20_000.0)
_GAP_SIGMA = 0.9
_GAP_MAX_MS = 30 * 60_000
_CATEGORIES = 24
_PV_PAGES = ("/", "/", "/deals", "/account", "/new") + tuple(f"/c/{i:02d}" for i in range(_CATEGORIES))

_MIX_PARAM_KEYS = frozenset(("strength",) + DEVICES + REFERRERS)
_DRIFT_PARAM_KEYS: Mapping[str, frozenset[str]] = {
    "mix_shift": _MIX_PARAM_KEYS,
    "price_shift": frozenset(("factor",)),
    "conversion_collapse": frozenset(("device", "factor")),
}


def parse_time(value: str | datetime | int) -> datetime:
    """Parse an ISO-8601 string (``Z`` allowed; naive = UTC), a datetime, or epoch ms."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    else:
        dt = datetime.fromisoformat(value.strip())
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _cum(ps: tuple[float, ...] | list[float]) -> list[float]:
    total = float(sum(ps))
    cum = [p / total for p in accumulate(ps)]
    cum[-1] = 1.0 + 1e-9  # bisect never falls off the end
    return cum


@dataclass(frozen=True)
class Drift:
    """A change of the generating process from emission index ``at`` on.

    ``at``: a ``float`` in ``[0, 1]`` is a fraction of ``n_events``; an ``int``
    is an absolute emission index (0-based).  Events with emission index
    ``< at`` are unaffected (byte-identical to the stream without this drift).

    Kinds and ``params``:

    * ``mix_shift`` -- traffic mix shift.  Sessions starting at/after the point
      draw their device (with probability ``strength``, default 1.0; otherwise
      the user's usual device) and their referrer from shifted distributions
      (default devices mobile .85 / desktop .10 / tablet .05 instead of
      .55/.35/.10; referrers direct .10 / search .10 / social .45 / email .05 /
      ads .30 instead of .30/.30/.15/.10/.15).  Any device or referrer name can
      be given as a param to override its (unnormalised) weight.
    * ``price_shift`` -- every price quoted at/after the point is multiplied by
      ``factor`` (default 1.5).  Cart totals sum the prices as quoted when the
      items were added.
    * ``conversion_collapse`` -- checkout -> purchase probability for sessions
      on ``device`` (default ``"mobile"``) is multiplied by ``factor`` (default
      0.02) for decisions taken at/after the point.

    ``params`` may be passed as any mapping; it is stored as a sorted tuple of
    ``(name, value)`` pairs so the dataclass stays hashable.
    """

    kind: str
    at: float | int
    params: Mapping[str, float | str] | tuple[tuple[str, float | str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise ValueError(f"unknown drift kind {self.kind!r}; expected one of {DRIFT_KINDS}")
        items = self.params.items() if isinstance(self.params, Mapping) else self.params
        params = tuple(sorted((str(k), v) for k, v in items))
        unknown = [k for k, _ in params if k not in _DRIFT_PARAM_KEYS[self.kind]]
        if unknown:
            raise ValueError(
                f"unknown param(s) {unknown} for drift {self.kind!r}; allowed: {sorted(_DRIFT_PARAM_KEYS[self.kind])}"
            )
        object.__setattr__(self, "params", params)
        if isinstance(self.at, bool) or not isinstance(self.at, int | float):
            raise TypeError("Drift.at must be a float fraction or an int index")
        if isinstance(self.at, float) and not 0.0 <= self.at <= 1.0:
            raise ValueError("a float Drift.at is a fraction and must be within [0, 1]")
        if isinstance(self.at, int) and self.at < 0:
            raise ValueError("Drift.at index must be >= 0")
        p = dict(params)
        if self.kind == "conversion_collapse" and p.get("device", "mobile") not in DEVICES:
            raise ValueError(f"conversion_collapse device must be one of {DEVICES}")
        for k, v in params:
            if k != "device" and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf):
                raise ValueError(f"drift param {k}={v!r} must be a finite number >= 0")
        if self.kind == "mix_shift":
            if not 0 <= float(p.get("strength", 1.0)) <= 1:  # type: ignore[arg-type]
                raise ValueError("mix_shift strength must be within [0, 1]")
            for names, dflt in ((DEVICES, _SHIFT_DEVICE_P), (REFERRERS, _SHIFT_REFERRER_P)):
                if sum(float(p.get(k, w)) for k, w in zip(names, dflt, strict=True)) <= 0:  # type: ignore[arg-type]
                    raise ValueError(f"mix_shift weights of {names} must not all be 0")

    def param(self, name: str, default: float | str) -> float | str:
        """Value of a param, or ``default``."""
        for k, v in self.params:  # type: ignore[misc]
            if k == name:
                return v
        return default

    def index(self, n_events: int | None) -> int:
        """Resolve ``at`` to an emission index."""
        if isinstance(self.at, int):
            return self.at
        if n_events is None:
            raise ValueError("a fractional Drift.at needs a finite n_events; give an event index instead")
        return int(round(self.at * n_events))

    @classmethod
    def parse(cls, spec: str) -> Drift:
        """Parse ``KIND@AT[:k=v[,k=v...]]``, e.g. ``price_shift@0.5:factor=1.5``.

        ``AT`` containing ``.`` (or ``e``) is a fraction, otherwise an event index.
        Param values that parse as numbers become floats, others stay strings.
        """
        head, _, rest = spec.strip().partition(":")
        kind, sep, at_s = head.partition("@")
        if not sep or not at_s:
            raise ValueError(f"bad drift spec {spec!r}; expected KIND@AT[:k=v,...]")
        at: float | int = float(at_s) if any(c in at_s for c in ".eE") else int(at_s)
        params: dict[str, float | str] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            k, eq, v = part.partition("=")
            if not eq:
                raise ValueError(f"bad drift param {part!r} in {spec!r}; expected k=v")
            try:
                params[k.strip()] = float(v)
            except ValueError:
                params[k.strip()] = v.strip()
        return cls(kind.strip(), at, params)


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of :class:`ClickstreamGenerator`.  All times in milliseconds.

    n_events: number of emitted events (``None`` = endless stream).
    n_users: number of simulated users.
    seed: master seed; same config -> byte-identical stream.
    start: wall clock of the simulation start (tz-aware; naive = UTC).
    jitter_ms: scale of ``true_time - ts`` (0 = ``ts`` in emission order).
    jitter_dist: ``exponential`` (mean = scale), ``uniform`` (on [0, 2*scale])
        or ``halfnormal`` (sigma = scale); always capped at ``JITTER_CAP * scale``.
    late_fraction: fraction of events whose ``ts`` lags by ``U[late_ms, 3*late_ms]``.
    late_ms: lateness scale for ``late_fraction`` events.
    bad_fraction: fraction of payloads replaced by bad messages (``payloads()`` only).
    bad_kinds: which bad kinds to use (weighted by ``BAD_KIND_WEIGHTS``).
    drifts: drift injections, see :class:`Drift`.
    n_products: catalogue size.
    sessions_per_user_day: mean session rate per user (before the min gap).
    zipf_exponent: activity skew; user weight ~ (rank + 10) ** -zipf_exponent.
    """

    n_events: int | None = 100_000
    n_users: int = 2_000
    seed: int = 0
    start: datetime = DEFAULT_START
    jitter_ms: float = 0.0
    jitter_dist: str = "exponential"
    late_fraction: float = 0.0
    late_ms: float = 600_000.0
    bad_fraction: float = 0.0
    bad_kinds: tuple[str, ...] = BAD_KINDS
    drifts: tuple[Drift, ...] = ()
    n_products: int = 5_000
    sessions_per_user_day: float = 0.5
    zipf_exponent: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", parse_time(self.start))
        object.__setattr__(self, "drifts", tuple(self.drifts))
        object.__setattr__(self, "bad_kinds", tuple(self.bad_kinds))
        if self.n_events is not None and self.n_events < 0:
            raise ValueError("n_events must be >= 0 or None")
        if self.n_users < 1 or self.n_products < 1:
            raise ValueError("n_users and n_products must be >= 1")
        if self.jitter_ms < 0 or self.late_ms < 0:
            raise ValueError("jitter_ms and late_ms must be >= 0")
        if self.jitter_dist not in JITTER_DISTS:
            raise ValueError(f"jitter_dist must be one of {JITTER_DISTS}")
        for name in ("late_fraction", "bad_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        bad = [k for k in self.bad_kinds if k not in BAD_KINDS]
        if bad or (self.bad_fraction > 0 and not self.bad_kinds):
            raise ValueError(f"bad_kinds must be a non-empty subset of {BAD_KINDS}")
        if self.sessions_per_user_day <= 0 or self.zipf_exponent < 0:
            raise ValueError("sessions_per_user_day must be > 0 and zipf_exponent >= 0")
        for d in self.drifts:
            if not isinstance(d, Drift):
                raise TypeError("drifts must be Drift instances")
            d.index(self.n_events)  # validates fraction vs endless stream

    @property
    def start_ms(self) -> int:
        """``start`` as epoch milliseconds."""
        return int(round(self.start.timestamp() * 1000))


def encode(event: Mapping[str, object]) -> bytes:
    """Serialise one event to compact JSON bytes (orjson; key order preserved)."""
    return orjson.dumps(event)


def _template_event(rng: np.random.Generator) -> dict:
    uid = int(rng.integers(0, 1_000_000))
    pid = int(rng.integers(0, 100_000))
    return {
        "event_id": f"bad-{int(rng.integers(0, 1 << 62)):x}",
        "user_id": f"u{uid:06d}",
        "session_id": f"bad-s{uid}",
        "event_type": "product_view",
        "ts": int(DEFAULT_START.timestamp()) * 1000 + int(rng.integers(0, 30 * _DAY_MS)),
        "page": f"/p/{pid:05d}",
        "product_id": f"p{pid:05d}",
        "price": round(float(rng.uniform(1, 200)), 2),
        "device": DEVICES[int(rng.integers(0, 3))],
        "country": COUNTRIES[int(rng.integers(0, len(COUNTRIES)))],
        "referrer": REFERRERS[int(rng.integers(0, len(REFERRERS)))],
    }


def corrupt_payload(
    rng: np.random.Generator,
    event: Mapping[str, object] | None = None,
    kind: str | None = None,
    kinds: tuple[str, ...] = BAD_KINDS,
) -> tuple[bytes, str]:
    """Return ``(payload, kind)``: an invalid message derived from ``event``.

    ``event`` defaults to a random plausible product_view.  ``kind`` forces one
    of :data:`BAD_KINDS`; otherwise one is drawn from ``kinds`` weighted by
    :data:`BAD_KIND_WEIGHTS`.  Every payload is either not parseable by
    ``orjson.loads`` or parses to something violating the event contract.
    No payload contains a newline byte (safe for JSONL).
    """
    if kind is None:
        w = np.array([BAD_KIND_WEIGHTS[k] for k in kinds], dtype=float)
        kind = kinds[int(np.searchsorted(np.cumsum(w / w.sum()), rng.random(), side="right").clip(0, len(kinds) - 1))]
    elif kind not in BAD_KINDS:
        raise ValueError(f"unknown bad kind {kind!r}")
    ev = dict(event) if event is not None else _template_event(rng)
    r = int(rng.integers(0, 3))
    if kind == "malformed_json":
        raw = orjson.dumps(ev)
        if r == 0:  # truncated mid-message
            cut = int(rng.integers(1, max(2, len(raw) - 1)))
            payload = raw[:cut]
        elif r == 1:  # unquoted key / single quotes
            payload = raw.replace(b'"user_id"', b"user_id", 1).replace(b'"', b"'", 2)
        else:  # trailing garbage after the object
            payload = raw[:-1] + b",}}garbage"
        return payload.replace(b"\n", b" "), kind
    if kind == "not_object":
        choices: tuple[object, ...] = (list(ev.values()), str(ev.get("user_id")), int(rng.integers(0, 10**9)), None)
        return orjson.dumps(choices[int(rng.integers(0, len(choices)))]), kind
    if kind == "missing_user_id":
        ev.pop("user_id", None)
        return orjson.dumps(ev), kind
    if kind == "ts_not_date":
        ev["ts"] = ("yesterday", "not-a-date", "2026-13-45T99:99:99", "")[int(rng.integers(0, 4))]
        return orjson.dumps(ev), kind
    if kind == "price_string":
        if ev.get("price") is None:
            ev["event_type"], ev["price"] = "product_view", round(float(rng.uniform(1, 200)), 2)
            ev["product_id"] = ev.get("product_id") or "p00000"
        ev["price"] = (f"{ev['price']:.2f}", f"${ev['price']:.2f}", "free")[r]
        return orjson.dumps(ev), kind
    if kind == "price_nan":
        ev["price"] = 0.0
        if ev.get("event_type") not in PRODUCT_EVENT_TYPES:
            ev["event_type"], ev["product_id"] = "product_view", ev.get("product_id") or "p00000"
        lit = (b"NaN", b"Infinity", b"-Infinity")[r]
        raw = orjson.dumps(ev)
        return raw.replace(b'"price":0.0', b'"price":' + lit, 1), kind
    if kind == "ts_absurd":
        year = 1900 if r != 2 else 3000
        base = int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1000)
        ev["ts"] = base + int(rng.integers(0, 300 * _DAY_MS))
        return orjson.dumps(ev), kind
    # oversize
    ev["padding"] = "x" * OVERSIZE_BYTES
    return orjson.dumps(ev), kind


def _block_stream(draw: Callable[[int], np.ndarray], size: int = 16_384) -> Callable[[], float]:
    """A fast scalar sampler over blocks pre-drawn with ``draw(size)``."""

    def gen() -> Iterator[float]:
        while True:
            yield from draw(size).tolist()

    return gen().__next__


class _Session:
    __slots__ = ("sid", "dev", "ref", "m", "prev", "depth", "cart", "last_pid", "viewed", "purchased")

    def __init__(self, sid: str, dev: int, ref: int, m: float, cart: list) -> None:
        self.sid = sid
        self.dev = dev
        self.ref = ref
        self.m = m
        self.prev = -1
        self.depth = 0
        self.cart: list[tuple[int, float]] = cart  # (product index, quoted price)
        self.last_pid = -1
        self.viewed: list[int] = []
        self.purchased = False


class ClickstreamGenerator:
    """Deterministic synthetic clickstream; see the module docstring for the model.

    ``events()`` yields event dicts in emission order; ``payloads()`` yields
    ``(key, value)`` bytes (key = user_id UTF-8), with bad messages mixed in
    when ``config.bad_fraction > 0``.  Each call starts over from the seed.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        self.config = config if config is not None else GeneratorConfig()
        ss = np.random.SeedSequence(self.config.seed)
        self._ss_world, self._ss_sim, self._ss_jitter, self._ss_bad = ss.spawn(4)
        tag_rng = np.random.default_rng(ss.spawn(1)[0])
        self.tag = f"{int(tag_rng.integers(0, 1 << 32)):08x}"

    # -- world ---------------------------------------------------------------
    def _world(self) -> dict:
        c = self.config
        rng = np.random.default_rng(self._ss_world)
        n = c.n_users
        ranks = rng.permutation(n)  # activity rank of user i
        w = (ranks + 10.0) ** -c.zipf_exponent
        w = w / w.sum()
        rate_per_ms = w * (c.sessions_per_user_day * n) / _DAY_MS
        propensity = rng.beta(1.0, 10.0, size=n)
        devices = np.searchsorted(np.cumsum(_BASE_DEVICE_P), rng.random(n), side="right").clip(0, 2)
        cprob = np.array(_COUNTRY_P) / sum(_COUNTRY_P)
        countries = np.searchsorted(np.cumsum(cprob), rng.random(n), side="right").clip(0, len(COUNTRIES) - 1)
        np_ = c.n_products
        base_price = np.round(np.maximum(0.5, np.exp(rng.normal(3.3, 0.9, size=np_))), 2)
        pop = (rng.permutation(np_) + 5.0) ** -0.9
        return {
            "uid": [f"u{i:06d}" for i in range(n)],
            "mean_gap": (1.0 / rate_per_ms).tolist(),
            "prop": propensity.tolist(),
            "dev": devices.tolist(),
            "country": [COUNTRIES[i] for i in countries.tolist()],
            "price": base_price.tolist(),
            "pid": [f"p{j:05d}" for j in range(np_)],
            "ppage": [f"/p/{j:05d}" for j in range(np_)],
            "pop_cum": np.cumsum(pop / pop.sum()),
        }

    # -- event stream --------------------------------------------------------
    def events(self) -> Iterator[dict]:
        """Yield events (dicts, contract in the module docstring) in emission order."""
        c = self.config
        W = self._world()
        uid, mean_gap, prop, udev, country = W["uid"], W["mean_gap"], W["prop"], W["dev"], W["country"]
        base_price, pid_s, ppage = W["price"], W["pid"], W["ppage"]
        n_users, n_limit = c.n_users, c.n_events
        tag = self.tag

        sim = np.random.default_rng(self._ss_sim)
        U = _block_stream(sim.random)
        Z = _block_stream(sim.standard_normal)
        E = _block_stream(sim.standard_exponential)
        pop_cum = W["pop_cum"]
        n_products = c.n_products
        PROD = _block_stream(lambda k: np.searchsorted(pop_cum, sim.random(k), side="right").clip(0, n_products - 1))

        # jitter / lateness: separate stream, never touches the simulation
        jrng = np.random.default_rng(self._ss_jitter)
        jit_scale, late_frac, late_ms = float(c.jitter_ms), float(c.late_fraction), float(c.late_ms)
        jit_cap = JITTER_CAP * jit_scale
        if jit_scale > 0:
            if c.jitter_dist == "exponential":
                J = _block_stream(lambda k: np.minimum(jrng.exponential(jit_scale, k), jit_cap))
            elif c.jitter_dist == "uniform":
                J = _block_stream(lambda k: jrng.uniform(0.0, 2.0 * jit_scale, k))
            else:
                J = _block_stream(lambda k: np.minimum(np.abs(jrng.normal(0.0, jit_scale, k)), jit_cap))
        LATE = _block_stream(jrng.random) if late_frac > 0 else None

        # drift schedule: (index, order, drift), applied when emission index reaches index
        schedule = sorted(((d.index(n_limit), i, d) for i, d in enumerate(c.drifts)), key=lambda x: (x[0], x[1]))
        next_drift = schedule[0][0] if schedule else -1
        si = 0
        price_factor = 1.0
        mix_strength = 0.0
        dev_cum = _cum(_BASE_DEVICE_P)
        ref_cum = _cum(_BASE_REFERRER_P)
        collapse = [1.0, 1.0, 1.0]  # purchase-probability multiplier per device

        # constant Markov rows (cumulative) over codes 0..7
        row_se = _cum((0.10, 0.18, 0.56, 0.0, 0.0, 0.0, 0.0, 0.16))
        row_rc = _cum((0.10, 0.15, 0.40, 0.0, 0.0, 0.10, 0.0, 0.25))
        row_pu = _cum((0.25, 0.0, 0.10, 0.0, 0.0, 0.0, 0.0, 0.65))
        land_cum = [  # landing type per referrer
            _cum((0.70, 0.15, 0.15)),  # direct
            _cum((0.20, 0.25, 0.55)),  # search
            _cum((0.55, 0.05, 0.40)),  # social
            _cum((0.40, 0.05, 0.55)),  # email
            _cum((0.30, 0.10, 0.60)),  # ads
        ]
        pv_pages, n_pv_pages = _PV_PAGES, len(_PV_PAGES)
        ev_names = EVENT_TYPES
        dev_names, ref_names = DEVICES, REFERRERS
        gap_med = _GAP_MEDIAN_MS
        gap_sigma = _GAP_SIGMA
        dev_mult, ref_mult = _DEVICE_MULT, _REFERRER_MULT
        email_ref = REFERRERS.index("email")
        exp_ = math.exp
        start_ms = c.start_ms

        sessions: list[_Session | None] = [None] * n_users
        carts: list[list[tuple[int, float]] | None] = [None] * n_users
        n_purchases = [0] * n_users
        heap = [(start_ms + int(E() * mean_gap[u]), u) for u in range(n_users)]
        heapify(heap)
        n_sessions = 0
        idx = 0

        while n_limit is None or idx < n_limit:
            t, u = heap[0]
            if idx == next_drift:
                while si < len(schedule) and schedule[si][0] <= idx:
                    d = schedule[si][2]
                    if d.kind == "price_shift":
                        price_factor *= float(d.param("factor", 1.5))
                    elif d.kind == "conversion_collapse":
                        collapse[DEVICES.index(str(d.param("device", "mobile")))] *= float(d.param("factor", 0.02))
                    else:
                        mix_strength = float(d.param("strength", 1.0))
                        dp = [float(d.param(k, v)) for k, v in zip(DEVICES, _SHIFT_DEVICE_P, strict=True)]
                        rp = [float(d.param(k, v)) for k, v in zip(REFERRERS, _SHIFT_REFERRER_P, strict=True)]
                        dev_cum, ref_cum = _cum(dp), _cum(rp)
                    si += 1
                next_drift = schedule[si][0] if si < len(schedule) else -1

            s = sessions[u]
            if s is None:
                # ---- session start
                cart = carts[u]
                carts[u] = None
                returning = cart is not None
                dev = udev[u]
                if mix_strength > 0.0:
                    if U() < mix_strength:
                        dev = bisect(dev_cum, U())
                elif U() < 0.05:
                    dev = bisect(dev_cum, U())
                ref = email_ref if (returning and U() < 0.5) else bisect(ref_cum, U())
                m = prop[u] * dev_mult[dev] * ref_mult[ref] * exp_(0.35 * Z())
                if returning:
                    m *= 1.6
                if n_purchases[u]:
                    m *= 1.0 + 0.15 * min(n_purchases[u], 4)
                n_sessions += 1
                s = _Session(f"{tag}-s{n_sessions}", dev, ref, m, cart if cart is not None else [])
                sessions[u] = s
                r = bisect(land_cum[ref], U())
                et = _PV if r == 0 else (_SE if r == 1 else _PR)
            else:
                # ---- Markov transition from s.prev
                prev = s.prev
                m = s.m
                x = U()
                has_cart = bool(s.cart)
                if s.depth >= _MAX_SESSION_EVENTS:
                    et = _EXIT
                elif prev == _PV:
                    p_co = (0.10 + 0.6 * m) if has_cart else 0.0
                    if x < p_co:
                        et = _CO
                    else:
                        x = (x - p_co) / (1.0 - p_co)
                        et = _PV if x < 0.18 else _SE if x < 0.42 else _PR if x < 0.78 else _EXIT
                elif prev == _PR:
                    p_ac = min(0.5, 0.02 + 0.6 * m)
                    p_co = min(0.3, 0.05 + 0.5 * m) if has_cart else 0.0
                    if x < p_ac:
                        et = _AC
                    elif x < p_ac + p_co:
                        et = _CO
                    else:
                        x = (x - p_ac - p_co) / (1.0 - p_ac - p_co)
                        et = _PR if x < 0.40 else _SE if x < 0.58 else _PV if x < 0.68 else _EXIT
                elif prev == _AC:
                    p_co = min(0.75, 0.08 + 1.3 * m)
                    if x < p_co:
                        et = _CO
                    else:
                        x = (x - p_co) / (1.0 - p_co)
                        et = (
                            _PR if x < 0.40 else _RC if x < 0.50 else _AC if x < 0.56 else _SE if x < 0.66 else _EXIT
                        )
                elif prev == _CO:
                    p_pu = min(0.9, (0.25 + 1.5 * m) * collapse[s.dev])
                    if x < p_pu:
                        et = _PU
                    else:
                        x = (x - p_pu) / (1.0 - p_pu)
                        et = _PR if x < 0.2 else _EXIT
                elif prev == _SE:
                    et = bisect(row_se, x)
                elif prev == _RC:
                    et = bisect(row_rc, x)
                else:  # purchase
                    et = bisect(row_pu, x)
                if (et == _RC or et == _CO) and not s.cart:
                    et = _PR
                if et == _EXIT:
                    # ---- session end: maybe keep the cart and come back soon
                    sessions[u] = None
                    gap = _MIN_SESSION_GAP_MS + E() * mean_gap[u]
                    if s.cart and not s.purchased and U() < 0.6:
                        carts[u] = s.cart
                        if U() < min(0.85, 0.35 + 1.5 * m):
                            gap = min(gap, 600_000.0 + E() * 5_400_000.0)
                    heapreplace(heap, (t + int(gap), u))
                    continue

            # ---- emit event `et` for user u at true time t
            product_id = None
            price = None
            if et == _PV:
                page = pv_pages[int(U() * n_pv_pages)]
            elif et == _SE:
                page = "/search"
            elif et == _PR:
                viewed = s.viewed
                if viewed and U() < 0.25:
                    j = viewed[int(U() * len(viewed))]
                else:
                    j = PROD()
                    viewed.append(j)
                s.last_pid = j
                product_id, page = pid_s[j], ppage[j]
                price = round(base_price[j] * price_factor, 2)
            elif et == _AC:
                j = s.last_pid
                if j < 0:
                    j = PROD()
                    s.last_pid = j
                price = round(base_price[j] * price_factor, 2)
                s.cart.append((j, price))
                product_id, page = pid_s[j], ppage[j]
            elif et == _RC:
                j, price = s.cart.pop(int(U() * len(s.cart)))
                product_id, page = pid_s[j], "/cart"
            else:  # checkout / purchase: last cart item, price = cart total
                cart = s.cart
                product_id = pid_s[cart[-1][0]]
                price = round(sum(p for _, p in cart), 2)
                if et == _CO:
                    page = "/checkout"
                else:
                    page = "/checkout/complete"
                    s.purchased = True
                    s.cart = []
                    n_purchases[u] += 1

            ts = t
            if jit_scale > 0:
                ts -= int(J())
            if late_frac > 0 and LATE() < late_frac:  # type: ignore[misc]
                ts = t - int(late_ms * (1.0 + 2.0 * LATE()))  # type: ignore[misc]

            yield {
                "event_id": f"{tag}-{idx}",
                "user_id": uid[u],
                "session_id": s.sid,
                "event_type": ev_names[et],
                "ts": ts,
                "page": page,
                "product_id": product_id,
                "price": price,
                "device": dev_names[s.dev],
                "country": country[u],
                "referrer": ref_names[s.ref],
            }
            idx += 1
            s.prev = et
            s.depth += 1
            gap = gap_med[et] * exp_(gap_sigma * Z())
            heapreplace(heap, (t + 250 + int(gap if gap < _GAP_MAX_MS else _GAP_MAX_MS), u))

    def payloads(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(key, value)`` message bytes in emission order.

        ``key`` is the user_id UTF-8 (for bad messages: the user of the event
        they replace).  With ``bad_fraction > 0`` each message is independently
        replaced by a bad one (kind drawn from ``config.bad_kinds``) with that
        probability; the others are exactly ``encode(event)`` of the clean stream.
        """
        frac = self.config.bad_fraction
        if frac <= 0:
            for ev in self.events():
                yield ev["user_id"].encode(), orjson.dumps(ev)
            return
        for key, value, _ in self.labelled_payloads():
            yield key, value

    def labelled_payloads(self) -> Iterator[tuple[bytes, bytes, str | None]]:
        """Like :meth:`payloads` but with a third item: the bad kind, or ``None`` if good."""
        frac = self.config.bad_fraction
        kinds = self.config.bad_kinds
        brng = np.random.default_rng(self._ss_bad)
        B = _block_stream(brng.random)
        dumps = orjson.dumps
        for ev in self.events():
            key = ev["user_id"].encode()
            if frac > 0 and B() < frac:
                value, kind = corrupt_payload(brng, ev, kinds=kinds)
                yield key, value, kind
            else:
                yield key, dumps(ev), None
