"""A minimal progress bar on stderr, with an estimate of the time left.

On a terminal it redraws one line: a bar, done/total, elapsed seconds and the
ETA (elapsed / done * (total - done): the mean pace so far). Elsewhere (CI
logs, pipes) it prints a plain line at most every ``every`` seconds while the
task runs, and one when it ends, so logs stay short but long work is never
silent. Silent when ``enabled`` is false: library functions take
``progress=False`` by default and the `sqref` commands turn it on.
"""
from __future__ import annotations

import sys
import time

LOG_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def eta_text(elapsed: float, done: int, total: int) -> str:
    """'ETA 1m05s' from the mean pace so far; '' before the first unit is done or after the last."""
    if done <= 0 or done >= total:
        return ""
    left = round(elapsed / done * (total - done))
    return f"ETA {left // 60}m{left % 60:02d}s" if left >= 60 else f"ETA {left}s"


class Progress:
    def __init__(self, total: int, label: str, *, enabled: bool = True, stream=None, every: float = LOG_EVERY):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = sys.stderr if stream is None else stream
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.every, self.last_line = every, self.start
        self.done = 0
        self.suffix = ""

    def update(self, done: int, suffix: str = "") -> None:
        self.done, self.suffix = done, suffix
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        eta = eta_text(elapsed, done, self.total)
        if self.tty:
            width = 30
            filled = width * min(done, self.total) // self.total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{done}/{self.total} {elapsed:5.1f}s {eta} {suffix}  ")
            self.stream.flush()
        elif now - self.last_line >= self.every:
            self.last_line = now
            self.stream.write(f"{self.label}: {done}/{self.total} after {elapsed:.0f}s {eta} {suffix}".rstrip() + "\n")
            self.stream.flush()

    def close(self, suffix: str | None = None) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        end = self.suffix if suffix is None else suffix
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}{self.label}: {self.done}/{self.total} in {elapsed:.1f}s {end}".rstrip() + "\n")
        self.stream.flush()
