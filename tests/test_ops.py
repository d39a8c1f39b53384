"""Float ops: literal hand-computed cases, then hypothesis properties against
the loop-nest oracles (sqref.oracle, the source of truth)."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sqref import ops, oracle

# Float64 fast path vs float64 oracle: both sum the same products in different
# orders, so they differ by a few ulps of the accumulated magnitude.
RTOL64, ATOL64 = 1e-12, 1e-12
# float32 fast path vs float64 oracle: K <= a few hundred products of values
# in [-1, 1]; float32 accumulation error stays well under 1e-5 absolute.
RTOL32, ATOL32 = 1e-5, 1e-5


# --------------------------------------------------------------------------
# literal cases
# --------------------------------------------------------------------------
def test_conv2d_literal():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    w = np.array([[[[1, 0], [0, -1]]]], dtype=np.float32)  # x[i, j] - x[i+1, j+1]
    # Every 2x2 window gives x[i,j] - x[i+1,j+1] = -5 on this ramp; bias 0.5.
    y = ops.conv2d(x, w, np.array([0.5], np.float32))
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), -4.5, np.float32))
    assert y.dtype == np.float32


def test_conv2d_literal_stride_padding_dilation():
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    w = np.ones((1, 1, 2, 2))
    # padding 1, stride 2: windows at top-left corners (-1,-1), (-1,1), (1,-1), (1,1)
    # -> [[1, 2+3], [4+7, 5+6+8+9]] = [[1, 5], [11, 28]]
    y = ops.conv2d(x, w, padding=1, stride=2)
    np.testing.assert_array_equal(y[0, 0], [[1, 5], [11, 28]])
    # dilation 2 with a 2x2 kernel taps the four corners: 1 + 3 + 7 + 9 = 20
    np.testing.assert_array_equal(ops.conv2d(x, w, dilation=2)[0, 0], [[20]])


def test_conv2d_literal_groups_depthwise():
    x = np.stack([np.ones((2, 2)), 2 * np.ones((2, 2))])[None]  # C=2
    w = np.array([[[[1.0]]], [[[10.0]]]])  # depthwise 1x1: channel c scaled by w[c]
    y = ops.conv2d(x, w, groups=2)
    np.testing.assert_array_equal(y[0, 0], np.ones((2, 2)))
    np.testing.assert_array_equal(y[0, 1], 20 * np.ones((2, 2)))


def test_linear_literal():
    x = np.array([[1.0, 2.0]])
    w = np.array([[3.0, 4.0], [-1.0, 0.5]])
    np.testing.assert_array_equal(ops.linear(x, w, np.array([1.0, 0.0])), [[12.0, 0.0]])


def test_pool_literal():
    x = np.array([[1, 2, 5, 6], [3, 4, 7, 8], [0, -1, 2, 2], [-2, -3, 2, 2]], np.float32)[None, None]
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel_size=2)[0, 0], [[4, 8], [0, 2]])
    np.testing.assert_array_equal(ops.avg_pool2d(x, kernel_size=2)[0, 0], [[2.5, 6.5], [-1.5, 2]])
    # padding 1 on a 2x2 max pool with stride 2: windows see one real value at the corners
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel_size=2, stride=2, padding=1)[0, 0], [[1, 5, 6], [3, 7, 8], [-2, 2, 2]])


def test_relu_flatten_softmax_literal():
    np.testing.assert_array_equal(ops.relu(np.array([-1.0, 0.0, 2.0])), [0, 0, 2])
    assert ops.flatten(np.zeros((2, 3, 4, 5))).shape == (2, 60)
    p = ops.softmax(np.array([[0.0, np.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.25, 0.75]], rtol=1e-15)  # exact up to rounding of log(3)
    # stability: huge logits do not overflow
    np.testing.assert_allclose(ops.log_softmax(np.array([[1000.0, 1000.0]])), [[-np.log(2)] * 2], rtol=1e-15)


def test_fold_batchnorm_literal():
    w = np.array([[2.0], [4.0]])
    b = np.array([1.0, -1.0])
    # t = gamma / sqrt(var + eps) = [1/2, 3/1]
    wf, bf = ops.fold_batchnorm(w, b, gamma=np.array([1.0, 3.0]), beta=np.array([0.0, 1.0]),
                                mean=np.array([1.0, 2.0]), var=np.array([4.0, 1.0]), eps=0.0)
    np.testing.assert_array_equal(wf, [[1.0], [12.0]])
    np.testing.assert_array_equal(bf, [0.0, -8.0])  # (1-1)/2+0, (-1-2)*3+1


# --------------------------------------------------------------------------
# properties against the oracle
# --------------------------------------------------------------------------
@st.composite
def conv_cases(draw, dtype=np.float64):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    kg = draw(st.integers(1, 3))
    depthwise = draw(st.booleans()) and groups > 1
    if depthwise:
        cg, kg = 1, draw(st.integers(1, 2))
    C, K = cg * groups, kg * groups
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # stride 1 half the time: conv_gemm takes grid_patches there, patches otherwise
    stride = (1, 1) if draw(st.booleans()) else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    min_h = dilation[0] * (KH - 1) + 1 - 2 * padding[0]
    min_w = dilation[1] * (KW - 1) + 1 - 2 * padding[1]
    H = draw(st.integers(max(1, min_h), max(1, min_h) + 5))
    W = draw(st.integers(max(1, min_w), max(1, min_w) + 5))
    N = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(dtype)
    w = rng.uniform(-1, 1, (K, cg, KH, KW)).astype(dtype)
    b = rng.uniform(-1, 1, K).astype(dtype) if draw(st.booleans()) else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@given(conv_cases())
def test_conv2d_matches_oracle(case):
    x, w, b, kw = case
    np.testing.assert_allclose(ops.conv2d(x, w, b, **kw), oracle.conv2d(x, w, b, **kw), rtol=RTOL64, atol=ATOL64)


@given(conv_cases(dtype=np.float32))
def test_conv2d_float32_matches_oracle_and_stays_float32(case):
    x, w, b, kw = case
    y = ops.conv2d(x, w, b, **kw)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, oracle.conv2d(x, w, b, **kw), rtol=RTOL32, atol=ATOL32)


@given(conv_cases())
def test_conv2d_output_shape_formula(case):
    x, w, b, kw = case
    N, C, H, W = x.shape
    K, _, KH, KW = w.shape
    (SH, SW), (PH, PW), (DH, DW) = kw["stride"], kw["padding"], kw["dilation"]
    expected = (N, K, (H + 2 * PH - DH * (KH - 1) - 1) // SH + 1, (W + 2 * PW - DW * (KW - 1) - 1) // SW + 1)
    assert ops.conv2d(x, w, b, **kw).shape == expected


@given(conv_cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_conv2d_is_linear_in_x(case, a, c):
    x, w, _, kw = case
    x2 = np.random.default_rng(1).uniform(-1, 1, x.shape)
    lhs = ops.conv2d(a * x + c * x2, w, **kw)
    rhs = a * ops.conv2d(x, w, **kw) + c * ops.conv2d(x2, w, **kw)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)  # float64, |a|,|c| <= 3: rounding only


@given(conv_cases())
def test_grid_im2col_cropped_is_im2col(case):
    # Both are copies of the same input values (zero padding): equal exactly.
    x, w, _, kw = case
    N, C, H, W = x.shape
    _, _, KH, KW = w.shape
    geo = dict(padding=kw["padding"], dilation=kw["dilation"])
    want = ops.im2col(x, (KH, KW), **geo)
    grid = ops.grid_im2col(x, (KH, KW), **geo)
    Wp = W + 2 * kw["padding"][1]
    OH = grid.shape[1] // (N * Wp)
    cropped = grid.reshape(C * KH * KW, N, OH, Wp)[..., : want.shape[1] // (N * OH)].reshape(want.shape)
    np.testing.assert_array_equal(cropped, want)


def test_conv2d_batch_chunking_is_invisible(monkeypatch):
    """Chunking the batch (to bound im2col memory) changes no value beyond
    rounding: BLAS may pick other kernels for a narrower matrix, so the
    summation order (not the products) can differ; hence float64 and a
    tolerance of a few ulps of the 27-term sums."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    whole = ops.conv2d(x, w)
    monkeypatch.setattr(ops, "IM2COL_MAX_BYTES", 1)  # one image per chunk
    np.testing.assert_allclose(ops.conv2d(x, w), whole, rtol=1e-13, atol=1e-13)


