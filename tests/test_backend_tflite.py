"""TFLite (ai-edge-litert's Interpreter) against sqref, bit for bit.

One-op int8 models are built from the flatbuffer schema (sqref.backends.tflite) over
hypothesis-drawn small shapes, with exact .5 ties on purpose (power-of-two
scales), per-tensor and per-channel weights, and run with each kernel set.
Measured on x86-64 AVX2 with ai-edge-litert 2.3, asserted exactly:

    kernels     CONV_2D                FULLY_CONNECTED      MAX_POOL  AVERAGE_POOL_2D
    xnnpack     onnxruntime            onnxruntime          exact     tflite
    (default)   (float32 M, rne)
    reference   tflite (double round)  single_away          exact     tflite
    builtin     tflite_ruy             tflite_ruy           exact     tflite

"tflite_ruy" (sqref.backends.tflite.requant_tflite_ruy) is double rounding whose final
shift rounds half up instead of half away from zero; "single_away"
(requant_tflite_single_away) rounds once, ties away from zero. Both are
deviations from every sqref.integer.requant mode, at (negative) ties. The literal
tie tests below pin each row. The whole LeNet-5 (per-channel weights) runs
under XNNPACK bit-exact with sqref's "onnxruntime" mode on every tensor.
"""
import os

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sqref import testing  # noqa: E402
import sqref  # noqa: E402
from sqref import integer  # noqa: E402
from sqref.backends import tflite as tflite_io  # noqa: E402
from sqref.integer import requant  # noqa: E402
from sqref.data import DATA_DIR, load_split  # noqa: E402
from sqref.integer import ActParams, IntAvgPool2d, IntConv2d, IntegerModel, IntLinear, IntMaxPool2d  # noqa: E402
from sqref.qmodel import quantize_model  # noqa: E402
from sqref.testing import assert_bit_exact  # noqa: E402

BACKEND = settings(max_examples=45, deadline=None)
KERNEL_MODES = {  # kernels -> (conv mode, fully connected mode)
    "xnnpack": ("onnxruntime", "onnxruntime"),
    "reference": ("tflite", "single-away"),
    "builtin": ("ruy", "ruy"),
}


def f32(v):
    return float(np.float32(v))


def codes(shape, dtype, lo, hi):
    """testing.codes in [lo, hi]: extremes or uniform."""
    return testing.codes(shape, dtype, lo, hi, dists=("extremes", "uniform"))


@st.composite
def out_params(draw, acc, sx, sw):
    """y scale spreading |acc| over ~spread steps; half the time a power of two times
    s_x * s_w, so exact .5 ties occur (and negative ones, where the roundings differ)."""
    peak = max(1, int(np.abs(acc).max()))
    spread = draw(st.sampled_from([3, 30, 120]))
    if draw(st.booleans()):
        sy = f32(sx * float(np.max(sw)) * 2.0 ** int(np.ceil(np.log2(peak / spread))))
    else:
        sy = f32(sx * float(np.max(sw)) * peak / spread * draw(st.floats(0.5, 2.0)))
    return ActParams(sy, draw(st.sampled_from([0, 255, 128, draw(st.integers(0, 255))])))


def w_scales(draw, k, per_channel):
    pick = st.one_of(st.integers(-10, -2).map(lambda e: 2.0**e), st.floats(1e-3, 0.5).map(f32))
    return np.float32([draw(pick) for _ in range(k)]) if per_channel else np.float32(draw(pick))


@st.composite
def conv_models(draw):
    c, k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    h = dil[0] * (kh - 1) + 1 + draw(st.integers(0, 3))
    w = dil[1] * (kw - 1) + 1 + draw(st.integers(0, 3))
    xq = draw(codes((draw(st.integers(1, 2)), c, h, w), np.uint8, 0, 255))
    wq = draw(codes((k, c, kh, kw), np.int8, -127, 127))  # TFLite's weight contract: no -128
    x = ActParams(draw(st.sampled_from([1.0, 0.25, f32(1 / 255), f32(0.037)])), draw(st.integers(0, 255)))
    sw = w_scales(draw, k, draw(st.booleans()))
    bias = np.array(draw(st.lists(st.integers(-(2**12), 2**12), min_size=k, max_size=k)), np.int32)
    acc = integer.conv2d_accumulate(xq, wq, x_zero_point=x.zero_point, stride=stride, padding=pad, dilation=dil)
    y = draw(out_params(acc + bias[None, :, None, None], x.scale, sw))
    layer = IntConv2d(wq, sw, bias, bias.astype(np.float32), x, y, relu=draw(st.booleans()), stride=stride,
                      padding=pad, dilation=dil)
    return IntegerModel((layer,), ("conv",), (c, h, w), x, "tflite"), xq, acc + bias[None, :, None, None]


