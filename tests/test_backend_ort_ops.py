"""onnxruntime and the ONNX reference evaluator against sqref.integer.requant, bit for bit.

Each test builds a one-node ONNX model in memory, runs it in onnxruntime (CPU)
and in ``onnx.reference.ReferenceEvaluator``, and requires EXACT equality with
sqref's ``onnxruntime`` and ``onnx-reference`` modes. The integer accumulators
come from a naive int64 conv/matmul written here (the source of truth).

Documented deviation (docs/backends.md): on x86 AVX2 without VNNI,
onnxruntime's u8 x s8 kernels (MatMulInteger, QLinearMatMul, QLinearConv
except depthwise) sum adjacent u8*s8 products along K in saturating int16
(VPMADDUBSW), so the accumulator itself differs from the exact one:
255 * -128 twice = -65280 becomes -32768. ``u8s8_saturates`` probes the
machine once; where it saturates, the tests assert onnxruntime ==
``requant.accumulate_u8s8_int16_pairs`` (the model of the saturation, with
K in im2col (KH, KW, C) order for convs) and, separately, onnxruntime ==
exact on ORT's own test ranges (x in [0, 63], w in [-63, 63]). Measured on
onnxruntime 1.32: ConvInteger u8 x s8, depthwise QLinearConv, u8 x u8 and
s8 x s8 are exact. No tolerance anywhere.
"""
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hypothesis import Phase, find, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from sqref import testing  # noqa: E402
from sqref.integer import oracle  # noqa: E402
from sqref.integer import requant  # noqa: E402
from sqref.testing import assert_bit_exact, qparams, quantize_cases  # noqa: E402

# Each example builds an onnxruntime session and a reference evaluator (~5-10 ms);
# 30 examples per test keep this file under ~15 s while every drawn case is exact.
BACKEND = settings(max_examples=30)

RANGES = {np.uint8: (0, 255), np.int8: (-128, 127)}
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the evaluator casts NaN to int


# ------------------------------------------------------------ ONNX plumbing


def one_node_model(op, inputs, out_dtype, *, constants=(), **attrs):
    """A model with one node; `inputs` maps names to arrays (None = omitted optional input)."""
    names = list(inputs)
    node = helper.make_node(op, [n if inputs[n] is not None else "" for n in names], ["y"], **attrs)
    graph_inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in inputs.items()
        if a is not None and n not in constants
    ]
    inits = [numpy_helper.from_array(inputs[n], n) for n in constants]
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), None)
    graph = helper.make_graph([node], op, graph_inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def run_both(model, inputs, constants=()):
    feeds = {n: a for n, a in inputs.items() if a is not None and n not in constants}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0]


# ------------------------------------------------ naive integer arithmetic


def conv_acc(x, w, zx, zw, *, pads, strides, dilations, group, u8s8_pairs=False):
    """Integer conv accumulator (N, K, OH, OW), with the ONNX attribute names: exact, or,
    with ``u8s8_pairs``, as the saturating VPMADDUBSW kernels compute it (depthwise kernels are exact)."""
    return oracle.conv_accumulator(x, w, x_zero_point=zx, w_zero_point=zw, pads=pads, strides=strides, dilations=dilations, groups=group, u8s8_pairs=u8s8_pairs, exact_depthwise=True)


def matmul_acc(a, b, za, zb, *, u8s8_pairs=False):
    if u8s8_pairs:
        return requant.accumulate_u8s8_int16_pairs(a, b, a_zero_point=za, b_zero_point=zb)
    return (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)


def _probe_u8s8_saturation():
    a = np.array([[255, 255]], np.uint8)
    b = np.array([[-128], [-128]], np.int8)
    model = one_node_model("MatMulInteger", {"a": a, "b": b}, np.int32)
    got = int(run_both(model, {"a": a, "b": b})[0][0, 0])
    assert got in (-65280, -32768), f"MatMulInteger([255, 255] . [-128, -128]) = {got}: neither exact nor saturated"
    return got == -32768


U8S8_SATURATES = _probe_u8s8_saturation()


