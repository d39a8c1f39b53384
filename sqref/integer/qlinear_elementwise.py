"""onnxruntime's quantized elementwise operators (com.microsoft), one function per op, bit-exact.

Each function takes the op's inputs in ONNX Runtime's order and its attributes
as keywords, and returns what the op returns (docs/integer.md, section 8,
"Elementwise, concat and pooling ops"):

    qlinear_add          com.microsoft QLinearAdd        u8/s8 (+) u8/s8 -> same type, numpy broadcasting
    qlinear_mul          com.microsoft QLinearMul        u8/s8 (*) u8/s8 -> same type, numpy broadcasting
    qlinear_concat       com.microsoft QLinearConcat     (tensor, scale, zero point) triples -> y
    qlinear_sigmoid      com.microsoft QLinearSigmoid    a 256-entry table built in float32 (MLAS logistic)
    qlinear_leaky_relu   com.microsoft QLinearLeakyRelu  a 256-entry table built in float32
    relu_codes           DequantizeLinear -> Relu -> QuantizeLinear with one (scale, zero point)
    clip_codes           DequantizeLinear -> Clip -> QuantizeLinear with one (scale, zero point)

``mode`` is the backend's arithmetic, as in sqref.integer.requant: "onnxruntime"
(the default; the x86-64 MLAS kernels, AVX2 where MLAS has one), where
TFLite has the op, "tflite" (its int8 reference kernels: fixed-point multipliers
from ``requant.quantize_multiplier`` and gemmlowp's double rounding), and, where
PyTorch has a quantized CPU op, "fbgemm" (torch.ops.quantized.add / add_relu, mul
and cat under the fbgemm engine, measured with torch 2.13 on x86-64). The ONNX
reference evaluator has none of these contrib ops; ONNX itself has no
quantized hard-sigmoid, and neither has onnxruntime (QLinearHardSigmoid is not
registered: tests/test_qlinear_ops.py checks that it refuses the node).

All scales are float32 and per tensor, zero points per tensor and of the
tensor's dtype (onnxruntime's constraints). Integer steps are exact; every
float step is one float32 operation, named in the docstrings.

The loop-nest oracles at the end of the module restate each op one output
element at a time with Python ints and NumPy float32 scalars
(tests/test_qlinear_ops.py checks the fast functions against them).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from sqref.integer import requant
from sqref.integer.qlinear import EIGHT_BIT, QUANT_RANGES, is_typed, per_tensor, check_scale, check_zero_point

__all__ = ["qlinear_add", "qlinear_mul", "qlinear_concat", "qlinear_sigmoid", "qlinear_leaky_relu", "relu_codes",
           "clip_codes", "lookup_table", "mlas_logistic", "ELEMENTWISE_MODES"]

ELEMENTWISE_MODES = ("onnxruntime", "tflite", "fbgemm")
F32 = np.float32

# PyTorch's quantized add runs its TensorIterator loop over blocks of 64 codes with the
# vectorized kernel and the remaining codes of each inner run with the scalar one.
# Measured with torch 2.13 under both ATen CPU capabilities (AVX-512 and AVX2).
FBGEMM_ADD_BLOCK = 64

# MLAS's logistic (core/mlas/lib/logistic.cpp, Eigen's rational approximation): the input is
# clamped to [-18, 18], p(x) = x * (a1 + x2 (a3 + x2 (a5 + x2 (a7 + x2 a9)))),
# q(x) = b0 + x2 (b2 + x2 (b4 + x2 (b6 + x2 (b8 + x2 b10)))), sigmoid = p / q + 0.5.
LOGISTIC_RANGE = (F32(-18.0), F32(18.0))
LOGISTIC_ALPHA = tuple(F32(v) for v in (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                                        8.51377133304701e-03, 2.48287947061529e-01))  # a9, a7, a5, a3, a1
LOGISTIC_BETA = tuple(F32(v) for v in (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                                       1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01))  # b10..b0


# ------------------------------------------------------------------ argument checks


def check_op_mode(mode, allowed=ELEMENTWISE_MODES, op=None):
    if mode not in allowed:
        if op is not None and mode in requant.MODES:
            raise ValueError(f"mode {mode!r} has no model of {op}; mode must be one of {allowed}")
        raise ValueError(f"mode must be one of {allowed}, got {mode!r}")


def check_codes(name, x, dtype=None):
    """An 8-bit code array (uint8 or int8; ``dtype`` if given)."""
    allowed = EIGHT_BIT if dtype is None else (np.dtype(dtype),)
    a = np.asarray(x)
    if not is_typed(x) or a.dtype not in allowed:
        got = a.dtype if is_typed(x) else type(x).__name__
        names = " or ".join(d.name for d in allowed)
        raise TypeError(f"{name} must be a NumPy array of dtype {names}, got {got}")
    return a


def check_qparams(prefix, scale, zero_point, dtype):
    """(float32 scale, int zero point) of one per-tensor quantized tensor of ``dtype``."""
    s = per_tensor(f"{prefix}_scale", check_scale(f"{prefix}_scale", scale, (np.dtype(np.float32),)))
    z = per_tensor(f"{prefix}_zero_point", check_zero_point(f"{prefix}_zero_point", zero_point, dtype, prefix))
    return F32(s), int(z)


# ------------------------------------------------------------------ QLinearAdd / QLinearMul


def _binary_operands(op, mode, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point):
    """The checked inputs of QLinearAdd and QLinearMul (``op``: "add" or "mul", for messages):
    (a, b, a_shape, b_shape, (s_a, z_a), (s_b, z_b), (s_c, z_c), qmin, qmax). a and b are the
    codes broadcast to one shape (one dtype); a_shape and b_shape their shapes before, which
    decide the backends' loop orders; scales float32, zero points ints of a's dtype; qmin, qmax
    that dtype's range. PyTorch's kernels give a's shape, so mode fbgemm needs b to broadcast to a."""
    check_op_mode(mode)
    a = check_codes("a", a)
    b = check_codes("b", b, a.dtype)
    params = [check_qparams(name, s, z, a.dtype) for name, s, z in
              (("a", a_scale, a_zero_point), ("b", b_scale, b_zero_point), ("c", c_scale, c_zero_point))]
    a_shape, b_shape = a.shape, b.shape
    a, b = _broadcast(a, b)
    if mode == "fbgemm" and a.shape != a_shape:
        raise ValueError(f"PyTorch's quantized {op} gives a's shape: b {b_shape} must broadcast to a {a_shape}")
    return (a, b, a_shape, b_shape, *params, *QUANT_RANGES[a.dtype])


