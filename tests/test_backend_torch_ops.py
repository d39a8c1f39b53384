"""PyTorch (fbgemm engine) against sqref.integer.requant, bit for bit.

quantize_per_tensor is checked against mode "fbgemm" (one float32 fused
multiply-add of the reciprocal scale and the zero point), quantized
linear/conv2d against mode "fbgemm" (float bias added in float32, per-tensor
reciprocal vs per-channel division), all with EXACT equality; the
accumulators come from a naive int64 matmul/conv written here.

Documented deviation (docs/backends.md): FBGEMM's AVX2 u8 x s8 kernels
(VPMADDUBSW) sum adjacent products along K in saturating int16, for linear
and for every conv kernel measured here (im2col, groupwise, depthwise; K in
(KH, KW, C) order). ``FBGEMM_SATURATES`` probes the machine once; where it
saturates, linear/conv are asserted equal to
``requant.accumulate_u8s8_int16_pairs`` and, separately, exact for 7-bit
activations in [0, 127] -- which is why PyTorch's default fbgemm qconfig uses
``reduce_range=True``. No tolerance anywhere.
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import Phase, find, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sqref import testing  # noqa: E402
from sqref.backends import probe  # noqa: E402
from sqref.integer import oracle  # noqa: E402
from sqref.integer import requant  # noqa: E402
from sqref.testing import assert_bit_exact, qparams, quantize_cases  # noqa: E402

# Each example packs weights and runs one small op (~1-3 ms); 40 examples per
# test keep this file within a few seconds.
BACKEND = settings(max_examples=40)

warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch.ao quantization deprecation notices


@pytest.fixture(autouse=True, scope="module")
def fbgemm_engine():
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no fbgemm engine")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    yield
    torch.backends.quantized.engine = previous


def q_activation(codes, scale, zp):
    return torch._make_per_tensor_quantized_tensor(torch.from_numpy(codes.astype(np.uint8)), scale, zp)


def q_weight(codes, scales, zps):
    w = torch.from_numpy(codes.astype(np.int8))
    if np.ndim(scales) == 0:
        return torch._make_per_tensor_quantized_tensor(w, float(scales), int(zps))
    return torch._make_per_channel_quantized_tensor(
        w, torch.tensor(np.asarray(scales, np.float64)), torch.tensor(np.asarray(zps, np.int64)), 0
    )


# ------------------------------------------------ naive integer arithmetic


def conv_acc(x, w, zx, zw, *, padding, stride, dilation, groups, u8s8_pairs):
    """Conv accumulator (N, K, OH, OW) without bias, with torch's argument names: exact, or as the
    saturating FBGEMM kernels compute it (depthwise included)."""
    return oracle.conv_accumulator(x, w, x_zero_point=zx, w_zero_point=zw, pads=(*padding, *padding), strides=stride, dilations=dilation, groups=groups, u8s8_pairs=u8s8_pairs)


def linear_acc(x, w, zx, zw, *, u8s8_pairs):
    """(M, K) codes times (N, K) weight codes -> (M, N) accumulator without bias."""
    if u8s8_pairs:
        return requant.accumulate_u8s8_int16_pairs(x, w.T, a_zero_point=zx, b_zero_point=zw)
    return (x.astype(np.int64) - zx) @ (w.astype(np.int64) - np.reshape(zw, (-1, 1))).T


FBGEMM_SATURATES = ("fbgemm" in torch.backends.quantized.supported_engines
                    and probe.accumulation("torch", "matmul") == "int16-pairs")  # quantized.linear, probed


# ---------------------------------------------------------- quantize


@BACKEND
@given(quantize_cases(max_size=40, allow_nan=True))
def test_quantize_per_tensor(case):
    # >= 8 elements run FBGEMM's AVX2 main loop, fewer its masked remainder: both drawn
    x, scale, zp, qmin, qmax = case
    dtype = torch.quint8 if qmin == 0 else torch.qint8
    got = torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, dtype).int_repr().numpy()
    want = requant.quantize_linear(x, scale, zp, qmin=qmin, qmax=qmax, mode="fbgemm").astype(got.dtype)
    assert_bit_exact(got, want, err_msg=f"x={x.tolist()} scale={scale} zp={zp}")


@pytest.mark.parametrize("n", [1, 9])  # FBGEMM's masked remainder, then its 8-wide main loop
@pytest.mark.parametrize(
    "x, scale, zp, want",
    [
        (0.273939937, 0.00214854861, 0, 128),  # x * float32(1/s) = 127.5; x / s = 127.49999 -> 127
        (0.5, 1.0, 1, 2),  # rne(0.5 + 1): zero point added before rounding (after would give 1)
        (-3.3042783737182617, 0.6007778644561768, 7, 1),  # fused: 1.4999999; unfused -5.5 + 7 = 1.5 -> 2
    ],
)
def test_quantize_per_tensor_literal(x, scale, zp, want, n):
    # NOTE: docs/backends.md says clamp(zp + nearbyint(x * float32(1/scale))); measured here it is
    # rne(fma(x, float32(1/scale), zp)), FBGEMM's QuantizeAvx2<LEGACY=true>
    got = torch.quantize_per_tensor(torch.full((n,), x, dtype=torch.float32), scale, zp, torch.quint8)
    assert got.int_repr().tolist() == [want] * n
    assert requant.quantize_linear(np.float32([x]), scale, zp, qmin=0, qmax=255, mode="fbgemm").tolist() == [want]


@BACKEND
@given(st.data(), st.sampled_from(["uint8", "int8"]))
def test_dequantize(data, dtype):
    scale, zp, qmin, qmax = data.draw(qparams(dtype))
    codes = np.array(data.draw(st.lists(st.integers(qmin, qmax), min_size=1, max_size=40)))
    t = torch.from_numpy(codes.astype(dtype))
    q = (torch._make_per_tensor_quantized_tensor(t, scale, zp))
    assert_bit_exact(q.dequantize().numpy(), requant.dequantize_linear(codes, scale, zp))


# ------------------------------------------------------ linear and conv


def codes(shape, lo, hi):
    """int64 codes in [lo, hi] (testing.codes)."""
    return testing.codes(shape, np.int64, lo, hi)


@st.composite
def weight_params(draw, k_out):
    if draw(st.booleans()):  # per tensor, any zero point
        return np.float32(draw(qparams("int8"))[0]), draw(st.sampled_from([0, 0, -128, 127, 5]))
    scales = np.array([draw(qparams("int8"))[0] for _ in range(k_out)], np.float32)
    return scales, np.zeros(k_out, np.int64)  # per channel: symmetric, as PyTorch's qconfigs


@st.composite
def out_params(draw, acc, sx, sw):
    """(y_scale, y_zero_point): |acc| spread over about `spread` steps, often a power of two
    times s_x s_w so exact .5 ties happen."""
    peak = max(1, int(np.abs(acc).max()))
    spread = draw(st.sampled_from([2, 20, 100, 300]))
    base = float(np.float32(sx) * np.max(np.float32(sw)))
    if draw(st.booleans()):
        sy = float(np.float32(base * 2.0 ** int(np.ceil(np.log2(peak / spread)))))
    else:
        sy = float(np.float32(base * peak / spread * draw(st.floats(0.5, 2.0))))
    return sy, draw(st.sampled_from([0, 255, 128, 3]))


def fbgemm_want(acc, bias, sx, sw, sy, zy, relu):
    atw = np.float32(sx) * np.asarray(sw, np.float32)  # act_times_w_scale, float32 as qlinear.cpp
    m = requant.effective_multiplier(sx, sw, sy, mode="fbgemm")
    return requant.requant_fbgemm(
        acc, multiplier=m, zero_point=zy, qmin=zy if relu else 0, qmax=255, axis=1,
        bias=bias, act_times_w_scale=None if bias is None else atw,
    ).astype(np.uint8)


@st.composite
def linear_case(draw, x_max=255):
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 9))  # n > 8 exercises the vector loop
    k = draw(st.one_of(st.integers(1, 24), st.integers(500, 700)))
    x = draw(codes((m, k), 0, x_max))
    w = draw(codes((n, k), -128, 127))
    sx, zx, _, _ = draw(qparams("uint8"))
    zx = min(zx, x_max)  # reduce_range: codes and zero point in [0, 127]
    sw, zw = draw(weight_params(n))
    bias = np.array(draw(st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n)), np.float32)
    bias = bias if draw(st.booleans()) else None
    sy, zy = draw(out_params(linear_acc(x, w, zx, zw, u8s8_pairs=False), sx, sw))
    return x, w, sx, zx, sw, zw, bias, sy, zy, draw(st.booleans())


def check_linear(case, u8s8_pairs):
    """Run quantized.linear(_relu); assert == the fbgemm mode. True if the exact accumulator would fail."""
    x, w, sx, zx, sw, zw, bias, sy, zy, relu = case
    packed = torch.ops.quantized.linear_prepack(q_weight(w, sw, zw), None if bias is None else torch.from_numpy(bias))
    op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    got = op(q_activation(x, sx, zx), packed, sy, zy).int_repr().numpy()
    acc = linear_acc(x, w, zx, zw, u8s8_pairs=u8s8_pairs)
    note(f"acc={acc.tolist()} bias={bias} sy={sy} zy={zy} relu={relu}")
    assert_bit_exact(got, fbgemm_want(acc, bias, sx, sw, sy, zy, relu), err_msg=f"linear pairs={u8s8_pairs}")
    return not np.array_equal(got, fbgemm_want(linear_acc(x, w, zx, zw, u8s8_pairs=False), bias, sx, sw, sy, zy, relu))


@BACKEND
@given(linear_case())
def test_quantized_linear(case):
    check_linear(case, FBGEMM_SATURATES)


@BACKEND
@given(linear_case(x_max=127))
def test_quantized_linear_exact_with_reduce_range(case):
    # activations in [0, 127] (reduce_range=True): 2 * 127 * 128 < 2**15, no pair saturates
    check_linear(case, u8s8_pairs=False)


@st.composite
def conv_case(draw, x_max=255):
    groups = draw(st.sampled_from([1, 1, 2, 4]))
    cg, kg = draw(st.sampled_from([(1, 1), (1, 2), (2, 2), (4, 4), (3, 2), (5, 3), (8, 8)]))
    kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (1, 2), (2, 3), (5, 5)]))
    dilation = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    stride = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    padding = [draw(st.integers(0, 1)), draw(st.integers(0, 1))]
    h = dilation[0] * (kh - 1) + 1 + draw(st.integers(0, 3))
    wd = dilation[1] * (kw - 1) + 1 + draw(st.integers(0, 3))
    x = draw(codes((draw(st.integers(1, 2)), cg * groups, h, wd), 0, x_max))
    w = draw(codes((kg * groups, cg, kh, kw), -128, 127))
    sx, zx, _, _ = draw(qparams("uint8"))
    zx = min(zx, x_max)  # reduce_range: codes and the zero point (= padding value) in [0, 127]
    sw, zw = draw(weight_params(kg * groups))
    geo = dict(padding=padding, stride=stride, dilation=dilation, groups=groups)
    bias = np.array(draw(st.lists(st.floats(-100, 100, width=32), min_size=len(w), max_size=len(w))), np.float32)
    bias = bias if draw(st.booleans()) else None
    sy, zy = draw(out_params(conv_acc(x, w, zx, zw, u8s8_pairs=False, **geo), sx, sw))
    return x, w, sx, zx, sw, zw, bias, sy, zy, draw(st.booleans()), geo


def check_conv(case, u8s8_pairs):
    x, w, sx, zx, sw, zw, bias, sy, zy, relu, geo = case
    packed = torch.ops.quantized.conv2d_prepack(
        q_weight(w, sw, zw), None if bias is None else torch.from_numpy(bias),
        geo["stride"], geo["padding"], geo["dilation"], geo["groups"],
    )
    op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
    got = op(q_activation(x, sx, zx), packed, sy, zy).int_repr().numpy()
    acc = conv_acc(x, w, zx, zw, u8s8_pairs=u8s8_pairs, **geo)
    note(f"geometry={geo} acc={acc.tolist()} bias={bias} sy={sy} zy={zy} relu={relu}")
    assert_bit_exact(got, fbgemm_want(acc, bias, sx, sw, sy, zy, relu), err_msg=f"conv2d {geo} pairs={u8s8_pairs}")
    exact = conv_acc(x, w, zx, zw, u8s8_pairs=False, **geo)
    return not np.array_equal(got, fbgemm_want(exact, bias, sx, sw, sy, zy, relu))


@BACKEND
@given(conv_case())
def test_quantized_conv2d(case):
    check_conv(case, FBGEMM_SATURATES)


@BACKEND
@given(conv_case(x_max=127))
def test_quantized_conv2d_exact_with_reduce_range(case):
    check_conv(case, u8s8_pairs=False)


# fbgemm takes its own depthwise kernel for 3x3 convs with padding 1 and C >= 8; on the VNNI CPUs
# measured it still sums tap pairs in saturating int16 where the dense kernels are exact. Which it
# does here is probed (sqref.backends.probe), and the oracle is asked for that accumulation.
DEPTHWISE_SATURATES = probe.accumulation("torch", "depthwise") == "int16-pairs"


@st.composite
def depthwise_case(draw):
    c = draw(st.sampled_from([8, 16]))
    geo = dict(padding=[1, 1], stride=[1, 1], dilation=[1, 1], groups=c)
    x = draw(codes((1, c, draw(st.integers(3, 5)), draw(st.integers(3, 5))), 0, 255))
    w = draw(codes((c, 1, 3, 3), -128, 127))
    sx, zx, _, _ = draw(qparams("uint8"))
    sw, zw = 2.0 ** draw(st.integers(-8, -4)), 0  # fbgemm's depthwise kernel needs symmetric weights
    sy, zy = draw(out_params(conv_acc(x, w, zx, zw, u8s8_pairs=False, **geo), sx, sw))
    return x, w, sx, zx, sw, zw, None, sy, zy, draw(st.booleans()), geo


@BACKEND
@given(depthwise_case())
def test_quantized_depthwise_conv2d_as_probed(case):
    check_conv(case, u8s8_pairs=DEPTHWISE_SATURATES)


# ------------------------------------------- the deviation, literally


@pytest.mark.skipif(not FBGEMM_SATURATES, reason="this CPU's FBGEMM kernels do not saturate int16 pairs")
def test_int16_pair_saturation_literal():
    # DEVIATION (AVX2 without VNNI): 255 * -128 twice = -65280 accumulates as -32768
    packed = torch.ops.quantized.linear_prepack(q_weight(np.full((1, 2), -128), 1.0, 0), None)
    y = torch.ops.quantized.linear(q_activation(np.full((1, 2), 255), 1.0, 0), packed, 512.0, 200)
    assert int(y.int_repr()[0, 0]) == 200 - 64  # exact: rne(-127.5) = -128 -> 72


@pytest.mark.skipif(not FBGEMM_SATURATES, reason="this CPU's FBGEMM kernels do not saturate int16 pairs")
@pytest.mark.parametrize("check, strategy", [(check_linear, linear_case), (check_conv, conv_case)])
def test_deviation_shows_in_drawn_cases(check, strategy):
    # search until PyTorch's output differs from the exact accumulator's prediction; every
    # case on the way must match the pair model (asserted inside check_*)
    found = find(strategy(), lambda case: check(case, u8s8_pairs=True),
                 settings=settings(phases=[Phase.generate], database=None, derandomize=True, max_examples=300))
    assert found is not None