# ---------------------------------------------------------- strategies


def codes(shape, dtype, *, limit=None):
    """testing.codes; with `limit`, uniform in [-limit, limit] (within the dtype's range)."""
    if limit is None:
        return testing.codes(shape, dtype)
    lo, hi = RANGES[dtype]
    return testing.codes(shape, dtype, max(lo, -limit), min(hi, limit), dists=("uniform",))


@st.composite
def out_scale(draw, acc, sx, sw):
    """y_scale spreading |acc| over about `spread` output steps; a power of two
    times sx * sw half the time, so exact .5 ties occur."""
    peak = max(1, int(np.abs(acc).max()))
    spread = draw(st.sampled_from([2, 20, 100, 300]))
    if draw(st.booleans()):
        return float(np.float32(sx * np.max(sw) * 2.0 ** int(np.ceil(np.log2(peak / spread)))))
    return float(np.float32(sx * np.max(sw) * peak / spread * draw(st.floats(0.5, 2.0))))


def zp_array(v, dtype):
    return np.array(v, dtype=dtype)


# -------------------------------------------------------- QuantizeLinear


@BACKEND
@given(quantize_cases(allow_nan=True))
def test_quantize_linear(case):
    x, scale, zp, qmin, qmax = case
    dtype = np.uint8 if qmin == 0 else np.int8
    inputs = {"x": x, "s": np.array(scale, np.float32), "z": zp_array(zp, dtype)}
    got_ort, got_ref = run_both(one_node_model("QuantizeLinear", inputs, dtype), inputs)
    for mode, got in (("onnxruntime", got_ort), ("onnx-reference", got_ref)):
        want = requant.quantize_linear(x, scale, zp, qmin=qmin, qmax=qmax, mode=mode).astype(dtype)
        assert_bit_exact(got, want, err_msg=f"{mode} x={x.tolist()} scale={scale} zp={zp}")


@BACKEND
@given(st.data(), st.sampled_from([np.uint8, np.int8]))
def test_quantize_linear_per_axis(data, dtype):
    c = data.draw(st.integers(1, 4))
    params = [data.draw(qparams("uint8" if dtype == np.uint8 else "int8")) for _ in range(c)]
    scales = np.array([p[0] for p in params], np.float32)
    zps = zp_array([p[1] for p in params], dtype)
    qmin, qmax = RANGES[dtype]
    steps = data.draw(st.lists(st.integers(-300, 300), min_size=2 * c * 3, max_size=2 * c * 3))
    x = (np.array(steps, np.float32).reshape(2, c, 3) / 2 * scales[:, None]).astype(np.float32)  # many exact ties
    inputs = {"x": x, "s": scales, "z": zps}
    got_ort, got_ref = run_both(one_node_model("QuantizeLinear", inputs, dtype, axis=1), inputs)
    for mode, got in (("onnxruntime", got_ort), ("onnx-reference", got_ref)):
        want = requant.quantize_linear(x, scales, zps, qmin=qmin, qmax=qmax, mode=mode, axis=1).astype(dtype)
        assert_bit_exact(got, want, err_msg=mode)


@BACKEND
@given(st.data(), st.sampled_from([np.uint8, np.int8]))
def test_dequantize_linear(data, dtype):
    scale, zp, _, _ = data.draw(qparams("uint8" if dtype == np.uint8 else "int8"))
    q = data.draw(codes((2, 5), dtype))
    inputs = {"x": q, "s": np.array(scale, np.float32), "z": zp_array(zp, dtype)}
    got_ort, got_ref = run_both(one_node_model("DequantizeLinear", inputs, np.float32), inputs)
    want = requant.dequantize_linear(q, scale, zp)
    assert_bit_exact(got_ort, want, err_msg="onnxruntime")
    assert_bit_exact(got_ref, want, err_msg="onnx-reference")


# ---------------------------------------------- integer matmul and conv

TYPES = [(np.uint8, np.int8), (np.uint8, np.uint8)]


