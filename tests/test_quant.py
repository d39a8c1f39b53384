"""sqref.quant: hand-computed grids first, then a plain-Python per-element oracle
and hypothesis properties (codes in range, error <= s/2, idempotence,
monotonicity, ties), then bad input.

`weight_tensors` is the composite strategy shared with tests/test_clipping.py:
normal, Laplace, Student t (df 2-3), skewed, constant (zero included), tiny,
and already-quantized tensors (integers j * step, |j| <= 2**(m-1) - 1 for some
m: a grid that some bit width reproduces exactly, where the best boundary is a
single float and only an exact candidate hits it), float32 or float64,
magnitudes from 1e-3 to 1e3.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqref import quant
from sqref.quant import dequantize, fake_quant, grid_params, quant_mse, quantize

EPS64 = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- strategy
KINDS = ("normal", "laplace", "student_t", "skewed", "constant", "tiny", "quantized")


@st.composite
def weight_tensors(draw, kinds=KINDS, min_ndim=1, max_channels=5):
    """A weight tensor of one of KINDS; shape (C, ...) with C <= max_channels when ndim >= 2."""
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = 10.0 ** draw(st.floats(-3, 3))
    if kind == "tiny":  # 1 to 3 values drawn by hypothesis itself, so they shrink well
        # magnitudes >= 1e-3 (or exactly 0): a boundary near 1e-38 has no float32 scale (tested apart)
        value = st.just(0.0) | st.builds(lambda m, sign: m * sign, st.floats(1e-3, 1.0), st.sampled_from([-1, 1]))
        values = draw(st.lists(value, min_size=1, max_size=3))
        return (np.array(values) * scale).reshape(len(values), *([1] * (min_ndim - 1))).astype(dtype)
    ndim = draw(st.integers(min_ndim, 4))
    shape = [draw(st.integers(1, max_channels))] + [draw(st.integers(1, 6)) for _ in range(ndim - 1)]
    if ndim == 1:
        shape = [draw(st.integers(1, 300))]
    else:
        shape[-1] = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "normal":
        w = rng.normal(draw(st.sampled_from([0.0, 0.3])), 1.0, shape)
    elif kind == "laplace":
        w = rng.laplace(0.0, 1.0, shape)
    elif kind == "student_t":
        w = rng.standard_t(draw(st.floats(2.0, 3.0)), shape)
    elif kind == "skewed":
        w = rng.lognormal(0.0, 0.75, shape) - 0.4
    elif kind == "quantized":  # j * 2**e: exact in float32 too
        top = 2 ** (draw(st.integers(2, 8)) - 1) - 1
        w = rng.integers(-top, top + 1, shape).astype(np.float64)
        w.flat[0] = top  # the grid's end is drawn, so max|w| is on it
        scale = 2.0 ** draw(st.integers(-10, 10))
    else:  # constant, zero included
        w = np.full(shape, draw(st.sampled_from([0.0, 1.0, -0.37])))
    return (w * scale).astype(dtype)


def alpha_for(w, fraction, axis=None):
    """A boundary `fraction` of max|w| (per channel with axis), 0 where the channel is all zero."""
    others = None if axis is None else tuple(d for d in range(w.ndim) if d != axis)
    return np.max(np.abs(w), axis=others).astype(np.float64) * fraction


fractions = st.sampled_from([0.05, 0.3, 0.77, 1.0, 1.5])
bits_st = st.integers(2, 8)
roundings = st.sampled_from(quant.ROUNDINGS)


# ----------------------------------------------------------------------------- oracle
def oracle_round(t, rounding):
    """Round a float by hand: f = floor(t); the fraction t - f is exact in binary floating point.

    (The textbook floor(t + 0.5) is not used as is: t + 0.5 itself rounds, and
    floor(0.49999999999999994 + 0.5) == 1.)
    """
    f = math.floor(t)
    frac = t - f
    if frac > 0.5:
        return f + 1
    if frac < 0.5:
        return f
    if rounding == "half_even":
        return f if f % 2 == 0 else f + 1
    return f + 1 if t > 0 else f  # half away from zero


def oracle_quantize(values, bits, rounding, *, alpha=None, scheme="symmetric"):
    """Per-element quantization of a list of floats in plain Python (one channel)."""
    f32 = lambda v: float(np.float32(v))  # noqa: E731  the documented float32 scale
    if scheme == "symmetric":
        qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        s = f32(alpha / qmax) if alpha > 0 else 1.0
        z = 0
        dead = alpha == 0
    else:
        lo, hi = min(min(values), 0.0), max(max(values), 0.0)
        if alpha is not None:
            lo, hi = max(lo, -alpha), min(hi, alpha)
        qmin, qmax = 0, 2**bits - 1
        s = f32((hi - lo) / qmax) if hi > lo else 1.0
        z = min(max(oracle_round(-lo / s, rounding), qmin), qmax)
        dead = hi == lo
    codes = []
    for x in values:
        q = oracle_round(x / s, rounding) + z
        codes.append(z if dead else min(max(q, qmin), qmax))
    return codes, s, z


# ----------------------------------------------------------------------------- literal cases
def test_grid_params_literal():
    # symmetric 3 bits: qmax = 3, s = 1.5 / 3 = 0.5
    assert grid_params(bits=3, alpha=1.5) == (0.5, 0, -3, 3)
    # symmetric 8 bits: qmax = 127; s = float32(1 / 127)
    s, z, qmin, qmax = grid_params(bits=8, alpha=1.0)
    assert (s, z, qmin, qmax) == (np.float32(1 / 127), 0, -127, 127) and s.dtype == np.float32
    # asymmetric 2 bits over [-1, 2]: 3 steps of s = 1, z = round(1 / 1) = 1
    assert grid_params(bits=2, scheme="asymmetric", lo=-1.0, hi=2.0) == (1.0, 1, 0, 3)
    # asymmetric 4 bits over [-0.75, 0.75]: s = 1.5 / 15 = 0.1 (float32); -lo / s = 7.4999998 -> 7
    s, z, _, qmax = grid_params(bits=4, scheme="asymmetric", lo=-0.75, hi=0.75)
    assert (s, z, qmax) == (np.float32(0.1), 7, 15)
    # boundary 0: placeholder scale 1.0
    assert grid_params(bits=4, alpha=0.0)[:2] == (1.0, 0)
    assert grid_params(bits=4, scheme="asymmetric", lo=0.0, hi=0.0)[:2] == (1.0, 0)
    # per channel: one scale per boundary
    np.testing.assert_array_equal(grid_params(bits=3, alpha=[1.5, 3.0, 0.0])[0], [0.5, 1.0, 1.0])


def test_quantize_symmetric_literal():
    # 3 bits, alpha = 1.5 -> s = 0.5 exactly; w / s = [-2, -1, 0, 0.5, 1, 4, -1.5, 2.5, -7]
    w = np.array([-1, -0.5, 0, 0.25, 0.5, 2, -0.75, 1.25, -3.5])
    codes, s, z = quantize(w, bits=3, alpha=1.5)
    np.testing.assert_array_equal(codes, [-2, -1, 0, 0, 1, 3, -2, 2, -3])  # ties to even; 4, -7 clamp to +-3
    assert codes.dtype == np.int8 and (s, z) == (0.5, 0)
    codes, _, _ = quantize(w, bits=3, alpha=1.5, rounding="half_away")
    np.testing.assert_array_equal(codes, [-2, -1, 0, 1, 1, 3, -2, 3, -3])  # ties away from zero
    np.testing.assert_array_equal(fake_quant(w, bits=3, alpha=1.5), [-1, -0.5, 0, 0, 0.5, 1.5, -1, 1, -1.5])


def test_quantize_asymmetric_literal():
    # 2 bits over [min, max] = [-1, 2]: s = 1, z = 1; q = round(w) + 1
    w = np.array([-1, -0.5, 0, 0.25, 0.5, 2])
    codes, s, z = quantize(w, bits=2, scheme="asymmetric")
    np.testing.assert_array_equal(codes, [0, 1, 1, 1, 1, 3])  # -0.5 -> -0, 0.5 -> 0 (half even)
    assert codes.dtype == np.uint8 and (s, z) == (1.0, 1)
    codes, _, _ = quantize(w, bits=2, scheme="asymmetric", rounding="half_away")
    np.testing.assert_array_equal(codes, [0, 0, 1, 1, 2, 3])
    # alpha = 1 clips the range to [-1, 1]: s = float32(2/3) = 0.66666669 is a hair above 2/3, so
    # -lo / s = 1.49999997 rounds to z = 1 (not 2): the grid is s * [-1, 0, 1, 2].
    # w / s = [-1.49999997, -0.74999998, 0, 0.375, 0.74999998, 2.99999994] -> [-1, -1, 0, 0, 1, 3] + 1, clamp 3
    codes, s, z = quantize(w, bits=2, scheme="asymmetric", alpha=1.0)
    assert (s, z) == (np.float32(2 / 3), 1)
    np.testing.assert_array_equal(codes, [0, 0, 1, 1, 2, 3])


def test_quantize_per_channel_literal():
    # channel 0: alpha 3 -> s = 1; channel 1: alpha 1 -> s = float32(1/3),
    # w / s = [0, -1.49999998, 0.74999998, 2.9999999]
    w = np.array([[0, 1, 2, 3], [0, -0.5, 0.25, 1]])
    codes, s, z = quantize(w, bits=3, alpha=[3.0, 1.0], axis=0)
    np.testing.assert_array_equal(codes, [[0, 1, 2, 3], [0, -1, 1, 3]])
    np.testing.assert_array_equal(s, np.float32([1.0, 1 / 3]))
    np.testing.assert_array_equal(z, [0, 0])
    # the same along axis 1 of the transpose
    codes_t, _, _ = quantize(w.T, bits=3, alpha=[3.0, 1.0], axis=1)
    np.testing.assert_array_equal(codes_t, codes.T)


def test_rounding_functions_literal():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999999999999994, -0.49999999999999994, 2.4, -2.6])
    np.testing.assert_array_equal(quant.round_half_even(x), [-2, -2, -0, 0, 2, 2, 0, -0, 2, -3])
    np.testing.assert_array_equal(quant.round_half_away(x), [-3, -2, -1, 1, 2, 3, 0, 0, 2, -3])
    y = x.copy()
    quant.round_half_away(y, out=y)  # in place is allowed
    np.testing.assert_array_equal(y, quant.round_half_away(x))


def test_all_zero_tensor_and_channel():
    z4 = np.zeros((2, 3), np.float32)
    for scheme, kw in (("symmetric", dict(alpha=0.0)), ("asymmetric", {})):
        codes, s, zp = quantize(z4, bits=4, scheme=scheme, **kw)
        assert (codes == 0).all() and s == 1.0 and zp == 0
    # one zero channel among live ones: its codes are 0 and its scale 1.0
    w = np.array([[0.0, 0.0], [1.0, -2.0]])
    codes, s, _ = quantize(w, bits=4, alpha=[0.0, 3.5], axis=0)  # channel 1: s = 3.5 / 7 = 0.5
    np.testing.assert_array_equal(codes, [[0, 0], [2, -4]])
    np.testing.assert_array_equal(s, [1.0, 0.5])
    codes, s, zp = quantize(w, bits=4, scheme="asymmetric", axis=0)
    np.testing.assert_array_equal(codes[0], [0, 0])
    assert s[0] == 1.0 and zp[0] == 0
    # alpha = 0 on a live tensor clips everything to 0
    assert (quantize(np.array([0.3, -5.0]), bits=4, alpha=0.0)[0] == 0).all()


def test_dequantize_inverts_quantize_and_dtype():
    w = np.array([0.1, -0.7, 0.33], np.float32)
    codes, s, z = quantize(w, bits=5, alpha=0.7)
    np.testing.assert_array_equal(dequantize(codes, s, z), s.astype(np.float64) * codes)
    assert dequantize(codes, s, z).dtype == np.float64
    assert dequantize(codes, s, z, dtype=np.float32).dtype == np.float32
    assert fake_quant(w, bits=5, alpha=0.7).dtype == np.float32


# ----------------------------------------------------------------------------- properties
@given(weight_tensors(), bits_st, roundings, fractions, st.sampled_from(quant.SCHEMES), st.booleans())
def test_quantize_matches_the_loop_oracle(w, bits, rounding, fraction, scheme, ties):
    alpha = float(alpha_for(w, fraction))
    if scheme == "symmetric" and ties and alpha > 0:
        # move every other value to the nearest tie (n + 0.5) * s below it: exact in float64
        # (24-bit s times a number of at most ~14 bits), so w / s is exactly n + 0.5
        s = float(grid_params(bits=bits, alpha=alpha)[0])
        w = w.astype(np.float64)
        w.flat[::2] = (np.floor(w.flat[::2] / s) + 0.5) * s
    if scheme == "asymmetric" and fraction == 1.5:
        alpha = None  # no clipping
    codes, s, z = quantize(w, bits=bits, alpha=alpha, scheme=scheme, rounding=rounding)
    values = w.astype(np.float64).ravel().tolist()
    want, want_s, want_z = oracle_quantize(values, bits, rounding, alpha=alpha, scheme=scheme)
    np.testing.assert_array_equal(codes.ravel(), want)
    assert (float(s), int(z)) == (want_s, want_z)


@given(weight_tensors(min_ndim=2), bits_st, roundings, fractions)
def test_per_channel_matches_the_loop_oracle(w, bits, rounding, fraction):
    alpha = alpha_for(w, fraction, axis=0)
    codes, s, _ = quantize(w, bits=bits, alpha=alpha, axis=0, rounding=rounding)
    for c in range(w.shape[0]):
        want, want_s, _ = oracle_quantize(w[c].astype(np.float64).ravel().tolist(), bits, rounding, alpha=alpha[c])
        np.testing.assert_array_equal(codes[c].ravel(), want)
        assert float(s[c]) == want_s


@given(weight_tensors(), bits_st, roundings, fractions, st.sampled_from([None, 0]))
def test_codes_in_range_and_error_at_most_half_a_step(w, bits, rounding, fraction, axis):
    alpha = alpha_for(w, fraction, axis)
    codes, s, z = quantize(w, bits=bits, alpha=alpha, axis=axis, rounding=rounding)
    qmax = 2 ** (bits - 1) - 1
    assert codes.dtype == np.int8 and codes.min() >= -qmax and codes.max() <= qmax
    x = w.astype(np.float64)
    shape = [-1] + [1] * (w.ndim - 1) if axis == 0 else []
    step, a = np.reshape(s, shape).astype(np.float64), np.reshape(alpha, shape)
    err = np.abs(x - dequantize(codes, s, z, axis=axis))
    inside = np.abs(x) <= a
    # Float term: x / s is rounded once (relative EPS64/2), which can move a value within
    # |x| * EPS64 / 2 of a tie to the other side; s * q itself is exact (24-bit s, |q| <= 127),
    # and the subtraction above adds one more rounding of the (small) error.
    bound = step / 2 + 2 * EPS64 * np.abs(x)
    assert (err[inside] <= np.broadcast_to(bound, x.shape)[inside]).all()


@given(weight_tensors(), bits_st, roundings, fractions)
def test_asymmetric_codes_in_range_and_error_inside_the_range(w, bits, rounding, fraction):
    alpha = float(alpha_for(w, fraction))
    codes, s, z = quantize(w, bits=bits, alpha=alpha, scheme="asymmetric", rounding=rounding)
    assert codes.dtype == np.uint8 and int(codes.max()) <= 2**bits - 1
    x = w.astype(np.float64)
    lo, hi = max(min(x.min(), 0.0), -alpha), min(max(x.max(), 0.0), alpha)
    err = np.abs(x - dequantize(codes, s, z))
    inside = (x >= lo) & (x <= hi)
    # s/2, plus: the grid's ends move by up to (hi - lo) * 2**-24 because s is rounded to float32
    # (module docstring), plus the same division rounding as in the symmetric test.
    bound = float(s) / 2 + (hi - lo) * 2.0**-24 + 2 * EPS64 * np.abs(x)
    assert (err[inside] <= bound[inside]).all()


@given(weight_tensors(), bits_st, roundings, fractions, st.sampled_from(quant.SCHEMES))
def test_fake_quant_is_idempotent(w, bits, rounding, fraction, scheme):
    alpha = alpha_for(w, fraction)
    if scheme == "symmetric":
        kw = dict(alpha=alpha)
    else:  # the grid must not move between the two passes: give lo, hi explicitly
        x = w.astype(np.float64)
        kw = dict(lo=max(min(x.min(), 0.0), -alpha), hi=min(max(x.max(), 0.0), alpha))
    once = fake_quant(w, bits=bits, scheme=scheme, rounding=rounding, **kw)
    twice = fake_quant(once, bits=bits, scheme=scheme, rounding=rounding, **kw)
    np.testing.assert_array_equal(twice, once)
    assert once.dtype == w.dtype


@given(weight_tensors(), bits_st, roundings, fractions, st.sampled_from(quant.SCHEMES))
def test_quantization_is_monotone(w, bits, rounding, fraction, scheme):
    x = np.sort(w.ravel())
    codes, _, _ = quantize(x, bits=bits, alpha=float(alpha_for(w, fraction)), scheme=scheme, rounding=rounding)
    assert (np.diff(codes.astype(np.int64)) >= 0).all()


@st.composite
def exact_ties(draw):
    """Values (n + 0.5) * s: exact in float64 (24-bit s times a 9-bit number), so w / s == n + 0.5 exactly;
    n runs past qmax on both sides, so saturating ties are drawn too."""
    bits = draw(bits_st)
    qmax = 2 ** (bits - 1) - 1
    alpha = draw(st.floats(1e-3, 1e3))
    ns = draw(st.lists(st.integers(-qmax - 2, qmax + 1), min_size=1, max_size=40))
    return bits, alpha, ns


@given(exact_ties(), roundings)
def test_ties_follow_the_rounding(case, rounding):
    bits, alpha, ns = case
    qmax = 2 ** (bits - 1) - 1
    s = float(grid_params(bits=bits, alpha=alpha)[0])
    w = (np.array(ns, dtype=np.float64) + 0.5) * s
    assert ((w / s) == np.array(ns) + 0.5).all()  # the ties really are ties
    if rounding == "half_even":  # of n and n + 1, the even one
        want = [n if n % 2 == 0 else n + 1 for n in ns]
    else:  # away from zero: n + 1 above zero, n below
        want = [n + 1 if n >= 0 else n for n in ns]
    want = np.clip(want, -qmax, qmax)
    codes, _, _ = quantize(w, bits=bits, alpha=alpha, rounding=rounding)
    np.testing.assert_array_equal(codes, want)


@given(weight_tensors(), bits_st, roundings, fractions, st.sampled_from([None, 0]))
def test_quant_mse_is_the_mse_of_fake_quant(w, bits, rounding, fraction, axis):
    alpha = alpha_for(w, fraction, axis)
    x = w.astype(np.float64)
    w_hat = dequantize(*quantize(w, bits=bits, alpha=alpha, axis=axis, rounding=rounding), axis=axis)
    others = None if axis is None else tuple(range(1, w.ndim))
    want = np.mean((x - w_hat) ** 2, axis=others)
    got = quant_mse(w, alpha=alpha, bits=bits, axis=axis, rounding=rounding)
    # same squared errors, summed in a different order: float64 rounding of a sum of <= 2000 terms
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def exact_sse(x, scale, qmax):
    """Sum over x of min over codes 0..qmax of (|x| - scale c)**2, in exact rationals (the nearest code, clipped)."""
    s = Fraction(scale)
    total = Fraction(0)
    for v in x:
        a = abs(Fraction(float(v)))
        c = min(math.floor(a / s + Fraction(1, 2)), qmax)  # at a tie both codes cost the same
        total += (a - s * c) ** 2
    return total


@given(st.lists(st.tuples(st.integers(-130, 130), st.integers(-3, 3)), max_size=40),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), max_size=20),
       st.floats(1e-3, 10.0), bits_st, roundings, st.sampled_from([np.float32, np.float64]))
def test_the_exact_evaluation_is_within_its_stated_bound(ties, others, scale, bits, rounding, dtype):
    # Values at or a few ulps off a tie (k + 1/2) s, where the rounded x / s may pick the other code, and
    # values anywhere (clipped ones too); the bound (sum_sq_error_bound) is a derived worst case, far
    # above what these few terms reach, so this checks its form (the eps, the scale Z), not its tightness.
    s = float(np.float32(scale))
    qmax = 2 ** (bits - 1) - 1
    x = []
    for k, ulps in ties:
        v = dtype((k + 0.5) * s)
        for _ in range(abs(ulps)):
            v = np.nextafter(v, dtype(np.inf if ulps > 0 else -np.inf))
        x.append(v)
    x = np.array(x + others, dtype=dtype)
    if x.size == 0:
        return
    got = quant.sum_sq_error(x, [s], qmax, rounding)[0]
    bound = quant.sum_sq_error_bound(float(np.sum(x.astype(np.float64) ** 2)), x.size, qmax, s)
    assert abs(Fraction(float(got)) - exact_sse(x, s, qmax)) <= Fraction(bound)


# ----------------------------------------------------------------------------- bad input
W = np.array([[0.5, -1.0, 0.25], [1.0, 0.0, -0.3]])


@pytest.mark.parametrize("bits, error", [(0, ValueError), (1, ValueError), (9, ValueError), (2.5, TypeError),
                                         ("8", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_bits(bits, error):
    for call in (lambda: quantize(W, bits=bits, alpha=1.0), lambda: fake_quant(W, bits=bits, alpha=1.0),
                 lambda: grid_params(bits=bits, alpha=1.0), lambda: quant_mse(W, alpha=1.0, bits=bits)):
        with pytest.raises(error, match=repr(bits) if error is TypeError else str(bits)):
            call()


@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_weights_name_the_layer(bad, kind):
    w = W.copy()
    w[1, 2] = bad
    for call in (lambda: quantize(w, bits=4, alpha=1.0, name="fc1"),
                 lambda: fake_quant(w, bits=4, alpha=1.0, name="fc1"),
                 lambda: quant_mse(w, alpha=1.0, bits=4, name="fc1")):
        with pytest.raises(ValueError, match=rf"layer 'fc1' weight contains {kind}.*index \(1, 2\)"):
            call()


def test_other_bad_input():
    with pytest.raises(ValueError, match="empty"):
        quantize(np.zeros((0, 3)), bits=4, alpha=1.0)
    with pytest.raises(ValueError, match="axis 2 is out of range for the 2-D"):
        quantize(W, bits=4, alpha=1.0, axis=2)
    with pytest.raises(ValueError, match="axis -3"):
        quant_mse(W, alpha=1.0, bits=4, axis=-3)
    with pytest.raises(ValueError, match=r"shape \(2,\).*got shape \(3,\)"):
        quantize(W, bits=4, alpha=[1.0, 1.0, 1.0], axis=0)
    with pytest.raises(ValueError, match="scalar for a per-tensor grid"):
        quantize(W, bits=4, alpha=[1.0, 1.0])
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        quantize(W, bits=4, alpha=-1.0)
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize(W, bits=4, alpha=1.0, rounding="half_up")
    with pytest.raises(ValueError, match="scheme must be one of"):
        quantize(W, bits=4, alpha=1.0, scheme="affine")
    with pytest.raises(ValueError, match="lo <= 0 <= hi"):
        quantize(W, bits=4, scheme="asymmetric", lo=0.5, hi=1.0)
    with pytest.raises(ValueError, match="either lo and hi, or alpha"):
        quantize(W, bits=4, scheme="asymmetric", alpha=1.0, lo=-1.0, hi=1.0)
    with pytest.raises(TypeError, match="floating array, got dtype int64"):
        quantize(np.array([1, 2]), bits=4, alpha=1.0)
    with pytest.raises(ValueError, match="not a normal float32"):
        quantize(np.array([1e-300]), bits=4, alpha=1e-300)
    with pytest.raises(ValueError, match=r"scale has shape \(3,\)"):
        dequantize(np.zeros((2, 2), np.int8), np.ones(3), 0, axis=0)
    with pytest.raises(TypeError, match="integer array"):
        dequantize(np.zeros(2), 1.0, 0)
