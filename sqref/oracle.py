"""Loop-nest oracles: THE SOURCE OF TRUTH for the float ops.

Each function is the textbook formula written as plain nested loops over
named indices, in float64, with no vectorisation tricks. They are slow on
purpose and exist only so that the fast ops in `sqref.ops` can be checked
against something a reader verifies by eye. Tests call both on small inputs.
"""
from __future__ import annotations

import numpy as np

from sqref.ops import output_size, pair, pool_output_size, pool_pads


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """y[n, k, oh, ow] = b[k] + sum_{c, i, j} w[k, c, i, j] * x[n, g*CG + c, oh*SH - PH + i*DH, ow*SW - PW + j*DW],
    with g = k // KG and out-of-range input positions read as 0."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, C, H, W = x.shape
    K, CG, KH, KW = w.shape
    SH, SW = pair(stride, "stride")
    PH, PW = pair(padding, "padding")
    DH, DW = pair(dilation, "dilation")
    OH = output_size(H, KH, stride=SH, padding=PH, dilation=DH)
    OW = output_size(W, KW, stride=SW, padding=PW, dilation=DW)
    KG = K // groups
    y = np.zeros((N, K, OH, OW))
    for n in range(N):
        for k in range(K):
            g = k // KG
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(CG):
                        for i in range(KH):
                            for j in range(KW):
                                h = oh * SH - PH + i * DH
                                v = ow * SW - PW + j * DW
                                if 0 <= h < H and 0 <= v < W:
                                    acc += w[k, c, i, j] * x[n, g * CG + c, h, v]
                    y[n, k, oh, ow] = acc
    return y


def linear(x, w, b=None):
    """y[n, o] = b[o] + sum_i x[n, i] * w[o, i]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, IN = x.shape
    OUT = w.shape[0]
    y = np.zeros((N, OUT))
    for n in range(N):
        for o in range(OUT):
            acc = 0.0 if b is None else float(b[o])
            for i in range(IN):
                acc += x[n, i] * w[o, i]
            y[n, o] = acc
    return y


def _pool(x, kernel_size, stride, padding, dilation, ceil_mode, reduce):
    """reduce(taps) for every window; a tap is ("input", value), ("pad", None) on the declared
    padding, or ("past", None) past it (ceil mode)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    KH, KW = pair(kernel_size, "kernel_size")
    SH, SW = pair(kernel_size if stride is None else stride, "stride")
    DH, DW = pair(dilation, "dilation")
    top, left, bottom, right = pool_pads(padding)
    OH = pool_output_size(H, KH, stride=SH, pad_begin=top, pad_end=bottom, dilation=DH, ceil_mode=ceil_mode)
    OW = pool_output_size(W, KW, stride=SW, pad_begin=left, pad_end=right, dilation=DW, ceil_mode=ceil_mode)
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    taps = []
                    for i in range(KH):
                        for j in range(KW):
                            h = oh * SH - top + i * DH
                            v = ow * SW - left + j * DW
                            if 0 <= h < H and 0 <= v < W:
                                taps.append(("input", x[n, c, h, v]))
                            elif -top <= h < H + bottom and -left <= v < W + right:
                                taps.append(("pad", None))
                            else:
                                taps.append(("past", None))
                    y[n, c, oh, ow] = reduce(taps)
    return y


def max_pool2d(x, *, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """y[n, c, oh, ow] = max over the window of the input elements (padding never wins)."""
    return _pool(x, kernel_size, stride, padding, dilation, ceil_mode,
                 lambda taps: max(v for kind, v in taps if kind == "input"))


def avg_pool2d(x, *, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True):
    """y[n, c, oh, ow] = sum of the window's input elements / the number of taps that count:
    input taps, and with count_include_pad the declared padding's (as 0) too; never the
    ceil-mode overhang."""
    counted = ("input", "pad") if count_include_pad else ("input",)
    return _pool(x, kernel_size, stride, padding, dilation, ceil_mode,
                 lambda taps: sum(v for kind, v in taps if kind == "input")
                 / sum(1 for kind, _ in taps if kind in counted))