@st.composite
def fc_models(draw):
    n, i, o = draw(st.integers(1, 3)), draw(st.integers(1, 40)), draw(st.integers(1, 6))
    xq = draw(codes((n, i), np.uint8, 0, 255))
    wq = draw(codes((o, i), np.int8, -127, 127))
    x = ActParams(draw(st.sampled_from([1.0, 0.5, f32(0.021)])), draw(st.integers(0, 255)))
    sw = w_scales(draw, o, draw(st.booleans()))
    bias = np.array(draw(st.lists(st.integers(-(2**12), 2**12), min_size=o, max_size=o)), np.int32)
    acc = integer.linear_accumulate(xq, wq, x_zero_point=x.zero_point) + bias
    y = draw(out_params(acc, x.scale, sw))
    layer = IntLinear(wq, sw, bias, bias.astype(np.float32), x, y, relu=draw(st.booleans()))
    return IntegerModel((layer,), ("fc",), (i,), x, "tflite"), xq, acc


def want_codes(mode, acc, layer):
    m = requant.effective_multiplier(layer.x.scale, layer.w_scale, layer.y.scale,
                                     mode="tflite" if mode in ("ruy", "single-away") else mode)
    qmin = layer.y.zero_point if layer.relu else 0
    if mode == "ruy":
        y = requant.requant_tflite_ruy(acc, multiplier=m, zero_point=layer.y.zero_point, qmin=qmin, qmax=255)
    elif mode == "single-away":
        y = requant.requant_tflite_single_away(acc, multiplier=m, zero_point=layer.y.zero_point, qmin=qmin, qmax=255)
    else:
        y = requant.requantize(acc, multiplier=m, zero_point=layer.y.zero_point, qmin=qmin, qmax=255, mode=mode)
    return y.astype(np.uint8)


@BACKEND
@given(conv_models(), st.sampled_from(list(KERNEL_MODES)))
def test_conv2d(case, kernels):
    imodel, xq, acc = case
    mode = KERNEL_MODES[kernels][0]
    note(f"{kernels}: {imodel.layers[0]}")
    got = tflite_io.run_tflite_model(imodel, xq, kernels=kernels)["conv"]
    assert_bit_exact(got, want_codes(mode, acc, imodel.layers[0]), err_msg=f"{kernels} vs {mode}")
    if mode in requant.MODES:  # the same through run_integer
        assert_bit_exact(got, integer.run_integer(imodel, xq, mode=mode, return_intermediates=True)[1][0])


@BACKEND
@given(fc_models(), st.sampled_from(list(KERNEL_MODES)))
def test_fully_connected(case, kernels):
    imodel, xq, acc = case
    mode = KERNEL_MODES[kernels][1]
    got = tflite_io.run_tflite_model(imodel, xq, kernels=kernels)["fc"]
    assert_bit_exact(got, want_codes(mode, acc, imodel.layers[0]), err_msg=f"{kernels} vs {mode}")


@BACKEND
@given(st.data(), st.sampled_from(list(KERNEL_MODES)), st.booleans())
def test_pools(data, kernels, average):
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    h, w = kh + data.draw(st.integers(0, 4)), kw + data.draw(st.integers(0, 4))
    q = data.draw(codes((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), h, w), np.uint8, 0, 255))
    x = ActParams(f32(data.draw(st.sampled_from([0.5, 0.1, 1.0]))), data.draw(st.integers(0, 255)))
    cls = IntAvgPool2d if average else IntMaxPool2d
    imodel = IntegerModel((cls((kh, kw), stride, (0, 0), x),), ("pool",), q.shape[1:], x, "tflite")
    got = tflite_io.run_tflite_model(imodel, q, kernels=kernels)["pool"]
    if average:
        want = integer.avg_pool2d_codes(q, kernel_size=(kh, kw), stride=stride, padding=(0, 0), x=x, y=x, mode="tflite")
    else:
        want = integer.max_pool2d_codes(q, kernel_size=(kh, kw), stride=stride, padding=(0, 0))
    assert_bit_exact(got, want, err_msg=kernels)


def test_ruy_rounding_literal():
    # acc = -1403, M = 0.0010695511 (M0 = 1175983887, shift -9): exact -1.50058.
    # SRDHM gives round(-1403 * M0 / 2**31) = -768 = -1.5 * 2**9: a tie for the final shift.
    # "tflite" (RoundingDivideByPOT, half away) -> -2; ruy's rounding shift (half up) -> -1.
    m = 0.0010695511146296924
    assert requant.requantize(np.array([-1403]), multiplier=m, zero_point=0, qmin=-128, qmax=127, mode="tflite").tolist() == [-2]
    assert requant.requant_tflite_ruy(np.array([-1403]), multiplier=m, zero_point=0, qmin=-128, qmax=127).tolist() == [-1]