@st.composite
def pool_cases(draw, kind, *, torch_compatible=False):
    """(x, keyword arguments) of a max or avg pool: kernel 1..3, stride 1..3, ceil_mode, and
    dilation 1..2 (max) or count_include_pad (avg). Padding: symmetric and at most half the
    window (torch's limit) when torch_compatible; otherwise (top, left, bottom, right), each
    smaller than the window (ONNX's pads). Inputs are large enough for one window."""
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kw = {"kernel_size": (KH, KW), "stride": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
          "ceil_mode": draw(st.booleans())}
    if kind == "avg":
        kw["count_include_pad"] = draw(st.booleans())
    if kind == "max" or not torch_compatible:  # torch's avg_pool2d has no dilation
        kw["dilation"] = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    DH, DW = kw.get("dilation", (1, 1))
    span = (DH * (KH - 1) + 1, DW * (KW - 1) + 1)
    if torch_compatible:
        PH, PW = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))  # torch: at most half the kernel
        pads = (PH, PW, PH, PW)
        kw["padding"] = (PH, PW)
    else:
        pads = tuple(draw(st.integers(0, span[a % 2] - 1)) for a in range(4))
        kw["padding"] = pads
    H = draw(st.integers(max(1, span[0] - pads[0] - pads[2]), 8))
    W = draw(st.integers(max(1, span[1] - pads[1] - pads[3]), 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W))
    # a dilated window may skip every input element: sqref refuses it (tested below)
    geometry = ops.pool_geometry(x.shape, kw["kernel_size"], kw["stride"], kw["padding"], kw.get("dilation", 1),
                                 kw["ceil_mode"])
    assume(ops.pool_counts(x.shape, geometry, count_include_pad=False).min() > 0)
    return x, kw


