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
from sqref.compress import (FINETUNE_DISTILL, FINETUNE_KEEP, as_matrix, distill_kwargs, factor_model, finetune, logit_agreement,
                            search_rank)
from sqref.data import DATA_DIR, DEFAULT_DATA
from sqref.inputs import ALL, SPLIT_SEED, DataFile, open_data, output_classes
from sqref.jobs.models import agreement_fields, load_model, model_logits, resolve_split
from sqref.jobs.paths import check_not_model_data, check_output_path, default_output, plot_paths, save_figure
from sqref.jobs.report import derived_meta, fraction, layer_rows, points, rounded_total, seconds
from sqref.model import Linear, layer_arrays, predict
from sqref.progress import Progress
from sqref.qmodel import BIAS_BITS, parse_bits, quantize_model
from sqref.quant import ROUNDINGS, SCHEMES
from sqref.train import KEEP

DEFAULT_MODEL = DATA_DIR / "lenet5.h5"
DEFAULT_MAX_DROP = 0.5  # points on the validation split, when no other rank option is given
SPLITS = ("val", "test")  # what compress reports on (its rank search and fine-tuning use val and train)
QUANTIZE_SPLITS = ("val", "test", ALL)  # quantize fits nothing to the data: the whole file is fair


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


def _check_split(split, allowed=SPLITS):
    if split is not None and split not in allowed:
        raise ValueError(f"split {split!r}: expected one of {', '.join(allowed)}")


def _open_checked(data, model, *, seed, split) -> tuple[DataFile, str]:
    """The data file checked against the model (input shape, label range) and the split resolved."""
    source = open_data(data, model.input_shape, seed=seed)
    split = resolve_split(split, source)
    source.check_classes(output_classes(model, source.split(split)[0]))
    return source, split


def quantize_file(model_path, *, output=None, bits=8, rule="dynamic", per_channel=False, scheme="symmetric",
                  rounding="half_even", bias_bits=32, data=DEFAULT_DATA, split=None, evaluate=True, plot=None,
                  overwrite=False, split_seed=SPLIT_SEED, progress=False) -> QuantizeResult:
    """Quantize a model's conv/linear weights to k bits (sqref.qmodel.quantize_model) and write it.

    The model is a sqref file or a float ONNX model (imported in memory); ``data`` the sqref data
    file, a .npz or a .npy (sqref.inputs), reported on ``split`` (None: 'test' of the sqref data
    file, 'all' of a user's file; without labels, the agreement with the float model only).
    output defaults to MODEL.qBITS.h5 in the current directory; evaluate=False skips the accuracy
    (recorded in meta as {"measured": false}); plot="FILE.png" also draws FILE.png and
    FILE-errors.png (needs matplotlib).
    """
    qkw = quantize_settings(bits=bits, rule=rule, per_channel=per_channel, scheme=scheme, rounding=rounding,
                            bias_bits=bias_bits)
    _check_split(split, QUANTIZE_SPLITS)
    model_path = os.fspath(model_path)
    inputs = [model_path, data]
    out = check_output_path(output or default_output(model_path, f"q{bits}".replace(",", "_")), inputs,
                            force=overwrite)
    check_not_model_data(out, model_path)
    figures = plot_paths(plot, inputs=[*inputs, out], force=overwrite)
    model = load_model(model_path)
    parse_bits(bits, *_planned_layers(model, svd=False))  # a bad width fails before any data is read
    source, split = _open_checked(data, model, seed=split_seed, split=split) if evaluate else (None, split)
    start = time.perf_counter()
    qmodel = quantize_model(model, **qkw)
    quantize_seconds = time.perf_counter() - start
    qual = quality(model, qmodel, data=source, split=split, progress=progress) if evaluate else None
    evaluate_seconds = time.perf_counter() - start - quantize_seconds
    settings = {"command": "quantize", **qkw}
    extra = {"data_source": source.record()} if source is not None else None
    qmodel = dataclasses.replace(qmodel, meta=derived_meta(qmodel.meta, source_path=model_path,
                                                           source_meta=model.meta, settings=settings, qual=qual,
                                                           extra=extra))
    sqref.save(qmodel, out, overwrite=overwrite)
    report = sizes(qmodel, out)
    rows = layer_rows(model, qmodel, report["layers"])
    if figures:
        _plot_quantized(figures, model, qmodel)
    timing = {"quantize_seconds": seconds(quantize_seconds), "evaluate_seconds": seconds(evaluate_seconds)}
    return QuantizeResult(out, model_path, settings, rows, rounded_total(report["total"]), qual,
                          seconds(time.perf_counter() - start), timing, list(figures) if figures else None)


