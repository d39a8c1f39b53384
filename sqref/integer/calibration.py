"""Activation quantization parameters and calibration for the integer path.

Every activation tensor of the integer path is uint8 with a per-tensor scale
and zero point (``ActParams``). ``calibrate`` runs the float model on
calibration images (the train split) and chooses each tensor's range with a
rule from ``CALIBRATION_RULES``; sqref.integer builds the integer model
from the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sqref import clipping, quant
from sqref.model import Model, run, tensor_shapes

ACT_QMIN, ACT_QMAX = 0, 255  # activations: uint8 codes
CALIBRATION_RULES = ("max", "percentile", "kl", "mse")


@dataclass(frozen=True)
class ActParams:
    """8-bit asymmetric quantization of one activation tensor: r = scale * (q - zero_point), q in [0, 255].

    scale       a float32 value (held as a Python float), > 0
    zero_point  int in [0, 255]: the code of real 0
    lo, hi      the calibrated range it was built from (float64; a record)
    """

    scale: float
    zero_point: int
    lo: float = 0.0
    hi: float = 0.0

    def __post_init__(self):
        s = float(self.scale)
        if not (np.isfinite(s) and s > 0 and float(np.float32(s)) == s):
            raise ValueError(f"activation scale must be a finite float32 value > 0, got {self.scale!r}")
        if isinstance(self.zero_point, bool) or not isinstance(self.zero_point, (int, np.integer)) \
                or not ACT_QMIN <= self.zero_point <= ACT_QMAX:
            raise ValueError(f"activation zero point must be an int in [0, 255], got {self.zero_point!r}")
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "zero_point", int(self.zero_point))


def act_params(lo, hi) -> ActParams:
    """The uint8 grid of a range, as ONNX/onnxruntime static quantization builds it.

    Formula (sqref.quant.grid_params, asymmetric, 8 bits): lo <- min(lo, 0), hi <- max(hi, 0);
    s = float32((hi - lo) / 255); z = clamp(round_half_even(-lo / s), 0, 255).
    A range of width 0 (an all-zero tensor) gives s = 1.0, z = 0.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range must be finite, got [{lo}, {hi}]")
    scale, zero_point, _, _ = quant.grid_params(bits=8, scheme="asymmetric", lo=lo, hi=hi)
    return ActParams(float(scale), int(zero_point), lo, hi)


def activation_range(values, *, rule="max", p=clipping.PERCENTILE_P):
    """The [lo, hi] an activation tensor is quantized over, by calibration rule.

    Every rule picks a boundary alpha on |x| and clips the tensor's range to
    it, as sqref.quant does for asymmetric weights:
    ``lo = max(min(x, 0), -alpha)``, ``hi = min(max(x, 0), alpha)``.
      max         alpha = max|x|: no clipping.
      percentile  alpha = the p-th percentile of |x| (clipping.boundary_percentile,
                  p = 99.99); on a ReLU output that is the plain percentile of x.
      kl          alpha = the entropy threshold on |x| as NVIDIA's calibrator computes
                  it (clipping.boundary_kl: the zero spike removed, bins[0] = bins[1],
                  so a ReLU output keeps its range; 2048 bins, 128 target levels:
                  TensorRT's int8 setting, kept although the uint8 grid has 256
                  levels). The slides' variant (clipping.boundary_kl_slides, spike
                  kept) collapses on ReLU outputs and is not offered here.
      mse         alpha minimising sum (x - Q(x))**2 where Q is THIS uint8 grid
                  (act_params(lo, hi) then quantize/dequantize), not the
                  symmetric weight grid of clipping.boundary_dynamic; see mse_alpha.
    A ReLU output has min(x) = 0, hence lo = 0 and zero point 0 under every rule.
    Shapes: values any shape (flattened). Returns (lo, hi) as floats.
    """
    x = np.asarray(values).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot calibrate an empty activation tensor")
    if not np.isfinite(x).all():
        raise ValueError(f"activation contains NaN or Inf ({int(np.sum(~np.isfinite(x)))} values)")
    x_min, x_max = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    amax = max(-x_min, x_max)
    if rule == "max" or amax == 0:
        return x_min, x_max
    if rule == "percentile":
        alpha = clipping.boundary_percentile(x.astype(np.float64), 8, p=p)
    elif rule == "kl":
        alpha = clipping.boundary_kl(x.astype(np.float64), 8)
    elif rule == "mse":
        alpha = mse_alpha(x)
    else:
        raise ValueError(f"calibration rule must be one of {CALIBRATION_RULES}, got {rule!r}")
    return max(x_min, -alpha), min(x_max, alpha)


def grid_sse(a, cum1, cum2, alpha):
    """sum (x - Q(x))**2 over sorted x for the uint8 grid of the range clipped at alpha.

    Level j (code j) holds the x whose code rounds to j: boundaries at
    s * (j - z + 0.5); each level adds S2 - 2 v S1 + v**2 n over its slice of
    the sorted array (v = s * (j - z), S1/S2 from prefix sums). A value on a
    boundary has the same error on either side, so ties do not matter.
    """
    p = act_params(max(float(a[0]), -alpha), min(float(a[-1]), alpha))
    s, z = p.scale, p.zero_point
    levels = np.arange(ACT_QMAX + 1)
    cuts = np.searchsorted(a, s * (levels[:-1] - z + 0.5))
    lo = np.concatenate([[0], cuts])
    hi = np.concatenate([cuts, [a.size]])
    v = s * (levels - z)
    return float(np.sum((cum2[hi] - cum2[lo]) - 2.0 * v * (cum1[hi] - cum1[lo]) + v * v * (hi - lo)))


