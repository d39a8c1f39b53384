"""The fine-tuning studies: `sqref study finetune` (the fine-tuned results,
several seeds) and the three choices made before it on the validation split
only: `finetune-select` (the method), `finetune-bits` (the bit allocation)
and `finetune-keep` (the epoch fine-tuning returns, cross-fitted).

Each fine-tuning run (candidate or setting x seed) is a cell, run through
sqref.studies.common.run_cells: in this process, or on a Dask cluster
(docs/scale.md). Its seed is its parameter `seed` (SELECT_SEEDS,
FINETUNE_SEEDS), as before the cells. Training sums in the BLAS's order, so
every cell also takes the BLAS threads it must run with (`blas`), which
enter its cache key. The tables are built here from the ordered results.
"""
from __future__ import annotations

import functools

import numpy as np

from sqref.compress import FINETUNE_DISTILL, FINETUNE_KEEP, distill_kwargs, finetune
from sqref.crossfit import crossfit
from sqref.model import predict, run
from sqref.qmodel import quantize_model
from sqref.stats import mean_interval
from sqref.studies.common import (HEADER, CellCache, cells_blas_threads, check_blas_threads, cluster, code_version,
                                  data_split, factored, float_setting, load_model, payload_ratio, run_cells, score,
                                  table_row)

FINETUNE_SETTINGS = {
    # rank, bits spec, epochs: the fine-tuned settings reported in docs/results.md
    "lenet5": (20, "2,conv1=4", 30),  # the pick of `sqref study finetune-keep` (and of finetune-bits)
    "lenet300": (20, "2", 30),
}
FINETUNE_SEEDS = (0, 1, 2, 3, 4)

# Fine-tuning methods compared on the VALIDATION split before any of them was
# run on test. Fixed in advance: the labels-only baseline; Hinton-style
# distillation from the float model (T = 4, 90% soft targets); and
# Apprentice-style (Mishra and Marr, 2018) distillation (T = 1, half and half).
FINETUNE_CANDIDATES = {
    "labels only": None,
    "distill T=4, alpha=0.9": (4.0, 0.9),  # (temperature, alpha)
    "distill T=1, alpha=0.5": (1.0, 0.5),
}
SELECT_SEEDS = (0, 1, 2, 3, 4)
SELECT_SETTING = (20, "2,conv1=4", 30)  # rank, bits, epochs: LeNet-5's 100x setting when the method was chosen

# Bit allocations at 100x or more, compared under the chosen method after its
# test results (one seed of five lost 0.7 points): the shipped 2-bit setting,
# and the same with the last layer at 4 bits (the usual convention of keeping
# the first and the last layer at a higher precision; the first, conv1, is
# already at 4). Ratios: 111.7x and 103.4x.
BITS_CANDIDATES = ("2,conv1=4", "2,conv1=4,fc2=4")

CROSSFIT_SPLITS = 20
# the modules a cell runs besides sqref.studies.common.COMMON_SOURCES: a change is a new cache key
SOURCES = ("sqref.studies.finetune", "sqref.train", "sqref.grad", "sqref.crossfit")

VALIDATION_NOTE = ("the test split is not read. 'kept': validation accuracy of the returned model (the epoch "
                   "early stopping keeps, so every candidate gets the same upward selection bias); 'last': of the "
                   "last epoch (no selection); agreement: with the float model on validation, of the returned "
                   "model. 500 images: one image is 0.2 points.")


def method_text() -> str:
    """The shipped fine-tuning method (sqref.compress.FINETUNE_DISTILL), in words."""
    if not FINETUNE_DISTILL:
        return "the labels only"
    return f"distillation from the float model, T {FINETUNE_DISTILL[0]:g}, alpha {FINETUNE_DISTILL[1]:g}"


def keep_text() -> str:
    """The epoch fine-tuning returns (sqref.compress.FINETUNE_KEEP), in words."""
    return {"last": "last epoch", "best-latest": "epoch of best validation accuracy (latest of ties)",
            "best": "epoch of best validation accuracy (earliest of ties)"}[FINETUNE_KEEP]


