"""sqref.integer.qlinear_elementwise and qlinear_pool: onnxruntime's quantized contrib ops, checked four ways.

1. Literal cases, the arithmetic in the comments (ONNX ``expect`` style), including the ties
   where the backends part.
2. Hypothesis: every fast function against its loop-nest oracle.
3. Hypothesis: every op against onnxruntime (CPU) on one-node models (com.microsoft
   domain; MaxPool, and DQ -> Clip/Relu/MaxPool -> Q groups, in the default domain),
   exact; and ADD, MUL, AVERAGE_POOL_2D against TFLite's reference kernels (BUILTIN_REF)
   through a flatbuffer built without TensorFlow. COUNTS tallies cases and exact matches
   per op and backend (printed at the end with ``-s``; docs/integer.md section 8 copies them).
4. ONNX's node tests whose inputs are 8-bit codes for these ops (Clip int8, MaxPool uint8).
Backends are probed (importorskip), never assumed.
"""
import collections
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqref.integer import qlinear_elementwise as E
from sqref.integer import qlinear_pool as P
from sqref.testing import assert_bit_exact, codes, one_node_model, qlinear_add_cases

F32 = np.float32
MS = "com.microsoft"
COUNTS = collections.defaultdict(lambda: [0, 0])  # (op, backend) -> [cases checked, matched exactly]
TIES = collections.Counter()  # op -> cases with at least one exact .5 before rounding
ORACLE = settings(max_examples=40)
BACKEND = settings(max_examples=120)
TABLE = settings(max_examples=30)  # each case checks all 256 codes


def record(op, backend, got, want, err_msg=""):
    """Count one case of ``op`` in ``backend`` (and whether it matched), then assert it bit-exact."""
    COUNTS[op, backend][0] += 1
    if got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want):
        COUNTS[op, backend][1] += 1
    assert_bit_exact(got, want, err_msg=f"{op} {backend} {err_msg}")


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if COUNTS:
        print("\nqlinear ops (op, backend: random cases checked, matched exactly):")
        for (op, backend), (n, ok) in sorted(COUNTS.items()):
            print(f"  {op:26s} {backend:18s} {n:4d} {ok:4d}")
        for op, n in sorted(TIES.items()):
            print(f"  {op}: {n} cases with an exact .5 tie before rounding")


def count_only(op, backend, got, want):
    """Count a case of a kernel set sqref does not model (no assertion): docs/integer.md reports it."""
    COUNTS[op, backend][0] += 1
    COUNTS[op, backend][1] += int(got.shape == want.shape and np.array_equal(got, want))


def has_tie(case):
    """Whether the exact real value s_a (a - z_a) (+ or *) s_b (b - z_b) / s_c + z_c is n + 1/2 somewhere
    (float64 is exact for the "tie" kind's power-of-two scales)."""
    i = case["inputs"]
    da = i["a"].astype(np.float64) - float(i["a_zero_point"])
    db = i["b"].astype(np.float64) - float(i["b_zero_point"])
    sa, sb, sc = (float(i[k]) for k in ("a_scale", "b_scale", "c_scale"))
    v = (sa * da + sb * db if case["op"] == "QLinearAdd" else sa * sb * da * db) / sc + float(i["c_zero_point"])
    return bool(np.any(np.abs(v - np.floor(v) - 0.5) == 0))


def s(v):
    return np.array(v, F32)


# ============================================================ 1. literal cases


def test_add_literal_ties():
    a, b = np.array([1, 3, 0], np.uint8), np.array([0], np.uint8)
    # r_a = 1/2, r_b = 1/2, z = 0: w = a/2 = 0.5, 1.5, 0 -> half even 0, 2, 0
    assert E.qlinear_add(a, s(1), np.uint8(0), b, s(1), np.uint8(0), s(2), np.uint8(0)).tolist() == [0, 2, 0]
    # z_c = 1 is inside the float sum: 1.5, 2.5, 1 -> 2, 2, 1 (rounding before + z_c would give 1, 3, 1)
    assert E.qlinear_add(a, s(1), np.uint8(0), b, s(1), np.uint8(0), s(2), np.uint8(1)).tolist() == [2, 2, 1]
    # TFLite: a * 2**20 * 2**-1, then * 2**-20, a tie rounded half away: 0.5 -> 1, 1.5 -> 2
    got = E.qlinear_add(a.astype(np.int8), s(1), np.int8(0), b.astype(np.int8), s(1), np.int8(0), s(2), np.int8(0),
                        mode="tflite")
    assert got.tolist() == [1, 2, 0]


def test_add_literal_fused_multiply_add():
    # Found on EfficientNet-Lite0 (block7.add): the exact value is 112.5000116, so 113 is right, but
    # float32(f + float32(r_a a)) + float32(r_b b), each step rounded, lands on 112.5 and rounds to 112.
    # onnxruntime's AVX2 kernel adds each term with one FMA (one rounding) and gets 113.
    a, b = np.array([176], np.uint8), np.array([91], np.uint8)
    args = (s(0.11811244487762451), np.uint8(134), b, s(0.25121018290519714), np.uint8(128),
            s(0.2626701295375824), np.uint8(129))
    assert E.qlinear_add(a, *args).tolist() == [113]
    assert E.oracle_qlinear_add(a, *args).tolist() == [113]


def test_add_literal_saturation_and_zero_points():
    a = np.array([[250, 5]], np.uint8)
    b = np.array([[10], [0]], np.uint8)  # broadcasts to (2, 2)
    # s = 1, z_a = z_b = 0, z_c = 0: 260 -> 255, 15, 250, 5
    assert E.qlinear_add(a, s(1), np.uint8(0), b, s(1), np.uint8(0), s(1), np.uint8(0)).tolist() == [[255, 15],
                                                                                                      [250, 5]]
    x = np.array([-128, 127], np.int8)
    # 0.5 (x + 128) + 0.5 (x - 127) - 3: x = -128 gives -130.5 -> saturates at -128; x = 127 gives 124.5 -> 124
    assert E.qlinear_add(x, s(.5), np.int8(-128), x, s(.5), np.int8(127), s(1), np.int8(-3)).tolist() == [-128, 124]