@given(pool_cases("max"))
def test_max_pool_matches_oracle(case):
    x, kw = case
    np.testing.assert_array_equal(ops.max_pool2d(x, **kw), oracle.max_pool2d(x, **kw))  # max is exact


@given(pool_cases("avg"))
def test_avg_pool_matches_oracle(case):
    x, kw = case
    np.testing.assert_allclose(ops.avg_pool2d(x, **kw), oracle.avg_pool2d(x, **kw), rtol=RTOL64, atol=ATOL64)


def test_pool_literal_ceil_mode_and_counts():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    # 3x3 windows, stride 2, ceil mode: rows/cols {0,1,2} and {2,3,(past)}; the last window has 2x2 inputs
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)[0, 0], [[10, 11], [14, 15]])
    want = [[(0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 9, (2 + 3 + 6 + 7 + 10 + 11) / 6],
            [(8 + 9 + 10 + 12 + 13 + 14) / 6, (10 + 11 + 14 + 15) / 4]]  # the overhang never counts
    np.testing.assert_allclose(ops.avg_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)[0, 0], want, rtol=1e-15)
    # padding 1 not counted: the corner window holds 0, 1, 4, 5
    got = ops.avg_pool2d(x, kernel_size=3, stride=3, padding=1, count_include_pad=False)[0, 0, 0, 0]
    assert got == (0 + 1 + 4 + 5) / 4
    # dilation 2: taps 0 and 2 of each row pair
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel_size=2, stride=1, dilation=2)[0, 0], [[10, 11], [14, 15]])
    # asymmetric ONNX pads (top, left, bottom, right) = (0, 0, 1, 1) on a 2x2 window, stride 2
    np.testing.assert_array_equal(ops.max_pool2d(x[:, :, :3, :3], kernel_size=2, stride=2, padding=(0, 0, 1, 1))[0, 0],
                                  [[5, 6], [9, 10]])


def test_pool_window_that_touches_no_input_is_refused():
    x = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="touches no input element"):
        ops.max_pool2d(x, kernel_size=2, stride=3, padding=(1, 1, 1, 1), dilation=3)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_linear_matches_oracle(N, IN, OUT, seed):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((N, IN)), rng.standard_normal((OUT, IN)), rng.standard_normal(OUT)
    np.testing.assert_allclose(ops.linear(x, w, b), oracle.linear(x, w, b), rtol=RTOL64, atol=ATOL64)


def test_fold_batchnorm_equals_conv_then_bn():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gamma, beta, mean = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)
    var = rng.uniform(0.1, 2, 4)
    y = ops.conv2d(x, w, b)
    bn = gamma[None, :, None, None] * (y - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5) + beta[None, :, None, None]
    wf, bf = ops.fold_batchnorm(w, b, gamma=gamma, beta=beta, mean=mean, var=var)
    np.testing.assert_allclose(ops.conv2d(x, wf, bf), bn, rtol=1e-12, atol=1e-12)  # float64 reassociation only