def allocation_label(model, spec) -> str:
    """'SPEC (RATIOx)': a bits spec with the payload ratio it gives `model` (float16 biases)."""
    return f"{spec} ({payload_ratio(quantize_model(model, bits=spec, bias_bits=16)):.1f}x)"


def qkw_of(spec) -> dict:
    """The quantization every fine-tuning cell trains through and reports: dynamic boundary, float16 biases."""
    return dict(bits=spec, rule="dynamic", bias_bits=16)


@functools.lru_cache(maxsize=None)
def val_predictions(name: str):
    """The float predictions of shipped model `name` on the validation split, once per process."""
    return predict(load_model(name), data_split("val")[0])


@functools.lru_cache(maxsize=None)
def val_logits(name: str):
    """The float logits of shipped model `name` on the validation split, once per process."""
    return run(load_model(name), data_split("val")[0])


def cell_version(task: dict) -> dict:
    """A fine-tuning cell's code version (its cache key, with its parameters, `blas` among them)."""
    return code_version(SOURCES, [task["model"]])


def finetune_cell(model: str, rank: int, spec: str, epochs: int, seed: int, distill, keep: str, blas: str) -> list:
    """One run of `sqref study finetune`: shipped model `model`, SVD at `rank`, bits `spec`, `epochs`
    of fine-tuning with `seed`, distillation (temperature, alpha) or None, the epoch rule `keep`.
    Returns [its results-table row (markdown), its test drop in points]."""
    check_blas_threads(blas)
    float_model, x, y, float_preds = float_setting(model)
    qkw = qkw_of(spec)
    tuned, _ = finetune(factored(model, rank), data_split("train"), data_split("val"), epochs=epochs,
                        quantize_kwargs=qkw, seed=seed, keep=keep, **distill_kwargs(float_model, distill))
    qm = quantize_model(tuned, **qkw)
    drop = 100 * (float(np.mean(float_preds == y)) - score(qm, float_preds, x, y)[0])
    return [table_row(model, float_model, qm, float_preds, x, y,
                      f"rank {rank}; bits {spec}; {epochs} epochs; seed {seed}"), drop]


def finetune_study(progress=False, *, workers=None, scheduler=None, cache=None) -> str:
    """Quantization-aware fine-tuning (STE, dynamic boundary recomputed every step), several seeds:
    one cell per model x seed (finetune_cell), in-process, on a LocalCluster of `workers`
    processes, or at `scheduler`; with `cache` (a directory), finished cells are kept there."""
    with cluster(workers, scheduler) as address:
        blas = cells_blas_threads(address)
        tasks = [{"model": name, "rank": rank, "spec": spec, "epochs": epochs, "seed": seed,
                  "distill": None if not FINETUNE_DISTILL else list(FINETUNE_DISTILL), "keep": FINETUNE_KEEP,
                  "blas": blas}
                 for name, (rank, spec, epochs) in FINETUNE_SETTINGS.items() for seed in FINETUNE_SEEDS]
        cells = run_cells(finetune_cell, tasks, label="finetune", progress=progress, scheduler=address,
                          cache=None if cache is None else CellCache(cache, "finetune"), code=cell_version)
    lines = ["## With quantization-aware fine-tuning", "",
             f"Command: `sqref study finetune`; the LeNet-5 seed-0 row is also `sqref compress --rank "
             f"{FINETUNE_SETTINGS['lenet5'][0]} --bits {FINETUNE_SETTINGS['lenet5'][1]} --bias-bits 16 --finetune "
             f"{FINETUNE_SETTINGS['lenet5'][2]}`. SGD with the straight-through estimator on the train split, "
             f"the dynamic boundary recomputed from the current weights at every step, on {method_text()} "
             f"(chosen by `sqref study finetune-select`); the model of the {keep_text()} (the shipped default, "
             "sqref.compress.FINETUNE_KEEP; `sqref study finetune-keep` compares the keep rules). Seeds change "
             "the batch order and "
             "the augmentation shifts; one run is one draw, so every setting is run with "
             f"{len(FINETUNE_SEEDS)} seeds and the mean drop is given below the table. Biases in float16. "
             f"BLAS threads: {blas} (another thread count sums in another order, and training "
             "follows another path).", ""] + HEADER
    means = []
    for name in FINETUNE_SETTINGS:
        mine = [cell for task, cell in zip(tasks, cells) if task["model"] == name]
        lines += [row for row, _ in mine]
        drops = [drop for _, drop in mine]
        spread = ""
        if len(drops) > 1:  # the seeds' spread only: each run's test sampling is not in it (sqref.stats)
            spread = "; 95% t-interval over the seeds {1:.2f} to {2:.2f}".format(*mean_interval(drops))
        means.append(f"{name}: mean drop {np.mean(drops):.2f} points over seeds "
                     f"{', '.join(map(str, FINETUNE_SEEDS))} (each: {', '.join(f'{d:+.1f}' for d in drops)}{spread})")
    return "\n".join(lines + [""] + [f"- {m}" for m in means]) + "\n"


