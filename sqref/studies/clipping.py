"""`sqref study clipping`: every clipping rule at every bit width, weight-only quantization.

Each cell of the tables (model x grid x rule x bits) is an independent task,
`clipping_cell`, run through sqref.parallel.run_tasks: in this process by
default, on a Dask cluster with `--workers N` or `--scheduler ADDR`. The cells
return two numbers and the tables are formatted here, in task order, so the
markdown is byte for byte the same wherever the cells ran (docs/scale.md).
"""
from __future__ import annotations

import functools

import numpy as np

from sqref import clipping
from sqref.data import load_split
from sqref.model import predict
from sqref.parallel import run_tasks
from sqref.progress import Progress
from sqref.qmodel import quantize_model
from sqref.studies.common import MODELS, load_model, score, tick

BITS = range(2, 9)


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


def clipping_study(progress=False, *, workers=None, scheduler=None) -> str:
    """Weight-only quantization, bits 2..8 x every rule, per tensor and per channel; the cells
    run in-process, on a LocalCluster of `workers` processes, or at `scheduler` (run_tasks)."""
    tasks = [{"model": name, "per_channel": per_channel, "rule": rule, "bits": k}
             for name in MODELS for per_channel in (False, True) for rule in clipping.RULES for k in BITS]
    bar = Progress(len(tasks), "clipping", enabled=progress)
    cells = run_tasks(clipping_cell, tasks, workers=workers, scheduler=scheduler, progress=lambda *_: tick(bar))
    bar.close()
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
