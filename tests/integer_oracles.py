"""Integer test helpers shared by test_integer.py and the backend tests.

`codes` draws integer code arrays, extremes on purpose. `conv_accumulator`
restates in int64 numpy, without sqref's kernels, the conv sums the backends
compute: the exact ``sum (x - z_x)(w - z_w)``, or the saturating u8 x s8
kernels of onnxruntime/FBGEMM on AVX2, which pair products along K in their
NHWC im2col order (KH, KW, C).
"""
import numpy as np
from hypothesis import strategies as st

from sqref import requant

DTYPE_RANGES = {np.uint8: (0, 255), np.int8: (-128, 127), np.int64: (-(2**63), 2**63 - 1)}


@st.composite
def codes(draw, shape, dtype, lo=None, hi=None, *, dists=("extremes", "uniform", "small")):
    """Integer codes of `dtype` in [lo, hi] (default: the dtype's range) from a drawn seed,
    numpy drawing the bulk so K can be in the hundreds. Distributions: "extremes" (lo, hi,
    their neighbours and the midpoint: saturating int16 pairs, type limits), "uniform",
    "small" (|v| <= 8)."""
    lo = DTYPE_RANGES[dtype][0] if lo is None else lo
    hi = DTYPE_RANGES[dtype][1] if hi is None else hi
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dist = draw(st.sampled_from(dists))
    if dist == "extremes":
        v = rng.choice([lo, hi, lo + 1, hi - 1, (lo + hi) // 2], size=shape)
    elif dist == "small":
        v = rng.integers(max(lo, -8), min(hi, 8) + 1, size=shape)
    else:
        v = rng.integers(lo, hi + 1, size=shape)
    return v.astype(dtype)


def nhwc_patches(x, kh, kw, *, pads, strides, dilations, fill):
    """(N, C, H, W) -> (N, OH, OW, KH, KW, C) int64; pads (top, left, bottom, right) hold `fill` (the zero point)."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)
    oh = (xp.shape[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[1]), np.int64)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dilations[0], i * dilations[0] + strides[0] * (oh - 1) + 1, strides[0])
            cols = slice(j * dilations[1], j * dilations[1] + strides[1] * (ow - 1) + 1, strides[1])
            out[:, :, :, i, j, :] = xp[:, :, rows, cols].transpose(0, 2, 3, 1)
    return out


def conv_accumulator(x, w, zx, zw, *, pads, strides, dilations, groups, u8s8_pairs=False, exact_depthwise=False):
    """Conv accumulator (N, K, OH, OW) without bias, int64. zw: scalar or per output channel.
    u8s8_pairs: pairs along K saturate in int16 (requant.accumulate_u8s8_int16_pairs);
    exact_depthwise: except in depthwise groups (one input and one output channel),
    which onnxruntime runs with an exact kernel."""
    k_out, cg, kh, kw = w.shape
    kg = k_out // groups
    p = nhwc_patches(x, kh, kw, pads=pads, strides=strides, dilations=dilations, fill=zx)
    n, oh, ow = p.shape[:3]
    pairs = u8s8_pairs and not (exact_depthwise and cg == 1 and kg == 1)
    out = np.empty((n, k_out, oh, ow), np.int64)
    for g in range(groups):
        cols = p[..., g * cg : (g + 1) * cg].reshape(n * oh * ow, kh * kw * cg)
        wm = w[g * kg : (g + 1) * kg].astype(np.int64).transpose(2, 3, 1, 0).reshape(kh * kw * cg, kg)
        zwg = zw if np.ndim(zw) == 0 else np.asarray(zw)[g * kg : (g + 1) * kg]
        if pairs:
            acc = requant.accumulate_u8s8_int16_pairs(cols, wm, a_zero_point=zx, b_zero_point=zwg)
        else:
            acc = (cols - zx) @ (wm - zwg)
        out[:, g * kg : (g + 1) * kg] = acc.reshape(n, oh, ow, kg).transpose(0, 3, 1, 2)
    return out