@st.composite
def matmul_case(draw, a_type, b_type, limits=(None, None)):
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    k = draw(st.one_of(st.integers(1, 24), st.integers(500, 700)))  # 700 * 255 * 128 > 2**24
    a = draw(codes((m, k), a_type, limit=limits[0]))
    b = draw(codes((k, n), b_type, limit=limits[1]))
    za = draw(st.integers(*RANGES[a_type]))
    zb = draw(st.integers(*RANGES[b_type]))
    return a, b, za, zb


@BACKEND
@given(st.data(), st.sampled_from(TYPES + [(np.int8, np.int8)]))
def test_matmul_integer(data, types):
    a, b, za, zb = data.draw(matmul_case(*types))
    inputs = {"a": a, "b": b, "za": zp_array(za, types[0]), "zb": zp_array(zb, types[1])}
    got_ort, got_ref = run_both(one_node_model("MatMulInteger", inputs, np.int32), inputs)
    pairs = U8S8_SATURATES and types == (np.uint8, np.int8)
    assert_bit_exact(got_ort, matmul_acc(a, b, za, zb, u8s8_pairs=pairs).astype(np.int32), err_msg=f"pairs={pairs}")
    assert_bit_exact(got_ref, matmul_acc(a, b, za, zb).astype(np.int32), err_msg="onnx-reference")


@st.composite
def qlinear_matmul_case(draw, a_type, b_type, limits=(None, None)):
    a, b, za, zb = draw(matmul_case(a_type, b_type, limits))
    n = b.shape[1]
    sx = draw(qparams())[0]
    per_column = draw(st.booleans())
    sw = np.array([draw(qparams())[0] for _ in range(n)] if per_column else draw(qparams())[0], np.float32)
    sy = draw(out_scale(matmul_acc(a, b, za, zb), sx, sw))
    zy = draw(st.sampled_from([0, 255, 128, 3]))
    inputs = {"a": a, "sa": np.array(sx, np.float32), "za": zp_array(za, a_type), "b": b, "sb": sw,
              "zb": zp_array(zb, b_type), "sy": np.array(sy, np.float32), "zy": zp_array(zy, np.uint8)}
    constants = ("b", "sb", "zb") if draw(st.booleans()) else ()
    return inputs, constants, {}


def check_qlinear(op, case, u8s8_pairs):
    """Run QLinearMatMul/QLinearConv in onnxruntime and the evaluator; assert both bit-exact
    against sqref. Returns True when the exact accumulator would NOT have predicted onnxruntime."""
    inputs, constants, attrs = case
    if op == "QLinearMatMul":
        x, zx, w, zw, sx, sw, sy, zy = (inputs[k] for k in ("a", "za", "b", "zb", "sa", "sb", "sy", "zy"))
        exact = matmul_acc(x, w, int(zx), int(zw))
        acc = matmul_acc(x, w, int(zx), int(zw), u8s8_pairs=u8s8_pairs)
    else:
        x, zx, w, zw, sx, sw, sy, zy = (inputs[k] for k in ("x", "zx", "w", "zw", "sx", "sw", "sy", "zy"))
        geo = {k: v for k, v in attrs.items() if k != "kernel_shape"}
        bias = inputs["B"][:, None, None]
        exact = conv_acc(x, w, int(zx), int(zw), **geo) + bias
        acc = conv_acc(x, w, int(zx), int(zw), u8s8_pairs=u8s8_pairs, **geo) + bias
    got_ort, got_ref = run_both(one_node_model(op, inputs, np.uint8, constants=constants, **attrs), inputs, constants)
    kw = dict(zero_point=int(zy), qmin=0, qmax=255, axis=1)
    m_ort = requant.effective_multiplier(sx, sw, sy, mode="onnxruntime")
    note(f"{op} {attrs} acc={acc.tolist()} M={m_ort}")
    want_ort = requant.requantize(acc, multiplier=m_ort, mode="onnxruntime", **kw).astype(np.uint8)
    assert_bit_exact(got_ort, want_ort, err_msg=f"onnxruntime {op} pairs={u8s8_pairs}")
    m_ref = requant.effective_multiplier(sx, sw, sy, mode="onnx-reference")
    want_ref = requant.requantize(exact, multiplier=m_ref, mode="onnx-reference", **kw).astype(np.uint8)
    assert_bit_exact(got_ref, want_ref, err_msg=f"onnx-reference {op}")
    return not np.array_equal(got_ort, requant.requantize(exact, multiplier=m_ort, mode="onnxruntime", **kw))


