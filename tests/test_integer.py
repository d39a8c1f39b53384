"""sqref.integer: integer-only inference, checked exactly.

Oracles: a hand-computed conv (every mode); naive int64 loop nests for conv,
linear, max pool and avg pool (the source of truth, written here one output
element at a time); requant.accumulate_u8s8_int16_pairs for the saturation
model; the float fake-quant model for accuracy; a subprocess per BLAS thread
count for determinism. The five docs/backends.md disagreement categories are
driven through whole (tiny) integer models here; the op-level cases live in
tests/test_requant.py.
"""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import sqref
from sqref import integer
from sqref.integer import calibration, requant
from sqref.integer import run as irun
from sqref.data import load_split
from sqref.integer import ActParams, IntConv2d, IntegerModel, IntLinear
from sqref.model import Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU
from sqref.qmodel import quantize_model
from sqref.integer.oracle import naive_avg, naive_conv, naive_linear, naive_pool
from sqref.testing import assert_bit_exact, codes

MODES = requant.MODES


# ------------------------------------------------------------ naive oracles


# ------------------------------------------------------------ strategies


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = max(1, dil[0] * (kh - 1) + 1 - 2 * pad[0]) + draw(st.integers(0, 3))
    w = max(1, dil[1] * (kw - 1) + 1 - 2 * pad[1]) + draw(st.integers(0, 3))
    xq = draw(codes((draw(st.integers(1, 2)), cg * groups, h, w), np.uint8))
    wq = draw(codes((kg * groups, cg, kh, kw), np.int8))
    zx = draw(st.sampled_from([0, 255, 128, draw(st.integers(0, 255))]))
    return xq, zx, wq, dict(stride=stride, padding=pad, dilation=dil, groups=groups)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    h, w = kh + draw(st.integers(0, 4)), kw + draw(st.integers(0, 4))
    q = draw(codes((draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), np.uint8))
    return q, (kh, kw), stride, pad


def act(scale, zp):
    return ActParams(float(np.float32(scale)), zp)


# ------------------------------------------------------------ literal cases


def literal_conv_layer(zy):
    # x - z_x = [[1, 0, 3], [-2, 2, 0], [0, -1, 0]]   (z_x = 2)
    # w = [[1, -2], [3, 0]]; acc + bias(7) = [[-5 + 7, 0 + 7], [-6 + 7, -1 + 7]] = [[2, 7], [1, 6]]
    # M = s_x * s_w / s_y = 0.5 * 0.25 / 0.25 = 0.5 -> acc * M = [[1, 3.5], [0.5, 3]]: two exact ties
    x = np.array([[[[3, 2, 5], [0, 4, 2], [2, 1, 2]]]], np.uint8)
    layer = IntConv2d(weight=np.array([[[[1, -2], [3, 0]]]], np.int8), w_scale=np.float32(0.25),
                      bias=np.array([7], np.int32), bias_float=np.array([7 * 0.125], np.float32),
                      x=act(0.5, 2), y=act(0.25, zy))
    return x, layer


def test_literal_conv_accumulator():
    x, layer = literal_conv_layer(11)
    acc = integer.conv2d_accumulate(x, layer.weight, x_zero_point=2)
    assert acc.tolist() == [[[[-5, 0], [-6, -1]]]]


@pytest.mark.parametrize("mode, want", [
    # rne(3.5) = 4, rne(0.5) = 0, zero point after rounding: [[1 + 11, 4 + 11], [0 + 11, 3 + 11]]
    ("onnxruntime", [[12, 15], [11, 14]]),
    ("fbgemm", [[12, 15], [11, 14]]),  # float bias 0.875 / (0.5 * 0.25) = 7 exactly: as onnxruntime
    # zero point first: rne(14.5) = 14, rne(11.5) = 12
    ("onnx-reference", [[12, 14], [12, 14]]),
    # SRDHM rounds half up: floor((x + 1) / 2): 3.5 -> 4, 0.5 -> 1
    ("tflite", [[12, 15], [12, 14]]),
    ("tflite-single", [[12, 15], [12, 14]]),
])
def test_literal_conv_every_mode(mode, want):
    x, layer = literal_conv_layer(11)
    assert integer.apply_layer(layer, x, mode=mode).tolist() == [[want]]


def test_literal_conv_fused_relu_clamps_at_zero_point():
    x, layer = literal_conv_layer(11)
    # bias 3: acc + bias = [[-2, 3], [-3, 2]], times 0.5 = [[-1, 1.5], [-1.5, 1]] -> rne [[-1, 2], [-2, 1]] + 11
    plain = IntConv2d(**{**layer.__dict__, "bias": np.array([3], np.int32)})
    assert integer.apply_layer(plain, x, mode="onnxruntime").tolist() == [[[[10, 13], [9, 12]]]]
    relu = IntConv2d(**{**plain.__dict__, "relu": True})  # a fused ReLU clamps at z_y = 11 (real 0)
    assert integer.apply_layer(relu, x, mode="onnxruntime").tolist() == [[[[11, 13], [11, 12]]]]


