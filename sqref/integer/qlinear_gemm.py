"""onnxruntime's com.microsoft QGemm, the op its QDQ optimizer makes of DequantizeLinear -> Gemm -> QuantizeLinear.

    qgemm    A (u8/s8), B (u8/s8), optional int32 C -> quantized y (uint8/int8), or float32 y
             when no y_scale is given

Arithmetic (onnxruntime contrib_ops/cpu/quantization/quant_gemm.cc with MLAS's output processors,
read and measured): ``acc = C + (A - z_a) (B - z_b)`` exact in int32 (C broadcast as Gemm's C), the
output scale ``m_j = float32(float32(alpha s_a) s_b[j])`` then ``/ s_y`` in float32 (one per column with
per-column B scales), then as QLinearMatMul: ``float32(acc) * m_j``, clamp to [qmin - z_y, qmax - z_y],
round half even, ``+ z_y`` (requant.requant_onnxruntime). Without y_scale, ``y = float32(acc) * m_j``.
The accumulator is sqref.integer.qlinear.matmul_integer's (exact, or the int16 pairs of u8 x s8 kernels
on AVX2 without VNNI).
"""
from __future__ import annotations

import numpy as np

from sqref.integer import requant
from sqref.integer.qlinear import (EIGHT_BIT, QUANT_RANGES, check_int_tensor, check_scale, check_zero_point,
                                   matmul_integer, per_tensor)

F32 = np.float32


def qgemm(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c=None, y_scale=None, y_zero_point=None, *,
          alpha=1.0, trans_a=0, trans_b=0, accumulate="exact"):
    """com.microsoft QGemm: ``y = saturate(round(alpha s_a s_b ((A - z_a)(B - z_b) + C) / s_y) + z_y)``.

    Shapes: a (M, K) or (K, M) with trans_a; b (K, N) or (N, K) with trans_b; c int32 broadcast to (M, N)
    ((), (N,), (1, N), (M, 1) or (M, N)); b_scale/b_zero_point per tensor or per column (N,).
    Dtypes: a, b uint8 or int8 (zero points their dtype); scales float32; y has y_zero_point's dtype,
    or float32 without y_scale. ValueError on shapes that do not fit.
    The arithmetic of each step is in the module docstring.
    Oracle: tests/test_onnx_graph.py checks it against onnxruntime.
    """
    a = check_int_tensor("a", a, EIGHT_BIT)
    b = check_int_tensor("b", b, EIGHT_BIT)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"QGemm takes 2-D a and b, got shapes {a.shape} and {b.shape}")
    a2 = a.T if trans_a else a
    b2 = b.T if trans_b else b
    if a2.shape[1] != b2.shape[0]:
        raise ValueError(f"a {a.shape} and b {b.shape} (trans_a={trans_a}, trans_b={trans_b}): K differs")
    n = b2.shape[1]
    za = per_tensor("a_zero_point", check_zero_point("a_zero_point", a_zero_point, a.dtype, "a"))
    zb = np.asarray(check_zero_point("b_zero_point", b_zero_point, b.dtype, "b"))
    sa = per_tensor("a_scale", check_scale("a_scale", a_scale, (np.dtype(np.float32),)))
    sb = check_scale("b_scale", b_scale, (np.dtype(np.float32),))
    for name, v in (("b_scale", sb), ("b_zero_point", zb)):
        if not (v.size == 1 or v.shape == (n,)):
            raise ValueError(f"{name} must be a scalar or one per column ({n},), got shape {v.shape}")
    acc = matmul_integer(np.ascontiguousarray(a2), np.ascontiguousarray(b2), za,
                         zb.reshape(()) if zb.size == 1 else zb, accumulate=accumulate).astype(np.int64)
    if c is not None:
        c = check_int_tensor("c", c, (np.dtype(np.int32),))
        try:
            acc = acc + np.broadcast_to(c.astype(np.int64), acc.shape)
        except ValueError:
            raise ValueError(f"c of shape {c.shape} does not broadcast to the output ({acc.shape})") from None
    acc = acc.astype(np.int32).astype(np.int64)  # the int32 accumulator (wraps)
    scale = (F32(alpha) * sa) * sb.reshape(-1)  # float32, left to right as the kernel
    if y_scale is None:
        if y_zero_point is not None:
            raise ValueError("y_zero_point without y_scale: QGemm's float output has no zero point")
        return (acc.astype(F32) * scale).astype(F32)
    sy = per_tensor("y_scale", check_scale("y_scale", y_scale, (np.dtype(np.float32),)))
    zy = np.asarray(y_zero_point) if y_zero_point is not None else np.zeros((), a.dtype)
    if zy.dtype not in EIGHT_BIT:
        raise TypeError(f"y_zero_point must be uint8 or int8, got {zy.dtype}")
    m = (scale / sy).astype(F32)
    qmin, qmax = QUANT_RANGES[zy.dtype]
    y = requant.requant_onnxruntime(acc, multiplier=m.reshape(()) if m.size == 1 else m, zero_point=int(zy),
                                    qmin=qmin, qmax=qmax, axis=-1)
    return np.asarray(y).astype(zy.dtype)