@BACKEND
@given(st.data(), st.sampled_from(TYPES))
def test_qlinear_matmul(data, types):
    check_qlinear("QLinearMatMul", data.draw(qlinear_matmul_case(*types)), U8S8_SATURATES and types == TYPES[0])


@BACKEND
@given(qlinear_matmul_case(np.uint8, np.int8, limits=(63, 63)))
def test_qlinear_matmul_u8s8_exact_on_ort_test_ranges(case):
    # x in [0, 63], w in [-63, 63]: 2 * 63 * 63 < 2**15, no pair can saturate
    check_qlinear("QLinearMatMul", case, u8s8_pairs=False)


@st.composite
def conv_case(draw, x_type, w_type, limits=(None, None)):
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    if draw(st.integers(0, 5)) == 0:
        cg, kg = 1, 1  # depthwise
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    strides = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    pads = [draw(st.integers(0, 1)) for _ in range(4)]
    h = dil[0] * (kh - 1) + 1 + draw(st.integers(0, 3))
    w = dil[1] * (kw - 1) + 1 + draw(st.integers(0, 3))
    x = draw(codes((draw(st.integers(1, 2)), cg * group, h, w), x_type, limit=limits[0]))
    wt = draw(codes((kg * group, cg, kh, kw), w_type, limit=limits[1]))
    zx = draw(st.integers(*RANGES[x_type]))
    zw = draw(st.integers(*RANGES[w_type]))
    return x, wt, zx, zw, dict(pads=pads, strides=strides, dilations=dil, group=group)


@st.composite
def qlinear_conv_case(draw, x_type, w_type, limits=(None, None)):
    x, w, zx, zw, geo = draw(conv_case(x_type, w_type, limits))
    k_out = w.shape[0]
    sx = draw(qparams())[0]
    per_channel = draw(st.booleans())
    sw = np.array([draw(qparams())[0] for _ in range(k_out)] if per_channel else draw(qparams())[0], np.float32)
    bias = np.array(draw(st.lists(st.integers(-(2**16), 2**16), min_size=k_out, max_size=k_out)), np.int32)
    sy = draw(out_scale(conv_acc(x, w, zx, zw, **geo) + bias[:, None, None], sx, sw))
    zy = draw(st.sampled_from([0, 255, 128, 3]))
    inputs = {"x": x, "sx": np.array(sx, np.float32), "zx": zp_array(zx, x_type), "w": w, "sw": sw,
              "zw": zp_array(zw, w_type), "sy": np.array(sy, np.float32), "zy": zp_array(zy, np.uint8), "B": bias}
    constants = ("w", "sw", "zw", "B") if draw(st.booleans()) else ()
    return inputs, constants, dict(kernel_shape=list(w.shape[2:]), **geo)


@BACKEND
@given(st.data(), st.sampled_from(TYPES))
def test_qlinear_conv(data, types):
    check_qlinear("QLinearConv", data.draw(qlinear_conv_case(*types)), U8S8_SATURATES and types == TYPES[0])


@BACKEND
@given(qlinear_conv_case(np.uint8, np.int8, limits=(63, 63)))
def test_qlinear_conv_u8s8_exact_on_ort_test_ranges(case):
    check_qlinear("QLinearConv", case, u8s8_pairs=False)


@pytest.mark.skipif(not U8S8_SATURATES, reason="this CPU's u8 x s8 kernels do not saturate int16 pairs (VNNI or ARM)")
@pytest.mark.parametrize("op, strategy", [("QLinearMatMul", qlinear_matmul_case), ("QLinearConv", qlinear_conv_case)])
def test_u8s8_deviation_shows_in_drawn_cases(op, strategy):
    # Search drawn cases until onnxruntime's output differs from what the exact accumulator
    # predicts; every case on the way must still match the pair model (asserted in check_qlinear).
    found = find(strategy(np.uint8, np.int8), lambda case: check_qlinear(op, case, u8s8_pairs=True),
                 settings=settings(phases=[Phase.generate], database=None, derandomize=True, max_examples=300))
    assert found is not None