def test_quantize_bias_literal():
    # s_b = float32(0.5 * 0.25) = 0.125: 1.0 / 0.125 = 8; 0.0625 / 0.125 = 0.5 -> 0 (half even); -0.1875 -> -1.5 -> -2
    got = integer.quantize_bias(np.float32([1.0, 0.0625, -0.1875, 1e30]), 0.5, np.float32(0.25))
    assert got.tolist() == [8, 0, -2, 2**31 - 1]  # saturated to the symmetric int32 range


def test_act_params_literal():
    p = integer.act_params(-1.0, 3.0)  # s = 4 / 255, z = rne(255 / 4 = 63.75) = 64
    assert (p.scale, p.zero_point) == (float(np.float32(4 / 255)), 64)
    assert integer.act_params(0.0, 0.0) == ActParams(1.0, 0, 0.0, 0.0)
    assert integer.act_params(0.5, 2.0).zero_point == 0  # the range always holds 0
    with pytest.raises(ValueError, match="zero point"):
        ActParams(0.5, 256)
    with pytest.raises(ValueError, match="float32"):
        ActParams(0.1, 0)  # 0.1 is not a float32 value


# ------------------------------------------------------------ kernels against the oracles


@given(conv_cases())
def test_conv_matches_naive_loop(case):
    xq, zx, wq, geo = case
    note(f"x {xq.shape} w {wq.shape} zx {zx} {geo}")
    assert_bit_exact(integer.conv2d_accumulate(xq, wq, x_zero_point=zx, **geo), naive_conv(xq, wq, x_zero_point=zx, **geo))


@given(conv_cases())
def test_conv_int16_pairs_matches_naive_saturating_loop(case):
    xq, zx, wq, geo = case
    got = integer.conv2d_accumulate(xq, wq, x_zero_point=zx, accumulate="int16-pairs", **geo)
    assert_bit_exact(got, naive_conv(xq, wq, x_zero_point=zx, pairs=True, **geo))


@given(st.data())
def test_linear_matches_naive_loop(data):
    n, k, o = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 5))
    xq, wq = data.draw(codes((n, k), np.uint8)), data.draw(codes((o, k), np.int8))
    zx = data.draw(st.integers(0, 255))
    assert_bit_exact(integer.linear_accumulate(xq, wq, x_zero_point=zx), naive_linear(xq, wq, x_zero_point=zx))
    want_pairs = requant.accumulate_u8s8_int16_pairs(xq, wq.T, a_zero_point=zx)
    assert_bit_exact(integer.linear_accumulate(xq, wq, x_zero_point=zx, accumulate="int16-pairs"), want_pairs)


def test_exact_matmul_worst_case_literal():
    # K = 1,500 terms of (0 - 255) * -128 = 32,640: 48,960,000, past 2**24 (three blocks of <= 514)
    a = np.full((1, 1500), -255, np.float32)
    b = np.full((1500, 1), -128, np.float32)
    assert integer.exact_matmul(a, b).tolist() == [[1500 * 255 * 128]]


def test_exact_matmul_blocks_are_needed():
    # Same-sign products past 2**24: one unblocked float32 GEMM rounds, exact_matmul does not.
    rng = np.random.default_rng(0)
    a = rng.integers(200, 256, size=(8, 2000))
    b = rng.integers(100, 128, size=(2000, 8))
    exact = a @ b  # int64
    unblocked = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    assert np.any(unblocked != exact)  # float32 alone is not enough here
    assert_bit_exact(integer.exact_matmul(a.astype(np.float32), b.astype(np.float32)), exact)


@given(st.data())
def test_linear_past_one_block_matches_int64(data):
    # K around and past F32_EXACT_K = 514 (the float32 block size), extreme codes included
    k = data.draw(st.sampled_from([513, 514, 515, 1028, 1029, 1600]))
    n, o = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    xq, wq = data.draw(codes((n, k), np.uint8)), data.draw(codes((o, k), np.int8))
    zx = data.draw(st.integers(0, 255))
    want = (xq.astype(np.int64) - zx) @ wq.astype(np.int64).T  # int64 matmul: exact, the oracle here
    assert_bit_exact(integer.linear_accumulate(xq, wq, x_zero_point=zx), want)


@given(st.data())
def test_fast_pair_model_equals_requant_pair_model(data):
    m, k, n = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 8))
    a, b = data.draw(codes((m, k), np.uint8)), data.draw(codes((k, n), np.int8))
    za = data.draw(st.integers(0, 255))
    assert_bit_exact(integer.int16_pairs_accumulate(a, b, a_zero_point=za),
                     requant.accumulate_u8s8_int16_pairs(a, b, a_zero_point=za))


# ------------------------------------------------------------ the fused conv/linear + requantization (mode onnxruntime)


