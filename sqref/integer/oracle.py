"""Loop-nest oracles of the integer kernels: the source of truth, one output element at a time.

sqref.integer.kernels computes with GEMMs, strided views and int16-pair
corrections; this module restates each kernel as the formula it implements,
in Python integers or int64 NumPy with no shared code, so that a test (and a
reader) can check one against the other:

    naive_conv        acc[n, k, oh, ow] = sum_{c, i, j} (x[n, c, h, w] - z_x) * w[k, c, i, j]
                      (padding holds z_x), optionally with the adjacent-pair int16 saturation
    naive_linear      acc[n, o] = sum_i (x[n, i] - z_x) * w[o, i]
    naive_pool        any reduction of the in-bounds codes of every window
    naive_avg         each mode's average-pool rounding, restated per window
    conv_accumulator  the conv sums a backend computes, in its NHWC im2col order (KH, KW, C),
                      exact or with saturating u8 x s8 int16 pairs

They are slow on purpose: use them on small cases (tests draw them with
hypothesis).
"""
from __future__ import annotations

import numpy as np

from sqref.integer import requant


def naive_conv(xq, wq, *, x_zero_point, stride, padding, dilation, groups, pairs=False):
    """acc[n, k, oh, ow] one element at a time, Python ints; padding holds z_x.
    pairs: raw u8*s8 products in (KH, KW, C) order, adjacent pairs saturated to int16."""
    zx = int(x_zero_point)
    N, C, H, W = xq.shape
    K, CG, KH, KW = wq.shape
    (SH, SW), (PH, PW), (DH, DW) = stride, padding, dilation
    OH = (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1
    OW = (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1
    out = np.zeros((N, K, OH, OW), np.int64)
    for n in range(N):
        for k in range(K):
            g = k // (K // groups)
            for oh in range(OH):
                for ow in range(OW):
                    raw, wsum = [], 0
                    for i in range(KH):
                        for j in range(KW):
                            for c in range(CG):
                                h, w = oh * SH - PH + i * DH, ow * SW - PW + j * DW
                                v = int(xq[n, g * CG + c, h, w]) if 0 <= h < H and 0 <= w < W else zx
                                raw.append(v * int(wq[k, c, i, j]))
                                wsum += int(wq[k, c, i, j])
                    if pairs:
                        raw += [0] * (len(raw) % 2)
                        total = sum(min(max(raw[p] + raw[p + 1], -(2**15)), 2**15 - 1) for p in range(0, len(raw), 2))
                    else:
                        total = sum(raw)
                    out[n, k, oh, ow] = total - zx * wsum
    return out


def naive_linear(xq, wq, *, x_zero_point):
    """acc[n, o] = sum_i (x[n, i] - z_x) * w[o, i], Python ints."""
    zx = int(x_zero_point)
    return np.array([[sum((int(xq[n, i]) - zx) * int(wq[o, i]) for i in range(xq.shape[1]))
                      for o in range(wq.shape[0])] for n in range(xq.shape[0])], np.int64)


def naive_pool(q, kernel, stride, padding, reduce):
    """reduce(list of in-bounds codes, number of padded taps) for every window."""
    N, C, H, W = q.shape
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    out = np.zeros((N, C, OH, OW), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    vals = [int(q[n, c, oh * SH - PH + i, ow * SW - PW + j]) for i in range(KH) for j in range(KW)
                            if 0 <= oh * SH - PH + i < H and 0 <= ow * SW - PW + j < W]
                    out[n, c, oh, ow] = reduce(vals, KH * KW - len(vals))
    return out.astype(np.uint8)


def naive_avg(mode, x, y, kernel, hw):
    """The avg-pool rounding of each mode re-stated per window (see avg_pool2d_codes)."""
    f32 = np.float32
    n = kernel[0] * kernel[1]

    def reduce(vals, padded):
        S = sum(v - x.zero_point for v in vals)
        if mode == "onnxruntime":
            if tuple(kernel) == tuple(hw) and padded == 0:  # ORT's global average pool
                m = f32(f32(x.scale) / f32(f32(y.scale) * f32(n)))
                return int(np.clip(np.rint(f32(S) * m), -y.zero_point, 255 - y.zero_point)) + y.zero_point
            acc = f32(0)
            for v in vals:  # padded taps add +0.0: omitted
                acc = f32(acc + f32(f32(x.scale) * f32(v - x.zero_point)))
            return int(np.clip(np.rint(f32(f32(f32(acc / f32(n)) / f32(y.scale)) + f32(y.zero_point))), 0, 255))
        if mode == "onnx-reference":
            return int(np.clip(np.rint(S * x.scale / (n * y.scale)) + y.zero_point, 0, 255))
        if mode in ("tflite", "tflite-single"):
            A = sum(v - 128 for v in vals)
            r = (A + n // 2) // n if A > 0 else -((-A + n // 2) // n)
            return min(max(r + 128, 0), 255)
        m = f32(np.float64(x.scale) / np.float64(y.scale) / n)
        return int(np.clip(np.rint(f32(f32(f32(S) * m) + f32(y.zero_point))), 0, 255))
    return reduce


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


def conv_accumulator(x, w, *, x_zero_point, w_zero_point, pads, strides, dilations, groups, u8s8_pairs=False, exact_depthwise=False):
    """Conv accumulator (N, K, OH, OW) without bias, int64. zw: scalar or per output channel.
    u8s8_pairs: pairs along K saturate in int16 (requant.accumulate_u8s8_int16_pairs);
    exact_depthwise: except in depthwise groups (one input and one output channel),
    which onnxruntime runs with an exact kernel."""
    zx, zw = x_zero_point, w_zero_point
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
