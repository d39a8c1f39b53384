"""What every `sqref` command shares: the error type, argument types, output-path checks,
plain-text tables and the JSON encoder."""
from __future__ import annotations

import argparse
import dataclasses
import importlib

import numpy as np



class UsageError(ValueError):
    """Bad arguments or input: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(f"{self.prog}: {message}")


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Plain-text table: columns are (key, header) pairs, values already formatted."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


def _int_at_least(text, lo: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = lo - 1
    if value < lo:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text):
    return _int_at_least(text, 1, "a positive integer")


def nonneg_int(text):
    return _int_at_least(text, 0, "an integer >= 0")


MODEL_HELP = "a sqref model file (.h5), or a float ONNX model (.onnx: imported in memory, as `sqref import` does)"
DATA_FORMS = ("the sqref data file (HDF5, MNIST-5k: its stored train/val/test split), a .npz holding float32 "
              "inputs 'x' shaped (N, *model input shape) and optional integer labels 'y', or a .npy of float32 "
              "inputs (docs/cli.md, 'Data files')")


def add_data_option(p, *, default=None, what="data file"):
    """--data FILE, as every command that reads inputs takes it."""
    from sqref.data import DEFAULT_DATA

    default = str(DEFAULT_DATA) if default is None else default
    p.add_argument("--data", metavar="FILE", default=default,
                   help=f"{what}: {DATA_FORMS} (default: %(default)s)")


def add_split_seed_option(p):
    p.add_argument("--split-seed", type=nonneg_int, default=0, metavar="N",
                   help="seed of the split of a .npz/.npy into train (70%%: calibration, fine-tuning), val (10%%) "
                        "and test (20%%), recorded in what the command writes; the sqref data file keeps its "
                        "stored split (default: %(default)s)")


def add_cluster_options(p, what: str, *, note: str = ""):
    """--workers N | --scheduler ADDR (sqref.parallel.run_tasks), mutually exclusive: `what` runs on a
    Dask LocalCluster of N processes or on an existing cluster; `note` ends --workers' help."""
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=positive_int, metavar="N",
                         help=f"run {what} on a Dask LocalCluster of N worker processes (one thread each"
                              f"{'; ' + note if note else ''})")
    cluster.add_argument("--scheduler", metavar="ADDR",
                         help=f"run {what} on the Dask cluster whose scheduler is at ADDR (tcp://HOST:PORT)")


def cluster_option(args) -> str | None:
    """'--workers' or '--scheduler' when one was given; None: the work runs in this process."""
    if getattr(args, "workers", None) is not None:
        return "--workers"
    return "--scheduler" if getattr(args, "scheduler", None) is not None else None


def require_dask(option: str) -> None:
    """A UsageError in one line, before any work, when `option` needs Dask and it is not installed."""
    try:
        importlib.import_module("dask.distributed")
    except ImportError:
        raise UsageError(f"{option} needs Dask: pip install \"sqref[distributed]\" "
                         "(or pip install \"dask[distributed]\")") from None


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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def as_json(result) -> dict:
    """A job's result dataclass as the command's JSON object (its own ``to_json`` if it has one)."""
    return result.to_json() if hasattr(result, "to_json") else dataclasses.asdict(result)