@st.composite
def layer_params(draw, acc, sx):
    """w_scale (per tensor or per channel), bias (small, or near and past the fused bound 2**24), relu, and
    y: a scale spreading acc + bias over ~spread codes, half the time a power of two times s_x * s_w, so
    that exact .5 ties occur (outputs all clamped at 0 or 255 would test nothing)."""
    k = acc.shape[1]
    pick = st.one_of(st.integers(-10, -2).map(lambda e: 2.0 ** e), st.floats(1e-3, 0.5).map(np.float32))
    sw = np.float32([draw(pick) for _ in range(k)]) if draw(st.booleans()) else np.float32(draw(pick))
    top = draw(st.sampled_from([2**8, 2**16, 2**24, 2**31 - 1]))
    bias = np.array(draw(st.lists(st.integers(-top, top), min_size=k, max_size=k)), np.int32)
    total = acc + bias.astype(np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    peak, spread = max(1, int(np.abs(total).max())), draw(st.sampled_from([3, 30, 120]))
    if draw(st.booleans()):
        sy = np.float32(sx * float(np.max(sw)) * 2.0 ** int(np.ceil(np.log2(peak / spread))))
    else:
        sy = np.float32(sx * float(np.max(sw)) * peak / spread * draw(st.floats(0.5, 2.0)))
    return sw, bias, act(max(sy, np.float32(2.0 ** -100)), draw(st.sampled_from([0, 255, 128, draw(st.integers(0, 255))]))), draw(st.booleans())


def two_step_oracle(acc, layer):
    """requant_onnxruntime (the general, int64 one) of the naive loop's sums plus the bias, as uint8."""
    qmin = layer.y.zero_point if layer.relu else 0
    m = requant.effective_multiplier(layer.x.scale, layer.w_scale, layer.y.scale, mode="onnxruntime")
    total = acc + layer.bias.astype(np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
    return requant.requant_onnxruntime(total, multiplier=m, zero_point=layer.y.zero_point, qmin=qmin, qmax=255,
                                       axis=1).astype(np.uint8)


@given(conv_cases(), st.data())
def test_fused_conv_requant_matches_naive_loop_then_requant(case, data):
    xq, zx, wq, geo = case
    acc = naive_conv(xq, wq, x_zero_point=zx, **geo)
    sw, bias, y, relu = data.draw(layer_params(acc, 0.25))
    layer = IntConv2d(wq, sw, bias, bias.astype(np.float32), act(0.25, zx), y, relu=relu, **geo)
    note(f"plan {integer.fused_plan(layer) is not None}, max|acc| {np.abs(acc).max()}, max|bias| {np.abs(bias).max()}")
    try:
        want = two_step_oracle(acc, layer)
    except ValueError:  # acc + bias outside int32: both paths refuse it
        with pytest.raises(ValueError):
            integer.conv2d_requant(xq, layer)
        return
    assert_bit_exact(integer.conv2d_requant(xq, layer), want)
    assert_bit_exact(integer.apply_layer(layer, xq, mode="onnxruntime"), want)


@given(st.data())
def test_fused_linear_requant_matches_naive_loop_then_requant(data):
    n, k, o = data.draw(st.integers(1, 4)), data.draw(st.sampled_from([1, 7, 40, 514, 515, 1100])), data.draw(st.integers(1, 5))
    xq, wq = data.draw(codes((n, k), np.uint8)), data.draw(codes((o, k), np.int8))
    zx = data.draw(st.integers(0, 255))
    acc = naive_linear(xq, wq, x_zero_point=zx)
    sw, bias, y, relu = data.draw(layer_params(acc, 0.25))
    layer = IntLinear(wq, sw, bias, bias.astype(np.float32), act(0.25, zx), y, relu=relu)
    try:
        want = two_step_oracle(acc, layer)
    except ValueError:
        with pytest.raises(ValueError):
            integer.linear_requant(xq, layer)
        return
    assert_bit_exact(integer.linear_requant(xq, layer), want)


def test_fused_plan_bound_literal():
    # A = max(z_x, 255 - z_x) = 255 (z_x = 0); one filter of 514 weights of -128: A * L1 = 16,776,960 = 2**24 - 256
    w = np.full((1, 514), -128, np.int8)
    layer = IntLinear(w, np.float32(1), np.array([256], np.int32), np.zeros(1, np.float32), act(1, 0), act(2.0 ** 20, 0))
    assert integer.fused_plan(layer) is not None  # 2**24 - 256 + 256 = 2**24: every sum exact in float32
    past = IntLinear(w, np.float32(1), np.array([257], np.int32), np.zeros(1, np.float32), act(1, 0), act(2.0 ** 20, 0))
    assert integer.fused_plan(past) is None  # one past the bound: the two-step path runs, with the same codes
    x = np.full((1, 514), 255, np.uint8)  # acc = 514 * 255 * -128 = -16,776,960
    for lay in (layer, past):
        want = integer.requantize_layer(integer.linear_accumulate(x, w, x_zero_point=0), lay, mode="onnxruntime")
        assert integer.linear_requant(x, lay).tolist() == want.tolist() == [[0]]  # -16 after rounding, clamped at 0
    # s_x * s_w / s_y overflows float32: no plan, and the two steps refuse the infinite multiplier
    huge = IntLinear(w, np.float32(3e38), np.zeros(1, np.int32), np.zeros(1, np.float32), act(1e30, 0), act(1e-30, 0))
    with np.errstate(over="ignore"):
        assert integer.fused_plan(huge) is None
        with pytest.raises(ValueError, match="multiplier must be finite"):
            integer.linear_requant(x, huge)


def test_quantize_onnxruntime_uint8_literal():
    # x / s = [2.5, 3.5, -0.5, nan, inf, -inf, 1e30] with zp 10: rne then + 10; NaN -> qmin; clamps at 0 and 255
    x = np.float32([1.25, 1.75, -0.25, np.nan, np.inf, -np.inf, 1e30])
    assert requant.quantize_onnxruntime_uint8(x, np.float32(0.5), 10).tolist() == [12, 14, 10, 0, 255, 0, 255]


@given(st.data())
def test_quantize_onnxruntime_uint8_matches_quantize_linear(data):
    special = st.sampled_from([np.nan, np.inf, -np.inf, 0.5, -0.5, 1.5, 2.5, 1e30, -1e30, 0.0, -0.0])
    values = data.draw(st.lists(st.one_of(special, st.floats(-600, 600, width=32)), min_size=1, max_size=40))
    x = np.array(values, np.float32)
    s = np.float32(data.draw(st.sampled_from([1.0, 0.5, 0.1, 4 / 255, 2.0 ** -20, 3e5])))
    zp = data.draw(st.integers(0, 255))
    qmin = data.draw(st.sampled_from([0, zp]))
    want = requant.quantize_linear(x, s, zp, qmin=qmin, qmax=255, mode="onnxruntime").astype(np.uint8)
    assert_bit_exact(requant.quantize_onnxruntime_uint8(x, s, zp, qmin=qmin, qmax=255), want)


@given(pool_cases())
def test_max_pool_matches_naive_loop(case):
    q, kernel, stride, pad = case
    want = naive_pool(q, kernel, stride, pad, lambda vals, padded: max(vals))
    assert_bit_exact(integer.max_pool2d_codes(q, kernel_size=kernel, stride=stride, padding=pad), want)


@given(pool_cases(), st.sampled_from(MODES), st.data())
def test_avg_pool_matches_naive_loop(case, mode, data):
    q, kernel, stride, pad = case
    if mode.startswith("tflite"):
        pad = (0, 0)
    if data.draw(st.booleans()):  # a window over the whole input: ORT's global-average-pool path
        kernel, stride, pad = q.shape[2:], (1, 1), (0, 0)
    zx = data.draw(st.sampled_from([0, 255, 128, data.draw(st.integers(0, 255))]))
    scale = data.draw(st.sampled_from([2.0**-4, 0.1, 0.0037, 1.7]))
    x = act(scale, zx)
    got = integer.avg_pool2d_codes(q, kernel_size=kernel, stride=stride, padding=pad, x=x, y=x, mode=mode)
    assert_bit_exact(got, naive_pool(q, kernel, stride, pad, naive_avg(mode, x, x, kernel, q.shape[2:])))


def test_avg_pool_modes_round_a_tie_differently():
    # codes [4, 5] with z = 3: q - z = [1, 2], mean 1.5, one window over the whole input.
    # ORT takes its integer global-average-pool path: rne(3 * 0.5) = 2; ONNX reference rne(1.5) = 2;
    # TFLite works on int8 codes -124, -123: mean -123.5 rounds half away to -124, i.e. 1;
    # PyTorch adds the zero point before rounding: rne(1.5 + 3 = 4.5) = 4, i.e. 1
    q = np.array([[[[4, 5]]]], np.uint8)
    x = act(0.5, 3)
    got = {m: int(integer.avg_pool2d_codes(q, kernel_size=(1, 2), stride=(1, 2), padding=(0, 0), x=x, y=x, mode=m)[0, 0, 0, 0]) - 3
           for m in MODES}
    assert got == {"onnxruntime": 2, "onnx-reference": 2, "tflite": 1, "tflite-single": 1, "fbgemm": 1}
    # a window narrower than the input takes ORT's float path: (0.5 + 1.0) / 2 / 0.5 + 3 = 4.5 -> 4
    wide = np.array([[[[4, 5, 3, 3]]]], np.uint8)
    want = {"onnxruntime": [4, 3], "onnx-reference": [5, 3], "tflite": [4, 3], "tflite-single": [4, 3], "fbgemm": [4, 3]}
    for m in MODES:
        assert integer.avg_pool2d_codes(wide, kernel_size=(1, 2), stride=(1, 2), padding=(0, 0), x=x, y=x, mode=m).ravel().tolist() == want[m]


def test_kernels_reject_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        integer.conv2d_accumulate(np.zeros((1, 1, 3, 3), np.int8), np.zeros((1, 1, 1, 1), np.int8), x_zero_point=0)
    with pytest.raises(ValueError, match="groups"):
        integer.conv2d_accumulate(np.zeros((1, 3, 3, 3), np.uint8), np.zeros((2, 2, 1, 1), np.int8), x_zero_point=0)
    with pytest.raises(ValueError, match="IN must match"):
        integer.linear_accumulate(np.zeros((1, 3), np.uint8), np.zeros((2, 4), np.int8), x_zero_point=0)
    with pytest.raises(ValueError, match="zero point"):
        integer.linear_accumulate(np.zeros((1, 3), np.uint8), np.zeros((2, 3), np.int8), x_zero_point=256)  # bound needs z_x <= 255
    with pytest.raises(ValueError, match="TFLite"):
        q = np.zeros((1, 1, 4, 4), np.uint8)
        integer.avg_pool2d_codes(q, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), x=act(1, 0), y=act(1, 0), mode="tflite")


# ------------------------------------------------------------ model level: the docs/backends.md cases


def linear_model(*, x, y, w, bias, w_scale=1.0, relu=False, bias_float=None):
    """An IntegerModel of one linear layer: input (1, len(w[0])) codes."""
    w = np.array(w, np.int8)
    bias = np.array(bias, np.int32)
    bf = bias.astype(np.float32) * np.float32(x.scale) * np.float32(w_scale) if bias_float is None else bias_float
    layer = IntLinear(weight=w, w_scale=np.float32(w_scale), bias=bias, bias_float=np.asarray(bf, np.float32),
                      x=x, y=y, relu=relu)
    return IntegerModel((layer,), ("fc",), (w.shape[1],), x)


def run_codes(imodel, codes, mode):
    return integer.run_integer(imodel, np.array([codes], np.uint8), mode=mode, return_intermediates=True)[1][-1][0].tolist()


def test_model_case1_tie_with_zero_point_parity():
    # acc = 5, M = 0.5, z_y = 1: ORT/fbgemm rne(2.5) + 1 = 3; ONNX reference rne(3.5) = 4; TFLite 4 (half up)
    m = linear_model(x=act(1.0, 0), y=act(2.0, 1), w=[[1]], bias=[0])
    got = {mode: run_codes(m, [5], mode) for mode in MODES}
    assert got == {"onnxruntime": [3], "fbgemm": [3], "onnx-reference": [4], "tflite": [4], "tflite-single": [4]}
    # acc = -2, M = 0.25, z_y = 10: TFLite double rounding -1 (RDBPOT half away), single rounding 0, ORT -0 -> 0
    m = linear_model(x=act(1.0, 2), y=act(4.0, 10), w=[[1]], bias=[0])
    got = {mode: run_codes(m, [0], mode) for mode in MODES}
    assert got == {"onnxruntime": [10], "fbgemm": [10], "onnx-reference": [10], "tflite": [9], "tflite-single": [10]}


def test_model_case2_input_quantize_reciprocal_versus_division_and_ties():
    # PyTorch multiplies by float32(1/s) (fbgemm mode: 128), the others divide (127)
    m = linear_model(x=act(0.00214854861, 0), y=act(1.0, 0), w=[[1]], bias=[0])
    x = np.float32([[0.273939937]])
    got = {mode: int(integer.quantize_input(m, x, mode=mode)[0, 0]) for mode in MODES}
    assert got == {"onnxruntime": 127, "onnx-reference": 127, "tflite": 127, "tflite-single": 127, "fbgemm": 128}
    # an exact tie x / s = 2.5 with z = 0: half even 2, TFLite half away 3
    m = linear_model(x=act(1.0, 0), y=act(1.0, 0), w=[[1]], bias=[0])
    got = {mode: int(integer.quantize_input(m, np.float32([[2.5]]), mode=mode)[0, 0]) for mode in MODES}
    assert got == {"onnxruntime": 2, "onnx-reference": 2, "tflite": 3, "tflite-single": 3, "fbgemm": 2}


def test_model_case3_accumulator_past_2_24():
    # acc = 2**24 + 1 (all bias), M = 201 * 2**-25: ORT/fbgemm float32(acc) = 2**24 -> 100.5 -> 100;
    # ONNX reference and TFLite see 2**24 + 1 -> 100.500006 -> 101
    m = linear_model(x=act(201 * 2.0**-25, 0), y=act(1.0, 0), w=[[0]], bias=[2**24 + 1])
    got = {mode: run_codes(m, [0], mode) for mode in MODES}
    assert got == {"onnxruntime": [100], "fbgemm": [100], "onnx-reference": [101], "tflite": [101],
                   "tflite-single": [101]}


def test_model_case3b_int16_pair_saturation():
    # 255 * -128 twice = -65280; the AVX2 u8 x s8 kernels saturate the pair to -32768.
    # M = 1 / 512, z_y = 200: exact -127.5 -> -128 -> 72; saturated -64 -> 136
    m = linear_model(x=act(1.0, 0), y=act(512.0, 200), w=[[-128, -128]], bias=[0])
    codes = np.array([[255, 255]], np.uint8)
    assert integer.run_integer(m, codes, return_intermediates=True)[1][0].tolist() == [[72]]
    assert integer.run_integer(m, codes, return_intermediates=True, accumulate="int16-pairs")[1][0].tolist() == [[136]]
    with pytest.raises(ValueError, match="does not apply"):
        integer.run_integer(m, codes, mode="tflite", accumulate="int16-pairs")


def test_model_case4_multiplier_at_least_one_overflows_tflite():
    # M = 3, acc = 2**29: ORT saturates to 255; TFLite double rounding shifts acc left by 2 and wraps
    # int32 to -2**31 (x86 behaviour of the UB), ending at qmin
    m = linear_model(x=act(1.0, 0), y=act(1.0 / 3 * 1.0, 0), w=[[0]], bias=[2**29])
    mult = requant.effective_multiplier(1.0, 1.0, m.layers[0].y.scale, mode="tflite")
    assert 2.9 < mult < 3.1
    got = {mode: run_codes(m, [0], mode) for mode in MODES}
    assert got["onnxruntime"] == got["onnx-reference"] == got["fbgemm"] == got["tflite-single"] == [255]
    assert got["tflite"] == [0]


def test_model_case4b_tiny_multiplier_flushed():
    # M < 2**-32: TFLite flushes it to 0; ORT computes 2**31 * 2**-33 = 0.25 -> 0 too: every mode gives z_y
    m = linear_model(x=act(2.0**-20, 0), y=act(2.0**13, 7), w=[[0]], bias=[2**31 - 1])
    assert {mode: run_codes(m, [0], mode)[0] for mode in MODES} == dict.fromkeys(MODES, 7)


def test_model_case5_extremes():
    # zero point at the type limit with a fused ReLU: every output clamps to 255
    m = linear_model(x=act(1.0, 0), y=act(1.0, 255), w=[[1, -1]], bias=[0], relu=True)
    for mode in MODES:
        assert run_codes(m, [0, 255], mode) == [255]
        assert run_codes(m, [255, 0], mode) == [255]
    # outputs exactly at qmin and qmax: acc * M = -0.5 rounds to 0 (or is clamped there) in every mode;
    # acc = 255 and 256 with M = 1 land on and just past qmax
    m = linear_model(x=act(1.0, 0), y=act(2.0, 0), w=[[1]], bias=[-1])
    assert {mode: run_codes(m, [0], mode)[0] for mode in MODES} == dict.fromkeys(MODES, 0)
    for bias in (0, 1):
        m = linear_model(x=act(1.0, 0), y=act(1.0, 0), w=[[1]], bias=[bias])
        assert {mode: run_codes(m, [255], mode)[0] for mode in MODES} == dict.fromkeys(MODES, 255)
    # NaN in a float input pixel: ORT and the ONNX evaluator give qmin (0), PyTorch qmax (255), TFLite
    # (x86 cast of NaN to INT32_MIN) qmin
    m = linear_model(x=act(1.0, 0), y=act(1.0, 0), w=[[1]], bias=[0])
    got = {mode: int(integer.quantize_input(m, np.float32([[np.nan]]), mode=mode)[0, 0]) for mode in MODES}
    assert got == {"onnxruntime": 0, "onnx-reference": 0, "tflite": 0, "tflite-single": 0, "fbgemm": 255}


# ------------------------------------------------------------ calibration


def test_activation_ranges_by_rule():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 20000), [40.0, -0.5]]).astype(np.float32)
    assert integer.activation_range(x, rule="max") == (float(x.min()), 40.0)
    lo, hi = integer.activation_range(x, rule="percentile")
    assert hi == float(np.percentile(np.abs(x.astype(np.float64)), 99.99)) and lo == -hi  # min(x) < -hi: clipped
    for rule in ("kl", "mse"):
        lo, hi = integer.activation_range(x, rule=rule)
        assert -hi <= lo <= 0 < hi < 40  # the outlier is clipped
    relu = np.maximum(x, 0)
    for rule in integer.CALIBRATION_RULES:
        assert integer.activation_range(relu, rule=rule)[0] == 0.0  # ReLU outputs have lo = 0