def test_mul_literal():
    a, b = np.array([1, 2, 3, 255], np.uint8), np.array([1], np.uint8)
    # p = a, R = 1/2, z_c = 1 added in float32 before rounding: 1.5 -> 2, 2, 2.5 -> 2, 128.5 -> 128
    assert E.qlinear_mul(a, s(1), np.uint8(0), b, s(1), np.uint8(0), s(2), np.uint8(1)).tolist() == [2, 2, 2, 128]
    # TFLite: MBQM(p, 0.5) rounds half away first, then + z_c: 0.5 -> 1, 1, 1.5 -> 2 (+1)
    i8 = np.array([1, 2, 3], np.int8)
    got = E.qlinear_mul(i8, s(1), np.int8(0), np.array([1], np.int8), s(1), np.int8(0), s(2), np.int8(1),
                        mode="tflite")
    assert got.tolist() == [2, 2, 3]
    # saturation: (127 - -128)^2 * 1 = 65025 -> 127
    assert E.qlinear_mul(np.array([127], np.int8), s(1), np.int8(-128), np.array([127], np.int8), s(1),
                         np.int8(-128), s(1), np.int8(0)).tolist() == [127]


def test_tables_literal():
    x = np.array([128, 0, 255], np.uint8)
    # sigmoid(0) = 0.5 exactly (p(0) = 0) -> 0.5 / (1/256) = 128; sigmoid(-12.8) ~ 2.8e-6 -> 0;
    # sigmoid(12.7) -> 256 -> saturates at 255
    assert E.qlinear_sigmoid(x, s(.1), np.uint8(128), s(1 / 256), np.uint8(0)).tolist() == [128, 0, 255]
    # leaky: v = 0.5 (x - 128); alpha 0.25 below zero: -64 * 0.25 = -16 -> code 100 - 16 = 84
    got = E.qlinear_leaky_relu(np.array([0, 128, 130], np.uint8), s(.5), np.uint8(128), s(1), np.uint8(100),
                               alpha=0.25)
    assert got.tolist() == [84, 100, 101]


def test_concat_literal():
    x0 = np.array([[1, 2]], np.int8)  # same parameters as y: copied
    x1 = np.array([[3, -4]], np.int8)  # s = 0.5, z = 1: (3 - 1) * 0.5 = 1 -> 1 / 1 + 0; -2.5 -> -2 (half even)
    y = E.qlinear_concat(s(1), np.int8(0), x0, s(1), np.int8(0), x1, s(.5), np.int8(1), axis=1)
    assert y.tolist() == [[1, 2, 1, -2]]


def test_clip_and_relu_codes():
    x = np.arange(0, 30, 3, dtype=np.uint8)
    # s = 0.1, z = 10: q(0) = 10, q(0.6) = 16, q(0.65) = 16.5 -> 16 (half even)
    assert E.clip_codes(x, s(.1), np.uint8(10), 0.0, 0.6).tolist() == [10, 10, 10, 10, 12, 15, 16, 16, 16, 16]
    assert E.clip_codes(x, s(.1), np.uint8(10), 0.0, 0.65).tolist() == E.clip_codes(x, s(.1), np.uint8(10), 0.0,
                                                                                    0.6).tolist()
    assert E.relu_codes(np.array([-5, 0, 7], np.int8), np.int8(-1)).tolist() == [-1, 0, 7]


def test_pool_literals():
    x = np.array([[[[1, 2], [3, 4]]]], np.uint8)
    # global: acc = 10 - 4 * 0 = 10, M = 1 / (1 * 4) = 0.25: 2.5 -> 2 (half even), + 0
    assert P.qlinear_global_average_pool(x, s(1), np.uint8(0), s(1), np.uint8(0)).tolist() == [[[[2]]]]
    # count_include_pad with pads (0, 0, 1, 1): window (0, 0) holds 1, 2, 3, 4 -> 2.5 + z_y 1 = 3.5 -> 4 (zero point
    # inside the float32 sum); window (1, 1) holds only 4 -> 4 / 4 = 1 + 1 = 2
    y = P.qlinear_average_pool(x, s(1), np.uint8(0), s(1), np.uint8(1), kernel_shape=[2, 2], pads=[0, 0, 1, 1],
                               count_include_pad=1)
    assert y.tolist() == [[[[4, 2], [3, 2]]]]
    # without count_include_pad: (3 + 4) / 2 = 3.5 + 1 -> 4; 4 / 1 + 1 = 5
    y = P.qlinear_average_pool(x, s(1), np.uint8(0), s(1), np.uint8(1), kernel_shape=[2, 2], pads=[0, 0, 1, 1])
    assert y.tolist() == [[[[4, 4], [4, 5]]]]
    # TFLite: (1 + 2 + 3 + 4) / 4 = 2.5 rounds half away -> 3; -2.5 -> -3
    xi = np.array([[[[1, 2], [3, 4]]], [[[-1, -2], [-3, -4]]]], np.int8)
    y = P.qlinear_average_pool(xi, s(1), np.int8(0), s(1), np.int8(0), kernel_shape=[2, 2], mode="tflite")
    assert y.ravel().tolist() == [3, -3]
    # max pool: padding never wins, even over int8 -128
    xm = np.full((1, 1, 2, 2), -128, np.int8)
    assert P.max_pool_codes(xm, kernel_shape=[2, 2], pads=[1, 1, 1, 1]).tolist() == [[[[-128] * 3] * 3]]