# --------------------------------------------------------------------------
# errors name the shapes
# --------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5), np.float32), np.zeros((2, 2, 3, 3), np.float32)), r"w shape \(2, 2, 3, 3\)"),
    (lambda: ops.conv2d(np.zeros((3, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float32)), r"x must be 4-D .* \(3, 5, 5\)"),
    (lambda: ops.conv2d(np.zeros((1, 3, 2, 2), np.float32), np.zeros((2, 3, 3, 3), np.float32)), "does not fit input 2x2"),
    (lambda: ops.conv2d(np.zeros((1, 4, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32), groups=2), "groups=2 must divide"),
    (lambda: ops.conv2d(np.zeros((1, 3, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float32), stride=0), "stride must be >= 1"),
    (lambda: ops.linear(np.zeros((2, 3)), np.zeros((4, 5))), r"x shape \(2, 3\) and w shape \(4, 5\)"),
    (lambda: ops.max_pool2d(np.zeros((1, 1, 1, 1)), kernel_size=2), "does not fit input 1x1"),
])
def test_bad_shapes_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_input_is_a_type_error():
    with pytest.raises(TypeError, match="dtype int64"):
        ops.conv2d(np.zeros((1, 1, 3, 3), np.int64), np.zeros((1, 1, 1, 1), np.float32))


# ==========================================================================
# graph ops: add, mul, div, concat, clip, sigmoid, hard_sigmoid, hard_swish,
# global_avg_pool, reduce_mean, reshape, batch_norm
# ==========================================================================
F32, F64 = np.float32, np.float64


def test_add_mul_div_literal():
    a = np.array([[1, 2, 3]], F32)  # (1, 3)
    b = np.array([[10], [20]], F32)  # (2, 1): both stretch to (2, 3)
    np.testing.assert_array_equal(ops.add(a, b), [[11, 12, 13], [21, 22, 23]])
    np.testing.assert_array_equal(ops.mul(a, np.array([[2], [-1]], F32)), [[2, 4, 6], [-1, -2, -3]])
    np.testing.assert_array_equal(ops.div(np.array([1, 3], F32), np.array([4], F32)), [0.25, 0.75])
    # float32 arithmetic: 1 + 2**-24 is a tie between 1 and 1 + 2**-23 and rounds to even (1);
    # float64 would keep 1.0000000596
    y = ops.add(np.array([1], F32), np.array([2.0**-24], F32))
    assert y.dtype == F32 and y[0] == 1
    # 1 / 3 divided in float32 is float32(1/3) = 0.3333333432674408, not 0.3333333333333333
    q = ops.div(np.array([1], F32), np.array([3], F32))
    assert q.dtype == F32 and float(q[0]) == 0.3333333432674408
    # float32 with float64: float64
    assert ops.add(a, b.astype(F64)).dtype == F64


def test_div_by_zero_is_ieee_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ops.div(np.array([1, -1, 0], F32), np.array([0], F32))
    np.testing.assert_array_equal(y, [np.inf, -np.inf, np.nan])  # +-x / 0 = +-inf, 0 / 0 = NaN


def test_concat_literal():
    x0 = np.ones((1, 1, 2, 2), F32)
    x1 = np.full((1, 2, 2, 2), 2, F32)
    y = ops.concat([x0, x1])  # default axis 1: channels [1, 2, 2]
    assert y.shape == (1, 3, 2, 2) and y.dtype == F32
    np.testing.assert_array_equal(y[0, :, 0, 0], [1, 2, 2])
    np.testing.assert_array_equal(ops.concat((np.array([[1, 2]], F32), np.array([[3]], F32)), axis=-1), [[1, 2, 3]])


def test_clip_literal():
    x = np.array([-1, 0, 3, 6, 7, np.nan], F32)
    np.testing.assert_array_equal(ops.clip(x, 0, 6), [0, 0, 3, 6, 6, np.nan])  # ReLU6; NaN stays NaN
    np.testing.assert_array_equal(ops.clip(np.array([-2, 0, 6], F32), 2, 1), [1, 1, 1])  # lo > hi: all hi (ONNX)
    np.testing.assert_array_equal(ops.clip(np.array([-1, 5], F32), lo=0), [0, 5])
    np.testing.assert_array_equal(ops.clip(np.array([-1, 5], F32), hi=1), [-1, 1])
    np.testing.assert_array_equal(ops.clip(np.array([-1, 5], F32)), [-1, 5])  # no bounds: a copy
    # the bound is rounded to x's dtype: float32(0.1) = 0.10000000149, above 0.1
    assert ops.clip(np.array([0], F32), 0.1)[0] == F32(0.1)


def test_sigmoid_literal():
    # 1 / (1 + e^-x): x = 0 -> 1/2; x = log 3 -> 1 / (1 + 1/3) = 3/4; x = -log 3 -> 1 / (1 + 3) = 1/4
    y = ops.sigmoid(np.array([0, np.log(3), -np.log(3)]))
    np.testing.assert_allclose(y, [0.5, 0.75, 0.25], rtol=1e-15)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow at either end
        np.testing.assert_array_equal(ops.sigmoid(np.array([-1000, 1000], F32)), [0, 1])
        np.testing.assert_array_equal(ops.sigmoid(np.array([-1e308, 1e308])), [0, 1])
    assert np.isnan(ops.sigmoid(np.array([np.nan], F32))[0])
    assert ops.sigmoid(np.zeros(2, F32)).dtype == F32


def test_hard_sigmoid_and_hard_swish_literal():
    # ONNX defaults alpha 0.2, beta 0.5: 0.2x + 0.5 = -0.1, 0, 0.5, 0.7, 1.0, 1.1, clipped to [0, 1]
    x = np.array([-3, -2.5, 0, 1, 2.5, 3])
    np.testing.assert_allclose(ops.hard_sigmoid(x), [0, 0, 0.5, 0.7, 1, 1], rtol=1e-15)
    # torch's hardsigmoid, alpha 1/6: x/6 + 1/2 = 0, 0.5, 0.75, 1 at -3, 0, 1.5, 3
    np.testing.assert_allclose(ops.hard_sigmoid(np.array([-3, 0, 1.5, 3]), 1 / 6, 0.5), [0, 0.5, 0.75, 1], rtol=1e-15)
    # hard_swish: x * clip(x/6 + 1/2): -4*0, -3*0, -1.5*0.25, 0, 1.5*0.75, 3*1, 4*1
    y = ops.hard_swish(np.array([-4, -3, -1.5, 0, 1.5, 3, 4], F32))
    assert y.dtype == F32
    np.testing.assert_array_equal(y, [0, 0, -0.375, 0, 1.125, 3, 4])
    assert np.isnan(ops.hard_swish(np.array([np.nan], F32))[0]) and np.isnan(ops.hard_sigmoid(np.array([np.nan]))[0])


def test_global_avg_pool_and_reduce_mean_literal():
    x = np.arange(8, dtype=F32).reshape(1, 2, 2, 2)  # channel 0 holds 0..3, channel 1 holds 4..7
    y = ops.global_avg_pool(x)
    assert y.shape == (1, 2, 1, 1) and y.dtype == F32
    np.testing.assert_array_equal(y.ravel(), [1.5, 5.5])  # (0+1+2+3)/4, (4+5+6+7)/4
    m = np.arange(6, dtype=F32).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]
    np.testing.assert_array_equal(ops.reduce_mean(m, [1]), [[1], [4]])
    np.testing.assert_array_equal(ops.reduce_mean(m, [-1], keepdims=False), [1, 4])
    np.testing.assert_array_equal(ops.reduce_mean(m, [0], keepdims=False), [1.5, 2.5, 3.5])
    np.testing.assert_array_equal(ops.reduce_mean(m, None), [[2.5]])  # every axis (ONNX's default)
    np.testing.assert_array_equal(ops.reduce_mean(m, []), [[2.5]])  # empty axes: every axis too
    z = ops.reduce_mean(m, (0, 1), keepdims=False)
    assert z.shape == () and z.dtype == F32 and z == 2.5


