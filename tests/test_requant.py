"""sqref.integer.requant: the docs/backends.md disagreement cases literally, then each mode
against a naive re-statement in exact rational arithmetic (fractions.Fraction,
Python ints, explicit rounding)."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import Phase, assume, find, given, note, settings
from hypothesis import strategies as st

from sqref.integer import requant
from sqref.integer.requant import INT32_MAX, INT32_MIN, MODES, QUANTIZE_MODES
from sqref.testing import assert_bit_exact, quantize_cases, requant_cases

U8 = dict(qmin=0, qmax=255)
I8 = dict(qmin=-128, qmax=127)
I32 = dict(qmin=INT32_MIN, qmax=INT32_MAX)


def rq(acc, m, zp, mode, rng=U8, **kw):
    return requant.requantize(np.array(acc, np.int64), multiplier=m, zero_point=zp, mode=mode, **rng, **kw).tolist()


# ------------------------------------------------------- exact oracles


def rne(q):
    return round(Fraction(q))  # Fraction.__round__ rounds half to even


def rha(q):
    q = Fraction(q)
    return int(math.copysign(math.floor(abs(q) + Fraction(1, 2)), q)) if q else 0


def rhu(q):
    return math.floor(Fraction(q) + Fraction(1, 2))


def r32(q):
    """q rounded to the nearest float32 (ties to even), exactly, as a Fraction."""
    q = Fraction(q)
    if q == 0:
        return q
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    e += 1 if Fraction(2) ** (e + 1) <= a else 0
    e -= 1 if Fraction(2) ** e > a else 0
    ulp = Fraction(2) ** (max(e, -126) - 23)
    return math.copysign(1, q) * rne(a / ulp) * ulp


def wrap32(v):
    return (v + 2**31) % 2**32 - 2**31


def clamp(v, lo, hi):
    return min(max(v, lo), hi)


def py_quantize_multiplier(m, single=False):
    if m == 0:
        return 0, 0
    q, e = math.frexp(m)
    m0 = rha(Fraction(q) * 2**31)
    if m0 == 2**31:
        m0, e = m0 // 2, e + 1
    if e < -31:
        return 0, 0
    if single and e > 30:
        return 2**31 - 1, 30
    return m0, e


def py_tflite(acc, m, zp, qmin, qmax):
    """Double rounding re-stated: round half up to Q31 (floor), then half away from zero."""
    m0, shift = py_quantize_multiplier(m)
    x = wrap32(acc * 2 ** max(shift, 0))
    high = INT32_MAX if x == m0 == INT32_MIN else (x * m0 + 2**30) // 2**31
    return clamp(rha(Fraction(high, 2 ** max(-shift, 0))) + zp, qmin, qmax)


def py_tflite_single(acc, m, zp, qmin, qmax):
    m0, shift = py_quantize_multiplier(m, single=True)
    return clamp(wrap32(rhu(Fraction(acc * m0, 2 ** (31 - shift)))) + zp, qmin, qmax)


def py_onnxruntime(acc, m, zp, qmin, qmax):
    v = r32(r32(acc) * r32(m))
    return clamp(rne(v), qmin - zp, qmax - zp) + zp


def py_onnx_reference(acc, m, zp, qmin, qmax):  # valid where float64 is exact
    return clamp(rne(Fraction(acc) * Fraction(m) + zp), qmin, qmax)


# ------------------------------------------------- docs/backends.md literally


@pytest.mark.parametrize(
    "mode, want", [("onnxruntime", 3), ("fbgemm", 3), ("onnx-reference", 4), ("tflite", 4), ("tflite-single", 4)]
)
def test_tie_with_odd_zero_point(mode, want):
    # acc * M = 2.5; zp = 1: rounding before the zero point gives 2 + 1, after it rne(3.5) = 4
    assert rq([5], 0.5, 1, mode) == [want]


@pytest.mark.parametrize(
    "mode, want", [("tflite", -1), ("tflite-single", 0), ("onnxruntime", 0), ("fbgemm", 0), ("onnx-reference", 0)]
)
def test_negative_tie_double_vs_single_rounding(mode, want):
    # -0.5: SRDHM keeps -0.5 in Q31, RDBPOT rounds half away -> -1; single rounding rounds half up -> 0
    assert rq([-2], 0.25, 0, mode, I8) == [want]


@pytest.mark.parametrize("mode, want", [("tflite", -3), ("onnxruntime", -2), ("onnx-reference", -2), ("fbgemm", -2)])
def test_quantize_negative_tie(mode, want):
    assert requant.quantize_linear(np.float32([-2.5]), 1.0, 0, mode=mode, **I8).tolist() == [want]
    # a 0-d input (a scalar) gives a 0-d result with the same value
    assert int(requant.quantize_linear(np.float32(-2.5), 1.0, 0, mode=mode, **I8)) == want


def test_requantize_scalar_accumulator():
    got = requant.requantize(np.int64(-5), multiplier=0.5, zero_point=0, qmin=-128, qmax=127, mode="onnxruntime")
    assert np.ndim(got) == 0 and int(got) == -2  # -2.5 rounds half to even


@pytest.mark.parametrize(
    "mode, want",
    [("onnxruntime", 100), ("fbgemm", 100), ("onnx-reference", 101), ("tflite", 101), ("tflite-single", 101)],
)
def test_accumulator_past_2_24(mode, want):
    # float32(2**24 + 1) == 2**24, and 2**24 * 201 * 2**-25 = 100.5 is a tie; exactly it is 100.500006
    assert rq([2**24 + 1], 201 * 2.0**-25, 0, mode) == [want]


@pytest.mark.parametrize(
    "mode, want", [("fbgemm", 128), ("onnxruntime", 127), ("onnx-reference", 127), ("tflite", 127)]
)
def test_quantize_reciprocal_versus_division(mode, want):
    x, s = np.float32(0.273939937), np.float32(0.00214854861)
    assert float(x * (np.float32(1) / s)) == 127.5 and float(x / s) == 127.49999237060547
    assert requant.quantize_linear(np.array([x]), s, 0, mode=mode, **U8).tolist() == [want]


@pytest.mark.parametrize(
    "x, s, zp, want_pytorch, want_ort",
    [
        (0.5, 1.0, 1, 2, 1),  # rne(0.5 + 1) = 2: the zero point is added before rounding
        # float32(x * float32(1/s)) = -5.5 exactly, but x * (1/s) + 7 = 1.4999999 before the one rounding
        (-3.3042783737182617, 0.6007778644561768, 7, 1, 1),
    ],
)
def test_pytorch_quantize_is_one_fused_multiply_add(x, s, zp, want_pytorch, want_ort):
    x32 = np.float32([x])
    assert requant.quantize_linear(x32, s, zp, mode="fbgemm", **U8).tolist() == [want_pytorch]
    assert requant.quantize_linear(x32, s, zp, mode="onnxruntime", **U8).tolist() == [want_ort]
    unfused = np.float32(x32 * (np.float32(1) / np.float32(s))) + np.float32(zp)
    assert np.rint(unfused).tolist() == [want_pytorch + (1 if x < 0 else 0)]  # two roundings would differ


@given(
    st.floats(-1e6, 1e6, width=32),
    st.floats(-1e6, 1e6, width=32),
    st.one_of(st.floats(-1e6, 1e6, width=32), st.integers(-255, 255).map(float), st.just("cancel")),
)
def test_fma_float32_rounds_once(a, b, c):
    if c == "cancel":  # c = -float32(a * b): the exact residual of the product survives
        c = -float(np.float32(a) * np.float32(b))
    got = requant.fma_float32(np.float32(a), np.float32(b), np.float32(c))
    assert Fraction(float(got)) == r32(Fraction(a) * Fraction(b) + Fraction(float(np.float32(c))))


def test_fma_float32_midpoint_of_the_float64_sum():
    # a * b = 2**8 - 2**-38; + c = 2**32 + 2**9 gives m - 2**-38, m = 2**32 + 3 * 2**8 a float32
    # midpoint. float64 rounds the sum to m exactly, and float32(m) would round to even (up):
    # a single rounding goes down.
    a, b, c = np.float32(256 + 2.0**-15), np.float32(1 - 2.0**-23), np.float32(2**32 + 2**9)
    exact = Fraction(float(a)) * Fraction(float(b)) + int(c)
    assert exact == 2**32 + 3 * 2**8 - Fraction(1, 2**38)
    assert float(np.float32(float(a) * float(b) + float(c))) == 2**32 + 2**10  # double rounding
    assert float(requant.fma_float32(a, b, c)) == 2**32 + 2**9 == r32(exact)


def test_multiplier_three_overflows_double_rounding():
    # M = 3 = 0.75 * 2**2: the left shift acc * 4 leaves int32 once acc >= 2**29 or acc < -2**29
    acc = np.array([2**29 - 1, 2**29, -(2**29), -(2**29) - 1])
    exact = [3 * int(a) for a in acc]
    assert rq(acc, 3.0, 0, "tflite", I32) == [exact[0], wrap32(4 * 2**29) * 3 // 4, exact[2], 1610612733]
    assert rq(acc, 3.0, 0, "tflite-single", I32) == exact
    with pytest.raises(ValueError, match="overflows int32"):
        requant.requant_tflite(acc, multiplier=3.0, zero_point=0, overflow="raise", **I32)
    # and through a uint8 output: wraps negative, so 0 instead of 255
    assert rq([2**29], 3.0, 0, "tflite") == [0]
    assert rq([2**29], 3.0, 0, "onnxruntime") == [255]


def test_tiny_multiplier_flushed_to_zero():
    assert [int(v) for v in requant.quantize_multiplier(2.0**-33)] == [0, 0]
    assert [int(v) for v in requant.quantize_multiplier(np.nextafter(2.0**-32, 0))] == [2**30, -31]  # rounds up
    assert [int(v) for v in requant.quantize_multiplier(2.0**-32 * (1 - 2**-30))] == [0, 0]
    # NOTE: the threshold is 2**-32, not 2**-31: M in [2**-32, 2**-31) keeps shift -31, and
    # a flushed M < 2**-32 cannot change any int32 result (|acc * M| < 0.5). At M = 2**-32:
    assert rq([INT32_MIN], 2.0**-32, 0, "tflite", I8) == [-1]  # -0.5 rounded half away
    assert rq([INT32_MIN], 2.0**-32, 0, "onnxruntime", I8) == [0]
    assert rq([INT32_MIN, INT32_MAX], 2.0**-33, 5, "tflite", I8) == [5, 5]


@pytest.mark.parametrize(
    "m, want",
    [
        (0.5, (2**30, 0)),
        (0.75, (3 * 2**29, 0)),
        (1.0, (2**30, 1)),
        (3.0, (3 * 2**29, 2)),
        (0.0, (0, 0)),
        (2.0**-31, (2**30, -30)),
        (1 - 2.0**-40, (2**30, 1)),  # q * 2**31 rounds to 2**31: halved, shift + 1
        (0.5 + 2.0**-32, (2**30 + 1, 0)),  # q * 2**31 = 2**30 + 0.5: half away from zero
        (201 * 2.0**-25, (201 * 2**23, -17)),
    ],
)
def test_quantize_multiplier_literal(m, want):
    m0, shift = requant.quantize_multiplier(m)
    assert (int(m0), int(shift)) == want and m0.dtype == np.int32


def test_quantize_multiplier_single_rounding_saturates_shift():
    m0, shift = requant.quantize_multiplier([2.0**40, 0.5], single_rounding=True)
    assert m0.tolist() == [2**31 - 1, 2**30] and shift.tolist() == [30, 0]
    assert requant.quantize_multiplier(2.0**40)[1] == 41


@pytest.mark.parametrize("m", [-0.5, float("nan"), float("inf")])
def test_quantize_multiplier_rejects(m):
    with pytest.raises(ValueError, match="multiplier"):
        requant.quantize_multiplier(m)


@pytest.mark.parametrize(
    "a, b, want",
    [
        (INT32_MIN, INT32_MIN, INT32_MAX),  # the one saturating case
        (2**30, 2**30, 2**29),
        (1, 2**30, 1),  # +0.5 rounds up
        (-1, 2**30, 0),  # -0.5 rounds up too
        (-3, 2**30, -1),  # -1.5 -> -1
        (INT32_MIN, INT32_MAX, INT32_MIN + 1),
        (INT32_MAX, INT32_MAX, INT32_MAX - 1),
    ],
)
def test_srdhm_literal(a, b, want):
    assert requant.saturating_rounding_doubling_high_mul(a, b).tolist() == want


@pytest.mark.parametrize(
    "x, e, want",
    [(5, 1, 3), (-5, 1, -3), (4, 1, 2), (-3, 2, -1), (-2, 2, -1), (2, 2, 1), (7, 0, 7), (INT32_MIN, 31, -1)],
)
def test_rdbpot_literal(x, e, want):
    assert requant.rounding_divide_by_pot(x, e).tolist() == want


def test_rdbpot_rejects_exponent():
    with pytest.raises(ValueError, match=r"\[0, 31\]"):
        requant.rounding_divide_by_pot(1, 32)


def test_fbgemm_float_bias_reciprocal_versus_division():
    # per tensor FBGEMM multiplies the bias by float32(1/s); per channel it divides
    s = np.float32(0.003)
    b = np.float32(5 * s)  # 0.015000001
    assert b / s == 5.0 and b * (np.float32(1) / s) == np.float32(5.0000005)
    kw = dict(multiplier=np.float32(0.5), zero_point=0, qmin=0, qmax=255)
    per_tensor = requant.requant_fbgemm(np.array([[0]]), bias=b, act_times_w_scale=s, **kw)
    per_channel = requant.requant_fbgemm(np.array([[0, 0]]), bias=[b, b], act_times_w_scale=[s, s], **kw)
    assert per_tensor.tolist() == [[3]]  # 2.5000002 -> 3
    assert per_channel.tolist() == [[2, 2]]  # 2.5 -> 2 (even)
    with pytest.raises(ValueError, match="act_times_w_scale"):
        requant.requant_fbgemm(np.array([1]), bias=b, **kw)


def test_effective_multiplier_precision_per_backend():
    sx, sw, sy = np.float32(0.1), np.float32([0.3, 0.02]), np.float32(0.7)
    m32 = requant.effective_multiplier(sx, sw, sy, mode="onnxruntime")
    assert m32.dtype == np.float32 and m32.tolist() == ((sx * sw) / sy).tolist()  # float32 steps
    m64 = requant.effective_multiplier(sx, sw, sy, mode="tflite")
    assert m64.dtype == np.float64
    assert m64.tolist() == [float(sx) * float(w) / float(sy) for w in sw]  # double steps
    assert m64.tolist() != m32.astype(np.float64).tolist()
    with pytest.raises(ValueError, match="mode"):
        requant.effective_multiplier(sx, sw, sy, mode="x86")


def test_per_channel_multiplier_broadcasts_along_axis():
    acc = np.arange(-12, 12).reshape(2, 3, 4) * 1000
    m = np.array([0.001, 0.01, 0.1], np.float32)
    for mode in MODES:
        got = requant.requantize(acc, multiplier=m, zero_point=3, mode=mode, axis=1, **I8)
        per_c = [requant.requantize(acc[:, c], multiplier=m[c], zero_point=3, mode=mode, **I8) for c in range(3)]
        want = np.stack(per_c, axis=1)
        assert_bit_exact(got, want, err_msg=mode)
    with pytest.raises(ValueError, match="3 channels"):
        requant.requantize(acc, multiplier=m, zero_point=0, axis=2, **I8)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(acc=np.array([1.0])), TypeError, "integer"),
        (dict(acc=np.array([2**31])), ValueError, "int32"),
        (dict(mode="gemmlowp"), ValueError, "mode"),
        (dict(qmin=5, qmax=4), ValueError, "qmin=5 > qmax=4"),
        (dict(multiplier=-1.0), ValueError, "multiplier"),
        (dict(zero_point=1.5), TypeError, "zero_point"),
    ],
)
def test_requantize_validates(kwargs, exc, match):
    args = dict(acc=np.array([1]), multiplier=0.5, zero_point=0, qmin=0, qmax=255, mode="onnxruntime") | kwargs
    with pytest.raises(exc, match=match):
        requant.requantize(args.pop("acc"), **args)


def test_quantize_special_values():
    x = np.float32([np.nan, np.inf, -np.inf, 3e9, -3e9])
    want = {
        "onnxruntime": [-128, 127, -128, 127, -128],
        "fbgemm": [127, 127, -128, 127, -128],
        # int32 cast gives INT32_MIN, then + zp (-128) wraps to 2**31 - 128: clipped to qmax
        "onnx-reference": [127, 127, 127, 127, 127],
        "tflite": [127, 127, 127, 127, 127],
    }
    for mode in QUANTIZE_MODES:
        assert requant.quantize_linear(x, 1.0, -128, mode=mode, **I8).tolist() == want[mode], mode
    assert requant.quantize_linear(x, 1.0, 0, mode="onnx-reference", **I8).tolist() == [-128] * 5


def test_quantize_and_dequantize_per_axis():
    x = np.float32([[0.5, -1.0], [2.0, 7.0]])
    q = requant.quantize_linear(x, [0.5, 2.0], [0, 1], mode="onnxruntime", axis=0, **I8)
    assert q.tolist() == [[1, -2], [2, 5]]  # row 1: 7 / 2 = 3.5 -> 4 (even), + zp 1
    y = requant.dequantize_linear(q, np.float32([0.5, 2.0]), [0, 1], axis=0)
    assert_bit_exact(y, np.float32([[0.5, -1.0], [2.0, 8.0]]))


def test_dequantize_linear_literal():
    q = np.array([0, 255, 128], np.uint8)
    y = requant.dequantize_linear(q, np.float32(0.1), 128)
    assert y.dtype == np.float32
    assert_bit_exact(y, (np.float32([-128, 127, 0]) * np.float32(0.1)).astype(np.float32))
    with pytest.raises(TypeError, match="integer"):
        requant.dequantize_linear(q.astype(np.float32), 0.1, 0)


def test_u8s8_pair_saturation_model_literal():
    a = np.array([[255, 255], [127, 127]])
    b = np.array([[-128], [-128]])
    assert requant.accumulate_u8s8_int16_pairs(a, b).tolist() == [[-32768], [-32512]]
    assert ((a @ b).tolist()) == [[-65280], [-32512]]
    # odd K is padded with a zero; zero points are applied exactly afterwards
    got = requant.accumulate_u8s8_int16_pairs([[255, 255, 255]], [[-128], [-128], [-128]], a_zero_point=1)
    assert got.tolist() == [[-32768 - 32640 + 3 * 128]]


@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.lists(st.lists(st.integers(0, 127), min_size=k, max_size=k), min_size=1, max_size=4),
            st.lists(st.lists(st.integers(-128, 127), min_size=3, max_size=3), min_size=k, max_size=k),
            st.integers(0, 255),
            st.integers(-128, 127),
        )
    )
)
def test_u8s8_pair_model_is_exact_for_7_bit_activations(case):
    # 2 * 127 * 128 = 32512 < 2**15: no pair can saturate (why reduce_range works)
    a, b, za, zb = (np.array(v) for v in case)
    got = requant.accumulate_u8s8_int16_pairs(a, b, a_zero_point=za, b_zero_point=zb)
    assert_bit_exact(got, (a - za) @ (b - zb))


# ------------------------------------------------ properties vs oracles


@given(requant_cases())
def test_tflite_matches_integer_restatement(case):
    acc, m, zp, qmin, qmax = case
    got = requant.requantize(acc, multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax, mode="tflite")
    assert got.tolist() == [py_tflite(int(a), m, zp, qmin, qmax) for a in acc]


@given(requant_cases())
def test_tflite_single_matches_integer_restatement(case):
    acc, m, zp, qmin, qmax = case
    got = requant.requantize(acc, multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax, mode="tflite-single")
    assert got.tolist() == [py_tflite_single(int(a), m, zp, qmin, qmax) for a in acc]


@given(requant_cases())
def test_onnxruntime_matches_float32_restatement(case):
    acc, m, zp, qmin, qmax = case
    got = requant.requantize(acc, multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax, mode="onnxruntime")
    assert got.tolist() == [py_onnxruntime(int(a), m, zp, qmin, qmax) for a in acc]


@given(requant_cases(kinds=("tie", "boundary", "large", "generic")))
def test_fbgemm_integer_bias_equals_onnxruntime_below_2_31(case):
    # rounding then clamping == clamping then rounding; they part only when |acc * M| >= 2**31
    acc, m, zp, qmin, qmax = case
    kw = dict(multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax)
    assert_bit_exact(requant.requantize(acc, mode="fbgemm", **kw), requant.requantize(acc, mode="onnxruntime", **kw))


@given(
    st.lists(st.integers(-(2**23), 2**23), min_size=1, max_size=6),
    st.integers(1, 28).flatmap(lambda k: st.tuples(st.integers(1, 2**k - 1), st.just(k))),
    st.integers(-128, 255),
)
def test_onnx_reference_matches_rationals_where_float64_is_exact(accs, jk, zp):
    # M = j / 2**k with k <= 28 and |acc| < 2**24: acc * M + zp needs <= 53 bits, so float64 is exact
    j, k = jk
    m = j / 2**k
    got = requant.requantize(np.array(accs), multiplier=m, zero_point=zp, mode="onnx-reference", qmin=-128, qmax=255)
    assert got.tolist() == [py_onnx_reference(a, Fraction(j, 2**k), zp, -128, 255) for a in accs]


@given(
    requant_cases(kinds=("generic", "large", "tie")),
    st.floats(-1e4, 1e4, width=32),
    st.floats(2.0**-20, 1.0, width=32),
    st.booleans(),
)
def test_fbgemm_float_bias_matches_float32_restatement(case, bias, s, per_channel):
    acc, m, zp, qmin, qmax = case
    assume(qmin == 0)  # FBGEMM's output is uint8
    b32, s32 = Fraction(float(bias)), Fraction(float(s))
    if per_channel:
        acc2 = acc.reshape(1, -1)
        per_c = dict(bias=np.full(acc.size, bias, np.float32), act_times_w_scale=np.full(acc.size, s, np.float32))
        got = requant.requant_fbgemm(acc2, multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax, axis=1, **per_c)[0]
        bterm = r32(b32 / s32)
    else:
        got = requant.requant_fbgemm(
            acc, multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax, bias=bias, act_times_w_scale=s
        )
        bterm = r32(b32 * r32(1 / s32))
    want = []
    for a in acc.tolist():
        v = r32(r32(r32(a) + bterm) * r32(m))
        want.append(clamp(rne(v) + zp, qmin, qmax) if abs(v) < 2**31 else qmin)
    assert got.tolist() == want


def tie_distance(q):
    """Distance of a rational from the nearest x.5."""
    return abs(q - math.floor(q) - Fraction(1, 2))


@given(requant_cases(kinds=("tie", "boundary", "generic")))
def test_all_modes_agree_away_from_ties(case):
    # A real property: away from a .5 tie (by more than each mode's intermediate
    # rounding can move the value) and with |acc| < 2**24, every backend gives
    # the correctly rounded result.
    acc, m, zp, qmin, qmax = case
    assume(m < 1 and np.all(np.abs(acc) < 2**24))
    shift = int(requant.quantize_multiplier(m)[1])
    kw = dict(multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax)
    outs = {mode: requant.requantize(acc, mode=mode, **kw) for mode in MODES}
    checked = 0
    for i, a in enumerate(acc.tolist()):
        exact = Fraction(a) * Fraction(m)
        slack = max(Fraction(2) ** (shift - 1), abs(exact) * Fraction(1, 2**23))  # TFLite Q31 step, float32 product
        if tie_distance(exact) <= slack:
            continue
        checked += 1
        want = clamp(round(exact) + zp, qmin, qmax)
        assert {mode: int(o[i]) for mode, o in outs.items()} == dict.fromkeys(MODES, want), f"acc={a}"
    note(f"{checked} of {acc.size} elements away from a tie")


@given(requant_cases(kinds=("tie",)))
def test_exact_ties_round_as_each_backend_documents(case):
    acc, m, zp, qmin, qmax = case
    k = -math.frexp(m)[1] + 1  # m = 2**-k
    want = {
        "onnxruntime": lambda t: clamp(rne(t) + zp, qmin, qmax),  # round, then add zp
        "fbgemm": lambda t: clamp(rne(t) + zp, qmin, qmax),
        "onnx-reference": lambda t: clamp(rne(t + zp), qmin, qmax),  # add zp, then round
        # M = 2**-k: SRDHM keeps the tie exactly when k >= 2 and RDBPOT rounds it away
        # from zero; at k = 1 SRDHM itself rounds, half up
        "tflite": lambda t: clamp((rha(t) if k >= 2 else rhu(t)) + zp, qmin, qmax),
        "tflite-single": lambda t: clamp(rhu(t) + zp, qmin, qmax),
    }
    for mode in MODES:
        got = requant.requantize(acc, multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax, mode=mode)
        assert got.tolist() == [want[mode](Fraction(a) * Fraction(m)) for a in acc.tolist()], mode


def py_quantize(x, s, zp, qmin, qmax, mode):
    if math.isnan(x):
        return {"onnxruntime": qmin, "fbgemm": qmax}.get(mode, clamp(wrap32(INT32_MIN + zp), qmin, qmax))
    if math.isinf(x):
        if mode in ("onnxruntime", "fbgemm"):
            return qmax if x > 0 else qmin
        return clamp(wrap32(INT32_MIN + zp), qmin, qmax)  # x86 float->int32 of inf is INT32_MIN
    if mode == "fbgemm":  # one fused multiply-add, zero point inside, then round half even
        return clamp(rne(r32(Fraction(x) * r32(1 / Fraction(s)) + zp)), qmin, qmax)
    v = r32(Fraction(x) / Fraction(s))
    return clamp((rha(v) if mode == "tflite" else rne(v)) + zp, qmin, qmax)


@given(quantize_cases(allow_nan=True))
def test_quantize_modes_match_rational_restatement(case):
    x, s, zp, qmin, qmax = case
    for mode in QUANTIZE_MODES:
        got = requant.quantize_linear(x, s, zp, qmin=qmin, qmax=qmax, mode=mode)
        assert got.tolist() == [py_quantize(float(v), s, zp, qmin, qmax, mode) for v in x], mode


# ---------------------------- the strategies really draw the disagreements


def _disagree(mode_a, mode_b, kinds, fn="requant"):
    def differs(case):
        if fn == "requant":
            acc, m, zp, qmin, qmax = case
            kw = dict(multiplier=m, zero_point=zp, qmin=qmin, qmax=qmax)
            a, b = (requant.requantize(acc, mode=mode, **kw) for mode in (mode_a, mode_b))
            return not np.array_equal(a, b)
        x, s, zp, qmin, qmax = case
        kw = dict(qmin=qmin, qmax=qmax)
        a, b = (requant.quantize_linear(x, s, zp, mode=mode, **kw) for mode in (mode_a, mode_b))
        return not np.array_equal(a, b)

    strategy = requant_cases(kinds=kinds) if fn == "requant" else quantize_cases(kinds=kinds)
    # generate only: the first example found is proof enough, shrinking it costs seconds
    quick = settings(phases=[Phase.generate], database=None, derandomize=True, max_examples=2000)
    return find(strategy, differs, settings=quick)


@pytest.mark.parametrize(
    "a, b, kinds, fn",
    [
        ("onnxruntime", "onnx-reference", ("tie",), "requant"),
        ("tflite", "tflite-single", ("tie",), "requant"),
        ("onnxruntime", "tflite", ("large",), "requant"),
        ("tflite", "tflite-single", ("overflow",), "requant"),
        ("onnxruntime", "tflite", ("tiny",), "requant"),
        ("onnxruntime", "tflite", ("tie",), "quantize"),
        ("onnxruntime", "fbgemm", ("reciprocal",), "quantize"),
    ],
)
def test_strategies_draw_disagreements(a, b, kinds, fn):
    assert _disagree(a, b, kinds, fn) is not None
