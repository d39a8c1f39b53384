"""The quantize and compress jobs behind `sqref quantize` and `sqref compress`: the paper's
pipeline (rank search, SVD of the FC layers, optional fine-tuning, k-bit weights), the file
written with its settings, its source and its own accuracy in ``meta``, and the report.

Both are silent unless ``progress=True``, validate every argument before loading or
computing anything, and write the output atomically (never over an input)."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np

import sqref
from sqref import plots
from sqref.accounting import sizes
from sqref.clipping import RULES
from sqref.compress import FINETUNE_DISTILL, FINETUNE_KEEP, distill_kwargs, factor_model, finetune, search_rank
from sqref.data import DATA_DIR, DEFAULT_DATA, load_split
from sqref.jobs.paths import check_output_path, default_output, plot_paths, save_figure
from sqref.jobs.models import evaluate
from sqref.jobs.report import derived_meta, fraction, layer_rows, points, rounded_total, seconds
from sqref.model import Linear, layer_arrays
from sqref.progress import Progress
from sqref.qmodel import BIAS_BITS, parse_bits, quantize_model
from sqref.quant import ROUNDINGS, SCHEMES
from sqref.train import KEEP

DEFAULT_MODEL = DATA_DIR / "lenet5.h5"
DEFAULT_MAX_DROP = 0.5  # points on the validation split, when no other rank option is given
SPLITS = ("val", "test")


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_file` wrote and measured (docs/cli.md, `sqref quantize`)."""

    output: str
    model: str
    settings: dict
    layers: list
    total: dict
    quality: dict | None
    seconds: float
    timing: dict
    plots: list | None


@dataclass(frozen=True)
class CompressResult:
    """What `compress_file` wrote and measured (docs/cli.md, `sqref compress`)."""

    output: str
    model: str
    settings: dict
    svd: list
    rank_search: dict | None
    layers: list
    total: dict
    quality: dict | None
    finetune_history: list | None
    seconds: float
    timing: dict
    plots: list | None
    notes: list


def quantize_settings(*, bits, rule, per_channel, scheme, rounding, bias_bits) -> dict:
    """Check the quantization settings (one-line ValueError) and return them as a dict."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r}: expected one of {', '.join(RULES)}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)}")
    if bias_bits not in BIAS_BITS:
        raise ValueError(f"bias_bits {bias_bits!r}: expected 32 or 16")
    return {"bits": bits, "rule": rule, "per_channel": bool(per_channel), "scheme": scheme, "rounding": rounding,
            "bias_bits": bias_bits}


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")


def quantize_file(model_path, *, output=None, bits=8, rule="dynamic", per_channel=False, scheme="symmetric",
                  rounding="half_even", bias_bits=32, data=DEFAULT_DATA, split="test", evaluate=True, plot=None,
                  overwrite=False, progress=False) -> QuantizeResult:
    """Quantize a model file's conv/linear weights to k bits (sqref.qmodel.quantize_model) and write it.

    output defaults to MODEL.qBITS.h5 in the current directory; evaluate=False skips the accuracy
    (recorded in meta as {"measured": false}); plot="FILE.png" also draws FILE.png and
    FILE-errors.png (needs matplotlib).
    """
    qkw = quantize_settings(bits=bits, rule=rule, per_channel=per_channel, scheme=scheme, rounding=rounding,
                            bias_bits=bias_bits)
    _check_split(split)
    model_path = os.fspath(model_path)
    inputs = [model_path, data]
    out = check_output_path(output or default_output(model_path, f"q{bits}".replace(",", "_")), inputs,
                            force=overwrite)
    figures = plot_paths(plot, inputs=[*inputs, out], force=overwrite)
    model = sqref.load(model_path)
    start = time.perf_counter()
    qmodel = quantize_model(model, **qkw)
    quantize_seconds = time.perf_counter() - start
    qual = quality(model, qmodel, data=data, split=split, progress=progress) if evaluate else None
    evaluate_seconds = time.perf_counter() - start - quantize_seconds
    settings = {"command": "quantize", **qkw}
    qmodel = dataclasses.replace(qmodel, meta=derived_meta(qmodel.meta, source_path=model_path,
                                                           source_meta=model.meta, settings=settings, qual=qual))
    sqref.save(qmodel, out, overwrite=overwrite)
    report = sizes(qmodel, out)
    rows = layer_rows(model, qmodel, report["layers"])
    if figures:
        _plot_quantized(figures, model, qmodel)
    timing = {"quantize_seconds": seconds(quantize_seconds), "evaluate_seconds": seconds(evaluate_seconds)}
    return QuantizeResult(out, model_path, settings, rows, rounded_total(report["total"]), qual,
                          seconds(time.perf_counter() - start), timing, list(figures) if figures else None)


def quality(float_model, compressed, *, data, split, progress=False) -> dict:
    """Accuracy of both models on a split, the drop in points and the prediction agreement."""
    x, y = load_split(data, split)
    a = evaluate(float_model, x, y, progress=progress, label=f"float model on {split}")
    b = evaluate(compressed, x, y, progress=progress, label=f"compressed model on {split}")
    return {"split": split, "count": int(len(y)), "float_accuracy": fraction(a["accuracy"]),
            "compressed_accuracy": fraction(b["accuracy"]),
            "drop_points": points(100 * (a["accuracy"] - b["accuracy"])),
            "agreement": fraction(np.mean(a["predictions"] == b["predictions"]))}



def _plot_quantized(paths, before, after):
    save_figure(plots.weight_histograms(before, after), paths[0])
    save_figure(plots.layer_errors(before, after), paths[1])


def _planned_layers(model, svd: bool):
    """Layer names and kinds after SVD: a linear layer n becomes its factors n.v and n.u."""
    planned = []
    for n, layer in zip(model.names, model.layers):
        split = layer.kind == "linear" and svd
        planned += [(f"{n}.v", "linear"), (f"{n}.u", "linear")] if split else [(n, layer.kind)]
    return tuple(n for n, _ in planned), tuple(k for _, k in planned)


def svd_settings(*, svd, rank, energy, ratio, max_drop, solver) -> dict:
    """Check the SVD options: at most one of rank, energy, ratio, max_drop (none with svd=False);
    with none of them, the paper's rank search max_drop=0.5."""
    given = {k: v for k, v in {"rank": rank, "energy": energy, "ratio": ratio, "max_drop": max_drop}.items()
             if v is not None}
    if len(given) > 1:
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: expected at most one SVD rank option")
    if not svd and given:
        raise ValueError(f"{next(iter(given))}={next(iter(given.values()))!r}: an SVD rank option, but svd=False")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1):
        raise ValueError(f"rank {rank!r}: expected a positive integer")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy {energy!r}: expected a fraction in (0, 1]")
    if ratio is not None and not 0 < ratio < 1:
        raise ValueError(f"ratio {ratio!r}: expected a fraction in (0, 1)")
    if max_drop is not None and not (np.isfinite(max_drop) and max_drop >= 0):
        raise ValueError(f"max_drop {max_drop!r}: expected a finite number of points >= 0")
    if solver not in ("exact", "randomized"):
        raise ValueError(f"svd_solver {solver!r}: expected 'exact' or 'randomized'")
    if svd and not given:
        max_drop = DEFAULT_MAX_DROP
    return {"svd": bool(svd), "rank": rank, "energy": energy, "ratio": ratio, "max_drop": max_drop,
            "svd_solver": solver}


