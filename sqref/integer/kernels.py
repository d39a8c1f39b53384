"""Integer kernels: accumulators, pools on codes, and a layer's requantization.

Every conv and linear accumulates with `exact_matmul`: float32 GEMMs over
integer-valued operands |x - z_x| <= 255, |w| <= 128, split along K into
blocks of at most F32_EXACT_K = 514 terms, so that every partial sum is an
integer of magnitude <= 514 * 255 * 128 < 2**24 and float32 holds it
exactly; the blocks are summed in float64 (exact below 2**53) and cast to
int64. The result is the exact integer
sum whatever the BLAS, its blocking, FMA use or thread count. A conv
layer whose weights prove a larger block exact (`exact_block`: the
weights' L1 norms bound every partial sum) runs fewer, larger GEMMs,
usually one; the sums are the same integers.

``accumulate="int16-pairs"`` reproduces the u8 x s8 kernels of onnxruntime
and FBGEMM on x86 CPUs without VNNI, which sum adjacent products along K in
saturating int16 (docs/backends.md). The loop nests these kernels are
tested against are in sqref.integer.oracle.
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import numpy as np

from sqref.integer import requant
from sqref.integer.calibration import ACT_QMAX, ACT_QMIN, ActParams
from sqref.integer.model import ACCUMULATE, check_mode
from sqref.ops import IM2COL_MAX_BYTES, conv_gemm, im2col, output_size, pair

# float32 holds every integer of magnitude <= 2**24; a K-term sum of products
# |x - z_x| * |w| <= 255 * 128 stays within it while K <= 2**24 // (255 * 128).
F32_EXACT_K = 2**24 // (255 * 128)  # 514


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


def exact_matmul(a, b, *, k_block=F32_EXACT_K, as_float=False):
    """a @ b as exact int64, for integer-valued float32 operands with |a| <= 255, |b| <= 128.

    Shapes: as np.matmul, contracting a's last axis with b's second to last (K).
    Method: one float32 GEMM per block of at most ``k_block`` K positions.
    With the default F32_EXACT_K = 514, inside a block every product and every
    partial sum, in whatever order and blocking the BLAS adds them (fused
    multiply-adds included), is an integer of magnitude <= 514 * 255 * 128 =
    16,776,960 < 2**24, which float32 represents exactly: no rounding happens.
    A caller that has proven a larger block exact for its operands passes it
    (`exact_block`); ``k_block`` is that proof's result, never a guess.
    The block results are summed in float64 and cast to int64: a sum of
    blocks is an integer of magnitude <= K * 255 * 128, exact in float64 while
    K < 2**53 / 32,640 (2.7e11 terms).
    as_float: return the same exact integers as floats (float32 for one block,
    float64 for several), for a caller that casts them while copying anyway
    (`conv2d_accumulate`: ops.conv_gemm's crop into the int64 output).
    Oracle: sqref.integer.oracle (tests/test_integer.py).
    """
    k = a.shape[-1]
    acc = np.matmul(a[..., :k_block], b[..., :k_block, :])
    if k > k_block:
        acc = acc.astype(np.float64)
        for k0 in range(k_block, k, k_block):
            acc += np.matmul(a[..., k0:k0 + k_block], b[..., k0:k0 + k_block, :])  # float32 block, exact
    return acc if as_float else acc.astype(np.int64)


def exact_block(w, *, x_zero_point):
    """The K positions one float32 GEMM sums exactly for these weights: all of K when the bound allows.

    Shapes: w (OUT, K), the weight codes as integer-valued float32 (|w| <= 128).
    Bound: every partial sum of output o, in any order, is at most
    sum_k |x_k - z_x| |w[o, k]| <= A * L1(o), A = max(z_x, 255 - z_x) (x is a
    uint8 code; conv padding holds z_x, so it adds 0), L1(o) = sum_k |w[o, k]|.
    If A * max_o L1(o) <= 2**24, float32 holds every partial sum exactly and
    one GEMM over all of K is exact. Otherwise blocks of 2**24 // (A * max|w|)
    positions are, never fewer than F32_EXACT_K = 514 (the bound with A = 255,
    |w| = 128). 8-bit weights have max|w| = 127 but a mean |w| near 25, so the
    L1 bound admits K up to about 2**24 / (255 * 25) = 2,600 in one GEMM
    (the bound is `partial_sum_bound`).
    Cost: one pass over the weights (a second for max|w| when the bound
    fails), small next to a conv's output, which every extra block would
    add once more (conv2d_accumulate uses it; a linear layer's output is
    usually smaller than its weights, so it keeps 514).
    """
    k = w.shape[1]
    if k <= F32_EXACT_K:
        return max(k, 1)
    if partial_sum_bound(w, x_zero_point=x_zero_point) <= 2**24:
        return k
    zx = int(x_zero_point)
    return max(F32_EXACT_K, 2**24 // (max(zx, ACT_QMAX - zx) * max(int(np.abs(w).max()), 1)))


def partial_sum_bound(w, *, x_zero_point):
    """A * max_o L1(o): a bound on every partial sum, in any order, of sum_k (x_k - z_x) w[o, k] (`exact_block`).

    Shapes: w (OUT, K) integer-valued weights; A = max(z_x, 255 - z_x) bounds |x - z_x| for uint8 x.
    The L1 norms are float32 sums of integers <= 128 * K: exact while K <= 2**17, float64 past that.
    """
    zx = _check_zero_point(x_zero_point)
    l1 = np.abs(w).sum(axis=1, dtype=np.float32 if w.shape[1] <= 2**17 else np.float64)
    return max(zx, ACT_QMAX - zx) * float(l1.max(initial=0.0))


def int16_pairs_accumulate(a_raw, b, *, a_zero_point):
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


def conv2d_accumulate(xq, wq, *, x_zero_point, stride=1, padding=0, dilation=1, groups=1, accumulate="exact"):
    """Integer 2-D cross-correlation accumulator, as QLinearConv / ConvInteger before requantization.

    Shapes: xq (N, C, H, W), wq (K, C/groups, KH, KW) -> (N, K, OH, OW).
    Dtypes: xq uint8 codes, wq int8 codes (zero point 0); int64 out (bias not included).
    Formula: acc[n, k, oh, ow] = sum_{c, i, j} (xpad[n, c, oh*SH + i*DH, ow*SW + j*DW] - z_x) * w[k, c, i, j],
    padding holds z_x (the code of real 0).
    "exact": sqref.ops.conv_gemm of float32 (x - z_x) with `exact_matmul` (exact
    integer sums, K = C/groups * KH * KW, in blocks as large as `exact_block` proves exact). "int16-pairs": raw codes in
    onnxruntime/FBGEMM's NHWC im2col order, K = (KH, KW, C), summed by
    accumulate_u8s8_int16_pairs (the AVX2 saturation).
    Oracle: sqref.integer.oracle (tests/test_integer.py).
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
        # padding with 0 after subtracting z_x = padding the codes with z_x (real 0); the GEMMs' exact float
        # sums are cast to int64 by conv_gemm's copy into its output
        wf = wq.astype(np.float32)
        matmul = functools.partial(exact_matmul, k_block=exact_block(wf.reshape(K, -1), x_zero_point=zx),
                                   as_float=True)
        return conv_gemm(np.subtract(xq, np.float32(zx), dtype=np.float32), wf, stride=(SH, SW),
                         padding=(PH, PW), dilation=(DH, DW), groups=G, matmul=matmul, out_dtype=np.int64)
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
            acc = int16_pairs_accumulate(a_raw, b, a_zero_point=zx)
            out[n0:n0 + n, g * KG:(g + 1) * KG] = acc.reshape(n, OH, OW, KG).transpose(0, 3, 1, 2)
    return out


def linear_accumulate(xq, wq, *, x_zero_point, accumulate="exact"):
    """Integer matmul accumulator, as QLinearMatMul / MatMulInteger before requantization.

    Shapes: xq (N, IN), wq (OUT, IN) -> (N, OUT). Dtypes: uint8 and int8 codes; int64 out.
    Formula: acc[n, o] = sum_i (x[n, i] - z_x) * w[o, i]; "exact" is `exact_matmul`
    (float32 GEMMs over blocks of 514 along K, exact integer sums), "int16-pairs" the AVX2
    saturation model with K in input-feature order. Oracle: sqref.integer.oracle (tests/test_integer.py).
    """
    xq = _check_codes("xq", xq, np.uint8, 2, "N, IN")
    wq = _check_codes("wq", wq, np.int8, 2, "OUT, IN")
    if xq.shape[1] != wq.shape[1]:
        raise ValueError(f"xq shape {xq.shape} and wq shape {wq.shape}: IN must match")
    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
    zx = _check_zero_point(x_zero_point)
    if accumulate == "int16-pairs":
        return int16_pairs_accumulate(xq, wq.astype(np.int64).T, a_zero_point=zx)
    return exact_matmul(np.subtract(xq, np.float32(zx), dtype=np.float32), wq.astype(np.float32).T)


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


def max_pool2d_codes(q, *, kernel_size, stride, padding=0):
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


def avg_pool2d_codes(q, *, kernel_size, stride, padding, x: ActParams, y: ActParams, mode):
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
    the int32 bias (onnxruntime through requant.requant_onnxruntime_uint8, which gives
    requant_onnxruntime's codes in fewer passes). Dtypes: uint8 out.
    """
    zy = layer.y.zero_point
    qmin = zy if layer.relu else ACT_QMIN
    m = requant.effective_multiplier(layer.x.scale, layer.w_scale, layer.y.scale, mode=mode)
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    if mode == "onnxruntime":  # the default mode: the same codes, without int64 temporaries
        return requant.requant_onnxruntime_uint8(acc, bias=layer.bias, multiplier=m, zero_point=zy, qmin=qmin,
                                                 qmax=ACT_QMAX, axis=1)
    if mode == "fbgemm":
        ts = np.float32(layer.x.scale) * np.asarray(layer.w_scale, np.float32)
        y = requant.requant_fbgemm(acc, multiplier=m, zero_point=zy, qmin=qmin, qmax=ACT_QMAX, axis=1,
                                   bias=layer.bias_float, act_times_w_scale=ts)
    else:
        total = acc + layer.bias.astype(np.int64).reshape(shape)
        y = requant.requantize(total, multiplier=m, zero_point=zy, qmin=qmin, qmax=ACT_QMAX, mode=mode, axis=1)
    return y.astype(np.uint8)


# ----------------------------------------------------------------------------- one fused pass, mode onnxruntime


@dataclass(frozen=True)
class FusedPlan:
    """What `conv2d_requant` / `linear_requant` need of a layer, built once per layer (`fused_plan`).

    weight      the int8 weight codes as float32 (conv: K, C/groups, KH, KW; linear: OUT, IN)
    bias        the int32 bias as float32 (K,), exact: |bias| <= 2**24
    multiplier  float32 M = effective_multiplier(..., mode="onnxruntime"), () or (K,)
    lo, hi, zp  float32 clamp bounds qmin - z_y, 255 - z_y, and z_y
    """

    weight: np.ndarray
    bias: np.ndarray
    multiplier: np.ndarray
    lo: np.float32
    hi: np.float32
    zp: np.float32


_PLANS = weakref.WeakKeyDictionary()  # layer -> FusedPlan or None; an entry goes with its layer


def fused_plan(layer):
    """The layer's FusedPlan, or None when the bound below does not hold (then the two-step path runs).

    Bound: every partial sum of output o is at most A * L1(o) (`partial_sum_bound`:
    A = max(z_x, 255 - z_x), L1(o) = sum_k |w[o, k]|); when A * max_o L1(o)
    + max|bias| <= 2**24, one float32 GEMM over all of K gives the exact
    integer sums, and float32 holds acc, bias and acc + bias exactly. The
    requantization is then `requant.requant_onnxruntime_uint8`'s own float32
    branch (the branch it takes, since its test max|acc| + max|bias| <= 2**24
    is implied), run in place on the GEMM's float32 output: the same codes.
    A multiplier that is not finite also gives None: the two steps reject it.
    Cached per layer object (the layers are frozen).
    """
    if layer in _PLANS:
        return _PLANS[layer]
    w = layer.weight.astype(np.float32)
    bias = np.asarray(layer.bias, np.int64)
    bound = (partial_sum_bound(w.reshape(w.shape[0], -1), x_zero_point=layer.x.zero_point)
             + float(np.abs(bias).max(initial=0)))
    m = requant.effective_multiplier(layer.x.scale, layer.w_scale, layer.y.scale, mode="onnxruntime")
    plan = None
    if bound <= 2**24 and np.all(np.isfinite(m)):  # (an infinite M: the two steps raise their error)
        zy = layer.y.zero_point
        plan = FusedPlan(weight=w, bias=bias.astype(np.float32), multiplier=np.asarray(m, np.float32),
                         lo=np.float32((zy if layer.relu else ACT_QMIN) - zy), hi=np.float32(ACT_QMAX - zy),
                         zp=np.float32(zy))
    _PLANS[layer] = plan
    return plan


def requant_in_place(v, plan, axis):
    """requant_onnxruntime_uint8's float32 branch on exact float32 sums v (channels on `axis`), in place -> uint8."""
    shape = [1] * v.ndim
    shape[axis] = -1
    v += plan.bias.reshape(shape)
    v *= plan.multiplier.reshape(shape) if plan.multiplier.ndim else plan.multiplier
    np.clip(v, plan.lo, plan.hi, out=v)
    np.rint(v, out=v)
    return np.add(v, plan.zp, out=np.empty(v.shape, np.uint8), casting="unsafe")


def conv2d_requant(xq, layer):
    """requantize_layer(conv2d_accumulate(xq, layer.weight, ...), layer, mode="onnxruntime"), in one pass per chunk.

    The same codes (see `fused_plan`), without the int64 accumulator: each
    chunk's float32 GEMM result is requantized in place while in cache
    (ops.conv_gemm's epilogue) and stored as uint8. A layer whose bound does
    not hold runs the two steps. Shapes and checks as conv2d_accumulate.
    Tests: tests/test_integer.py compares it with the two steps.
    """
    plan = fused_plan(layer)
    if plan is None:
        acc = conv2d_accumulate(xq, layer.weight, x_zero_point=layer.x.zero_point, stride=layer.stride,
                                padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        return requantize_layer(acc, layer, mode="onnxruntime")
    xq = _check_codes("xq", xq, np.uint8, 4, "N, C, H, W")
    if xq.shape[1] != plan.weight.shape[1] * layer.groups:
        raise ValueError(f"weight {plan.weight.shape} with groups={layer.groups} does not fit input {xq.shape}")
    return conv_gemm(np.subtract(xq, np.float32(layer.x.zero_point), dtype=np.float32), plan.weight,
                     stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                     matmul=np.matmul, out_dtype=np.uint8, epilogue=lambda v: requant_in_place(v, plan, axis=0))


def linear_requant(xq, layer):
    """requantize_layer(linear_accumulate(xq, layer.weight, ...), layer, mode="onnxruntime"): one GEMM, one pass.

    The same codes (see `fused_plan`); a layer whose bound does not hold runs the two steps.
    """
    plan = fused_plan(layer)
    if plan is None:
        acc = linear_accumulate(xq, layer.weight, x_zero_point=layer.x.zero_point)
        return requantize_layer(acc, layer, mode="onnxruntime")
    xq = _check_codes("xq", xq, np.uint8, 2, "N, IN")
    if xq.shape[1] != plan.weight.shape[1]:
        raise ValueError(f"xq shape {xq.shape} and wq shape {plan.weight.shape}: IN must match")
    v = np.matmul(np.subtract(xq, np.float32(layer.x.zero_point), dtype=np.float32), plan.weight.T)
    return requant_in_place(v, plan, axis=1)
