"""Progress as plain log lines, for output where a progress bar does not show.

A Prefect task's log, a file, or ``befa run`` piped somewhere get one line every
``every_s`` seconds and one at the end: done/total, the share, items per second and the
time left, e.g. ``extract image: 320/1663 (19%), 9.5 items/s, ETA 2 min 21 s``.

A progress bar redraws its line with carriage returns: on a terminal that is a bar, in a
file it is one endless line. :func:`bar_on_terminal` says whether a bar may be drawn (stderr
is a terminal); where it may not, :func:`stderr_line` writes these lines instead.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


def bar_on_terminal() -> bool:
    """True when stderr (where progress bars draw) is a terminal."""
    return sys.stderr.isatty()


def stderr_line(line: str) -> None:
    """One progress line on stderr, where the bar would have been."""
    print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes} min {s} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class ProgressLines:
    def __init__(self, total: int, label: str, emit: Callable[[str], None], every_s: float = 30.0, unit: str = "items"):
        self.total, self.label, self.emit, self.every_s, self.unit = total, label, emit, every_s, unit
        self.done = 0
        self.start = self.last = time.perf_counter()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = f", ETA {_duration((self.total - self.done) / rate)}" if rate > 0 and self.done < self.total else ""
        return f"{self.label}: {self.done}/{self.total}{share}, {rate:.1f} {self.unit}/s{left}"

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.emit(self.line())

    def close(self) -> None:
        self.emit(self.line() + f", done in {_duration(time.perf_counter() - self.start)}")
