"""The benchmark harness's accounting: latency percentiles, duplicates, missing events, stage laps.

No Kafka and no peer packages: `benchmarks.measure` and `benchmarks.report` import neither.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.measure import latency_account, per_second
from benchmarks.openloop import event_index
from benchmarks.report import markdown, ratios
from engine.stages import StageClock


def _hdr_rank(values: np.ndarray, q: float) -> float:
    """The q-th percentile as HdrHistogram defines it: the value of rank round(q % of n), at least 1."""
    s = np.sort(values)
    return float(s[max(1, int(q / 100 * len(s) + 0.5)) - 1])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2_000),
       dist=st.sampled_from(["uniform", "lognormal", "bimodal"]))
def test_percentiles_of_a_known_distribution(seed: int, n: int, dist: str) -> None:
    rng = np.random.default_rng(seed)
    lat_ms = {"uniform": lambda: rng.uniform(0.5, 200.0, n),
              "lognormal": lambda: rng.lognormal(2.0, 1.0, n),
              "bimodal": lambda: np.where(rng.random(n) < 0.95, rng.uniform(1, 5, n), rng.uniform(500, 900, n))}[dist]()
    lat_ms = np.round(lat_ms, 3)  # whole microseconds, as recorded
    intended = 1.8e9 + np.cumsum(rng.exponential(0.001, n))  # epoch seconds, the schedule
    order = rng.permutation(n)  # scores arrive in any order
    out = latency_account(intended, order, intended[order] + lat_ms[order] / 1000.0)
    assert out["answered"] == n and out["missing"] == 0 and out["duplicates"] == 0
    for q in (50.0, 90.0, 99.0, 99.9):
        want = _hdr_rank(lat_ms, q)
        got = out["latency_ms"][f"p{q:g}"]
        # HDR, 3 significant digits: within 0.1 % (plus the 1 µs unit and float rounding of epochs).
        assert got == pytest.approx(want, rel=1e-3, abs=2e-3), (q, got, want)
    assert out["latency_ms"]["max"] == pytest.approx(lat_ms.max(), rel=1e-3, abs=2e-3)


def test_duplicates_count_once_from_the_first_sighting_and_missing_events_are_counted() -> None:
    intended = np.array([100.0, 101.0, 102.0, 103.0])
    # event 1 scored twice (at-least-once redelivery): the later copy must not move its latency;
    # event 3 never scored; one record names an event outside the stream.
    index = np.array([0, 1, 2, 1, 99])
    visible = np.array([100.010, 101.020, 102.030, 101.900, 150.0])
    out = latency_account(intended, index, visible)
    assert out["answered"] == 3
    assert out["duplicates"] == 1
    assert out["missing"] == 1
    assert out["unknown_index"] == 1
    assert out["latency_ms"]["max"] == pytest.approx(30.0, rel=1e-3)
    assert out["latency_ms"]["p50"] == pytest.approx(20.0, rel=1e-3)


def test_per_second_buckets_by_whole_seconds_since_t0() -> None:
    t0 = 1000.0
    assert per_second(np.array([1000.1, 1000.9, 1001.0, 1003.5, 999.0]), t0) == [2, 1, 0, 1]
    assert per_second(np.array([]), t0) == []


def test_event_index_reads_the_generator_event_id() -> None:
    assert event_index("0a1b2c3d-12345") == 12345


def test_stage_laps_are_exclusive_and_add_up_to_the_batch() -> None:
    clock = StageClock()
    t0 = time.perf_counter()
    clock.start()
    for stage in ("decode", "features", "decode", "commit"):
        sum(range(2_000))
        clock.lap(stage)
    clock.skip()
    clock.finish()
    whole = time.perf_counter() - t0
    assert set(clock.totals) == {"decode", "features", "commit"}
    assert all(v > 0 for v in clock.totals.values())
    assert sum(clock.totals.values()) <= whole


def test_report_ratios_compare_streamscore_with_each_peer_measured_in_the_run() -> None:
    run = {"runs": [
        {"label": "streamscore EOS", "scenario": "saturation", "mode": "saturation", "throughput": 12_000.0,
         "events": 10, "answered": 10, "latency_ms": {"p50": 1.0}, "resources": {}},
        {"label": "faust ALO", "scenario": "saturation", "mode": "saturation", "throughput": 300.0,
         "events": 10, "answered": 10, "latency_ms": {"p50": 2.0}, "resources": {}},
        {"label": "quix EOS", "scenario": "saturation", "mode": "saturation", "error": "boom", "events": 10,
         "target": {}},
    ]}
    assert ratios(run) == [("streamscore EOS", "faust ALO", 40.0)]
    text = markdown(run)
    assert "40.00x" in text and "FAILED: boom" in text


class _Msg:
    def __init__(self, index: int) -> None:
        self._value = b'{"event_id": "e-%d"}' % index

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value


class _ScriptedConsumer:
    """Hands out records as a broker would at light load: one record is there at a time, and a
    blocking `consume(n, timeout)` would hold it until `timeout` (n records never arrive)."""

    def __init__(self, _conf: dict) -> None:
        self.arrivals = [0, 1, 2]
        self.blocking_waits: list[float] = []

    def assign(self, _partitions: list) -> None:
        pass

    def poll(self, timeout: float) -> _Msg | None:
        if self.arrivals:
            return _Msg(self.arrivals.pop(0))
        time.sleep(timeout / 10)
        return None

    def consume(self, n: int, timeout: float) -> list[_Msg]:
        if timeout > 0:  # the batch would be held until the timeout: stamped late
            self.blocking_waits.append(timeout)
            time.sleep(timeout)
        return []

    def close(self) -> None:
        pass


def test_the_score_reader_stamps_a_record_when_it_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records are stamped when a poll hands them over, never after a blocking batch wait (which at
    light load would add up to the wait to every latency)."""
    import confluent_kafka

    from benchmarks.measure import ScoreReader

    made: list[_ScriptedConsumer] = []
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda conf: made.append(_ScriptedConsumer(conf)) or made[-1])
    reader = ScoreReader("unused:9092", "scores", 1).start()
    assert reader.wait_for(3, timeout_s=10)
    index, visible = reader.stop()
    assert sorted(index.tolist()) == [0, 1, 2]
    assert made[0].blocking_waits == []  # drained without waiting: stamped at arrival
    assert len(visible) == 3