@pytest.mark.parametrize("call, error, message", [
    (lambda: E.qlinear_add(np.zeros(2, np.uint8), s(1), np.uint8(0), np.zeros(2, np.int8), s(1), np.int8(0), s(1),
                           np.uint8(0)), TypeError, "b must be a NumPy array of dtype uint8"),
    (lambda: E.qlinear_add(np.zeros(2, np.uint8), s(1), np.uint8(0), np.zeros(3, np.uint8), s(1), np.uint8(0), s(1),
                           np.uint8(0)), ValueError, r"do not broadcast"),
    (lambda: E.qlinear_mul(np.zeros(2, np.uint8), s([1, 2]), np.uint8(0), np.zeros(2, np.uint8), s(1), np.uint8(0),
                           s(1), np.uint8(0)), ValueError, "a_scale must be a scalar"),
    (lambda: E.qlinear_mul(np.zeros(2, np.uint8), s(-1), np.uint8(0), np.zeros(2, np.uint8), s(1), np.uint8(0),
                           s(1), np.uint8(0)), ValueError, "finite and > 0"),
    (lambda: E.qlinear_add(np.zeros(2, np.int8), s(1), np.int8(0), np.zeros(2, np.int8), s(1), np.int8(0),
                           s(2.0**-30), np.int8(0), mode="tflite"), ValueError, "QuantizeMultiplierSmallerThanOneExp"),
    (lambda: E.qlinear_sigmoid(np.zeros(2, np.uint8), s(1), np.uint8(0), s(1), np.uint8(0), mode="tflite"),
     ValueError, "mode must be one of"),
    (lambda: E.qlinear_concat(s(1), np.int8(0), np.zeros((1, 2), np.int8), s(1), np.int8(0),
                              np.zeros((2, 2), np.int8), s(1), np.int8(0), axis=1), ValueError, "except along axis"),
    (lambda: P.qlinear_global_average_pool(np.zeros((1, 1, 2), np.uint8), s(1), np.uint8(0), s(2.0**-10),
                                           np.uint8(0)), ValueError, "out of computation range"),
    (lambda: P.qlinear_average_pool(np.zeros((1, 1, 2, 2), np.uint8), s(1), np.uint8(0), s(2), np.uint8(0),
                                    kernel_shape=[2, 2], mode="tflite"), ValueError, "share scale and zero point"),
    (lambda: P.max_pool_codes(np.zeros((1, 1, 2, 2, 2), np.uint8), kernel_shape=[1, 1, 1]), ValueError,
     "3-D pools are not covered"),
    (lambda: P.max_pool_codes(np.zeros((1, 1, 2, 2), np.uint8), kernel_shape=[3, 3]), ValueError, "does not fit"),
])
def test_one_line_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ============================================================ 2. fast functions against the oracles


@ORACLE
@given(qlinear_add_cases(op="QLinearAdd", mode="onnxruntime"), st.sampled_from(["onnxruntime", "tflite"]))
def test_add_oracle(case, mode):
    inputs = case["inputs"]
    if mode == "tflite" and inputs["a"].dtype != np.int8:
        return
    try:
        want = E.qlinear_add(*inputs.values(), mode=mode)
    except ValueError:
        return
    assert_bit_exact(want, E.oracle_qlinear_add(*inputs.values(), mode=mode))


@ORACLE
@given(qlinear_add_cases(op="QLinearMul", mode="onnxruntime"), st.sampled_from(["onnxruntime", "tflite"]))
def test_mul_oracle(case, mode):
    inputs = case["inputs"]
    assert_bit_exact(E.qlinear_mul(*inputs.values(), mode=mode), E.oracle_qlinear_mul(*inputs.values(), mode=mode))