def qlinear_add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point=None, *,
                mode="onnxruntime"):
    """com.microsoft QLinearAdd: ``c = saturate(round((s_a (a - z_a) + s_b (b - z_b)) / s_c) + z_c)``.

    Shapes: a and b broadcast as NumPy does; c has the broadcast shape.
    Dtypes: a, b uint8 or int8, one dtype; zero points that dtype (None: 0); scales
    float32 scalars (per tensor); c has a's dtype.
    Arithmetic by ``mode``:
      onnxruntime  MLAS ``MlasQLinearAddKernelAvx2Helper`` (intrinsics/avx2/qladd_avx2.cpp), which
                   onnxruntime 1.32 runs on every x86-64 CPU with AVX2 and FMA (both kinds of
                   machine sqref is tested on): ratios ``r_a = float32(s_a / s_c)``,
                   ``r_b = float32(s_b / s_c)``; ``f = float32(z_c) - fma(r_a, z_a, float32(r_b z_b))``
                   (the compiler contracts ``r_a z_a + r_b z_b`` into one FMA: measured by
                   tests/test_qlinear_ops.py::test_add_matches_onnxruntime_on_whole_tensors); then on the RAW codes
                   ``w = fma(a, r_a, fma(b, r_b, f))`` (VFMADD, one rounding each, b first), round
                   half even (CVTPS2DQ), saturate (PACKSSDW, then PACKUSWB/PACKSSWB): the zero point
                   is inside the float sum, so ties round to the even OUTPUT code.
                   Where onnxruntime's broadcasting runs a as a per-span scalar (a is constant
                   along the innermost output axis and b is not), a's term joins f first:
                   ``w = fma(b, r_b, fma(a, r_a, f))`` (the kernel's separate multiply and add are
                   contracted into an FMA too: measured by the same test).
                   # NOTE: CVTPS2DQ turns |w| >= 2**31 into INT32_MIN, which saturates to qmin
                   # even for a huge positive sum (s_a / s_c > 2**23); modelled as such.
                   # NOTE: CPUs without AVX2 run the SSE2 kernel (qladd.cpp: separate float32
                   # multiplies and adds, a's term first); not modelled.
      tflite       TFLite ADD, int8 reference kernel (``reference/integer_ops/add.h``, ``add.cc``):
                   in float64 ``t = 2 max(s_a, s_b)``, ``M_a = s_a / t``, ``M_b = s_b / t``,
                   ``M_c = t / (2**20 s_c)``, each QuantizeMultiplier'd (M_c must be < 1);
                   ``x_a = MBQM((a - z_a) * 2**20, M_a)``, ``x_b`` likewise,
                   ``c = clamp(MBQM(x_a + x_b, M_c) + z_c)``, MBQM = SRDHM then a rounding
                   right shift (half away from zero): three roundings.
      fbgemm       torch.ops.quantized.add (QuantizedOpKernels.cpp ``qadd_kernel``, fbgemm engine):
                   c is a's shape (b must broadcast to it); ``inv = float32(1 / s_c)``; two kernels:
                   vectorized  ``d_a = fma(s_a, a, float32(s_a (-z_a)))`` (the premultiplied zero
                               point), d_b likewise, ``c = float32(d_a + d_b)``,
                               ``rne(float32(c inv)) + z_c`` (rounding BEFORE the zero point),
                               saturate; ``float32(c inv)`` is first clipped at 2**31 - 128 and the
                               int32 ``+ z_c`` wraps (modelled);
                   scalar      ``d_a = float32(s_a float32(a - z_a))``, d_b likewise,
                               ``c = float32(d_a + d_b)``, ``rne(float32(float32(c inv) + z_c))``
                               (the zero point added BEFORE rounding, no FMA), saturate.
                   # NOTE: which kernel a code gets depends on its place in PyTorch's loop: each
                   # inner run (the trailing output axes over which b is either contiguous or
                   # constant) goes through the vectorized kernel in blocks of FBGEMM_ADD_BLOCK = 64
                   # codes and the last ``run % 64`` codes through the scalar one. Measured with
                   # torch 2.13 under AVX-512 and AVX2 alike. Modelled for one thread (below 32768
                   # outputs PyTorch uses one; above, its thread split can cut a run).
                   add_relu is ``relu_codes(qlinear_add(...), c_zero_point)`` exactly
                   (quantization is monotone and maps 0 to z_c).
    Ties: a = 1, b = 0, s_a = 1, s_c = 2, z = 0 gives 0.5: onnxruntime 0 (half even), tflite 1;
    with z_c = 1, fbgemm's vectorized kernel gives 1 and its scalar kernel 2.
    Oracle: ``oracle_qlinear_add``; onnxruntime, TFLite and PyTorch in tests/test_qlinear_ops.py.
    """
    a, b, a_shape, b_shape, (sa, za), (sb, zb), (sc, zc), qmin, qmax = _binary_operands(
        "add", mode, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point)
    if mode == "fbgemm":
        return _fbgemm_add(a.astype(np.int64), b.astype(np.int64), sa, za, sb, zb, sc, zc, b_shape, qmin,
                           qmax).astype(a.dtype)
    if mode == "tflite":
        da, db = a.astype(np.int64) - za, b.astype(np.int64) - zb
        (ma, sha), (mb, shb), (mc, shc) = _tflite_add_multipliers(sa, sb, sc)
        xa = requant.multiply_by_quantized_multiplier(da << 20, ma, sha)  # |da| <= 255: da * 2**20 fits int32
        xb = requant.multiply_by_quantized_multiplier(db << 20, mb, shb)
        y = requant.multiply_by_quantized_multiplier(xa + xb, mc, shc) + zc
        return np.clip(y, qmin, qmax).astype(a.dtype)
    ra, rb = sa / sc, sb / sc  # float32
    fixed = F32(zc) - requant.fma_float32(ra, F32(za), rb * F32(zb))
    fa, fb = a.astype(F32), b.astype(F32)
    with np.errstate(over="ignore"):
        if _span_scalar(a_shape, b_shape) == "a":  # a's term joins the fixed part first
            w = requant.fma_float32(fb, rb, requant.fma_float32(fa, ra, fixed))
        else:
            w = requant.fma_float32(fa, ra, requant.fma_float32(fb, rb, fixed))
    r = requant.float_to_int32_x86(np.rint(w))
    return np.clip(r, qmin, qmax).astype(a.dtype)


