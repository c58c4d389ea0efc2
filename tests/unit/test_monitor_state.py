"""The monitor's state record: the versioned codec and PartitionMonitor round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.monitors import MONITOR_KEY, STATE_MAGIC, PartitionMonitor
from engine.state_codec import StateRecordError, UnknownStateVersion, pack, unpack
from models.testing import synthetic_dataset
from tests.unit.test_monitors import Partition, _events, _scores, _watching

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
dtypes = st.sampled_from([np.int8, np.uint8, np.int64, np.float32, np.float64])


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       arrays=st.dictionaries(st.text(min_size=1, max_size=6),
                              st.tuples(dtypes, st.lists(st.integers(0, 5), min_size=0, max_size=3), st.integers(0, 999)),
                              max_size=4),
       version=st.integers(0, 255))
def test_codec_round_trips_fields_and_arrays(fields: dict, arrays: dict, version: int) -> None:
    made = {name: np.random.default_rng(seed).integers(0, 100, size=shape).astype(dtype)
            for name, (dtype, shape, seed) in arrays.items()}
    got_version, got_fields, got_arrays = unpack(pack(b"TEST", version, fields, made), b"TEST", (version,))
    assert got_version == version and got_fields == fields
    assert set(got_arrays) == set(made)
    for name, a in made.items():
        assert got_arrays[name].dtype == a.dtype and got_arrays[name].shape == a.shape
        assert np.array_equal(got_arrays[name], a)


def test_codec_refuses_unknown_versions_and_malformed_records() -> None:
    raw = pack(b"TEST", 3, {"a": 1}, {"x": np.arange(4)})
    with pytest.raises(UnknownStateVersion, match="version 3 is not one this engine reads"):
        unpack(raw, b"TEST", (2,))
    with pytest.raises(StateRecordError, match="magic"):
        unpack(raw, b"OTHER", (3,))
    for cut in (6, 9, 12, len(raw) - 1):
        with pytest.raises(StateRecordError):
            unpack(raw[:cut], b"TEST", (3,))


def test_an_unknown_monitor_state_version_is_refused_and_old_or_broken_records_start_afresh() -> None:
    raw = PartitionMonitor(n=5).encode()
    assert raw.startswith(STATE_MAGIC)
    newer = raw[:len(STATE_MAGIC)] + bytes([99]) + raw[len(STATE_MAGIC) + 1:]
    with pytest.raises(UnknownStateVersion, match="version 99"):
        PartitionMonitor.decode(newer)
    assert PartitionMonitor.decode(b"SSMON1\n\x80\x05pickled").n == 0  # the old pickle format
    assert PartitionMonitor.decode(raw[:-3]).n == 0 if len(raw) > 40 else True
    assert PartitionMonitor.decode(b"garbage").n == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(600, 3_000), cut=st.floats(0.05, 0.95),
       batch=st.sampled_from([37, 125, 250]), purchase_rate=st.floats(0.0, 0.2))
def test_a_round_trip_at_any_batch_boundary_continues_exactly(seed: int, n: int, cut: float, batch: int,
                                                              purchase_rate: float) -> None:
    """Encoding and decoding the state between two batches (a restart, a moved partition) changes
    nothing: counts, detectors, performance window, policy and the triggers that follow equal an
    uninterrupted run's."""
    X, _, _, _ = synthetic_dataset(n=n, seed=seed % 1000)
    X[:, 2] *= np.where(np.arange(n) > n // 2, 2.5, 1.0)
    scores, events = _scores(X), _events(n, seed, purchase_rate=purchase_rate)
    kw = dict(window_events=500, min_window_events=200, label_window=100)
    whole = Partition(_watching(**kw))
    whole.feed(X, scores, events, batch)
    k = max(1, int(n * cut) // batch) * batch
    first = Partition(_watching(**kw))
    first.feed(X[:k], scores[:k], events[:k], batch)
    resumed = Partition(_watching(**kw), PartitionMonitor.decode(first.store[MONITOR_KEY]))
    resumed.store = dict(first.store)
    resumed.feed(X[k:], scores[k:], events[k:], batch)
    assert [(t.reason, t.idempotency_key, t.statistic, t.evidence) for t in first.triggers + resumed.triggers] == \
        [(t.reason, t.idempotency_key, t.statistic, t.evidence) for t in whole.triggers]
    a, b = resumed.pm, whole.pm
    assert PartitionMonitor.decode(a.encode()).encode() == a.encode()
    assert (a.n, a.seen, a.windows, a.labels_resolved, a.policy, a.score_hits) == \
        (b.n, b.seen, b.windows, b.labels_resolved, b.policy, b.score_hits)
    assert (a.counts is None and b.counts is None) or np.array_equal(a.counts, b.counts)
    assert np.array_equal(a.perf_scores, b.perf_scores) and np.array_equal(a.perf_labels, b.perf_labels)
    for det in ("score_adwin", "resid_adwin"):
        da, db = getattr(a, det), getattr(b, det)
        assert (da is None) == (db is None)
        if da is not None:
            assert (da.adwin.width, da.adwin.estimation, da.pending, da.recent) == \
                (db.adwin.width, db.adwin.estimation, db.pending, db.recent)