@st.composite
def unary_case(draw, shape=None):
    """x codes, (s_x, z_x, s_y, z_y) of one dtype; scales powers of two or float16-representable."""
    t = np.dtype(draw(st.sampled_from(["uint8", "int8"])))
    lo, hi = np.iinfo(t).min, np.iinfo(t).max
    shape = shape or tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    x = draw(codes(shape, t.type))
    scale = st.one_of(st.integers(-9, 0).map(lambda k: 2.0**k),
                      st.tuples(st.integers(2**10, 2**11 - 1), st.integers(-12, -1)).map(lambda m: m[0] * 2.0 ** (m[1]
                                                                                                            - 10)))
    zp = st.one_of(st.sampled_from([lo, hi, (lo + hi + 1) // 2]), st.integers(lo, hi))
    return x, s(draw(scale)), np.array(draw(zp), t), s(draw(scale)), np.array(draw(zp), t)


@ORACLE
@given(unary_case(), st.floats(0, 2, width=32))
def test_tables_oracle(case, alpha):
    assert_bit_exact(E.qlinear_sigmoid(*case), E.oracle_qlinear_table(*case, E.mlas_logistic))
    assert_bit_exact(E.qlinear_leaky_relu(*case, alpha=alpha),
                     E.oracle_qlinear_table(*case, lambda v: np.where(v >= 0, v, F32(alpha) * v)))


@st.composite
def concat_case(draw):
    x, _, _, sy, zy = draw(unary_case(shape=(2, 3)))
    axis = draw(st.sampled_from([0, 1, -1]))
    flat = []
    for _ in range(draw(st.integers(1, 3))):
        shape = [2, 3]
        shape[axis] = draw(st.integers(1, 3))
        xi, si, zi, _, _ = draw(unary_case(shape=tuple(shape)).filter(lambda c: c[0].dtype == x.dtype))
        if draw(st.booleans()):  # the copy path
            si, zi = sy, zy
        flat += [xi, si, zi]
    return sy, zy, flat, axis


@ORACLE
@given(concat_case())
def test_concat_oracle(case):
    sy, zy, flat, axis = case
    assert_bit_exact(E.qlinear_concat(sy, zy, *flat, axis=axis), E.oracle_qlinear_concat(sy, zy, *flat, axis=axis))


@st.composite
def pool_case(draw, one_d=None, dilations=False):
    x, sx, zx, sy, zy = draw(unary_case(shape=(1, 1)))  # parameters only
    one_d = draw(st.booleans()) if one_d is None else one_d
    sp = (draw(st.integers(1, 7)),) if one_d else (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + sp
    x = draw(codes(shape, x.dtype.type))
    k = [draw(st.integers(1, d + 1)) for d in sp]
    attrs = dict(kernel_shape=k, strides=[draw(st.integers(1, 3)) for _ in sp], ceil_mode=draw(st.integers(0, 1)))
    if dilations:
        attrs["dilations"] = [draw(st.integers(1, 2)) for _ in sp]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"]))
    if auto_pad == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, ki - 1)) for ki in k + k]
    else:
        attrs["auto_pad"] = auto_pad
    return x, sx, zx, sy, zy, attrs


def _geometry(x, attrs, channels_last=0):
    spatial = (x.shape[1:-1] if channels_last else x.shape[2:])
    spatial = (1,) + spatial if len(spatial) == 1 else spatial
    pad1 = lambda p: (0, p[0], 0, p[1]) if p is not None and len(p) == 2 else p  # noqa: E731
    one = lambda v: (1,) + tuple(v) if v is not None and len(v) == 1 else v  # noqa: E731
    return P.pool_geometry(spatial, one(attrs["kernel_shape"]), one(attrs.get("strides")), pad1(attrs.get("pads")),
                           one(attrs.get("dilations")), ceil_mode=attrs.get("ceil_mode", 0),
                           auto_pad=attrs.get("auto_pad", "NOTSET"))


@ORACLE
@given(pool_case(), st.integers(0, 1), st.integers(0, 1))
def test_average_pool_oracle(case, count_include_pad, channels_last):
    x, sx, zx, sy, zy, attrs = case
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    try:
        got = P.qlinear_average_pool(x, sx, zx, sy, zy, count_include_pad=count_include_pad,
                                     channels_last=channels_last, **attrs)
    except ValueError:
        return  # a kernel that does not fit, or a global pool out of onnxruntime's range
    want = P.oracle_qlinear_average_pool(x, sx, zx, sy, zy, geometry=_geometry(x, attrs, channels_last),
                                         count_include_pad=count_include_pad, channels_last=channels_last)
    assert_bit_exact(got, want)
    if not count_include_pad:
        got = P.qlinear_average_pool(x, sx, zx, sx, zx, channels_last=channels_last, mode="tflite", **attrs)
        want = P.oracle_qlinear_average_pool(x, sx, zx, sx, zx, geometry=_geometry(x, attrs, channels_last),
                                             channels_last=channels_last, mode="tflite")
        assert_bit_exact(got, want)


@ORACLE
@given(pool_case(dilations=True))
def test_max_pool_and_global_oracle(case):
    x, sx, zx, sy, zy, attrs = case
    try:
        got = P.max_pool_codes(x, **attrs)
    except ValueError:
        got = None
    if got is not None:
        assert_bit_exact(got, P.oracle_max_pool_codes(x, geometry=_geometry(x, attrs)))
    try:
        got = P.qlinear_global_average_pool(x, sx, zx, sy, zy)
    except ValueError:
        return
    assert_bit_exact(got, P.oracle_qlinear_global_average_pool(x, sx, zx, sy, zy))


# ============================================================ 3. the backends


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime")


def run_ort(ort, model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3  # ORT warns when its SAME-with-dilations shape differs from ONNX's inference
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def run_contrib(ort, op, inputs, out_dtype, **attrs):
    pytest.importorskip("onnx")
    model = one_node_model(op, inputs, {"y": out_dtype}, domain=MS, **attrs)
    return run_ort(ort, model, {k: v for k, v in inputs.items() if v is not None})


@BACKEND
@given(qlinear_add_cases(op="QLinearAdd"))
def test_add_onnxruntime(ort, case):
    TIES["QLinearAdd"] += has_tie(case)
    record("QLinearAdd", "onnxruntime", run_contrib(ort, "QLinearAdd", case["inputs"], case["expected"].dtype),
           case["expected"], case["kind"])


@BACKEND
@given(qlinear_add_cases(op="QLinearMul"))
def test_mul_onnxruntime(ort, case):
    TIES["QLinearMul"] += has_tie(case)
    record("QLinearMul", "onnxruntime", run_contrib(ort, "QLinearMul", case["inputs"], case["expected"].dtype),
           case["expected"], case["kind"])


@TABLE
@given(unary_case(shape=(256,)), st.floats(0, 2, width=32))
def test_tables_onnxruntime(ort, case, alpha):
    x, sx, zx, sy, zy = case
    x = np.arange(256, dtype=np.uint8).view(x.dtype)  # every code, so the whole table is compared
    inputs = {"x": x, "x_scale": sx, "x_zero_point": zx, "y_scale": sy, "y_zero_point": zy}
    record("QLinearSigmoid", "onnxruntime", run_contrib(ort, "QLinearSigmoid", inputs, x.dtype),
           E.qlinear_sigmoid(x, sx, zx, sy, zy))
    record("QLinearLeakyRelu", "onnxruntime", run_contrib(ort, "QLinearLeakyRelu", inputs, x.dtype, alpha=alpha),
           E.qlinear_leaky_relu(x, sx, zx, sy, zy, alpha=alpha))


def test_mlas_logistic_is_onnxruntimes_sigmoid(ort):
    """The float32 logistic under the table: bit for bit onnxruntime's float Sigmoid on 2**16 inputs."""
    pytest.importorskip("onnx")
    x = np.concatenate([np.linspace(-20, 20, 2**15, dtype=F32),
                        np.random.default_rng(0).standard_normal(2**15).astype(F32) * 6])
    got = run_ort(ort, one_node_model("Sigmoid", {"x": x}, {"y": np.float32}), {"x": x})
    assert_bit_exact(got, E.mlas_logistic(x))


@BACKEND
@given(concat_case())
def test_concat_onnxruntime(ort, case):
    sy, zy, flat, axis = case
    inputs = {"y_scale": sy, "y_zero_point": zy}
    for i in range(0, len(flat), 3):
        inputs.update({f"x{i}": flat[i], f"s{i}": flat[i + 1], f"z{i}": flat[i + 2]})
    record("QLinearConcat", "onnxruntime", run_contrib(ort, "QLinearConcat", inputs, zy.dtype, axis=axis),
           E.qlinear_concat(sy, zy, *flat, axis=axis))


def _pool_inputs(x, sx, zx, sy, zy):
    return {"x": x, "x_scale": sx, "x_zero_point": zx, "y_scale": sy, "y_zero_point": zy}


@BACKEND
@given(pool_case(), st.integers(0, 1), st.integers(0, 1))
def test_average_pools_onnxruntime(ort, case, count_include_pad, channels_last):
    x, sx, zx, sy, zy, attrs = case
    if channels_last:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    inputs = _pool_inputs(x, sx, zx, sy, zy)
    try:
        want = P.qlinear_global_average_pool(x, sx, zx, sy, zy, channels_last=channels_last)
    except ValueError:
        want = None  # outside onnxruntime's range: it throws too (test_what_onnxruntime_refuses)
    if want is not None:
        record("QLinearGlobalAveragePool", "onnxruntime",
               run_contrib(ort, "QLinearGlobalAveragePool", inputs, x.dtype, channels_last=channels_last), want)
    try:
        want = P.qlinear_average_pool(x, sx, zx, sy, zy, count_include_pad=count_include_pad,
                                      channels_last=channels_last, **attrs)
    except ValueError:
        return
    got = run_contrib(ort, "QLinearAveragePool", inputs, x.dtype, count_include_pad=count_include_pad,
                      channels_last=channels_last, **attrs)
    record("QLinearAveragePool", "onnxruntime", got, want, str(attrs))


@BACKEND
@given(pool_case(dilations=True))
def test_max_pool_onnxruntime(ort, case):
    x, attrs = case[0], case[-1]
    try:
        want = P.max_pool_codes(x, **attrs)
    except ValueError:
        return
    pytest.importorskip("onnx")
    got = run_ort(ort, one_node_model("MaxPool", {"x": x}, {"y": x.dtype}, **attrs), {"x": x})
    record("MaxPool (8-bit codes)", "onnxruntime", got, want, str(attrs))


def qdq_model(op, x, scale, zero_point, y_shape, **attrs):
    """DequantizeLinear -> op -> QuantizeLinear with one constant (scale, zero point); Clip's bounds
    are constants (attrs "min"/"max"), so onnxruntime's optimizers may fuse or drop the op."""
    import onnx
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(scale, F32), "s"), numpy_helper.from_array(np.asarray(zero_point),
                                                                                           "z")]
    op_inputs = ["f"]
    for name in ("min", "max"):
        if name in attrs:
            inits.append(numpy_helper.from_array(np.array(attrs.pop(name), F32), name))
            op_inputs.append(name)
        elif op == "Clip":
            op_inputs.append("")
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["f"]),
             helper.make_node(op, op_inputs, ["g"], **attrs),
             helper.make_node("QuantizeLinear", ["g", "s", "z"], ["y"])]
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", elem, x.shape)],
                              [helper.make_tensor_value_info("y", elem, y_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@st.composite
def clip_case(draw):
    x, sx, zx, _, _ = draw(unary_case())
    lo, hi = int(np.iinfo(x.dtype).min), int(np.iinfo(x.dtype).max)
    # bounds on code steps, on half steps (ties of q(bound)), and beyond the range
    step = st.integers(lo - int(zx) - 3, hi - int(zx) + 3).map(lambda n: n * float(sx))
    half = st.integers(lo - int(zx) - 3, hi - int(zx) + 3).map(lambda n: (n + 0.5) * float(sx))
    bounds = sorted(draw(st.one_of(step, half)) for _ in range(2))
    return x, sx, zx, bounds


@BACKEND
@given(clip_case(), st.sampled_from(["Clip", "Relu", "MaxPool"]))
def test_qdq_groups_onnxruntime(ort, case, op):
    pytest.importorskip("onnx")
    x, sx, zx, (lo, hi) = case
    if op == "Clip":
        want = E.clip_codes(x, sx, zx, lo, hi)
        model = qdq_model("Clip", x, sx, zx, want.shape, min=lo, max=hi)
    elif op == "Relu":
        want = E.relu_codes(x, zx)
        model = qdq_model("Relu", x, sx, zx, want.shape)
    else:
        x = x.reshape((1, 1, 1, -1))
        want = P.max_pool_codes(x, kernel_shape=[1, 2], pads=[0, 1, 0, 1])
        model = qdq_model("MaxPool", x, sx, zx, want.shape, kernel_shape=[1, 2], pads=[0, 1, 0, 1])
    record(f"DQ-{op}-Q", "onnxruntime", run_ort(ort, model, {"x": x}), want)


def test_what_onnxruntime_refuses(ort):
    """No quantized hard-sigmoid in onnxruntime; its global average pool throws where sqref raises."""
    pytest.importorskip("onnx")
    x = np.zeros((1, 1, 2, 2), np.uint8)
    inputs = _pool_inputs(x, s(1), np.array(0, np.uint8), s(2.0**-10), np.array(0, np.uint8))
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|not.*(registered|implemented)|Could not find"):
        run_contrib(ort, "QLinearHardSigmoid", inputs, np.uint8)
    with pytest.raises(Exception, match="out of computation range"):
        run_contrib(ort, "QLinearGlobalAveragePool", inputs, np.uint8)
    with pytest.raises(ValueError, match="out of computation range"):
        P.qlinear_global_average_pool(*inputs.values())


# ------------------------------------------------------------ TFLite (reference kernels)


@pytest.fixture(scope="module")
def tflite():
    pytest.importorskip("ai_edge_litert")
    from sqref.backends import tflite as backend

    return backend


def run_tflite(backend, build, feeds, kernels="reference"):
    """Build a one-op int8 model with ``build(builder, schema) -> (inputs, outputs)`` and run it on
    ``kernels`` (default the reference kernels, BUILTIN_REF)."""
    schema, flatbuffers = backend.load_schema()
    builder = backend.FlatbufferBuilder(schema)
    ins, outs = build(builder, schema)
    it = backend.interpreter(builder.finish(ins, outs, flatbuffers), kernels=kernels)
    for detail, value in zip(it.get_input_details(), feeds):
        it.set_tensor(detail["index"], value)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@BACKEND
@given(qlinear_add_cases(dtype="int8", op="QLinearAdd", mode="tflite") | qlinear_add_cases(dtype="int8",
                                                                                         op="QLinearMul",
                                                                                         mode="tflite"))
def test_add_mul_tflite(tflite, case):
    i = case["inputs"]
    a, b = i["a"], i["b"]
    if a.ndim == 0 or b.ndim == 0:  # TFLite tensors here have at least one dimension
        return

    def build(B, sc):
        T = sc.TensorType
        ta = B.tensor("a", a.shape, T.INT8, scale=i["a_scale"], zero_point=int(i["a_zero_point"]))
        tb = B.tensor("b", b.shape, T.INT8, scale=i["b_scale"], zero_point=int(i["b_zero_point"]))
        tc = B.tensor("c", case["expected"].shape, T.INT8, scale=i["c_scale"], zero_point=int(i["c_zero_point"]))
        if case["op"] == "QLinearAdd":
            B.op(sc.BuiltinOperator.ADD, [ta, tb], [tc], sc.BuiltinOptions.AddOptions, sc.AddOptionsT(), version=2)
        else:
            B.op(sc.BuiltinOperator.MUL, [ta, tb], [tc], sc.BuiltinOptions.MulOptions, sc.MulOptionsT(), version=2)
        return [ta, tb], [tc]

    name = "ADD" if case["op"] == "QLinearAdd" else "MUL"
    for kernels in ("builtin", "xnnpack"):  # optimized kernels: other roundings, counted, not modelled
        count_only(name, f"tflite {kernels}", run_tflite(tflite, build, [a, b], kernels), case["expected"])
    record(name, "tflite reference", run_tflite(tflite, build, [a, b]), case["expected"], case["kind"])


@st.composite
def tflite_pool_case(draw):
    """int8 NCHW codes and AVERAGE_POOL_2D's attributes: VALID or SAME (= SAME_UPPER), no ceil mode."""
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    x = draw(codes((draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), np.int8))
    attrs = dict(kernel_shape=[draw(st.integers(1, h)), draw(st.integers(1, w))],
                 strides=[draw(st.integers(1, 3)), draw(st.integers(1, 3))],
                 auto_pad=draw(st.sampled_from(["VALID", "SAME_UPPER"])))
    return x, s(draw(st.sampled_from([2.0**-4, 0.0123]))), np.array(draw(st.integers(-128, 127)), np.int8), attrs


@BACKEND
@given(tflite_pool_case())
def test_average_pool_tflite(tflite, case):
    x, sx, zx, attrs = case
    try:
        want = P.qlinear_average_pool(x, sx, zx, sx, zx, mode="tflite", **attrs)
    except ValueError:
        return
    nhwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))

    def build(B, sc):
        T = sc.TensorType
        tx = B.tensor("x", nhwc.shape, T.INT8, scale=sx, zero_point=int(zx))
        ty = B.tensor("y", np.moveaxis(want, 1, -1).shape, T.INT8, scale=sx, zero_point=int(zx))
        opt = sc.Pool2DOptionsT()
        opt.padding = sc.Padding.VALID if attrs["auto_pad"] == "VALID" else sc.Padding.SAME
        opt.strideH, opt.strideW = attrs["strides"]
        opt.filterHeight, opt.filterWidth = attrs["kernel_shape"]
        B.op(sc.BuiltinOperator.AVERAGE_POOL_2D, [tx], [ty], sc.BuiltinOptions.Pool2DOptions, opt, version=2)
        return [tx], [ty]

    got = np.moveaxis(run_tflite(tflite, build, [nhwc]), -1, 1)
    record("AVERAGE_POOL_2D", "tflite reference", got, want, str(attrs))