def _fbgemm_add(a, b, sa, za, sb, zb, sc, zc, b_shape, qmin, qmax):
    """PyTorch's qadd_kernel on int64 codes a and b (b already broadcast to a's shape)."""
    inv = F32(1) / sc
    with np.errstate(over="ignore", invalid="ignore"):
        # vectorized kernel: FMA dequantize with the premultiplied zero points, round, then + z_c (int32)
        c_vec = requant.fma_float32(sa, a.astype(F32), sa * F32(-za)) + requant.fma_float32(sb, b.astype(F32),
                                                                                          sb * F32(-zb))
        t_vec = np.minimum(c_vec * inv, F32(2**31 - 128))
        r_vec = requant.wrap_int32(requant.float_to_int32_x86(np.rint(t_vec)) + zc)
        # scalar kernel: plain dequantize, the zero point added in float32 before rounding
        c_sca = sa * (a - za).astype(F32) + sb * (b - zb).astype(F32)
        r_sca = np.clip(np.rint(c_sca * inv + F32(zc)), qmin, qmax).astype(np.int64)
    run = _torch_inner_run(a.shape, b_shape)
    pos = np.arange(a.size).reshape(a.shape) % run
    vectorized = pos < run // FBGEMM_ADD_BLOCK * FBGEMM_ADD_BLOCK
    return np.clip(np.where(vectorized, r_vec, r_sca), qmin, qmax)


def _torch_inner_run(out_shape, b_shape):
    """The length of PyTorch's innermost loop for c = a + b (a of ``out_shape``, contiguous): TensorIterator
    merges trailing output axes while b stays contiguous across them, or stays broadcast across them."""
    n = len(out_shape)
    b_full = (1,) * (n - len(b_shape)) + tuple(b_shape)
    run, state = 1, None
    for ax in range(n - 1, -1, -1):
        if out_shape[ax] == 1:
            continue  # size-1 axes merge with anything
        broadcast = b_full[ax] == 1
        if state is not None and broadcast != state:
            break
        state = broadcast
        run *= out_shape[ax]
    return run


def _span_scalar(a_shape, b_shape):
    """Which input onnxruntime's broadcast loop runs as a per-span scalar: "b" when b has size 1 along
    the innermost output axis of size > 1 and a does not, "a" the other way round, else None."""
    out = np.broadcast_shapes(a_shape, b_shape)
    n = len(out)
    a_full = (1,) * (n - len(a_shape)) + tuple(a_shape)
    b_full = (1,) * (n - len(b_shape)) + tuple(b_shape)
    for ax in range(n - 1, -1, -1):
        if out[ax] > 1:
            if b_full[ax] == 1 and a_full[ax] > 1:
                return "b"
            return "a" if a_full[ax] == 1 and b_full[ax] > 1 else None
    return None


def _broadcast(a, b):
    try:
        return np.broadcast_arrays(a, b)
    except ValueError:
        raise ValueError(f"a {a.shape} and b {b.shape} do not broadcast") from None


