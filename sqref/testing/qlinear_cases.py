"""Hypothesis strategies that draw whole ONNX nodes with sqref's answer: qlinear_conv_cases, qlinear_matmul_cases,
qlinear_add_cases and quantize_linear_cases (sqref.testing's docstring)."""
from __future__ import annotations

import numpy as np

from sqref.testing.strategies import (DTYPE_RANGES, code_range, codes, float32_binary, hypothesis_strategies,
                                      quantize_cases, zero_points)


def _np_dtype(name, value, allowed=("uint8", "int8")):
    if value is None:
        return None
    d = np.dtype(value)
    if d.name not in allowed:
        raise ValueError(f"{name} must be one of {allowed} or None, got {value!r}")
    return d


def _scales(st, rng_draw, n, *, float16):
    """n positive scales: a power of two, a 24-bit mantissa (float32 only) or an 11-bit mantissa
    (float16-representable), in [2**-12, 2**1) (float16: [2**-7, 2**1), so products stay normal)."""
    lo = -7 if float16 else -12
    kinds = ["pow2", "f16"] + ([] if float16 else ["f32"])
    out = []
    for _ in range(n):
        kind, e = rng_draw(st.sampled_from(kinds)), rng_draw(st.integers(lo, 0))
        if kind == "pow2":
            out.append(2.0**e)
        elif kind == "f16":
            out.append(rng_draw(st.integers(2**10, 2**11 - 1)) * 2.0 ** (e - 10))
        else:
            out.append(rng_draw(st.integers(2**23, 2**24 - 1)) * 2.0 ** (e - 23))
    return out


def _output_scale(st, draw, acc, base, *, tie):
    """y_scale such that M = base / y_scale spreads |acc| over a drawn number of output steps;
    with ``tie`` it is base * 2**k, so M = 2**-k exactly and acc * M hits .5 for acc = 2**(k-1) mod 2**k."""
    peak = max(1, int(np.abs(acc).max()) if acc.size else 1)
    spread = draw(st.sampled_from([2, 20, 100, 300]))
    if tie:
        return base * 2.0 ** int(np.clip(np.ceil(np.log2(peak / spread)), 1, 40))
    return base * peak / spread * draw(st.floats(0.5, 2.0))


def _aligned(st, draw, array, zps):
    """Most codes at one type limit and the zero points at the other: |code - zero point| = 255 with one
    sign, so that a K-term sum passes 2**24 once K > 258 (float32 would round it)."""
    lo, hi = (int(v) for v in DTYPE_RANGES[array.dtype.type])
    top = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = np.where(rng.random(array.shape) < 0.9, hi if top else lo, array).astype(array.dtype)
    return out, [lo if top else hi] * len(zps)


def _tie_zero_point(st, draw, ry, tie):
    """y's zero point; with a planted tie, odd half the time (rounding before or after adding an odd
    zero point is what separates onnxruntime from the ONNX evaluator)."""
    z = draw(zero_points(st, *ry))
    if tie and z % 2 == 0 and draw(st.booleans()):
        z += 1 if z < ry[1] else -1
    return z


def _zero_point_for_tie(st, draw, acc, multiplier, ry, z):
    """A zero point in ``ry`` that puts one exact tie acc * M = t + 1/2 (M a power of two, so float64 holds it)
    inside y's range, t + z and t + z + 1 both codes, of z's parity where it can (an odd zero point is what
    separates onnxruntime's rounding from the evaluator's); ``z`` when there is no such tie."""
    m = np.broadcast_to(np.asarray(multiplier, np.float64), acc.shape)
    v = acc.astype(np.float64) * m
    ties = (np.frexp(m)[0] == 0.5) & (v - np.floor(v) == 0.5)
    ts = [t for t in np.floor(v[ties]).astype(np.int64).tolist() if max(ry[0], ry[0] - t) <= min(ry[1], ry[1] - 1 - t)]
    if not ts:
        return z
    t = ts[draw(st.integers(0, len(ts) - 1))]
    lo, hi = max(ry[0], ry[0] - t), min(ry[1], ry[1] - 1 - t)
    same = [v for v in range(lo, hi + 1) if (v - z) % 2 == 0]
    return same[draw(st.integers(0, len(same) - 1))] if same else lo


