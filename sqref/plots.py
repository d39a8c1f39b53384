"""Figures for the notebooks and the command line: small pure functions, each
returning a matplotlib Figure.

    weight_histograms   float weights of each quantized layer, with +-alpha and the code grid
    layer_errors        per-layer SQNR (dB) or MSE of one or more quantized models
    mse_vs_alpha        quantization MSE as a function of alpha / max|w|, per bit width,
                        the dynamic boundary and the other rules' boundaries marked
    accuracy_curves     accuracy against the payload compression ratio, one line per label

Conventions:
* matplotlib is imported inside the functions (it is an optional dependency:
  `pip install -e ".[notebooks]"`), and figures are built with
  `matplotlib.figure.Figure`, not pyplot: no global state, nothing to close, safe
  in a CLI or a thread. In a notebook, display the returned figure (the last
  expression of a cell, or `display(fig)`).
* `path=` saves a PNG at DPI (120): `Figure.savefig` renders it with the Agg
  backend whatever the interactive backend is.
* Sizes are chosen to stay readable at about 800 px wide.
* Nothing here computes anything the rest of sqref does not: the numbers come
  from sqref.quant, sqref.clipping and the models' own arrays.
"""
from __future__ import annotations

import math
import os

import numpy as np

from sqref import clipping, quant
from sqref.model import PARAM_LAYERS

DPI = 120
WIDTH = 8.0  # inches: 960 px at DPI
MAX_GRID_EDGES = 64  # draw a grid's decision edges only when there are at most this many


def _figure(nrows=1, ncols=1, *, height=None, width=WIDTH):
    """A constrained-layout Figure and a flat list of its axes (no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height if height is not None else 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def _finish(fig, path):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=DPI, format="png")
    return fig


def _param_layers(model):
    """(name, layer) for every Conv2d/Linear layer."""
    return [(n, layer) for n, layer in zip(model.names, model.layers) if isinstance(layer, PARAM_LAYERS)]


def _float_weight(float_model, name):
    by_name = dict(zip(float_model.names, float_model.layers))
    if name not in by_name:
        raise ValueError(f"quantized layer {name!r} has no layer of that name in the float model "
                         f"(layers: {', '.join(float_model.names)}); pass the float model the quantized one "
                         f"was made from (after SVD, the factored float model)")
    return np.asarray(by_name[name].weight, np.float64)


def _quantized_layers(model):
    layers = [(n, layer) for n, layer in _param_layers(model) if layer.quant is not None]
    if not layers:
        raise ValueError("the model has no quantized layer (run sqref.qmodel.quantize_model first)")
    return layers


def _clip_range(q):
    """The representable interval [lo, hi] of a LayerQuant's grid, per channel (arrays) or per tensor."""
    s = np.asarray(q.scale, np.float64)
    z = np.asarray(q.zero_point, np.float64)
    if q.scheme == "symmetric":
        qmin, qmax = -(2 ** (q.bits - 1) - 1), 2 ** (q.bits - 1) - 1
    else:
        qmin, qmax = 0, 2**q.bits - 1
    return s * (qmin - z), s * (qmax - z), qmin, qmax


# ----------------------------------------------------------------------------- weight histograms
def weight_histograms(float_model, quantized_model, *, path=None, bins=120, ncols=2):
    """One panel per quantized layer: the histogram of its float weights (log
    counts, so the clipped tails stay visible), vertical lines at +-alpha
    (`layer.quant.alpha`) and, faintly, the edges between the grid's codes
    (the rounding thresholds s * (q - z + 1/2)) when there are at most 64 of them.

    Per channel (alpha a vector), the band between the smallest and the largest
    channel boundary is shaded instead. For the asymmetric grid the lines are
    its representable range [s (0 - z), s (2**k - 1 - z)].
    `float_model` must have the quantized layers' names (after SVD, pass the
    factored float model). Returns the Figure.
    """
    layers = _quantized_layers(quantized_model)
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = _figure(nrows, ncols, height=3.0 * nrows + 0.4)
    for ax, (name, layer) in zip(axes, layers):
        w = _float_weight(float_model, name).ravel()
        q = layer.quant
        amax = float(np.max(np.abs(w)))
        ax.hist(w, bins=bins, range=(-amax, amax), color="C0", alpha=0.8, label="float weights")
        ax.set_yscale("log")
        lo, hi, qmin, qmax = _clip_range(q)
        alpha = np.asarray(q.alpha, np.float64)
        per_channel = np.ndim(lo) > 0
        if per_channel:
            ax.axvspan(-float(np.max(alpha)), -float(np.min(alpha)), color="C3", alpha=0.15,
                       label="channel boundaries")
            ax.axvspan(float(np.min(alpha)), float(np.max(alpha)), color="C3", alpha=0.15)
            ratio = f"alpha/max|w| {np.min(alpha) / amax:.2f}..{np.max(alpha) / amax:.2f}"
        else:
            if q.scheme == "symmetric":
                left, right, tag = -float(alpha), float(alpha), "±alpha"
            else:
                left, right, tag = float(lo), float(hi), "grid range"
            edges = float(q.scale) * (np.arange(qmin, qmax) - float(q.zero_point) + 0.5)
            if edges.size <= MAX_GRID_EDGES:
                for i, e in enumerate(edges):
                    ax.axvline(e, color="0.45", linewidth=0.6, alpha=0.5,
                               label="code edges" if i == 0 else None)
            ax.axvline(left, color="C3", linestyle="--", linewidth=1.6, label=tag)
            ax.axvline(right, color="C3", linestyle="--", linewidth=1.6)
            ratio = f"alpha/max|w| = {float(alpha) / amax:.2f}"
        ax.set_title(f"{name}: {q.bits}-bit, {q.rule} ({ratio})", fontsize=10)
        ax.set_xlabel("weight value")
        ax.set_ylabel("count (log)")
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    # One legend for the figure, below the panels: inside a panel it would hide a boundary line.
    handles = {}
    for ax in axes[:len(layers)]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=9)
    fig.suptitle("Float weights of each quantized layer and the clipping boundary", fontsize=12)
    return _finish(fig, path)


