"""The paper end to end: truncated SVD of the FC layers, k-bit weights with a
clipping rule, optional quantization-aware fine-tuning (docs/method.md 2-4).

    factor_model        replace Linear layers by SVD pairs (rank, energy or ratio)
    search_rank         the max_drop rule: smallest shared rank whose compressed
                        model loses at most max_drop points on the VALIDATION split
                        (of accuracy; of top-1 agreement with the float model
                        when the data has no labels)
    logit_agreement     label-free quality: top-1 and top-5 agreement with the
                        float model's logits, and their mean SQNR in dB
    finetune            SGD with the straight-through estimator, the boundary
                        recomputed from the current weights at every step
    compress            all of it, returning the compressed model and a report
"""
from __future__ import annotations

import dataclasses

import numpy as np

from sqref import svd
from sqref.model import Conv2d, Linear, Model, predict, substitute
from sqref.qmodel import quantize_model
from sqref.train import train

# The fine-tuning method `sqref compress --finetune` uses by default:
# (temperature, alpha) of distillation from the float model, or None for the
# labels only. Chosen on the validation split by `sqref study finetune-select`
# (docs/results.md): mean validation accuracy over five seeds 99.08% against
# 98.72% for the labels only and for T = 1, alpha = 0.5.
FINETUNE_DISTILL = (4.0, 0.9)
# Which epoch fine-tuning returns (sqref.train.KEEP). `sqref study finetune-keep`
# compares keep rules by cross-fitting on validation: with the grid-search
# boundary it picked "last"; with the exact search it picks "best-latest", by a
# margin whose interval holds 0 for every rule (docs/results.md, step 7). The
# default stays "last", which needs no selection.
FINETUNE_KEEP = "last"


def distill_kwargs(teacher: Model, distill) -> dict:
    """finetune's keyword arguments for `distill` = (temperature, alpha) from
    `teacher`; {} (the labels only) when `distill` is None or empty."""
    if not distill:
        return {}
    temperature, alpha = distill
    return {"teacher": teacher, "temperature": temperature, "alpha": alpha}


def as_matrix(layer):
    """A layer SVD can factor, as a Linear (OUT, IN) stand-in: a Linear itself, or
    a 1x1 convolution without groups or padding (a matrix applied at every
    pixel; factored only with factor_model's `conv_1x1`); None otherwise."""
    if isinstance(layer, Linear):
        return layer
    if isinstance(layer, Conv2d) and layer.weight.shape[2:] == (1, 1) and layer.groups == 1 \
            and tuple(layer.padding) == (0, 0):
        return Linear(layer.weight.reshape(layer.weight.shape[:2]), layer.bias, layer.quant)
    return None


def _as_layers(original, first, second):
    """The factors back in the original layer's kind: two 1x1 convolutions for a
    1x1 convolution (the first keeps its stride), else the two Linears."""
    if isinstance(original, Linear):
        return first, second
    v = Conv2d(first.weight[:, :, None, None], None, original.stride, (0, 0), (1, 1), 1)
    u = Conv2d(second.weight[:, :, None, None], second.bias, (1, 1), (0, 0), (1, 1), 1)
    return v, u


