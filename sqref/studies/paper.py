"""`sqref study paper`: the paper's claim (8 bits + SVD, no fine-tuning), and
per-layer bits + SVD beyond it (greedy_bits, per_layer_bits).

Every choice (rank, bits) is made on the VALIDATION split; the test split
only reports.

Each row of the two tables is a cell, `paper_cell` (model x row: the paper's
rule, then each per-layer rule), run through sqref.studies.common.run_cells:
in this process, or on a Dask cluster (docs/scale.md). A per-layer row makes
its choice of rank inside its cell, so no cell needs another's result.
"""
from __future__ import annotations

import numpy as np

from sqref.compress import factor_model, search_rank
from sqref.model import PARAM_LAYERS, predict
from sqref.progress import Progress
from sqref.qmodel import quantize_model
from sqref.studies.common import (HEADER, MODELS, CellCache, cluster, code_version, data_split, float_setting,
                                  payload_ratio, run_cells, table_row, tick)

TARGET_RATIO = 50.0  # the post-training target of the paper study's "best accuracy at" rule
PER_LAYER_RANKS = (10, 15, 20, 30)
PER_LAYER_RULES = ("max ratio", f"best accuracy at {TARGET_RATIO:g}x")
PAPER_ROW = "8 bits"  # the row of the paper's rule (paper_rank_row), beside PER_LAYER_RULES
# the modules a cell runs besides sqref.studies.common.COMMON_SOURCES: a change is a new cache key
SOURCES = ("sqref.studies.paper",)


def greedy_bits(model, val, float_val_preds, *, max_drop=None, target_ratio=None, per_channel=False,
                base_bits=8, floor=2, bias_bits=32):
    """Lower one layer's bits at a time, each step the layer whose lowering
    costs the least validation accuracy (ties: the layer with the most
    weights). Two stopping rules, exactly one given:

    max_drop      keep lowering while the validation drop stays within
                  max_drop points; returns None when even base_bits
                  everywhere loses more (the setting is not admissible);
    target_ratio  lower until the payload ratio reaches target_ratio, with no
                  drop limit; None if the floor is reached first.

    Returns ({layer: bits}, quantized model) or None.
    """
    if (max_drop is None) == (target_ratio is None):
        raise ValueError("give exactly one of max_drop and target_ratio")
    x, y = val
    base_acc = float(np.mean(float_val_preds == y))
    names = [n for n, layer in zip(model.names, model.layers) if isinstance(layer, PARAM_LAYERS)]
    qkw = dict(bias_bits=bias_bits, per_channel=per_channel)
    bits = {n: base_bits for n in names}
    best = quantize_model(model, bits=bits, **qkw)
    if max_drop is not None and 100 * (base_acc - float(np.mean(predict(best, x) == y))) > max_drop:
        return None
    while target_ratio is None or payload_ratio(best) < target_ratio:
        trials = []
        for n in names:
            if bits[n] <= floor:
                continue
            trial = {**bits, n: bits[n] - 1}
            qm = quantize_model(model, bits=trial, **qkw)
            acc = float(np.mean(predict(qm, x) == y))
            if max_drop is None or 100 * (base_acc - acc) <= max_drop:
                saved = model.layers[model.names.index(n)].weight.size
                trials.append((acc, saved, n, trial, qm))
        if not trials:
            return (bits, best) if target_ratio is None else None
        acc, _, n, bits, best = max(trials, key=lambda t: (t[0], t[1]))
    return bits, best


def per_layer_bits(model, rule, val, *, max_drop=0.5, progress=False, label="", ranks=PER_LAYER_RANKS):
    """The paper study's per-layer rules: for each rank in `ranks` (PER_LAYER_RANKS),
    greedy_bits on the validation split, then the rank the rule prefers
    ("max ratio": per tensor, within max_drop, best ratio; "best accuracy at
    50x": per channel, down to TARGET_RATIO, best validation accuracy, ties:
    higher ratio). Returns (rank, {layer: bits}, quantized model, grid) or None."""
    if rule == PER_LAYER_RULES[0]:
        kwargs, key_of = dict(max_drop=max_drop), lambda ratio, acc: ratio
    elif rule == PER_LAYER_RULES[1]:
        kwargs, key_of = dict(target_ratio=TARGET_RATIO, per_channel=True), lambda ratio, acc: (acc, ratio)
    else:
        raise ValueError(f"rule must be one of {', '.join(PER_LAYER_RULES)}, got {rule!r}")
    float_val = predict(model, val[0])
    best = None
    bar = Progress(len(ranks), f"{label} per-layer bits, {rule}".lstrip(), enabled=progress)
    for rank in ranks:
        factored = factor_model(model, rank=rank)[0]
        found = greedy_bits(factored, val, float_val, bias_bits=16, **kwargs)
        if found is not None:
            acc = float(np.mean(predict(found[1], val[0]) == val[1]))
            key = key_of(payload_ratio(found[1]), acc)
            if best is None or key > best[0]:
                best = (key, rank, *found)
        tick(bar)
    bar.close()
    return None if best is None else (*best[1:], "per channel" if kwargs.get("per_channel") else "per tensor")