def test_reshape_literal():
    x = np.arange(24, dtype=F32).reshape(2, 3, 4)
    assert ops.reshape(x, [0, -1]).shape == (2, 12)  # 0 copies 2; -1 = 24 / 2
    assert ops.reshape(x, [2, 0, 2, 2]).shape == (2, 3, 2, 2)  # 0 copies 3
    assert ops.reshape(x, np.array([-1], np.int64)).shape == (24,)
    empty = np.zeros((0, 3, 4), F32)
    assert ops.reshape(empty, [3, 4, 0], allowzero=True).shape == (3, 4, 0)  # 0 is literal with allowzero
    np.testing.assert_array_equal(ops.reshape(np.arange(6.0).reshape(2, 3), [3, -1]), [[0, 1], [2, 3], [4, 5]])


def test_batch_norm_literal():
    x = np.array([[[[1, 3]], [[0, 4]]]], F32)  # (1, 2, 1, 2): channel 0 holds 1, 3; channel 1 holds 0, 4
    # channel 0: 2 * (x - 1) / sqrt(4) + 0 = x - 1 -> 0, 2; channel 1: 1 * (x - 2) / sqrt(1) + 1 = x - 1 -> -1, 3
    y = ops.batch_norm(x, np.array([2, 1], F32), np.array([0, 1], F32), np.array([1, 2], F32), np.array([4, 1], F32), eps=0)
    assert y.dtype == F32
    np.testing.assert_array_equal(y, [[[[0, 2]], [[-1, 3]]]])
    # 2-D (N, C) works too (ONNX allows it): (5 - 1) / sqrt(3 + 1) = 2
    np.testing.assert_array_equal(ops.batch_norm(np.array([[5.0]]), [1.0], [0.0], [1.0], [3.0], eps=1.0), [[2.0]])


def test_batch_norm_equals_the_folded_conv():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 5))
    w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gamma, beta, mean, var = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.1, 2, 4)
    wf, bf = ops.fold_batchnorm(w, b, gamma=gamma, beta=beta, mean=mean, var=var)
    np.testing.assert_allclose(ops.batch_norm(ops.conv2d(x, w, b), gamma, beta, mean, var), ops.conv2d(x, wf, bf),
                               rtol=1e-12, atol=1e-12)  # float64 reassociation only


# --------------------------------------------------------------------------
# naive loop oracles for the graph ops: plain Python loops over every index, Python floats
# (IEEE double); the tests round the oracle's result to the op's dtype
# --------------------------------------------------------------------------
def loop_broadcast_shape(sa, sb):
    r = max(len(sa), len(sb))
    sa, sb = (1,) * (r - len(sa)) + tuple(sa), (1,) * (r - len(sb)) + tuple(sb)
    return tuple(n if m == 1 else m for m, n in zip(sa, sb))


def loop_elementwise(f, a, b):
    """y[i] = f(a[i_a], b[i_b]) over the broadcast shape; an axis of length 1 reads index 0."""
    shape = loop_broadcast_shape(a.shape, b.shape)
    y = np.empty(shape)
    for idx in np.ndindex(*shape):
        ia = tuple(0 if n == 1 else i for i, n in zip(idx[len(shape) - a.ndim :], a.shape))
        ib = tuple(0 if n == 1 else i for i, n in zip(idx[len(shape) - b.ndim :], b.shape))
        y[idx] = f(float(a[ia]), float(b[ib]))
    return y


def loop_map(f, x):
    y = np.empty(x.shape)
    for idx in np.ndindex(*x.shape):
        y[idx] = f(float(x[idx]))
    return y


def loop_concat(xs, axis):
    axis %= xs[0].ndim
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    y = np.empty(shape)
    for idx in np.ndindex(*shape):
        k, i = 0, idx[axis]
        while i >= xs[k].shape[axis]:  # walk past the inputs before this position
            i -= xs[k].shape[axis]
            k += 1
        y[idx] = xs[k][idx[:axis] + (i,) + idx[axis + 1 :]]
    return y


def loop_mean(x, axes, keepdims):
    axes = sorted(a % x.ndim for a in (range(x.ndim) if axes is None or len(axes) == 0 else axes))
    kept = tuple(1 if d in axes else n for d, n in enumerate(x.shape))
    sums, count = np.zeros(kept), 1
    for d in axes:
        count *= x.shape[d]
    for idx in np.ndindex(*x.shape):
        key = tuple(0 if d in axes else i for d, i in enumerate(idx))
        sums[key] += float(x[idx])
    y = sums / count
    return y if keepdims else y.reshape([n for d, n in enumerate(x.shape) if d not in axes])