def factor_model(model: Model, *, rank=None, energy=None, ratio=None, only=None, decompositions=None,
                 solver: str = "exact", conv_1x1: bool = False):
    """Factor every Linear layer (or those named in `only`) by truncated SVD;
    with `conv_1x1`, also every 1x1 convolution (groups 1, no padding), which is
    the same matrix applied at every pixel: it becomes two 1x1 convolutions.

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
    matrices = {n: m for n, layer in zip(model.names, model.layers)
                if (m := as_matrix(layer)) is not None and (conv_1x1 or isinstance(layer, Linear))}
    if only is not None:
        unknown = set(only) - set(matrices)
        if unknown:
            raise ValueError(f"no linear layer{' or 1x1 convolution' if conv_1x1 else ''} named "
                             f"{', '.join(sorted(unknown))}")
    reports = []
    out = model
    svd_meta = dict(model.meta.get("svd", {}))
    for name, original in zip(model.names, model.layers):
        layer = matrices.get(name)
        if layer is None or (only is not None and name not in only) or layer.quant is not None:
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
            continue
        first, second, rep = svd.factor_linear(layer, r, name=name, decomposition=decomposition)
        out = substitute(out, name, (f"{name}.v", f"{name}.u"), _as_layers(original, first, second))
        svd_meta[name] = {"rank": r, "layers": [f"{name}.v", f"{name}.u"]}
        reports.append({**base, "rank": r, "kept_whole": False, "kept_energy": rep["kept_energy"],
                        "relative_error": rep["relative_error"], "params_after": rep["params_after"]})
    meta = {**model.meta, "original_params": model.meta.get("original_params", model.param_count()), "svd": svd_meta}
    return dataclasses.replace(out, meta=meta), reports


def agreement(model_a: Model, model_b: Model, x) -> float:
    """Fraction of inputs on which the two models predict the same class."""
    return float(np.mean(predict(model_a, x) == predict(model_b, x)))


TOP_K = 5


def logit_agreement(reference, logits) -> dict:
    """How closely ``logits`` (N, C) follow ``reference`` (N, C), the float model's logits on
    the same inputs: quality without labels. Unrounded; in float64.

    agreement         fraction of inputs whose top-1 class (the first argmax, as
                      sqref.model.predict) is the reference's
    top5_agreement    fraction of inputs whose reference top-1 class is among the five
                      highest of ``logits`` (fewer than five classes strictly above it):
                      top-5 accuracy with the reference's predictions as labels;
                      None when C < 5
    logit_sqnr_db     per input i, 10 log10(sum_c ref[i, c]^2 / sum_c (ref[i, c] - q[i, c])^2),
                      then the mean over the inputs; inputs whose logits are identical
                      (zero error, infinite SQNR) are left out of the mean and counted in
                      ``identical_logits``; None when every input is identical or the mean
                      is not finite (a reference whose logits are all zero)
    identical_logits  the number of inputs with identical logits
    """
    ref = np.asarray(reference, np.float64)
    q = np.asarray(logits, np.float64)
    if ref.shape != q.shape or ref.ndim != 2 or not len(ref):
        raise ValueError(f"logits {q.shape} and reference {ref.shape}: expected the same (N, classes), N >= 1")
    ref_top = np.argmax(ref, axis=1)
    rows = np.arange(len(ref))
    top1 = float(np.mean(np.argmax(q, axis=1) == ref_top))
    top5 = None
    if ref.shape[1] >= TOP_K:
        above = np.sum(q > q[rows, ref_top][:, None], axis=1)
        top5 = float(np.mean(above < TOP_K))
    signal = np.sum(ref**2, axis=1)
    noise = np.sum((ref - q) ** 2, axis=1)
    differs = noise > 0
    sqnr = None
    if differs.any():
        with np.errstate(divide="ignore"):
            mean = float(np.mean(10 * np.log10(signal[differs] / noise[differs])))
        sqnr = mean if np.isfinite(mean) else None
    return {"agreement": top1, "top5_agreement": top5, "logit_sqnr_db": sqnr,
            "identical_logits": int(np.sum(~differs))}


def search_rank(model: Model, val_xy, *, max_drop: float, quantize_kwargs: dict, progress=None,
                conv_1x1: bool = False):
    """The max_drop rule: the smallest rank r, shared by all FC layers (and with
    `conv_1x1` the 1x1 convolutions) below break-even, whose SVD + quantized model's validation accuracy is at most
    `max_drop` points below the float model's. Never looks at the test split.

    Without labels (``val_xy = (x, None)``) the score is the top-1 agreement with
    the float model's predictions instead, and the float model's own score is 1:
    the rule keeps the smallest rank with 100 * (1 - agreement) <= max_drop.

    Accuracy is not monotone in r, so every candidate rank is evaluated
    (1..8, then steps of about 12%, up to the largest break-even rank).
    Returns (rank or None when no rank qualifies, [(rank, val accuracy or agreement)]).
    """
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop <= 100):
        raise ValueError(f"max_drop must be in [0, 100] points, got {max_drop!r}")
    x, y = val_xy
    float_preds = predict(model, x)
    target = float_preds if y is None else np.asarray(y)
    base = float(np.mean(float_preds == target))
    matrices = {n: m for n, layer in zip(model.names, model.layers)
                if (m := as_matrix(layer)) is not None and (conv_1x1 or isinstance(layer, Linear)) and m.quant is None}
    limits = [svd.break_even_rank(*m.weight.shape) for m in matrices.values()]
    if not limits:
        return None, []
    decompositions = {n: svd.decompose(m.weight) for n, m in matrices.items()}
    candidates, r = [], 1
    while r <= max(limits):
        candidates.append(r)
        r = r + 1 if r < 8 else int(r * 1.12) + 1
    tried = []
    for index, r in enumerate(candidates):
        factored, _ = factor_model(model, rank=r, decompositions=decompositions, conv_1x1=conv_1x1)
        compressed = quantize_model(factored, **quantize_kwargs)
        score = float(np.mean(predict(compressed, x) == target))
        tried.append((r, score))
        if progress is not None:
            progress(index + 1)
        if 100 * (base - score) <= max_drop:
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
    "last" is the default: on the 500 validation images the quantized
    model's accuracy still moves by a point from epoch to epoch at the end of
    the schedule, and `sqref study finetune-keep` finds no keep rule whose
    pick, scored on the other half of the validation split, is better than
    the last epoch by more than its interval (docs/results.md, step 7).
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
