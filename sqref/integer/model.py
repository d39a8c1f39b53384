"""The integer model: every tensor an integer, every parameter explicit.

A weight-quantized sqref model (sqref.qmodel) plus 8-bit activation
parameters from calibration (sqref.integer.calibration) become an
``IntegerModel``: a tuple of small frozen dataclasses (IntConv2d, IntLinear,
IntMaxPool2d, IntAvgPool2d, IntFlatten, IntReLU, and for graph models IntAdd,
IntGlobalAvgPool, IntPad, IntClip) holding int8 weight codes, float32 weight
scales, int32 biases and uint8 activation parameters, and the wiring of the
float model (which tensors each layer reads). The kernels that run them are
in sqref.integer.kernels and sqref.integer.qlinear_elementwise /
qlinear_pool, the loop that runs a model in sqref.integer.run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sqref.integer import requant
from sqref.integer.calibration import ACT_QMAX, ActParams, Calibration
from sqref.model import (INPUT, Add, AvgPool2d, Clip, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d, Model, Pad,
                         ReLU, chain_wiring, infer_shapes)
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
    """One accumulation for every layer (a str), or {layer name: accumulation} (per-layer, as probed)."""
    if isinstance(accumulate, dict):
        for value in set(accumulate.values()):
            check_accumulate(value, mode)
        return accumulate
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


@dataclass(frozen=True)
class IntAdd:
    """Elementwise sum of two uint8 tensors, as onnxruntime's com.microsoft QLinearAdd (TFLite ADD in mode
    "tflite"): y = round((s_a (a - z_a) + s_b (b - z_b)) / s_y) + z_y, the backend's float or fixed-point
    steps (sqref.integer.qlinear_elementwise.qlinear_add). relu: clamp at z_y (a fused ReLU or ReLU6)."""

    a: ActParams
    b: ActParams
    y: ActParams
    relu: bool = False
    kind = "add"

    @property
    def x(self):
        return self.a


@dataclass(frozen=True)
class IntGlobalAvgPool:
    """Global average pool of uint8 codes, as onnxruntime's com.microsoft QLinearGlobalAveragePool
    (sqref.integer.qlinear_pool.qlinear_global_average_pool); (C, H, W) -> (C, 1, 1), or (C,) without keepdims."""

    x: ActParams
    y: ActParams
    keepdims: bool = True
    kind = "global_avg_pool"


@dataclass(frozen=True)
class IntPad:
    """Zero padding of uint8 codes: the pad value is z_x, the code of real 0. pads (top, left, bottom, right)."""

    x: ActParams
    pads: tuple
    kind = "pad"

    @property
    def y(self):
        return self.x


@dataclass(frozen=True)
class IntClip:
    """clip(x, lo, hi) on the codes: clamp to [q_lo, q_hi], the bounds quantized as QuantizeLinear does
    (qlinear_elementwise.quantize_bound). fused: the producing layer already clamps (identity here)."""

    x: ActParams
    fused: bool
    q_lo: int
    q_hi: int
    kind = "clip"

    @property
    def y(self):
        return self.x


@dataclass(frozen=True, eq=False)
class IntegerModel:
    """An integer model: ``layers`` (Int* above) applied to uint8 input codes.

    input   the ActParams of the model input; mode: the default mode of run_integer.
    wiring  per layer, the names of the tensors it reads ("input" or earlier layers), as
            sqref.model.Model.wiring; () = a chain. The output is the last layer's tensor.
    """

    layers: tuple
    names: tuple
    input_shape: tuple
    input: ActParams
    mode: str = "onnxruntime"
    meta: dict = field(default_factory=dict)
    wiring: tuple = ()

    def __post_init__(self):
        wiring = tuple(tuple(reads) for reads in self.wiring) or chain_wiring(self.names)
        if len(wiring) != len(self.layers):
            raise ValueError(f"wiring has {len(wiring)} entries for {len(self.layers)} layers")
        object.__setattr__(self, "wiring", wiring)

    @property
    def is_chain(self) -> bool:
        return self.wiring == chain_wiring(self.names)

    @property
    def outputs(self) -> tuple:
        return self.names[-1:]


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


BIAS_ROOM = 2**30  # a refitted bias code stays within this, leaving the accumulator room in int32


def fit_bias_scale(codes, w_scale, bias, x_scale):
    """Weight codes and scales whose int32 bias fits: as onnxruntime's quantizer does for per-channel
    weights whose scale is too small for their bias (a channel that batch-norm folding all but
    zeroed: EfficientNet-Lite0's stem has four with weights near 1e-9 and biases near -5).

    A channel (or, per tensor, the tensor) with |b| / (float32(s_x) s_w) > BIAS_ROOM gets
    s_w' = float32(|b| / (float32(s_x) BIAS_ROOM)), rounded up, and codes round_half_even(c s_w / s_w'),
    smaller in magnitude, so they stay in range. Other channels are untouched.
    Shapes: codes int8 (K, ...), w_scale () or (K,), bias (K,). Returns (codes, w_scale, refitted channel indices).
    """
    w_scale = np.asarray(w_scale, np.float32)
    need = np.abs(np.asarray(bias, np.float64)) / (float(np.float32(x_scale)) * BIAS_ROOM)  # the least s_w that fits
    per_channel = w_scale.ndim == 1
    bad = need > w_scale.astype(np.float64) if per_channel else np.atleast_1d(need.max(initial=0.0) > float(w_scale))
    if not bad.any():
        return codes, w_scale, []
    new = w_scale.copy()
    target = need if per_channel else np.float64(need.max())
    up = target.astype(np.float32)
    up = np.where(up.astype(np.float64) < target, np.nextafter(up, np.float32(np.inf)), up)  # rounded up
    new = np.where(bad, up, w_scale) if per_channel else up.astype(np.float32)
    ratio = (w_scale.astype(np.float64) / new.astype(np.float64))
    ratio = ratio.reshape((-1,) + (1,) * (codes.ndim - 1)) if per_channel else ratio
    refit = np.rint(codes.astype(np.float64) * ratio).astype(np.int8)
    return refit, new.astype(np.float32), [int(k) for k in np.flatnonzero(bad)]


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


INTEGER_LAYERS = (Conv2d, Linear, ReLU, Clip, MaxPool2d, AvgPool2d, Flatten, Pad, Add, GlobalAvgPool)


def check_integer_structure(model: Model, where: str = "") -> None:
    """What the integer path can run, from the model's structure alone (nothing is
    quantized or calibrated yet): one input and one output, and conv, linear, ReLU,
    clip, pool, flatten, zero pad, add (of two tensors) and global average pool
    layers, wired as a chain or a graph; pools with symmetric padding, no dilation,
    floor mode and (average) padding counted. One-line ValueError otherwise, prefixed by `where`."""
    prefix = f"{where}: " if where else ""
    if model.extra_inputs or len(model.outputs) != 1 or model.outputs[0] != model.names[-1]:
        raise ValueError(f"{prefix}the integer path runs models with one input and one output, the last layer; "
                         f"this one has inputs {list(model.input_names)} and outputs {list(model.outputs)}")
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, (MaxPool2d, AvgPool2d)) and (
                len(layer.padding) != 2 or tuple(layer.dilation) != (1, 1) or layer.ceil_mode
                or not getattr(layer, "count_include_pad", True)):
            raise ValueError(f"{prefix}layer {name!r}: the integer pools take symmetric padding, no dilation, floor "
                             f"mode and (average) padding counted; got {layer}")
        if not isinstance(layer, INTEGER_LAYERS) or (isinstance(layer, Add) and layer.const is not None):
            what = "add of a constant" if isinstance(layer, Add) else f"{layer.kind} layer"
            raise ValueError(f"{prefix}layer {name!r}: the integer path has no {what}")


def _fusable(qmodel, calibration, readers, index):
    """The index of the ReLU or clip that layer `index` (a conv, linear or add) can absorb as its
    output clamp, or None. It must be the tensor's only reader, the tensor no model output,
    and (a clip) its bounds must quantize to [z_y, >= 255] on its own output grid: then the
    clamp at z_y and the uint8 saturation are the whole clip."""
    reads = readers.get(qmodel.names[index], [])
    if len(reads) != 1 or qmodel.names[index] in qmodel.outputs:
        return None
    j = reads[0]
    layer, y = qmodel.layers[j], calibration.outputs[j]
    if isinstance(layer, ReLU):
        return j
    if isinstance(layer, Clip) and _clip_codes(layer, y) == (y.zero_point, ACT_QMAX):
        return j
    return None


def _clip_codes(layer: Clip, p: ActParams) -> tuple:
    """The clip's bounds as codes of grid p (an infinite bound: the uint8 limit)."""
    # imported here: qlinear_elementwise imports sqref.integer.qlinear, which imports this module
    from sqref.integer.qlinear_elementwise import quantize_bound
    lo = 0 if layer.lo == -np.inf else quantize_bound(layer.lo, p.scale, p.zero_point, np.uint8)
    hi = ACT_QMAX if layer.hi == np.inf else quantize_bound(layer.hi, p.scale, p.zero_point, np.uint8)
    return lo, hi