def test_mse_rule_is_no_worse_than_max_on_its_own_grid():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.laplace(0, 1, 50000), [30.0]])
    a = np.sort(x)
    cum1, cum2 = np.concatenate([[0], np.cumsum(a)]), np.concatenate([[0], np.cumsum(a * a)])
    best = calibration.mse_alpha(x)
    sse = lambda al: calibration.grid_sse(a, cum1, cum2, al)  # noqa: E731
    assert sse(best) < sse(30.0)
    # and equal to a direct quantize/dequantize evaluation of that grid
    p = integer.act_params(max(a[0], -best), min(a[-1], best))
    q = requant.quantize_linear(x.astype(np.float32), p.scale, p.zero_point, qmin=0, qmax=255, mode="onnx-reference")
    direct = np.sum((x - np.float64(p.scale) * (q - p.zero_point)) ** 2)
    assert sse(best) == pytest.approx(direct, rel=1e-6)


def test_calibrate_errors():
    model = Model((Flatten(), Linear(np.ones((2, 4), np.float32), None)), (1, 2, 2))
    with pytest.raises(ValueError, match="rule"):
        integer.calibrate(model, np.zeros((1, 1, 2, 2), np.float32), rule="sigma")
    with pytest.raises(ValueError, match="shape"):
        integer.calibrate(model, np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="float weights"):
        cal = integer.calibrate(model, np.zeros((1, 1, 2, 2), np.float32))
        integer.build_integer_model(model, cal)
    asym = quantize_model(model, bits=8, scheme="asymmetric")
    with pytest.raises(ValueError, match="symmetric"):
        integer.build_integer_model(asym, integer.calibrate(asym, np.zeros((1, 1, 2, 2), np.float32)))