def per_layer_bits_row(name, model, rule, val, float_preds, x, y, *, max_drop=0.5, ranks=PER_LAYER_RANKS) -> str:
    """The results-table row of per_layer_bits under `rule` (test split: x, y)."""
    found = per_layer_bits(model, rule, val, max_drop=max_drop, ranks=ranks)
    if found is None:
        return f"| {name} | {rule}: no rank in {', '.join(map(str, ranks))} qualifies | | | | | | | | |"
    rank, bits, qm, grid = found
    spec = ",".join(f"{n}={k}" for n, k in bits.items())
    return table_row(name, model, qm, float_preds, x, y, f"{rule}: rank {rank}, {grid}; {spec}")


def paper_rank_row(name, model, val, float_preds, x, y, *, max_drop=0.5, label="8 bits") -> str:
    """The paper's rule: 8 bits, dynamic boundary, per tensor, the smallest SVD
    rank within max_drop points on validation; its results-table row."""
    qkw = dict(bits=8, rule="dynamic")
    rank, _ = search_rank(model, val, max_drop=max_drop, quantize_kwargs=qkw)
    factored = factor_model(model, rank=rank)[0] if rank else model
    return table_row(name, model, quantize_model(factored, **qkw), float_preds, x, y, f"{label}, rank {rank}")


def paper_cell(model: str, row: str, max_drop: float, ranks: list) -> str:
    """One row of the paper study's tables, as markdown: the paper's rule (`row` = PAPER_ROW) or a
    per-layer rule (one of PER_LAYER_RULES, over the SVD ranks `ranks`), for shipped model `model`."""
    float_model, x, y, float_preds = float_setting(model)
    val = data_split("val")
    if row == PAPER_ROW:
        return paper_rank_row(model, float_model, val, float_preds, x, y, max_drop=max_drop)
    return per_layer_bits_row(model, float_model, row, val, float_preds, x, y, max_drop=max_drop, ranks=ranks)


def cell_version(task: dict) -> dict:
    """A paper cell's code version (its cache key, with its parameters): sqref.studies.common.code_version."""
    return code_version(SOURCES, [task["model"]])


def paper_study(progress=False, max_drop=0.5, *, workers=None, scheduler=None, cache=None) -> str:
    """The paper's claim, and post-training compression beyond it: one cell per table row (model x
    row), run in-process, on a LocalCluster of `workers` processes, or at `scheduler`; with `cache`
    (a directory), finished cells are read from it and new ones stored there."""
    tasks = [{"model": name, "row": row, "max_drop": max_drop, "ranks": list(PER_LAYER_RANKS)}
             for name in MODELS for row in (PAPER_ROW, *PER_LAYER_RULES)]
    with cluster(workers, scheduler) as address:
        rows = run_cells(paper_cell, tasks, label="paper", progress=progress, scheduler=address,
                         cache=None if cache is None else CellCache(cache, "paper"), code=cell_version)
    row_of = {(task["model"], task["row"]): row for task, row in zip(tasks, rows)}
    lines = ["## The paper's claim: 8-bit weights + SVD of the FC layers, no fine-tuning", "",
             f"Command: `sqref study paper`. The SVD rank (shared by the FC layers below break-even) is the smallest "
             f"whose compressed model loses at most {max_drop} points on the validation split; the test split only "
             "reports. Dynamic boundary, per tensor. The same result for LeNet-5 comes from `sqref compress` "
             "(no arguments).", ""] + HEADER
    lines += [row_of[name, PAPER_ROW] for name in MODELS]
    lines += ["", "## Beyond the paper: per-layer bits + SVD, no fine-tuning", "",
              "Command: `sqref study paper`. For each rank in 10, 15, 20, 30, bits are lowered greedily layer by "
              "layer (from 8, floor 2; each step lowers the layer that costs the least validation accuracy), "
              "under one of two rules; biases in float16; the test split only reports.", "",
              f"- **max ratio**: per-tensor grids; lower while the validation drop stays within {max_drop} points; "
              "report the rank with the best payload ratio. This maximises the ratio at the edge of the budget: "
              f"with 500 validation images (one image = 0.2 points) a {max_drop}-point budget is 2 images, and the "
              "configuration picked at that edge tends to lose more on the test split (a selection effect).",
              f"- **best accuracy at {TARGET_RATIO:g}x**: per-channel grids (one scale per output channel, which "
              "loses less accuracy at low bits: see the clipping study's per-channel tables); lower until the payload ratio "
              f"reaches {TARGET_RATIO:g}x; report the rank with the best validation accuracy (ties: higher ratio). "
              f"This is the question the {TARGET_RATIO:g}x target asks: how accurate can the model be at that size.",
              ""] + HEADER
    lines += [row_of[name, rule] for name in MODELS for rule in PER_LAYER_RULES]
    return "\n".join(lines) + "\n"
