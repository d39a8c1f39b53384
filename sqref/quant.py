"""Uniform k-bit quantization grids for weights (docs/method.md section 1).

    symmetric (default)  qmax = 2**(k-1) - 1, codes in [-qmax, qmax], s = alpha / qmax, z = 0
    asymmetric           codes in [0, 2**k - 1], s = (hi - lo) / (2**k - 1), z = round(-lo / s)
    both                 q = clamp(round(w / s) + z, qmin, qmax),   w_hat = s * (q - z)

Choices made here (the spec leaves them open):

* The scale is rounded to float32 once, in `grid_params`, and that float32 value
  is the scale everywhere (quantize, dequantize, fake_quant, the MSE). Files and
  backends (ONNX, TFLite) store float32 scales, so a saved and reloaded model
  dequantizes to the same numbers. A side effect used by the tests: with a
  24-bit scale and |q - z| <= 255, s * (q - z) is exact in float64, so
  fake_quant is exactly idempotent.
* Arithmetic is float64 whatever the input dtype; fake_quant casts back.
* Codes are int8 for the symmetric grid (|q| <= 127) and uint8 for the
  asymmetric grid (q <= 255). Every k in [2, 8] fits one byte, so no wider
  container is needed. Zero points are int32 (never the codes' dtype, so that
  q - z cannot wrap around).
* A boundary of 0 clips everything to 0: codes are all zero (all equal to z)
  and the scale is the placeholder 1.0. This is what an all-zero tensor or
  channel gets from every clipping rule.
"""
import math

import numpy as np

ROUNDINGS = ("half_even", "half_away")
SCHEMES = ("symmetric", "asymmetric")
BITS_RANGE = (2, 8)  # weights; docs/method.md section 1
_CHUNK = 1 << 16  # elements per block in quant_mse: keeps the temporaries in cache


# ----------------------------------------------------------------------------- rounding
def round_half_even(x, out=None):
    """Round to nearest, ties to even, as np.rint (ONNX QuantizeLinear, ORT, PyTorch).

    Dtypes: float in, same float out. round_half_even(2.5) == 2, (-0.5) == -0.
    """
    return np.rint(x, out=out)


def round_half_away(x, out=None):
    """Round to nearest, ties away from zero, as C `round` (TFLite QUANTIZE).

    Dtypes: float in, same float out. round_half_away(2.5) == 3, (-2.5) == -3.
    Formula: t = trunc(x); r = t + 1 if x - t >= 0.5, t - 1 if x - t <= -0.5, else t.
    The fraction x - trunc(x) is exact in floating point, so this avoids the
    classic bug of floor(x + 0.5), which rounds 0.49999999999999994 up to 1.
    `out` may be `x` itself.
    """
    x = np.asarray(x)
    t = np.trunc(x)
    frac = x - t  # exact
    r = np.add(t, frac >= 0.5, out=out)
    r -= frac <= -0.5
    return r


_ROUND = {"half_even": round_half_even, "half_away": round_half_away}


# ----------------------------------------------------------------------------- checks
def _where(name):
    return f"layer {name!r} weight" if name is not None else "weight tensor"


def check_bits(bits, *, lo=BITS_RANGE[0], hi=BITS_RANGE[1]):
    """Return `bits` as an int after checking it is an integer in [lo, hi].

    bool, float and str are refused with TypeError (True is not 1 bit, 8.0 and
    "8" are not bit widths); an integer outside [lo, hi] is a ValueError.
    """
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int in [{lo}, {hi}], got {bits!r} ({type(bits).__name__})")
    if not lo <= bits <= hi:
        raise ValueError(f"bits must be in [{lo}, {hi}], got {bits}")
    return int(bits)


def check_rounding(rounding):
    """Return the rounding function named `rounding` ('half_even' or 'half_away')."""
    if rounding not in _ROUND:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return _ROUND[rounding]