def validation_cell(model: str, rank: int, spec: str, epochs: int, seed: int, distill, blas: str) -> list:
    """One run of a selection study (finetune-select, finetune-bits), reading the validation split
    only: shipped model `model`, SVD at `rank`, bits `spec`, `epochs` with `seed`, distillation
    (temperature, alpha) or None, the latest best epoch kept. Returns [validation accuracy of the
    returned model, its agreement with the float model, validation accuracy of the last epoch]."""
    check_blas_threads(blas)
    x_val, y_val = val = data_split("val")
    qkw = qkw_of(spec)
    tuned, history = finetune(factored(model, rank), data_split("train"), val, epochs=epochs, quantize_kwargs=qkw,
                              seed=seed, keep="best-latest", **distill_kwargs(load_model(model), distill))
    acc, agreement = score(quantize_model(tuned, **qkw), val_predictions(model), x_val, y_val)
    return [acc, agreement, history[-1]["val_accuracy"]]


def validation_runs(study, candidates, rank, epochs, *, progress, scheduler, cache):
    """Fine-tune LeNet-5 (SVD at `rank`) under each candidate {label: (bits spec, distillation or
    None)} with every seed in SELECT_SEEDS, reading only the validation split: one validation_cell
    each, the cells of study `study`. Returns (markdown rows, {label: (mean kept, mean agreement)})."""
    blas = cells_blas_threads(scheduler)
    tasks = [{"model": "lenet5", "rank": rank, "spec": spec, "epochs": epochs, "seed": seed,
              "distill": None if not distill else list(distill), "blas": blas}
             for spec, distill in candidates.values() for seed in SELECT_SEEDS]
    cells = run_cells(validation_cell, tasks, label=study, progress=progress, scheduler=scheduler,
                      cache=None if cache is None else CellCache(cache, study), code=cell_version)
    rows, scores = [], {}
    for index, label in enumerate(candidates):
        mine = cells[index * len(SELECT_SEEDS):(index + 1) * len(SELECT_SEEDS)]
        kept, agree, last = ([cell[i] for cell in mine] for i in range(3))
        scores[label] = (np.mean(kept), np.mean(agree))
        rows.append(f"| {label} | {', '.join(f'{100 * a:.1f}' for a in kept)} | {100 * np.mean(kept):.2f} | "
                    f"{100 * np.mean(last):.2f} | {100 * np.mean(agree):.2f} |")
    return rows, scores


def validation_section(title, description, column, rows, pick) -> str:
    """A selection study's markdown: the title, the description followed by
    VALIDATION_NOTE, the table of validation_runs' rows, and the pick."""
    lines = [f"## {title}", "", description + VALIDATION_NOTE, "",
             f"| {column} | kept val % per seed | mean kept % | mean last % | mean agreement % |",
             "|---|---|---|---|---|", *rows, "", f"Pick: **{pick}**."]
    return "\n".join(lines) + "\n"