def _plant_matmul_tie(st, draw, a, b, b_zp, acc, a_scale, b_scale, y_scale, dtype):
    """a with one or two codes of one row changed so that one output's accumulator is an exact .5 tie.

    With M = 2**-k at output (i, j) the accumulator must be 2**(k-1) mod 2**k. Changing a[i, u] by
    delta moves it by delta * d_u, d_u = b[u, j] - zb[j]; an odd d_u is invertible mod 2**k, so
    delta is determined mod 2**k and is tried at each odd position, then in pairs (delta1 over
    the code range, delta2 solved). Row 0 carries the scale the tie was planned with.
    """
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    idx = tuple(draw(st.integers(0, d - 1)) for d in batch)
    j = draw(st.integers(0, b.shape[-1] - 1))
    sb = np.broadcast_to(b_scale, batch + (1, b.shape[-1]))[idx + (0, j)] if b_scale.ndim else b_scale
    t = y_scale.dtype.type
    m = float(t(t(t(a_scale.ravel()[0]) * t(sb)) / y_scale))
    k = -int(np.log2(m)) if m > 0 and 2.0 ** round(np.log2(m)) == m else 0
    if not 1 <= k <= 24:
        return a
    mod = 2**k
    bi = np.broadcast_to(b, batch + b.shape[-2:])[idx].astype(np.int64)
    zb = int(np.broadcast_to(b_zp, batch + (1, b.shape[-1]))[idx + (0, j)] if b_zp.ndim else b_zp)
    d = bi[:, j] - zb
    odd = [u for u in range(len(d)) if d[u] % 2]
    if not odd:
        return a
    target = (2 ** (k - 1) - int(np.broadcast_to(acc, batch + acc.shape[-2:])[idx + (0, j)])) % mod
    a = a.copy()
    row = a[idx + (0,)] if a.ndim > 2 else a[0]  # a view: edits land in a

    def fit(u, delta):  # delta or delta - 2**k within the code range at position u
        for v in (delta, delta - mod):
            if lo <= int(row[u]) + v <= hi:
                return v
        return None

    order = draw(st.permutations(odd))
    for u in order:
        v = fit(u, target * pow(int(d[u]) % mod, -1, mod) % mod)
        if v is not None:
            row[u] = int(row[u]) + v
            return a
    for u1, u2 in zip(order, order[1:]):
        deltas = np.arange(lo - int(row[u1]), hi - int(row[u1]) + 1)
        rest = (target - deltas * int(d[u1])) % mod * pow(int(d[u2]) % mod, -1, mod) % mod
        for v1, r in zip(deltas.tolist(), rest.tolist()):
            v2 = fit(u2, r)
            if v2 is not None:
                row[u1], row[u2] = int(row[u1]) + v1, int(row[u2]) + v2
                return a
    return a


