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
    pad          the codes padded with z_x (real 0)
    clip         a clamp of the codes to the quantized bounds (identity when fused)
    add          com.microsoft QLinearAdd (mode "onnxruntime") or TFLite ADD (modes "tflite",
                 "tflite-single"): sqref.integer.qlinear_elementwise.qlinear_add
    global pool  com.microsoft QLinearGlobalAveragePool (mode "onnxruntime" only):
                 sqref.integer.qlinear_pool.qlinear_global_average_pool

Modes are sqref.integer.requant.MODES: "onnxruntime" (default), "onnx-reference",
"tflite", "tflite-single", "fbgemm". A mode fixes the requantization, the
effective multiplier's precision, the input QUANTIZE rounding, the avg-pool
rounding and (fbgemm) the float bias PyTorch adds. Which mode a real backend
configuration computes as is measured, not assumed (docs/integer.md).

Determinism: given the same inputs, mode and accumulation, the outputs are
identical on every machine, BLAS and thread count (sqref.integer.kernels).
"""
from __future__ import annotations

import weakref

import numpy as np

from sqref.integer import requant
from sqref.integer.calibration import ACT_QMAX, ACT_QMIN, Calibration
from sqref.integer.kernels import (avg_pool2d_codes, conv2d_accumulate, conv2d_requant, linear_accumulate,
                                   linear_requant, max_pool2d_codes, requantize_layer)
from sqref.integer.model import (QUANTIZE_MODE, IntAdd, IntAvgPool2d, IntClip, IntConv2d, IntegerModel, IntFlatten,
                                 IntGlobalAvgPool, IntLinear, IntMaxPool2d, IntPad, IntReLU, build_integer_model,
                                 check_accumulate, check_mode, output_shapes)
from sqref.integer.qlinear_elementwise import qlinear_add
from sqref.integer.qlinear_pool import qlinear_global_average_pool
from sqref.model import INPUT, Model, last_reads

# The arithmetic of add and global average pool in each mode: the backend op it models (None: no such op).
ADD_MODE = {"onnxruntime": "onnxruntime", "tflite": "tflite", "tflite-single": "tflite"}
GLOBAL_POOL_MODE = {"onnxruntime": "onnxruntime"}

# run_integer's batches hold the largest layer's int64 accumulator under this many bytes (the results
# do not depend on the batch): 728 LeNet-5 images, 10,699 LeNet-300-100 images, 2 VGG-16 images at 224 x 224
BATCH_BYTES = 64 * 2**20


_LARGEST = weakref.WeakKeyDictionary()  # IntegerModel -> the size of its largest layer output per image


def batch_size(imodel: IntegerModel) -> int:
    """Images per batch of run_integer: BATCH_BYTES over the int64 bytes of the largest layer output of one image
    (the shapes are worked out once per model: that costs more than a small model's whole forward pass)."""
    if imodel not in _LARGEST:
        _LARGEST[imodel] = max(int(np.prod(shape)) for shape in output_shapes(imodel))
    return max(1, BATCH_BYTES // (8 * _LARGEST[imodel]))


def _act(p):
    """An ActParams as the qlinear functions take it: float32 scale, uint8 zero point."""
    return np.float32(p.scale), np.uint8(p.zero_point)


def _mode_of(table, mode, what):
    if table.get(mode) is None:
        raise ValueError(f"mode {mode!r} has no {what}: it runs in modes {sorted(table)}")
    return table[mode]


def apply_layer(layer, q, *more, mode, accumulate="exact"):
    """One integer layer on uint8 codes -> uint8 codes (see the module docstring); an add takes two."""
    if isinstance(layer, IntConv2d):
        depthwise = layer.weight.shape[1] == 1 and layer.weight.shape[0] == layer.groups
        acc_mode = "exact" if (depthwise and mode == "onnxruntime") else accumulate  # ORT's depthwise kernel is exact
        if mode == "onnxruntime" and acc_mode == "exact":
            return conv2d_requant(q, layer)  # the same codes as the two steps below, in one pass per chunk
        acc = conv2d_accumulate(q, layer.weight, x_zero_point=layer.x.zero_point, stride=layer.stride, padding=layer.padding,
                                dilation=layer.dilation, groups=layer.groups, accumulate=acc_mode)
        return requantize_layer(acc, layer, mode=mode)
    if isinstance(layer, IntLinear):
        if mode == "onnxruntime" and accumulate == "exact":
            return linear_requant(q, layer)  # the same codes as the two steps below
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
    if isinstance(layer, IntClip):
        return q if layer.fused else np.clip(q, np.uint8(layer.q_lo), np.uint8(layer.q_hi))
    if isinstance(layer, IntPad):
        top, left, bottom, right = layer.pads
        return np.pad(q, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=np.uint8(layer.x.zero_point))
    if isinstance(layer, IntAdd):
        y = qlinear_add(q, *_act(layer.a), more[0], *_act(layer.b), *_act(layer.y),
                        mode=_mode_of(ADD_MODE, mode, "add"))
        return np.maximum(y, np.uint8(layer.y.zero_point)) if layer.relu else y
    if isinstance(layer, IntGlobalAvgPool):
        y = qlinear_global_average_pool(q, *_act(layer.x), *_act(layer.y),
                                        mode=_mode_of(GLOBAL_POOL_MODE, mode, "global average pool"))
        return y if layer.keepdims else y.reshape(y.shape[:2])
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
    if mode == "onnxruntime":  # the same codes in fewer passes
        return requant.quantize_onnxruntime_uint8(x, p.scale, p.zero_point, qmin=ACT_QMIN, qmax=ACT_QMAX)
    q = requant.quantize_linear(x, p.scale, p.zero_point, qmin=ACT_QMIN, qmax=ACT_QMAX, mode=QUANTIZE_MODE[mode])
    return q.astype(np.uint8)


def run_integer(imodel: IntegerModel, x, *, mode=None, return_intermediates=False, accumulate="exact",
                progress=None):
    """Integer-only inference, as onnxruntime / TFLite / PyTorch run a quantized model (by ``mode``).

    Shapes: x (N, *input_shape), float images or uint8 input codes -> logits (N, classes).
    Dtypes: logits float32 = s_y * (q - z_y) of the last layer's codes; with
    ``return_intermediates`` also a list of every layer's uint8 codes (model.names order).
    ``mode``: None = imodel.mode; ``accumulate``: "exact" or "int16-pairs" (onnxruntime and
    fbgemm modes only; see the module docstring), or {layer name: one of them} per layer
    (sqref.backends.probe.resolve_layer_accumulate; absent layers are exact). Images are
    processed batch_size(imodel) at a time; the result does not depend on it, on the BLAS or on its threads. ``progress``: None, or
    a callable given the number of images done after each batch.
    """
    mode = check_mode(imodel.mode if mode is None else mode)
    check_accumulate(accumulate, mode)
    q_in = quantize_input(imodel, x, mode=mode)
    per_layer = [[] for _ in imodel.layers]
    last = last_reads(imodel)
    batch = batch_size(imodel)
    for start in range(0, len(q_in), batch):
        env = {INPUT: q_in[start:start + batch]}
        for index, (name, layer, reads) in enumerate(zip(imodel.names, imodel.layers, imodel.wiring)):
            try:
                acc = accumulate.get(name, "exact") if isinstance(accumulate, dict) else accumulate
                env[name] = apply_layer(layer, *(env[r] for r in reads), mode=mode, accumulate=acc)
            except ValueError as exc:
                raise ValueError(f"layer {name!r} ({layer.kind}): {exc}") from None
            if return_intermediates or index == len(imodel.layers) - 1:
                per_layer[index].append(env[name])
            for r in set(reads):
                if last.get(r, -1) <= index:
                    del env[r]
        if progress is not None:
            progress(min(start + batch, len(q_in)))
    outputs = [np.concatenate(parts) if parts else np.zeros((0,), np.uint8) for parts in per_layer]  # [] unless kept
    out = imodel.layers[-1].y
    logits = requant.dequantize_linear(outputs[-1], out.scale, out.zero_point)
    return (logits, outputs) if return_intermediates else logits


def run_model_integer(qmodel: Model, x, *, calibration: Calibration, mode="onnxruntime", accumulate="exact",
                      return_intermediates=False):
    """``sqref.run`` for the integer path: build the IntegerModel of ``qmodel`` and its
    ``calibration`` (sqref.integer.calibration.calibrate) and run it on ``x``."""
    imodel = build_integer_model(qmodel, calibration, mode=mode)
    return run_integer(imodel, x, mode=mode, return_intermediates=return_intermediates, accumulate=accumulate)