# ------------------------------------------------------------ the shipped LeNet-5


@pytest.fixture(scope="module")
def lenet5():
    qmodel = quantize_model(sqref.load(os.path.join(os.path.dirname(__file__), "..", "data", "lenet5.h5")), bits=8)
    cal = integer.calibrate(qmodel, load_split(split="train")[0])
    return qmodel, integer.build_integer_model(qmodel, cal)


def test_lenet5_structure_and_input_codes(lenet5):
    qmodel, imodel = lenet5
    kinds = [layer.kind for layer in imodel.layers]
    assert kinds == ["conv2d", "max_pool2d", "conv2d", "max_pool2d", "flatten", "linear", "relu", "linear"]
    assert imodel.layers[5].relu and imodel.layers[6].fused and imodel.layers[5].y.zero_point == 0
    assert imodel.input == ActParams(float(np.float32(1 / 255)), 0, 0.0, 1.0)
    x, _ = load_split(split="test")
    pixels = np.rint(x * 255).astype(np.uint8)  # MNIST's own uint8 pixels ARE the input codes
    assert_bit_exact(integer.quantize_input(imodel, x), pixels)
    assert_bit_exact(integer.run_integer(imodel, pixels[:100]), integer.run_integer(imodel, x[:100]))


def test_lenet5_integer_agrees_with_float_fake_quant(lenet5):
    # The integer path differs from the weight-quantized float model only by 8-bit per-tensor
    # activations (at most half a step of error per tensor, ~0.2% of each range) and the bias
    # rounding; a prediction flips only where the top two float logits are within a few
    # output steps (s = 0.22). Measured: 999 / 1000 agree (98.2% accuracy for both). The bound
    # 98% leaves room for 20 such images: a failure means a real arithmetic fault, not noise.
    qmodel, imodel = lenet5
    x, y = load_split(split="test")
    pred_int = integer.run_integer(imodel, x).argmax(axis=1)
    pred_float = sqref.run(qmodel, x).argmax(axis=1)
    assert np.mean(pred_int == pred_float) >= 0.98
    assert np.mean(pred_int == y) >= 0.975


