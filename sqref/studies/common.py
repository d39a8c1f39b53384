"""What every study shares: the models, the scoring, the results-table row,
one tick of the progress bar over a study's cells, and the cells themselves:
`run_cells` runs a study's independent cells through sqref.parallel.run_tasks,
reading finished ones from a `CellCache` and storing each new one as it
completes, so an interrupted run resumes where it stopped (docs/scale.md).
A cell loads what it needs once per process (`load_model`, `data_split`,
`float_setting`, `factored`: in this process, or once per Dask worker); a
cell that fine-tunes or trains also checks the BLAS threads it runs with
(`check_blas_threads`), since its results depend on them.

Accuracy is always given with the prediction agreement between the
compressed and the float model (1,000 test images: one image is 0.1 point,
the standard error near 98% about 0.45 points).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import sys
import tempfile

import numpy as np

import sqref
from sqref import parallel
from sqref.accounting import sizes
from sqref.compress import factor_model
from sqref.data import DATA_DIR, DEFAULT_DATA, load_split
from sqref.hdf5 import atomic_text, file_sha256
from sqref.model import predict
from sqref.parallel import run_tasks
from sqref.progress import Progress

MODELS = ("lenet5", "lenet300")

HEADER = ["| model | settings | float % | compressed % | drop (points) | agreement % | payload B | payload ratio | "
          "file ratio | Huffman ratio |", "|---|---|---|---|---|---|---|---|---|---|"]


@functools.lru_cache(maxsize=None)
def load_model(name):
    """A shipped model, data/NAME.h5; read once per process (callers must not modify it)."""
    return sqref.load(DATA_DIR / f"{name}.h5")


@functools.lru_cache(maxsize=None)
def data_split(split: str):
    """(x, y) of one split of the shipped data (sqref.data.load_split), read once per process."""
    return load_split(split=split)


@functools.lru_cache(maxsize=None)
def float_setting(name: str):
    """(model, x, y, float predictions) of shipped model `name` on the test split, once per process."""
    model = load_model(name)
    x, y = data_split("test")
    return model, x, y, predict(model, x)


@functools.lru_cache(maxsize=None)
def factored(name: str, rank: int):
    """Shipped model `name` with its FC layers factored at SVD rank `rank` (sqref.compress.factor_model)."""
    return factor_model(load_model(name), rank=rank)[0]


def score(model, float_preds, x, y) -> tuple[float, float]:
    """(accuracy, agreement with `float_preds`) of `model` on (x, y), as fractions."""
    preds = predict(model, x)
    return float(np.mean(preds == y)), float(np.mean(preds == float_preds))


def payload_ratio(model) -> float:
    return sizes(model)["total"]["payload_ratio"]


def table_row(label, model, compressed, float_preds, x, y, extra="") -> str:
    """One row under HEADER: accuracy, drop and agreement on (x, y), and the
    payload, file and Huffman ratios of `compressed` written to a .h5 file."""
    acc, agree = score(compressed, float_preds, x, y)
    float_acc = float(np.mean(float_preds == y))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.h5")
        sqref.save(compressed, path)
        total = sizes(compressed, path)["total"]
    return (f"| {label} | {extra} | {100 * float_acc:.1f} | {100 * acc:.1f} | {100 * (float_acc - acc):+.1f} | "
            f"{100 * agree:.1f} | {total['payload_bytes']:,} | **{total['payload_ratio']:.1f}x** | "
            f"{total['file_ratio']:.1f}x | {total['huffman_ratio']:.1f}x |")


def tick(bar: Progress) -> None:
    """One more cell of a study done: every study counts its cells (table
    cells, training epochs, child processes) on a sqref.progress.Progress,
    which prints the ETA from the mean pace so far."""
    bar.update(bar.done + 1)


# ----------------------------------------------------------------------------- where and how cells run


@contextlib.contextmanager
def cluster(workers=None, scheduler=None):
    """The scheduler address for every round of cells of a study (or of `sqref study all`): with
    `workers`, one LocalCluster of that many processes (sqref.parallel.local_cluster), started
    here and stopped at the end; otherwise `scheduler` itself (None: the cells run in this process)."""
    if workers is None:
        yield scheduler
        return
    if scheduler is not None:
        raise ValueError("give either workers (a local cluster) or scheduler (an existing one), not both")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    with parallel.local_cluster(workers) as local:
        yield local.scheduler_address


def blas_threads() -> str:
    """The BLAS threads of this task, in the words of the fine-tuning study's text: one thread is
    'OPENBLAS_NUM_THREADS=1', whether the variable says so or threadpoolctl's limit does (with
    threadpoolctl installed, sqref.parallel.run_one runs every task under one BLAS thread, whatever
    the variable says; the two give the same numbers); otherwise 'OPENBLAS_NUM_THREADS=N' (the
    variable) or 'OpenBLAS default (C cores)'. Meant to run as a task (run_tasks)."""
    value = os.environ.get("OPENBLAS_NUM_THREADS")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threads = set()
    else:
        threads = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    if threads == {1}:
        value = "1"
    return f"OPENBLAS_NUM_THREADS={value}" if value else f"OpenBLAS default ({os.cpu_count()} cores)"


def cells_blas_threads(scheduler=None) -> str:
    """blas_threads() where the cells will run: as one task in this process, or on the cluster at
    `scheduler`. Fine-tuning sums in the BLAS's order, so a fine-tuning cell takes this as its
    parameter `blas`: it enters the cell's cache key, and the cell checks it (check_blas_threads)."""
    return run_tasks(blas_threads, [{}], scheduler=scheduler)[0]