def check_weights(w, *, name=None):
    """Return `w` as a non-empty, finite, floating ndarray (no copy if it already is one).

    Lists are converted to float64. Integer, bool and complex arrays are a
    TypeError; empty arrays, NaN and Inf are a ValueError whose message names
    the layer when `name` is given ("layer 'fc1' weight contains NaN ...").
    """
    if not isinstance(w, np.ndarray):
        w = np.asarray(w, dtype=np.float64)
    if w.dtype.kind != "f":
        raise TypeError(f"{_where(name)} must be a floating array, got dtype {w.dtype}")
    if w.size == 0:
        raise ValueError(f"{_where(name)} is empty (shape {w.shape}); nothing to quantize")
    if not np.isfinite(w).all():
        bad = ~np.isfinite(w)
        kind = "NaN" if np.isnan(w).any() else "Inf"
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{_where(name)} contains {kind} ({int(bad.sum())} non-finite values, first at index {first}, "
            f"shape {w.shape})"
        )
    return w


def check_axis(axis, ndim, *, name=None):
    """Return `axis` normalised to [0, ndim), or None for per-tensor; ValueError if out of range."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be None or an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for the {ndim}-D {_where(name)}")
    return int(axis) % ndim


def _per_channel_array(value, what, w, axis, *, name=None):
    """Check a boundary (alpha, lo or hi): a scalar, or one value per channel when axis is given."""
    v = np.asarray(value, dtype=np.float64)
    if axis is None and v.ndim != 0:
        raise ValueError(f"{what} must be a scalar for a per-tensor grid, got shape {v.shape}")
    if axis is not None and v.shape not in ((), (w.shape[axis],)):
        raise ValueError(
            f"{what} must be a scalar or have shape ({w.shape[axis]},) (one value per channel of axis {axis} "
            f"of {_where(name)} with shape {w.shape}), got shape {v.shape}"
        )
    if not np.isfinite(v).all():
        raise ValueError(f"{what} must be finite, got {value!r}")
    if axis is not None:
        v = np.broadcast_to(v, (w.shape[axis],)).copy()
    return v


def _along(v, ndim, axis):
    """Reshape a per-channel vector so it broadcasts against a tensor along `axis`."""
    if axis is None:
        return v
    shape = [1] * ndim
    shape[axis] = -1
    return np.reshape(v, shape)


# ----------------------------------------------------------------------------- grid
def _float32_scale(value, bits):
    s = np.asarray(value, dtype=np.float64)
    tiny, big = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    bad = (s != 0) & ((s < tiny) | (s > big))
    if bad.any():
        raise ValueError(
            f"scale {s[bad].ravel()[0]!r} for {bits}-bit codes is not a normal float32 "
            f"(boundary too small or too large)"
        )
    return np.where(s == 0, 1.0, s).astype(np.float32)  # boundary 0 -> placeholder scale 1.0


def grid_params(*, bits, alpha=None, scheme="symmetric", lo=None, hi=None, rounding="half_even"):
    """Scale, zero point and code range of a k-bit grid, as TFLite/ONNX weight quantization.

    symmetric:  s = alpha / qmax, z = 0, codes in [-qmax, qmax], qmax = 2**(k-1) - 1.
    asymmetric: s = (hi - lo) / (2**k - 1), z = clamp(round(-lo / s), 0, 2**k - 1),
                codes in [0, 2**k - 1]; `rounding` rounds z.
    Shapes: alpha (or lo, hi) a scalar or a (C,) vector; scale and zero_point
    have the same shape. Dtypes: scale float32 (see the module docstring),
    zero_point int32, qmin and qmax Python ints.
    A boundary of 0 (alpha == 0, or lo == hi == 0) gives scale 1.0 and z = 0.
    Checked in tests/test_quant.py against hand-computed grids.
    """
    bits = check_bits(bits)
    round_fn = check_rounding(rounding)
    if scheme == "symmetric":
        if alpha is None or lo is not None or hi is not None:
            raise ValueError("the symmetric grid takes alpha (and no lo/hi)")
        a = np.asarray(alpha, dtype=np.float64)
        if not (np.isfinite(a).all() and (a >= 0).all()):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
        qmax = 2 ** (bits - 1) - 1
        scale = _float32_scale(a / qmax, bits)
        zero_point = np.zeros(a.shape, dtype=np.int32)
        return scale[()], zero_point[()], -qmax, qmax  # [()]: a 0-d array becomes a numpy scalar
    if scheme == "asymmetric":
        if lo is None or hi is None:
            raise ValueError("the asymmetric grid takes lo and hi")
        lo_, hi_ = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        if not (np.isfinite(lo_).all() and np.isfinite(hi_).all() and (lo_ <= 0).all() and (hi_ >= 0).all()):
            raise ValueError(f"need finite lo <= 0 <= hi, got lo={lo!r}, hi={hi!r}")
        qmax = 2**bits - 1
        scale = _float32_scale((hi_ - lo_) / qmax, bits)
        z = round_fn(-lo_ / scale.astype(np.float64))
        zero_point = np.clip(z, 0, qmax).astype(np.int32)
        return scale[()], zero_point[()], 0, qmax
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def _asymmetric_range(x, alpha, axis):
    """[lo, hi] = the tensor's (or each channel's) [min, max], widened to hold 0, clipped to [-alpha, alpha]."""
    others = None if axis is None else tuple(d for d in range(x.ndim) if d != axis)
    lo = np.minimum(np.min(x, axis=others).astype(np.float64), 0.0)
    hi = np.maximum(np.max(x, axis=others).astype(np.float64), 0.0)
    if alpha is not None:
        lo, hi = np.maximum(lo, -alpha), np.minimum(hi, alpha)
    return lo, hi


# ----------------------------------------------------------------------------- quantize
def quantize(w, *, bits, alpha=None, scheme="symmetric", axis=None, rounding="half_even", lo=None, hi=None,
             name=None):
    """k-bit uniform quantization, as ONNX QuantizeLinear with a symmetric or asymmetric grid.

    Shapes: w any shape; alpha (symmetric) a scalar, or with `axis` a scalar or
    one value per channel (C = w.shape[axis], e.g. axis=0 of OIHW / out x in).
    Returns (codes, scale, zero_point): codes with w's shape; scale and
    zero_point scalars (per tensor) or (C,) vectors (per channel).
    Dtypes: codes int8 (symmetric) or uint8 (asymmetric); scale float32;
    zero_point int32; the arithmetic is float64.
    Formula: q = clamp(round(w / s) + z, qmin, qmax) (grid_params gives s, z, qmin, qmax).
    The asymmetric range is lo/hi if given, else the tensor's (or channel's)
    min/max widened to include 0 and clipped to [-alpha, alpha] (alpha None: no clipping).
    Tests: a plain-Python per-element loop oracle (tests/test_quant.py), exact.
    """
    w = check_weights(w, name=name)
    bits = check_bits(bits)
    round_fn = check_rounding(rounding)
    axis = check_axis(axis, w.ndim, name=name)
    x = w.astype(np.float64, copy=False)
    if scheme == "symmetric":
        if alpha is None or lo is not None or hi is not None:
            raise ValueError("scheme='symmetric' takes alpha (and no lo/hi)")
        alpha = _per_channel_array(alpha, "alpha", w, axis, name=name)
        scale, zero_point, qmin, qmax = grid_params(bits=bits, alpha=alpha)
        dead = alpha == 0  # boundary 0: everything clips to 0
    elif scheme == "asymmetric":
        if (lo is None) != (hi is None) or (alpha is not None and lo is not None):
            raise ValueError("scheme='asymmetric' takes either lo and hi, or alpha (or neither: no clipping)")
        if alpha is not None:
            alpha = _per_channel_array(alpha, "alpha", w, axis, name=name)
            if (alpha < 0).any():
                raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if lo is None:
            lo, hi = _asymmetric_range(x, alpha, axis)
        else:
            lo = _per_channel_array(lo, "lo", w, axis, name=name)
            hi = _per_channel_array(hi, "hi", w, axis, name=name)
        scale, zero_point, qmin, qmax = grid_params(bits=bits, scheme="asymmetric", lo=lo, hi=hi,
                                                    rounding=rounding)
        dead = np.asarray(hi) - np.asarray(lo) == 0
    else:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    s = _along(scale.astype(np.float64), w.ndim, axis)
    z = _along(zero_point, w.ndim, axis)
    # A dead (zero-width) channel has the range [z, z]; the others [qmin, qmax].
    q_lo = _along(np.where(dead, zero_point, qmin), w.ndim, axis)
    q_hi = _along(np.where(dead, zero_point, qmax), w.ndim, axis)
    q = round_fn(x / s)
    q += z
    np.clip(q, q_lo, q_hi, out=q)
    codes = q.astype(np.int8 if scheme == "symmetric" else np.uint8)
    return codes, scale, zero_point


def dequantize(codes, scale, zero_point, *, axis=None, dtype=np.float64):
    """Inverse of quantize, as ONNX DequantizeLinear: w_hat = s * (q - z).

    Shapes: codes any shape; scale and zero_point scalars, or (C,) vectors
    along `axis`. Dtypes: integer codes; float64 out by default (exact, since
    s is float32 and |q - z| <= 255); pass dtype=np.float32 for a float32 model.
    """
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    axis = check_axis(axis, codes.ndim)
    s = np.asarray(scale, dtype=np.float64)
    z = np.asarray(zero_point)
    for what, v in (("scale", s), ("zero_point", z)):
        expected = [()] if axis is None else [(), (codes.shape[axis],)]
        if v.shape not in expected:
            raise ValueError(f"{what} has shape {v.shape}, expected one of {expected} for codes of shape "
                             f"{codes.shape} and axis {axis}")
    diff = codes.astype(np.int32) - _along(z.astype(np.int32), codes.ndim, axis)
    return (_along(s, codes.ndim, axis) * diff).astype(dtype, copy=False)


def fake_quant(w, *, bits, alpha=None, scheme="symmetric", axis=None, rounding="half_even", lo=None, hi=None,
               name=None):
    """Quantize then dequantize (as torch.fake_quantize_per_tensor_affine / _per_channel_affine).

    Same arguments as `quantize`. Returns w_hat = s * (q - z) with w's shape and
    floating dtype (computed in float64, then cast). Idempotent: see the module docstring.
    """
    w = check_weights(w, name=name)
    codes, scale, zero_point = quantize(w, bits=bits, alpha=alpha, scheme=scheme, axis=axis, rounding=rounding,
                                        lo=lo, hi=hi, name=name)
    return dequantize(codes, scale, zero_point, axis=axis, dtype=w.dtype)


# ----------------------------------------------------------------------------- error
def channels(w, axis):
    """The tensor as a list of contiguous 1-D channels: [w.ravel()] per tensor, or one row per index of `axis`."""
    return list(channel_rows(w, axis))


def channel_rows(w, axis):
    """The tensor as one C-contiguous (C, m) array: (1, w.size) per tensor, or one row per index of `axis`.

    Every per-channel computation in sqref.quant and sqref.clipping goes
    through this, so a channel's statistics are bitwise the same wherever they
    are computed (same function on the same array). Dtype: w's.
    """
    if axis is None:
        return np.ascontiguousarray(w).reshape(1, -1)
    return np.ascontiguousarray(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1))


def sum_sq_error_rows(x, scales, qmax, rounding="half_even"):
    """Exact sum of (x - s * clamp(round(x / s), -qmax, qmax))**2 per row and scale, on the symmetric grid.

    Shapes: x (C, m), one channel per row; scales (C, K) float64, K scales per
    row; qmax an int or a (C,) int array -> (C, K) float64.
    The per-element arithmetic is fake_quant's (float64 x / s, round, clamp,
    times s). Each row's sum is accumulated the same way for every scale and
    whatever the other rows or scales: blocks of _CHUNK columns added in
    order, numpy's pairwise sum of one contiguous row inside a block; rows are
    processed _CHUNK // m at a time (a number that depends on m only). So the
    value for one (row, scale) does not depend on what is evaluated alongside
    it: quant_mse and the dynamic clipping search both call this, which is what
    makes the dynamic rule's guarantee exact.
    """
    round_fn = check_rounding(rounding)
    x = np.asarray(x)
    scales = np.asarray(scales, dtype=np.float64)
    rows, m = x.shape
    top = np.broadcast_to(np.asarray(qmax, dtype=np.float64), (rows,))
    total = np.zeros(scales.shape)
    per_block = max(1, _CHUNK // m)
    for r0 in range(0, rows, per_block):
        r1 = min(rows, r0 + per_block)
        lim = top[r0:r1, None]
        for c0 in range(0, m, _CHUNK):
            xb = x[r0:r1, c0:c0 + _CHUNK].astype(np.float64)
            tb = np.empty_like(xb)
            for k in range(scales.shape[1]):
                s = scales[r0:r1, k:k + 1]
                np.divide(xb, s, out=tb)
                round_fn(tb, out=tb)
                np.clip(tb, -lim, lim, out=tb)
                tb *= s
                np.subtract(xb, tb, out=tb)
                tb *= tb
                total[r0:r1, k] += tb.sum(axis=1)
    return total


def sse_scale(s2, n, qmax, s_max):
    """Z = s2 + n (qmax s_max)**2: the size of the terms an SSE at scales up to s_max is made of, for a channel of
    n values with sum of squares s2. Every float-error bound on an SSE in sqref is a multiple of it
    (sum_sq_error_bound; sqref.mse_search.model_tolerance and bound_tolerance)."""
    return s2 + n * (qmax * s_max) ** 2


def sum_sq_error_bound(s2, n, qmax, s_max):
    """How far sum_sq_error_rows can be from one channel's exact SSE, at any float32 scale s <= s_max.

    The exact SSE: the sum over the channel's n values x of min over codes c
    in -qmax..qmax of (x - s c)**2, in real arithmetic; s2 = sum of x**2.
    Bound: (24 + ceil(n / _CHUNK)) eps Z, Z = s2 + n (qmax s_max)**2.
    Derived in docs/method.md section 2 ("The exact evaluation's own error"):
    c s is exact (s a float32, |c| < 2**7), x - c s and its square are
    rounded once each (1.6 eps of the term); the rounded x / s picks the
    other of two codes only within eps / 2 of a tie, where their errors differ
    by at most eps |x| s (sum at most Z / 2); numpy's pairwise sum of a row
    of _CHUNK terms has at most 36 roundings on any term's path, and the
    blocks are added in order (ceil(n / _CHUNK) more); every term is at most
    x**2 + eps |x| s. The dynamic rule uses it to skip the exact evaluation
    of candidates that cannot win (sqref.mse_search.screen).
    """
    eps = float(np.finfo(np.float64).eps)
    return (24 + math.ceil(n / _CHUNK)) * eps * sse_scale(s2, n, qmax, s_max)


def sum_sq_error(x, scales, qmax, rounding="half_even"):
    """sum_sq_error_rows for one channel: x 1-D, scales (S,) -> (S,) float64."""
    x = np.asarray(x).reshape(1, -1)
    return sum_sq_error_rows(x, np.asarray(scales, dtype=np.float64).reshape(1, -1), qmax, rounding)[0]


def quant_mse(w, *, alpha, bits, axis=None, rounding="half_even", name=None):
    """Exact mean squared error of fake_quant(w, bits=bits, alpha=alpha) on the symmetric grid.

    Shapes: alpha a scalar (per tensor) or, with `axis`, a scalar or (C,) vector;
    returns a float (per tensor) or a (C,) float64 vector of per-channel MSEs.
    Formula: mean((w - s * clamp(round(w / s), -qmax, qmax))**2), s = grid_params(alpha).
    Tests: equals np.mean((w - fake_quant(w))**2) in float64 to 1e-12 relative.
    """
    w = check_weights(w, name=name)
    bits = check_bits(bits)
    check_rounding(rounding)
    axis = check_axis(axis, w.ndim, name=name)
    alpha = _per_channel_array(alpha, "alpha", w, axis, name=name)
    scale = grid_params(bits=bits, alpha=alpha)[0].astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    rows = channel_rows(w, axis)
    alpha_c = np.broadcast_to(alpha, (rows.shape[0],))
    scale_c = np.broadcast_to(scale, (rows.shape[0],)).reshape(-1, 1)
    mse = sum_sq_error_rows(rows, scale_c, np.where(alpha_c > 0, qmax, 0), rounding)[:, 0] / rows.shape[1]
    return float(mse[0]) if axis is None else mse
