"""A minimal progress bar on stderr.

On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints one
line when the task ends, so logs stay short. Silent when `enabled` is false.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, *, enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = sys.stderr if stream is None else stream
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.done = 0
        self.suffix = ""

    def update(self, done: int, suffix: str = "") -> None:
        self.done, self.suffix = done, suffix
        if self.tty:
            width = 30
            filled = width * min(done, self.total) // self.total
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{done}/{self.total} {elapsed:5.1f}s {suffix}  ")
            self.stream.flush()

    def close(self, suffix: str | None = None) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        end = self.suffix if suffix is None else suffix
        prefix = "\r" if self.tty else ""
        self.stream.write(f"{prefix}{self.label}: {self.done}/{self.total} in {elapsed:.1f}s {end}".rstrip() + "\n")
        self.stream.flush()