def check_blas_threads(blas: str) -> None:
    """Raise unless this task runs with the BLAS threads `blas` (the cell's parameter)."""
    here = blas_threads()
    if here != blas:
        raise ValueError(f"this cell's results depend on the BLAS thread count: it must run with {blas}, "
                         f"and its process has {here}")


# ----------------------------------------------------------------------------- cells and their cache

CACHE_FORMAT = "sqref-cell-cache"
CACHE_VERSION = 1


def canonical_json(value) -> str:
    """Sorted keys, no spaces, no NaN: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def source_sha256(*modules: str) -> str:
    """The SHA-256 of the source files of the named modules (e.g. "sqref.qmodel"), in that order."""
    h = hashlib.sha256()
    for name in modules:
        with open(importlib.import_module(name).__file__, "rb") as fh:
            h.update(name.encode() + b"\0" + fh.read() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def model_sha256(name: str) -> str:
    """The SHA-256 of a shipped model file, data/NAME.h5."""
    return file_sha256(DATA_DIR / f"{name}.h5")


@functools.lru_cache(maxsize=None)
def data_sha256() -> str:
    """The SHA-256 of the shipped data file (sqref.data.DEFAULT_DATA)."""
    return file_sha256(DEFAULT_DATA)


# the modules every table cell runs: the forward pass, quantization, the accounting and the file it writes
COMMON_SOURCES = ("sqref.studies.common", "sqref.data", "sqref.model", "sqref.ops", "sqref.qmodel", "sqref.quant",
                  "sqref.clipping", "sqref.mse_search", "sqref.accounting", "sqref.fileformat", "sqref.hdf5",
                  "sqref.packing", "sqref.compress", "sqref.svd")


def code_version(sources, models=()) -> dict:
    """A cell's code version, the rest of its cache key (CellCache): sqref's and NumPy's versions,
    the SHA-256 of the modules `sources` and COMMON_SOURCES, and of the shipped `models` and the
    data file."""
    return {"sqref": sqref.__version__, "numpy": np.__version__,
            "sources": source_sha256(*dict.fromkeys((*sources, *COMMON_SOURCES))),
            "models": {name: model_sha256(name) for name in models}, "data": data_sha256()}


def check_cache_dir(directory) -> str:
    """`directory` as a str, created if missing; a one-line ValueError if it is a file (or cannot be)."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"cache {directory} is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cache {directory}: cannot create it: {exc.strerror or exc}") from None
    return directory


