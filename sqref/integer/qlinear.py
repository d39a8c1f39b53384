"""ONNX's quantized operators, one function per op, bit-exact, for other people's int8 models.

Each function takes the op's inputs in ONNX's order and dtypes and its
attributes as keywords, and returns what the op returns (docs/integer.md,
"General QLinear kernels"):

    quantize_linear          QuantizeLinear           float32/float16 -> uint8, int8, uint16, int16
    dequantize_linear        DequantizeLinear         uint8 ... int32 -> float32/float16
    dynamic_quantize_linear  DynamicQuantizeLinear    float32 -> (uint8, scale, zero point)
    conv_integer             ConvInteger              u8/s8 x u8/s8 -> int32
    matmul_integer           MatMulInteger            u8/s8 x u8/s8 -> int32
    qlinear_conv             QLinearConv              u8/s8 x u8/s8 (any zero points) -> u8/s8
    qlinear_matmul           QLinearMatMul            u8/s8 x u8/s8 (any zero points) -> u8/s8

Where the ONNX reference evaluator and onnxruntime compute differently,
``mode`` chooses (as sqref.integer.requant's modes; "onnxruntime" is the
default everywhere, "onnx-reference" is ``onnx.reference.ReferenceEvaluator``).
``accumulate="int16-pairs"`` models the saturating u8 x s8 kernels of
onnxruntime and FBGEMM on x86 CPUs without VNNI (docs/backends.md).

Accumulators are exact integers. A conv or matmul subtracts the zero points
first, so |x - z_x| <= 255 and |w - z_w| <= 255; uint8 weights are shifted
to int8 (``w - 128``, ``z_w - 128``: the same differences) and the weight
zero point is applied through window/row sums, so every GEMM runs in
``kernels.exact_matmul`` (float32 GEMMs over blocks of 514 terms, each
partial sum an integer below 2**24). The result is then wrapped to int32, as
ONNX allows ("the accumulation may overflow if and only if in 32 bits").

The loop-nest oracles at the end of the module restate every op one output
element at a time, in Python integers and NumPy scalars
(tests/test_qlinear.py checks the fast functions against them).
"""
from __future__ import annotations

import math

import numpy as np

from sqref.integer import requant
from sqref.integer.kernels import conv2d_accumulate, exact_matmul, int16_pairs_accumulate
from sqref.integer.model import check_accumulate, check_mode
from sqref.ops import conv_gemm

__all__ = ["quantize_linear", "dequantize_linear", "dynamic_quantize_linear", "conv_integer", "matmul_integer",
           "qlinear_conv", "qlinear_matmul", "QUANT_RANGES", "DYNAMIC_MODES"]

# the integer types of QuantizeLinear / DequantizeLinear, and their saturation ranges
QUANT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127),
                np.dtype(np.uint16): (0, 65535), np.dtype(np.int16): (-32768, 32767)}
EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))
FLOATS = (np.dtype(np.float32), np.dtype(np.float16))
DYNAMIC_MODES = ("onnxruntime", "onnx-reference")
AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


# ------------------------------------------------------------------ argument checks


def is_typed(a):
    return isinstance(a, (np.ndarray, np.generic))


def _float_tensor(name, value, allowed=FLOATS):
    """An array of one of the ``allowed`` float dtypes; Python numbers and lists become float32."""
    if not is_typed(value):
        try:
            return np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a float array, got {type(value).__name__}") from None
    a = np.asarray(value)
    if a.dtype not in allowed:
        names = " or ".join(np.dtype(d).name for d in allowed)
        raise TypeError(f"{name} must be {names}, got dtype {a.dtype} (cast it explicitly)")
    return a


def check_scale(name, value, allowed=FLOATS):
    s = _float_tensor(name, value, allowed)
    if s.size == 0 or not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"{name} must be finite and > 0, got {s.ravel()[:5].tolist()}")
    return s


def check_int_tensor(name, value, allowed):
    a = np.asarray(value)
    if not is_typed(value) or a.dtype not in allowed:
        names = ", ".join(np.dtype(d).name for d in allowed)
        got = a.dtype if is_typed(value) else type(value).__name__
        raise TypeError(f"{name} must be a NumPy array of dtype {names}, got {got}")
    return a


def check_zero_point(name, value, dtype, tensor):
    """A zero point of ``dtype`` (the dtype of ``tensor``): None is 0; a typed array must
    have that dtype; Python ints are range-checked and converted."""
    dtype = np.dtype(dtype)
    if value is None:
        return np.zeros((), dtype)
    if is_typed(value):
        a = np.asarray(value)
        if a.dtype != dtype:
            raise TypeError(f"{name} must have {tensor}'s dtype {dtype.name}, got {a.dtype}")
        return a
    a = np.asarray(value)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer, got {value!r}")
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}] ({tensor} is {dtype.name}), got {a.ravel()[:5].tolist()}")
    return a.astype(dtype)


def per_tensor(name, a):
    if a.size != 1 or a.ndim > 1:
        raise ValueError(f"{name} must be a scalar (per tensor), got shape {a.shape}")
    return a.reshape(())


def _same_granularity(s_name, s, z_name, z, given):
    """ONNX: a scale and its zero point have the same shape (two size-1 shapes pass)."""
    if given and (s.size > 1 or z.size > 1) and s.shape != z.shape:
        raise ValueError(f"{s_name} {s.shape} and {z_name} {z.shape} must have the same shape")


def _axis(axis, ndim):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"axis must be an int in [{-ndim}, {ndim - 1}], got {axis!r}")
    return int(axis) % max(ndim, 1)


