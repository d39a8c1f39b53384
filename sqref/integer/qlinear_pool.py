"""Quantized pooling as onnxruntime and TFLite run it, one function per op, bit-exact.

    qlinear_global_average_pool  com.microsoft QLinearGlobalAveragePool  (channels_last)
    qlinear_average_pool         com.microsoft QLinearAveragePool        (kernel_shape, strides, pads,
                                                                          count_include_pad, ceil_mode,
                                                                          auto_pad, channels_last);
                                 mode "tflite": TFLite AVERAGE_POOL_2D int8
    max_pool_codes               ONNX MaxPool on uint8/int8 codes (onnxruntime runs it on the codes,
                                 and a DQ -> MaxPool -> Q group with one scale and zero point equals it;
                                 PyTorch's quantized max_pool2d gives the same codes)

Mode "fbgemm" is PyTorch's quantized CPU kernels for NCHW tensors (torch 2.13, measured):
adaptive_avg_pool2d for the global pool, avg_pool2d for the average pool.

Layout NCHW (N, C, H, W), or N, C, W for 1-D pools (run as 2-D over a unit height);
``channels_last=1`` takes NHWC / NWC, as the contrib ops' attribute does. Scales are
float32 scalars and zero points per tensor of x's dtype (onnxruntime's constraints).
Pads are ONNX's (begin..., end...). The loop-nest oracles at the end restate each op
one output element at a time (tests/test_qlinear_ops.py checks the fast functions
against them, and the ops against onnxruntime and TFLite).
"""
from __future__ import annotations

import numpy as np

from sqref.integer import requant
from sqref.integer.qlinear import AUTO_PADS, QUANT_RANGES
from sqref.integer.qlinear_elementwise import check_op_mode, check_codes, check_qparams
from sqref.ops import pool_output_size

__all__ = ["qlinear_global_average_pool", "qlinear_average_pool", "max_pool_codes", "pool_geometry",
           "POOL_MODES"]

POOL_MODES = ("onnxruntime", "tflite", "fbgemm")
F32 = np.float32


# ------------------------------------------------------------------ geometry


def _ints(name, value, n, default):
    if value is None:
        return (default,) * n
    v = tuple(value)
    if len(v) != n or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in v):
        raise ValueError(f"{name} must be {n} ints, got {value!r}")
    return tuple(int(i) for i in v)


def pool_geometry(spatial, kernel_shape, strides=None, pads=None, dilations=None, *, ceil_mode=0, auto_pad="NOTSET"):
    """(kernel, strides, dilations, pads_begin, pads_end, out) per spatial axis, as ONNX pools define them.

    ``pads`` is ONNX's (x1_begin, x2_begin, ..., x1_end, x2_end, ...); auto_pad SAME_UPPER /
    SAME_LOWER put the odd pad at the end / start as onnxruntime does (``_ort_same_pads``:
    for the undilated kernel), VALID pads nothing;
    the output length is sqref.ops.pool_output_size's (ceil_mode drops a last window that
    would start in the end padding). One-line ValueError on a bad argument.
    """
    n = len(spatial)
    if kernel_shape is None:
        raise ValueError("kernel_shape is required")
    k = _ints("kernel_shape", kernel_shape, n, 1)
    s = _ints("strides", strides, n, 1)
    d = _ints("dilations", dilations, n, 1)
    if min(k + s + d) < 1:
        raise ValueError(f"kernel_shape {k}, strides {s} and dilations {d} must be >= 1")
    if auto_pad not in AUTO_PADS:
        raise ValueError(f"auto_pad must be one of {AUTO_PADS}, got {auto_pad!r}")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        both = [_ort_same_pads(spatial[i], k[i], s[i], upper=auto_pad == "SAME_UPPER") for i in range(n)]
        pb, pe = tuple(p[0] for p in both), tuple(p[1] for p in both)
    elif auto_pad == "VALID":
        pb = pe = (0,) * n
    else:
        p = _ints("pads", pads, 2 * n, 0)
        pb, pe = p[:n], p[n:]
    if auto_pad == "NOTSET" and min(pb + pe) < 0:
        raise ValueError(f"pads must be >= 0, got {pads!r}")
    out = tuple(pool_output_size(spatial[i], k[i], stride=s[i], pad_begin=pb[i], pad_end=pe[i], dilation=d[i],
                                 ceil_mode=bool(ceil_mode)) for i in range(n))
    if min(out) < 1:
        raise ValueError(f"kernel_shape {k} (dilations {d}) does not fit spatial shape {tuple(spatial)} with pads "
                         f"{pb + pe}")
    return k, s, d, pb, pe, out