# ----------------------------------------------------------------------------- per-layer errors
def _layer_error(w, w_hat, metric):
    err = float(np.sum((w - w_hat) ** 2))
    if metric == "mse":
        return err / w.size
    return 10 * math.log10(float(np.sum(w**2)) / err) if err > 0 else math.inf


def layer_errors(float_model, quantized_model, *, metric="sqnr_db", path=None):
    """Per-layer bar chart of the weight quantization error.

    `quantized_model`: one model, or a dict {label: model} for grouped bars
    (e.g. {"max": ..., "dynamic": ...}). `metric`: "sqnr_db" (signal to
    quantization noise ratio, 10 log10(sum w**2 / sum (w - w_hat)**2), higher is
    better) or "mse" (mean (w - w_hat)**2, lower is better; log scale).
    Each bar carries its value. Returns the Figure.
    """
    if metric not in ("sqnr_db", "mse"):
        raise ValueError(f"metric must be 'sqnr_db' or 'mse', got {metric!r}")
    models = quantized_model if isinstance(quantized_model, dict) else {"quantized": quantized_model}
    if not models:
        raise ValueError("no quantized model given")
    names = [n for n, _ in _quantized_layers(next(iter(models.values())))]
    values = {}
    for label, model in models.items():
        by_name = dict(_quantized_layers(model))
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"model {label!r} has no quantized layer named {', '.join(missing)}")
        values[label] = [_layer_error(_float_weight(float_model, n), np.asarray(by_name[n].weight, np.float64),
                                      metric) for n in names]
    fig, (ax,) = _figure(height=4.2)
    width = 0.8 / len(models)
    x = np.arange(len(names))
    for i, (label, vals) in enumerate(values.items()):
        finite = [v if math.isfinite(v) else 0.0 for v in vals]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, finite, width, label=label, color=f"C{i}")
        text = [("inf" if not math.isfinite(v) else f"{v:.1f}" if metric == "sqnr_db" else f"{v:.2g}") for v in vals]
        ax.bar_label(bars, labels=text, fontsize=8, padding=2)
    ax.set_xticks(x, names)
    ax.set_xlabel("layer")
    if metric == "mse":
        ax.set_yscale("log")
        ax.set_ylabel("weight MSE (log; lower is better)")
        ax.set_title("Weight quantization error per layer (MSE)")
    else:
        ax.set_ylabel("weight SQNR in dB (higher is better)")
        ax.set_title("Weight quantization error per layer (SQNR)")
        ax.margins(y=0.12)
    if len(models) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return _finish(fig, path)


# ----------------------------------------------------------------------------- MSE against alpha
RULE_MARKERS = {"max": "s", "percentile": "^", "sigma": "v", "aciq-gauss": "D", "aciq-laplace": "P", "kl": "X", "kl-slides": "x"}


