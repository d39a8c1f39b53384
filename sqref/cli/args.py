"""What every `sqref` command shares: the error type, argument types, output-path checks,
plain-text tables and the JSON encoder."""
from __future__ import annotations

import argparse
import os

import numpy as np


class UsageError(ValueError):
    """Bad arguments or input: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


def check_output_path(out, inputs=(), *, force: bool = False) -> str:
    """Refuse to write over an input file, or over an existing file without --force."""
    out = os.fspath(out)
    for path in inputs:
        if path is not None and os.path.exists(path) and os.path.exists(out) and os.path.samefile(path, out):
            raise UsageError(f"output {out} is the input file; refusing to overwrite it")
        if path is not None and os.path.abspath(path) == os.path.abspath(out):
            raise UsageError(f"output {out} is the input file; refusing to overwrite it")
    if os.path.exists(out) and not force:
        raise UsageError(f"output {out} already exists; pass --force to replace it")
    if os.path.isdir(out):
        raise UsageError(f"output {out} is a directory; give a file path")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise UsageError(f"output {out}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"output {out}: directory {directory} is not writable")
    return out


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain-text table: columns are (key, header) pairs, values already formatted."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