def _ort_same_pads(size, kernel, stride, *, upper):
    """onnxruntime's SAME padding of one axis (PoolAttributes, "legacy" target size ceil(size / stride)):
    pad_needed = (ceil(size / stride) - 1) * stride + kernel - size, with the UNDILATED kernel, split
    with C's truncating division (SAME_UPPER: head = pad_needed / 2; SAME_LOWER: (pad_needed + 1) / 2).
    # NOTE: ONNX (and sqref.ops.same_pads) pad for the dilated kernel; the two agree when dilation
    # is 1. With dilations, onnxruntime's output shape differs from ONNX shape inference (measured).
    """
    need = (-(-size // stride) - 1) * stride + kernel - size  # may be negative when kernel < stride
    odd = need if upper else need + 1
    head = odd // 2 if odd >= 0 else -((-odd) // 2)  # C's '/' truncates toward zero
    return head, need - head


def _nchw(name, x, channels_last):
    """x as (N, C, H, W) (1-D: a unit H), and a function taking (N, C, OH, OW) back to x's layout."""
    if channels_last not in (0, 1, False, True):
        raise ValueError(f"channels_last must be 0 or 1, got {channels_last!r}")
    if x.ndim not in (3, 4):
        raise ValueError(f"{name} must be 3-D (N, C, W) or 4-D (N, C, H, W) (channels last: N, W, C or N, H, W, C), "
                         f"got shape {x.shape}; 3-D pools are not covered")
    one_d = x.ndim == 3
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    if one_d:
        x = x[:, :, None, :]

    def back(y):
        y = y[:, :, 0, :] if one_d else y
        return np.moveaxis(y, 1, -1) if channels_last else y

    return x, back


def _torch_span(size, k, s, pad, out):
    """Per output index, how many of the window's positions lie in [-pad, size + pad) (PyTorch's pool_size)."""
    start = np.arange(out) * s - pad
    return np.minimum(start + k, size + pad) - start


def _window_views(x, k, s, d, pb, pe, out, fill):
    """The KH*KW strided views (in (i, j) order) of x (N, C, H, W) padded with ``fill``, and a
    same-shaped boolean mask per view saying whether the element is a real (unpadded) one."""
    n_, c_, h_, w_ = x.shape
    pad_h = (pb[0], max(0, pe[0], (out[0] - 1) * s[0] + d[0] * (k[0] - 1) + 1 - h_ - pb[0]))
    pad_w = (pb[1], max(0, pe[1], (out[1] - 1) * s[1] + d[1] * (k[1] - 1) + 1 - w_ - pb[1]))
    xp = np.pad(x, ((0, 0), (0, 0), pad_h, pad_w), constant_values=fill)
    real = np.pad(np.ones((h_, w_), bool), (pad_h, pad_w))
    views, masks = [], []
    for i in range(k[0]):
        for j in range(k[1]):
            rows = slice(i * d[0], i * d[0] + s[0] * (out[0] - 1) + 1, s[0])
            cols = slice(j * d[1], j * d[1] + s[1] * (out[1] - 1) + 1, s[1])
            views.append(xp[:, :, rows, cols])
            masks.append(real[rows, cols])
    return views, masks


# ------------------------------------------------------------------ global average pool


def _global_acc_requant(total, n, sx, sy, zy, dtype):
    """onnxruntime's MlasQLinearGlobalAveragePool requantization of window sums ``total`` (zero point
    already subtracted) over ``n`` elements."""
    if n >= 2**24:
        raise ValueError(f"onnxruntime's QLinearGlobalAveragePool refuses an image of {n} >= 2**24 elements")
    m = sx / (sy * F32(n))  # float32, as CheckQLinearGlobalAveragePoolScaleAndSize
    if not 2.0**-32 <= float(m) < 256:
        raise ValueError(f"onnxruntime's QLinearGlobalAveragePool refuses s_x / (s_y * {n}) = {float(m)} outside "
                         f"[2**-32, 256) (parameter out of computation range)")
    qmin, qmax = QUANT_RANGES[np.dtype(dtype)]
    return requant.requant_onnxruntime(total, multiplier=m, zero_point=zy, qmin=qmin, qmax=qmax).astype(dtype)


def qlinear_global_average_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, *, channels_last=0,
                                mode="onnxruntime"):
    """com.microsoft QLinearGlobalAveragePool: ``y = saturate(round(s_x sum(x - z_x) / (n s_y)) + z_y)``.

    Shapes: (N, C, D1, ..., Dk) -> (N, C, 1, ..., 1) (channels_last: (N, D1, ..., Dk, C) ->
    (N, 1, ..., 1, C)), k >= 1; n = D1 * ... * Dk. Dtypes: x uint8 or int8, zero points
    x's dtype, scales float32 scalars; y has x's dtype.
    Arithmetic (mode "onnxruntime", MLAS qlgavgpool.cpp): ``acc = sum(x) - z_x n`` exact
    in int32; ``M = float32(s_x / float32(s_y * float32(n)))``; then MlasRequantizeOutput
    (requant.requant_onnxruntime): ``float32(acc) * M``, clamp to [qmin - z_y, qmax - z_y],
    round half even, + z_y. ValueError where onnxruntime throws: n >= 2**24, or M outside
    [2**-32, 256).
    Arithmetic (mode "fbgemm", torch.nn.functional.adaptive_avg_pool2d(x, 1) on an NCHW quantized
    tensor, AdaptiveAveragePooling.cpp ``adaptive_avg_pool_single_out_frame``): y keeps x's scale
    and zero point (ValueError otherwise); ``r = float32(float32(1 / H) / W)``,
    ``y = rne(float32(float32(sum(x)) r))`` on the RAW codes (the zero point cancels: no
    rescale). 4-D x only.
    # NOTE: PyTorch runs its channels-last kernel (rounding ``(sum(x) - z n) / n`` before adding
    # the zero point) when the tensor is also channels-last contiguous: C == 1 or H * W == 1.
    # Not modelled: fbgemm mode raises ValueError there. torch.mean over (H, W) of a quantized
    # tensor is another kernel again (not modelled).
    # NOTE: TFLite's MEAN over H, W rescales with its own multiplier and shift
    # (reference_integer_ops/mean.h); it is not modelled ("tflite" raises).
    Oracle: ``oracle_qlinear_global_average_pool``; onnxruntime and PyTorch in tests/test_qlinear_ops.py.
    """
    check_op_mode(mode, ("onnxruntime", "fbgemm"), "QLinearGlobalAveragePool")
    x = check_codes("x", x)
    if x.ndim < 3:
        raise ValueError(f"x must have at least 3 dimensions (N, C, spatial...), got shape {x.shape}")
    sx, zx = check_qparams("x", x_scale, x_zero_point, x.dtype)
    sy, zy = check_qparams("y", y_scale, y_zero_point, x.dtype)
    if channels_last not in (0, 1, False, True):
        raise ValueError(f"channels_last must be 0 or 1, got {channels_last!r}")
    if mode == "fbgemm":
        _check_torch_nchw(x, channels_last, (sx, zx), (sy, zy))
        r = (F32(1) / F32(x.shape[2])) / F32(x.shape[3])  # float32, as kDHWr
        total = x.astype(np.int64).sum(axis=(2, 3), keepdims=True).astype(F32)
        qmin, qmax = QUANT_RANGES[x.dtype]
        return np.clip(np.rint(total * r), qmin, qmax).astype(x.dtype)
    axes = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
    n = int(np.prod([x.shape[a] for a in axes]))
    total = x.astype(np.int64).sum(axis=axes, keepdims=True) - zx * n
    return _global_acc_requant(total, n, sx, sy, zy, x.dtype)


def _check_torch_nchw(x, channels_last, x_params, y_params):
    """The NCHW tensors PyTorch's quantized pools take their NCHW kernels for, with y's parameters x's."""
    if x.ndim != 4 or channels_last:
        raise ValueError(f"fbgemm mode models PyTorch's 2-D pools on NCHW tensors: x must be 4-D with "
                         f"channels_last=0, got shape {x.shape}, channels_last={channels_last}")
    if x.shape[1] == 1 or x.shape[2] * x.shape[3] == 1:
        raise ValueError(f"fbgemm mode has no model of PyTorch's channels-last pooling kernels, which run for "
                         f"NCHW tensors with C == 1 or H * W == 1: got shape {x.shape}")
    if (float(x_params[0]), x_params[1]) != (float(y_params[0]), y_params[1]):
        raise ValueError(f"PyTorch's quantized pools keep x's scale and zero point: got x {float(x_params[0])}, "
                         f"{x_params[1]} and y {float(y_params[0])}, {y_params[1]}")


# ------------------------------------------------------------------ average pool


def qlinear_average_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, *, kernel_shape, strides=None, pads=None,
                         count_include_pad=0, ceil_mode=0, auto_pad="NOTSET", channels_last=0, mode="onnxruntime"):
    """com.microsoft QLinearAveragePool: the average of ``s_x (x - z_x)`` over each window, quantized to (s_y, z_y).

    Shapes: (N, C, H, W) -> (N, C, OH, OW), or (N, C, W) -> (N, C, OW) (channels_last: N, H, W, C);
    geometry as ONNX AveragePool (``pool_geometry``; no dilations). Dtypes: x uint8 or int8,
    zero points x's dtype, scales float32 scalars; y has x's dtype.
    Arithmetic by ``mode``:
      onnxruntime  qlinear_pool.cc. A window covering the whole unpadded input (kernel_shape
                   == spatial shape, all pads 0) is ``qlinear_global_average_pool``'s integer
                   path. Otherwise, in float32: ``v = s_x * float32(x - z_x)``; the window's real
                   elements summed one at a time in (h, w) order from 0.0; divided by
                   float32(count), count = KH*KW with count_include_pad, else the number of real
                   elements (ORT clips the window to the input, so with ceil_mode and
                   count_include_pad it still divides by KH*KW); ``t = float32(float32(avg / s_y)
                   + z_y)``; round half even (nearbyintf) then clamp: the zero point is added
                   BEFORE rounding (as QLinearMul, unlike QLinearConv).
                   # NOTE: a |t| >= 2**31 converts to INT32_MIN on x86 (qmin); modelled.
      tflite       TFLite AVERAGE_POOL_2D int8 (reference_integer_ops/pooling.h): no rescale, so
                   x and y must share scale and zero point; the sum of the window's real codes,
                   divided by their count rounding half away from zero (TFLite pads never count:
                   count_include_pad must be 0), clamped. 2-D, NHWC or NCHW alike.
      fbgemm       torch.nn.functional.avg_pool2d on an NCHW quantized tensor (AveragePool2d.cpp
                   ``avg_pool2d_out_frame``): x and y share scale and zero point; 4-D x, symmetric
                   pads of at most half the kernel, no auto_pad but VALID. ``S = sum(x) - z_x n``
                   over the n real elements (exact); divisor d = n, or with count_include_pad the
                   window clipped to the padded input (in ceil mode a window past the end padding
                   counts less than KH*KW, unlike onnxruntime); ``m = float32(1.0 / d)`` (double
                   division); ``y = clamp(rne(float32(float32(float32(S) m) + z_y)))``: the zero
                   point added BEFORE rounding, in float32, no FMA.
                   # NOTE: channels-last tensors (for NCHW arrays: C == 1 or H * W == 1) take another
                   # kernel; not modelled (ValueError), nor divisor_override.
    Oracle: ``oracle_qlinear_average_pool``; onnxruntime, TFLite and PyTorch in tests/test_qlinear_ops.py.
    """
    check_op_mode(mode, POOL_MODES)
    x = check_codes("x", x)
    sx, zx = check_qparams("x", x_scale, x_zero_point, x.dtype)
    sy, zy = check_qparams("y", y_scale, y_zero_point, x.dtype)
    if count_include_pad not in (0, 1, False, True) or ceil_mode not in (0, 1, False, True):
        raise ValueError(f"count_include_pad and ceil_mode must be 0 or 1, got {count_include_pad!r}, {ceil_mode!r}")
    x4, back = _nchw("x", x, channels_last)
    spatial = x4.shape[2:]
    ks = tuple(kernel_shape) if kernel_shape is not None else None
    if x.ndim == 3 and ks is not None:  # 1-D: the unit height has a unit kernel, no pads
        ks = (1,) + ks
        strides = None if strides is None else (1,) + tuple(strides)
        pads = None if pads is None else (0, pads[0], 0, pads[1]) if len(pads) == 2 else pads
    k, s, _, pb, pe, out = pool_geometry(spatial, ks, strides, pads, None, ceil_mode=ceil_mode, auto_pad=auto_pad)
    qmin, qmax = QUANT_RANGES[x.dtype]
    if mode == "fbgemm":
        _check_torch_nchw(x, channels_last, (sx, zx), (sy, zy))
        if auto_pad not in ("NOTSET", "VALID") or pb != pe or any(p > kk // 2 for p, kk in zip(pb, k)):
            raise ValueError(f"PyTorch's avg_pool2d pads symmetrically by at most half the kernel: got pads "
                             f"{pb + pe}, kernel_shape {k}, auto_pad {auto_pad!r}")
        views, masks = _window_views(x4.astype(np.int64) - zx, k, s, (1, 1), pb, pe, out, 0)
        total = sum(views)
        if count_include_pad:  # the window clipped to [-pad, size + pad) per axis
            count = np.outer(_torch_span(spatial[0], k[0], s[0], pb[0], out[0]),
                             _torch_span(spatial[1], k[1], s[1], pb[1], out[1]))
        else:
            count = sum(m.astype(np.int64) for m in masks)
        m = (1.0 / count).astype(F32)  # double division, then float32
        t = (total.astype(F32) * m) + F32(zy)
        return back(np.clip(np.rint(t), qmin, qmax).astype(x.dtype))
    if mode == "tflite":
        if (float(sx), zx) != (float(sy), zy) or count_include_pad:
            raise ValueError("TFLite's int8 AVERAGE_POOL_2D needs x and y to share scale and zero point and "
                             f"count_include_pad=0; got ({float(sx)}, {zx}), ({float(sy)}, {zy}), "
                             f"count_include_pad={count_include_pad}")
        views, masks = _window_views(x4.astype(np.int64), k, s, (1, 1), pb, pe, out, 0)
        total, count = sum(views), sum(m.astype(np.int64) for m in masks)
        half = count // 2
        avg = np.where(total > 0, (total + half) // count, -((-total + half) // count))  # C '/' truncates
        return back(np.clip(avg, qmin, qmax).astype(x.dtype))
    if k == spatial and pb + pe == (0, 0, 0, 0):  # onnxruntime falls back to its global average pool
        total = x4.astype(np.int64).sum(axis=(2, 3), keepdims=True) - zx * k[0] * k[1]
        return back(_global_acc_requant(total, k[0] * k[1], sx, sy, zy, x.dtype))
    v = (x4.astype(np.int64) - zx).astype(F32) * sx  # one float32 rounding per element
    views, masks = _window_views(v, k, s, (1, 1), pb, pe, out, F32(0))
    acc = np.zeros(views[0].shape, F32)
    for view in views:
        acc = acc + view  # float32, one add per window element in (h, w) order; padding adds +0.0
    if count_include_pad:
        count = F32(k[0] * k[1])
    else:
        count = sum(m.astype(np.int64) for m in masks).astype(F32)
    with np.errstate(over="ignore"):
        t = (acc / count) / sy + F32(zy)
    r = requant.float_to_int32_x86(np.rint(t))
    return back(np.clip(r, qmin, qmax).astype(x.dtype))


# ------------------------------------------------------------------ max pool


def max_pool_codes(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad="NOTSET",
                   storage_order=0):
    """ONNX MaxPool on uint8 or int8 codes (onnxruntime's MaxPool kernel for 8-bit types), output Y only.

    Shapes: (N, C, H, W) -> (N, C, OH, OW), or (N, C, W) -> (N, C, OW); geometry as ONNX
    (``pool_geometry``, with dilations). y = the largest real code of each window;
    padding never wins (it is the type's lowest value, and every window holds a real
    element). Exact, with no rounding: quantization is monotone, so a DQ -> MaxPool -> Q
    group with one scale and zero point gives the same codes (onnxruntime drops such Q/DQ
    pairs and runs this kernel). ``storage_order`` only affects the Indices output.
    Oracle: ``oracle_max_pool_codes``; onnxruntime in tests/test_qlinear_ops.py.
    """
    x = check_codes("x", x)
    if storage_order not in (0, 1):
        raise ValueError(f"storage_order must be 0 or 1, got {storage_order!r}")
    x4, back = _nchw("x", x, 0)
    ks = tuple(kernel_shape) if kernel_shape is not None else None
    if x.ndim == 3 and ks is not None:
        ks = (1,) + ks
        strides = None if strides is None else (1,) + tuple(strides)
        dilations = None if dilations is None else (1,) + tuple(dilations)
        pads = None if pads is None else (0, pads[0], 0, pads[1]) if len(pads) == 2 else pads
    k, s, d, pb, pe, out = pool_geometry(x4.shape[2:], ks, strides, pads, dilations, ceil_mode=ceil_mode,
                                         auto_pad=auto_pad)
    views, masks = _window_views(x4, k, s, d, pb, pe, out, QUANT_RANGES[x.dtype][0])
    if not np.all(np.logical_or.reduce(masks)):
        raise ValueError(f"a window of kernel_shape {k} (dilations {d}, pads {pb + pe}) covers padding only")
    y = views[0].copy()
    for v in views[1:]:
        np.maximum(y, v, out=y)
    return back(y)


# ============================================================================ oracles


def _windows_of(spatial, k, s, d, pb, out, oh, ow):
    """The real (h, w) positions of output (oh, ow)'s window, in (i, j) order."""
    pos = []
    for i in range(k[0]):
        for j in range(k[1]):
            h, w = oh * s[0] - pb[0] + i * d[0], ow * s[1] - pb[1] + j * d[1]
            if 0 <= h < spatial[0] and 0 <= w < spatial[1]:
                pos.append((h, w))
    return pos


def _oracle_layout(x, channels_last):
    x = np.asarray(x)
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    return x[:, :, None, :] if x.ndim == 3 else x


def oracle_qlinear_global_average_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, *, channels_last=0,
                                       mode="onnxruntime"):
    """Global average pool one (n, c) at a time: a Python-int sum, float32 scalars for M and the product."""
    x = np.asarray(x)
    xc = np.moveaxis(x, -1, 1) if channels_last else x
    qmin, qmax = QUANT_RANGES[x.dtype]
    if mode == "fbgemm":  # adaptive_avg_pool2d: the raw codes' sum times float32(float32(1 / H) / W)
        r = np.float32(np.float32(np.float32(1) / np.float32(x.shape[2])) / np.float32(x.shape[3]))
        out = np.empty(x.shape[:2] + (1, 1), x.dtype)
        for b, c in np.ndindex(*x.shape[:2]):
            total = sum(int(v) for v in x[b, c].ravel())
            out[b, c, 0, 0] = min(max(int(round(float(np.float32(np.float32(total) * r)))), qmin), qmax)
        return out
    zx, zy = int(x_zero_point), int(y_zero_point)
    n = int(np.prod(xc.shape[2:]))
    m = np.float32(np.float32(x_scale) / np.float32(np.float32(y_scale) * np.float32(n)))
    out = np.empty(xc.shape[:2], x.dtype)
    for b in range(xc.shape[0]):
        for c in range(xc.shape[1]):
            acc = sum(int(v) for v in xc[b, c].ravel()) - zx * n
            v = np.float32(np.float32(acc) * m)
            out[b, c] = int(round(min(max(float(v), qmin - zy), qmax - zy))) + zy
    out = out.reshape(xc.shape[:2] + (1,) * (x.ndim - 2))
    return np.moveaxis(out, 1, -1) if channels_last else out


def oracle_qlinear_average_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, *, geometry, count_include_pad=0,
                                channels_last=0, mode="onnxruntime"):
    """Average pool one output element at a time; ``geometry`` is pool_geometry's tuple for the
    (H, W) of the NCHW view (1-D: a unit H)."""
    x = np.asarray(x)
    x4 = _oracle_layout(x, channels_last)
    qmin, qmax = QUANT_RANGES[x.dtype]
    zx, zy = int(x_zero_point), int(y_zero_point)
    k, s, d, pb, pe, out = geometry
    spatial = x4.shape[2:]
    y = np.empty(x4.shape[:2] + out, x.dtype)
    is_global = k == spatial and pb + pe == (0, 0, 0, 0)
    for b, c, oh, ow in np.ndindex(*y.shape):
        pos = _windows_of(spatial, k, s, d, pb, out, oh, ow)
        if mode == "fbgemm":
            total = sum(int(x4[b, c, h, w]) - zx for h, w in pos)
            if count_include_pad:
                hs, ws = oh * s[0] - pb[0], ow * s[1] - pb[1]
                cnt = (min(hs + k[0], spatial[0] + pb[0]) - hs) * (min(ws + k[1], spatial[1] + pb[1]) - ws)
            else:
                cnt = len(pos)
            t = np.float32(np.float32(np.float32(total) * np.float32(1.0 / cnt)) + np.float32(zy))
            y[b, c, oh, ow] = min(max(int(round(float(t))), qmin), qmax)
        elif mode == "tflite":
            total, cnt = sum(int(x4[b, c, h, w]) for h, w in pos), len(pos)
            q = (abs(total) + cnt // 2) // cnt * (1 if total >= 0 else -1)
            y[b, c, oh, ow] = min(max(q, qmin), qmax)
        elif is_global:
            n = k[0] * k[1]
            m = np.float32(np.float32(x_scale) / np.float32(np.float32(y_scale) * np.float32(n)))
            acc = sum(int(x4[b, c, h, w]) for h, w in pos) - zx * n
            v = np.float32(np.float32(acc) * m)
            y[b, c, oh, ow] = int(round(min(max(float(v), qmin - zy), qmax - zy))) + zy
        else:
            acc = np.float32(0)
            for h, w in pos:
                acc = np.float32(acc + np.float32(np.float32(int(x4[b, c, h, w]) - zx) * np.float32(x_scale)))
            cnt = np.float32(k[0] * k[1] if count_include_pad else len(pos))
            t = np.float32(np.float32(np.float32(acc / cnt) / np.float32(y_scale)) + np.float32(zy))
            r = int(round(float(t))) if abs(round(float(t))) < 2**31 else -(2**31)
            y[b, c, oh, ow] = min(max(r, qmin), qmax)
    y = y[:, :, 0, :] if x.ndim == 3 else y
    return np.moveaxis(y, 1, -1) if channels_last else y


def oracle_max_pool_codes(x, *, geometry):
    """Max pool one output element at a time over the real elements of each window."""
    x = np.asarray(x)
    x4 = _oracle_layout(x, 0)
    k, s, d, pb, pe, out = geometry
    y = np.empty(x4.shape[:2] + out, x.dtype)
    for b, c, oh, ow in np.ndindex(*y.shape):
        y[b, c, oh, ow] = max(int(x4[b, c, h, w]) for h, w in _windows_of(x4.shape[2:], k, s, d, pb, out, oh, ow))
    return y[:, :, 0, :] if x.ndim == 3 else y