def _tflite_add_multipliers(sa, sb, sc):
    """TFLite ADD's three (M0, shift) pairs (add.cc, int8: left shift 20), from float64 ratios."""
    twice_max = 2 * max(float(sa), float(sb))
    real = (float(sa) / twice_max, float(sb) / twice_max, twice_max / (2**20 * float(sc)))
    if real[2] >= 1:
        raise ValueError(f"TFLite ADD needs 2 max(s_a, s_b) / (2**20 s_c) < 1 (QuantizeMultiplierSmallerThanOneExp); "
                         f"got s_a={float(sa)}, s_b={float(sb)}, s_c={float(sc)}")
    return [tuple(int(v) for v in requant.quantize_multiplier(m)) for m in real]


def qlinear_mul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point=None, *,
                mode="onnxruntime"):
    """com.microsoft QLinearMul: ``c = saturate(round(s_a s_b (a - z_a)(b - z_b) / s_c) + z_c)``.

    Shapes, dtypes and parameters as ``qlinear_add``.
    Arithmetic by ``mode``:
      onnxruntime  MLAS ``MlasQLinearMulKernel`` (qlmul.cpp, the SSE2 kernel on every x86-64 CPU):
                   ``p = (a - z_a)(b - z_b)`` exact (|p| <= 65280 < 2**24, so float32(p) is
                   exact); ``R = float32(float32(s_a s_b) / s_c)``;
                   ``w = float32(float32(p) * R) + float32(z_c)`` (two float32 roundings),
                   round half even (CVTPS2DQ), saturate to int16 then to the 8-bit type
                   (PACKSSDW, PACKUSWB/PACKSSWB): the zero point is added BEFORE rounding, in float32.
                   # NOTE: CVTPS2DQ turns |w| >= 2**31 into INT32_MIN, which saturates to qmin
                   # even for a huge positive product; modelled as such.
      tflite       TFLite MUL, int8 reference kernel (``reference/integer_ops/mul.h``):
                   ``M = float64(s_a) s_b / s_c``; ``c = clamp(MBQM(p, M) + z_c)``
                   (requant.requant_tflite: double rounding; M >= 1 shifts left first).
      fbgemm       torch.ops.quantized.mul (``qmul_kernel``, fbgemm engine): c is a's shape (b must
                   broadcast to it); ``M = float32(float32(s_a s_b) float32(1 / s_c))``;
                   ``c = clamp(rne(float32(float32(p) M)) + z_c)``: the zero point added AFTER
                   rounding, in both the vectorized and the scalar kernel (``requantize_from_int``).
                   ValueError for M >= 2**15, where the two kernels part on int32 overflow.
    Ties: p = 1, R = 0.5, z_c = 1 gives 1.5 -> 2 in onnxruntime (half even after adding z_c;
    QLinearAdd would give 1), 0.5 + 1 -> 2 in tflite, 0 + 1 = 1 in fbgemm.
    Oracle: ``oracle_qlinear_mul``; onnxruntime, TFLite and PyTorch in tests/test_qlinear_ops.py.
    """
    a, b, a_shape, b_shape, (sa, za), (sb, zb), (sc, zc), qmin, qmax = _binary_operands(
        "mul", mode, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point)
    p = (a.astype(np.int64) - za) * (b.astype(np.int64) - zb)
    if mode == "fbgemm":
        m = (sa * sb) * (F32(1) / sc)  # float32 throughout
        if m >= 2**15:
            raise ValueError(f"fbgemm mode has no model of quantized mul with s_a s_b / s_c = {float(m)} >= 2**15 "
                             "(PyTorch's vectorized and scalar kernels overflow int32 differently)")
        r = requant.float_to_int32_x86(np.rint(p.astype(F32) * m))  # |p| <= 65280: exact in float32
        return np.clip(r + zc, qmin, qmax).astype(a.dtype)
    if mode == "tflite":
        m = float(sa) * float(sb) / float(sc)
        return requant.requant_tflite(p, multiplier=m, zero_point=zc, qmin=qmin, qmax=qmax).astype(a.dtype)
    ratio = (sa * sb) / sc  # float32 throughout
    with np.errstate(over="ignore"):
        w = p.astype(F32) * ratio + F32(zc)
    r = requant.float_to_int32_x86(np.rint(w))
    return np.clip(r, qmin, qmax).astype(a.dtype)


# ------------------------------------------------------------------ lookup tables


def lookup_table(transform, x_scale, x_zero_point, y_scale, y_zero_point, dtype):
    """onnxruntime's 256-entry table (``QlinearBuildLookupTable``, qlinear_lookup_table.cc).

    For every code c of ``dtype`` (indexed by its byte, as ORT does): dequantize in float32,
    ``v = s_x * float32(c - z_x)``, apply ``transform`` (float32 in, float32 out, elementwise),
    and quantize as onnxruntime's QuantizeLinear (``requant.quantize_linear(mode="onnxruntime")``:
    float32 division, clamp, round half even, + z_y). Returns (256,) codes of ``dtype``,
    entry i for the code whose byte is i (int8: i - 256 for i >= 128).
    """
    dtype = np.dtype(dtype)
    qmin, qmax = QUANT_RANGES[dtype]
    codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.int64)
    v = (codes - int(x_zero_point)).astype(F32) * F32(x_scale)
    t = np.asarray(transform(v), F32)
    q = requant.quantize_linear(t, F32(y_scale), int(y_zero_point), qmin=qmin, qmax=qmax, mode="onnxruntime")
    return q.astype(dtype)


