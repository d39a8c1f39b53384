"""Studies of a pretrained model that sqref does not ship (EfficientNet-Lite0, sqref.pretrained):
its model and image files are arguments, built by `sqref data efficientnet-lite0` and
`sqref data imagenet-20`, so these run as

    python -m sqref.studies.pretrained layer-sqnr MODEL.h5
    python -m sqref.studies.pretrained views MODEL.h5 VIEWS.npz

and not as `sqref study NAME`, whose studies read only shipped files (`sqref study all` runs
every one of them). Each prints a markdown section of docs/results.md.

layer_sqnr        the weight SQNR of every conv, depthwise and FC layer under every clipping
                  rule (sqref.clipping.RULES) at 8..2 bits, per tensor and per channel
layer_sqnr_study  its summary: median and worst layer per rule, bits and grid, the
                  depthwise layers apart from the others
views_study       the float model and its quantized and SVD-compressed versions on many
                  views of a few images: accuracy, top-1 and top-5 agreement with the float
                  model, logit SQNR, Wilson intervals (sqref.stats)
"""
from __future__ import annotations

import math
import os
import sys
import zipfile

import numpy as np

import sqref
from sqref import clipping
from sqref.accounting import sizes
from sqref.compress import factor_model, logit_agreement
from sqref.inputs import read_numpy
from sqref.model import PARAM_LAYERS, Conv2d, layer_arrays, run
from sqref.progress import Progress
from sqref.qmodel import quantize_model
from sqref.quant import quant_mse
from sqref.stats import wilson_interval

BITS = (8, 7, 6, 5, 4, 3, 2)
GRIDS = (("per tensor", None), ("per channel", 0))  # (label, axis): per output channel is axis 0
RANKS = (256, 128, 64)  # SVD ranks of the classifier in views_study, as in docs/results.md
BATCH = 20  # inputs per forward pass of views_study


# ----------------------------------------------------------------------------- per-layer SQNR


def weight_layers(model) -> list[tuple[str, np.ndarray, bool]]:
    """(name, weight, depthwise) for every layer with a weight (conv, FC), in model order; a
    layer is depthwise when it is a grouped convolution with one input channel per group."""
    out = []
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, PARAM_LAYERS):
            w = layer_arrays(layer)["weight"]
            depthwise = isinstance(layer, Conv2d) and layer.groups > 1 and w.shape[1] == 1
            out.append((name, w, depthwise))
    return out


