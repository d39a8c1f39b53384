"""Integer requantization and float<->int quantization, one named mode per backend.

A quantized conv or matmul ends with an int32 accumulator ``acc`` (bias
included) and must turn it into an 8-bit output
``y = clamp(requant(acc) + z_y, qmin, qmax)`` with ``M = s_x * s_w / s_y``.
Backends disagree on the last bit of ``requant`` (docs/backends.md, the
source of every fact below), so each backend's arithmetic is a mode:

    onnxruntime     float32(acc) * float32(M), clamp, round half even, + z_y
    onnx-reference  float64(acc) * M + z_y, round half even (zero point first)
    tflite          QuantizeMultiplier, SaturatingRoundingDoublingHighMul,
                    RoundingDivideByPOT ("double rounding"), + z_y
    tflite-single   QuantizeMultiplier, one rounding shift (TFLITE_SINGLE_ROUNDING)
    fbgemm          float32 like onnxruntime; PyTorch's float bias is added in
                    float32 (``requant_fbgemm(bias=...)``)

Conventions: accumulators are integer arrays holding int32 values (held as
int64 so that no intermediate step overflows silently); outputs are int64
arrays holding values in [qmin, qmax] (cast them with ``.astype(np.uint8)``).
A multiplier is a scalar (per tensor) or a 1-D array broadcast along ``axis``
of ``acc`` (per output channel; axis 1 for NCHW and for (rows, N) matmuls).
Where C++ has undefined behaviour (int32 overflow, float->int of NaN), sqref
does what x86-64 hardware does and says so in a ``# NOTE:``.

Oracles: tests/test_requant.py checks every mode against exact rational
arithmetic (``fractions.Fraction``) and the docs/backends.md disagreement cases;
tests/test_backend_*.py check them bit for bit against onnxruntime, the ONNX
reference evaluator and PyTorch/fbgemm.
"""
from __future__ import annotations

import math

import numpy as np

from sqref.quant import round_half_away

MODES = ("onnxruntime", "onnx-reference", "tflite", "tflite-single", "fbgemm")
QUANTIZE_MODES = ("onnxruntime", "onnx-reference", "tflite", "fbgemm")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------- helpers


def _int32_values(x, name):
    """x as an int64 array, checked to hold int32 values (what backends hold)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and (a.min() < INT32_MIN or a.max() > INT32_MAX):
        bad = a[(a < INT32_MIN) | (a > INT32_MAX)]
        raise ValueError(f"{name} must hold int32 values; got {bad[:5].tolist()} outside [-2**31, 2**31 - 1]")
    return a


def wrap_int32(x):
    """Two's-complement int32 wraparound of an int64 array (what x86 `add`/`shl` do)."""
    return ((np.asarray(x, np.int64) + 2**31) & (2**32 - 1)) - 2**31


def _along(param, ndim, axis, size, name):
    """A scalar or per-channel parameter, shaped to broadcast along `axis`."""
    p = np.asarray(param)
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    if p.ndim != 1:
        raise ValueError(f"{name} must be a scalar or 1-D per-channel array, got shape {p.shape}")
    if ndim == 0 or not -ndim <= axis < ndim or size[axis] != p.size:
        raise ValueError(f"{name} has {p.size} channels but the input has shape {tuple(size)} (axis={axis})")
    shape = [1] * ndim
    shape[axis] = p.size
    return p.reshape(shape)


def _check_range(zero_point, qmin, qmax):
    for name, v in (("zero_point", zero_point), ("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    if qmin > qmax:
        raise ValueError(f"qmin={qmin} > qmax={qmax}")
    return int(zero_point), int(qmin), int(qmax)


def _check_multiplier(multiplier):
    m = np.asarray(multiplier, dtype=np.float64)
    if m.ndim == 0:  # the common per-tensor case, checked without array reductions
        if not (math.isfinite(float(m)) and float(m) >= 0):
            raise ValueError(f"multiplier must be finite and >= 0, got {[float(m)]}")
        return m
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"multiplier must be finite and >= 0, got {m.ravel()[:5].tolist()}")
    return m


def fma_float32(a, b, c):
    """``float32(a * b + c)`` rounded once, as an FMA instruction (VFMADD), for float32 inputs.

    a * b is exact in float64 (two 24-bit significands); the float64 sum may
    round, so TwoSum recovers its error and a sum landing exactly on a float32
    midpoint is sent the way the error points (no double rounding).
    """
    a64, b64, c64 = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    with np.errstate(over="ignore", invalid="ignore"):
        p = a64 * b64
        s = p + c64
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)  # p + c == s + err exactly (TwoSum)
        r = s.astype(np.float32)
        r64 = r.astype(np.float64)
        toward = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf))).astype(np.float64)
        at_midpoint = (s != r64) & (s == (r64 + toward) / 2) & (err != 0) & np.isfinite(s)
        fix = at_midpoint & ((err > 0) == (toward > r64))
    return np.where(fix, toward, r64).astype(np.float32)