class CellCache:
    """Finished cells of one study in a directory: DIR/STUDY/KEY.json, one JSON file per cell.

    KEY is the SHA-256 of the canonical JSON of {"study", "cell", "code"}: the cell's parameters
    and the code version (`code`, a dict the study computes per cell: sqref's version, the hash of
    the sources the cell runs, the SHA-256 of its model and data files). Any change to them gives
    another key, so a stale entry is never read. The file holds those three, the result (JSON
    values) and the SHA-256 of the result's canonical JSON; an entry that does not parse or
    check is ignored, with a note on `stream`, and the cell is computed again and rewritten.
    Files are written atomically (sqref.hdf5.atomic_text): a run killed mid-write leaves none."""

    def __init__(self, directory, study: str, *, stream=None):
        self.study, self.stream = study, sys.stderr if stream is None else stream
        self.directory = os.path.join(check_cache_dir(directory), study)
        os.makedirs(self.directory, exist_ok=True)

    def _identity(self, cell: dict, code: dict) -> dict:
        return {"study": self.study, "cell": cell, "code": code}

    def path(self, cell: dict, code: dict) -> str:
        return os.path.join(self.directory, sha256_text(canonical_json(self._identity(cell, code))) + ".json")

    def read(self, cell: dict, code: dict) -> tuple[bool, object]:
        """(True, result) of a finished cell; (False, None) if absent or corrupted (noted)."""
        path = self.path(cell, code)
        if not os.path.exists(path):
            return False, None
        try:
            with open(path, encoding="utf-8") as fh:
                entry = json.load(fh)
            problem = self._problem(entry, cell, code)
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
            problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if problem:
            self.stream.write(f"note: {self.study}: ignored the corrupted cache entry {path} ({problem}); "
                              "computing the cell again\n")
            self.stream.flush()
            return False, None
        return True, entry["result"]

    def _problem(self, entry, cell, code) -> str | None:
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            return f"not a {CACHE_FORMAT} file"
        if entry.get("format_version") != CACHE_VERSION:
            return f"format_version {entry.get('format_version')!r}, expected {CACHE_VERSION}"
        if any(entry.get(k) != v for k, v in self._identity(cell, code).items()):
            return "its study, cell or code version is not the one its name says"
        if "result" not in entry or entry.get("result_sha256") != sha256_text(canonical_json(entry["result"])):
            return "its result does not match its result_sha256"
        return None

    def write(self, cell: dict, code: dict, result) -> None:
        """Store a finished cell's result (JSON values), atomically."""
        entry = {"format": CACHE_FORMAT, "format_version": CACHE_VERSION, **self._identity(cell, code),
                 "result": result, "result_sha256": sha256_text(canonical_json(result))}
        atomic_text(self.path(cell, code), json.dumps(entry, sort_keys=True, indent=1) + "\n", overwrite=True)


def run_cells(fn, tasks: list[dict], *, label: str, progress=False, workers=None, scheduler=None, cache=None,
              code=None, stream=None) -> list:
    """[fn(**task) for task in tasks] through sqref.parallel.run_tasks, with a progress bar (cells
    done / cells to compute, and the ETA). With `cache` (a CellCache), finished cells are read
    from it and only the others run; each result is stored as it arrives, so an interrupted run
    loses only the cells in flight. `code(task)` gives the cell's code version (its cache key);
    results must be JSON values (lists come back for tuples: a study formats both alike)."""
    results, missing = [None] * len(tasks), []
    for index, task in enumerate(tasks):
        found, result = cache.read(task, code(task)) if cache is not None else (False, None)
        if found:
            results[index] = result
        else:
            missing.append(index)
    cached = len(tasks) - len(missing)
    title = label if not cached else f"{label} ({cached} of {len(tasks)} cells from the cache)"
    bar = Progress(len(missing), title, enabled=progress and bool(missing), stream=stream)
    if progress and not missing:
        (sys.stderr if stream is None else stream).write(f"{label}: all {len(tasks)} cells from the cache\n")

    def store(index, result):
        if cache is not None:
            cache.write(tasks[missing[index]], code(tasks[missing[index]]), result)

    computed = run_tasks(fn, [tasks[i] for i in missing], workers=workers, scheduler=scheduler,
                         on_result=store, progress=lambda done, total: bar.update(done)) if missing else []
    bar.close()
    for index, result in zip(missing, computed):
        results[index] = result
    return results