def finetune_settings(*, epochs, lr, distill, keep, evaluate) -> dict:
    """Check the fine-tuning options; distill None means the default (sqref.compress.FINETUNE_DISTILL)."""
    if epochs is None:
        if distill is not None:
            raise ValueError(f"distill {distill!r}: distillation is a fine-tuning method; give finetune epochs")
        if keep is not None:
            raise ValueError(f"finetune_keep {keep!r}: it says which fine-tuning epoch to keep; give finetune epochs")
        return {"finetune": None, "finetune_lr": None, "distill": None, "finetune_keep": None}
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"finetune {epochs!r}: expected a positive number of epochs")
    if not evaluate:
        raise ValueError("finetune trains on MNIST-5k; it cannot be combined with evaluate=False")
    if not (np.isfinite(lr) and lr >= 0):
        raise ValueError(f"finetune_lr {lr!r}: expected a finite number >= 0")
    distill = tuple(FINETUNE_DISTILL or ()) if distill is None else tuple(distill)
    if distill and (len(distill) != 2 or not distill[0] > 0 or not 0 <= distill[1] <= 1):
        raise ValueError(f"distill {distill!r}: expected (temperature > 0, alpha in [0, 1]) or ()")
    keep = FINETUNE_KEEP if keep is None else keep
    if keep not in KEEP:
        raise ValueError(f"finetune_keep {keep!r}: expected one of {', '.join(KEEP)}")
    return {"finetune": int(epochs), "finetune_lr": lr,
            "distill": dict(zip(("temperature", "alpha"), distill)) if distill else None, "finetune_keep": keep}


