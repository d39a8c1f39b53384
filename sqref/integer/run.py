"""Running an IntegerModel: integer-only inference, as onnxruntime / TFLite / PyTorch run
a quantized model (docs/integer.md).

    activations  uint8 codes q, real value r = s * (q - z)  (per tensor, asymmetric)
    weights      the layer's k-bit codes in int8 (symmetric, z = 0), per tensor or per channel
    bias         int32 on the accumulator's grid, scale s_x * s_w, zero point 0
    conv/linear  acc = sum (x - z_x) * w + bias               (exact integers)
                 y = clamp(requant(acc) + z_y, lo, 255)       (sqref.integer.requant, one mode per backend)
                 lo = z_y when a ReLU follows (the ReLU is fused as a clamp at z_y), else 0
    max pool     directly on the codes (max commutes with the monotone quantization)
    avg pool     rounded as the mode's backend rounds it (kernels.avg_pool2d_codes)
    flatten      a reshape of the codes

Modes are sqref.integer.requant.MODES: "onnxruntime" (default), "onnx-reference",
"tflite", "tflite-single", "fbgemm". A mode fixes the requantization, the
effective multiplier's precision, the input QUANTIZE rounding, the avg-pool
rounding and (fbgemm) the float bias PyTorch adds. Which mode a real backend
configuration computes as is measured, not assumed (docs/integer.md).

Determinism: given the same inputs, mode and accumulation, the outputs are
identical on every machine, BLAS and thread count (sqref.integer.kernels).
"""
from __future__ import annotations

import numpy as np

from sqref.integer import requant
from sqref.integer.calibration import ACT_QMAX, ACT_QMIN, Calibration
from sqref.integer.kernels import (avg_pool2d_codes, conv2d_accumulate, linear_accumulate, max_pool2d_codes,
                                   requantize_layer)
from sqref.integer.model import (QUANTIZE_MODE, IntAvgPool2d, IntConv2d, IntegerModel, IntFlatten, IntLinear,
                                 IntMaxPool2d, IntReLU, build_integer_model, check_accumulate, check_mode)
from sqref.model import Model

BATCH = 250  # run_integer processes this many images at a time (results do not depend on it)


def apply_layer(layer, q, *, mode, accumulate="exact"):
    """One integer layer on uint8 codes -> uint8 codes (see the module docstring)."""
    if isinstance(layer, IntConv2d):
        depthwise = layer.weight.shape[1] == 1 and layer.weight.shape[0] == layer.groups
        acc_mode = "exact" if (depthwise and mode == "onnxruntime") else accumulate  # ORT's depthwise kernel is exact
        acc = conv2d_accumulate(q, layer.weight, x_zero_point=layer.x.zero_point, stride=layer.stride, padding=layer.padding,
                                dilation=layer.dilation, groups=layer.groups, accumulate=acc_mode)
        return requantize_layer(acc, layer, mode=mode)
    if isinstance(layer, IntLinear):
        return requantize_layer(linear_accumulate(q, layer.weight, x_zero_point=layer.x.zero_point, accumulate=accumulate),
                                layer, mode=mode)
    if isinstance(layer, IntMaxPool2d):
        return max_pool2d_codes(q, kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if isinstance(layer, IntAvgPool2d):
        return avg_pool2d_codes(q, kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding, x=layer.x, y=layer.y, mode=mode)
    if isinstance(layer, IntFlatten):
        return q.reshape(q.shape[0], -1)
    if isinstance(layer, IntReLU):
        return q if layer.fused else np.maximum(q, np.uint8(layer.x.zero_point))
    raise TypeError(f"unknown integer layer {type(layer).__name__}")


def quantize_input(imodel: IntegerModel, x, *, mode=None):
    """The model input as uint8 codes: uint8 input is taken as codes; float input is
    quantized with the mode's QUANTIZE (sqref.integer.requant.quantize_linear, QUANTIZE_MODE)."""
    mode = check_mode(imodel.mode if mode is None else mode)
    x = np.asarray(x)
    if x.ndim != len(imodel.input_shape) + 1 or tuple(x.shape[1:]) != tuple(imodel.input_shape):
        raise ValueError(f"input shape {x.shape} does not match the model's (N, {', '.join(map(str, imodel.input_shape))})")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind != "f":
        raise TypeError(f"input must be float images or uint8 codes, got dtype {x.dtype}")
    p = imodel.input
    q = requant.quantize_linear(x, p.scale, p.zero_point, qmin=ACT_QMIN, qmax=ACT_QMAX, mode=QUANTIZE_MODE[mode])
    return q.astype(np.uint8)


def run_integer(imodel: IntegerModel, x, *, mode=None, return_intermediates=False, accumulate="exact",
                progress=None):
    """Integer-only inference, as onnxruntime / TFLite / PyTorch run a quantized model (by ``mode``).

    Shapes: x (N, *input_shape), float images or uint8 input codes -> logits (N, classes).
    Dtypes: logits float32 = s_y * (q - z_y) of the last layer's codes; with
    ``return_intermediates`` also a list of every layer's uint8 codes (model.names order).
    ``mode``: None = imodel.mode; ``accumulate``: "exact" or "int16-pairs" (onnxruntime and
    fbgemm modes only; see the module docstring). Images are processed BATCH at a time;
    the result does not depend on it, on the BLAS or on its threads. ``progress``: None, or
    a callable given the number of images done after each batch.
    """
    mode = check_mode(imodel.mode if mode is None else mode)
    check_accumulate(accumulate, mode)
    q_in = quantize_input(imodel, x, mode=mode)
    per_layer = [[] for _ in imodel.layers]
    for start in range(0, len(q_in), BATCH):
        q = q_in[start:start + BATCH]
        for index, (name, layer) in enumerate(zip(imodel.names, imodel.layers)):
            try:
                q = apply_layer(layer, q, mode=mode, accumulate=accumulate)
            except ValueError as exc:
                raise ValueError(f"layer {name!r} ({layer.kind}): {exc}") from None
            per_layer[index].append(q)
        if progress is not None:
            progress(min(start + BATCH, len(q_in)))
    outputs = [np.concatenate(parts) if parts else np.zeros((0,), np.uint8) for parts in per_layer]
    last = imodel.layers[-1].y
    logits = requant.dequantize_linear(outputs[-1], last.scale, last.zero_point)
    return (logits, outputs) if return_intermediates else logits


def run_model_integer(qmodel: Model, x, *, calibration: Calibration, mode="onnxruntime", accumulate="exact",
                      return_intermediates=False):
    """``sqref.run`` for the integer path: build the IntegerModel of ``qmodel`` and its
    ``calibration`` (sqref.integer.calibration.calibrate) and run it on ``x``."""
    imodel = build_integer_model(qmodel, calibration, mode=mode)
    return run_integer(imodel, x, mode=mode, return_intermediates=return_intermediates, accumulate=accumulate)
