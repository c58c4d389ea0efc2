"""Progress reporting: a live line on a terminal, quiet off it, and the callback reaches the
offline replay and training without features/ or models/ importing engine/."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.progress import Progress
from features.clickstream import clickstream_spec
from features.offline import PROGRESS_EVERY, replay
from features.synthetic import ClickstreamGenerator, GeneratorConfig


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out)
    for i in range(10_000):
        progress("stage", i, 10_000)
    list(progress.iterate(range(50_000), "iterate"))
    progress.close()
    assert out.getvalue() == ""


def test_terminal_rewrites_one_line_per_stage_and_ends_it() -> None:
    out = Tty()
    with Progress(out) as progress:
        assert list(progress.iterate(range(10_000), "generating", total=10_000, every=1000)) == list(range(10_000))
        progress("training", 5, None)
    text = out.getvalue()
    lines = text.split("\n")
    assert len(lines) == 3 and lines[-1] == ""       # two stages, each line ended by a newline
    assert lines[0].startswith("\r\033[Kgenerating: ")
    assert lines[0].split("\r\033[K")[-1].startswith("generating: 10,000 of 10,000 (100%)")  # final state shown
    assert "training: 5," in lines[1]


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=0, max_value=3_000), st.floats(min_value=0.0, max_value=1e9))
def test_forced_off_a_terminal_prints_rate_limited_plain_lines(n: int, every_s: float) -> None:
    out = io.StringIO()
    progress = Progress(out, enabled=True, every_s=every_s)
    list(progress.iterate(range(n), "x", every=100))
    lines = out.getvalue().splitlines()
    assert lines and lines[-1].startswith(f"x: {n:,}")  # the final count is always reported
    assert "\r" not in out.getvalue()
    if every_s > 1e6:
        assert len(lines) <= 2  # first report, then only the forced final one


def test_offline_replay_reports_through_a_plain_callback() -> None:
    events = list(ClickstreamGenerator(GeneratorConfig(n_events=PROGRESS_EVERY + 100, n_users=50, seed=1,
                                                       start=datetime(2026, 1, 1, tzinfo=timezone.utc))).events())
    calls: list[tuple[str, int, int | None]] = []
    replay(events, clickstream_spec(), 2, on_progress=lambda *a: calls.append(a))
    assert calls == [("offline features", 0, None), ("offline features", PROGRESS_EVERY, None),
                     ("offline features", len(events), len(events))]


@pytest.mark.parametrize("module", ["features/offline.py", "models/pipeline.py"])
def test_callback_users_do_not_import_engine(module: str) -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / module).read_text()
    assert "import engine" not in text and "from engine" not in text