def _apply_table(x, table):
    return table[x.view(np.uint8).astype(np.intp)].reshape(x.shape)


def mlas_logistic(v):
    """MLAS's float32 logistic as ``MlasLogisticKernelFma3`` computes it (LogisticKernelFma3.S), on float32.

    x = min(max(v, -18), 18); x2 = float32(x * x); p and q by Horner steps that are each ONE
    fused multiply-add (VFMADD, one rounding: requant.fma_float32); p = float32(x * p);
    y = max(float32(float32(p / q) + 0.5), 0). (The SSE2 kernel rounds each multiply and add
    separately and also clamps at 1; no x86-64 CPU with FMA runs it.)
    """
    x = np.minimum(np.maximum(np.asarray(v, F32), LOGISTIC_RANGE[0]), LOGISTIC_RANGE[1])
    x2 = x * x
    a9, a7, a5, a3, a1 = LOGISTIC_ALPHA
    b10, b8, b6, b4, b2, b0 = LOGISTIC_BETA
    p = requant.fma_float32(x2, a9, a7)
    for c in (a5, a3, a1):
        p = requant.fma_float32(x2, p, c)
    q = requant.fma_float32(x2, b10, b8)
    for c in (b6, b4, b2, b0):
        q = requant.fma_float32(x2, q, c)
    p = x * p
    return np.maximum((p / q) + F32(0.5), F32(0))


def _leaky(alpha):
    alpha = F32(alpha)
    return lambda v: np.where(v >= 0, v, alpha * v).astype(F32)


def _table_op(transform, x, x_scale, x_zero_point, y_scale, y_zero_point, mode, op):
    check_op_mode(mode, ("onnxruntime",), op)
    x = check_codes("x", x)
    sx, zx = check_qparams("x", x_scale, x_zero_point, x.dtype)
    sy, zy = check_qparams("y", y_scale, y_zero_point, x.dtype)
    return _apply_table(x, lookup_table(transform, sx, zx, sy, zy, x.dtype))


def qlinear_sigmoid(x, x_scale, x_zero_point, y_scale, y_zero_point=None, *, mode="onnxruntime"):
    """com.microsoft QLinearSigmoid: ``y = Q(sigmoid(DQ(x)))`` through onnxruntime's 256-entry table.

    Shapes: y has x's shape. Dtypes: x uint8 or int8, zero points x's dtype (None: 0),
    scales float32 scalars; y has x's dtype.
    Arithmetic (mode "onnxruntime" only): ``lookup_table(mlas_logistic, ...)``: dequantize in
    float32, MLAS's rational logistic in float32 with FMA (not libm's exp), onnxruntime's
    QuantizeLinear (float32 division, round half even before + z_y, saturate).
    Oracle: ``oracle_qlinear_table``; onnxruntime in tests/test_qlinear_ops.py (every code).
    """
    return _table_op(mlas_logistic, x, x_scale, x_zero_point, y_scale, y_zero_point, mode, "QLinearSigmoid")