def build_integer_model(qmodel: Model, calibration: Calibration, *, mode="onnxruntime") -> IntegerModel:
    """The IntegerModel of a weight-quantized model and its calibration.

    Per Conv2d/Linear: the int8 codes and float32 scales of ``layer.quant``
    (symmetric, any k <= 8; a channel whose scale is too small for its int32
    bias is refitted, fit_bias_scale, and listed in meta["bias_refitted_channels"]),
    the int32 bias (quantize_bias), input parameters
    = those of the tensor it reads, output parameters = the layer's calibration,
    or, when a ReLU (or a clip that quantizes to [z_y, 255]) is the only reader,
    that layer's, with ``relu=True``: it is fused as the clamp at z_y and
    becomes an identity. An Add fuses the same way. A global average pool gets
    its own calibrated output parameters, as onnxruntime's quantizer gives them.
    Pools, pads, flatten and unfused ReLUs and clips keep their input's
    parameters (max pool, pad, ReLU and clip commute with the quantization; avg
    pool keeps the scale so no rescale is needed; TFLite requires it).
    ``mode`` is recorded as run_integer's default (the integers do not depend on it).
    """
    check_mode(mode)
    check_integer_structure(qmodel)
    if tuple(calibration.names) != tuple(qmodel.names) or len(calibration.outputs) != len(qmodel.layers):
        raise ValueError(f"calibration is for layers {calibration.names}, the model has {qmodel.names}")
    infer_shapes(qmodel)
    readers = {}
    for i, reads in enumerate(qmodel.wiring):
        for r in reads:
            readers.setdefault(r, []).append(i)
    params = {INPUT: calibration.input}  # each tensor's ActParams
    fused = set()  # indices of the ReLUs and clips absorbed by the layer they read
    refitted = {}  # layer name: channels whose weight scale was raised for their bias (fit_bias_scale)
    layers = []
    for i, (name, layer, reads) in enumerate(zip(qmodel.names, qmodel.layers, qmodel.wiring)):
        x = params[reads[0]]
        if isinstance(layer, (Conv2d, Linear, Add)):
            j = _fusable(qmodel, calibration, readers, i)
            y = calibration.outputs[i] if j is None else calibration.outputs[j]
            if j is not None:
                fused.add(j)
            if isinstance(layer, Add):
                layers.append(IntAdd(x, params[reads[1]], y, relu=j is not None))
            else:
                codes, w_scale = _weight_codes(layer, name)
                b = np.zeros(codes.shape[0], np.float32) if layer.bias is None else np.asarray(layer.bias, np.float32)
                codes, w_scale, refit = fit_bias_scale(codes, w_scale, b, x.scale)
                if refit:
                    refitted[name] = refit
                common = dict(weight=codes, w_scale=w_scale, bias=quantize_bias(b, x.scale, w_scale), bias_float=b,
                              x=x, y=y, relu=j is not None)
                if isinstance(layer, Conv2d):
                    layers.append(IntConv2d(**common, stride=tuple(layer.stride), padding=tuple(layer.padding),
                                            dilation=tuple(layer.dilation), groups=int(layer.groups)))
                else:
                    layers.append(IntLinear(**common))
        elif isinstance(layer, ReLU):
            layers.append(IntReLU(x, i in fused))
        elif isinstance(layer, Clip):
            layers.append(IntClip(x, i in fused, *_clip_codes(layer, x)))
        elif isinstance(layer, GlobalAvgPool):
            layers.append(IntGlobalAvgPool(x, calibration.outputs[i], bool(layer.keepdims)))
        elif isinstance(layer, Pad):
            layers.append(IntPad(x, tuple(int(p) for p in layer.pads)))
        elif isinstance(layer, MaxPool2d):
            layers.append(IntMaxPool2d(tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding), x))
        elif isinstance(layer, AvgPool2d):
            layers.append(IntAvgPool2d(tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding), x))
        elif isinstance(layer, Flatten):
            layers.append(IntFlatten(x))
        else:
            raise TypeError(f"layer {name!r}: no integer version of {type(layer).__name__}")
        params[name] = layers[-1].y
    meta = {"calibration_rule": calibration.rule, "calibration_images": calibration.images}
    if refitted:
        meta["bias_refitted_channels"] = refitted
    return IntegerModel(tuple(layers), tuple(qmodel.names), tuple(qmodel.input_shape), calibration.input, mode, meta,
                        tuple(qmodel.wiring))