def loop_reshape(x, target):
    flat = [x[idx] for idx in np.ndindex(*x.shape)]  # C order
    y = np.empty(target, x.dtype)
    for k, idx in enumerate(np.ndindex(*target)):
        y[idx] = flat[k]
    return y


def loop_sigmoid(v):
    try:
        return 1.0 / (1.0 + math.exp(-v))  # the textbook formula
    except OverflowError:  # exp(-v) > 1e308: the true value is below 1e-308
        return 0.0


def loop_batch_norm(x, gamma, beta, mean, var, eps):
    y = np.empty(x.shape)
    for idx in np.ndindex(*x.shape):
        c = idx[1]
        y[idx] = float(gamma[c]) * (float(x[idx]) - float(mean[c])) / math.sqrt(float(var[c]) + eps) + float(beta[c])
    return y


dtypes = st.sampled_from([F32, F64])
seeds = st.integers(0, 2**32 - 1)


@st.composite
def broadcast_pairs(draw, scale=1.0):
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3))
    dtype, rng = draw(dtypes), np.random.default_rng(draw(seeds))
    a, b = (rng.standard_normal(s).astype(dtype) * dtype(scale) for s in shapes.input_shapes)
    return a, b


@given(broadcast_pairs(), st.sampled_from(["add", "mul", "div"]))
def test_add_mul_div_match_loop_oracle(pair_, name):
    # One IEEE operation per element: the float64 result rounded to float32 IS the float32 result
    # (for +, *, / double rounding is harmless since 53 >= 2 * 24 + 2), so every dtype is exact.
    a, b = pair_
    f = {"add": lambda u, v: u + v, "mul": lambda u, v: u * v, "div": lambda u, v: u / v}[name]  # b != 0 a.s.
    y = getattr(ops, name)(a, b)
    assert y.dtype == a.dtype and y.shape == loop_broadcast_shape(a.shape, b.shape)
    np.testing.assert_array_equal(y, loop_elementwise(f, a, b).astype(a.dtype))


@given(st.integers(1, 4), st.integers(1, 3), dtypes, seeds, st.data())
def test_concat_matches_loop_oracle(r, n, dtype, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-r, r - 1))
    base = [data.draw(st.integers(1, 3)) for _ in range(r)]
    shapes = [base[: axis % r] + [data.draw(st.integers(0, 3))] + base[axis % r + 1 :] for _ in range(n)]
    xs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    y = ops.concat(xs, axis=axis)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, loop_concat(xs, axis))  # a copy: exact


bounds = st.one_of(st.none(), st.floats(-2, 2, allow_nan=False), st.sampled_from([-np.inf, np.inf]))


@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), dtypes, seeds, bounds, bounds)
def test_clip_matches_loop_oracle(shape, dtype, seed, lo, hi):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[rng.integers(0, x.size)] = np.nan  # NaN propagates
    lo_r = None if lo is None else float(dtype(lo))  # the op rounds its bounds to x's dtype
    hi_r = None if hi is None else float(dtype(hi))

    def one(v):  # min(max(v, lo), hi), NaN kept
        if v != v:
            return v
        if lo_r is not None and v < lo_r:
            v = lo_r
        if hi_r is not None and v > hi_r:
            v = hi_r
        return v

    y = ops.clip(x, lo, hi)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, loop_map(one, x).astype(dtype))  # comparisons only: exact


@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), dtypes, seeds)
def test_sigmoid_matches_loop_oracle(shape, dtype, seed):
    x = (np.random.default_rng(seed).standard_normal(shape) * 10).astype(dtype)  # |x| up to ~40
    y = ops.sigmoid(x)
    assert y.dtype == dtype
    # float32: exp within an ulp or two, one division: 1e-6 relative is ~8 float32 ulps.
    # float64: the oracle's 1/(1+exp(-x)) and the op's e/(1+e) for x < 0 differ by a few ulps.
    np.testing.assert_allclose(y, loop_map(loop_sigmoid, x), rtol=1e-6 if dtype == F32 else 1e-14, atol=0)


@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), dtypes, seeds, st.floats(-2, 2), st.floats(-1, 2))
def test_hard_sigmoid_matches_loop_oracle(shape, dtype, seed, alpha, beta):
    x = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(dtype)
    a, b = float(dtype(alpha)), float(dtype(beta))  # the op rounds alpha and beta to x's dtype
    y = ops.hard_sigmoid(x, alpha, beta)
    assert y.dtype == dtype
    want = loop_map(lambda v: max(0.0, min(1.0, a * v + b)), x)
    if dtype == F64:
        np.testing.assert_array_equal(y, want)  # the same two double operations
    else:
        # float32 rounds a*x and then + b; where the result is not clipped, |a*x| <= 3, so each rounding
        # is at most half an ulp of 4 (2.4e-7 / 2): atol 2**-22
        np.testing.assert_allclose(y, want, rtol=0, atol=2.0**-22)