def qlinear_leaky_relu(x, x_scale, x_zero_point, y_scale, y_zero_point=None, *, alpha=0.01, mode="onnxruntime"):
    """com.microsoft QLinearLeakyRelu: ``y = Q(v >= 0 ? v : alpha v)``, v = DQ(x), through a 256-entry table.

    Shapes/dtypes as ``qlinear_sigmoid``; ``alpha`` is the float32 attribute (default 0.01).
    Arithmetic (mode "onnxruntime" only): ``v = s_x * float32(x - z_x)``;
    ``t = v if v >= 0 else float32(float32(alpha) * v)``; onnxruntime's QuantizeLinear.
    Oracle: ``oracle_qlinear_table``; onnxruntime in tests/test_qlinear_ops.py (every code).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"alpha must be a float, got {alpha!r}")
    return _table_op(_leaky(alpha), x, x_scale, x_zero_point, y_scale, y_zero_point, mode, "QLinearLeakyRelu")


# ------------------------------------------------------------------ QLinearConcat


def qlinear_concat(y_scale, y_zero_point, *inputs, axis, mode="onnxruntime"):
    """com.microsoft QLinearConcat: each input requantized to (y_scale, y_zero_point), then concatenated.

    ``inputs`` are (tensor, scale, zero_point) triples, flat as the node's inputs
    (x0, s0, z0, x1, s1, z1, ...). Shapes: as numpy.concatenate along ``axis`` (required,
    negative counts from the end). Dtypes: every tensor and zero point has y_zero_point's
    dtype (uint8 or int8); scales float32 scalars.
    Arithmetic (mode "onnxruntime"; qlinear_concat.cc): an input whose scale and zero point
    equal y's is copied; any other goes through ``lookup_table`` with the identity:
    ``y = Q(float32(s_i * float32(x - z_i)))`` (float32 division by s_y, round half even
    before + z_y, saturate).
    Mode "fbgemm" (torch.ops.quantized.cat, qconcat.cpp): every input dequantized,
    ``v = float32(s_i float32(x - z_i))`` (measured: no FMA in either kernel), concatenated
    in float, then quantize_per_tensor: ``requant.quantize_linear(v, s_y, z_y, mode="fbgemm")``
    (``rne(fma(v, float32(1 / s_y), z_y))``, the zero point inside the rounding). An input with
    y's parameters comes back unchanged.
    # NOTE: PyTorch takes another kernel (qcat_nhwc, rounding before the zero point) for 4-D
    # inputs along axis 1 that are channels-last contiguous; for NCHW arrays that is C == 1 or
    # H * W == 1 in every input. Not modelled: fbgemm mode raises ValueError there.
    # NOTE: TFLite's int8 CONCATENATION requires every input to have the output's
    # scale and zero point (a plain copy), so no "tflite" mode is needed.
    Oracle: ``oracle_qlinear_concat``; onnxruntime and PyTorch in tests/test_qlinear_ops.py.
    """
    check_op_mode(mode, ("onnxruntime", "fbgemm"), "QLinearConcat")
    if not is_typed(y_zero_point) or np.asarray(y_zero_point).dtype not in EIGHT_BIT:
        raise TypeError("y_zero_point must be a uint8 or int8 NumPy scalar or array (it sets y's dtype)")
    dtype = np.asarray(y_zero_point).dtype
    sy, zy = check_qparams("y", y_scale, y_zero_point, dtype)
    if len(inputs) < 3 or len(inputs) % 3:
        raise ValueError(f"inputs must be (tensor, scale, zero_point) triples, got {len(inputs)} values")
    parts = []
    for i in range(0, len(inputs), 3):
        x = check_codes(f"x{i // 3}", inputs[i], dtype)
        sx, zx = check_qparams(f"x{i // 3}", inputs[i + 1], inputs[i + 2], dtype)
        if mode == "fbgemm":
            qmin, qmax = QUANT_RANGES[dtype]
            v = sx * (x.astype(np.int64) - zx).astype(F32)
            parts.append(requant.quantize_linear(v, sy, zy, qmin=qmin, qmax=qmax, mode="fbgemm").astype(dtype))
        elif sx == sy and zx == zy:
            parts.append(x)
        else:
            parts.append(_apply_table(x, lookup_table(lambda v: v, sx, zx, sy, zy, dtype)))
    ndim = parts[0].ndim
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"axis must be an int in [{-ndim}, {ndim - 1}], got {axis!r}")
    ax = int(axis) % ndim
    for j, p in enumerate(parts):
        if p.ndim != ndim or p.shape[:ax] + p.shape[ax + 1:] != parts[0].shape[:ax] + parts[0].shape[ax + 1:]:
            raise ValueError(f"input {j} has shape {p.shape}; every input must match input 0 {parts[0].shape} "
                             f"except along axis {axis}")
    if mode == "fbgemm" and ndim == 4 and ax == 1 and all(p.shape[1] == 1 or p.shape[2] * p.shape[3] == 1
                                                          for p in parts):
        raise ValueError("fbgemm mode has no model of PyTorch's channels-last concat kernel (qcat_nhwc), which "
                         f"runs for 4-D inputs along axis 1 with C == 1 or H * W == 1: got {[p.shape for p in parts]}")
    return np.concatenate(parts, axis=ax)


# ------------------------------------------------------------------ Relu / Clip on codes


def quantize_bound(v, scale, zero_point, dtype):
    """The code of a float bound, as onnxruntime's QuantizeLinear gives it:
    ``saturate(round_half_even(float32(v) / float32(scale)) + zero_point)``."""
    qmin, qmax = QUANT_RANGES[np.dtype(dtype)]
    return int(requant.quantize_linear(np.float32(v), F32(scale), int(zero_point), qmin=qmin, qmax=qmax,
                                       mode="onnxruntime"))


def clip_codes(x, scale, zero_point, min=None, max=None):  # noqa: A002 - ONNX's input names
    """DequantizeLinear -> Clip(min, max) -> QuantizeLinear with one (scale, zero point), on the codes.

    ``y = clamp(x, q(min), q(max))``, ``q(v) = saturate(round_half_even(float32(v) / s) + z)``
    (``quantize_bound``); None is no bound. Exact, because QuantizeLinear is monotone and
    ``Q(DQ(x)) == x`` for every code, so ``Q(clip(DQ(x))) == clamp(x, Q(min), Q(max))``.
    Shapes: y has x's shape. Dtypes: x uint8 or int8, zero point x's dtype, scale float32.
    What onnxruntime runs for such a QDQ group (measured, tests/test_qlinear_ops.py):
    ``ClipQuantFusion`` deletes the Clip when ``min - lower <= FLT_EPSILON`` and
    ``upper - max <= FLT_EPSILON`` (lower, upper = s (qmin - z), s (qmax - z)); otherwise
    the Clip runs in float32 between DequantizeLinear and QuantizeLinear. Both give the
    formula above.
    # NOTE: the deletion test uses an absolute epsilon (2**-23): for s < 2**-22 a min up to
    # 2**-23 above ``lower`` is dropped, where the formula would give qmin + 1 when
    # float32(min) / s passes qmin - z + 0.5. Not modelled; no real model has such scales.
    """
    x = check_codes("x", x)
    s, z = check_qparams("x", scale, zero_point, x.dtype)
    qmin, qmax = QUANT_RANGES[x.dtype]
    lo = qmin if min is None else quantize_bound(min, s, z, x.dtype)
    hi = qmax if max is None else quantize_bound(max, s, z, x.dtype)
    return np.minimum(np.maximum(x, np.array(lo, x.dtype)), np.array(hi, x.dtype))


def relu_codes(x, zero_point=None):
    """DequantizeLinear -> Relu -> QuantizeLinear with one (scale, zero point), on the codes: ``max(x, z)``.

    Relu is Clip(min=0), and ``q(0) = z`` for any scale. onnxruntime deletes the Relu when
    z == qmin (ReluQuantFusion: the QuantizeLinear's saturation already clips there), and
    otherwise runs it in float32 between DQ and Q; both give ``max(x, z)``.
    Dtypes: x uint8 or int8, zero point x's dtype (None: 0).
    """
    x = check_codes("x", x)
    z = per_tensor("zero_point", check_zero_point("zero_point", zero_point, x.dtype, "x"))
    return np.maximum(x, z.astype(x.dtype))


# ============================================================================ oracles
#
# One output element at a time, Python ints for integer steps and NumPy float32 scalars for
# each float operation (the kernels' instruction sequence), sharing no code with the
# functions above except requant's fixed-point helpers for the TFLite mode (checked against
# exact rational arithmetic in tests/test_requant.py).


def _f32(v):
    return np.float32(v)


def _fma(a, b, c):
    """float32(a * b + c) rounded once, in exact rational arithmetic (the oracle of requant.fma_float32)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    lo = _f32(float(exact))  # a float32 near the exact value, then the nearest by exact comparison
    candidates = [np.nextafter(lo, F32(-np.inf)), lo, np.nextafter(lo, F32(np.inf))]
    dist = [abs(Fraction(float(v)) - exact) for v in candidates]
    best = min(dist)
    ties = [v for v, d in zip(candidates, dist) if d == best]
    return ties[0] if len(ties) == 1 else next(v for v in ties if int(v.view(np.uint32)) % 2 == 0)


def _rne(v):
    return int(round(float(v)))  # Python's round of a float rounds half to even


def _x86_int(v):
    """CVTPS2DQ of a float32: round half even; NaN or out of int32 range -> INT32_MIN."""
    f = float(v)
    if f != f or not -(2.0**31) <= round(f) < 2.0**31:
        return -(2**31)
    return _rne(f)


def _pairs(a, b):
    shape = np.broadcast_shapes(a.shape, b.shape)
    return shape, np.broadcast_to(a, shape), np.broadcast_to(b, shape)


def _tflite_mbqm(x, m0, shift):
    """MultiplyByQuantizedMultiplier (double rounding) of one int, with Python ints."""
    left, right = max(shift, 0), max(-shift, 0)
    v = x * 2**left
    v = (v + 2**31) % 2**32 - 2**31  # the int32 left shift wraps
    ab = v * m0
    n = ab + (2**30 if ab >= 0 else 1 - 2**30)
    high = abs(n) // 2**31 * (1 if n >= 0 else -1)  # C's '/' truncates toward zero
    if right == 0:
        return high
    mask = 2**right - 1
    rem, thr = high & mask, (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if rem > thr else 0)


def oracle_qlinear_add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point, *,
                       mode="onnxruntime"):
    """QLinearAdd one element at a time."""
    qmin, qmax = QUANT_RANGES[np.asarray(a).dtype]
    za, zb, zc = int(a_zero_point), int(b_zero_point), int(c_zero_point)
    shape, a2, b2 = _pairs(np.asarray(a), np.asarray(b))
    out = np.empty(shape, np.asarray(a).dtype)
    # onnxruntime's order: an input constant along the innermost output axis joins the fixed part first
    inner = [ax for ax in range(len(shape)) if shape[ax] > 1]
    a_full = (1,) * (len(shape) - np.ndim(a)) + np.shape(a)
    b_full = (1,) * (len(shape) - np.ndim(b)) + np.shape(b)
    a_scalar = bool(inner) and a_full[inner[-1]] == 1 and b_full[inner[-1]] > 1
    if mode == "fbgemm":
        # PyTorch's inner run: the trailing output axes (size-1 ones skipped) along which b is all
        # broadcast or all real, counted one axis at a time
        run, kind = 1, None
        for ax in reversed(range(len(shape))):
            if shape[ax] > 1:
                if kind is not None and kind != (b_full[ax] == 1):
                    break
                kind, run = b_full[ax] == 1, run * shape[ax]
        inv = _f32(_f32(1) / _f32(c_scale))
        sa, sb = _f32(a_scale), _f32(b_scale)
    if mode == "tflite":
        t = 2 * max(float(a_scale), float(b_scale))
        (ma, sha), (mb, shb), (mc, shc) = (tuple(int(v) for v in requant.quantize_multiplier(m))
                                           for m in (float(a_scale) / t, float(b_scale) / t,
                                                     t / (2**20 * float(c_scale))))
    for idx in np.ndindex(*shape):
        da, db = int(a2[idx]) - za, int(b2[idx]) - zb
        if mode == "fbgemm":
            flat = int(np.ravel_multi_index(idx, shape)) if shape else 0
            with np.errstate(over="ignore"):
                if flat % run < run - run % FBGEMM_ADD_BLOCK:  # vectorized kernel
                    c = _f32(_fma(sa, _f32(int(a2[idx])), _f32(sa * _f32(-za)))
                             + _fma(sb, _f32(int(b2[idx])), _f32(sb * _f32(-zb))))
                    r = _x86_int(min(_f32(c * inv), _f32(2**31 - 128)))
                    r = (r + zc + 2**31) % 2**32 - 2**31  # int32 add
                else:  # scalar kernel
                    c = _f32(_f32(sa * _f32(da)) + _f32(sb * _f32(db)))
                    r = _rne(_f32(_f32(c * inv) + _f32(zc)))
            out[idx] = min(max(r, qmin), qmax)
        elif mode == "tflite":
            s = _tflite_mbqm(da * 2**20, ma, sha) + _tflite_mbqm(db * 2**20, mb, shb)
            out[idx] = min(max(_tflite_mbqm(s, mc, shc) + zc, qmin), qmax)
        else:
            ra, rb = _f32(_f32(a_scale) / _f32(c_scale)), _f32(_f32(b_scale) / _f32(c_scale))
            fixed = _f32(_f32(zc) - _fma(ra, _f32(za), _f32(rb * _f32(zb))))
            fa, fb = _f32(int(a2[idx])), _f32(int(b2[idx]))
            w = _fma(fb, rb, _fma(fa, ra, fixed)) if a_scalar else _fma(fa, ra, _fma(fb, rb, fixed))
            out[idx] = min(max(_x86_int(w), qmin), qmax)
    return out