# ============================================================ 4. ONNX node tests on 8-bit codes

NODE_CASES = ("test_clip_default_int8_min", "test_clip_default_int8_max", "test_clip_default_int8_inbounds",
              "test_maxpool_2d_uint8")


def node_cases():
    onnx = pytest.importorskip("onnx")
    from onnx.backend.test.case import node as onnx_node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = onnx_node_cases.collect_testcases(None)
    return onnx, {c.name: c for c in cases if c.name in NODE_CASES}


def test_onnx_node_cases():
    """Clip on int8 codes is clip_codes with scale 1 and zero point 0 (q(v) = v for integer bounds);
    MaxPool on uint8 is max_pool_codes. All four of ONNX 1.23's 8-bit cases, bit for bit."""
    onnx, cases = node_cases()
    assert sorted(cases) == sorted(NODE_CASES)
    for name, case in cases.items():
        node = case.model.graph.node[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        inputs, (expected,) = case.data_sets[0]
        x = np.asarray(inputs[0])
        if node.op_type == "Clip":
            bounds = dict(zip([n for n in node.input[1:] if n], [int(np.asarray(v)) for v in inputs[1:]]))
            lo = next((v for n, v in bounds.items() if "min" in n), None)
            hi = next((v for n, v in bounds.items() if "max" in n), None)
            got = E.clip_codes(x, s(1), np.zeros((), x.dtype), lo, hi)
        else:
            got = P.max_pool_codes(x, **attrs)
        assert_bit_exact(got, np.asarray(expected), err_msg=name)


# ============================================================ 5. PyTorch (fbgemm engine), mode "fbgemm"
#
# torch.ops.quantized.add / add_relu / mul / cat and the quantized pools on NCHW tensors, against
# mode "fbgemm" (and max_pool_codes), exact. Shapes reach past 64 codes per inner run so that both
# of PyTorch's add kernels (vectorized blocks of 64, scalar tail) are drawn; power-of-two scales
# plant exact .5 ties.

FBGEMM_ORACLE = settings(max_examples=15, deadline=None)
FBGEMM = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def torch_fbgemm():
    pytest.importorskip("torch")
    from sqref.backends.torch import fbgemm_engine

    try:
        with fbgemm_engine() as torch:
            yield torch
    except ValueError as e:  # a build without the fbgemm engine
        pytest.skip(str(e))


def to_torch(torch, x, scale, zero_point):
    return torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(x)), float(scale),
                                                   int(zero_point))


