"""Integer-only inference of a weight-quantized sqref model (METHOD.md section 5).

The bit-exact path. A weight-quantized model (sqref.qmodel) plus 8-bit
activation parameters from calibration become an ``IntegerModel`` whose
every tensor is an integer:

    activations  uint8 codes q, real value r = s * (q - z)  (per tensor, asymmetric)
    weights      the layer's k-bit codes in int8 (symmetric, z = 0), per tensor or per channel
    bias         int32 on the accumulator's grid, scale s_x * s_w, zero point 0
    conv/linear  acc = sum (x - z_x) * w + bias               (exact integers)
                 y = clamp(requant(acc) + z_y, lo, 255)       (sqref.requant, one mode per backend)
                 lo = z_y when a ReLU follows (the ReLU is fused as a clamp at z_y), else 0
    max pool     directly on the codes (max commutes with the monotone quantization)
    avg pool     rounded as the mode's backend rounds it (avg_pool2d_codes)
    flatten      a reshape of the codes

Modes are sqref.requant.MODES: "onnxruntime" (default), "onnx-reference",
"tflite", "tflite-single", "fbgemm". A mode fixes the requantization, the
effective multiplier's precision, the input QUANTIZE rounding, the avg-pool
rounding and (fbgemm) the float bias PyTorch adds.

Which mode a real backend configuration computes as is measured, not assumed:
docs/integer.md section 6 (e.g. TFLite's default XNNPACK delegate requantizes
conv and fully connected as "onnxruntime", not as "tflite").

Accumulation (``accumulate=``): "exact" is the integer sum; "int16-pairs"
reproduces onnxruntime's and FBGEMM's u8 x s8 kernels on AVX2 machines
without VNNI, which sum adjacent products along K in saturating int16
(sqref.requant.accumulate_u8s8_int16_pairs; docs/BACKENDS.md). That is a
backend deviation, modelled so that sqref can reproduce it exactly; the
exact sum is sqref's definition.

Determinism: every conv and linear is `exact_matmul`: float32 GEMMs over
integer-valued operands |x - z_x| <= 255, |w| <= 128, split along K into
blocks of at most F32_EXACT_K = 514 terms, so that every partial sum is an
integer of magnitude <= 514 * 255 * 128 < 2**24 and float32 holds it
exactly; the blocks are summed in int64. The result is the exact integer
sum whatever the BLAS, its blocking, FMA use or thread count. Everything
else is elementwise NumPy with fixed rounding.

Oracles: tests/test_integer.py checks every kernel against a naive int64
loop nest, and a hand-computed conv; tests/test_backend_ort_model.py runs
the exported model in onnxruntime, tests/test_backend_tflite.py in TFLite.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sqref import requant
from sqref.calibration import (  # noqa: F401  (calibration is re-exported as part of the integer path's API)
    ACT_QMAX, ACT_QMIN, CALIBRATION_RULES, ActParams, Calibration, act_params, activation_range, calibrate)
from sqref.model import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU, infer_shapes
from sqref.ops import IM2COL_MAX_BYTES, conv_gemm, im2col, output_size, pair

ACCUMULATE = ("exact", "int16-pairs")
# float32 holds every integer of magnitude <= 2**24; a K-term sum of products
# |x - z_x| * |w| <= 255 * 128 stays within it while K <= 2**24 // (255 * 128).
F32_EXACT_K = 2**24 // (255 * 128)  # 514
BIAS_LIMIT = 2**31 - 1  # int32 biases are saturated to [-BIAS_LIMIT, BIAS_LIMIT]
BATCH = 250  # run_integer processes this many images at a time (results do not depend on it)

# The QUANTIZE op (float input -> codes) of each mode's backend (sqref.requant.quantize_linear).
QUANTIZE_MODE = {"onnxruntime": "onnxruntime", "onnx-reference": "onnx-reference", "tflite": "tflite",
                 "tflite-single": "tflite", "fbgemm": "pytorch"}


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


# ----------------------------------------------------------------- integer kernels


def _check_codes(name, a, dtype, ndim, layout):
    a = np.asarray(a)
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype).name} codes, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D ({layout}), got shape {a.shape}")
    return a


def _check_zero_point(z):
    z = int(z)
    if not 0 <= z <= ACT_QMAX:
        raise ValueError(f"activation zero point must be a uint8 code in [0, {ACT_QMAX}], got {z}")
    return z


def exact_matmul(a, b):
    """a @ b as exact int64, for integer-valued float32 operands with |a| <= 255, |b| <= 128.

    Shapes: as np.matmul, contracting a's last axis with b's second to last (K).
    Method: one float32 GEMM per block of at most F32_EXACT_K = 514 K positions.
    Inside a block every product and every partial sum, in whatever order and
    blocking the BLAS adds them (fused multiply-adds included), is an integer of
    magnitude <= 514 * 255 * 128 = 16,776,960 < 2**24, which float32 represents
    exactly: no rounding happens. The block results are summed in int64.
    Oracle: a naive int64 loop nest (tests/test_integer.py).
    """
    k = a.shape[-1]
    acc = np.matmul(a[..., :F32_EXACT_K], b[..., :F32_EXACT_K, :]).astype(np.int64)
    for k0 in range(F32_EXACT_K, k, F32_EXACT_K):
        acc += np.matmul(a[..., k0:k0 + F32_EXACT_K], b[..., k0:k0 + F32_EXACT_K, :]).astype(np.int64)
    return acc


def int16_pairs_accumulate(a_raw, b, a_zero_point):
    """``requant.accumulate_u8s8_int16_pairs(a_raw, b, a_zero_point=z)`` (b's zero point 0), fast.

    Shapes: a_raw (M, K) raw uint8 codes, b (K, N) int8 codes -> (M, N) int64.
    The saturated sum equals the exact one plus, for every pair p of adjacent
    K positions, ``sat16(s_p) - s_p`` with ``s_p = a[2p] b[2p] + a[2p+1] b[2p+1]``
    (raw codes). Since a <= 255 and |b| <= 128, s_p can leave int16 only if
    a[2p] + a[2p+1] >= 256 AND |b[2p]| + |b[2p+1]| >= 129, so the correction is
    evaluated on those rows and columns only: the exact part is
    `exact_matmul`, the correction is usually tiny. Odd K: the last element
    pairs with 0.
    Oracle: requant.accumulate_u8s8_int16_pairs (tests/test_integer.py).
    """
    a = np.asarray(a_raw)
    b = np.asarray(b).astype(np.int64)
    k = a.shape[1]
    za = int(a_zero_point)
    out = exact_matmul(a.astype(np.float32) - np.float32(za), b.astype(np.float32))
    a_t = np.zeros((k + k % 2, a.shape[0]), np.int32)  # (K, M), odd K padded with a zero row
    a_t[:k] = a.T  # contiguous rows: the per-pair tests below read contiguous memory
    b = np.pad(b, ((0, k % 2), (0, 0)))
    b_abs = np.abs(b)
    for p in range(0, a_t.shape[0], 2):
        cols = np.flatnonzero(b_abs[p] + b_abs[p + 1] >= 129)
        if cols.size == 0:
            continue
        rows = np.flatnonzero(a_t[p] + a_t[p + 1] >= 256)
        if rows.size == 0:
            continue
        s = a_t[p, rows, None] * b[None, p, cols] + a_t[p + 1, rows, None] * b[None, p + 1, cols]
        fix = np.clip(s, -(2**15), 2**15 - 1) - s
        hit = np.flatnonzero(fix.any(axis=1))
        if hit.size:
            out[np.ix_(rows[hit], cols)] += fix[hit]
    return out


def conv2d_accumulate(xq, x_zero_point, wq, *, stride=1, padding=0, dilation=1, groups=1, accumulate="exact"):
    """Integer 2-D cross-correlation accumulator, as QLinearConv / ConvInteger before requantization.

    Shapes: xq (N, C, H, W), wq (K, C/groups, KH, KW) -> (N, K, OH, OW).
    Dtypes: xq uint8 codes, wq int8 codes (zero point 0); int64 out (bias not included).
    Formula: acc[n, k, oh, ow] = sum_{c, i, j} (xpad[n, c, oh*SH + i*DH, ow*SW + j*DW] - z_x) * w[k, c, i, j],
    padding holds z_x (the code of real 0).
    "exact": sqref.ops.conv_gemm of float32 (x - z_x) with `exact_matmul` (exact
    integer sums, K = C/groups * KH * KW). "int16-pairs": raw codes in
    onnxruntime/FBGEMM's NHWC im2col order, K = (KH, KW, C), summed by
    accumulate_u8s8_int16_pairs (the AVX2 saturation).
    Oracle: a naive int64 loop nest (tests/test_integer.py).
    """
    xq = _check_codes("xq", xq, np.uint8, 4, "N, C, H, W")
    wq = _check_codes("wq", wq, np.int8, 4, "K, C/groups, KH, KW")
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
    (SH, SW), (PH, PW), (DH, DW) = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    N, C, H, W = xq.shape
    K, CG, KH, KW = wq.shape
    G = int(groups)
    if G < 1 or C % G or K % G or CG != C // G:
        raise ValueError(f"weight {wq.shape} with groups={groups} does not fit input {xq.shape}")
    OH = output_size(H, KH, stride=SH, padding=PH, dilation=DH)
    OW = output_size(W, KW, stride=SW, padding=PW, dilation=DW)
    if OH < 1 or OW < 1:
        raise ValueError(f"kernel {KH}x{KW} does not fit input {H}x{W} with padding {(PH, PW)}")
    zx = _check_zero_point(x_zero_point)
    KG = K // G
    if accumulate == "exact":
        # padding with 0 after subtracting z_x = padding the codes with z_x (real 0)
        return conv_gemm(xq.astype(np.float32) - np.float32(zx), wq.astype(np.float32), stride=(SH, SW),
                         padding=(PH, PW), dilation=(DH, DW), groups=G, matmul=exact_matmul, out_dtype=np.int64)
    out = np.empty((N, K, OH, OW), np.int64)
    chunk = max(1, IM2COL_MAX_BYTES // (C * KH * KW * OH * OW))
    for n0 in range(0, N, chunk):
        xs = xq[n0:n0 + chunk]
        n = xs.shape[0]
        xp = np.pad(xs, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=zx)  # raw codes, padding = z_x
        cols = im2col(xp, (KH, KW), stride=(SH, SW), dilation=(DH, DW)).reshape(G, CG, KH, KW, n * OH * OW)
        for g in range(G):
            a_raw = cols[g].transpose(3, 1, 2, 0).reshape(n * OH * OW, KH * KW * CG)  # K order (KH, KW, C)
            b = wq[g * KG:(g + 1) * KG].astype(np.int64).transpose(2, 3, 1, 0).reshape(KH * KW * CG, KG)
            acc = int16_pairs_accumulate(a_raw, b, zx)
            out[n0:n0 + n, g * KG:(g + 1) * KG] = acc.reshape(n, OH, OW, KG).transpose(0, 3, 1, 2)
    return out


def linear_accumulate(xq, x_zero_point, wq, *, accumulate="exact"):
    """Integer matmul accumulator, as QLinearMatMul / MatMulInteger before requantization.

    Shapes: xq (N, IN), wq (OUT, IN) -> (N, OUT). Dtypes: uint8 and int8 codes; int64 out.
    Formula: acc[n, o] = sum_i (x[n, i] - z_x) * w[o, i]; "exact" is `exact_matmul`
    (float32 GEMMs over blocks of K, exact integer sums), "int16-pairs" the AVX2
    saturation model with K in input-feature order. Oracle: a naive int64 loop (tests/test_integer.py).
    """
    xq = _check_codes("xq", xq, np.uint8, 2, "N, IN")
    wq = _check_codes("wq", wq, np.int8, 2, "OUT, IN")
    if xq.shape[1] != wq.shape[1]:
        raise ValueError(f"xq shape {xq.shape} and wq shape {wq.shape}: IN must match")
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
    zx = _check_zero_point(x_zero_point)
    if accumulate == "int16-pairs":
        return int16_pairs_accumulate(xq, wq.astype(np.int64).T, zx)
    return exact_matmul(xq.astype(np.float32) - np.float32(zx), wq.astype(np.float32).T)


def _windows(q, kernel_size, stride, padding, fill):
    """The KH*KW strided views of the padded codes whose elementwise reduction is the pool."""
    (KH, KW), (SH, SW), (PH, PW) = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(padding, "padding")
    N, C, H, W = q.shape
    OH, OW = output_size(H, KH, stride=SH, padding=PH), output_size(W, KW, stride=SW, padding=PW)
    if OH < 1 or OW < 1 or min(KH, KW, SH, SW) < 1 or PH > KH // 2 or PW > KW // 2:
        raise ValueError(f"pool kernel {(KH, KW)}, stride {(SH, SW)}, padding {(PH, PW)} do not fit input {q.shape}")
    if PH or PW:
        q = np.pad(q, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=fill)
    return [q[:, :, i:i + SH * (OH - 1) + 1:SH, j:j + SW * (OW - 1) + 1:SW] for i in range(KH) for j in range(KW)]


def max_pool2d_codes(q, kernel_size, stride, padding=0):
    """Max pooling on uint8 codes, as onnx MaxPool on uint8 / TFLite MAX_POOL_2D int8.

    Shapes: (N, C, H, W) -> (N, C, OH, OW). Equal to quantizing the float max
    pool, because quantization is monotone. Padding holds code 0, which never
    wins over the at least one real code in each window.
    """
    q = _check_codes("q", q, np.uint8, 4, "N, C, H, W")
    views = _windows(q, kernel_size, stride, padding, ACT_QMIN)
    y = views[0].copy()
    for v in views[1:]:
        np.maximum(y, v, out=y)
    return y


def avg_pool2d_codes(q, kernel_size, stride, padding, *, x: ActParams, y: ActParams, mode):
    """Average pooling on uint8 codes (count_include_pad: padded zeros count), rounded as ``mode``'s backend.

    Shapes: (N, C, H, W) -> (N, C, OH, OW). S = sum over the window of (q - z_x)
    (padding contributes 0), n = KH * KW.
      onnxruntime     com.microsoft QLinearAveragePool (qlinear_pool.cc): dequantize
                      v = float32(s_x * (q - z_x)), sum the window in float32 in (i, j) order,
                      divide by float32(n), t = float32(v / s_y) + z_y in float32,
                      round half even, clamp. A window covering the whole unpadded
                      input takes ORT's QLinearGlobalAveragePool path instead:
                      MlasRequantizeOutput(S, M = float32(s_x / float32(s_y * n)), z_y).
      onnx-reference  # NOTE: ONNX has no quantized average pool; sqref's reference is
                      round_half_even(S * s_x / (n * s_y)) + z_y in float64, clamped.
      tflite(-single) TFLite AVERAGE_POOL_2D int8 (reference_integer_ops/pooling.h):
                      in TFLite's int8 codes r = q - 128, A = sum r,
                      round half away from zero of A / n, + 128. Requires x == y
                      parameters and no padding (TFLite excludes padding from n).
      fbgemm          PyTorch quantized avg_pool2d (AveragePool2d.cpp, NCHW): m =
                      float32(float64(s_x) / float64(s_y) / n); round_half_even(float32(float32(S) * m) + z_y).
    Oracle: a naive loop (tests/test_integer.py) and onnxruntime's QLinearAveragePool.
    """
    q = _check_codes("q", q, np.uint8, 4, "N, C, H, W")
    check_mode(mode)
    (KH, KW), (PH, PW) = pair(kernel_size, "kernel_size"), pair(padding, "padding")
    n = KH * KW
    zx, zy = x.zero_point, y.zero_point
    centred = q.astype(np.int64) - zx
    if mode.startswith("tflite"):
        if (PH, PW) != (0, 0) or x != y:
            raise ValueError("TFLite's int8 AVERAGE_POOL_2D needs equal input/output parameters and no padding "
                             f"(it excludes padding from the divisor); got padding {(PH, PW)}")
        raw = q.astype(np.int64) - 128
        total = sum(_windows(raw, kernel_size, stride, 0, 0))
        avg = np.where(total > 0, (total + n // 2) // n, -((-total + n // 2) // n))  # C '/' truncates
        return np.clip(avg + 128, ACT_QMIN, ACT_QMAX).astype(np.uint8)
    total = sum(_windows(centred, kernel_size, stride, padding, 0))
    if mode == "onnxruntime":
        N, C, H, W = q.shape
        if (KH, KW) == (H, W) and (PH, PW) == (0, 0):  # ORT falls back to its global average pool
            m = np.float32(x.scale) / (np.float32(y.scale) * np.float32(n))
            return requant.requant_onnxruntime(total, multiplier=m, zero_point=zy, qmin=0, qmax=255).astype(np.uint8)
        v = centred.astype(np.float32) * np.float32(x.scale)  # one float32 rounding per element
        acc = np.zeros(total.shape, np.float32)
        for view in _windows(v, kernel_size, stride, padding, np.float32(0)):
            acc = acc + view  # float32, in ORT's (i, j) order; padding adds +0.0
        t = (acc / np.float32(n)) / np.float32(y.scale) + np.float32(zy)
        return np.clip(np.rint(t), ACT_QMIN, ACT_QMAX).astype(np.uint8)
    if mode == "onnx-reference":
        r = np.rint(total.astype(np.float64) * x.scale / (n * y.scale)) + zy
        return np.clip(r, ACT_QMIN, ACT_QMAX).astype(np.uint8)
    # fbgemm: PyTorch's quantized CPU kernel
    m = np.float32(np.float64(x.scale) / np.float64(y.scale) / n)
    t = (total.astype(np.float32) * m).astype(np.float32) + np.float32(zy)
    return np.clip(np.rint(t), ACT_QMIN, ACT_QMAX).astype(np.uint8)


def requantize_layer(acc, layer, *, mode):
    """y = clamp(requant(acc + bias) + z_y, relu ? z_y : 0, 255) for an IntConv2d/IntLinear.

    Shapes: acc (N, K, OH, OW) or (N, OUT) without the bias; channels on axis 1.
    M = requant.effective_multiplier(s_x, s_w, s_y, mode=mode) (the backend's precision).
    fbgemm adds the FLOAT bias as PyTorch does (requant.requant_fbgemm); the other modes
    the int32 bias. Dtypes: uint8 out.
    """
    zy = layer.y.zero_point
    qmin = zy if layer.relu else ACT_QMIN
    m = requant.effective_multiplier(layer.x.scale, layer.w_scale, layer.y.scale, mode=mode)
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    if mode == "fbgemm":
        ts = np.float32(layer.x.scale) * np.asarray(layer.w_scale, np.float32)
        y = requant.requant_fbgemm(acc, multiplier=m, zero_point=zy, qmin=qmin, qmax=ACT_QMAX, axis=1,
                                   bias=layer.bias_float, act_times_w_scale=ts)
    else:
        total = acc + layer.bias.astype(np.int64).reshape(shape)
        y = requant.requantize(total, multiplier=m, zero_point=zy, qmin=qmin, qmax=ACT_QMAX, mode=mode, axis=1)
    return y.astype(np.uint8)


def apply_layer(layer, q, *, mode, accumulate="exact"):
    """One integer layer on uint8 codes -> uint8 codes (see the module docstring)."""
    if isinstance(layer, IntConv2d):
        depthwise = layer.weight.shape[1] == 1 and layer.weight.shape[0] == layer.groups
        acc_mode = "exact" if (depthwise and mode == "onnxruntime") else accumulate  # ORT's depthwise kernel is exact
        acc = conv2d_accumulate(q, layer.x.zero_point, layer.weight, stride=layer.stride, padding=layer.padding,
                                dilation=layer.dilation, groups=layer.groups, accumulate=acc_mode)
        return requantize_layer(acc, layer, mode=mode)
    if isinstance(layer, IntLinear):
        return requantize_layer(linear_accumulate(q, layer.x.zero_point, layer.weight, accumulate=accumulate),
                                layer, mode=mode)
    if isinstance(layer, IntMaxPool2d):
        return max_pool2d_codes(q, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, IntAvgPool2d):
        return avg_pool2d_codes(q, layer.kernel_size, layer.stride, layer.padding, x=layer.x, y=layer.y, mode=mode)
    if isinstance(layer, IntFlatten):
        return q.reshape(q.shape[0], -1)
    if isinstance(layer, IntReLU):
        return q if layer.fused else np.maximum(q, np.uint8(layer.x.zero_point))
    raise TypeError(f"unknown integer layer {type(layer).__name__}")


def quantize_input(imodel: IntegerModel, x, *, mode=None):
    """The model input as uint8 codes: uint8 input is taken as codes; float input is
    quantized with the mode's QUANTIZE (sqref.requant.quantize_linear, QUANTIZE_MODE)."""
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


def run_integer(imodel: IntegerModel, x, *, mode=None, return_intermediates=False, accumulate="exact"):
    """Integer-only inference, as onnxruntime / TFLite / PyTorch run a quantized model (by ``mode``).

    Shapes: x (N, *input_shape), float images or uint8 input codes -> logits (N, classes).
    Dtypes: logits float32 = s_y * (q - z_y) of the last layer's codes; with
    ``return_intermediates`` also a list of every layer's uint8 codes (model.names order).
    ``mode``: None = imodel.mode; ``accumulate``: "exact" or "int16-pairs" (onnxruntime and
    fbgemm modes only; see the module docstring). Images are processed BATCH at a time;
    the result does not depend on it, on the BLAS or on its threads.
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
    outputs = [np.concatenate(parts) if parts else np.zeros((0,), np.uint8) for parts in per_layer]
    last = imodel.layers[-1].y
    logits = requant.dequantize_linear(outputs[-1], last.scale, last.zero_point)
    return (logits, outputs) if return_intermediates else logits


def run_model_integer(qmodel: Model, x, *, mode="onnxruntime", calibration=None, accumulate="exact",
                      return_intermediates=False):
    """``sqref.run`` for the integer path: calibrate (rule "max" on the TRAIN split of
    MNIST-5k, when no calibration is given), build the IntegerModel, run it."""
    if calibration is None:
        from sqref.data import load_split

        calibration = calibrate(qmodel, load_split(split="train")[0])
    imodel = build_integer_model(qmodel, calibration, mode=mode)
    return run_integer(imodel, x, mode=mode, return_intermediates=return_intermediates, accumulate=accumulate)
