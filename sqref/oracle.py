"""Loop-nest oracles: THE SOURCE OF TRUTH for the float ops.

Each function is the textbook formula written as plain nested loops over
named indices, in float64, with no vectorisation tricks. They are slow on
purpose and exist only so that the fast ops in `sqref.ops` can be checked
against something a reader verifies by eye. Tests call both on small inputs.
"""
from __future__ import annotations

import numpy as np

from sqref.ops import output_size, pair


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


def _pool(x, kernel_size, stride, padding, reduce):
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    KH, KW = pair(kernel_size, "kernel_size")
    SH, SW = pair(kernel_size if stride is None else stride, "stride")
    PH, PW = pair(padding, "padding")
    OH = output_size(H, KH, stride=SH, padding=PH)
    OW = output_size(W, KW, stride=SW, padding=PW)
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    window = []
                    for i in range(KH):
                        for j in range(KW):
                            h = oh * SH - PH + i
                            v = ow * SW - PW + j
                            window.append(x[n, c, h, v] if 0 <= h < H and 0 <= v < W else None)
                    y[n, c, oh, ow] = reduce(window)
    return y


def max_pool2d(x, *, kernel_size, stride=None, padding=0):
    """y[n, c, oh, ow] = max over the window of the real (unpadded) inputs."""
    return _pool(x, kernel_size, stride, padding, lambda win: max(v for v in win if v is not None))


def avg_pool2d(x, *, kernel_size, stride=None, padding=0):
    """y[n, c, oh, ow] = sum over the window (padding counts as 0) / (KH*KW)."""
    return _pool(x, kernel_size, stride, padding, lambda win: sum(v or 0.0 for v in win) / len(win))