def from_torch(q):
    return q.int_repr().numpy()


@st.composite
def fbgemm_scale(draw):
    """Powers of two (exact ties) or float16-representable scales."""
    return s(draw(st.one_of(st.integers(-6, 1).map(lambda k: 2.0**k),
                            st.tuples(st.integers(2**10, 2**11 - 1), st.integers(-9, -1)).map(
                                lambda m: m[0] * 2.0 ** (m[1] - 10)))))


@st.composite
def fbgemm_binary_case(draw):
    """a, b (b broadcasting to a's shape, as PyTorch's add and mul need), their parameters and c's."""
    t = np.dtype(draw(st.sampled_from(["uint8", "int8"])))
    lo, hi = int(np.iinfo(t).min), int(np.iinfo(t).max)
    kind = draw(st.sampled_from(["flat", "nchw", "per-channel", "row", "scalar"]))
    if kind == "flat":
        a_shape = (draw(st.integers(1, 200)),)
    else:
        a_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 17)))
    b_shape = {"flat": a_shape, "nchw": a_shape, "per-channel": (1,) + a_shape[1:2] + (1, 1),
               "row": a_shape[-1:], "scalar": (1,)}[kind]
    a, b = draw(codes(a_shape, t.type)), draw(codes(b_shape, t.type))
    zp = st.one_of(st.sampled_from([lo, hi, (lo + hi + 1) // 2]), st.integers(lo, hi))
    pow2 = st.integers(-4, 1).map(lambda k: s(2.0**k))
    scale = pow2 if draw(st.booleans()) else fbgemm_scale()  # all powers of two: ties planted
    params = [draw(scale), np.array(draw(zp), t)]
    params += [draw(scale), np.array(draw(zp), t), draw(scale), np.array(draw(zp), t)]
    return (a, params[0], params[1], b, params[2], params[3], params[4], params[5])


def test_fbgemm_literal():
    a, b = np.array([1] * 65, np.uint8), np.array([0], np.uint8)
    # s_a = 1, s_c = 2, z_c = 1: 0.5 exactly. PyTorch's vectorized kernel (the first 64 codes) rounds
    # before adding z_c: 0 + 1 = 1; its scalar kernel (the 65th) adds z_c first: 1.5 -> 2
    got = E.qlinear_add(a, s(1), np.uint8(0), b, s(1), np.uint8(0), s(2), np.uint8(1), mode="fbgemm")
    assert got.tolist() == [1] * 64 + [2]
    # mul rounds before z_c in both kernels: p = 1, M = 0.5 -> 0 (half even), + 1
    got = E.qlinear_mul(a[:3], s(1), np.uint8(0), b + 1, s(1), np.uint8(0), s(2), np.uint8(1), mode="fbgemm")
    assert got.tolist() == [1, 1, 1]
    # cat: v = 0.5 (3 - 1) = 1 -> 1 / 1 + 0; -2.5 + 0 -> -2 (half even, zero point inside the FMA)
    y = E.qlinear_concat(s(1), np.int8(0), np.array([[3, -4]], np.int8), s(.5), np.int8(1), axis=1, mode="fbgemm")
    assert y.tolist() == [[1, -2]]
    x = np.array([[[[1, 2], [3, 4]], [[1, 2], [3, 5]]]], np.uint8)
    # adaptive_avg_pool2d on the raw codes: 10 * 0.25 = 2.5 -> 2 (half even), 11 / 4 -> 3
    got = P.qlinear_global_average_pool(x, s(1), np.uint8(1), s(1), np.uint8(1), mode="fbgemm")
    assert got.ravel().tolist() == [2, 3]
    with pytest.raises(ValueError, match="has no model of QLinearSigmoid"):
        E.qlinear_sigmoid(x, s(1), np.uint8(0), s(1), np.uint8(0), mode="fbgemm")
    with pytest.raises(ValueError, match="channels-last"):
        P.qlinear_global_average_pool(x[:, :1], s(1), np.uint8(1), s(1), np.uint8(1), mode="fbgemm")
    with pytest.raises(ValueError, match="keep x's scale"):
        P.qlinear_average_pool(x, s(1), np.uint8(1), s(2), np.uint8(1), kernel_shape=[2, 2], mode="fbgemm")


@FBGEMM_ORACLE
@given(fbgemm_binary_case())
def test_fbgemm_add_mul_oracle(case):
    assert_bit_exact(E.qlinear_add(*case, mode="fbgemm"), E.oracle_qlinear_add(*case, mode="fbgemm"))
    try:
        got = E.qlinear_mul(*case, mode="fbgemm")
    except ValueError:
        return
    assert_bit_exact(got, E.oracle_qlinear_mul(*case, mode="fbgemm"))


@ORACLE
@given(concat_case())
def test_fbgemm_concat_oracle(case):
    sy, zy, flat, axis = case
    assert_bit_exact(E.qlinear_concat(sy, zy, *flat, axis=axis, mode="fbgemm"),
                     E.oracle_qlinear_concat(sy, zy, *flat, axis=axis, mode="fbgemm"))


@st.composite
def torch_pool_case(draw):
    """NCHW codes (C >= 2, H * W >= 2: PyTorch's NCHW kernels) with one (scale, zero point), and
    avg_pool2d / max_pool2d arguments: symmetric pads of at most half the kernel."""
    x, sx, zx, _, _ = draw(unary_case(shape=(1, 1)))
    h, w = draw(st.integers(1, 7)), draw(st.integers(2, 7))
    x = draw(codes((draw(st.integers(1, 2)), draw(st.integers(2, 3)), h, w), x.dtype.type))
    k = (draw(st.integers(1, h)), draw(st.integers(1, w)))
    pad = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    args = dict(kernel=k, stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), pad=pad,
                dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), ceil=draw(st.booleans()))
    return x, sx, zx, args


def _onnx_attrs(args, dilations=False):
    attrs = dict(kernel_shape=list(args["kernel"]), strides=list(args["stride"]), pads=list(args["pad"]) * 2,
                 ceil_mode=int(args["ceil"]))
    if dilations:
        attrs["dilations"] = list(args["dilation"])
    return attrs


@FBGEMM_ORACLE
@given(torch_pool_case(), st.booleans())
def test_fbgemm_pools_oracle(case, count_include_pad):
    x, sx, zx, args = case
    assert_bit_exact(P.qlinear_global_average_pool(x, sx, zx, sx, zx, mode="fbgemm"),
                     P.oracle_qlinear_global_average_pool(x, sx, zx, sx, zx, mode="fbgemm"))
    attrs = _onnx_attrs(args)
    got = P.qlinear_average_pool(x, sx, zx, sx, zx, count_include_pad=int(count_include_pad), mode="fbgemm", **attrs)
    want = P.oracle_qlinear_average_pool(x, sx, zx, sx, zx, geometry=_geometry(x, attrs),
                                         count_include_pad=int(count_include_pad), mode="fbgemm")
    assert_bit_exact(got, want)


@FBGEMM
@given(fbgemm_binary_case())
def test_add_mul_torch(torch_fbgemm, case):
    torch = torch_fbgemm
    a, sa, za, b, sb, zb, sc, zc = case
    qa, qb = to_torch(torch, a, sa, za), to_torch(torch, b, sb, zb)
    v = (float(sa) * (a - float(za)) + float(sb) * (b - float(zb))) / float(sc)  # exact for power-of-two scales
    TIES["quantized::add"] += bool(np.any(np.abs(v - np.floor(v) - 0.5) == 0))
    want = E.qlinear_add(*case, mode="fbgemm")
    record("quantized::add", "torch (fbgemm)", from_torch(torch.ops.quantized.add(qa, qb, float(sc), int(zc))), want,
           f"a {a.shape} b {b.shape}")
    record("quantized::add_relu", "torch (fbgemm)",
           from_torch(torch.ops.quantized.add_relu(qa, qb, float(sc), int(zc))), E.relu_codes(want, zc))
    try:
        want = E.qlinear_mul(*case, mode="fbgemm")
    except ValueError:
        return
    record("quantized::mul", "torch (fbgemm)", from_torch(torch.ops.quantized.mul(qa, qb, float(sc), int(zc))), want)


@FBGEMM
@given(concat_case())
def test_concat_torch(torch_fbgemm, case):
    torch = torch_fbgemm
    sy, zy, flat, axis = case
    qxs = [to_torch(torch, flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
    got = from_torch(torch.ops.quantized.cat(qxs, axis, float(sy), int(zy)))
    record("quantized::cat", "torch (fbgemm)", got, E.qlinear_concat(sy, zy, *flat, axis=axis, mode="fbgemm"))


@FBGEMM
@given(torch_pool_case(), st.booleans())
def test_pools_torch(torch_fbgemm, case, count_include_pad):
    torch = torch_fbgemm
    F = torch.nn.functional
    x, sx, zx, args = case
    q = to_torch(torch, x, sx, zx)
    record("adaptive_avg_pool2d(x, 1)", "torch (fbgemm)", from_torch(F.adaptive_avg_pool2d(q, 1)),
           P.qlinear_global_average_pool(x, sx, zx, sx, zx, mode="fbgemm"))
    got = F.avg_pool2d(q, args["kernel"], args["stride"], args["pad"], args["ceil"], count_include_pad)
    want = P.qlinear_average_pool(x, sx, zx, sx, zx, count_include_pad=int(count_include_pad), mode="fbgemm",
                                  **_onnx_attrs(args))
    record("avg_pool2d", "torch (fbgemm)", from_torch(got), want, str(args))
    try:
        want = P.max_pool_codes(x, **_onnx_attrs(args, dilations=True))
    except ValueError:
        return  # a window over padding only: PyTorch refuses such pads too
    got = F.max_pool2d(q, args["kernel"], args["stride"], args["pad"], args["dilation"], args["ceil"])
    record("max_pool2d (codes)", "torch (fbgemm)", from_torch(got), want, str(args))


def _separately_rounded_add(a, sa, za, b, sb, zb, sc, zc):
    """QLinearAdd with every float32 multiply and add rounded on its own (onnxruntime's SSE2 kernel)."""
    ra, rb = F32(sa) / F32(sc), F32(sb) / F32(sc)
    fixed = F32(zc) - (ra * F32(za) + rb * F32(zb))
    return np.clip(np.rint((fixed + a.astype(F32) * ra) + b.astype(F32) * rb), 0, 255).astype(np.uint8)


def test_add_matches_onnxruntime_on_whole_tensors(ort):
    # Whole tensors rather than hypothesis' small ones: 200 random parameter draws of 4,096 uint8 codes
    # each (819,200 elements), then the broadcast forms onnxruntime runs as per-span scalars. The FMA
    # form of qlinear_add must match every element; the separately rounded form is counted beside it.
    def run(a, b, p):
        inputs = {"A": a, "A_scale": p[0], "A_zero_point": p[1], "B": b, "B_scale": p[2], "B_zero_point": p[3],
                  "C_scale": p[4], "C_zero_point": p[5]}
        return run_contrib(ort, "QLinearAdd", inputs, np.uint8)

    # which kernel this onnxruntime runs, probed on the literal tie of test_add_literal_fused_multiply_add
    tie = [np.array(v, t) for v, t in ((0.11811244487762451, F32), (134, np.uint8), (0.25121018290519714, F32),
                                        (128, np.uint8), (0.2626701295375824, F32), (129, np.uint8))]
    if run(np.array([176], np.uint8), np.array([91], np.uint8), tie).tolist() != [113]:
        pytest.skip("onnxruntime runs its SSE2 QLinearAdd kernel here (no AVX2/FMA), which sqref does not model")
    rng = np.random.default_rng(1)
    counts = collections.Counter()

    def check(a, b):
        p = [np.array(rng.uniform(0.01, 0.5), F32), np.array(rng.integers(0, 256), np.uint8),
             np.array(rng.uniform(0.01, 0.5), F32), np.array(rng.integers(0, 256), np.uint8),
             np.array(rng.uniform(0.05, 0.6), F32), np.array(rng.integers(0, 256), np.uint8)]
        want = run(a, b, p)
        np.testing.assert_array_equal(E.qlinear_add(a, p[0], p[1], b, *p[2:]), want)
        counts["elements"] += want.size
        if a.shape == b.shape:
            sep = _separately_rounded_add(a, *p[:2], b, *p[2:])
            counts["separately rounded, differing"] += int(np.sum(sep != want))

    for _ in range(200):
        check(rng.integers(0, 256, 4096).astype(np.uint8), rng.integers(0, 256, 4096).astype(np.uint8))
    assert counts["elements"] == 819_200
    for a_shape, b_shape in [((8, 16, 9, 9), (1, 16, 1, 1)), ((1,), (5000,)), ((5000,), (1,)), ((64, 64), (64, 1)),
                             ((64, 1), (64, 64)), ((4, 3, 10), (4, 1, 10))]:
        for _ in range(10):
            check(rng.integers(0, 256, a_shape).astype(np.uint8), rng.integers(0, 256, b_shape).astype(np.uint8))
    print(f"\n  QLinearAdd on whole tensors: {counts['elements']:,} elements, all exact; the separately rounded "
          f"form differs at {counts['separately rounded, differing']} of the first 819,200")
    assert counts["separately rounded, differing"] > 0  # the FMA form is the one that matters on this data