@pytest.mark.parametrize("per_channel", [False, True])
def test_literal_ties_pin_each_kernel_set(per_channel):
    # acc = x - 20 (conv 1x1, w = 1) for x = 0..39 and M = 0.25: every other acc is an exact .5 tie,
    # of both signs. z_y = 100.
    x = ActParams(1.0, 0)
    y = ActParams(1.0, 100)
    sw = np.float32([0.25, 0.25]) if per_channel else np.float32(0.25)
    codes_in = np.arange(40, dtype=np.uint8).reshape(1, 1, 5, 8)
    conv = IntConv2d(np.ones((2, 1, 1, 1), np.int8), sw, np.array([-20, -21], np.int32), np.zeros(2, np.float32), x, y)
    conv_model = IntegerModel((conv,), ("c",), (1, 5, 8), x)
    acc = integer.conv2d_accumulate(codes_in, conv.weight, x_zero_point=0) + conv.bias[None, :, None, None]
    w_fc = np.zeros((2, 40), np.int8)
    w_fc[:, 0] = 1
    fc = IntLinear(w_fc, sw, np.array([-20, -21], np.int32), np.zeros(2, np.float32), x, y)
    fc_model = IntegerModel((fc,), ("f",), (40,), x)
    fc_in = np.repeat(np.arange(40, dtype=np.uint8)[:, None], 40, axis=1)
    acc_fc = integer.linear_accumulate(fc_in, w_fc, x_zero_point=0) + fc.bias
    for kernels, (conv_mode, fc_mode) in KERNEL_MODES.items():
        got = tflite_io.run_tflite_model(conv_model, codes_in, kernels=kernels)["c"]
        assert_bit_exact(got, want_codes(conv_mode, acc, conv), err_msg=f"{kernels} conv")
        got = tflite_io.run_tflite_model(fc_model, fc_in, kernels=kernels)["f"]
        assert_bit_exact(got, want_codes(fc_mode, acc_fc, fc), err_msg=f"{kernels} fully connected")
    # the ties tell the candidates apart: each one differs from every other somewhere here
    candidates = ("onnxruntime", "tflite", "tflite-single", "ruy", "single-away")
    for a in candidates:
        for b in candidates:
            if a < b:
                assert not np.array_equal(want_codes(a, acc, conv), want_codes(b, acc, conv)) or \
                    not np.array_equal(want_codes(a, acc_fc, fc), want_codes(b, acc_fc, fc)), (a, b)


def test_average_pool_ties_round_half_away_in_every_kernel_set():
    # int8 codes -124, -123 (uint8 4, 5): mean -123.5 -> -124 (half away); uint8 4. Half even
    # would give 5 on the centred values (1.5 -> 2, + z = 3).
    x = ActParams(0.5, 3)
    model = IntegerModel((IntAvgPool2d((1, 2), (1, 2), (0, 0), x),), ("p",), (1, 1, 2), x)
    for kernels in tflite_io.KERNELS:
        assert tflite_io.run_tflite_model(model, np.array([[[[4, 5]]]], np.uint8), kernels=kernels)["p"].ravel().tolist() == [4]


def test_lenet5_xnnpack_equals_the_onnxruntime_mode_on_every_tensor():
    qmodel = quantize_model(sqref.load(os.fspath(DATA_DIR / "lenet5.h5")), bits=8, per_channel=True)
    x = load_split(split="test")[0][:500]
    imodel = integer.build_integer_model(qmodel, integer.calibrate(qmodel, load_split(split="train")[0][:500]))
    codes_in = integer.quantize_input(imodel, x)
    got = tflite_io.run_tflite_model(imodel, codes_in)
    logits, outs = integer.run_integer(imodel, codes_in, mode="onnxruntime", return_intermediates=True)
    for name, want in zip(imodel.names, outs):
        assert_bit_exact(got[name], want, err_msg=name)
    assert_bit_exact(got["logits"], logits)
    # and the same model in mode "tflite-single" differs, rarely (no exact ties in real data)
    _, single = integer.run_integer(imodel, codes_in, mode="tflite-single", return_intermediates=True)
    assert 0 < sum(int(np.sum(a != b)) for a, b in zip(single, outs)) < 500


def test_unsupported_layers_are_refused():
    x = ActParams(1.0, 0)
    pool = IntegerModel((IntMaxPool2d((2, 2), (2, 2), (1, 1), x),), ("p",), (1, 4, 4), x)
    with pytest.raises(ValueError, match="without padding"):
        tflite_io.build_tflite(pool, 1)
    conv = IntConv2d(np.zeros((2, 1, 1, 1), np.int8), np.float32(1), np.zeros(2, np.int32), np.zeros(2, np.float32),
                     x, x, groups=2)
    with pytest.raises(ValueError, match="groups=1"):
        tflite_io.build_tflite(IntegerModel((conv,), ("c",), (2, 3, 3), x), 1)