def oracle_qlinear_mul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point, *,
                       mode="onnxruntime"):
    """QLinearMul one element at a time."""
    qmin, qmax = QUANT_RANGES[np.asarray(a).dtype]
    za, zb, zc = int(a_zero_point), int(b_zero_point), int(c_zero_point)
    shape, a2, b2 = _pairs(np.asarray(a), np.asarray(b))
    out = np.empty(shape, np.asarray(a).dtype)
    ratio = _f32(_f32(_f32(a_scale) * _f32(b_scale)) / _f32(c_scale))
    if mode == "tflite":
        m0, shift = (int(v) for v in requant.quantize_multiplier(float(a_scale) * float(b_scale) / float(c_scale)))
    for idx in np.ndindex(*shape):
        p = (int(a2[idx]) - za) * (int(b2[idx]) - zb)
        if mode == "tflite":
            out[idx] = min(max(_tflite_mbqm(p, m0, shift) + zc, qmin), qmax)
        elif mode == "fbgemm":
            m = _f32(_f32(_f32(a_scale) * _f32(b_scale)) * _f32(_f32(1) / _f32(c_scale)))
            out[idx] = min(max(_rne(_f32(_f32(p) * m)) + zc, qmin), qmax)
        else:
            with np.errstate(over="ignore"):
                w = _f32(_f32(p) * ratio) + _f32(zc)
            out[idx] = min(max(_x86_int(w), qmin), qmax)
    return out


