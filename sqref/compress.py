"""The paper end to end: truncated SVD of the FC layers, k-bit weights with a
clipping rule, optional quantization-aware fine-tuning (docs/method.md 2-4).

    factor_model        replace Linear layers by SVD pairs (rank, energy or ratio)
    search_rank         the max_drop rule: smallest shared rank whose compressed
                        model loses at most max_drop points on the VALIDATION split
    finetune            SGD with the straight-through estimator, the boundary
                        recomputed from the current weights at every step
    compress            all of it, returning the compressed model and a report
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sqref import svd
from sqref.model import Linear, Model, predict
from sqref.qmodel import quantize_model
from sqref.train import train

# The fine-tuning method `sqref compress --finetune` uses by default:
# (temperature, alpha) of distillation from the float model, or None for the
# labels only. Chosen on the validation split by `sqref study finetune-select`
# (docs/results.md): mean validation accuracy over five seeds 99.08% against
# 98.72% for the labels only and for T = 1, alpha = 0.5.
FINETUNE_DISTILL = (4.0, 0.9)
# Which epoch fine-tuning returns (sqref.train.KEEP): chosen by `sqref study
# finetune-keep`, which compares keep rules by cross-fitting on validation.
FINETUNE_KEEP = "last"


def distill_kwargs(teacher: Model, distill) -> dict:
    """finetune's keyword arguments for `distill` = (temperature, alpha) from
    `teacher`; {} (the labels only) when `distill` is None or empty."""
    if not distill:
        return {}
    temperature, alpha = distill
    return {"teacher": teacher, "temperature": temperature, "alpha": alpha}


def factor_model(model: Model, *, rank=None, energy=None, ratio=None, only=None, decompositions=None,
                 solver: str = "exact"):
    """Factor every Linear layer (or those named in `only`) by truncated SVD.

    Exactly one of rank (int), energy (tau in (0, 1]) or ratio (fraction of
    weights kept, in (0, 1)) chooses each layer's rank. A layer whose rank
    would reach break-even is kept whole and reported as such. The pair is
    named "<name>.v" (IN -> r, no bias) and "<name>.u" (r -> OUT, bias).
    `decompositions` ({name: svd.decompose(weight)}) avoids recomputing SVDs.
    `solver`: "exact" (scipy.linalg.svd) or "randomized" (svd.decompose_randomized,
    for an explicit small rank on large layers; its error is reported from the
    factors, see there).
    Returns (model, reports) with one report per Linear layer considered.
    """
    if solver not in ("exact", "randomized"):
        raise ValueError(f"solver must be 'exact' or 'randomized', got {solver!r}")
    if solver == "randomized" and rank is None:
        raise ValueError("the randomized solver needs an explicit rank (energy and ratio need the whole spectrum)")
    chosen = [v is not None for v in (rank, energy, ratio)]
    if sum(chosen) != 1:
        raise ValueError("give exactly one of rank, energy or ratio")
    if energy is not None and not (isinstance(energy, (int, float)) and 0 < energy <= 1):
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    if only is not None:
        unknown = set(only) - {n for n, layer in zip(model.names, model.layers) if isinstance(layer, Linear)}
        if unknown:
            raise ValueError(f"no linear layer named {', '.join(sorted(unknown))}")
    layers, names, reports = [], [], []
    svd_meta = dict(model.meta.get("svd", {}))
    for name, layer in zip(model.names, model.layers):
        if not isinstance(layer, Linear) or (only is not None and name not in only) or layer.quant is not None:
            layers.append(layer)
            names.append(name)
            continue
        OUT, IN = layer.weight.shape
        limit = svd.break_even_rank(OUT, IN)
        if rank is not None:
            if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
                raise ValueError(f"rank must be a positive int, got {rank!r}")
            r = int(rank)
        decomposition = (decompositions or {}).get(name)
        if decomposition is None and solver == "randomized":
            # only the leading r + p values: no spectrum to report beyond them
            decomposition = svd.decompose_randomized(layer.weight, r) if r <= limit else (None, np.zeros(0), None)
        elif decomposition is None:
            decomposition = svd.decompose(layer.weight)
        s = decomposition[1]
        if energy is not None:
            r = svd.rank_for_energy(s, tau=energy)
        elif ratio is not None:
            r = svd.rank_for_ratio(OUT, IN, ratio=ratio)
        base = {"name": name, "shape": [OUT, IN], "break_even_rank": limit,
                "singular_values": s.tolist(), "params_before": int(layer.weight.size)}
        if r > limit or r > min(OUT, IN):
            reports.append({**base, "rank": None, "kept_whole": True,
                            "reason": f"rank {r} >= break-even {limit + 1} for {OUT}x{IN}: factoring would not shrink it"})
            layers.append(layer)
            names.append(name)
            continue
        first, second, rep = svd.factor_linear(layer, r, name=name, decomposition=decomposition)
        layers += [first, second]
        names += [f"{name}.v", f"{name}.u"]
        svd_meta[name] = {"rank": r, "layers": [f"{name}.v", f"{name}.u"]}
        reports.append({**base, "rank": r, "kept_whole": False, "kept_energy": rep["kept_energy"],
                        "relative_error": rep["relative_error"], "params_after": rep["params_after"]})
    meta = {**model.meta, "original_params": model.meta.get("original_params", model.param_count()), "svd": svd_meta}
    return Model(tuple(layers), model.input_shape, tuple(names), meta), reports


def agreement(model_a: Model, model_b: Model, x) -> float:
    """Fraction of inputs on which the two models predict the same class."""
    return float(np.mean(predict(model_a, x) == predict(model_b, x)))


def search_rank(model: Model, val_xy, *, max_drop: float, quantize_kwargs: dict, progress=None):
    """The max_drop rule: the smallest rank r, shared by all FC layers below
    break-even, whose SVD + quantized model's validation accuracy is at most
    `max_drop` points below the float model's. Never looks at the test split.

    Accuracy is not monotone in r, so every candidate rank is evaluated
    (1..8, then steps of about 12%, up to the largest break-even rank).
    Returns (rank or None when no rank qualifies, [(rank, val accuracy)]).
    """
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 100):
        raise ValueError(f"max_drop must be in [0, 100] points, got {max_drop!r}")
    x, y = val_xy
    base = float(np.mean(predict(model, x) == y))
    limits = [svd.break_even_rank(*layer.weight.shape) for layer in model.layers if isinstance(layer, Linear)]
    if not limits:
        return None, []
    decompositions = {n: svd.decompose(layer.weight) for n, layer in zip(model.names, model.layers)
                      if isinstance(layer, Linear)}
    candidates, r = [], 1
    while r <= max(limits):
        candidates.append(r)
        r = r + 1 if r < 8 else int(r * 1.12) + 1
    tried = []
    for index, r in enumerate(candidates):
        factored, _ = factor_model(model, rank=r, decompositions=decompositions)
        compressed = quantize_model(factored, **quantize_kwargs)
        acc = float(np.mean(predict(compressed, x) == y))
        tried.append((r, acc))
        if progress is not None:
            progress(index + 1)
        if 100 * (base - acc) <= max_drop:
            return r, tried
    return None, tried


def finetune(model: Model, train_xy, val_xy, *, epochs: int, quantize_kwargs: dict, lr: float = 0.002,
             progress: bool = False, seed: int = 0, teacher: Model | None = None, temperature: float = 1.0,
             alpha: float = 0.0, keep: str = FINETUNE_KEEP, on_epoch=None):
    """Quantization-aware fine-tuning with the straight-through estimator.

    Every step quantizes the current float weights (the boundary re-derived
    from them by the chosen rule: with "dynamic" this is the paper's dynamic
    boundary), runs forward and backward through the quantized model, and
    applies the gradients to the float weights (d q(w) / dw taken as 1).
    The quantized model is validated after every epoch. `keep` (see
    sqref.train.train) says which epoch is returned: "last" (the default,
    the end of the cosine schedule), or early stopping, "best-latest" (the
    best validation accuracy, latest of tied epochs) or "best" (earliest).
    `sqref study finetune-keep` chose "last": on the 500 validation images
    the quantized model's accuracy still moves by a point from epoch to epoch
    at the end of the schedule, and the epoch with the best score on one half
    of the validation split was no better on the other half than the last.
    `teacher` (typically the float model before SVD and quantization),
    `temperature`, `alpha`: knowledge distillation, and `on_epoch`: a
    callback after every epoch, see sqref.train.train.
    Returns (float model, history); quantize it again to get the final codes.
    """
    def to_quantized(current):
        return quantize_model(current, **quantize_kwargs)

    float_layers = tuple(dataclasses.replace(layer, quant=None) if hasattr(layer, "quant") else layer
                         for layer in model.layers)
    start = dataclasses.replace(model, layers=float_layers)
    return train(start, train_xy, val_xy, epochs=epochs, lr=lr, momentum=0.9, weight_decay=0.0,
                 batch_size=64, seed=seed, max_shift=1, progress=progress, grad_transform=to_quantized,
                 keep=keep, teacher=teacher, temperature=temperature, alpha=alpha, on_epoch=on_epoch)
