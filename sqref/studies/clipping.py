"""`sqref study clipping`: every clipping rule at every bit width, weight-only quantization.

Each cell of the tables (model x grid x rule x bits) is an independent task,
`clipping_cell`, run through sqref.parallel.run_tasks: in this process by
default, on a Dask cluster with `--workers N` or `--scheduler ADDR`. The cells
return two numbers and the tables are formatted here, in task order, so the
markdown is byte for byte the same wherever the cells ran (docs/scale.md).
With a cache directory (`--cache DIR`), finished cells are stored there and
read back by the next run, keyed by the cell's parameters and `cell_version`
(sqref.studies.common.CellCache), so an interrupted run resumes.
"""
from __future__ import annotations

import functools

import numpy as np

import sqref
from sqref import clipping
from sqref.data import DEFAULT_DATA, load_split
from sqref.hdf5 import file_sha256
from sqref.model import predict
from sqref.qmodel import quantize_model
from sqref.studies.common import MODELS, CellCache, load_model, model_sha256, run_cells, score, source_sha256

BITS = range(2, 9)
# the modules a cell runs: a change to any of them is a new code version (a new cache key)
SOURCES = ("sqref.studies.clipping", "sqref.studies.common", "sqref.clipping", "sqref.mse_search", "sqref.quant",
           "sqref.qmodel", "sqref.model", "sqref.ops")


@functools.lru_cache(maxsize=None)
def _setting(name: str):
    """(model, x, y, float predictions) of shipped model `name` on the test split; loaded once
    per process (in-process, or once per Dask worker), not once per cell."""
    x, y = load_split(split="test")
    model = load_model(name)
    return model, x, y, predict(model, x)


def clipping_cell(model: str, per_channel: bool, rule: str, bits: int) -> tuple[float, float]:
    """One table cell: (test accuracy, agreement with the float model), as fractions."""
    float_model, x, y, float_preds = _setting(model)
    qm = quantize_model(float_model, bits=bits, rule=rule, per_channel=per_channel)
    return score(qm, float_preds, x, y)


def cell_version(task: dict) -> dict:
    """What a cell's result depends on besides its parameters: sqref's and NumPy's versions, the
    sources of SOURCES, the model file and the data file (their SHA-256)."""
    return {"sqref": sqref.__version__, "numpy": np.__version__, "sources": source_sha256(*SOURCES),
            "model": model_sha256(task["model"]), "data": _data_sha256()}


@functools.lru_cache(maxsize=None)
def _data_sha256() -> str:
    return file_sha256(DEFAULT_DATA)


def clipping_study(progress=False, *, workers=None, scheduler=None, cache=None) -> str:
    """Weight-only quantization, bits 2..8 x every rule, per tensor and per channel; the cells
    run in-process, on a LocalCluster of `workers` processes, or at `scheduler` (run_tasks);
    with `cache` (a directory), finished cells are read from it and new ones stored there."""
    tasks = [{"model": name, "per_channel": per_channel, "rule": rule, "bits": k}
             for name in MODELS for per_channel in (False, True) for rule in clipping.RULES for k in BITS]
    cells = run_cells(clipping_cell, tasks, label="clipping", progress=progress, workers=workers,
                      scheduler=scheduler, cache=None if cache is None else CellCache(cache, "clipping"),
                      code=cell_version)
    result = {tuple(task.values()): cell for task, cell in zip(tasks, cells)}
    lines = ["## Clipping rules at every bit width (weight-only, no SVD, no fine-tuning)", "",
             "Command: `sqref study clipping`. Test accuracy in % and, in brackets, the prediction agreement "
             "with the float model in %. Symmetric grid, round half to even; activations stay float.", ""]
    for name in MODELS:
        _, _, y, float_preds = _setting(name)
        float_acc = float(np.mean(float_preds == y))
        for per_channel in (False, True):
            lines += [f"### {name}, {'per output channel' if per_channel else 'per tensor'} "
                      f"(float accuracy {100 * float_acc:.1f}%)", "",
                      "| rule | " + " | ".join(f"{k} bits" for k in BITS) + " |",
                      "|---|" + "---|" * len(BITS)]
            for rule in clipping.RULES:
                row = [f"{100 * acc:.1f} ({100 * agree:.1f})"
                       for acc, agree in (result[name, per_channel, rule, k] for k in BITS)]
                lines.append(f"| {rule} | " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines)
