"""Hypothesis strategies for requantization and QUANTIZE alone: codes, quantization parameters, multipliers,
requant_cases and quantize_cases (sqref.testing's docstring). hypothesis is imported when a strategy is
first built."""
from __future__ import annotations

import numpy as np

_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}


def hypothesis_strategies():
    try:
        from hypothesis import strategies as st
    except ImportError as e:  # pragma: no cover - exercised only without hypothesis
        raise ImportError(
            "sqref.testing strategies need hypothesis: pip install hypothesis (or sqref[test])"
        ) from e
    return st


def _f32(x):
    return float(np.float32(x))


def code_range(dtype):
    if dtype not in _RANGES:
        raise ValueError(f"dtype must be one of {tuple(_RANGES)}, got {dtype!r}")
    return _RANGES[dtype]


def zero_points(st, qmin, qmax):
    # the type limits on purpose: ORT's clamp [qmin - zp, qmax - zp] is then one-sided
    return st.one_of(st.sampled_from([qmin, qmax, (qmin + qmax + 1) // 2]), st.integers(qmin, qmax))


def float32_binary(st, lo, hi):
    """mant * 2**(e - 23), mant a 24-bit integer, e in [lo, hi]: float32-exact, in [2**lo, 2**(hi + 1))."""
    return st.tuples(st.integers(2**23, 2**24 - 1), st.integers(lo, hi)).map(lambda me: me[0] * 2.0 ** (me[1] - 23))


DTYPE_RANGES = {np.uint8: (0, 255), np.int8: (-128, 127), np.int64: (-(2**63), 2**63 - 1)}


def codes(shape, dtype, lo=None, hi=None, *, dists=("extremes", "uniform", "small")):
    """Strategy for integer code arrays of ``dtype`` (np.uint8, np.int8 or np.int64) in [lo, hi]
    (default: the dtype's range), NumPy drawing the bulk from a drawn seed so that K can be
    in the hundreds. Distributions: "extremes" (lo, hi, their neighbours and the midpoint:
    saturating int16 pairs, type limits), "uniform", "small" (|v| <= 8)."""
    st = hypothesis_strategies()
    lo = DTYPE_RANGES[dtype][0] if lo is None else lo
    hi = DTYPE_RANGES[dtype][1] if hi is None else hi

    @st.composite
    def draw_codes(draw):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        dist = draw(st.sampled_from(dists))
        if dist == "extremes":
            v = rng.choice([lo, hi, lo + 1, hi - 1, (lo + hi) // 2], size=shape)
        elif dist == "small":
            v = rng.integers(max(lo, -8), min(hi, 8) + 1, size=shape)
        else:
            v = rng.integers(lo, hi + 1, size=shape)
        return v.astype(dtype)

    return draw_codes()


def qparams(dtype=None):
    """Strategy for (scale, zero_point, qmin, qmax) of an 8-bit tensor.

    dtype "uint8", "int8" or None (either). Scales are float32 values in
    [2**-20, 2**4): powers of two (exact ties) or a 24-bit mantissa (so that
    1/scale is inexact); zero points favour qmin, qmax and the middle.
    """
    st = hypothesis_strategies()

    @st.composite
    def draw_qparams(draw):
        qmin, qmax = code_range(draw(st.sampled_from(["uint8", "int8"])) if dtype is None else dtype)
        scale = draw(st.one_of(st.integers(-20, 3).map(lambda k: 2.0**k), float32_binary(st, -20, 3)))
        return scale, draw(zero_points(st, qmin, qmax)), qmin, qmax

    return draw_qparams()


def multipliers(kind=None):
    """Strategy for float32-representable requantization multipliers M.

    kind: None (any), "tie" (2**-k: exact .5 ties), "generic" ([2**-16, 1)),
    "large" ([1, 256]: TFLite's left shift can overflow), "tiny"
    ([2**-40, 2**-30]: TFLite flushes M < 2**-32 to 0).
    """
    st = hypothesis_strategies()
    binary = lambda lo, hi: float32_binary(st, lo, hi)  # noqa: E731
    kinds = {
        "tie": st.integers(1, 16).map(lambda k: 2.0**-k),
        "generic": binary(-16, -1),
        "large": st.one_of(st.integers(1, 255).map(float), binary(0, 7)),
        "tiny": st.one_of(
            st.sampled_from([2.0**-32, _f32(np.nextafter(np.float32(2.0**-32), 0)), 2.0**-31, 2.0**-33]),
            binary(-40, -31),
        ),
    }
    if kind is None:
        return st.one_of(*kinds.values())
    if kind not in kinds:
        raise ValueError(f"kind must be one of {tuple(kinds)} or None, got {kind!r}")
    return kinds[kind]


def _check_kinds(kinds, all_kinds):
    """`kinds` as a tuple (None: all of `all_kinds`); a ValueError unless it is a non-empty subset."""
    kinds = all_kinds if kinds is None else tuple(kinds)
    if not kinds or any(k not in all_kinds for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {all_kinds}, got {kinds!r}")
    return kinds


def requant_cases(dtype=None, *, max_size=8, kinds=None):
    """Strategy for (acc, M, zero_point, qmin, qmax) requantization cases.

    acc is a 1-D int64 array of int32 accumulators (bias included), M a
    float32-representable scalar. Categories (``kinds``, default all):
      "tie"       acc * M = n + 0.5 exactly, either sign, any zp parity
      "boundary"  acc * M + zp lands exactly on (or half a step beyond) qmin/qmax
      "large"     |acc| in [2**24, 2**31) whose float32 rounding lands on a tie
      "overflow"  M >= 1 with |acc| near 2**31 / 2**shift (TFLite's int32 wrap)
      "tiny"      M < 2**-30, around TFLite's flush-to-zero threshold
      "generic"   |acc| < 2**20, M in [2**-16, 1)
    """
    st = hypothesis_strategies()
    all_kinds = ("tie", "boundary", "large", "overflow", "tiny", "generic")
    kinds = _check_kinds(kinds, all_kinds)
    int32 = st.integers(-(2**31), 2**31 - 1)

    @st.composite
    def draw_case(draw):
        qmin, qmax = code_range(draw(st.sampled_from(["uint8", "int8"])) if dtype is None else dtype)
        zp = draw(zero_points(st, qmin, qmax))
        kind = draw(st.sampled_from(kinds))
        n = draw(st.integers(1, max_size))
        if kind == "tie":
            k = draw(st.integers(1, 12))
            m = 2.0**-k
            half = 2 ** (k - 1)  # acc = (2j + 1) * 2**(k-1)  =>  acc * M = j + 0.5
            js = draw(st.lists(st.integers(qmin - zp - 2, qmax - zp + 1), min_size=n, max_size=n))
            acc = [(2 * j + 1) * half for j in js]
        elif kind == "boundary":
            k = draw(st.integers(0, 12))
            m = 2.0**-k
            targets = [qmin - zp, qmax - zp]
            offs = [0, 2 ** (k - 1) if k else 0, -(2 ** (k - 1)) if k else 0, 1, -1]
            acc = [draw(st.sampled_from(targets)) * 2**k + draw(st.sampled_from(offs)) for _ in range(n)]
        elif kind == "large":
            # float32(2**e + d) == 2**e and 2**e * M = t / 2 is a tie: exactly, acc * M is not
            e = draw(st.integers(24, 30))
            t = 2 * draw(st.integers(0, max(abs(qmin - zp), abs(qmax - zp)))) + 1
            m = t * 2.0 ** -(e + 1)
            acc = [draw(st.sampled_from([1, -1])) * (2**e + draw(st.integers(-(2 ** (e - 24) // 2), 2 ** (e - 24))))
                   for _ in range(n)]
        elif kind == "overflow":
            m = draw(multipliers("large"))
            shift = int(np.frexp(m)[1])
            edge = 2**31 >> max(shift, 0)
            acc = [
                max(-(2**31), min(2**31 - 1, draw(st.sampled_from([edge, -edge, edge - 1, -edge - 1, 0]))
                                  + draw(st.integers(-3, 3))))
                for _ in range(n)
            ]
            acc = [draw(st.one_of(st.just(a), st.integers(-300, 300))) for a in acc]
        elif kind == "tiny":
            m = draw(multipliers("tiny"))
            acc = draw(st.lists(st.one_of(int32, st.sampled_from([2**31 - 1, -(2**31)])), min_size=n, max_size=n))
        else:
            m = draw(multipliers("generic"))
            acc = draw(st.lists(st.integers(-(2**20), 2**20), min_size=n, max_size=n))
        acc = [max(-(2**31), min(2**31 - 1, a)) for a in acc]
        return np.array(acc, dtype=np.int64), m, zp, qmin, qmax

    return draw_case()


def quantize_cases(dtype=None, *, max_size=8, allow_nan=False, kinds=None):
    """Strategy for (x, scale, zero_point, qmin, qmax) float -> int QUANTIZE cases.

    x is a 1-D float32 array, scale a float32-representable scalar. Categories:
      "tie"         x = (n + 0.5) * 2**-k exactly: ONNX/PyTorch round to even, TFLite away
      "reciprocal"  x = float32((n + 0.5) * s) nudged by -3..3 ulps: x * float32(1/s)
                    (PyTorch) and x / s (ONNX) can round to different sides
      "saturate"    |x / s| past the type range, +-inf (and NaN if allow_nan)
      "generic"     x / s within about the type range
    """
    st = hypothesis_strategies()
    all_kinds = ("tie", "reciprocal", "saturate", "generic")
    kinds = _check_kinds(kinds, all_kinds)

    @st.composite
    def draw_case(draw):
        qmin, qmax = code_range(draw(st.sampled_from(["uint8", "int8"])) if dtype is None else dtype)
        zp = draw(zero_points(st, qmin, qmax))
        kind = draw(st.sampled_from(kinds))
        size = draw(st.integers(1, max_size))
        steps = st.integers(qmin - zp - 2, qmax - zp + 1)
        if kind == "tie":
            scale = 2.0 ** draw(st.integers(-12, 2))
            x = [(draw(steps) + 0.5) * scale for _ in range(size)]
        elif kind == "reciprocal":  # a 24-bit mantissa: 1/scale is inexact
            scale = draw(st.integers(2**23 + 1, 2**24 - 1)) * 2.0 ** (draw(st.integers(-12, 2)) - 23)
            x = []
            for _ in range(size):
                v = np.float32((draw(steps) + 0.5) * scale)
                for _ in range(abs(k := draw(st.integers(-3, 3)))):
                    v = np.nextafter(v, np.float32(np.inf if k > 0 else -np.inf))
                x.append(float(v))
        elif kind == "saturate":
            scale = draw(qparams(dtype=None))[0]
            special = [np.inf, -np.inf] + ([np.nan] if allow_nan else [])
            x = [
                draw(st.one_of(st.sampled_from(special), st.floats(1.0, 1e6).map(lambda f: f * (qmax - qmin) * scale),
                               st.floats(-1e6, -1.0).map(lambda f: f * (qmax - qmin) * scale)))
                for _ in range(size)
            ]
        else:
            scale = draw(qparams(dtype=None))[0]
            x = [draw(st.floats(qmin - zp - 4.0, qmax - zp + 4.0)) * scale for _ in range(size)]
        with np.errstate(over="ignore"):
            xs = np.array(x, dtype=np.float32)
        return xs, scale, zp, qmin, qmax

    return draw_case()