def float_to_int32_x86(v):
    """Round-to-integer-valued floats -> int64, as x86 CVT(T)SS2SI: NaN/out of range -> INT32_MIN."""
    v = np.asarray(v, dtype=np.float64)
    bad = ~np.isfinite(v) | (v < INT32_MIN) | (v >= 2.0**31)
    return np.where(bad, INT32_MIN, np.where(bad, 0, v).astype(np.int64))


# ------------------------------------------------ TFLite / gemmlowp fixed point


def quantize_multiplier(multiplier, *, single_rounding=False):
    """Split a real multiplier into (M0, shift), as TFLite ``QuantizeMultiplier``.

    Shapes: ``multiplier`` scalar or any array; both outputs have its shape
    (0-d arrays for a scalar; use ``int()``).
    Dtypes: M0 int32 in [0, 2**31 - 1]; shift int64.
    Formula: ``q, e = frexp(M)`` (q in [0.5, 1)); ``M0 = round_half_away(q * 2**31)``;
    if M0 == 2**31 it is halved and e incremented; ``M ~= M0 * 2**(e - 31)``.
    ``M == 0`` and ``e < -31`` give (0, 0): TFLite flushes tiny multipliers to
    zero. The threshold is M < 2**-32 (docs/backends.md's "2**-31" is approximate:
    M = 2**-32 gives (2**30, -31)); such an M cannot change an int32 result.
    With ``single_rounding`` (TFLITE_SINGLE_ROUNDING), ``e > 30`` saturates to
    (2**31 - 1, 30).
    Oracle: tensorflow ``lite/kernels/internal/quantization_util.cc``.
    """
    m = _check_multiplier(multiplier)
    q, e = np.frexp(m)  # same contract as C frexp: q in [0.5, 1), e int
    e = e.astype(np.int64)
    m0 = round_half_away(q * 2.0**31).astype(np.int64)  # q * 2**31 is exact
    carry = m0 == 2**31
    m0 = np.where(carry, m0 // 2, m0)
    e = np.where(carry, e + 1, e)
    flush = (m == 0) | (e < -31)
    m0 = np.where(flush, 0, m0)
    e = np.where(flush, 0, e)
    if single_rounding:
        sat = e > 30
        m0 = np.where(sat, 2**31 - 1, m0)
        e = np.where(sat, 30, e)
    return m0.astype(np.int32), e


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` of int32 arrays.

    Shapes: a, b broadcast. Dtypes: int32 values in, int64 array of int32 values out.
    Formula: ``floor((a * b + 2**30) / 2**31)`` (ties toward +inf), computed as
    gemmlowp does: nudge 2**30 (or 1 - 2**30 when a*b < 0), then C division
    truncating toward zero. The one overflow, INT32_MIN * INT32_MIN, saturates
    to INT32_MAX.
    Oracle: gemmlowp ``fixedpoint/fixedpoint.h``; tests re-state it with Python ints.
    """
    a = _int32_values(a, "a")
    b = _int32_values(b, "b")
    overflow = (a == b) & (a == INT32_MIN)
    ab = a * b  # |a*b| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 2**30, 1 - 2**30)
    n = ab + nudge
    high = np.sign(n) * (np.abs(n) // 2**31)  # C++ '/' truncates toward zero
    return np.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: x / 2**exponent rounded half away from zero.

    Shapes: x and exponent broadcast. Dtypes: int32 values, exponent in [0, 31].
    Formula: ``(x >> e) + (x & mask > (mask >> 1) + (x < 0))``, mask = 2**e - 1,
    with an arithmetic shift.
    Oracle: gemmlowp ``fixedpoint/fixedpoint.h``.
    """
    x = _int32_values(x, "x")
    e = np.asarray(exponent, dtype=np.int64)
    if e.size and (e.min() < 0 or e.max() > 31):
        raise ValueError(f"exponent must be in [0, 31], got {np.unique(e)[:5].tolist()}")
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def multiply_by_quantized_multiplier(acc, m0, shift, *, single_rounding=False, overflow="wrap"):
    """``acc * M0 * 2**(shift - 31)`` rounded, as TFLite ``MultiplyByQuantizedMultiplier``.

    Shapes: acc, m0, shift broadcast. Dtypes: int32 values in, int64 array of int32 values out.
    Double rounding (default build, ``internal/common.h``):
        ``RDBPOT(SRDHM(acc * 2**max(shift, 0), M0), max(-shift, 0))``
        i.e. round half up to Q31, then round half away from zero.
    Single rounding (``TFLITE_SINGLE_ROUNDING``, ``internal/common.cc``):
        ``(acc * M0 + 2**(30 - shift)) >> (31 - shift)`` in int64, round half up;
        shift must be in [-31, 30] (QuantizeMultiplier guarantees it).
    ``overflow``: the double-rounding left shift ``acc * 2**shift`` overflows
    int32 when M >= 1 and |acc| is large (M = 3 = 0.75 * 2**2: acc >= 2**29
    or acc < -2**29).
    # NOTE: that overflow is undefined behaviour in C++; "wrap" (default) does
    # what x86/ARM integer units do (two's complement), "raise" raises
    # ValueError naming the accumulators. Single rounding cannot overflow
    # before its final int32 cast, which wraps likewise.
    Oracle: tests re-state both with Python ints.
    """
    if overflow not in ("wrap", "raise"):
        raise ValueError(f"overflow must be 'wrap' or 'raise', got {overflow!r}")
    acc = _int32_values(acc, "acc")
    m0 = _int32_values(m0, "m0")
    shift = np.asarray(shift, dtype=np.int64)
    if single_rounding:
        if shift.size and (shift.min() < -31 or shift.max() > 30):
            raise ValueError(f"single rounding needs shift in [-31, 30], got {np.unique(shift)[:5].tolist()}")
        total = 31 - shift
        result = (acc * m0 + (np.int64(1) << (total - 1))) >> total
        return wrap_int32(result)
    left = np.maximum(shift, 0)
    if left.size and left.max() > 31:
        raise ValueError(f"shift must be <= 31 (M < 2**31), got {np.unique(left)[-3:].tolist()}")
    shifted = acc << left  # exact in int64: |acc| <= 2**31, left <= 31
    wrapped = wrap_int32(shifted)
    if overflow == "raise" and np.any(wrapped != shifted):
        bad = np.broadcast_to(acc, shifted.shape)[wrapped != shifted]
        raise ValueError(
            f"acc * 2**shift overflows int32 for acc={bad[:5].tolist()} (shift={np.unique(left).tolist()})"
        )
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(wrapped, m0), np.maximum(-shift, 0))


# ------------------------------------------------------------ requant modes


def requant_onnxruntime(acc, *, multiplier, zero_point, qmin, qmax, axis=1):
    """Requantize as onnxruntime's MLAS ``MlasRequantizeOutput`` (QLinearConv, QLinearMatMul).

    Shapes: acc any shape; multiplier scalar or per channel along ``axis``.
    Dtypes: int32 values in (bias included); int64 in [qmin, qmax] out.
    Formula: ``v = float32(acc) * float32(M)`` (M is held as float32; int32 ->
    float32 keeps 24 significant bits: acc = 2**24 + 1 becomes 2**24), clamp v to
    [qmin - zp, qmax - zp], round half to even, then add zp.
    Oracle: onnxruntime QLinearConv/QLinearMatMul (tests/test_backend_ort_ops.py).
    """
    acc = _int32_values(acc, "acc")
    zp, qmin, qmax = _check_range(zero_point, qmin, qmax)
    m = _along(_check_multiplier(multiplier), acc.ndim, axis, acc.shape, "multiplier").astype(np.float32)
    v = np.asarray(np.multiply(acc, m, dtype=np.float32))  # float32(acc) * float32(M): cast, one rounded product
    np.clip(v, np.float32(qmin - zp), np.float32(qmax - zp), out=v)  # max then min, in place
    return np.rint(v, out=v).astype(np.int64) + zp


def requant_onnxruntime_uint8(acc, *, bias, multiplier, zero_point, qmin, qmax, axis=1):
    """``requant_onnxruntime(acc + bias, ...).astype(np.uint8)``, the same codes in fewer passes.

    Shapes: acc any shape, WITHOUT the bias; bias (int32 values) and multiplier
    scalar or per channel along ``axis``. Dtypes: integer in; uint8 out, so
    0 <= qmin <= qmax <= 255.
    Bound: when max|acc| + max|bias| <= 2**24, acc, bias and every acc + bias
    are integers float32 holds exactly (and within int32), so one float32 add
    gives float32(acc + bias) with no rounding; otherwise acc + bias is summed
    in int64, checked to hold int32 values and cast (rounded once, as MLAS's
    int32 -> float32 conversion). Then, in place on that one float32 array:
    ``* float32(M)``, clamp to [qmin - zp, qmax - zp], round half even, and
    ``+ zp`` with the cast to uint8 (the rounded values are integers in
    [qmin, qmax]: exact). Oracle: requant_onnxruntime (tests/test_integer.py,
    the golden files).
    """
    zp, qmin, qmax = _check_range(zero_point, qmin, qmax)
    if qmin < 0 or qmax > 255:
        raise ValueError(f"uint8 codes need 0 <= qmin <= qmax <= 255, got qmin={qmin}, qmax={qmax}")
    acc = np.asarray(acc)
    if acc.dtype.kind not in "iu":
        raise TypeError(f"acc must be an integer array, got dtype {acc.dtype}")
    b = _along(_int32_values(bias, "bias"), acc.ndim, axis, acc.shape, "bias")
    m = _along(_check_multiplier(multiplier), acc.ndim, axis, acc.shape, "multiplier").astype(np.float32)
    acc_max = max(-int(acc.min()), int(acc.max())) if acc.size else 0
    if acc_max + (int(np.abs(b).max()) if b.size else 0) <= 2**24:
        v = np.asarray(np.add(acc, b, dtype=np.float32))  # exact: all integers of magnitude <= 2**24
    else:
        v = np.asarray(_int32_values(np.add(acc, b, dtype=np.int64), "acc").astype(np.float32))
    v *= m  # float32 product, rounded once
    np.clip(v, np.float32(qmin - zp), np.float32(qmax - zp), out=v)
    np.rint(v, out=v)
    return np.add(v, np.float32(zp), out=np.empty(v.shape, np.uint8), casting="unsafe")


def requant_onnx_reference(acc, *, multiplier, zero_point, qmin, qmax, axis=1):
    """Requantize as the ONNX reference evaluator (``op_qlinear_conv.py``, ``op_qlinear_matmul.py``).

    Shapes/dtypes as ``requant_onnxruntime``.
    Formula: ``r = float64(acc) * float64(M) + zp``, clip to [qmin, qmax], round
    half to even. The zero point is added BEFORE rounding, so a tie rounds to
    the even *output*: acc=5, M=0.5, zp=1 gives 4 where onnxruntime gives 3.
    M is used as given: the evaluator computes it from float32 scales in
    float32 (``effective_multiplier(mode="onnx-reference")``).
    Oracle: ``onnx.reference.ReferenceEvaluator``.
    """
    acc = _int32_values(acc, "acc")
    zp, qmin, qmax = _check_range(zero_point, qmin, qmax)
    m = _along(_check_multiplier(multiplier), acc.ndim, axis, acc.shape, "multiplier")
    r = acc.astype(np.float64) * m + zp
    return np.rint(np.clip(r, qmin, qmax)).astype(np.int64)


def requant_tflite(acc, *, multiplier, zero_point, qmin, qmax, axis=1, overflow="wrap"):
    """Requantize as TFLite's int8 reference conv/FC (default build, double rounding).

    Shapes/dtypes as ``requant_onnxruntime``.
    Formula: ``(M0, shift) = QuantizeMultiplier(float64 M)``;
    ``clamp(MultiplyByQuantizedMultiplier(acc, M0, shift) + zp, qmin, qmax)``.
    Ties: SRDHM rounds half up, RDBPOT half away: acc=-2, M=0.25 gives -1.
    M >= 1 may overflow int32 (see ``multiply_by_quantized_multiplier``);
    M < 2**-32 is flushed to 0 (see ``quantize_multiplier``).
    Oracle: tensorflow ``reference/integer_ops/conv.h``; a Python-int re-statement.
    """
    acc = _int32_values(acc, "acc")
    zp, qmin, qmax = _check_range(zero_point, qmin, qmax)
    m0, shift = quantize_multiplier(_along(_check_multiplier(multiplier), acc.ndim, axis, acc.shape, "multiplier"))
    y = multiply_by_quantized_multiplier(acc, m0, shift, overflow=overflow)
    return np.clip(y + zp, qmin, qmax)


def requant_tflite_single(acc, *, multiplier, zero_point, qmin, qmax, axis=1):
    """Requantize as TFLite built with ``TFLITE_SINGLE_ROUNDING`` (one rounding, half up).

    Shapes/dtypes as ``requant_onnxruntime``.
    Formula: ``(M0, shift) = QuantizeMultiplier(M)`` (shift saturated at 30),
    ``clamp(((acc * M0 + 2**(30 - shift)) >> (31 - shift)) + zp, qmin, qmax)``.
    acc=-2, M=0.25: -0.5 rounds up to 0 (double rounding gives -1).
    Oracle: tensorflow ``lite/kernels/internal/common.cc``; a Python-int re-statement.
    """
    acc = _int32_values(acc, "acc")
    zp, qmin, qmax = _check_range(zero_point, qmin, qmax)
    m = _along(_check_multiplier(multiplier), acc.ndim, axis, acc.shape, "multiplier")
    m0, shift = quantize_multiplier(m, single_rounding=True)
    y = multiply_by_quantized_multiplier(acc, m0, shift, single_rounding=True)
    return np.clip(y + zp, qmin, qmax)


def requant_fbgemm(acc, *, multiplier, zero_point, qmin, qmax, axis=1, bias=None, act_times_w_scale=None):
    """Requantize as FBGEMM ``ReQuantizeOutput`` under PyTorch quantized linear/conv (AVX2).

    Shapes: acc any shape; multiplier, bias, act_times_w_scale scalar or per
    channel along ``axis``. Dtypes: int32 values in, int64 in [qmin, qmax] out.
    Integer bias (``bias=None``; acc includes it): ``v = float32(acc) * float32(M)``.
    Float bias (PyTorch; ``acc`` WITHOUT bias, ``bias`` float32,
    ``act_times_w_scale = float32(s_x) * float32(s_w)``, all float32 steps):
        per tensor   b = bias * float32(1 / act_times_w_scale)   (reciprocal multiply)
        per channel  b = bias / act_times_w_scale[c]             (division)
        ``v = (float32(acc) + b) * float32(M)``
    Then ``y = clamp(rne(v) + zp, qmin, qmax)`` (rounding before the zero point,
    like onnxruntime). qmin = zp models the fused ReLU.
    # NOTE: CVTPS2DQ turns |v| >= 2**31 (possible only with M >= 1 or a huge
    # float bias) into INT32_MIN, which then clamps to qmin; modelled as such.
    Oracle: FBGEMM ``src/QuantUtilsAvx2.cc`` ``requantizeOutputProcessingAvx2``;
    torch.ops.quantized.linear/conv2d (tests/test_backend_torch_ops.py).
    """
    acc = _int32_values(acc, "acc")
    zp, qmin, qmax = _check_range(zero_point, qmin, qmax)
    m = _along(_check_multiplier(multiplier), acc.ndim, axis, acc.shape, "multiplier").astype(np.float32)
    raw = acc.astype(np.float32)
    if bias is not None:
        if act_times_w_scale is None:
            raise ValueError("a float bias needs act_times_w_scale = float32(s_x) * float32(s_w)")
        b = _along(np.asarray(bias, np.float32), acc.ndim, axis, acc.shape, "bias")
        s = _along(np.asarray(act_times_w_scale, np.float32), acc.ndim, axis, acc.shape, "act_times_w_scale")
        if s.ndim == 0:  # QuantizationGranularity::TENSOR: broadcast reciprocal
            b = b * (np.float32(1.0) / s)
        else:  # OUT_CHANNEL: per-channel division
            b = b / s
        raw = raw + b.astype(np.float32)
    v = raw * m
    r = float_to_int32_x86(np.rint(v))
    return np.clip(r + zp, qmin, qmax)


# ----------------------------------------------------------------------------- measured TFLite kernels


def requant_tflite_ruy(acc, *, multiplier, zero_point, qmin, qmax, axis=1):
    """Requantize as TFLite's optimized int8 CONV_2D / FULLY_CONNECTED (ruy) on x86-64, measured.

    Formula: (M0, shift) = QuantizeMultiplier(M); x = SRDHM(acc * 2**max(shift, 0), M0)
    (round half up to Q31, as "tflite"); then a rounding right shift by -shift that
    rounds half UP: (x + 2**(r - 1)) >> r, where "tflite"'s RoundingDivideByPOT rounds
    half away from zero; + zero point, clamp.
    # NOTE: not one of MODES: the model of a measured deviation (tests/test_backend_tflite.py).
    """
    acc = np.asarray(acc, np.int64)
    m = _along(np.asarray(multiplier, np.float64), acc.ndim, axis, acc.shape, "multiplier")
    m0, shift = quantize_multiplier(m)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    x = saturating_rounding_doubling_high_mul(wrap_int32(acc << left), m0)
    y = (x + ((np.int64(1) << right) >> 1)) >> right
    return np.clip(y + int(zero_point), qmin, qmax)


def requant_tflite_single_away(acc, *, multiplier, zero_point, qmin, qmax, axis=1):
    """Requantize as TFLite's reference int8 FULLY_CONNECTED (BUILTIN_REF) on x86-64, measured.

    Formula: (M0, shift) = QuantizeMultiplier(M); y = round_half_away(acc * M0 / 2**(31 - shift)),
    exact in int64; + zero point, clamp. One rounding like "tflite-single", but ties go
    away from zero: acc = -18, M = 0.25 gives -5 (tflite-single -4; tflite -5; onnxruntime -4).
    # NOTE: not one of MODES; it matched every drawn case (tests/test_backend_tflite.py).
    """
    acc = np.asarray(acc, np.int64)
    m = _along(np.asarray(multiplier, np.float64), acc.ndim, axis, acc.shape, "multiplier")
    m0, shift = quantize_multiplier(m)
    total = 31 - shift.astype(np.int64)
    p = acc * m0.astype(np.int64)  # |acc| < 2**31, M0 < 2**31: exact in int64
    y = np.sign(p) * ((np.abs(p) + (np.int64(1) << (total - 1))) >> total)
    return np.clip(y + int(zero_point), qmin, qmax)


_REQUANT = {
    "onnxruntime": requant_onnxruntime,
    "onnx-reference": requant_onnx_reference,
    "tflite": requant_tflite,
    "tflite-single": requant_tflite_single,
    "fbgemm": requant_fbgemm,
}


def requantize(acc, *, multiplier, zero_point, qmin, qmax, mode="onnxruntime", axis=1):
    """``clamp(requant(acc) + zero_point, qmin, qmax)`` under a backend's arithmetic.

    Shapes: acc any shape (int32 accumulator, bias included); multiplier scalar
    or per channel along ``axis``. Dtypes: int64 in [qmin, qmax] out.
    ``mode`` is one of MODES; see the ``requant_*`` function of each for its
    formula. The default, "onnxruntime", is sqref's (docs/method.md section 5).
    """
    if mode not in _REQUANT:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return _REQUANT[mode](acc, multiplier=multiplier, zero_point=zero_point, qmin=qmin, qmax=qmax, axis=axis)


def effective_multiplier(x_scale, w_scale, y_scale, *, mode):
    """``M = s_x * s_w / s_y`` in the precision the backend computes it.

    onnxruntime, onnx-reference, fbgemm: float32 throughout,
    ``float32(float32(s_x * s_w) / s_y)`` (ORT ``qlinearconv.cc``, the ONNX
    evaluator on float32 scale tensors, PyTorch ``qlinear.cpp``).
    tflite, tflite-single: float64, ``double(s_x) * double(s_w) / double(s_y)``
    of the float32 scales (``PopulateConvolutionQuantizationParams``, per-channel
    int8 conv). Returns float32 or float64 arrays shaped like ``w_scale``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    sx, sw, sy = (np.asarray(s, np.float32) for s in (x_scale, w_scale, y_scale))
    if mode.startswith("tflite"):
        return sx.astype(np.float64) * sw.astype(np.float64) / sy.astype(np.float64)
    return (sx * sw) / sy


# ------------------------------------------------------- float <-> int ops


def quantize_linear(x, scale, zero_point, *, qmin, qmax, mode, axis=1):
    """Float -> integer QUANTIZE op, ``clamp(round(x / scale) + zp, qmin, qmax)``, per backend.

    Shapes: x any shape; scale (and zero_point) scalar or per channel along ``axis``.
    Dtypes: x rounded to float32 first (all backends take float32); int64 out.
    onnxruntime     ``v = float32(x / scale)``, clamp to [qmin - zp, qmax - zp]
                    (NaN -> qmin - zp: MAXPS returns its second operand), rne, + zp.
    onnx-reference  ``rint(float32(x / scale))`` cast to int32, + zp, clip.
                    # NOTE: the evaluator's ``astype(int32)`` maps NaN and
                    # |v| >= 2**31 to INT32_MIN and the int32 ``+ zp`` wraps
                    # (zp = -128 then gives qmax); the spec says saturate.
    tflite          ``round_half_away(float32(x / scale)) + zp``, clamp: -2.5 -> -3.
                    # NOTE: casting NaN/huge floats and the int32 ``+ zp`` overflow
                    # are UB in C++; modelled as x86 does them (INT32_MIN, wrap).
    fbgemm          PyTorch's quantize_per_tensor (the torch backend's QUANTIZE):
                    ``rne(fma(x, float32(1 / scale), zp))``, clamp: a reciprocal
                    multiply, not a division (x = 0.273939937, s = 0.00214854861
                    gives 128, division 127), and the zero point is added BEFORE
                    rounding inside one fused multiply-add (FBGEMM's
                    ``QuantizeAvx2<LEGACY>``: 0.5 with zp = 1 gives 2, not 1).
                    NaN and +inf give qmax (MINPS clip at 2**31 - 128).
    Oracle: onnxruntime / ReferenceEvaluator QuantizeLinear, torch.quantize_per_tensor.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"mode must be one of {QUANTIZE_MODES}, got {mode!r}")
    xf = np.asarray(x, dtype=np.float32)
    qmin, qmax = _check_range(0, qmin, qmax)[1:]
    s = _along(np.asarray(scale, np.float32), xf.ndim, axis, xf.shape, "scale")
    zpa = np.asarray(zero_point)
    if zpa.dtype.kind not in "iu":
        raise TypeError(f"zero_point must be integer, got dtype {zpa.dtype}")
    zp = _along(zpa.astype(np.int64), xf.ndim, axis, xf.shape, "zero_point")
    if np.any(~np.isfinite(s) | (s <= 0)):
        raise ValueError(f"scale must be finite and > 0, got {s.ravel()[:5].tolist()}")
    with np.errstate(over="ignore", invalid="ignore"):
        if mode == "onnxruntime":
            lo, hi = (qmin - zp).astype(np.float32), (qmax - zp).astype(np.float32)
            v = np.asarray(xf / s)  # an array even for a 0-d x (the in-place clamp below needs one)
            nan = np.isnan(v)
            if nan.any():
                v = np.where(nan, lo, v)
            np.maximum(v, lo, out=v)  # the clamp, as two in-place ufuncs
            np.minimum(v, hi, out=v)
            return np.rint(v, out=v).astype(np.int64) + zp
        if mode == "onnx-reference":
            r = float_to_int32_x86(np.rint(xf / s))
            return np.clip(wrap_int32(r + zp), qmin, qmax)
        if mode == "tflite":
            r = float_to_int32_x86(round_half_away(xf / s))
            return np.clip(wrap_int32(r + zp), qmin, qmax)
        # fbgemm: torch 2.13 on x86 with FMA computes VFMADD(x, 1/scale, zp), one rounding,
        # then rounds to integer (measured; docs/backends.md)
        v = fma_float32(xf, np.float32(1.0) / s, zp.astype(np.float32))
        v = np.where(np.isnan(v), np.float32(2**31 - 128), np.minimum(v, np.float32(2**31 - 128)))
        r = np.where(v < INT32_MIN, INT32_MIN, np.rint(np.maximum(v, INT32_MIN)).astype(np.int64))
        return np.clip(r, qmin, qmax)


def quantize_onnxruntime_uint8(x, scale, zero_point, *, qmin=0, qmax=255):
    """``quantize_linear(x, scale, zero_point, mode="onnxruntime", ...).astype(np.uint8)`` in fewer passes.

    Per tensor: scale and zero_point scalars; 0 <= qmin <= qmax <= 255. The
    same arithmetic on one float32 array: ``v = float32(x / scale)``, then in
    place the clamp to [qmin - zp, qmax - zp], NaN -> qmin - zp (the general
    function's NaN rule; a NaN survives the clamp, so the clamped array's sum
    finds it in one cheap pass), round half even, and ``+ zp`` with the cast
    to uint8 (the rounded values are integers in [qmin, qmax]: exact). 5
    passes instead of 9, none in int64. Oracle: quantize_linear
    (tests/test_integer.py).
    """
    zp, qmin, qmax = _check_range(zero_point, qmin, qmax)
    if qmin < 0 or qmax > 255:
        raise ValueError(f"uint8 codes need 0 <= qmin <= qmax <= 255, got qmin={qmin}, qmax={qmax}")
    s = np.float32(scale)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"scale must be finite and > 0, got {[float(s)]}")
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(np.divide(np.asarray(x, dtype=np.float32), s))
        np.clip(v, np.float32(qmin - zp), np.float32(qmax - zp), out=v)
        if np.isnan(v.sum()):  # clamped values are finite, so only a NaN makes the sum NaN
            v[np.isnan(v)] = np.float32(qmin - zp)
        np.rint(v, out=v)
    return np.add(v, np.float32(zp), out=np.empty(v.shape, np.uint8), casting="unsafe")


def dequantize_linear(q, scale, zero_point, *, axis=1):
    """Integer -> float32 DEQUANTIZE, ``float32((q - zp) * scale)``, as every backend.

    Shapes: q any shape; scale, zero_point scalar or per channel along ``axis``.
    Dtypes: integer in, float32 out. ``q - zp`` is exact and the product is
    rounded once to float32 by ONNX/onnxruntime, TFLite (a double product
    then a float cast: also one rounding) and PyTorch, so no mode is needed.
    Oracle: DequantizeLinear in onnxruntime and the ONNX evaluator.
    """
    qa = np.asarray(q)
    if qa.dtype.kind not in "iu":
        raise TypeError(f"q must be an integer array, got dtype {qa.dtype}")
    s = _along(np.asarray(scale, np.float32), qa.ndim, axis, qa.shape, "scale")
    zp = _along(np.asarray(zero_point, np.int64), qa.ndim, axis, qa.shape, "zero_point")
    return (qa.astype(np.int64) - zp).astype(np.float32) * s


# ------------------------------------------------------ deviation model


def accumulate_u8s8_int16_pairs(a, b, *, a_zero_point=0, b_zero_point=0):
    """Matmul accumulator as AVX2 ``VPMADDUBSW`` kernels compute it (a documented deviation).

    Matches onnxruntime MLAS u8 x s8 GEMM (MatMulInteger, QLinearMatMul, and
    QLinearConv except depthwise) and FBGEMM (PyTorch quantized linear/conv)
    on AVX2 machines without VNNI: adjacent products along K are summed in
    SATURATING int16 before widening, e.g. 255 * -128 twice = -65280 -> -32768.
    Shapes: a (M, K) raw uint8 codes, b (K, N) raw int8 codes -> (M, N);
    b_zero_point scalar or per column (N,).
    Dtypes: int64 out holding int32 values.
    Formula: ``raw = sum_p sat16(a[:, 2p] b[2p] + a[:, 2p+1] b[2p+1])`` (odd K
    padded with a zero), then the zero points are applied exactly through
    row/column sums: ``raw - zb * sum_k a - za * sum_k b + K za zb``.
    The exact accumulator is ``(a - za) @ (b - zb)``; the two agree when every
    pair stays within int16 (e.g. a in [0, 127], or ORT's test ranges
    a in [0, 63], b in [-63, 63]).
    Oracle: tests/test_backend_ort_ops.py and test_backend_torch_ops.py.
    """
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"need a (M, K) and b (K, N), got {a.shape} and {b.shape}")
    if a.size and (a.min() < 0 or a.max() > 255) or b.size and (b.min() < -128 or b.max() > 127):
        raise ValueError("a must hold uint8 codes and b int8 codes")
    k = a.shape[1]
    if k % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        b = np.pad(b, ((0, 1), (0, 0)))
    pairs = a[:, 0::2, None] * b[None, 0::2, :] + a[:, 1::2, None] * b[None, 1::2, :]  # (M, K/2, N)
    raw = np.clip(pairs, -(2**15), 2**15 - 1).sum(axis=1)
    za = int(a_zero_point)
    zb = np.asarray(b_zero_point, np.int64)  # scalar, or per column (N,)
    return raw - zb * a.sum(axis=1, keepdims=True) - za * b.sum(axis=0, keepdims=True) + k * za * zb