def mse_vs_alpha(w, bits_list, *, rules=("max", "percentile", "sigma", "aciq-gauss", "aciq-laplace", "kl"),
                 points=100, lo=0.02, rounding="half_even", path=None, title=None):
    """MSE of quantizing `w` (symmetric grid, per tensor) against alpha / max|w|, one curve per bit width.

    Each curve is quant_mse(w, alpha, k) on `points` values of alpha / max|w|
    in [lo, 1] (log MSE axis: it spans orders of magnitude across k). The
    dynamic boundary (clipping.boundary_dynamic) is a filled circle on its
    curve; the other `rules`' boundaries are drawn with one marker shape per
    rule, on the curve of their bit width. The dynamic point is never above
    any of them (its guarantee). Returns the Figure.
    """
    from matplotlib.lines import Line2D


    w = quant.check_weights(w)
    amax = float(np.max(np.abs(w)))
    if amax == 0:
        raise ValueError("w is all zero: every boundary gives zero error")
    unknown = [r for r in rules if r not in RULE_MARKERS]
    if unknown:
        raise ValueError(f"unknown rules {unknown}; choose from {tuple(RULE_MARKERS)}")
    if not 0 < lo < 1:
        raise ValueError(f"lo must be in (0, 1), got {lo!r}")
    grid = np.linspace(lo, 1.0, points)
    fig, (ax,) = _figure(height=5.0)
    for i, k in enumerate(bits_list):
        color = f"C{i % 10}"
        mse = [quant.quant_mse(w, alpha=g * amax, bits=k, rounding=rounding) for g in grid]
        ax.plot(grid, mse, color=color, linewidth=1.4, label=f"{k} bits")
        a_star = clipping.boundary_dynamic(w, k, rounding=rounding)
        ax.plot([a_star / amax], [quant.quant_mse(w, alpha=a_star, bits=k, rounding=rounding)], "o", color=color,
                markersize=8, markeredgecolor="black", zorder=5)
        for rule in rules:
            a = clipping.boundary(w, k, rule=rule)
            ax.plot([a / amax], [quant.quant_mse(w, alpha=a, bits=k, rounding=rounding)], RULE_MARKERS[rule],
                    color=color, markersize=6, markeredgecolor="black", markeredgewidth=0.5, alpha=0.85, zorder=4)
    ax.set_yscale("log")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("clipping boundary alpha / max|w|")
    ax.set_ylabel("quantization MSE (log)")
    ax.set_title(title or f"MSE of k-bit quantization against the clipping boundary ({w.size:,} weights)")
    # Both legends outside the axes, on the right: the curves fill the whole plot.
    bits_legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="bit width",
                            title_fontsize=8)
    ax.add_artist(bits_legend)
    handles = [Line2D([], [], marker="o", linestyle="", color="0.5", markeredgecolor="black", markersize=8,
                      label="dynamic (optimum)")]
    handles += [Line2D([], [], marker=RULE_MARKERS[r], linestyle="", color="0.5", markeredgecolor="black",
                       label=r) for r in rules]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8, title="boundary rule",
              title_fontsize=8)
    return _finish(fig, path)


# ----------------------------------------------------------------------------- accuracy curves
def accuracy_curves(rows, *, path=None, baseline=None, styles=None, title=None, annotate=True, ylim=None):
    """Accuracy (%) against the payload compression ratio, one line per label.

    `rows`: dicts {"label", "ratio", "accuracy"} with accuracy a fraction in
    [0, 1] and ratio = original bytes / payload bytes (sqref.accounting.sizes);
    an optional "note" is written beside the point (e.g. "r64"). Points of a
    label are joined in order of ratio. `baseline`: the float model's accuracy
    (a fraction), drawn as a horizontal line. `styles`: {label: matplotlib
    keyword arguments} (color, linestyle, marker...). `ylim`: (low, high) in
    percent, to zoom on the accurate end when one point collapsed. The ratio
    axis is logarithmic. Returns the Figure.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = list(rows)
    if not rows:
        raise ValueError("no rows to plot")
    for r in rows:
        missing = {"label", "ratio", "accuracy"} - set(r)
        if missing:
            raise ValueError(f"row {r!r} lacks {', '.join(sorted(missing))}")
        if not 0 <= r["accuracy"] <= 1:
            raise ValueError(f"accuracy must be a fraction in [0, 1], got {r['accuracy']!r} in row {r!r}")
        if not r["ratio"] > 0:
            raise ValueError(f"ratio must be > 0, got {r['ratio']!r} in row {r!r}")
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, (ax,) = _figure(height=4.8)
    for i, label in enumerate(labels):
        pts = sorted((r for r in rows if r["label"] == label), key=lambda r: r["ratio"])
        style = {"color": f"C{i % 10}", "marker": "o", "linewidth": 1.5, "markersize": 5}
        style.update((styles or {}).get(label, {}))
        ax.plot([r["ratio"] for r in pts], [100 * r["accuracy"] for r in pts], label=label, **style)
        if annotate:
            for r in pts:
                if r.get("note"):
                    ax.annotate(str(r["note"]), (r["ratio"], 100 * r["accuracy"]), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color=style["color"])
    if baseline is not None:
        ax.axhline(100 * baseline, color="black", linestyle=":", linewidth=1.2,
                   label=f"float model ({100 * baseline:.1f}%)")
    ax.set_xscale("log")
    ratios = [r["ratio"] for r in rows]
    narrow = math.log10(max(ratios) / min(ratios)) < 1.3  # about a decade: label 1..9 of each decade
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=tuple(range(1, 10)) if narrow else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("payload compression ratio (original bytes / payload bytes, log scale)")
    ax.set_ylabel("accuracy (%)")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title or "Accuracy against compression")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, path)