@BACKEND
@given(st.data(), st.sampled_from(TYPES))
def test_conv_integer(data, types):
    # measured: ConvInteger is exact even for u8 x s8 on AVX2 (it does not take the VPMADDUBSW path)
    x, w, zx, zw, geo = data.draw(conv_case(*types))
    inputs = {"x": x, "w": w, "zx": zp_array(zx, types[0]), "zw": zp_array(zw, types[1])}
    model = one_node_model("ConvInteger", inputs, np.int32, kernel_shape=list(w.shape[2:]), **geo)
    got_ort, got_ref = run_both(model, inputs)
    want = conv_acc(x, w, zx, zw, **geo).astype(np.int32)
    assert_bit_exact(got_ort, want, err_msg=f"onnxruntime {geo}")
    assert_bit_exact(got_ref, want, err_msg="onnx-reference")


# ------------------------------------------- the deviation, literally


@pytest.mark.skipif(not U8S8_SATURATES, reason="this CPU's u8 x s8 kernels do not saturate int16 pairs (VNNI or ARM)")
@pytest.mark.parametrize("op", ["MatMulInteger", "QLinearMatMul", "QLinearConv"])
def test_u8s8_int16_pair_saturation_is_reproduced(op):
    # DEVIATION (AVX2 without VNNI): 255 * -128 + 255 * -128 = -65280 saturates to -32768
    x = np.array([[255, 255]], np.uint8)
    w = np.array([[-128], [-128]], np.int8)
    one = np.array(1.0, np.float32)
    if op == "MatMulInteger":
        inputs = {"a": x, "b": w}
        got = run_both(one_node_model(op, inputs, np.int32), inputs)[0]
        assert got.tolist() == [[-32768]] and matmul_acc(x, w, 0, 0).tolist() == [[-65280]]
        return
    if op == "QLinearMatMul":
        inputs = {"a": x, "sa": one, "za": zp_array(0, np.uint8), "b": w, "sb": one, "zb": zp_array(0, np.int8),
                  "sy": np.array(512.0, np.float32), "zy": zp_array(200, np.uint8)}
        kw = {}
    else:  # a 1x1 kernel over two input channels: the pair runs along C
        x, w = x.reshape(1, 2, 1, 1), w.reshape(1, 2, 1, 1)
        inputs = {"x": x, "sx": one, "zx": zp_array(0, np.uint8), "w": w, "sw": one, "zw": zp_array(0, np.int8),
                  "sy": np.array(512.0, np.float32), "zy": zp_array(200, np.uint8)}
        kw = dict(kernel_shape=[1, 1])
    got_ort, got_ref = run_both(one_node_model(op, inputs, np.uint8, **kw), inputs)
    assert int(got_ort.ravel()[0]) == 200 - 64  # -32768 / 512 = -64: the saturated accumulator
    assert int(got_ref.ravel()[0]) == 200 - 128  # rne(-65280 / 512 = -127.5) = -128: the exact one


def test_depthwise_qlinear_conv_does_not_saturate():
    # one input and one output channel per group: onnxruntime's depthwise kernel widens first
    x = np.full((1, 1, 1, 2), 255, np.uint8)
    w = np.full((1, 1, 1, 2), -128, np.int8)
    one = np.array(1.0, np.float32)
    inputs = {"x": x, "sx": one, "zx": zp_array(0, np.uint8), "w": w, "sw": one, "zw": zp_array(0, np.int8),
              "sy": np.array(512.0, np.float32), "zy": zp_array(200, np.uint8)}
    got_ort, got_ref = run_both(one_node_model("QLinearConv", inputs, np.uint8, kernel_shape=[1, 2]), inputs)
    assert got_ort.ravel().tolist() == got_ref.ravel().tolist() == [200 - 128]