def test_lenet5_modes_give_the_same_predictions_nearly(lenet5):
    _, imodel = lenet5
    x, _ = load_split(split="test")
    x = x[:200]
    base = integer.run_integer(imodel, x)
    for mode in MODES:
        logits = integer.run_integer(imodel, x, mode=mode)
        assert np.mean(logits.argmax(1) == base.argmax(1)) >= 0.99, mode


THREAD_SCRIPT = """
import hashlib, numpy as np, sqref
from sqref import integer
from sqref.data import load_split
from sqref.qmodel import quantize_model
q = quantize_model(sqref.load({path!r}), bits=8)
cal = integer.calibrate(q, load_split(split="train")[0][:100])
im = integer.build_integer_model(q, cal)
logits, outs = integer.run_integer(im, load_split(split="test")[0][:300], return_intermediates=True)
h = hashlib.sha256(logits.tobytes())
for o in outs:
    h.update(o.tobytes())
print(h.hexdigest())
"""


def test_identical_outputs_with_1_and_2_blas_threads():
    path = os.path.join(os.path.dirname(__file__), "..", "data", "lenet5.h5")
    digests = []
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        out = subprocess.run([sys.executable, "-c", THREAD_SCRIPT.format(path=path)], env=env, capture_output=True,
                             text=True, check=True)
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64