def qlinear_matmul_cases(a_dtype=None, b_dtype=None, *, y_dtype=None, scale_dtype="float32", per_row=False,
                         per_column=None, mode="onnxruntime", accumulate="exact", max_k=700, op="QLinearMatMul"):
    """Strategy for complete QLinearMatMul cases: a dict with ``op``,
    ``inputs`` (name -> array, in ONNX's order: a, a_scale, a_zero_point, b, b_scale,
    b_zero_point, y_scale, y_zero_point), ``attrs`` ({}), ``expected`` (sqref.integer.qlinear
    .qlinear_matmul in ``mode`` with ``accumulate``), ``mode`` and ``accumulate``.
    ``op="MatMulInteger"``: the same operands and zero points as MatMulInteger's inputs (A, B,
    a_zero_point, b_zero_point), ``expected`` qlinear.matmul_integer with ``accumulate`` (mode None).

    a_dtype, b_dtype: "uint8", "int8" or None (drawn); y_dtype None: a's dtype
    (onnxruntime's constraint; ONNX allows either). scale_dtype "float32" (values are
    sometimes float16-representable), "float16" or None (drawn). per_row: a's scale and
    zero point per row (onnxruntime refuses it); per_column None: drawn.
    Drawn on purpose: codes and zero points at the type limits; K past 514, where float32 sums
    of products would round, half of those with codes and zero points at opposite limits so
    that |acc| passes 2**24 (onnxruntime's float32(acc) then rounds); batch dimensions; and
    half the time y_scale = s_a s_b 2**k, a power-of-two M, with one or two codes of a's row 0
    changed so that one output is exactly a .5 tie, and y_zero_point chosen so that the tie
    lands inside y's range rather than saturating (accumulators past 2**24 need M = 2**-k with
    k > 16, which one or two codes cannot reach: about a quarter of all cases get a tie).
    """
    st = hypothesis_strategies()
    from sqref.integer import qlinear, requant

    if op not in ("QLinearMatMul", "MatMulInteger"):
        raise ValueError(f"op must be 'QLinearMatMul' or 'MatMulInteger', got {op!r}")
    fixed = [_np_dtype("a_dtype", a_dtype), _np_dtype("b_dtype", b_dtype), _np_dtype("y_dtype", y_dtype)]
    if scale_dtype not in ("float32", "float16", None):
        raise ValueError(f"scale_dtype must be 'float32', 'float16' or None, got {scale_dtype!r}")

    @st.composite
    def draw_case(draw):
        ta = fixed[0] if fixed[0] is not None else np.dtype(draw(st.sampled_from(["uint8", "int8"])))
        tb = fixed[1] if fixed[1] is not None else np.dtype(draw(st.sampled_from(["uint8", "int8"])))
        ty = fixed[2] if fixed[2] is not None else ta
        f16 = (scale_dtype or draw(st.sampled_from(["float32", "float16"]))) == "float16"
        batch = draw(st.sampled_from([(), (), (2,), (1, 2)]))
        m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        big = max_k > 514 and not f16  # float16 scales cannot spread |acc| past 2**24 over the output range
        k = draw(st.one_of(st.integers(1, min(24, max_k)), st.integers(515, max_k))) if big else \
            draw(st.integers(1, min(24, max_k)))
        a = draw(codes(batch + (m, k), ta.type))
        b = draw(codes(batch[-1:] + (k, n), tb.type))  # b broadcasts over a's leading batch axis
        cols = draw(st.booleans()) if per_column is None else per_column
        ra, rb, ry = (qlinear.QUANT_RANGES[t] for t in (ta, tb, ty))
        za = [draw(zero_points(st, *ra)) for _ in range(m if per_row else 1)]
        # per column: (N,) for a 2-D b, b's batch shape + (1, N) for a batched b (ONNX's N-D form;
        # onnxruntime refuses a 1-D one there), each batch element its own columns
        col_shape = (b.shape[:-2] + (1, n) if b.ndim > 2 else (n,)) if cols else ()
        n_cols = int(np.prod(col_shape))
        zb = [draw(zero_points(st, *rb)) for _ in range(n_cols)]
        if k > 514 and draw(st.booleans()):  # |acc| past 2**24
            a, za = _aligned(st, draw, a, za)
            b, zb = _aligned(st, draw, b, zb)
        tie = draw(st.booleans())
        sa = _scales(st, draw, m if per_row else 1, float16=f16)
        sb = _scales(st, draw, 1, float16=f16)
        if cols:  # power-of-two ratios between columns keep every column's M a power of two
            sb = ([sb[0] * 2.0 ** draw(st.integers(-2, 2)) for _ in range(n_cols)] if tie else
                  _scales(st, draw, n_cols, float16=f16))
        ft = np.float16 if f16 else np.float32
        a_scale = np.array(sa, ft).reshape((m, 1) if per_row else ())
        b_scale = np.array(sb, ft).reshape(col_shape)
        a_zp = np.array(za, ta).reshape((m, 1) if per_row else ())
        b_zp = np.array(zb, tb).reshape(col_shape)
        if op == "MatMulInteger":
            inputs = {"A": a, "B": b, "a_zero_point": a_zp, "b_zero_point": b_zp}
            expected = qlinear.matmul_integer(*inputs.values(), accumulate=accumulate)
            return {"op": op, "inputs": inputs, "attrs": {}, "expected": expected, "mode": None,
                    "accumulate": accumulate}
        acc = qlinear.matmul_integer(a, b, a_zp, b_zp)
        base = float(ft(float(a_scale.ravel()[0]) * float(b_scale.ravel()[0])))
        lo, hi = (2.0**-14, 6e4) if f16 else (2.0**-40, 2.0**40)
        y_scale = np.array(np.clip(_output_scale(st, draw, acc, base, tie=tie), lo, hi), ft)
        if tie:
            a = _plant_matmul_tie(st, draw, a, b, b_zp, acc, a_scale, b_scale, y_scale, ta)
        y_zp = _tie_zero_point(st, draw, ry, tie)
        if tie:  # a zero point of the drawn parity that keeps a planted tie inside y's range
            m = requant.effective_multiplier(a_scale, b_scale, y_scale, mode="onnxruntime")
            y_zp = _zero_point_for_tie(st, draw, qlinear.matmul_integer(a, b, a_zp, b_zp), m, ry, y_zp)
        y_zp = np.array(y_zp, ty)
        inputs = {"a": a, "a_scale": a_scale, "a_zero_point": a_zp, "b": b, "b_scale": b_scale, "b_zero_point": b_zp,
                  "y_scale": y_scale, "y_zero_point": y_zp}
        expected = qlinear.qlinear_matmul(*inputs.values(), mode=mode, accumulate=accumulate)
        return {"op": op, "inputs": inputs, "attrs": {}, "expected": expected, "mode": mode, "accumulate": accumulate}

    return draw_case()