@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), dtypes, seeds)
def test_hard_swish_matches_loop_oracle(shape, dtype, seed):
    x = (np.random.default_rng(seed).standard_normal(shape) * 3).astype(dtype)
    y = ops.hard_swish(x)
    assert y.dtype == dtype
    want = loop_map(lambda v: v * max(0.0, min(1.0, v / 6 + 0.5)), x)
    # outside [-3, 3] both are exactly 0 or x; inside, float32 rounds alpha = 1/6, alpha*x, + 1/2 and the
    # product of values <= 3: a few ulps of 3 (2.4e-7 each), under 1e-6. float64: the same, ulps of 1e-16.
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6 if dtype == F32 else 1e-14)


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), dtypes, seeds)
def test_global_avg_pool_matches_loop_oracle(N, C, H, W, dtype, seed):
    x = np.random.default_rng(seed).standard_normal((N, C, H, W)).astype(dtype)
    want = np.empty((N, C, 1, 1))
    for n in range(N):
        for c in range(C):
            acc = 0.0
            for h in range(H):
                for w in range(W):
                    acc += float(x[n, c, h, w])
            want[n, c, 0, 0] = acc / (H * W)
    y = ops.global_avg_pool(x)
    assert y.dtype == dtype and y.shape == (N, C, 1, 1)
    # both sum in float64 (in other orders) and round once: float32 results may differ by one ulp (2**-23)
    np.testing.assert_allclose(y, want, rtol=2.0**-23 if dtype == F32 else RTOL64, atol=1e-12)


@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=3), dtypes, seeds, st.booleans(), st.data())
def test_reduce_mean_matches_loop_oracle(shape, dtype, seed, keepdims, data):
    r = len(shape)
    picked = data.draw(st.lists(st.integers(0, r - 1), unique=True, max_size=r))
    axes = None if not picked and data.draw(st.booleans()) else [a - r if data.draw(st.booleans()) else a for a in picked]
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    y = ops.reduce_mean(x, axes, keepdims=keepdims)
    want = loop_mean(x, axes, keepdims)
    assert y.dtype == dtype and y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=2.0**-23 if dtype == F32 else RTOL64, atol=1e-12)  # as global_avg_pool


@st.composite
def reshape_cases(draw):
    """(x, shape spec, allowzero, the target shape the spec means)."""
    xshape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=3))
    size = int(np.prod(xshape))
    k = draw(st.integers(1, 4))
    if size:
        target = [1] * k
        n, p = size, 2
        while n > 1:  # spread the prime factors of size over the k axes
            while n % p == 0:
                target[draw(st.integers(0, k - 1))] *= p
                n //= p
            p += 1
    else:
        target = [draw(st.integers(0, 3)) for _ in range(k)]
        target[draw(st.integers(0, k - 1))] = 0
    spec = list(target)
    # a 0 must be spelled as a copy of x's axis (allowzero off) or literally (allowzero on)
    literal_zero = any(d == 0 and (i >= len(xshape) or xshape[i] != 0) for i, d in enumerate(target))
    allowzero = literal_zero or draw(st.booleans())
    if not allowzero:
        for i in range(min(k, len(xshape))):
            if target[i] == xshape[i] and draw(st.booleans()):
                spec[i] = 0  # copies x's axis i
    if not (allowzero and 0 in spec) and draw(st.booleans()):
        j = draw(st.integers(0, k - 1))
        others = [target[i] for i in range(k) if i != j]
        if spec[j] != 0 and int(np.prod(others)) > 0:
            spec[j] = -1
    x = np.random.default_rng(draw(seeds)).standard_normal(xshape).astype(draw(dtypes))
    return x, spec, allowzero, tuple(target)


@given(reshape_cases())
def test_reshape_matches_loop_oracle(case):
    x, spec, allowzero, target = case
    y = ops.reshape(x, spec, allowzero=allowzero)
    assert y.shape == target and y.dtype == x.dtype
    np.testing.assert_array_equal(y, loop_reshape(x, target))  # a copy in C order: exact


@given(st.integers(1, 2), st.integers(1, 3), st.lists(st.integers(1, 3), max_size=2), dtypes, seeds,
       st.sampled_from([1e-5, 1e-3, 0.0]))
def test_batch_norm_matches_loop_oracle(N, C, spatial, dtype, seed, eps):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, *spatial)).astype(dtype)
    gamma, beta, mean = (rng.standard_normal(C).astype(dtype) for _ in range(3))
    var = rng.uniform(0.1, 2, C).astype(dtype)
    y = ops.batch_norm(x, gamma, beta, mean, var, eps=eps)
    assert y.dtype == dtype
    # the op evaluates the oracle's formula in the same order in float64, then rounds once: exact
    np.testing.assert_array_equal(y, loop_batch_norm(x, gamma, beta, mean, var, eps).astype(dtype))


# --------------------------------------------------------------------------
# graph ops: bad input is a one-line ValueError naming the argument
# --------------------------------------------------------------------------
z4 = np.zeros((1, 2, 3, 3), F32)
ones2 = np.ones(2, F32)