def test_outputs_do_not_depend_on_the_batch(lenet5, monkeypatch):
    _, imodel = lenet5
    x = load_split(split="test")[0][:7]
    logits, codes = integer.run_integer(imodel, x, return_intermediates=True)  # one batch of 7
    monkeypatch.setattr(irun, "BATCH_BYTES", 1)  # batch_size 1: seven batches of one image
    assert integer.batch_size(imodel) == 1
    seen = []
    one_logits, one_codes = integer.run_integer(imodel, x, return_intermediates=True, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert_bit_exact(one_logits, logits)
    for a, b in zip(one_codes, codes):
        assert_bit_exact(a, b)


def test_run_model_integer_convenience(lenet5):
    qmodel, imodel = lenet5
    x, _ = load_split(split="test")
    cal = integer.Calibration(imodel.input, tuple(layer.y for layer in imodel.layers), imodel.names, "max", 3500)
    # the ReLU's calibration is the fused fc1's output parameters: rebuilding gives the same model
    assert_bit_exact(integer.run_model_integer(qmodel, x[:50], calibration=cal), integer.run_integer(imodel, x[:50]))


def test_maxpool_conv_relu_model_against_float_quantized_reference():
    # a model with an unfused ReLU after a pool: max(q, z) on the codes equals quantizing relu(x)
    rng = np.random.default_rng(3)
    model = Model((Conv2d(rng.normal(0, 0.5, (3, 1, 3, 3)).astype(np.float32), np.float32([0.1, -0.2, 0.0]),
                          padding=(1, 1)),
                   MaxPool2d((2, 2), (2, 2)), ReLU(), Flatten(),
                   Linear(rng.normal(0, 0.3, (4, 48)).astype(np.float32), np.zeros(4, np.float32))), (1, 8, 8))
    q = quantize_model(model, bits=8, per_channel=True)
    x = rng.random((20, 1, 8, 8)).astype(np.float32)
    imodel = integer.build_integer_model(q, integer.calibrate(q, x))
    assert not imodel.layers[2].fused
    _, outs = integer.run_integer(imodel, x, return_intermediates=True)
    assert_bit_exact(outs[2], np.maximum(outs[1], np.uint8(imodel.layers[1].y.zero_point)))
    digest = hashlib.sha256(outs[-1].tobytes()).hexdigest()
    assert digest == hashlib.sha256(integer.run_integer(imodel, x, return_intermediates=True)[1][-1].tobytes()).hexdigest()


# ------------------------------------------------------------ int32 bias refit (fit_bias_scale)


def test_a_channel_too_small_for_its_bias_is_refitted():
    # channel 0: weights ~1e-9 (a dead channel after batch-norm folding), bias -5; s_x = 0.02:
    # -5 / (0.02 * 1e-9 / 127) is far beyond int32. Its scale becomes |b| / (s_x 2**30), its codes shrink.
    codes = np.array([[127, -64], [100, -3]], np.int8)
    w_scale = np.array([1e-9 / 127, 0.01], np.float32)
    bias = np.array([-5.0, 0.3], np.float32)
    refit, scale, channels = integer.model.fit_bias_scale(codes, w_scale, bias, 0.02)
    assert channels == [0] and scale[1] == w_scale[1] and (refit[1] == codes[1]).all()
    want = np.float32(5.0 / (np.float64(np.float32(0.02)) * 2**30))
    assert scale[0] >= want and scale[0] <= np.nextafter(want, np.float32(np.inf))
    assert (refit[0] == 0).all()  # 1e-9 of weight is nothing on the new grid
    b = integer.quantize_bias(bias, 0.02, scale)
    assert abs(int(b[0])) <= 2**30
    # nothing to do: the same arrays back
    same = integer.model.fit_bias_scale(codes, np.array([0.01, 0.01], np.float32), bias, 0.02)
    assert same[2] == [] and same[0] is codes


@given(st.integers(0, 2**32 - 1))
def test_refitted_biases_fit_and_codes_never_grow(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 6))
    codes = rng.integers(-127, 128, (k, 3)).astype(np.int8)
    w_scale = (10.0 ** rng.uniform(-12, -1, k)).astype(np.float32)
    bias = rng.normal(0, 10, k).astype(np.float32)
    x_scale = float(np.float32(10.0 ** rng.uniform(-4, 0)))
    for scale_in in (w_scale, w_scale.max()):  # per channel, per tensor
        refit, scale, channels = integer.model.fit_bias_scale(codes, np.float32(scale_in), bias, x_scale)
        q = np.abs(bias.astype(np.float64)) / (np.float64(np.float32(x_scale)) * np.asarray(scale, np.float64))
        assert (q <= 2**30).all() and (np.abs(refit.astype(int)) <= np.abs(codes.astype(int))).all()
        assert (np.asarray(scale) >= np.asarray(scale_in)).all()