def finetune_select_study(progress=False, *, workers=None, scheduler=None, cache=None) -> str:
    """Choose the fine-tuning method on the validation split only (LeNet-5, the
    100x setting): every candidate, five seeds; the pick is the best mean
    validation accuracy of the returned models (ties: mean agreement). One cell
    per candidate x seed (validation_cell); `workers`, `scheduler`, `cache` as
    for finetune_study."""
    rank, spec, epochs = SELECT_SETTING
    candidates = {label: (spec, d) for label, d in FINETUNE_CANDIDATES.items()}
    with cluster(workers, scheduler) as address:
        rows, scores = validation_runs("finetune-select", candidates, rank, epochs, progress=progress,
                                       scheduler=address, cache=cache)
    description = (f"Command: `sqref study finetune-select`. LeNet-5, rank {rank}, bits {spec}, {epochs} epochs, "
                   f"seeds {', '.join(map(str, SELECT_SEEDS))}; the candidates were fixed before any was run "
                   "(sqref.studies.FINETUNE_CANDIDATES), ")
    return validation_section("Choosing the fine-tuning method (validation split only)", description, "method",
                              rows, max(scores, key=lambda k: scores[k]))


def finetune_bits_study(progress=False, *, workers=None, scheduler=None, cache=None) -> str:
    """Choose LeNet-5's fine-tuned bit allocation on the validation split only:
    the pick is the best mean validation accuracy (ties: the smaller model). One
    cell per allocation x seed (validation_cell); `workers`, `scheduler`, `cache`
    as for finetune_study."""
    rank, _, epochs = SELECT_SETTING
    candidates = {f"bits {allocation_label(factored('lenet5', rank), spec)}": (spec, FINETUNE_DISTILL)
                  for spec in BITS_CANDIDATES}
    with cluster(workers, scheduler) as address:
        rows, scores = validation_runs("finetune-bits", candidates, rank, epochs, progress=progress,
                                       scheduler=address, cache=cache)
    description = (f"Command: `sqref study finetune-bits`. LeNet-5, rank {rank}, {epochs} epochs, {method_text()}, "
                   f"seeds {', '.join(map(str, SELECT_SEEDS))}; the candidates (sqref.studies.BITS_CANDIDATES) were "
                   "fixed after the first fine-tuned test results, see docs/results.md; ")
    pick = max(scores, key=lambda k: (scores[k][0], -list(scores).index(k)))  # ties: the earlier, smaller model
    return validation_section("Choosing the fine-tuned bit allocation (validation split only)", description,
                              "bits (payload ratio)", rows, pick)


def keep_cell(model: str, rank: int, spec: str, epochs: int, seed: int, distill, splits: int, blas: str) -> list:
    """One run of finetune-keep, reading the validation split only: fine-tune as finetune_cell does
    (the epoch kept does not matter), run every epoch's quantized model on validation, and score
    every keep rule by cross-fitting over `splits` halvings (sqref.crossfit.crossfit). Returns
    [[rule, its (2 * splits) x 3 scores], ...] in the order of sqref.crossfit.KEEP_RULES (a list,
    not a dict: the cache writes a dict's keys sorted)."""
    check_blas_threads(blas)
    x_val, y_val = val = data_split("val")
    logits = []
    finetune(factored(model, rank), data_split("train"), val, epochs=epochs, quantize_kwargs=qkw_of(spec), seed=seed,
             on_epoch=lambda epoch, m: logits.append(run(m, x_val)), **distill_kwargs(load_model(model), distill))
    return [[name, v.tolist()] for name, v in crossfit(np.stack(logits), y_val, val_logits(model),
                                                       splits=splits).items()]