def layer_output_shape(layer, shape) -> tuple:
    """The output shape (no batch axis) of one integer layer given its (first) input's shape."""
    if isinstance(layer, IntConv2d):
        K, _, KH, KW = layer.weight.shape
        return (K,) + tuple(output_size(shape[1 + a], (KH, KW)[a], stride=layer.stride[a], padding=layer.padding[a],
                                        dilation=layer.dilation[a]) for a in range(2))
    if isinstance(layer, IntLinear):
        return (layer.weight.shape[0],)
    if isinstance(layer, (IntMaxPool2d, IntAvgPool2d)):
        return (shape[0],) + tuple(output_size(shape[1 + a], layer.kernel_size[a], stride=layer.stride[a],
                                               padding=layer.padding[a]) for a in range(2))
    if isinstance(layer, IntFlatten):
        return (int(np.prod(shape)),)
    if isinstance(layer, IntGlobalAvgPool):
        return (shape[0], 1, 1) if layer.keepdims else (shape[0],)
    if isinstance(layer, IntPad):
        top, left, bottom, right = layer.pads
        return (shape[0], shape[1] + top + bottom, shape[2] + left + right)
    return tuple(shape)  # ReLU, clip, add: the input's shape


def output_shapes(imodel: IntegerModel) -> list:
    """Each layer's output shape without the batch axis (as sqref.model.infer_shapes).
    ValueError where the wiring or an add's operand shapes do not fit."""
    shapes = {INPUT: tuple(imodel.input_shape)}
    out = []
    for name, layer, reads in zip(imodel.names, imodel.layers, imodel.wiring):
        missing = [r for r in reads if r not in shapes]
        if missing or len(reads) != (2 if isinstance(layer, IntAdd) else 1):
            raise ValueError(f"layer {name!r} ({layer.kind}) reads {list(reads)}: "
                             f"not earlier tensors of the right number")
        if isinstance(layer, IntAdd) and shapes[reads[0]] != shapes[reads[1]]:
            raise ValueError(f"layer {name!r} adds tensors of shapes {shapes[reads[0]]} and {shapes[reads[1]]}")
        shapes[name] = layer_output_shape(layer, shapes[reads[0]])
        out.append(shapes[name])
    return out
