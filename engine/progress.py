"""Progress of long commands (history generation, training, replays, benchmarks) on stderr.

On a terminal a `Progress` rewrites one status line per stage (``\\r``, at most every
`TTY_INTERVAL_S`), ending it with a newline when the stage changes or the command ends. When
stderr is not a terminal (CI, pipes, log files) it prints nothing unless asked to
(``every_s``: then one plain line per stage every that many seconds), so logs stay quiet.

`features/` and `models/` must not import `engine/`: they take a plain callback,
``progress(stage, done, total)`` (`ProgressCallback`), and a `Progress` is one:

    with Progress() as progress:
        table = replay(events, spec, partitions, on_progress=progress)

A callback must be cheap: callers call it every few thousand items, not per item.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

ProgressCallback = Callable[[str, int, "int | None"], None]
T = TypeVar("T")
TTY_INTERVAL_S = 0.2


class Progress:
    """A `ProgressCallback` that reports to `stream` (default stderr).

    Args:
        stream: where to write; its ``isatty()`` decides the mode when `enabled` is None.
        enabled: True/False forces reporting on/off; None: only on a terminal.
        every_s: off a terminal (when enabled), at most one line per stage this often.
    """

    def __init__(self, stream: IO[str] | None = None, enabled: bool | None = None, every_s: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.tty = bool(isatty)
        self.enabled = self.tty if enabled is None else enabled
        self.interval = TTY_INTERVAL_S if self.tty else every_s
        self._stage: str | None = None
        self._start = self._last = 0.0
        self._open_line = False
        self._shown: tuple[str, int] | None = None

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        self._update(stage, done, total, force=total is not None and done >= total)

    def _update(self, stage: str, done: int, total: int | None, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if stage != self._stage:
            self._end_line()
            self._stage, self._start, self._last = stage, now, 0.0
        if now - self._last < self.interval and not force:
            return
        self._last = now
        self._shown = (stage, done)
        elapsed = max(now - self._start, 1e-9)
        of = f" of {total:,} ({100.0 * done / total:.0f}%)" if total else ""
        rate = f", {done / elapsed:,.0f}/s" if elapsed >= 0.1 else ""
        line = f"{stage}: {done:,}{of}{rate}, {elapsed:.1f}s"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def iterate(self, items: Iterable[T], stage: str, total: int | None = None, every: int = 4096) -> Iterator[T]:
        """Yield `items`, reporting the count every `every` items and at the end."""
        done = 0
        for item in items:
            yield item
            done += 1
            if done % every == 0:
                self(stage, done, total)
        if self._shown != (stage, done):  # the final count, unless just shown
            self._update(stage, done, total, force=True)

    def _end_line(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def close(self) -> None:
        """End the current status line (a terminal's cursor goes to a fresh line)."""
        self._end_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
