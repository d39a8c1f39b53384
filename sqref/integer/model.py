"""The integer model: every tensor an integer, every parameter explicit.

A weight-quantized sqref model (sqref.qmodel) plus 8-bit activation
parameters from calibration (sqref.integer.calibration) become an
``IntegerModel``: a tuple of small frozen dataclasses (IntConv2d, IntLinear,
IntMaxPool2d, IntAvgPool2d, IntFlatten, IntReLU) holding int8 weight codes,
float32 weight scales, int32 biases and uint8 activation parameters. The
kernels that run them are in sqref.integer.kernels, the loop that runs a
model in sqref.integer.run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sqref.integer import requant
from sqref.integer.calibration import ActParams, Calibration
from sqref.model import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU, infer_shapes
from sqref.ops import output_size

ACCUMULATE = ("exact", "int16-pairs")
BIAS_LIMIT = 2**31 - 1  # int32 biases are saturated to [-BIAS_LIMIT, BIAS_LIMIT]

# The QUANTIZE op (float input -> codes) of each mode's backend (sqref.integer.requant.quantize_linear).
QUANTIZE_MODE = {"onnxruntime": "onnxruntime", "onnx-reference": "onnx-reference", "tflite": "tflite",
                 "tflite-single": "tflite", "fbgemm": "fbgemm"}


def check_mode(mode):
    if mode not in requant.MODES:
        raise ValueError(f"mode must be one of {requant.MODES}, got {mode!r}")
    return mode


def check_accumulate(accumulate, mode):
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
    if accumulate == "int16-pairs" and mode not in ("onnxruntime", "fbgemm"):
        raise ValueError(f"accumulate='int16-pairs' models onnxruntime's and FBGEMM's u8 x s8 kernels; "
                         f"it does not apply to mode {mode!r}")
    return accumulate


# ----------------------------------------------------------------- the integer model


@dataclass(frozen=True, eq=False)
class IntConv2d:
    """Integer conv, as ONNX QLinearConv / TFLite CONV_2D int8.

    weight      int8 codes (K, C/groups, KH, KW), symmetric (zero point 0)
    w_scale     float32, () per tensor or (K,) per output channel
    bias        int32 (K,), scale x.scale * w_scale, zero point 0
    bias_float  float32 (K,): the float bias (mode "fbgemm" adds it in float, as PyTorch)
    x, y        input and output ActParams; relu: clamp at y.zero_point (a fused ReLU)
    """

    weight: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray
    bias_float: np.ndarray
    x: ActParams
    y: ActParams
    relu: bool = False
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    kind = "conv2d"


@dataclass(frozen=True, eq=False)
class IntLinear:
    """Integer linear, as ONNX QLinearMatMul (+ the bias) / TFLite FULLY_CONNECTED int8.
    weight int8 (OUT, IN); the other fields as IntConv2d."""

    weight: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray
    bias_float: np.ndarray
    x: ActParams
    y: ActParams
    relu: bool = False
    kind = "linear"


@dataclass(frozen=True)
class IntMaxPool2d:
    """Max pooling on the codes; output parameters = input parameters."""

    kernel_size: tuple
    stride: tuple
    padding: tuple
    x: ActParams
    kind = "max_pool2d"

    @property
    def y(self):
        return self.x


@dataclass(frozen=True)
class IntAvgPool2d:
    """Average pooling on the codes (count_include_pad, as sqref's float op); output parameters = input's."""

    kernel_size: tuple
    stride: tuple
    padding: tuple
    x: ActParams
    kind = "avg_pool2d"

    @property
    def y(self):
        return self.x


@dataclass(frozen=True)
class IntFlatten:
    x: ActParams
    kind = "flatten"

    @property
    def y(self):
        return self.x


@dataclass(frozen=True)
class IntReLU:
    """A ReLU. fused: the preceding conv/linear already clamped at z (identity here);
    otherwise max(q, z) on the codes, output parameters = input parameters."""

    x: ActParams
    fused: bool
    kind = "relu"

    @property
    def y(self):
        return self.x


@dataclass(frozen=True, eq=False)
class IntegerModel:
    """A sequential integer model: ``layers`` (Int* above) applied to uint8 input codes.

    input   the ActParams of the model input; mode: the default mode of run_integer.
    """

    layers: tuple
    names: tuple
    input_shape: tuple
    input: ActParams
    mode: str = "onnxruntime"
    meta: dict = field(default_factory=dict)


def quantize_bias(bias, x_scale, w_scale):
    """int32 bias on the accumulator grid, as onnxruntime's quantization tool (quantize_bias_static).

    Shapes: bias (K,), w_scale () or (K,). Dtypes: float32 in, int32 out.
    Formula: s_b = float32(float32(s_x) * float32(s_w)) (ORT's tool's float32 product);
    q = round_half_even(float64(b) / float64(s_b)), saturated to [-(2**31 - 1), 2**31 - 1]
    (TFLite's symmetric int32 bias range).
    # NOTE: ORT's tool divides in float32; sqref divides the same float32 values in
    # float64. The int32 bias is part of the integer model (and of golden files), so
    # every backend is fed the same integers either way.
    """
    s_b = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float64)
    q = np.rint(np.asarray(bias, np.float32).astype(np.float64) / s_b)
    return np.clip(q, -BIAS_LIMIT, BIAS_LIMIT).astype(np.int32)


def _weight_codes(layer, name):
    q = layer.quant
    if q is None:
        raise ValueError(f"layer {name!r} has float weights; quantize the model first (sqref.qmodel.quantize_model)")
    if q.scheme != "symmetric" or np.any(np.asarray(q.zero_point) != 0):
        raise ValueError(f"layer {name!r} has {q.scheme} weight codes; the integer path needs symmetric codes "
                         f"(zero point 0): quantize with scheme='symmetric'")
    codes = np.asarray(q.codes)
    if codes.dtype != np.int8:
        raise ValueError(f"layer {name!r}: weight codes must be int8, got {codes.dtype}")
    scale = np.asarray(q.scale, np.float32)
    if q.axis not in (None, 0):
        raise ValueError(f"layer {name!r}: weight scales must be per tensor or per output channel (axis 0), got axis {q.axis}")
    return codes, scale


def check_integer_structure(model: Model, where: str = "") -> None:
    """What the integer path can run, from the model's structure alone (nothing is
    quantized or calibrated yet): a chain of conv, linear, ReLU, pool and flatten
    layers, pools with symmetric padding, no dilation, floor mode and (average)
    padding counted. One-line ValueError otherwise, prefixed by `where`."""
    prefix = f"{where}: " if where else ""
    if not model.is_chain:
        raise ValueError(f"{prefix}the integer path runs a chain of layers (one input, each layer reading the "
                         f"previous); this model is a graph (sqref info shows what each layer reads)")
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, (MaxPool2d, AvgPool2d)) and (
                len(layer.padding) != 2 or tuple(layer.dilation) != (1, 1) or layer.ceil_mode
                or not getattr(layer, "count_include_pad", True)):
            raise ValueError(f"{prefix}layer {name!r}: the integer pools take symmetric padding, no dilation, floor "
                             f"mode and (average) padding counted; got {layer}")
        if not isinstance(layer, (Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten)):
            raise ValueError(f"{prefix}layer {name!r}: the integer path has no {layer.kind} layer")


def build_integer_model(qmodel: Model, calibration: Calibration, *, mode="onnxruntime") -> IntegerModel:
    """The IntegerModel of a weight-quantized model and its calibration.

    Per Conv2d/Linear: the int8 codes and float32 scales of ``layer.quant``
    (symmetric, any k <= 8), the int32 bias (quantize_bias), input parameters
    = the previous tensor's, output parameters = the layer's calibration, or,
    when a ReLU follows, the ReLU's (lo = 0) with ``relu=True``: the ReLU is
    fused as the clamp at z_y and the ReLU layer becomes an identity.
    Pools, flatten and unfused ReLUs keep their input's parameters (max pool
    and ReLU commute with the quantization; avg pool keeps the scale so no
    rescale is needed; TFLite requires it).
    ``mode`` is recorded as run_integer's default (the integers do not depend on it).
    """
    check_mode(mode)
    check_integer_structure(qmodel)
    if tuple(calibration.names) != tuple(qmodel.names) or len(calibration.outputs) != len(qmodel.layers):
        raise ValueError(f"calibration is for layers {calibration.names}, the model has {qmodel.names}")
    infer_shapes(qmodel)
    layers = []
    x = calibration.input
    for i, (name, layer) in enumerate(zip(qmodel.names, qmodel.layers)):
        if isinstance(layer, (Conv2d, Linear)):
            codes, w_scale = _weight_codes(layer, name)
            fuse = i + 1 < len(qmodel.layers) and isinstance(qmodel.layers[i + 1], ReLU)
            y = calibration.outputs[i + 1] if fuse else calibration.outputs[i]
            b = np.zeros(codes.shape[0], np.float32) if layer.bias is None else np.asarray(layer.bias, np.float32)
            common = dict(weight=codes, w_scale=w_scale, bias=quantize_bias(b, x.scale, w_scale), bias_float=b,
                          x=x, y=y, relu=fuse)
            if isinstance(layer, Conv2d):
                layers.append(IntConv2d(**common, stride=tuple(layer.stride), padding=tuple(layer.padding),
                                        dilation=tuple(layer.dilation), groups=int(layer.groups)))
            else:
                layers.append(IntLinear(**common))
            x = y
        elif isinstance(layer, ReLU):
            fused = i > 0 and isinstance(qmodel.layers[i - 1], (Conv2d, Linear))
            layers.append(IntReLU(x, fused))
        elif isinstance(layer, MaxPool2d):
            layers.append(IntMaxPool2d(tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding), x))
        elif isinstance(layer, AvgPool2d):
            layers.append(IntAvgPool2d(tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding), x))
        elif isinstance(layer, Flatten):
            layers.append(IntFlatten(x))
        else:
            raise TypeError(f"layer {name!r}: no integer version of {type(layer).__name__}")
    meta = {"calibration_rule": calibration.rule, "calibration_images": calibration.images}
    return IntegerModel(tuple(layers), tuple(qmodel.names), tuple(qmodel.input_shape), calibration.input, mode, meta)


def output_shapes(imodel: IntegerModel) -> list:
    """Each layer's output shape without the batch axis (as sqref.model.infer_shapes)."""
    shape = tuple(imodel.input_shape)
    shapes = []
    for layer in imodel.layers:
        if isinstance(layer, IntConv2d):
            K, _, KH, KW = layer.weight.shape
            shape = (K,) + tuple(output_size(shape[1 + a], (KH, KW)[a], stride=layer.stride[a], padding=layer.padding[a],
                                             dilation=layer.dilation[a]) for a in range(2))
        elif isinstance(layer, IntLinear):
            shape = (layer.weight.shape[0],)
        elif isinstance(layer, (IntMaxPool2d, IntAvgPool2d)):
            shape = (shape[0],) + tuple(output_size(shape[1 + a], layer.kernel_size[a], stride=layer.stride[a],
                                                    padding=layer.padding[a]) for a in range(2))
        elif isinstance(layer, IntFlatten):
            shape = (int(np.prod(shape)),)
        shapes.append(shape)
    return shapes