def compress_file(model_path=None, *, output=None, bits=8, rule="dynamic", per_channel=False, scheme="symmetric",
                  rounding="half_even", bias_bits=32, svd=True, rank=None, energy=None, ratio=None, max_drop=None,
                  svd_solver="exact", finetune_epochs=None, finetune_lr=0.002, distill=None, finetune_keep=None,
                  data=DEFAULT_DATA, split="test", evaluate=True, plot=None, overwrite=False,
                  progress=False) -> CompressResult:
    """The paper end to end on a model file: SVD of the FC layers, optional quantization-aware
    fine-tuning, k-bit weights with a clipping rule; writes the compressed model.

    model_path defaults to the shipped data/lenet5.h5 and output to MODEL.compressed.h5 in the
    current directory. The SVD rank: ``rank`` (shared by the FC layers), ``energy``, ``ratio``, or
    ``max_drop`` (the smallest rank losing at most this many points on the validation split;
    0.5 when none is given); svd=False quantizes only. finetune_epochs=N fine-tunes, by
    distillation (T, alpha) from the input model or on the labels (distill=()).
    """
    model_path = os.fspath(DEFAULT_MODEL if model_path is None else model_path)
    qkw = quantize_settings(bits=bits, rule=rule, per_channel=per_channel, scheme=scheme, rounding=rounding,
                            bias_bits=bias_bits)
    svd_kw = svd_settings(svd=svd, rank=rank, energy=energy, ratio=ratio, max_drop=max_drop, solver=svd_solver)
    ft_kw = finetune_settings(epochs=finetune_epochs, lr=finetune_lr, distill=distill, keep=finetune_keep,
                              evaluate=evaluate)
    _check_split(split)
    inputs = [model_path, data]
    out = check_output_path(output or default_output(model_path, "compressed"), inputs, force=overwrite)
    figures = plot_paths(plot, inputs=[*inputs, out], force=overwrite)
    model = sqref.load(model_path)
    # fail now, not after the work; with SVD a linear layer n may be named by its factors n.v and n.u
    # (the final quantize_model checks again, against the layers SVD actually made)
    parse_bits(bits, *_planned_layers(model, svd))
    settings = {"command": "compress", **qkw, **svd_kw, **ft_kw}
    timing, notes = {}, []
    start = time.perf_counter()

    # 1. SVD of the FC layers
    rank_search, svd_reports, factored, chosen = None, [], model, svd_kw["rank"]
    if svd:
        if svd_kw["max_drop"] is not None:
            bar = Progress(0, "rank search (validation split)", enabled=progress)
            chosen, tried = search_rank(model, load_split(data, "val"), max_drop=svd_kw["max_drop"],
                                        quantize_kwargs=qkw, progress=bar.update)
            bar.total = max(len(tried), 1)
            bar.close(f"rank {chosen}" if chosen else "no rank qualifies: FC layers kept whole")
            rank_search = {"max_drop": svd_kw["max_drop"], "chosen_rank": chosen,
                           "tried": [{"rank": r, "val_accuracy": fraction(a)} for r, a in tried]}
        if chosen is not None or energy is not None or ratio is not None:
            factored, svd_reports = factor_model(model, rank=chosen, energy=energy, ratio=ratio, solver=svd_solver)
        if not any(isinstance(layer, Linear) for layer in model.layers):
            notes.append("the model has no fully-connected layer; SVD step skipped")
    timing["svd_seconds"] = time.perf_counter() - start

    # 2. optional fine-tuning (it re-quantizes every step), 3. quantization
    t = time.perf_counter()
    history, pre_quant = None, factored
    if finetune_epochs:
        distill_pair = tuple(ft_kw["distill"].values()) if ft_kw["distill"] else ()
        pre_quant, history = finetune(factored, load_split(data, "train"), load_split(data, "val"),
                                      epochs=ft_kw["finetune"], quantize_kwargs=qkw, lr=finetune_lr,
                                      progress=progress, keep=ft_kw["finetune_keep"],
                                      **distill_kwargs(model, distill_pair))
    timing["finetune_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    compressed = quantize_model(pre_quant, **qkw)
    timing["quantize_seconds"] = time.perf_counter() - t

    # 4. evaluate, write (the file records its own accuracy), report
    t = time.perf_counter()
    qual = quality(model, compressed, data=data, split=split, progress=progress) if evaluate else None
    timing["evaluate_seconds"] = time.perf_counter() - t
    kept = next((h for h in history if h["kept"]), None) if history else None
    extra = {"rank_search": None if rank_search is None else {k: rank_search[k] for k in ("max_drop", "chosen_rank")},
             "finetune": None if kept is None else {"epochs": len(history), "kept_epoch": kept["epoch"],
                                                    "val_accuracy": fraction(kept["val_accuracy"])}}
    compressed = dataclasses.replace(compressed, meta=derived_meta(
        compressed.meta, source_path=model_path, source_meta=model.meta, settings=settings, qual=qual, extra=extra))
    sqref.save(compressed, out, overwrite=overwrite)
    report = sizes(compressed, out)
    rows = layer_rows(pre_quant, compressed, report["layers"])
    if figures:
        _plot_quantized(figures, pre_quant, compressed)
    svd_by_name = {r["name"]: r for r in svd_reports if not r["kept_whole"]}
    original = {n: sum(a.size for a in layer_arrays(layer).values()) for n, layer in zip(model.names, model.layers)}
    for row in rows:
        base, _, part = row["name"].partition(".")
        rep = svd_by_name.get(base)
        row["rank"] = rep["rank"] if rep else None
        # the original layer's parameters (weights and bias), on the first row of an SVD pair
        row["params_before"] = original.get(base) if part in ("", "v") else None
    svd_rows = [{k: v for k, v in r.items() if k != "singular_values"} for r in svd_reports]
    timing = {k: seconds(v) for k, v in timing.items()}
    return CompressResult(out, model_path, settings, svd_rows, rank_search, rows, rounded_total(report["total"]),
                          qual, history, seconds(time.perf_counter() - start), timing,
                          list(figures) if figures else None, notes)