def oracle_qlinear_table(x, x_scale, x_zero_point, y_scale, y_zero_point, transform):
    """A table op one element at a time: dequantize, ``transform`` one float32 scalar, quantize
    as onnxruntime (float32 division, clamp to [qmin - z, qmax - z], round half even, + z)."""
    x = np.asarray(x)
    qmin, qmax = QUANT_RANGES[x.dtype]
    zx, zy = int(x_zero_point), int(y_zero_point)
    out = np.empty(x.shape, x.dtype)
    for idx in np.ndindex(*x.shape):
        v = _f32(_f32(int(x[idx]) - zx) * _f32(x_scale))
        t = _f32(transform(np.array([v], np.float32))[0])
        q = _f32(t / _f32(y_scale))
        out[idx] = _rne(min(max(float(q), qmin - zy), qmax - zy)) + zy
    return out


def oracle_qlinear_concat(y_scale, y_zero_point, *inputs, axis, mode="onnxruntime"):
    """QLinearConcat: every element requantized one at a time, then placed by its index."""
    zy = int(y_zero_point)
    dtype = np.asarray(y_zero_point).dtype
    qmin, qmax = QUANT_RANGES[dtype]
    parts = []
    for i in range(0, len(inputs), 3):
        x, sx, zx = np.asarray(inputs[i]), inputs[i + 1], int(inputs[i + 2])
        y = np.empty(x.shape, dtype)
        for idx in np.ndindex(*x.shape):
            if mode == "fbgemm":  # dequantize, then quantize_per_tensor: one FMA with the reciprocal
                v = _f32(_f32(sx) * _f32(int(x[idx]) - zx))
                y[idx] = min(max(_rne(_fma(v, _f32(_f32(1) / _f32(y_scale)), _f32(zy))), qmin), qmax)
                continue
            if _f32(sx) == _f32(y_scale) and zx == zy:
                y[idx] = x[idx]
                continue
            q = _f32(_f32(_f32(int(x[idx]) - zx) * _f32(sx)) / _f32(y_scale))
            y[idx] = _rne(min(max(float(q), qmin - zy), qmax - zy)) + zy
        parts.append(y)
    ax = axis % parts[0].ndim
    shape = list(parts[0].shape)
    shape[ax] = sum(p.shape[ax] for p in parts)
    out = np.empty(shape, dtype)
    offset = 0
    for p in parts:
        for idx in np.ndindex(*p.shape):
            out[idx[:ax] + (idx[ax] + offset,) + idx[ax + 1:]] = p[idx]
        offset += p.shape[ax]
    return out