def weight_sqnr_db(w, *, bits: int, rule: str, axis=None) -> float:
    """10 log10(sum w^2 / sum (w - w_hat)^2) in dB, w_hat = fake_quant(w) on the symmetric grid
    whose boundary `rule` gives (per tensor, or per channel along `axis`), in float64 through
    sqref.quant.quant_mse; inf when w_hat = w. Every channel has the same number of weights,
    so the tensor's MSE is the mean of the channel MSEs."""
    alpha = clipping.boundary(w, bits, rule=rule, axis=axis)
    mse = float(np.mean(quant_mse(w, alpha=alpha, bits=bits, axis=axis)))
    signal = float(np.mean(np.asarray(w, np.float64) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(signal / mse)


def layer_sqnr(model, *, rules=clipping.RULES, bits=BITS, progress=False) -> list[dict]:
    """One row per weight layer x rule x bits x grid: {layer, depthwise, rule, bits, grid, sqnr_db}."""
    layers = weight_layers(model)
    bar = Progress(len(layers), "layer SQNR", enabled=progress)
    rows = []
    for i, (name, w, depthwise) in enumerate(layers):
        for rule in rules:
            for k in bits:
                for grid, axis in GRIDS:
                    rows.append({"layer": name, "depthwise": depthwise, "rule": rule, "bits": k, "grid": grid,
                                 "sqnr_db": weight_sqnr_db(w, bits=k, rule=rule, axis=axis)})
        bar.update(i + 1)
    bar.close()
    return rows


def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def layer_sqnr_tables(rows, *, bits=BITS) -> list[str]:
    """Markdown lines: for the depthwise layers, then the others, a table of rule x grid rows and
    one column per bit width, each cell 'median / worst' layer SQNR in dB, and the worst
    layer at the largest bit width."""
    lines = []
    for depthwise, title in ((True, "depthwise convolutions"), (False, "every other layer (stem, 1x1 expand and "
                                                                         "project, head, FC)")):
        mine = [r for r in rows if r["depthwise"] == depthwise]
        count = len({r["layer"] for r in mine})
        if not count:
            continue
        lines += [f"**{title}** ({count} layers): median / worst layer SQNR, dB", "",
                  "| rule | grid | " + " | ".join(f"{k} bits" for k in bits) + f" | worst layer at {bits[0]} bits |",
                  "|---|---|" + "---|" * (len(bits) + 1)]
        rules = list(dict.fromkeys(r["rule"] for r in mine))
        for rule in rules:
            for grid, _ in GRIDS:
                cells, worst_at_first = [], ""
                for k in bits:
                    cell = [r for r in mine if r["rule"] == rule and r["grid"] == grid and r["bits"] == k]
                    values = np.array([r["sqnr_db"] for r in cell])
                    worst = min(cell, key=lambda r: r["sqnr_db"])
                    cells.append(f"{_db(float(np.median(values)))} / {_db(worst['sqnr_db'])}")
                    if k == bits[0]:
                        worst_at_first = worst["layer"]
                lines.append(f"| {rule} | {grid} | " + " | ".join(cells) + f" | {worst_at_first} |")
        lines.append("")
    return lines


def layer_sqnr_study(model_path, *, progress=False) -> str:
    """The markdown of docs/results.md's per-layer SQNR table for the model file `model_path`."""
    model = sqref.load(model_path)
    rows = layer_sqnr(model, progress=progress)
    name = os.path.basename(os.fspath(model_path))
    layers = weight_layers(model)
    lines = ["Command: `python -m sqref.studies.pretrained layer-sqnr " + name + "`. Weights only, symmetric grid, "
             "round half to even; SQNR = 10 log10(sum w^2 / sum (w - w_hat)^2) of each layer's weight "
             f"({len(layers)} layers, {sum(w.size for _, w, _ in layers):,} weights; biases stay float).", ""]
    return "\n".join(lines + layer_sqnr_tables(rows))


# ----------------------------------------------------------------------------- many views of a few images


def view_models(model, *, ranks=RANKS) -> list[tuple[str, object]]:
    """(label, model) of the compressed models views_study compares with the float one: 8 and
    6 bits per tensor and per channel (dynamic boundary, sqref.qmodel.quantize_model), and SVD
    of the FC layers at each rank (sqref.compress.factor_model) with 8 bits per channel, as
    `sqref quantize` and `sqref compress --rank R --bits 8 --per-channel` make them."""
    out = [(f"{k} bits, {grid}", quantize_model(model, bits=k, per_channel=axis is not None))
           for k in (8, 6) for grid, axis in GRIDS]
    for r in ranks:
        out.append((f"8 bits per channel + SVD of the FC layers, rank {r}",
                    quantize_model(factor_model(model, rank=r)[0], bits=8, per_channel=True)))
    return out


def _logits(model, x, bar=None, done=0) -> np.ndarray:
    parts = []
    for start in range(0, len(x), BATCH):
        parts.append(np.asarray(run(model, x[start:start + BATCH]), np.float64))
        if bar is not None:
            bar.update(done + min(start + BATCH, len(x)))
    return np.concatenate(parts)


def _interval(count: int, n: int) -> str:
    lo, hi = wilson_interval(count, n)
    return f"{100 * count / n:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}%)"


def read_views(data_path, input_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, image) of a .npz written by `sqref data imagenet-20`: inputs, labels, and each
    input's source image (the array ``image``; without it every input is its own image)."""
    x, y = read_numpy(data_path, input_shape)
    if y is None:
        raise ValueError(f"{data_path}: no labels 'y'")
    with np.load(data_path, allow_pickle=False) as archive:
        image = archive["image"].astype(np.int64) if "image" in archive.files else np.arange(len(x))
    if image.shape != (len(x),):
        raise ValueError(f"{data_path}: 'image' has shape {image.shape}, expected ({len(x)},)")
    return x, y, image


def views_study(model_path, data_path, *, ranks=RANKS, progress=False) -> str:
    """The markdown of docs/results.md's many-views table: the float model and view_models'
    models on every input of `data_path`; Wilson intervals over the inputs (module docstring)."""
    model = sqref.load(model_path)
    x, y, image = read_views(data_path, model.input_shape)
    compressed = view_models(model, ranks=ranks)
    n, images = len(x), len(np.unique(image))
    views = n > images  # several views of an image: one more column, images whose views all agree
    bar = Progress(n * (1 + len(compressed)), "views", enabled=progress)
    ref = _logits(model, x, bar)
    ref_top = np.argmax(ref, axis=1)
    if views:
        what = (f"{n} inputs, {n / images:g} views of each of {images} images. Intervals: Wilson's, over the inputs "
                "as if they were independent; views of one image are not, so the intervals are too narrow")
    else:
        what = f"{n} inputs, one per image. Intervals: Wilson's, over the inputs"
    lines = [f"Command: `python -m sqref.studies.pretrained views {os.path.basename(os.fspath(model_path))} "
             f"{os.path.basename(os.fspath(data_path))}`. {what}. Weights quantized with the dynamic boundary, "
             "biases float32.", "",
             "| model | payload ratio | top-1 accuracy (95% interval) | top-1 agreement with float (95% interval) "
             "| top-5 agreement | logit SQNR |" + (" images whose views all agree |" if views else ""),
             "|---|---|---|---|---|---|" + ("---|" if views else ""),
             f"| float | 1x | {_interval(int(np.sum(ref_top == y)), n)} | - | - | - |" + (" - |" if views else "")]
    for i, (label, m) in enumerate(compressed):
        q = _logits(m, x, bar, n * (i + 1))
        fig = logit_agreement(ref, q)
        same = np.argmax(q, axis=1) == ref_top
        sqnr = "-" if fig["logit_sqnr_db"] is None else f"{fig['logit_sqnr_db']:.1f} dB"
        row = (f"| {label} | {sizes(m)['total']['payload_ratio']:.1f}x | "
               f"{_interval(int(np.sum(np.argmax(q, axis=1) == y)), n)} | {_interval(int(np.sum(same)), n)} | "
               f"{100 * fig['top5_agreement']:.1f}% | {sqnr} |")
        if views:
            row += f" {sum(bool(np.all(same[image == j])) for j in np.unique(image))} / {images} |"
        lines.append(row)
    bar.close()
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line

USAGE = ("usage: python -m sqref.studies.pretrained layer-sqnr MODEL.h5\n"
         "       python -m sqref.studies.pretrained views MODEL.h5 VIEWS.npz\n"
         "(MODEL.h5: sqref data efficientnet-lite0 ...; VIEWS.npz: sqref data imagenet-20 --views ten-crop ...)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet = "-q" in argv
    argv = [a for a in argv if a != "-q"]
    if not argv or argv[0] not in ("layer-sqnr", "views") or len(argv) != {"layer-sqnr": 2, "views": 3}[argv[0]]:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if argv[0] == "layer-sqnr":
            text = layer_sqnr_study(argv[1], progress=not quiet)
        else:
            text = views_study(argv[1], argv[2], progress=not quiet)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