def mse_alpha(x):
    """alpha in (0, max|x|] minimising grid_sse: 256 evenly spaced boundaries, then
    4 refinements of 33 points between the best one's neighbours (step / 16 each)."""
    a = np.sort(x.astype(np.float64))
    cum1, cum2 = np.zeros(a.size + 1), np.zeros(a.size + 1)
    np.cumsum(a, out=cum1[1:])
    np.cumsum(a * a, out=cum2[1:])
    amax = max(-float(a[0]), float(a[-1]))
    alphas = amax * np.arange(1, 257) / 256.0
    for _ in range(5):
        sse = [grid_sse(a, cum1, cum2, al) for al in alphas]
        best = int(np.argmin(sse))
        lo, hi = alphas[max(best - 1, 0)], alphas[min(best + 1, alphas.size - 1)]
        best_alpha = float(alphas[best])
        alphas = np.linspace(lo, hi, 33)
    return best_alpha


@dataclass(frozen=True)
class Calibration:
    """Activation parameters of a model: its input and every layer's output (model.names order).

    rule    the calibration rule (CALIBRATION_RULES); the logits always use "max"
            unless calibrate(clip_logits=True) (docs/method.md: never clip the logits)
    images  how many images were seen
    """

    input: ActParams
    outputs: tuple
    names: tuple
    rule: str
    images: int


CALIBRATION_BATCH_BYTES = 1 << 28  # the float64 tensors of one calibration batch stay near this (256 MiB)


def calibration_batch(model: Model, limit=500) -> int:
    """Images per calibration batch: at most `limit`, and few enough that one batch's float64
    tensors (every layer's output is held while the batch runs) take about CALIBRATION_BATCH_BYTES.
    LeNet-5: 500; EfficientNet-Lite0 at 224 x 224 (about 15.5M values, 124 MB per image): 2."""
    per_image = 8 * sum(int(np.prod(s)) for s in tensor_shapes(model).values())
    return int(max(1, min(limit, CALIBRATION_BATCH_BYTES // max(per_image, 1))))


def calibrate(model: Model, x, *, rule="max", p=clipping.PERCENTILE_P, clip_logits=False, batch_size=None):
    """Activation quantization parameters from the float forward pass of ``model`` on ``x``.

    Matches onnxruntime's static calibration (MinMax, Percentile, Entropy)
    in spirit: run the model, gather each tensor's values, pick a range
    (activation_range), make a uint8 grid (act_params).
    Pass the WEIGHT-QUANTIZED model (its activations are what the integer
    path sees) and the TRAIN split (``sqref.data.load_split(split="train")``).
    The forward pass runs in float64: in float32 the BLAS's blocking, hence
    its thread count, moves a tensor's max by an ulp and with it a float32
    scale (measured on LeNet-5: conv2's scale differs between 1 and 2
    OpenBLAS threads); in float64 the range would have to sit within ~1e-16
    of a float32 rounding boundary of the scale to flip it.
    batch_size: images per forward pass; None = calibration_batch(model), which bounds the
    memory of one batch (the result does not depend on it: ranges are min/max over batches).
    Shapes: x (N, *model.input_shape) float. Returns a Calibration with one
    ActParams for the input and one per layer (a ReLU's output: lo = 0, z = 0).
    "max" streams min/max; the other rules hold every value of a tensor
    (LeNet-5 on 3,500 images: about 70M floats across its layers).
    """
    if rule not in CALIBRATION_RULES:
        raise ValueError(f"calibration rule must be one of {CALIBRATION_RULES}, got {rule!r}")
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"calibration images must be float, got dtype {x.dtype}")
    if x.ndim != len(model.input_shape) + 1 or tuple(x.shape[1:]) != tuple(model.input_shape) or not len(x):
        raise ValueError(f"calibration images have shape {x.shape}; the model takes (N, {model.input_shape})")
    n_tensors = 1 + len(model.layers)
    names = ("input",) + tuple(model.names)
    lo, hi = np.zeros(n_tensors), np.zeros(n_tensors)
    held = [[] for _ in range(n_tensors)]
    batch_size = calibration_batch(model) if batch_size is None else int(batch_size)
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].astype(np.float64)
        _, inter = run(model, xb, return_intermediates=True)
        for t, a in enumerate([xb, *inter.values()]):
            if not np.isfinite(a).all():
                raise ValueError(f"calibration: the output of {names[t]!r} contains NaN or Inf")
            lo[t], hi[t] = min(lo[t], float(a.min())), max(hi[t], float(a.max()))
            if rule != "max":
                held[t].append(np.asarray(a, np.float32).reshape(-1))
    params = []
    for t in range(n_tensors):
        t_rule = "max" if (t == n_tensors - 1 and not clip_logits) else rule
        if t_rule == "max":
            params.append(act_params(lo[t], hi[t]))
        else:
            params.append(act_params(*activation_range(np.concatenate(held[t]), rule=t_rule, p=p)))
            held[t] = None
    return Calibration(params[0], tuple(params[1:]), tuple(model.names), rule, int(len(x)))


