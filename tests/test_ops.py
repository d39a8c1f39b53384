"""Float ops: literal hand-computed cases, then hypothesis properties against
the loop-nest oracles (sqref.oracle, the source of truth)."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

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