def finetune_keep_study(progress=False, *, workers=None, scheduler=None, cache=None) -> str:
    """Choose which epoch fine-tuning returns, and then the bit allocation, on
    the validation split only, by cross-fitting (sqref.crossfit): each keep
    rule picks its epoch on one half of validation and is scored on the other.
    The rule picked is the best mean score (accuracy minus the float model's)
    over both allocations; the allocation, the best under that rule (ties:
    the smaller model). One cell per allocation x seed (keep_cell); `workers`,
    `scheduler`, `cache` as for finetune_study."""
    rank, _, epochs = SELECT_SETTING
    labels = [allocation_label(factored("lenet5", rank), spec) for spec in BITS_CANDIDATES]
    with cluster(workers, scheduler) as address:
        blas = cells_blas_threads(address)
        tasks = [{"model": "lenet5", "rank": rank, "spec": spec, "epochs": epochs, "seed": seed,
                  "distill": None if not FINETUNE_DISTILL else list(FINETUNE_DISTILL), "splits": CROSSFIT_SPLITS,
                  "blas": blas}
                 for spec in BITS_CANDIDATES for seed in SELECT_SEEDS]
        cells = run_cells(keep_cell, tasks, label="finetune-keep", progress=progress, scheduler=address,
                          cache=None if cache is None else CellCache(cache, "finetune-keep"), code=cell_version)
    scores = {}
    for task, cell in zip(tasks, cells):
        for name, v in cell:
            scores.setdefault(name, {}).setdefault(labels[BITS_CANDIDATES.index(task["spec"])], []).append(v)
    mean = {rule: {label: np.concatenate(v).mean(axis=0) for label, v in by.items()} for rule, by in scores.items()}
    rule = max(mean, key=lambda r: (np.mean([m[0] for m in mean[r].values()]),
                                    np.mean([m[1] for m in mean[r].values()])))
    allocation = max(labels, key=lambda k: (mean[rule][k][0], -labels.index(k)))
    head = " | ".join(f"{k}: acc - float | {k}: agreement % | {k}: mean epoch" for k in labels)
    lines = ["## Choosing the epoch fine-tuning returns (validation split only)", "",
             f"Command: `sqref study finetune-keep`. LeNet-5, rank {rank}, {epochs} epochs, {method_text()}, "
             f"bits {' and '.join(BITS_CANDIDATES)}, seeds {', '.join(map(str, SELECT_SEEDS))}; the test split is "
             "not read. Every epoch's quantized model is run on the 500 validation images; each keep rule "
             "(sqref.crossfit.KEEP_RULES, fixed before the comparison) picks an epoch on one stratified half and "
             f"is scored on the other half, both ways, for {CROSSFIT_SPLITS} random halvings: 'acc - float' is the "
             "pick's accuracy minus the float model's on the scoring half (points; one image is 0.4 points), "
             "agreement is with the float model's predictions. A rule that reads validation cannot flatter "
             "itself here, since it is scored on images it did not see.", "",
             f"| keep rule | {head} |", "|---" * (1 + 3 * len(labels)) + "|"]
    for r, by in mean.items():
        row = " | ".join(f"{100 * by[k][0]:+.3f} | {100 * by[k][1]:.2f} | {by[k][2]:.1f}" for k in labels)
        lines.append(f"| {r} | {row} |")
    lines += ["", f"Pick: **{rule}**, then bits **{allocation}**.", "", pick_margins(rule, cells)]
    return "\n".join(lines) + "\n"


def pick_margins(pick: str, cells) -> str:
    """How far the picked keep rule is ahead of each other rule, run by run: a run (one allocation x seed)
    scores a rule by the mean of its halvings' 'acc - float'; the margin is the pick's score minus the
    other rule's, given as its mean and a 95% t-interval over the runs (sqref.stats.mean_interval; the
    spread between runs only, the halvings share the same 500 images)."""
    per_run = [{name: float(np.mean(np.asarray(v)[:, 0])) for name, v in cell} for cell in cells]
    if len(per_run) < 2:  # (reduced test runs) no spread to measure
        return "One run: no interval for the pick's margin."
    margins = []
    for other in per_run[0]:
        if other != pick:
            mean, lo, hi = mean_interval([100 * (run_[pick] - run_[other]) for run_ in per_run])
            margins.append(f"{other} {mean:+.2f} ({lo:+.2f} to {hi:+.2f})")
    return (f"The pick's margin over each other rule, in points of 'acc - float', run by run ({len(cells)} runs: "
            "allocation x seed), mean and 95% t-interval over the runs: " + "; ".join(margins) + ". "
            "An interval that holds 0 means these runs cannot tell the two rules apart.")
