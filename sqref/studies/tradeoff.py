"""`sqref study tradeoff`: LeNet-5's accuracy against payload ratio over rank x bits,
no clipping (max) against the dynamic boundary, with and without fine-tuning.

Each entry of the table (rank x bits x rule, fine-tuned or not) is a cell,
`tradeoff_cell`, run through sqref.studies.common.run_cells: in this process,
or on a Dask cluster (docs/scale.md). The table is built here from the
ordered results."""
from __future__ import annotations

from sqref.compress import finetune
from sqref.qmodel import quantize_model
from sqref.studies.common import (CellCache, cells_blas_threads, check_blas_threads, cluster, code_version,
                                  data_split, factored, float_setting, payload_ratio, run_cells, score)

RANKS = (10, 20, 40)
BITS = (2, 3, 4, 6, 8)
FINETUNE_MAX_BITS = 4  # fine-tuned columns only up to here, where it matters
RULES = ("max", "dynamic")
# the modules a cell runs besides sqref.studies.common.COMMON_SOURCES: a change is a new cache key
SOURCES = ("sqref.studies.tradeoff", "sqref.train", "sqref.grad")


def tradeoff_cell(rank: int, bits: int, rule: str, epochs: int, blas: str | None = None) -> list:
    """One entry: [test accuracy, agreement with the float model, payload ratio] of LeNet-5 with its FC
    layers at SVD rank `rank`, `bits` for every layer, the boundary `rule`, after `epochs` of
    fine-tuning on the labels only (0: none; then `blas`, the BLAS threads it must run with, is
    None). The fine-tuning seed is finetune's default, 0, as before the cells."""
    model, x, y, float_preds = float_setting("lenet5")
    qkw = dict(bits=bits, rule=rule)
    base = factored("lenet5", rank)
    if epochs:
        check_blas_threads(blas)
        base = finetune(base, data_split("train"), data_split("val"), epochs=epochs, quantize_kwargs=qkw,
                        progress=False)[0]
    qm = quantize_model(base, **qkw)
    return [*score(qm, float_preds, x, y), payload_ratio(qm)]


def cell_version(task: dict) -> dict:
    """A tradeoff cell's code version (its cache key, with its parameters)."""
    return code_version(SOURCES, ["lenet5"])


def tradeoff_study(progress=False, finetune_epochs=5, collect=None, *, workers=None, scheduler=None,
                   cache=None) -> str:
    """Accuracy against payload ratio for rank x bits, max vs dynamic, with and without fine-tuning.
    `collect`, a list, receives {label, ratio, accuracy} rows for sqref.plots.accuracy_curves.
    One cell per entry (tradeoff_cell), in-process, on a LocalCluster of `workers` processes, or
    at `scheduler`; with `cache` (a directory), finished cells are kept there."""
    entries = [(rank, k, tune, rule) for rank in RANKS for k in BITS for tune in (False, True) for rule in RULES]
    with cluster(workers, scheduler) as address:
        blas = cells_blas_threads(address)
        tasks = [{"rank": rank, "bits": k, "rule": rule, "epochs": 0} if not tune else
                 {"rank": rank, "bits": k, "rule": rule, "epochs": finetune_epochs, "blas": blas}
                 for rank, k, tune, rule in entries if not tune or k <= FINETUNE_MAX_BITS]
        cells = iter(run_cells(tradeoff_cell, tasks, label="tradeoff", progress=progress, scheduler=address,
                               cache=None if cache is None else CellCache(cache, "tradeoff"), code=cell_version))
    lines = ["## Trade-off: LeNet-5, rank x bits, no clipping (max) vs the dynamic boundary", "",
             "Command: `sqref study tradeoff`. Uniform bits for every layer, float32 biases, per tensor. "
             f"Cells: test accuracy % (agreement %); 'ft' columns after {finetune_epochs} epochs of fine-tuning "
             "on the labels only, without distillation (only for 2 to 4 bits, where it matters).", "",
             "| rank | bits | payload ratio | max | dynamic | max, ft | dynamic, ft |", "|---|---|---|---|---|---|---|"]
    for rank in RANKS:
        for k in BITS:
            row, ratio = [], None
            for tune in (False, True):
                for rule in RULES:
                    if tune and k > FINETUNE_MAX_BITS:
                        row.append("-")
                        continue
                    acc, agree, cell_ratio = next(cells)
                    ratio = ratio or cell_ratio
                    row.append(f"{100 * acc:.1f} ({100 * agree:.1f})")
                    if collect is not None:
                        collect.append({"label": f"{rule}{', fine-tuned' if tune else ''}", "ratio": ratio,
                                        "accuracy": acc})
            lines.append(f"| {rank} | {k} | {ratio:.1f}x | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