def quality(float_model, compressed, *, data, split, progress=False, split_seed=SPLIT_SEED) -> dict:
    """Accuracy of both models on a split of ``data`` (a path or a sqref.inputs.DataFile), the drop
    in points, and the compressed model's agreement with the float model
    (sqref.compress.logit_agreement: top-1, top-5, mean logit SQNR). Without labels the
    accuracies and the drop are None."""
    source = data if isinstance(data, DataFile) else open_data(data, float_model.input_shape, seed=split_seed)
    x, y = source.split(split)
    ref = model_logits(float_model, x, progress=progress, label=f"float model on {split}")
    got = model_logits(compressed, x, progress=progress, label=f"compressed model on {split}")
    out = {"split": split, "count": int(len(x)), "labels": y is not None, "float_accuracy": None,
           "compressed_accuracy": None, "drop_points": None, **agreement_fields(logit_agreement(ref, got))}
    if y is not None:
        a, b = np.mean(np.argmax(ref, axis=1) == y), np.mean(np.argmax(got, axis=1) == y)
        out.update(float_accuracy=fraction(a), compressed_accuracy=fraction(b), drop_points=points(100 * (a - b)))
    return out



def _plot_quantized(paths, before, after):
    save_figure(plots.weight_histograms(before, after), paths[0])
    save_figure(plots.layer_errors(before, after), paths[1])


def _planned_layers(model, svd: bool, conv_1x1: bool = False):
    """Layer names and kinds after SVD: a linear layer n (with conv_1x1 also a 1x1
    convolution) may become its factors n.v and n.u."""
    planned = []
    for n, layer in zip(model.names, model.layers):
        split = svd and (layer.kind == "linear" or conv_1x1 and as_matrix(layer) is not None)
        planned += [(f"{n}.v", layer.kind), (f"{n}.u", layer.kind)] if split else [(n, layer.kind)]
    return tuple(n for n, _ in planned), tuple(k for _, k in planned)