def along_axis(name, p, shape, axis, block_size):
    """ONNX's per-tensor / per-axis / blocked parameter, shaped to broadcast against ``shape``
    (the evaluator's ``reshape_input``): one element is per tensor; 1-D of length shape[axis] is
    per axis; with block_size B > 0, p has x's rank and is repeated B times along axis."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 0:
        raise ValueError(f"block_size must be an int >= 0, got {block_size!r}")
    if p.size == 1:
        return p.reshape(())
    ndim = len(shape)
    ax = _axis(axis, ndim)
    if not block_size:
        if p.ndim != 1 or ndim == 0 or p.size != shape[ax]:
            raise ValueError(f"{name} of shape {p.shape} is neither per tensor nor per axis for an input of "
                             f"shape {tuple(shape)} (axis={axis}); blocked quantization needs block_size")
        dims = [1] * ndim
        dims[ax] = p.size
        return p.reshape(dims)
    blocks = p.shape[ax] if p.ndim == ndim else -1
    if (p.ndim != ndim or any(p.shape[j] != shape[j] for j in range(ndim) if j != ax)
            or blocks * block_size < shape[ax] or (blocks - 1) * block_size >= shape[ax]):
        raise ValueError(f"{name} of shape {p.shape} does not block an input of shape {tuple(shape)} "
                         f"along axis {axis} with block_size {block_size}")
    return np.repeat(p, block_size, axis=ax).take(range(shape[ax]), axis=ax)


def _flat(fn, x, s, z, **kw):
    """fn(x, s, z, axis=0) with s and z broadcast to x element by element (requant's functions take
    a scalar or one 1-D parameter along an axis; a raveled x is one axis)."""
    if s.ndim == 0 and z.ndim == 0:
        return fn(x, s, z, **kw)
    s_full = np.broadcast_to(s, x.shape).ravel()
    z_full = np.broadcast_to(z, x.shape).ravel()
    return fn(x.ravel(), s_full, z_full, axis=0, **kw).reshape(x.shape)


# ------------------------------------------------------------ QuantizeLinear and friends


def quantize_linear(x, y_scale, y_zero_point=None, *, axis=1, saturate=True, block_size=0, output_dtype=None,
                    mode="onnxruntime"):
    """ONNX QuantizeLinear: ``y = saturate(round_half_even(x / y_scale) + y_zero_point)``.

    Dtypes: x float32 or float16; y_scale float32 or float16; y_zero_point uint8,
    int8, uint16 or int16, which is y's dtype (None: zero point 0 and y uint8, or
    ``output_dtype``). Scale and zero point: a scalar (per tensor), 1-D along
    ``axis`` (per axis), or blocked (``block_size``), as ONNX specifies them.
    ``saturate`` is ONNX's attribute for float8 outputs: integer outputs always
    saturate, so it changes nothing here.
    Arithmetic, by mode (requant.quantize_linear for the rest):
      onnxruntime     float32 division ``x / s`` (float16 inputs are widened to
                      float32 first), clamp to [qmin - z, qmax - z] (NaN -> qmin - z),
                      round half even, + z.
      onnx-reference  the division in NumPy's type of (x, s): float16 / float16 stays
                      float16, as ONNX specifies (y_scale's type is the division's
                      precision); rint, cast to int32 (NaN, +-inf and |v| >= 2**31 become
                      INT32_MIN on x86), + z in int32 (wraps), clip. So +inf gives qmin (qmax
                      when z < 0 wraps the sum), where the spec and onnxruntime saturate to qmax.
      tflite, fbgemm  requant.quantize_linear's (round half away; FMA reciprocal).
    """
    if mode not in requant.QUANTIZE_MODES:
        raise ValueError(f"mode must be one of {requant.QUANTIZE_MODES}, got {mode!r}")
    if not isinstance(saturate, (bool, np.bool_, int)):
        raise TypeError(f"saturate must be a bool, got {saturate!r}")
    x = _float_tensor("x", x)
    s = check_scale("y_scale", y_scale)
    if y_zero_point is not None and is_typed(y_zero_point):
        dtype = np.asarray(y_zero_point).dtype
        if output_dtype is not None and np.dtype(output_dtype) != dtype:
            raise ValueError(f"output_dtype {np.dtype(output_dtype).name} differs from y_zero_point's {dtype.name}")
    else:
        dtype = np.dtype(np.uint8 if output_dtype is None else output_dtype)
    if dtype not in QUANT_RANGES:
        raise TypeError(f"y's dtype must be one of uint8, int8, uint16, int16, got {dtype.name}")
    z = check_zero_point("y_zero_point", y_zero_point, dtype, "y")
    _same_granularity("y_scale", s, "y_zero_point", z, y_zero_point is not None)
    sb = along_axis("y_scale", s, x.shape, axis, block_size)
    zb = along_axis("y_zero_point", z, x.shape, axis, block_size) if z.size > 1 else z.reshape(())
    qmin, qmax = QUANT_RANGES[dtype]
    if mode == "onnx-reference" and np.result_type(x, sb) == np.float16:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            v = (x / sb).astype(np.float32)  # the float16 quotient, held exactly in float32
        y = _flat(lambda a, _, zz, **kw: requant.quantize_linear(a, np.float32(1), zz, qmin=qmin, qmax=qmax,
                                                                  mode=mode, **kw), v, np.float32(1), zb)
    else:
        y = _flat(lambda a, ss, zz, **kw: requant.quantize_linear(a, ss, zz, qmin=qmin, qmax=qmax, mode=mode, **kw),
                  x.astype(np.float32), sb.astype(np.float32), zb)
    return y.astype(dtype)


def dequantize_linear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=None):
    """ONNX DequantizeLinear: ``y = (x - x_zero_point) * x_scale``.

    Dtypes: x uint8, int8, uint16, int16 or int32 (int32 has no zero point: None or 0);
    zero point x's dtype; x_scale float32 or float16; y ``output_dtype``, default the
    scale's dtype. Granularity as quantize_linear.
    Arithmetic (the evaluator and onnxruntime alike): ``x - z`` exact, converted to
    float32 (int32 x rounds to 24 bits there), times float32(scale), rounded once to
    float32, then cast to y's dtype (float16: a second rounding), via requant.dequantize_linear.
    """
    x = check_int_tensor("x", x, tuple(QUANT_RANGES) + (np.dtype(np.int32),))
    s = check_scale("x_scale", x_scale)
    out = np.dtype(s.dtype if output_dtype is None else output_dtype)
    if out not in FLOATS:
        raise TypeError(f"output_dtype must be float32 or float16, got {out.name}")
    z = check_zero_point("x_zero_point", x_zero_point, x.dtype, "x")
    if x.dtype == np.int32 and np.any(z != 0):
        raise ValueError("int32 x has no zero point (ONNX: it is 0); got a nonzero x_zero_point")
    _same_granularity("x_scale", s, "x_zero_point", z, x_zero_point is not None)
    sb = along_axis("x_scale", s, x.shape, axis, block_size)
    zb = along_axis("x_zero_point", z, x.shape, axis, block_size) if z.size > 1 else z.reshape(())
    y = _flat(lambda q, ss, zz, **kw: requant.dequantize_linear(q, ss, zz, **kw), x, sb.astype(np.float32),
              zb.astype(np.int64))
    return y.astype(out)


def dynamic_quantize_linear(x, *, mode="onnxruntime"):
    """ONNX DynamicQuantizeLinear: (y uint8, y_scale float32, y_zero_point uint8), all float32 arithmetic.

    ``lo = min(0, min x)``, ``hi = max(0, max x)`` (float32);
    ``y_scale = float32(hi - lo) / float32(255)``;
    ``y_zero_point = round_half_even(clamp(float32(0 - lo / y_scale), 0, 255))``;
    ``y = clamp(round_half_even(float32(x / y_scale)) + y_zero_point, 0, 255)``.
    The division is float32: x = 0.5 with y_scale = float32(5 / 255) is exactly 25.5 -> 26
    (sqref.quant divides in float64: 25.4999991 -> 25).
    An all-zero x (lo == hi == 0) makes ONNX's function body divide by zero; onnxruntime
    returns y_scale 1.0, the evaluator ``float32(1) / 255`` (``mode``); codes and zero
    point are 0 in both. x must be a non-empty, finite float32 array.
    """
    if mode not in DYNAMIC_MODES:
        raise ValueError(f"mode must be one of {DYNAMIC_MODES}, got {mode!r}")
    x = _float_tensor("x", x, (np.dtype(np.float32),))
    if x.size == 0:
        raise ValueError("x must not be empty (its range defines the scale)")
    if not np.all(np.isfinite(x)):
        raise ValueError("x must be finite: a NaN or inf makes the scale NaN or inf")
    f32 = np.float32
    hi, lo = f32(max(f32(0), x.max())), f32(min(f32(0), x.min()))
    if hi == lo:
        scale = f32(1.0) if mode == "onnxruntime" else f32(1.0) / f32(255)
    else:
        with np.errstate(over="ignore"):
            scale = f32(hi - lo) / f32(255)
    if not math.isfinite(float(scale)):
        raise ValueError(f"x's range [{lo}, {hi}] overflows float32 (max - min)")
    zero = np.rint(min(max(f32(0) - lo / scale, f32(0)), f32(255)))
    zp = np.uint8(zero)
    y = requant.quantize_linear(x, scale, zp, qmin=0, qmax=255, mode=mode)
    return y.astype(np.uint8), np.array(scale, np.float32), np.array(zp, np.uint8)


# ------------------------------------------------------------------ integer accumulators


def _shifted_weight(w, zw):
    """(w - 128, zw - 128) for uint8 weights, (w, zw) for int8, as int64: |w| <= 128 for exact_matmul;
    the differences w - zw are unchanged."""
    if w.dtype == np.uint8:
        return w.astype(np.int64) - 128, zw.astype(np.int64) - 128
    return w.astype(np.int64), zw.astype(np.int64)


def _check_pairs(accumulate, mode, x, w):
    check_accumulate(accumulate, mode)
    if accumulate == "int16-pairs" and (x.dtype, w.dtype) != (np.dtype(np.uint8), np.dtype(np.int8)):
        raise ValueError(f"accumulate='int16-pairs' models the u8 x s8 kernels (VPMADDUBSW) only; {x.dtype.name} x "
                         f"{w.dtype.name} has no such model (onnxruntime measured exact): use 'exact'")
    return accumulate == "int16-pairs"


def _matmul_zero_point(name, z, operand, side):
    """A MatMulInteger zero point shaped to broadcast against its operand (…, M, K) or (…, K, N):
    a scalar (per tensor), 1-D per row of a (M,) or per column of b (N,) as ONNX's text says, or
    N-D with a unit K axis ([…, M, 1] / […, 1, N])."""
    if z.size == 1 and z.ndim <= 1:
        return z.reshape(())
    if operand.ndim < 2:
        raise ValueError(f"{name} must be a scalar for a 1-D operand, got shape {z.shape}")
    if side == "a":
        rows = operand.shape[-2]
        zz = z.reshape(rows, 1) if z.ndim == 1 and z.size == rows else z
        ok = zz.ndim >= 2 and zz.shape[-1] == 1
    else:
        cols = operand.shape[-1]
        zz = z.reshape(1, cols) if z.ndim == 1 and z.size == cols else z
        ok = zz.ndim >= 2 and zz.shape[-2] == 1
    try:
        ok = ok and np.broadcast_shapes(zz.shape, operand.shape) == operand.shape
    except ValueError:
        ok = False
    if not ok:
        what = "per row: (M,) or [..., M, 1]" if side == "a" else "per column: (N,) or [..., 1, N]"
        raise ValueError(f"{name} of shape {z.shape} must be a scalar or {what} for an operand of shape "
                         f"{operand.shape}")
    return zz


def _matmul_operands(a, b):
    a = check_int_tensor("a", a, EIGHT_BIT)
    b = check_int_tensor("b", b, EIGHT_BIT)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"a and b must be at least 1-D (numpy.matmul), got shapes {a.shape} and {b.shape}")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"a {a.shape} and b {b.shape}: the inner dimensions (K) differ")
    try:
        np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ValueError(f"a {a.shape} and b {b.shape}: the batch dimensions do not broadcast") from None
    return a, b, a2, b2


def _squeeze_matmul(y, a, b):
    if b.ndim == 1:
        y = y[..., 0]
    if a.ndim == 1:
        y = y[..., 0, :] if b.ndim > 1 else y[..., 0]
    return y


def _matmul_acc(a2, b2, za, zb, pairs):
    """Exact (or int16-pair) int64 accumulator of (a - za) @ (b - zb), operands at least 2-D."""
    if not pairs:
        ac = a2.astype(np.float32) - za.astype(np.float32)  # |a - za| <= 255, exact
        bs, zbs = _shifted_weight(b2, zb)
        acc = exact_matmul(ac, bs.astype(np.float32))
        if np.any(zbs != 0):
            acc = acc - ac.astype(np.int64).sum(axis=-1, keepdims=True) * zbs
        return acc
    # raw u8 x s8 pairs saturated (zero points 0), then the zero points exactly through
    # row and column sums, as the kernels apply them: raw - zb sum_k a - za sum_k b + K za zb
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    ab = np.broadcast_to(a2, batch + a2.shape[-2:])
    bb = np.broadcast_to(b2, batch + b2.shape[-2:])
    raw = np.empty(batch + (a2.shape[-2], b2.shape[-1]), np.int64)
    for idx in np.ndindex(*batch):
        raw[idx] = int16_pairs_accumulate(ab[idx], bb[idx].astype(np.int64), a_zero_point=0)
    k = a2.shape[-1]
    za64, zb64 = za.astype(np.int64), zb.astype(np.int64)
    return (raw - zb64 * ab.astype(np.int64).sum(axis=-1, keepdims=True)
            - za64 * bb.astype(np.int64).sum(axis=-2, keepdims=True) + k * za64 * zb64)


def matmul_integer(a, b, a_zero_point=None, b_zero_point=None, *, accumulate="exact"):
    """ONNX MatMulInteger: ``y = (a - a_zero_point) @ (b - b_zero_point)`` in int32, as numpy.matmul.

    Dtypes: a, b uint8 or int8, each zero point its operand's dtype (None: 0); int32 out.
    Zero points: a scalar, per row of a ((M,) or [..., M, 1]) and per column of b
    ((N,) or [..., 1, N]), as ONNX's text describes them.
    # NOTE: onnxruntime accepts only a per-tensor a_zero_point; the evaluator broadcasts
    # a 1-D a_zero_point along K (numpy rules), not per row.
    Arithmetic: exact integer sums (module docstring), wrapped to int32.
    ``accumulate="int16-pairs"`` (uint8 a, int8 b only): adjacent products along K
    summed in saturating int16 first, as onnxruntime's MatMulInteger on AVX2 without VNNI.
    """
    a, b, a2, b2 = _matmul_operands(a, b)
    pairs = _check_pairs(accumulate, "onnxruntime", a, b)
    za = _matmul_zero_point("a_zero_point", check_zero_point("a_zero_point", a_zero_point, a.dtype, "a"), a2, "a")
    zb = _matmul_zero_point("b_zero_point", check_zero_point("b_zero_point", b_zero_point, b.dtype, "b"), b2, "b")
    acc = _matmul_acc(a2, b2, za, zb, pairs)
    return _squeeze_matmul(acc.astype(np.int32), a, b)  # astype wraps modulo 2**32


# --------------------------------------------------------------------- convolutions


def _pair(name, value, n, default):
    if value is None:
        return (default,) * n
    v = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if v is None or len(v) != n or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in v):
        raise ValueError(f"{name} must be a list of {n} ints, got {value!r}")
    return tuple(int(i) for i in v)


def _conv_geometry(x, w, strides, pads, dilations, group, auto_pad, kernel_shape):
    """Validated 2-D geometry: (x4, w4, strides, pads (top, left, bottom, right), dilations, group, squeeze).
    A 1-D conv (N, C, L) runs as a 2-D one over a unit height."""
    if x.ndim not in (3, 4) or w.ndim != x.ndim:
        raise ValueError(f"x and w must both be 4-D (N, C, H, W)/(M, C/group, KH, KW) or both 3-D (1-D conv), "
                         f"got shapes {x.shape} and {w.shape}")
    nd = x.ndim - 2
    if kernel_shape is not None and tuple(kernel_shape) != w.shape[2:]:
        raise ValueError(f"kernel_shape {list(kernel_shape)} differs from w's spatial shape {list(w.shape[2:])}")
    s = _pair("strides", strides, nd, 1)
    d = _pair("dilations", dilations, nd, 1)
    p = _pair("pads", pads, 2 * nd, 0)
    if min(s) < 1 or min(d) < 1 or min(p) < 0:
        raise ValueError(f"strides and dilations must be >= 1 and pads >= 0, got {s}, {d}, {p}")
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    if auto_pad == "VALID":
        p = (0,) * (2 * nd)
    elif auto_pad != "NOTSET":  # output ceil(size / stride); the odd pixel at the end (UPPER) or start (LOWER)
        head, tail = [], []
        for i in range(nd):
            size, k = x.shape[2 + i], d[i] * (w.shape[2 + i] - 1) + 1
            total = max((-(-size // s[i]) - 1) * s[i] + k - size, 0)
            first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            head.append(first)
            tail.append(total - first)
        p = tuple(head + tail)
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(f"group must be an int >= 1, got {group!r}")
    g = int(group)
    if x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise ValueError(f"w {w.shape} with group={g} does not fit x {x.shape}: need C = C/group * group "
                         f"and M divisible by group")
    if nd == 1:
        x, w = x[:, :, None, :], w[:, :, None, :]
        s, d, p = (1, s[0]), (1, d[0]), (0, p[0], 0, p[1])
    for i in range(2):
        size = x.shape[2 + i] + p[i] + p[i + 2]
        if size < d[i] * (w.shape[2 + i] - 1) + 1:
            raise ValueError(f"kernel {w.shape[2:]} (dilations {d}) does not fit x {x.shape[2:]} with pads {p}")
    return x, w, s, p, d, g, nd == 1


def _pad(a, pads, value=0):
    t, le, b, r = pads
    if not any(pads):
        return a
    return np.pad(a, ((0, 0), (0, 0), (t, b), (le, r)), constant_values=value)


def _conv_acc(x, w, zx, zw, geo, pairs):
    """Conv accumulator (N, M, OH, OW) int64 of sum (x - zx)(w - zw[m]); padding holds zx (real 0).
    zw: () or (M,). pairs: the u8 x s8 int16-pair model in the NHWC im2col order (KH, KW, C)."""
    s, p, d, g = geo
    m = w.shape[0]
    xc = _pad(x.astype(np.float32) - np.float32(zx), p)  # padding 0 = code zx
    ws, zws = _shifted_weight(w, zw)
    if pairs:
        acc = conv2d_accumulate(_pad(x, p, int(zx)), w, x_zero_point=int(zx), stride=s, padding=0, dilation=d,
                                groups=g, accumulate="int16-pairs")
        zws = zw.astype(np.int64)
    else:
        acc = conv_gemm(xc, ws.astype(np.float32), stride=s, padding=0, dilation=d, groups=g, matmul=exact_matmul,
                        out_dtype=np.int64)
    if np.any(zws != 0):  # minus zw[m] times each window's sum of (x - zx), per group
        ones = np.ones((g, w.shape[1]) + w.shape[2:], np.float32)
        sums = conv_gemm(xc, ones, stride=s, padding=0, dilation=d, groups=g, matmul=exact_matmul,
                         out_dtype=np.int64)
        acc = acc - np.repeat(sums, m // g, axis=1) * np.broadcast_to(zws, (m,))[None, :, None, None]
    return acc


def _conv_zero_points(x, w, x_zero_point, w_zero_point):
    zx = per_tensor("x_zero_point", check_zero_point("x_zero_point", x_zero_point, x.dtype, "x"))
    zw = check_zero_point("w_zero_point", w_zero_point, w.dtype, "w")
    if zw.size == 1 and zw.ndim <= 1:
        zw = zw.reshape(())
    elif zw.ndim != 1 or zw.size != w.shape[0]:
        raise ValueError(f"w_zero_point must be a scalar or one per output channel ({w.shape[0]},), got {zw.shape}")
    return zx, zw


def conv_integer(x, w, x_zero_point=None, w_zero_point=None, *, strides=None, pads=None, dilations=None, group=1,
                 auto_pad="NOTSET", kernel_shape=None):
    """ONNX ConvInteger: ``y[n, m] = sum_{c, i, j} (x[n, c, ...] - x_zero_point) * (w[m, c, i, j] - w_zero_point[m])``.

    Shapes: x (N, C, H, W), w (M, C/group, KH, KW) -> (N, M, OH, OW) (or 3-D for a 1-D
    conv); padding holds x_zero_point (real 0). Attributes as ONNX (strides, pads
    [top, left, bottom, right], dilations default 1, 0, 1; auto_pad).
    Dtypes: x, w uint8 or int8; x_zero_point scalar, w_zero_point scalar or per output
    channel (M,) (# NOTE: onnxruntime refuses a per-channel w_zero_point here), each of its
    tensor's dtype; int32 out. Arithmetic: exact integer sums wrapped to int32
    (onnxruntime's ConvInteger is exact on every CPU measured, u8 x s8 included).
    """
    x = check_int_tensor("x", x, EIGHT_BIT)
    w = check_int_tensor("w", w, EIGHT_BIT)
    x4, w4, s, p, d, g, squeeze = _conv_geometry(x, w, strides, pads, dilations, group, auto_pad, kernel_shape)
    zx, zw = _conv_zero_points(x, w, x_zero_point, w_zero_point)
    acc = _conv_acc(x4, w4, zx, zw, (s, p, d, g), pairs=False).astype(np.int32)
    return acc[:, :, 0, :] if squeeze else acc


def _requantize(acc, m, zy, dtype, mode, axis):
    """requant.requantize with qmin/qmax of ``dtype``; a multiplier that varies along more than one
    axis goes element by element (a raveled acc is one axis)."""
    qmin, qmax = QUANT_RANGES[dtype]
    kw = dict(zero_point=int(zy), qmin=qmin, qmax=qmax, mode=mode)
    m = np.asarray(m)
    if m.ndim > 1 and m.size == m.shape[axis]:  # one axis varies: per channel (conv) or per column (matmul)
        m = m.reshape(-1)
    if m.size == 1:
        y = requant.requantize(acc, multiplier=m.reshape(()), axis=axis, **kw)
    elif m.ndim == 1:
        y = requant.requantize(acc, multiplier=m, axis=axis, **kw)
    else:
        y = requant.requantize(acc.ravel(), multiplier=np.broadcast_to(m, acc.shape).ravel(), axis=0,
                               **kw).reshape(acc.shape)
    return y.astype(dtype)


def _multiplier(s_x, s_w, s_y, mode):
    """M = s_x s_w / s_y as the mode's backend computes it: requant.effective_multiplier (float32, or
    float64 for the TFLite modes), except the evaluator on float16 scales, which stays in float16."""
    if mode == "onnx-reference" and np.result_type(s_x, s_w, s_y) == np.float16:
        return (s_x * s_w) / s_y
    return requant.effective_multiplier(s_x, s_w, s_y, mode=mode)


def _output_zero_point(y_zero_point):
    if not is_typed(y_zero_point) or np.asarray(y_zero_point).dtype not in EIGHT_BIT:
        got = np.asarray(y_zero_point).dtype if is_typed(y_zero_point) else type(y_zero_point).__name__
        raise TypeError(f"y_zero_point must be a uint8 or int8 NumPy scalar or array (it sets y's dtype), got {got}")
    return per_tensor("y_zero_point", np.asarray(y_zero_point))


def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None, *,
                 strides=None, pads=None, dilations=None, group=1, auto_pad="NOTSET", kernel_shape=None,
                 mode="onnxruntime", accumulate="exact"):
    """ONNX QLinearConv: ``y = saturate(requant(acc + bias, M) + y_zero_point)``, M = s_x s_w[m] / s_y.

    acc is conv_integer's accumulator (any x/w zero points, padding = x_zero_point), bias
    int32 (M,) added in int32. Dtypes: x, w uint8 or int8, zero points their tensor's
    dtype; scales float32 (x_scale, y_scale per tensor; w_scale and w_zero_point per tensor
    or per output channel); y has y_zero_point's dtype (uint8 or int8).
    Arithmetic by ``mode`` (requant.effective_multiplier, then requant.requantize):
      onnxruntime     M = float32(float32(s_x s_w) / s_y); float32(acc) * M in float32,
                      clamp to [qmin - z_y, qmax - z_y], round half even, + z_y
      onnx-reference  same M; float64(acc) * M + z_y, clip, round half even (the zero
                      point before rounding: ties can land one code apart)
      tflite, tflite-single, fbgemm   as requant (fbgemm: the int32 bias, no float bias)
    ``accumulate``: "exact", or "int16-pairs" for uint8 x and int8 w only: adjacent u8*s8
    products along K in the (KH, KW, C) order saturate in int16 (onnxruntime's and FBGEMM's
    kernels on AVX2 without VNNI); with mode onnxruntime a depthwise conv (one input and one
    output channel per group) stays exact, as ORT's depthwise kernel is.
    """
    check_mode(mode)
    x = check_int_tensor("x", x, EIGHT_BIT)
    w = check_int_tensor("w", w, EIGHT_BIT)
    pairs = _check_pairs(accumulate, mode, x, w)
    x4, w4, s, p, d, g, squeeze = _conv_geometry(x, w, strides, pads, dilations, group, auto_pad, kernel_shape)
    zx, zw = _conv_zero_points(x, w, x_zero_point, w_zero_point)
    zy = _output_zero_point(y_zero_point)
    sx = per_tensor("x_scale", check_scale("x_scale", x_scale, (np.dtype(np.float32),)))
    sy = per_tensor("y_scale", check_scale("y_scale", y_scale, (np.dtype(np.float32),)))
    sw = check_scale("w_scale", w_scale, (np.dtype(np.float32),))
    if sw.size == 1 and sw.ndim <= 1:
        sw = sw.reshape(())
    elif sw.ndim != 1 or sw.size != w.shape[0]:
        raise ValueError(f"w_scale must be a scalar or one per output channel ({w.shape[0]},), got {sw.shape}")
    if pairs and mode == "onnxruntime" and w.shape[1] == 1 and w.shape[0] == g:
        pairs = False  # ORT's depthwise kernel widens before summing
    acc = _conv_acc(x4, w4, zx, zw, (s, p, d, g), pairs)
    if bias is not None:
        b = check_int_tensor("bias", bias, (np.dtype(np.int32),))
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},) (one per output channel), got {b.shape}")
        acc = acc + b.astype(np.int64)[None, :, None, None]
    acc = acc.astype(np.int32).astype(np.int64)  # the int32 accumulator (wraps)
    y = _requantize(acc, _multiplier(sx, sw, sy, mode), zy, zy.dtype, mode, axis=1)
    return y[:, :, 0, :] if squeeze else y


def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *,
                   mode="onnxruntime", accumulate="exact"):
    """ONNX QLinearMatMul: ``y = saturate(requant((a - z_a) @ (b - z_b), M) + y_zero_point)``, M = s_a s_b / s_y.

    Shapes as numpy.matmul. Dtypes: a, b uint8 or int8 (zero points their dtype); scales
    all float32 or all float16; y has y_zero_point's dtype. a's scale and zero point per
    tensor or per row, b's per tensor or per column (shapes as matmul_integer's zero
    points), y's per tensor. (# NOTE: onnxruntime accepts only a per-tensor a.)
    Arithmetic: matmul_integer's accumulator (int32), then as qlinear_conv by ``mode``.
    Float16 scales: onnxruntime widens them to float32 and computes M as for float32;
    the evaluator computes M = float16(float16(s_a s_b) / s_y) in float16 ("onnx-reference").
    ``accumulate``: as qlinear_conv ("int16-pairs": uint8 a, int8 b; K in order).
    """
    check_mode(mode)
    a, b, a2, b2 = _matmul_operands(a, b)
    pairs = _check_pairs(accumulate, mode, a, b)
    za = _matmul_zero_point("a_zero_point", check_zero_point("a_zero_point", a_zero_point, a.dtype, "a"), a2, "a")
    zb = _matmul_zero_point("b_zero_point", check_zero_point("b_zero_point", b_zero_point, b.dtype, "b"), b2, "b")
    zy = _output_zero_point(y_zero_point)
    sa, sb, sy = (check_scale(n, v) for n, v in (("a_scale", a_scale), ("b_scale", b_scale), ("y_scale", y_scale)))
    if len({sa.dtype, sb.dtype, sy.dtype}) != 1:
        raise TypeError(f"a_scale, b_scale and y_scale must have one dtype, got {sa.dtype}, {sb.dtype}, {sy.dtype}")
    sa = _matmul_zero_point("a_scale", sa, a2, "a")
    sb = _matmul_zero_point("b_scale", sb, b2, "b")
    sy = per_tensor("y_scale", sy)
    acc = _matmul_acc(a2, b2, za, zb, pairs).astype(np.int32).astype(np.int64)
    y = _requantize(acc, _multiplier(sa, sb, sy, mode), zy, zy.dtype, mode, axis=-1)
    return _squeeze_matmul(y, a, b)


# ============================================================================ oracles
#
# One output element at a time, Python ints for the sums and NumPy scalars for each
# float operation, sharing no code with the functions above (the per-element
# requantization of the TFLite and fbgemm modes calls requant.requantize on one
# accumulator: those are checked against exact rational arithmetic in test_requant.py).


def _f(dtype, v):
    return np.dtype(dtype).type(v)


def _rne(v):
    return int(round(float(v)))  # Python's round of a float rounds half to even


def _param_at(p, idx, shape, axis, block_size):
    """The per-tensor / per-axis / blocked parameter that applies at x[idx]."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(-1)[0]
    ax = axis % len(shape)
    if not block_size:
        return p[idx[ax]]
    return p[idx[:ax] + (idx[ax] // block_size,) + idx[ax + 1:]]


def oracle_quantize_linear(x, y_scale, y_zero_point, *, dtype, axis=1, block_size=0, mode="onnxruntime"):
    """QuantizeLinear per element (modes onnxruntime and onnx-reference)."""
    qmin, qmax = QUANT_RANGES[np.dtype(dtype)]
    x, s = np.asarray(x), np.asarray(y_scale)
    z = np.zeros((), dtype) if y_zero_point is None else np.asarray(y_zero_point)
    out = np.empty(x.shape, dtype)
    for idx in np.ndindex(*x.shape):
        xv, sv, zv = x[idx], _param_at(s, idx, x.shape, axis, block_size), int(_param_at(z, idx, x.shape, axis,
                                                                                           block_size))
        with np.errstate(all="ignore"):
            if mode == "onnxruntime":
                q = _f(np.float32, xv) / _f(np.float32, sv)
                v = float(qmin - zv) if math.isnan(q) else min(max(float(q), qmin - zv), qmax - zv)
                out[idx] = _rne(v) + zv
            else:
                q = xv / sv  # the evaluator's NumPy type
                r = -(2**31) if not math.isfinite(q) or abs(_rne(q)) >= 2**31 else _rne(q)
                out[idx] = min(max((r + zv + 2**31) % 2**32 - 2**31, qmin), qmax)
    return out


def oracle_dequantize_linear(x, x_scale, x_zero_point, *, axis=1, block_size=0, output_dtype=None):
    """DequantizeLinear per element: float32(float32(x - z) * float32(s)), then y's dtype."""
    x, s = np.asarray(x), np.asarray(x_scale)
    z = np.zeros((), x.dtype) if x_zero_point is None else np.asarray(x_zero_point)
    out = np.empty(x.shape, output_dtype or s.dtype)
    for idx in np.ndindex(*x.shape):
        d = int(x[idx]) - int(_param_at(z, idx, x.shape, axis, block_size))
        out[idx] = _f(np.float32, d) * _f(np.float32, _param_at(s, idx, x.shape, axis, block_size))
    return out


def oracle_dynamic_quantize_linear(x, *, mode="onnxruntime"):
    """DynamicQuantizeLinear with a plain loop for min/max and float32 scalars for every step."""
    f32 = np.float32
    hi = lo = f32(0)
    for v in np.asarray(x).ravel():
        hi, lo = (v if v > hi else hi), (v if v < lo else lo)
    scale = (f32(hi - lo) / f32(255)) if hi != lo else (f32(1) if mode == "onnxruntime" else f32(1) / f32(255))
    zp = _rne(min(max(f32(f32(0) - lo / scale), f32(0)), f32(255)))
    y = np.array([min(max(_rne(f32(v) / scale) + zp, 0), 255) for v in np.asarray(x).ravel()], np.uint8)
    return y.reshape(np.shape(x)), f32(scale), np.uint8(zp)


def _pairs_sum(products):
    products = list(products) + [0] * (len(products) % 2)
    return sum(min(max(products[i] + products[i + 1], -(2**15)), 2**15 - 1) for i in range(0, len(products), 2))


def oracle_matmul_acc(a, b, a_zero_point, b_zero_point, *, pairs=False):
    """(a - za) @ (b - zb) for 2-D a (M, K), b (K, N) in Python ints; za scalar or (M,) rows,
    zb scalar or (N,) columns. pairs: raw products of adjacent k saturate in int16, then
    raw - zb sum a - za sum b + K za zb."""
    m, k = a.shape
    n = b.shape[1]
    za = np.broadcast_to(np.asarray(a_zero_point, np.int64).reshape(-1), (m,))
    zb = np.broadcast_to(np.asarray(b_zero_point, np.int64).reshape(-1), (n,))
    out = np.zeros((m, n), np.int64)
    for i in range(m):
        for j in range(n):
            if pairs:
                raw = _pairs_sum([int(a[i, t]) * int(b[t, j]) for t in range(k)])
                total = (raw - int(zb[j]) * sum(int(v) for v in a[i]) - int(za[i]) * sum(int(b[t, j]) for t in range(k))
                         + k * int(za[i]) * int(zb[j]))
            else:
                total = sum((int(a[i, t]) - int(za[i])) * (int(b[t, j]) - int(zb[j])) for t in range(k))
            out[i, j] = (total + 2**31) % 2**32 - 2**31
    return out


def oracle_conv_acc(x, w, x_zero_point, w_zero_point, *, strides, pads, dilations, group, pairs=False):
    """Conv accumulator (N, M, OH, OW), Python ints, one element at a time; pads (top, left, bottom,
    right) hold zx. pairs: raw products in (KH, KW, C) order, adjacent pairs saturated to int16."""
    zx = int(x_zero_point)
    n_, c_, h_, w_ = x.shape
    m_, cg, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = strides, pads, dilations
    oh_ = (h_ + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow_ = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
    zw = np.broadcast_to(np.asarray(w_zero_point, np.int64).reshape(-1), (m_,))
    out = np.zeros((n_, m_, oh_, ow_), np.int64)
    for n in range(n_):
        for m in range(m_):
            g = m // (m_ // group)
            for oh in range(oh_):
                for ow in range(ow_):
                    xs, ws = [], []
                    for i in range(kh):
                        for j in range(kw):
                            for c in range(cg):
                                h, v = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                xs.append(int(x[n, g * cg + c, h, v]) if 0 <= h < h_ and 0 <= v < w_ else zx)
                                ws.append(int(w[m, c, i, j]))
                    if pairs:
                        total = (_pairs_sum([p * q for p, q in zip(xs, ws)]) - int(zw[m]) * sum(xs)
                                 - zx * sum(ws) + len(xs) * zx * int(zw[m]))
                    else:
                        total = sum((p - zx) * (q - int(zw[m])) for p, q in zip(xs, ws))
                    out[n, m, oh, ow] = (total + 2**31) % 2**32 - 2**31
    return out


def oracle_requantize(acc, multiplier, y_zero_point, *, dtype, mode):
    """Per element: onnxruntime and onnx-reference restated with NumPy scalars; the other modes
    call requant.requantize on each accumulator. multiplier broadcasts to acc."""
    qmin, qmax = QUANT_RANGES[np.dtype(dtype)]
    zy = int(y_zero_point)
    m = np.broadcast_to(np.asarray(multiplier), acc.shape)
    out = np.empty(acc.shape, dtype)
    for idx in np.ndindex(*acc.shape):
        a, mm = int(acc[idx]), m[idx]
        if mode == "onnxruntime":
            v = _f(np.float32, a) * _f(np.float32, mm)
            out[idx] = _rne(min(max(float(v), qmin - zy), qmax - zy)) + zy
        elif mode == "onnx-reference":
            out[idx] = _rne(min(max(float(a) * float(mm) + zy, qmin), qmax))
        else:
            out[idx] = requant.requantize(np.int64(a), multiplier=float(mm), zero_point=zy, qmin=qmin, qmax=qmax,
                                          mode=mode)
    return out


def oracle_multiplier(s_x, s_w, s_y, *, mode):
    """M per element with NumPy scalars: float32(float32(s_x s_w) / s_y) (float16 throughout for the
    evaluator on float16 scales; float64 for the TFLite modes)."""
    s_x, s_w, s_y = np.asarray(s_x), np.asarray(s_w), np.asarray(s_y)
    shape = np.broadcast_shapes(s_x.shape, s_w.shape, s_y.shape)
    t = np.float16 if mode == "onnx-reference" and s_x.dtype == np.float16 else np.float32
    out = np.empty(shape, np.float64)
    for idx in np.ndindex(*shape):
        vx, vw, vy = (np.broadcast_to(v, shape)[idx] for v in (s_x, s_w, s_y))
        if mode.startswith("tflite"):
            out[idx] = float(np.float32(vx)) * float(np.float32(vw)) / float(np.float32(vy))
        else:
            out[idx] = float(_f(t, _f(t, _f(t, vx) * _f(t, vw)) / _f(t, vy)))
    return out