def qlinear_conv_cases(x_dtype=None, w_dtype=None, *, y_dtype=None, per_channel=None, bias=None,
                       mode="onnxruntime", accumulate="exact", max_k=630, op="QLinearConv"):
    """Strategy for complete QLinearConv cases: a dict with ``op``, ``inputs`` (name -> array, in
    ONNX's order: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B;
    B is None without a bias), ``attrs`` (kernel_shape, strides, pads, dilations, group),
    ``expected`` (sqref.integer.qlinear.qlinear_conv in ``mode`` with ``accumulate``), ``mode``
    and ``accumulate``. ``op="ConvInteger"``: the same x, w and zero points as ConvInteger's
    inputs (x, w, x_zero_point, w_zero_point), ``expected`` qlinear.conv_integer (exact; mode None).

    x_dtype, w_dtype: "uint8", "int8" or None (drawn); y_dtype None: x's dtype. per_channel
    (w_scale and w_zero_point, with unequal zero points) and bias: None = drawn. Scales are
    float32 (QLinearConv's type), sometimes float16-representable.
    Drawn on purpose: grouped and depthwise convs, strides, dilations, asymmetric pads,
    codes and zero points at the type limits, C/group * KH * KW past 514 (float32 sums of
    products would round; half of those aligned at opposite limits, |acc| past 2**24), and,
    half the time, a power-of-two M with a bias per channel chosen so that one output lands
    exactly on a .5 tie inside the output range.
    """
    st = hypothesis_strategies()
    from sqref.integer import qlinear

    if op not in ("QLinearConv", "ConvInteger"):
        raise ValueError(f"op must be 'QLinearConv' or 'ConvInteger', got {op!r}")
    fixed = [_np_dtype("x_dtype", x_dtype), _np_dtype("w_dtype", w_dtype), _np_dtype("y_dtype", y_dtype)]

    @st.composite
    def draw_case(draw):
        tx = fixed[0] if fixed[0] is not None else np.dtype(draw(st.sampled_from(["uint8", "int8"])))
        tw = fixed[1] if fixed[1] is not None else np.dtype(draw(st.sampled_from(["uint8", "int8"])))
        ty = fixed[2] if fixed[2] is not None else tx
        shape = draw(st.sampled_from(["small", "small", "depthwise", "large_k"] if max_k > 514 else
                                     ["small", "small", "depthwise"]))
        kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        if shape == "depthwise":
            group = draw(st.integers(1, 8))
            cg, kg = 1, 1
        elif shape == "large_k":
            group, kg = 1, draw(st.integers(1, 2))
            kh = kw = 3
            cg = draw(st.integers(-(-515 // 9), max_k // 9))
        else:
            group, cg, kg = draw(st.sampled_from([1, 1, 2, 3])), draw(st.integers(1, 4)), draw(st.integers(1, 3))
        dil = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
        strides = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
        pads = [draw(st.integers(0, 2)) for _ in range(4)] if shape != "large_k" else [0, 0, 0, 0]
        h = max(1, dil[0] * (kh - 1) + 1 - pads[0] - pads[2] + draw(st.integers(0, 3)))
        w_ = max(1, dil[1] * (kw - 1) + 1 - pads[1] - pads[3] + draw(st.integers(0, 3)))
        x = draw(codes((draw(st.integers(1, 2)), cg * group, h, w_), tx.type))
        w = draw(codes((kg * group, cg, kh, kw), tw.type))
        m_out = w.shape[0]
        chan = draw(st.booleans()) if per_channel is None else per_channel
        rx, rw, ry = (qlinear.QUANT_RANGES[t] for t in (tx, tw, ty))
        zx = draw(zero_points(st, *rx))
        zw = [draw(zero_points(st, *rw)) for _ in range(m_out if chan else 1)]
        if shape == "large_k" and draw(st.booleans()):  # |acc| past 2**24
            x, (zx,) = _aligned(st, draw, x, [zx])
            w, zw = _aligned(st, draw, w, zw)
        zx = np.array(zx, tx)
        zw = np.array(zw, tw).reshape((m_out,) if chan else ())
        attrs = dict(kernel_shape=[kh, kw], strides=strides, pads=pads, dilations=dil, group=group)
        geo = {k: v for k, v in attrs.items() if k != "kernel_shape"}
        if op == "ConvInteger":
            inputs = {"x": x, "w": w, "x_zero_point": zx, "w_zero_point": zw}
            expected = qlinear.conv_integer(*inputs.values(), **geo)
            return {"op": op, "inputs": inputs, "attrs": attrs, "expected": expected, "mode": None,
                    "accumulate": "exact"}
        tie = draw(st.booleans())
        sx = _scales(st, draw, 1, float16=False)[0]
        sw0 = _scales(st, draw, 1, float16=False)[0]
        sw = ([sw0 * 2.0 ** draw(st.integers(-2, 2)) for _ in range(m_out)] if tie else
              _scales(st, draw, m_out, float16=False)) if chan else [sw0]
        w_scale = np.array(sw, np.float32).reshape((m_out,) if chan else ())
        acc = qlinear.conv_integer(x, w, zx, zw, **geo).astype(np.int64)
        with_bias = (tie or draw(st.booleans())) if bias is None else bias
        base = float(np.float32(np.float32(sx) * np.float32(sw0)))
        y_scale = np.float32(np.clip(_output_scale(st, draw, acc, base, tie=tie), 2.0**-40, 2.0**40))
        y_zp = np.array(_tie_zero_point(st, draw, ry, tie), ty)
        b = None
        if with_bias:
            b = np.array([draw(st.integers(-(2**16), 2**16)) for _ in range(m_out)], np.int64)
            for c in range(m_out if tie else 0):  # move one output per channel onto a tie t + 1/2, t + z_y in range
                mc = float(np.float32(np.float32(np.float32(sx) * np.float32(sw[c if chan else 0])) / y_scale))
                step = 1 / mc  # M = 2**-k: acc = t * 2**k + 2**(k-1) gives t + 1/2 exactly
                if 2 <= step <= 2**22 and step == int(step):
                    n, oh, ow = (draw(st.integers(0, d - 1)) for d in (acc.shape[0],) + acc.shape[2:])
                    t = draw(st.integers(ry[0] - int(y_zp), ry[1] - int(y_zp) - 1))
                    b[c] = t * int(step) + int(step) // 2 - acc[n, c, oh, ow]
            b = np.clip(b, -(2**31), 2**31 - 1).astype(np.int32)
        inputs = {"x": x, "x_scale": np.array(sx, np.float32), "x_zero_point": zx, "w": w, "w_scale": w_scale,
                  "w_zero_point": zw, "y_scale": np.array(y_scale, np.float32), "y_zero_point": y_zp, "B": b}
        expected = qlinear.qlinear_conv(*inputs.values(), **geo, mode=mode, accumulate=accumulate)
        return {"op": op, "inputs": inputs, "attrs": attrs, "expected": expected, "mode": mode,
                "accumulate": accumulate}

    return draw_case()


def _broadcast_pair(st, draw):
    """Two shapes that broadcast: equal, one with 1s, one a trailing part, or a scalar-like (1,) / ()."""
    a = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    kind = draw(st.sampled_from(["same", "ones", "trailing", "scalar"]))
    if kind == "same":
        b = a
    elif kind == "ones":
        b = tuple(d if draw(st.booleans()) else 1 for d in a)
    elif kind == "trailing":
        b = a[draw(st.integers(0, len(a) - 1)):]
    else:
        b = draw(st.sampled_from([(1,), ()]))
    return (b, a) if draw(st.booleans()) else (a, b)


def _plant_elementwise_tie(st, draw, op, a, b, zps, scales, limits):
    """a and b with one element each (often only a's) changed so that one output of QLinearAdd,
    ``z_c + s_a/s_c (a - z_a) + s_b/s_c (b - z_b)``, or QLinearMul, ``z_c + s_a s_b/s_c (a - z_a)(b - z_b)``,
    is exactly t + 1/2 with t and t + 1 inside the code range. The scales are powers of two, so
    float64 holds these values exactly, and so does every backend's float32. Unchanged when no
    pair of codes gives a .5 (both ratios 1, say)."""
    (za, zb, zc), (sa, sb, sc), (lo, hi) = zps, scales, limits
    shape = np.broadcast_shapes(a.shape, b.shape)
    ia = np.broadcast_to(np.arange(a.size).reshape(a.shape), shape).ravel()
    ib = np.broadcast_to(np.arange(b.size).reshape(b.shape), shape).ravel()
    o = draw(st.integers(0, ia.size - 1))  # the output element that gets the tie
    grid = np.arange(lo, hi + 1, dtype=np.float64)
    da, db = grid[:, None] - za, grid[None, :] - zb  # every (a code, b code) pair
    v = zc + (sa / sc * da + sb / sc * db if op == "QLinearAdd" else sa * sb / sc * da * db)
    ok = (v - np.floor(v) == 0.5) & (v >= lo + 0.5) & (v <= hi - 0.5)
    a, b = a.copy(), b.copy()
    b_now = int(b.reshape(-1)[ib[o]]) - lo
    if ok[:, b_now].any():  # change a alone
        rows = np.flatnonzero(ok[:, b_now])
        a.reshape(-1)[ia[o]] = lo + int(rows[draw(st.integers(0, len(rows) - 1))])
    elif ok.any():
        pairs = np.argwhere(ok)
        r, c = pairs[draw(st.integers(0, len(pairs) - 1))]
        a.reshape(-1)[ia[o]], b.reshape(-1)[ib[o]] = lo + int(r), lo + int(c)
    return a, b


def qlinear_add_cases(dtype=None, *, op="QLinearAdd", mode="onnxruntime"):
    """Strategy for complete com.microsoft QLinearAdd or QLinearMul cases: a dict with ``op``,
    ``inputs`` (name -> array, in the op's order: a, a_scale, a_zero_point, b, b_scale,
    b_zero_point, c_scale, c_zero_point), ``attrs`` ({}), ``expected``
    (sqref.integer.qlinear_elementwise in ``mode``), ``mode`` and ``kind``.

    dtype "uint8", "int8" or None (drawn). Shapes broadcast (equal, with 1s, trailing, a
    scalar b or a). Scales are float32 scalars of three kinds ("kind"): "tie": powers of
    two whose ratios s_a / s_c, s_b / s_c (QLinearMul: s_a s_b / s_c) are 2**-k, so every
    float32 step is exact, and one element of a (or of a and b) changed so that one output is
    exactly t + 1/2 before rounding, t and t + 1 in range (where the ratios allow a .5:
    about 4 in 10 cases); "f16": float16-representable
    mantissas; "saturate": s_c up to 2**10 times smaller than the inputs' scales, so most
    outputs saturate. Zero points favour the type limits.
    """
    st = hypothesis_strategies()
    from sqref.integer import qlinear_elementwise

    if op not in ("QLinearAdd", "QLinearMul"):
        raise ValueError(f"op must be 'QLinearAdd' or 'QLinearMul', got {op!r}")
    fixed = _np_dtype("dtype", dtype)
    fn = qlinear_elementwise.qlinear_add if op == "QLinearAdd" else qlinear_elementwise.qlinear_mul

    @st.composite
    def draw_case(draw):
        t = fixed if fixed is not None else np.dtype(draw(st.sampled_from(["uint8", "int8"])))
        lo, hi = code_range(t.name)
        sa_shape, sb_shape = _broadcast_pair(st, draw)
        a = draw(codes(sa_shape, t.type))
        b = draw(codes(sb_shape, t.type))
        za, zb, zc = (draw(zero_points(st, lo, hi)) for _ in range(3))
        kind = draw(st.sampled_from(["tie", "tie", "f16", "saturate"]))
        if kind == "tie":
            sc = 2.0 ** draw(st.integers(-10, 0))
            sa, sb = (sc * 2.0 ** -draw(st.integers(0 if op == "QLinearAdd" else -4, 4)) for _ in range(2))
        elif kind == "f16":
            sa, sb, sc = (draw(st.integers(2**10, 2**11 - 1)) * 2.0 ** (draw(st.integers(-12, 0)) - 10)
                          for _ in range(3))
        else:
            sa, sb = (draw(float32_binary(st, -8, -1)) for _ in range(2))
            sc = min(sa, sb) * 2.0 ** -draw(st.integers(0, 10)) * (1 if op == "QLinearAdd" else min(sa, sb))
        if kind == "tie":
            a, b = _plant_elementwise_tie(st, draw, op, a, b, (za, zb, zc), (sa, sb, sc), (lo, hi))
        f32 = np.float32
        inputs = {"a": a, "a_scale": np.array(sa, f32), "a_zero_point": np.array(za, t), "b": b,
                  "b_scale": np.array(sb, f32), "b_zero_point": np.array(zb, t), "c_scale": np.array(sc, f32),
                  "c_zero_point": np.array(zc, t)}
        expected = fn(*inputs.values(), mode=mode)
        return {"op": op, "inputs": inputs, "attrs": {}, "expected": expected, "mode": mode, "kind": kind}

    return draw_case()


def quantize_linear_cases(dtype=None, *, op="QuantizeLinear", mode="onnxruntime", max_size=8):
    """Strategy for complete QuantizeLinear, DequantizeLinear or DynamicQuantizeLinear cases, dicts
    as qlinear_conv_cases' (``op``, ``inputs``, ``attrs`` {}, ``expected``, ``mode``), from quantize_cases.

    QuantizeLinear         x (1-D float32), y_scale (float32), y_zero_point (``dtype``: "uint8",
                           "int8" or None, drawn); quantize_cases' kinds: exact .5 ties, a few ulps
                           from a tie, saturation with +-inf; ``expected`` qlinear.quantize_linear in ``mode``.
    DequantizeLinear       x the codes of such a case, x_scale, x_zero_point; ``expected``
                           qlinear.dequantize_linear (one arithmetic everywhere: mode None).
    DynamicQuantizeLinear  x float32 (quantize_cases' finite kinds, all zeros, or a grid: multiples of
                           half a step of the 255-level grid of [lo, hi], so that x / y_scale can
                           land on .5); ``expected`` the tuple (y, y_scale, y_zero_point) of
                           qlinear.dynamic_quantize_linear in ``mode``.
    """
    st = hypothesis_strategies()
    from sqref.integer import qlinear

    if op not in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        raise ValueError(f"op must be 'QuantizeLinear', 'DequantizeLinear' or 'DynamicQuantizeLinear', got {op!r}")
    _np_dtype("dtype", dtype)
    f32 = np.float32

    @st.composite
    def draw_case(draw):
        if op == "DynamicQuantizeLinear":
            kind = draw(st.sampled_from(["grid", "grid", "zeros", "quantize"]))
            n = draw(st.integers(1, max_size))
            if kind == "grid":
                lo, hi = -draw(st.integers(0, 10)), draw(st.integers(0, 10))
                step = f32(hi - lo) / f32(510) if hi != lo else f32(1)
                x = np.array([lo, hi] + [draw(st.integers(0, 510)) * float(step) + lo for _ in range(n)], f32)
            elif kind == "zeros":
                x = np.zeros(n, f32)
            else:
                x = draw(quantize_cases(dtype, max_size=max_size, kinds=("tie", "reciprocal", "generic")))[0]
            expected = qlinear.dynamic_quantize_linear(x, mode=mode)
            return {"op": op, "inputs": {"x": x}, "attrs": {}, "expected": expected, "mode": mode}
        x, scale, zp, qmin, _ = draw(quantize_cases(dtype, max_size=max_size))
        t = np.dtype(np.uint8 if qmin == 0 else np.int8)
        s, z = np.array(scale, f32), np.array(zp, t)
        if op == "QuantizeLinear":
            inputs = {"x": x, "y_scale": s, "y_zero_point": z}
            return {"op": op, "inputs": inputs, "attrs": {}, "expected": qlinear.quantize_linear(x, s, z, mode=mode),
                    "mode": mode}
        q = qlinear.quantize_linear(x, s, z)
        inputs = {"x": q, "x_scale": s, "x_zero_point": z}
        return {"op": op, "inputs": inputs, "attrs": {}, "expected": qlinear.dequantize_linear(q, s, z), "mode": None}

    return draw_case()