def svd_settings(*, svd, rank, energy, ratio, max_drop, solver, conv_1x1=False) -> dict:
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
    if conv_1x1 and not svd:
        raise ValueError("svd_conv_1x1=True: factoring 1x1 convolutions is an SVD option, but svd=False")
    if svd and not given:
        max_drop = DEFAULT_MAX_DROP
    return {"svd": bool(svd), "rank": rank, "energy": energy, "ratio": ratio, "max_drop": max_drop,
            "svd_solver": solver, "svd_conv_1x1": bool(conv_1x1)}


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
        raise ValueError("finetune trains on the data's train split; it cannot be combined with evaluate=False")
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
                  svd_solver="exact", svd_conv_1x1=False, finetune_epochs=None, finetune_lr=0.002, distill=None, finetune_keep=None,
                  data=DEFAULT_DATA, split="test", evaluate=True, plot=None, overwrite=False, split_seed=SPLIT_SEED,
                  progress=False) -> CompressResult:
    """The paper end to end on a model file: SVD of the FC layers (svd_conv_1x1: and of the 1x1
    convolutions), optional quantization-aware
    fine-tuning, k-bit weights with a clipping rule; writes the compressed model.

    model_path defaults to the shipped data/lenet5.h5 and output to MODEL.compressed.h5 in the
    current directory. The SVD rank: ``rank`` (shared by the FC layers), ``energy``, ``ratio``, or
    ``max_drop`` (the smallest rank losing at most this many points on the validation split;
    0.5 when none is given); svd=False quantizes only. finetune_epochs=N fine-tunes, by
    distillation (T, alpha) from the input model or on the labels (distill=()).

    The model may be a float ONNX model (imported in memory); ``data`` the sqref data file, a
    .npz or a .npy (sqref.inputs; a user's file is split by its seeded rule, ``split_seed``).
    Without labels, max_drop applies to the top-1 disagreement with the float model
    (sqref.compress.search_rank), fine-tuning and its validation take the float model's
    predictions as labels, and the quality is the agreement with the float model.
    """
    model_path = os.fspath(DEFAULT_MODEL if model_path is None else model_path)
    qkw = quantize_settings(bits=bits, rule=rule, per_channel=per_channel, scheme=scheme, rounding=rounding,
                            bias_bits=bias_bits)
    svd_kw = svd_settings(svd=svd, rank=rank, energy=energy, ratio=ratio, max_drop=max_drop, solver=svd_solver,
                          conv_1x1=svd_conv_1x1)
    ft_kw = finetune_settings(epochs=finetune_epochs, lr=finetune_lr, distill=distill, keep=finetune_keep,
                              evaluate=evaluate)
    _check_split(split)
    inputs = [model_path, data]
    out = check_output_path(output or default_output(model_path, "compressed"), inputs, force=overwrite)
    check_not_model_data(out, model_path)
    figures = plot_paths(plot, inputs=[*inputs, out], force=overwrite)
    model = load_model(model_path)
    # fail now, before any data is read or work done; with SVD a linear layer n may be named by its
    # factors n.v and n.u (the final quantize_model checks again, against the layers SVD actually made)
    parse_bits(bits, *_planned_layers(model, svd, svd_conv_1x1))
    needs_data = evaluate or (svd and svd_kw["max_drop"] is not None) or bool(finetune_epochs)
    source, split = _open_checked(data, model, seed=split_seed, split=split) if needs_data else (None, split)
    settings = {"command": "compress", **qkw, **svd_kw, **ft_kw}
    timing, notes = {}, []
    start = time.perf_counter()

    # 1. SVD of the FC layers
    rank_search, svd_reports, factored, chosen = None, [], model, svd_kw["rank"]
    if svd:
        if svd_kw["max_drop"] is not None:
            bar = Progress(0, "rank search (validation split)", enabled=progress)
            val_xy = source.split("val")
            chosen, tried = search_rank(model, val_xy, max_drop=svd_kw["max_drop"], quantize_kwargs=qkw,
                                        progress=bar.update, conv_1x1=svd_conv_1x1)
            bar.total = max(len(tried), 1)
            bar.close(f"rank {chosen}" if chosen else "no rank qualifies: FC layers kept whole")
            score = "val_accuracy" if source.has_labels else "val_agreement"
            rank_search = {"max_drop": svd_kw["max_drop"],
                           "criterion": "accuracy" if source.has_labels else "agreement", "chosen_rank": chosen,
                           "tried": [{"rank": r, score: fraction(a)} for r, a in tried]}
            if chosen is None and tried:
                n = len(val_xy[0])
                notes.append(f"no rank loses at most {svd_kw['max_drop']:g} points of "
                             f"{'accuracy' if source.has_labels else 'agreement'} on the {n} validation inputs "
                             f"(one input is {100 / n:.2g} points): FC layers kept whole")
        if chosen is not None or energy is not None or ratio is not None:
            factored, svd_reports = factor_model(model, rank=chosen, energy=energy, ratio=ratio, solver=svd_solver,
                                                 conv_1x1=svd_conv_1x1)
        if not any(isinstance(layer, Linear) or svd_conv_1x1 and as_matrix(layer) is not None
                   for layer in model.layers):
            notes.append(f"the model has no fully-connected layer{' or 1x1 convolution' if svd_conv_1x1 else ''}; "
                         f"SVD step skipped")
    timing["svd_seconds"] = time.perf_counter() - start

    # 2. optional fine-tuning (it re-quantizes every step), 3. quantization
    t = time.perf_counter()
    history, pre_quant = None, factored
    if finetune_epochs:
        distill_pair = tuple(ft_kw["distill"].values()) if ft_kw["distill"] else ()
        train_xy, val_xy = source.split("train"), source.split("val")
        if not source.has_labels:  # the float model's predictions as labels (its soft targets when distilling)
            train_xy, val_xy = ((x, predict(model, x)) for x, _ in (train_xy, val_xy))
            notes.append(f"{os.path.basename(source.path)} has no labels: fine-tuning and its validation use the "
                         "float model's predictions as labels")
        pre_quant, history = finetune(factored, train_xy, val_xy,
                                      epochs=ft_kw["finetune"], quantize_kwargs=qkw, lr=finetune_lr,
                                      progress=progress, keep=ft_kw["finetune_keep"],
                                      **distill_kwargs(model, distill_pair))
    timing["finetune_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    compressed = quantize_model(pre_quant, **qkw)
    timing["quantize_seconds"] = time.perf_counter() - t

    # 4. evaluate, write (the file records its own accuracy), report
    t = time.perf_counter()
    qual = quality(model, compressed, data=source, split=split, progress=progress) if evaluate else None
    timing["evaluate_seconds"] = time.perf_counter() - t
    kept = next((h for h in history if h["kept"]), None) if history else None
    extra = {"rank_search": None if rank_search is None else {k: rank_search[k] for k in ("max_drop", "criterion",
                                                                                          "chosen_rank")},
             "finetune": None if kept is None else {
                 "epochs": len(history), "kept_epoch": kept["epoch"],
                 # without labels, the validation score is the agreement with the float model
                 "val_accuracy" if source.has_labels else "val_agreement": fraction(kept["val_accuracy"])}}
    if source is not None:
        extra["data_source"] = source.record()
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