@pytest.mark.parametrize("call, match", [
    (lambda: ops.add(np.zeros((2, 3), F32), np.zeros(4, F32)), r"a shape \(2, 3\) and b shape \(4,\) do not broadcast"),
    (lambda: ops.div(np.zeros((2, 3)), np.zeros((3, 2, 2))), r"a shape \(2, 3\) and b shape \(3, 2, 2\)"),
    (lambda: ops.concat([]), "xs must hold at least one array"),
    (lambda: ops.concat(z4), "xs must be a list or tuple of arrays, got ndarray"),
    (lambda: ops.concat([z4, np.zeros((1, 2, 3, 4), F32)]), r"xs\[1\] shape \(1, 2, 3, 4\) must match xs\[0\]"),
    (lambda: ops.concat([z4, np.zeros((1, 2, 3), F32)]), r"xs\[1\] shape \(1, 2, 3\)"),
    (lambda: ops.concat([z4], axis=4), r"axis must be an int in \[-4, 3\]"),
    (lambda: ops.concat([np.float32(1)], axis=0), "xs\\[0\\] must have at least one axis"),
    (lambda: ops.clip(z4, np.nan, 1), "lo must be a non-NaN number"),
    (lambda: ops.clip(z4, 0, np.ones(2)), "hi must be a real number"),
    (lambda: ops.clip(z4, True), "lo must be a real number"),
    (lambda: ops.hard_sigmoid(z4, alpha=np.inf), "alpha must be a finite number"),
    (lambda: ops.hard_sigmoid(z4, beta="0.5"), "beta must be a real number"),
    (lambda: ops.global_avg_pool(np.zeros((2, 3, 4), F32)), r"x must be 4-D \(N, C, H, W\)"),
    (lambda: ops.global_avg_pool(np.zeros((1, 2, 0, 3), F32)), "x must have H, W >= 1"),
    (lambda: ops.reduce_mean(z4, [4]), r"axes must lie in \[-4, 3\]"),
    (lambda: ops.reduce_mean(z4, [1, -3]), "axes must name each axis once"),
    (lambda: ops.reduce_mean(z4, [1.0]), "axes must be an int or a sequence of ints"),
    (lambda: ops.reduce_mean(z4, [1], keepdims=2), "keepdims must be a bool"),
    (lambda: ops.reduce_mean(np.zeros((2, 0), F32), [1]), "include an empty axis"),
    (lambda: ops.reshape(z4, [-1, -1]), "at most one -1"),
    (lambda: ops.reshape(z4, [-2, 9]), "at most one -1"),
    (lambda: ops.reshape(z4, [1.5, 12]), "shape must be a sequence of ints"),
    (lambda: ops.reshape(z4, [1, 2, 9, 0, 0]), r"shape\[4\] = 0 copies x's axis 4"),
    (lambda: ops.reshape(z4, [0, -1], allowzero=True), "both 0 and -1 when allowzero"),
    (lambda: ops.reshape(z4, [5, -1]), r"cannot infer -1 for x shape \(1, 2, 3, 3\)"),
    (lambda: ops.reshape(z4, [2, 10]), r"shape \[2, 10\] holds 20 elements, x shape \(1, 2, 3, 3\) 18"),
    (lambda: ops.reshape(z4, [1], allowzero=3), "allowzero must be a bool"),
    (lambda: ops.batch_norm(np.zeros(3, F32), ones2, ones2, ones2, ones2), "x must be at least 2-D"),
    (lambda: ops.batch_norm(z4, np.ones(3, F32), ones2, ones2, ones2), r"gamma must have shape \(2,\)"),
    (lambda: ops.batch_norm(z4, ones2, ones2, ones2, -ones2), "var \\+ eps must be positive"),
    (lambda: ops.batch_norm(z4, ones2, ones2, ones2, ones2, eps=np.nan), "eps must be a finite number"),
])
def test_graph_ops_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("call, match", [
    (lambda: ops.add(np.zeros(2, np.int32), np.zeros(2, F32)), "a must be float32 or float64, got dtype int32"),
    (lambda: ops.concat([z4, np.zeros((1, 1, 3, 3), np.int8)]), r"xs\[1\] must be float32 or float64"),
    (lambda: ops.sigmoid(np.zeros(2, np.int64)), "x must be float32 or float64"),
    (lambda: ops.batch_norm(z4, np.ones(2, np.int64), ones2, ones2, ones2), "gamma must be float32 or float64"),
])
def test_graph_ops_integer_input_is_a_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_same_pads_literal():
    """ONNX auto_pad / TensorFlow SAME: output ceil(size / stride), the odd padding at the end (UPPER)."""
    assert ops.same_pads(5, 3, 2) == (1, 1)  # out 3: (3 - 1) * 2 + 3 - 5 = 2
    assert ops.same_pads(6, 3, 2) == (0, 1)  # out 3: (3 - 1) * 2 + 3 - 6 = 1, at the end
    assert ops.same_pads(6, 3, 2, upper=False) == (1, 0)  # SAME_LOWER: at the beginning
    assert ops.same_pads(7, 3, 1, dilation=2) == (2, 2)  # span 5: total 4
    assert ops.same_pads(4, 1, 4) == (0, 0)  # never negative
