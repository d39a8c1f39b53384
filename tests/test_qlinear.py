"""sqref.integer.qlinear: ONNX's quantized ops, checked four ways.

1. ONNX's own node test cases (shipped in the onnx wheel as code) for QuantizeLinear,
   DequantizeLinear, DynamicQuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger and
   MatMulInteger, through the public functions, bit for bit, in both ONNX modes. What
   runs and why the rest is skipped is pinned in NODE_TABLE:

       op                     cases  run  skipped: why
       QuantizeLinear         13     6    float8/float4 outputs (3), 4-/2-bit integers (4)
       DequantizeLinear       14     5    float8/float4 inputs (5), 4-/2-bit integers (4)
       DynamicQuantizeLinear  6      3    the expanded function bodies (3): float ops
       QLinearConv            1      1
       QLinearMatMul          8      8    (float32 and float16 scales, 2-D and 3-D)
       ConvInteger            2      2
       MatMulInteger          1      1

   No node case has a requantization tie, so every one passes in both modes.
2. Literal cases, the arithmetic in the comments, including each place where
   onnxruntime departs from the ONNX spec or its reference evaluator (DEVIATIONS).
3. Hypothesis: every fast function against its loop-nest oracle (qlinear's oracles).
4. Hypothesis: every op against onnxruntime (CPU) and onnx.reference.ReferenceEvaluator
   on one-node models (sqref.testing.one_node_model), exact: the evaluator must equal
   mode "onnx-reference", onnxruntime mode "onnxruntime" with the accumulation this
   CPU's kernels use (probed: sqref.backends.probe for u8 x s8, an extreme-operand probe
   here for the other sign combinations), never assumed. Cases onnxruntime cannot run
   (no kernel for int8 x uint8, y's dtype unlike x's, per-row a, per-channel ConvInteger
   zero points) go to the evaluator only. COUNTS tallies the cases per op and backend and
   how many matched; DIFFS how often onnxruntime and the evaluator differed, and why
   (printed at the end of the module with ``-s``).
"""
import collections
import functools
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from sqref import quant, testing
from sqref.integer import qlinear as Q
from sqref.integer import requant
from sqref.testing import assert_bit_exact, one_node_model, qlinear_conv_cases, qlinear_matmul_cases

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - exercised only without onnx
    onnx = None

needs_onnx = pytest.mark.skipif(onnx is None, reason="onnx is not installed")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the evaluator casts NaN and inf to int

U8, S8, U16, S16, I32 = (np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32))
F32, F16 = np.dtype(np.float32), np.dtype(np.float16)
ONNX_MODES = ("onnxruntime", "onnx-reference")
# an example builds an onnxruntime session and an evaluator (~10 ms); the whole file takes about 25 s
QLINEAR = settings(max_examples=400)  # QLinearConv / QLinearMatMul against both backends
BACKEND = settings(max_examples=150)
ORACLE = settings(max_examples=60)

COUNTS = collections.defaultdict(lambda: [0, 0])  # (op, backend) -> [cases checked, matched exactly]
DIFFS = collections.Counter()  # (op, why onnxruntime and the evaluator differ) -> cases
SPLITS = collections.Counter()  # op -> onnxruntime-run cases whose two ONNX modes give different outputs
LARGE = collections.Counter()  # op -> onnxruntime-run cases with an accumulator past 2**24


def record(op, backend, got, want, err_msg=""):
    """Count one case of ``op`` in ``backend`` (and whether it matched), then assert it bit-exact."""
    COUNTS[op, backend][0] += 1
    try:
        assert_bit_exact(got, want)
        COUNTS[op, backend][1] += 1
    except AssertionError:
        pass
    assert_bit_exact(got, want, err_msg=f"{op} {backend} {err_msg}")


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if COUNTS:
        print("\nqlinear hypothesis cases (op, backend: checked, matched exactly):")
        for (op, backend), (n, ok) in sorted(COUNTS.items()):
            print(f"  {op:22s} {backend:16s} {n:4d} {ok:4d}")
        for op, n in sorted(SPLITS.items()):
            print(f"  {op}: {n} onnxruntime cases where modes onnxruntime and onnx-reference differ, "
                  f"{LARGE[op]} with an accumulator past 2**24")
        for (op, why), n in sorted(DIFFS.items()):
            print(f"  onnxruntime != evaluator: {op:22s} {why}: {n}")


# ============================================================ 1. ONNX's node test cases

OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
       "MatMulInteger")
FLOAT_CODES = "float8/float4 types: sqref's codes are integers"
SUB_BYTE = "4-bit and 2-bit integer types: sqref's codes are 8 or 16 bits"
EXPANDED = "the expanded function body: ReduceMin, Div, Round, ... are float ops, not this module's"
NODE_TABLE = {  # row: (cases, run, {reason skipped: cases})
    "QuantizeLinear": (13, 6, {FLOAT_CODES: 3, SUB_BYTE: 4}),
    "DequantizeLinear": (14, 5, {FLOAT_CODES: 5, SUB_BYTE: 4}),
    "DynamicQuantizeLinear": (6, 3, {EXPANDED: 3}),
    "QLinearConv": (1, 1, {}),
    "QLinearMatMul": (8, 8, {}),
    "ConvInteger": (2, 2, {}),
    "MatMulInteger": (1, 1, {}),
}


def collect():
    if onnx is None:
        return []
    # all ops' cases at once, filtered afterwards: collect_testcases(op) fills its list on the first call only
    from onnx.backend.test.case import node as onnx_node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = onnx_node_cases.collect_testcases(None)
    return [c for c in cases if c.kind == "node" and any(n.op_type in OPS for n in c.model.graph.node)]


CASES = collect()


class Unsupported(Exception):
    pass


def key(case):
    ops = [n.op_type for n in case.model.graph.node]
    return ops[0] if len(ops) == 1 else next(op for op in reversed(ops) if op in OPS) if "Constant" not in ops else \
        "DynamicQuantizeLinear"


def as_array(v):
    return numpy_helper.to_array(v) if isinstance(v, TensorProto) else (None if v is None else np.asarray(v))


def check_types(arrays, attrs):
    names = [a.dtype.name for a in arrays if a is not None]
    if "output_dtype" in attrs:
        names.append(np.dtype(helper.tensor_dtype_to_np_dtype(attrs["output_dtype"])).name)
    if any(n.startswith(("float8", "float4", "float6")) for n in names):
        raise Unsupported(FLOAT_CODES)
    if any(n in ("uint4", "int4", "uint2", "int2") for n in names):
        raise Unsupported(SUB_BYTE)


def run_case(case, mode):
    """(outputs, expected outputs) of a node case through qlinear's functions."""
    if len(case.model.graph.node) > 1:
        raise Unsupported(EXPANDED)
    node = case.model.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs, expected = case.data_sets[0]
    values = {i.name: as_array(v) for i, v in zip(case.model.graph.input, inputs)}
    expected = [as_array(v) for v in expected]
    args = [values.get(name) if name else None for name in node.input]
    check_types(args + expected, attrs)
    op = node.op_type
    if op == "QuantizeLinear":
        kw = {k: attrs[k] for k in ("axis", "block_size", "saturate") if k in attrs}
        if "output_dtype" in attrs:
            kw["output_dtype"] = helper.tensor_dtype_to_np_dtype(attrs["output_dtype"])
        got = [Q.quantize_linear(*args, mode=mode, **kw)]
    elif op == "DequantizeLinear":
        got = [Q.dequantize_linear(*args, **{k: attrs[k] for k in ("axis", "block_size") if k in attrs})]
    elif op == "DynamicQuantizeLinear":
        got = list(Q.dynamic_quantize_linear(*args, mode=mode))
    elif op == "QLinearConv":
        got = [Q.qlinear_conv(*args, mode=mode, **attrs)]
    elif op == "QLinearMatMul":
        got = [Q.qlinear_matmul(*args, mode=mode)]
    elif op == "ConvInteger":
        got = [Q.conv_integer(*args, **attrs)]
    else:
        got = [Q.matmul_integer(*args)]
    return got, expected


@needs_onnx
@pytest.mark.parametrize("mode", ONNX_MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_node_case(case, mode):
    try:
        got, want = run_case(case, mode)
    except Unsupported as exc:
        pytest.skip(f"{key(case)}: {exc}")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_bit_exact(g, w, err_msg=f"{case.name} mode={mode}")


@needs_onnx
def test_the_node_table():
    # which cases run, and why the others do not, is part of the claim
    counts = {}
    for case in CASES:
        total, ran, skipped = counts.get(key(case), (0, 0, {}))
        try:
            run_case(case, "onnx-reference")
            ran += 1
        except Unsupported as exc:
            skipped = {**skipped, str(exc): skipped.get(str(exc), 0) + 1}
        counts[key(case)] = (total + 1, ran, skipped)
    assert counts == NODE_TABLE


# ============================================================ 2. literal cases


def test_dynamic_quantize_divides_in_float32():
    # hi = 5, lo = 0: y_scale = float32(5) / float32(255) = 0.019607844; zero point 0
    # 0.5 / y_scale in float32 is exactly 25.5 -> 26 (half to even); float64 gives 25.4999991 -> 25
    x = np.float32([0.0, 5.0, 0.5])
    y, s, z = Q.dynamic_quantize_linear(x)
    assert s == np.float32(5) / np.float32(255) and s.dtype == F32 and z == 0 and z.dtype == U8
    assert y.tolist() == [0, 255, 26] and y.dtype == U8
    assert float(np.float32(0.5) / s) == 25.5 and 0.5 / float(s) < 25.5
    assert quant.quantize(x, bits=8, scheme="asymmetric")[0].tolist() == [0, 255, 25]  # sqref.quant: float64


@pytest.mark.parametrize("mode, scale", [("onnxruntime", 1.0), ("onnx-reference", np.float32(1) / np.float32(255))])
def test_dynamic_quantize_all_zero(mode, scale):
    # ONNX's function body divides 0 by 0 here; ORT returns scale 1, the evaluator float32(1) / 255
    y, s, z = Q.dynamic_quantize_linear(np.zeros(4, np.float32), mode=mode)
    assert y.tolist() == [0, 0, 0, 0] and z == 0 and s == np.float32(scale)


def test_dynamic_quantize_zero_point():
    # lo = -1, hi = 3: scale = 4 / 255 = 0.015686275; zero point rne(0 - (-1) / scale) = rne(63.75) = 64
    # -1 / scale = -63.75 -> -64, + 64 = 0; 3 / scale = 191.25 -> 191, + 64 = 255; 1 -> 63.75 -> 64 + 64 = 128
    y, s, z = Q.dynamic_quantize_linear(np.float32([-1, 3, 1, 0]))
    assert int(z) == 64 and y.tolist() == [0, 255, 128, 64]


@pytest.mark.parametrize("mode, want", [("onnxruntime", 3), ("onnx-reference", 4)])
def test_qlinear_matmul_tie_with_odd_zero_point(mode, want):
    # acc = 5, M = 1 * 0.5 / 1 = 0.5: 2.5. onnxruntime: rne(2.5) = 2, + 1 = 3; evaluator: rne(2.5 + 1) = 4
    y = Q.qlinear_matmul(np.uint8([[5]]), 1.0, np.uint8(0), np.uint8([[1]]), 0.5, np.uint8(0), 1.0, np.uint8(1),
                         mode=mode)
    assert y.tolist() == [[want]] and y.dtype == U8


@pytest.mark.parametrize("accumulate, want", [("exact", 72), ("int16-pairs", 136)])
def test_u8s8_int16_pairs(accumulate, want):
    # 255 * -128 twice = -65280, / 512 = -127.5 -> -128 (half even), + 200 = 72;
    # saturated in int16: -32768 / 512 = -64, + 200 = 136
    args = (np.uint8([[255, 255]]), 1.0, np.uint8(0), np.int8([[-128], [-128]]), 1.0, np.int8(0), 512.0,
            np.uint8(200))
    assert Q.qlinear_matmul(*args, accumulate=accumulate).tolist() == [[want]]
    conv = (args[0].reshape(1, 2, 1, 1),) + args[1:3] + (args[3].reshape(1, 2, 1, 1),) + args[4:]
    assert Q.qlinear_conv(*conv, accumulate=accumulate).ravel().tolist() == [want]
    # a depthwise conv (one input and output channel per group) is exact in ORT's kernel: 72 either way
    dw = (args[0].reshape(1, 1, 1, 2),) + args[1:3] + (args[3].reshape(1, 1, 1, 2),) + args[4:]
    assert Q.qlinear_conv(*dw, accumulate=accumulate).ravel().tolist() == [72]
    assert Q.qlinear_conv(*dw, accumulate=accumulate, mode="fbgemm").ravel().tolist() == [want]  # FBGEMM's saturates


def test_qlinear_conv_int8_activations_uint8_weights():
    # x int8 (1x1 pixel, 2 channels) [-128, 127], z_x = -1: x - z_x = [-127, 128]
    # w uint8 [200, 3], z_w = 128: w - z_w = [72, -125]
    # acc = -127 * 72 + 128 * -125 = -9144 - 16000 = -25144; + bias 25 = -25119
    # M = 0.5 * 0.25 / 64 = 2**-9: -25119 / 512 = -49.06 -> -49; + z_y 10 = -39 (int8, both modes)
    args = (np.int8([-128, 127]).reshape(1, 2, 1, 1), 0.5, np.int8(-1), np.uint8([200, 3]).reshape(1, 2, 1, 1),
            0.25, np.uint8(128), 64.0, np.int8(10), np.int32([25]))
    for mode in ONNX_MODES:
        y = Q.qlinear_conv(*args, mode=mode)
        assert y.tolist() == [[[[-39]]]] and y.dtype == S8
    assert Q.conv_integer(args[0], args[3], args[2], args[5]).tolist() == [[[[-25144]]]]


def test_qlinear_conv_padding_holds_the_zero_point():
    # 1x1 input 7 (z_x = 7, i.e. real 0), 3x3 kernel of ones, pads 1: every tap reads x - z_x = 0
    # except the centre; with w zero point 1 (w - z_w = 0 at ones) and 2 at the centre: acc = 0 + ... = 0
    x = np.uint8([[[[9]]]])
    w = np.ones((1, 1, 3, 3), np.uint8)
    w[0, 0, 1, 1] = 4
    # centre: (9 - 7) * (4 - 1) = 6; the padded taps hold 7: (7 - 7) * (1 - 1) = 0
    assert Q.conv_integer(x, w, np.uint8(7), np.uint8(1), pads=[1, 1, 1, 1]).tolist() == [[[[6]]]]


def test_matmul_integer_per_row_and_per_column_zero_points():
    # a - z_a (rows 1, 2) = [[0, 1], [1, 2]]; b - z_b (columns 5, 6) = [[0, 0], [2, 2]]
    # product [[0*0 + 1*2, 0*0 + 1*2], [1*0 + 2*2, 1*0 + 2*2]] = [[2, 2], [4, 4]]
    a, b = np.uint8([[1, 2], [3, 4]]), np.int8([[5, 6], [7, 8]])
    for za in (np.uint8([1, 2]), np.uint8([[1], [2]])):  # ONNX's text (M,) and N-D [M, 1]
        y = Q.matmul_integer(a, b, za, np.int8([5, 6]))
        assert y.tolist() == [[2, 2], [4, 4]] and y.dtype == I32


def test_quantize_linear_int16_saturation_and_nan():
    # s = 1, z = -7 (int16): -2.5 -> -2 (half even) - 7 = -9; 1e6 -> 1000000 - 7, saturated to 32767
    x = np.float32([-2.5, 1e6, -np.inf, np.inf, np.nan])
    got = Q.quantize_linear(x, np.float32(1), np.int16(-7))
    assert got.tolist() == [-9, 32767, -32768, 32767, -32768] and got.dtype == S16  # onnxruntime: NaN -> qmin
    # the evaluator: rint(+-inf, NaN) cast to int32 is INT32_MIN; INT32_MIN + -7 wraps to 2**31 - 8 -> 32767
    assert Q.quantize_linear(x, np.float32(1), np.int16(-7), mode="onnx-reference").tolist() == [
        -9, 32767, 32767, 32767, 32767]


def test_quantize_linear_float16_division():
    # x = float16(0.45) = 0.449951171875, s = float16(0.3) = 0.300048828125
    # float16(x / s) = 1.5 exactly -> 2 (ONNX: the division has y_scale's precision; the evaluator);
    # float32(x / s) = 1.49959 -> 1 (onnxruntime widens float16 inputs to float32)
    x, s = np.float16([0.45]), np.float16(0.3)
    assert Q.quantize_linear(x, s, np.uint8(0), mode="onnx-reference").tolist() == [2]
    assert Q.quantize_linear(x, s, np.uint8(0)).tolist() == [1]


def test_qlinear_matmul_float16_scales():
    # M in float16 (evaluator): float16(float16(0.43408203125 * 0.421142578125) / 0.0946044921875) = 1.9326171875
    # M in float32 (onnxruntime): 1.93236518; acc = 37: 71.5068 -> 72 versus 71.4975 -> 71
    scales = [np.float16(v) for v in (0.43408203125, 0.421142578125, 0.0946044921875)]
    args = (np.uint8([[37]]), scales[0], np.uint8(0), np.uint8([[1]]), scales[1], np.uint8(0), scales[2], np.uint8(0))
    assert Q.qlinear_matmul(*args, mode="onnx-reference").tolist() == [[72]]
    assert Q.qlinear_matmul(*args, mode="onnxruntime").tolist() == [[71]]


def test_dequantize_linear():
    # (q - z) * s in float32: (0 - 3) * 0.1 = -0.3 (float32(-0.3000000044703484)); float16 output rounds again
    q = np.uint8([0, 1, 255])
    y = Q.dequantize_linear(q, np.float32(0.1), np.uint8(3))
    assert y.dtype == F32 and y.tolist() == [np.float32(-3) * np.float32(0.1), np.float32(-2) * np.float32(0.1),
                                             np.float32(252) * np.float32(0.1)]
    y16 = Q.dequantize_linear(q, np.float16(0.1), np.uint8(3))
    assert y16.dtype == F16 and y16.tolist() == (np.float32([-3, -2, 252]) * np.float32(np.float16(0.1))).astype(
        np.float16).tolist()
    assert Q.dequantize_linear(np.int32([2**24 + 1]), np.float32(1)).tolist() == [2.0**24]  # int32 -> float32 rounds


@pytest.mark.parametrize("call, error, message", [
    (lambda: Q.quantize_linear(np.float64([1.0]), 1.0), TypeError, "x must be float32 or float16"),
    (lambda: Q.quantize_linear(np.float32([1.0]), 0.0), ValueError, "y_scale must be finite and > 0"),
    (lambda: Q.quantize_linear(np.float32([1.0]), np.float32(np.nan)), ValueError, "finite"),
    (lambda: Q.quantize_linear(np.float32([1.0]), 1.0, 300), ValueError, "y_zero_point must be in [0, 255]"),
    (lambda: Q.quantize_linear(np.float32([1.0]), 1.0, np.int32(0)), TypeError, "y's dtype"),
    (lambda: Q.quantize_linear(np.zeros((2, 3), np.float32), np.float32([1, 2]), axis=1), ValueError, "per axis"),
    (lambda: Q.dequantize_linear(np.int32([1]), 1.0, np.int32(2)), ValueError, "int32 x has no zero point"),
    (lambda: Q.dequantize_linear(np.float32([1]), 1.0), TypeError, "x must be a NumPy array"),
    (lambda: Q.dynamic_quantize_linear(np.float32([np.inf])), ValueError, "finite"),
    (lambda: Q.dynamic_quantize_linear(np.float16([1])), TypeError, "float32"),
    (lambda: Q.matmul_integer(np.uint8([[1, 2]]), np.uint8([[1, 2]])), ValueError, "inner dimensions"),
    (lambda: Q.matmul_integer(np.uint8([[1]]), np.int8([[1]]), np.int8(0)), TypeError, "a_zero_point must have"),
    (lambda: Q.matmul_integer(np.uint8([[1]]), np.uint8([[1]]), accumulate="int16-pairs"), ValueError, "u8 x s8"),
    (lambda: Q.conv_integer(np.uint8(np.zeros((1, 2, 3, 3))), np.uint8(np.zeros((1, 1, 2, 2)))), ValueError,
     "does not fit"),
    (lambda: Q.conv_integer(np.uint8(np.zeros((1, 1, 1, 1))), np.uint8(np.zeros((1, 1, 2, 2)))), ValueError,
     "does not fit x"),
    (lambda: Q.qlinear_conv(np.uint8(np.zeros((1, 1, 2, 2))), 1.0, 0, np.int8(np.zeros((2, 1, 1, 1))), [1.0, 2.0, 3.0],
                            0, 1.0, np.uint8(0)), ValueError, "w_scale must be a scalar or one per output channel"),
    (lambda: Q.qlinear_conv(np.uint8(np.zeros((1, 1, 2, 2))), 1.0, 0, np.int8(np.zeros((1, 1, 1, 1))), 1.0, 0, 1.0,
                            0), TypeError, "y_zero_point must be a uint8 or int8"),
    (lambda: Q.qlinear_conv(np.uint8(np.zeros((1, 1, 2, 2))), 1.0, 0, np.int8(np.zeros((1, 1, 1, 1))), 1.0, 0, 1.0,
                            np.uint8(0), np.int64([1])), TypeError, "bias must be a NumPy array of dtype int32"),
    (lambda: Q.qlinear_conv(np.uint8(np.zeros((1, 1, 2, 2))), 1.0, 0, np.int8(np.zeros((1, 1, 1, 1))), -1.0, 0, 1.0,
                            np.uint8(0)), ValueError, "w_scale must be finite and > 0"),
    (lambda: Q.qlinear_conv(np.uint8(np.zeros((1, 1, 2, 2))), 1.0, 0, np.int8(np.zeros((1, 1, 1, 1))), 1.0, 0, 1.0,
                            np.uint8(0), mode="onnx-reference", accumulate="int16-pairs"), ValueError,
     "does not apply"),
    (lambda: Q.qlinear_matmul(np.uint8([[1]]), np.float16(1), 0, np.uint8([[1]]), 1.0, 0, 1.0, np.uint8(0)),
     TypeError, "one dtype"),
    (lambda: Q.qlinear_matmul(np.uint8([[1]]), 1.0, 0, np.uint8([[1]]), 1.0, 0, [1.0, 2.0], np.uint8(0)),
     ValueError, "y_scale must be a scalar"),
])
def test_one_line_errors(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)


# ============================================================ 3. fast functions against the loop oracles


@st.composite
def quantize_op_case(draw, small=True):
    """(x, scale, zero point or None, kwargs, y dtype): per tensor, per axis or blocked; u8/s8/u16/s16;
    float32 or float16 (x and scale alike); many values exactly at .5 ties, some inf/NaN."""
    dtype = draw(st.sampled_from([U8, S8, U16, S16]))
    ft = draw(st.sampled_from([F32, F32, F16]))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    gran = draw(st.sampled_from(["tensor", "axis", "block"]))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    ax = axis % len(shape)
    block = draw(st.integers(1, 3)) if gran == "block" else 0
    if gran == "tensor":
        pshape = ()
    elif gran == "axis":
        pshape = (shape[ax],)
    else:
        pshape = shape[:ax] + (-(-shape[ax] // block),) + shape[ax + 1:]
        if int(np.prod(pshape)) == 1:  # one block is per tensor (onnxruntime then needs block_size 0)
            pshape, block = (), 0
    qmin, qmax = Q.QUANT_RANGES[dtype]
    n = int(np.prod(pshape))
    scales = np.array([draw(st.one_of(st.integers(-6, 2).map(lambda k: 2.0**k), st.floats(0.01, 4.0)))
                       for _ in range(n)], ft).reshape(pshape)
    zp = np.array([draw(testing.strategies.zero_points(st, qmin, qmax)) for _ in range(n)], dtype).reshape(pshape)
    full = Q.along_axis("s", scales, shape, axis, block)
    steps = np.array(draw(st.lists(st.integers(-300, 300), min_size=int(np.prod(shape)),
                                   max_size=int(np.prod(shape))))).reshape(shape)
    halves = draw(st.booleans())
    with np.errstate(over="ignore"):
        x = ((steps + (0.5 if halves else draw(st.floats(-0.49, 0.49)))) * full).astype(ft)
    if draw(st.booleans()):
        x.ravel()[0] = draw(st.sampled_from([np.inf, -np.inf, np.nan, 1e9 if ft == F32 else 6e4]))
    given_zp = draw(st.booleans()) or block > 0
    kw = dict(axis=axis, block_size=block)
    if not given_zp:
        kw["output_dtype"] = dtype
    return x, scales, zp if given_zp else None, kw, dtype


@ORACLE
@given(quantize_op_case(), st.sampled_from(ONNX_MODES))
def test_quantize_linear_oracle(case, mode):
    x, s, z, kw, dtype = case
    got = Q.quantize_linear(x, s, z, mode=mode, **kw)
    zz = z if z is not None else np.zeros(s.shape, dtype)
    want = Q.oracle_quantize_linear(x, s, zz, dtype=dtype, axis=kw["axis"], block_size=kw["block_size"], mode=mode)
    assert_bit_exact(got, want, err_msg=f"{mode} {kw}")


def dequantize_input(case):
    """(codes, scale, zero point, attributes) for DequantizeLinear from a quantize_op_case: the case's
    float input quantized (NaN as 0), the zero point 0 where the case has none."""
    x, s, z, kw, dtype = case
    zz = z if z is not None else np.zeros(s.shape, dtype)
    return Q.quantize_linear(np.nan_to_num(x), s, zz, axis=kw["axis"], block_size=kw["block_size"]), s, zz, kw


@ORACLE
@given(quantize_op_case(), st.sampled_from([None, F32, F16]))
def test_dequantize_linear_oracle(case, out):
    q, s, zz, kw = dequantize_input(case)
    got = Q.dequantize_linear(q, s, zz, axis=kw["axis"], block_size=kw["block_size"], output_dtype=out)
    want = Q.oracle_dequantize_linear(q, s, zz, axis=kw["axis"], block_size=kw["block_size"], output_dtype=out)
    assert_bit_exact(got, want)


@st.composite
def dynamic_case(draw):
    """float32 inputs whose range is drawn first (often small integers, so x / scale lands on .5)."""
    n = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["grid", "random", "zero"]))
    if kind == "zero":
        return np.zeros(n, np.float32)
    if kind == "grid":  # multiples of a half-step of the 255-level grid of [lo, hi]
        lo, hi = -draw(st.integers(0, 10)), draw(st.integers(0, 10))
        step = np.float32(hi - lo) / np.float32(510) if hi != lo else np.float32(1)
        vals = [lo, hi] + [draw(st.integers(0, 510)) * float(step) + lo for _ in range(n)]
        return np.array(vals, np.float32)
    return np.array(draw(st.lists(st.floats(-1e4, 1e4, width=32), min_size=n, max_size=n)), np.float32)


@ORACLE
@given(dynamic_case(), st.sampled_from(ONNX_MODES))
def test_dynamic_quantize_linear_oracle(x, mode):
    y, s, z = Q.dynamic_quantize_linear(x, mode=mode)
    wy, ws, wz = Q.oracle_dynamic_quantize_linear(x, mode=mode)
    assert_bit_exact(y, wy)
    assert_bit_exact(s, np.array(ws)) and assert_bit_exact(z, np.array(wz))


ALL_PAIRS = [(U8, S8), (U8, U8), (S8, S8), (S8, U8)]


@ORACLE
@given(st.data(), st.sampled_from(ALL_PAIRS), st.sampled_from(requant.MODES))
def test_qlinear_conv_oracle(data, pair, mode):
    y_dtype = data.draw(st.sampled_from(["uint8", "int8"]))
    case = data.draw(qlinear_conv_cases(pair[0].name, pair[1].name, y_dtype=y_dtype, max_k=24))
    i, attrs = case["inputs"], case["attrs"]
    geo = dict(strides=attrs["strides"], pads=attrs["pads"], dilations=attrs["dilations"], group=attrs["group"])
    pads4 = (attrs["pads"][0], attrs["pads"][1], attrs["pads"][2], attrs["pads"][3])
    accs = ["exact"] + (["int16-pairs"] if pair == (U8, S8) and mode in ("onnxruntime", "fbgemm") else [])
    for accumulate in accs:
        got = Q.qlinear_conv(*i.values(), **geo, mode=mode, accumulate=accumulate)
        w = i["w"]
        depthwise = w.shape[1] == 1 and w.shape[0] == attrs["group"]
        pairs = accumulate == "int16-pairs" and not (depthwise and mode == "onnxruntime")
        acc = Q.oracle_conv_acc(i["x"], w, i["x_zero_point"], i["w_zero_point"], strides=attrs["strides"], pads=pads4,
                                dilations=attrs["dilations"], group=attrs["group"], pairs=pairs)
        if i["B"] is not None:
            acc = (acc + i["B"].astype(np.int64)[None, :, None, None] + 2**31) % 2**32 - 2**31
        m = Q.oracle_multiplier(i["x_scale"], np.reshape(i["w_scale"], (-1, 1, 1)) if np.ndim(i["w_scale"]) else
                                i["w_scale"], i["y_scale"], mode=mode)
        want = Q.oracle_requantize(acc, m, i["y_zero_point"], dtype=i["y_zero_point"].dtype, mode=mode)
        assert_bit_exact(got, want, err_msg=f"{mode} {accumulate} {attrs}")
        if i["B"] is None:
            plain = Q.conv_integer(i["x"], w, i["x_zero_point"], i["w_zero_point"], **geo)
            if not pairs:
                assert_bit_exact(plain, acc.astype(np.int32))


@ORACLE
@given(st.data(), st.sampled_from(ALL_PAIRS), st.sampled_from(requant.MODES))
def test_qlinear_matmul_oracle(data, pair, mode):
    y_dtype = data.draw(st.sampled_from(["uint8", "int8"]))
    case = data.draw(qlinear_matmul_cases(pair[0].name, pair[1].name, y_dtype=y_dtype, scale_dtype=None,
                                          per_row=data.draw(st.booleans()), max_k=24))
    i = case["inputs"]
    accs = ["exact"] + (["int16-pairs"] if pair == (U8, S8) and mode in ("onnxruntime", "fbgemm") else [])
    for accumulate in accs:
        got = Q.qlinear_matmul(*i.values(), mode=mode, accumulate=accumulate)
        a, b = i["a"], i["b"]
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        shape = batch + (a.shape[-2], b.shape[-1])
        zb = np.broadcast_to(i["b_zero_point"], batch + (1, b.shape[-1])) if np.ndim(i["b_zero_point"]) > 1 else \
            i["b_zero_point"]
        acc = np.empty(shape, np.int64)
        for idx in np.ndindex(*batch):
            ai = np.broadcast_to(a, batch + a.shape[-2:])[idx]
            bi = np.broadcast_to(b, batch + b.shape[-2:])[idx]
            zbi = zb[idx].reshape(-1) if np.ndim(zb) > 1 else zb
            acc[idx] = Q.oracle_matmul_acc(ai, bi, np.reshape(i["a_zero_point"], -1), zbi,
                                           pairs=accumulate == "int16-pairs")
        plain = Q.matmul_integer(a, b, i["a_zero_point"], i["b_zero_point"], accumulate=accumulate)
        assert_bit_exact(plain, acc.astype(np.int32))
        m = Q.oracle_multiplier(i["a_scale"], i["b_scale"], i["y_scale"], mode=mode)
        want = Q.oracle_requantize(acc, m, i["y_zero_point"], dtype=i["y_zero_point"].dtype, mode=mode)
        assert_bit_exact(got, want, err_msg=f"{mode} {accumulate}")


@ORACLE
@given(st.data())
def test_conv_integer_geometry_oracle(data):
    # 1-D convs and auto_pad against the 2-D loop oracle with explicit pads
    x = data.draw(testing.codes((1, 2, data.draw(st.integers(1, 7))), np.uint8))
    w = data.draw(testing.codes((3, 2, data.draw(st.integers(1, 3))), np.int8))
    s, d = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    auto = data.draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"]))
    assume(auto in ("SAME_UPPER", "SAME_LOWER") or x.shape[2] >= d * (w.shape[2] - 1) + 1)
    got = Q.conv_integer(x, w, np.uint8(3), np.int8(-2), strides=[s], dilations=[d], auto_pad=auto)
    size, k = x.shape[2], d * (w.shape[2] - 1) + 1
    total = max((-(-size // s) - 1) * s + k - size, 0) if auto.startswith("SAME") else 0
    head = total // 2 if auto == "SAME_UPPER" else total - total // 2
    want = Q.oracle_conv_acc(x[:, :, None], w[:, :, None], 3, -2, strides=(1, s), pads=(0, head, 0, total - head),
                             dilations=(1, d), group=1)[:, :, 0]
    assert_bit_exact(got, want.astype(np.int32))


# ============================================================ 4. onnxruntime and the ONNX reference evaluator


@functools.lru_cache(maxsize=None)
def backends():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    return ort, ReferenceEvaluator


def run_ort(model, feeds):
    """onnxruntime's CPU provider, one thread (the errors of refused models are raised, not logged)."""
    ort, _ = backends()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = session.run(None, {k: np.asarray(v) for k, v in feeds.items()})
    return outs if len(outs) > 1 else outs[0]


def run_reference(model, feeds):
    _, evaluator = backends()
    outs = evaluator(model).run(None, {k: np.asarray(v) for k, v in feeds.items()})
    return outs if len(outs) > 1 else outs[0]


def feeds_of(inputs, initializers=()):
    return {k: v for k, v in inputs.items() if v is not None and k not in initializers}


ORT_QLINEAR = {(U8, U8), (U8, S8), (S8, S8)}  # onnxruntime's QLinearConv/QLinearMatMul kernels, y's dtype = x's


@functools.lru_cache(maxsize=None)
def ort_accumulation(op, x_dtype, w_dtype):
    """How this CPU's onnxruntime accumulates ``op`` for one sign combination: "exact", "int16-pairs" or
    None (neither: the test then skips the case and says so). u8 x s8 comes from sqref's probe; the
    others are checked here on extreme operands (every pair of type limits along K = 2 and 4)."""
    x_dtype, w_dtype = np.dtype(x_dtype), np.dtype(w_dtype)
    if (x_dtype, w_dtype) == (U8, S8) and op != "ConvInteger":
        from sqref.backends.probe import resolve_accumulate

        return resolve_accumulate("onnxruntime")[0]  # ConvInteger is exact (docs/backends.md); checked below
    lims = [np.iinfo(x_dtype).min, np.iinfo(x_dtype).max]
    wl = [np.iinfo(w_dtype).min, np.iinfo(w_dtype).max]
    a = np.array([[p, q, p, q] for p in lims for q in lims], x_dtype)  # (4, 4)
    b = np.array([[p, q, q, p] for p in wl for q in wl], w_dtype).T  # (4, 4)
    zero = (np.zeros((), x_dtype), np.zeros((), w_dtype))
    if op in ("MatMulInteger", "ConvInteger"):
        if op == "MatMulInteger":
            inputs = {"a": a, "b": b, "za": zero[0], "zb": zero[1]}
            want = Q.matmul_integer(a, b)
        else:
            inputs = {"x": a.T.reshape(1, 4, 4, 1), "w": b.T.reshape(4, 4, 1, 1), "zx": zero[0], "zw": zero[1]}
            want = Q.conv_integer(inputs["x"], inputs["w"])
        got = run_ort(one_node_model(op, inputs, ["y"]), inputs)
    else:
        y_zp = np.zeros((), x_dtype)
        one, big = np.float32(1), np.float32(512)
        if op == "QLinearMatMul":
            inputs = {"a": a, "sa": one, "za": zero[0], "b": b, "sb": one, "zb": zero[1], "sy": big, "zy": y_zp}
            want = Q.qlinear_matmul(*inputs.values())
        else:
            inputs = {"x": a.T.reshape(1, 4, 4, 1), "sx": one, "zx": zero[0], "w": b.T.reshape(4, 4, 1, 1), "sw": one,
                      "zw": zero[1], "sy": big, "zy": y_zp}
            want = Q.qlinear_conv(*inputs.values())
        got = run_ort(one_node_model(op, inputs, ["y"]), inputs)
    return "exact" if np.array_equal(got, want) else None


def qlinear_ort_expectation(op, x, w, y_dtype, per_row=False):
    """(accumulate, None) when onnxruntime runs this case, (None, reason) when it cannot."""
    if (x.dtype, w.dtype) not in ORT_QLINEAR or y_dtype != x.dtype:
        return None, "no onnxruntime kernel for this dtype combination"
    if per_row:
        return None, "onnxruntime needs a per-tensor a_scale and a_zero_point"
    acc = ort_accumulation(op, x.dtype, w.dtype)
    return (acc, None) if acc else (None, "onnxruntime accumulates neither exactly nor in int16 pairs here")


def why_differs(acc, m_ort, m_ref, y_zero_point, ort_pairs_changed):
    """Name the cause of an onnxruntime/evaluator difference, first match: the accumulation, a tie,
    the float16 multiplier, the float32 product."""
    if ort_pairs_changed:
        return "int16-pair accumulation (u8 x s8 kernels, x86 without VNNI)"
    zy = int(y_zero_point)
    qmin, qmax = Q.QUANT_RANGES[y_zero_point.dtype]
    a = acc.astype(np.float64)
    before = np.clip(np.rint(a * m_ort), qmin - zy, qmax - zy) + zy
    after = np.clip(np.rint(a * m_ort + zy), qmin, qmax)
    if not np.array_equal(before, after):
        return "a .5 tie: onnxruntime rounds before adding y_zero_point, the evaluator after"
    if not np.array_equal(np.float64(m_ort), np.float64(m_ref)):
        return "float16 scales: M in float32 (onnxruntime) versus float16 (evaluator)"
    return "float32(acc) * M rounds in onnxruntime (accumulator past 2**24, or the product)"


@needs_onnx
@QLINEAR
@given(st.data())
def test_qlinear_conv_backends(data):
    pair = data.draw(st.sampled_from([(U8, S8), (U8, S8), (U8, U8), (S8, S8), (S8, U8)]))
    y_dtype = pair[0] if data.draw(st.integers(0, 3)) else data.draw(st.sampled_from([U8, S8]))
    case = data.draw(qlinear_conv_cases(pair[0].name, pair[1].name, y_dtype=y_dtype.name, mode="onnx-reference"))
    i, attrs = case["inputs"], case["attrs"]
    geo = {k: v for k, v in attrs.items() if k != "kernel_shape"}
    consts = ("w", "w_scale", "w_zero_point", "B") if data.draw(st.booleans()) else ()
    consts = tuple(c for c in consts if i[c] is not None)
    model = one_node_model("QLinearConv", i, ["y"], initializers=consts, **attrs)
    feeds = feeds_of(i, consts)
    got_ref = run_reference(model, feeds)
    record("QLinearConv", "evaluator", got_ref, case["expected"], str(attrs))
    accumulate, reason = qlinear_ort_expectation("QLinearConv", i["x"], i["w"], y_dtype)
    if accumulate is None:
        note(f"onnxruntime not run: {reason}")
        return
    got_ort = run_ort(model, feeds)
    want = Q.qlinear_conv(*i.values(), **geo, mode="onnxruntime", accumulate=accumulate)
    record("QLinearConv", "onnxruntime", got_ort, want, f"accumulate={accumulate} {attrs}")
    in_ort_mode = Q.qlinear_conv(*i.values(), **geo, mode="onnxruntime")
    SPLITS["QLinearConv"] += not np.array_equal(in_ort_mode, case["expected"])
    acc = Q.conv_integer(i["x"], i["w"], i["x_zero_point"], i["w_zero_point"], **geo).astype(np.int64)
    LARGE["QLinearConv"] += int(np.abs(acc + (0 if i["B"] is None else i["B"][None, :, None, None])).max()) > 2**24
    if not np.array_equal(got_ort, got_ref):
        exact = Q.qlinear_conv(*i.values(), **geo, mode="onnxruntime")
        acc = Q.conv_integer(i["x"], i["w"], i["x_zero_point"], i["w_zero_point"], **geo).astype(np.int64)
        acc += 0 if i["B"] is None else i["B"].astype(np.int64)[None, :, None, None]
        sw = np.reshape(i["w_scale"], (-1, 1, 1)) if np.ndim(i["w_scale"]) else i["w_scale"]
        m = [requant.effective_multiplier(i["x_scale"], sw, i["y_scale"], mode=mode) for mode in ONNX_MODES]
        DIFFS["QLinearConv", why_differs(acc, *m, i["y_zero_point"], not np.array_equal(got_ort, exact))] += 1


@needs_onnx
@QLINEAR
@given(st.data())
def test_qlinear_matmul_backends(data):
    pair = data.draw(st.sampled_from([(U8, S8), (U8, S8), (U8, U8), (S8, S8), (S8, U8)]))
    y_dtype = pair[0] if data.draw(st.integers(0, 3)) else data.draw(st.sampled_from([U8, S8]))
    per_row = data.draw(st.integers(0, 5)) == 0
    case = data.draw(qlinear_matmul_cases(pair[0].name, pair[1].name, y_dtype=y_dtype.name, scale_dtype=None,
                                          per_row=per_row, mode="onnx-reference"))
    i = case["inputs"]
    consts = ("b", "b_scale", "b_zero_point") if data.draw(st.booleans()) else ()
    model = one_node_model("QLinearMatMul", i, ["y"], initializers=consts)
    feeds = feeds_of(i, consts)
    got_ref = run_reference(model, feeds)
    record("QLinearMatMul", "evaluator", got_ref, case["expected"])
    accumulate, reason = qlinear_ort_expectation("QLinearMatMul", i["a"], i["b"], y_dtype, per_row)
    if accumulate is None:
        note(f"onnxruntime not run: {reason}")
        return
    got_ort = run_ort(model, feeds)
    want = Q.qlinear_matmul(*i.values(), mode="onnxruntime", accumulate=accumulate)
    record("QLinearMatMul", "onnxruntime", got_ort, want, f"accumulate={accumulate} scales {i['y_scale'].dtype}")
    SPLITS["QLinearMatMul"] += not np.array_equal(Q.qlinear_matmul(*i.values(), mode="onnxruntime"), case["expected"])
    acc = Q.matmul_integer(i["a"], i["b"], i["a_zero_point"], i["b_zero_point"])
    LARGE["QLinearMatMul"] += int(np.abs(acc.astype(np.int64)).max()) > 2**24
    if not np.array_equal(got_ort, got_ref):
        exact = Q.qlinear_matmul(*i.values(), mode="onnxruntime")
        acc = Q.matmul_integer(i["a"], i["b"], i["a_zero_point"], i["b_zero_point"])
        m_ort = requant.effective_multiplier(i["a_scale"], i["b_scale"], i["y_scale"], mode="onnxruntime")
        m_ref = Q.oracle_multiplier(i["a_scale"], i["b_scale"], i["y_scale"], mode="onnx-reference")
        why = why_differs(acc, m_ort, m_ref, i["y_zero_point"], not np.array_equal(got_ort, exact))
        DIFFS["QLinearMatMul", why] += 1


@needs_onnx
@BACKEND
@given(st.data())
def test_matmul_integer_backends(data):
    pair = data.draw(st.sampled_from(ALL_PAIRS))
    case = data.draw(qlinear_matmul_cases(pair[0].name, pair[1].name, per_row=data.draw(st.booleans())))
    i = case["inputs"]
    inputs = {"A": i["a"], "B": i["b"], "a_zero_point": i["a_zero_point"], "b_zero_point": i["b_zero_point"]}
    model = one_node_model("MatMulInteger", inputs, ["y"])
    record("MatMulInteger", "evaluator", run_reference(model, inputs), Q.matmul_integer(*inputs.values()))
    if np.ndim(i["a_zero_point"]) > 0:
        note("onnxruntime not run: it needs a per-tensor a_zero_point")
        return
    accumulate = ort_accumulation("MatMulInteger", *pair)
    if accumulate is None:
        note("onnxruntime not run: it accumulates neither exactly nor in int16 pairs here")
        return
    record("MatMulInteger", "onnxruntime", run_ort(model, inputs),
           Q.matmul_integer(*inputs.values(), accumulate=accumulate), f"accumulate={accumulate}")


@needs_onnx
@BACKEND
@given(st.data())
def test_conv_integer_backends(data):
    pair = data.draw(st.sampled_from(ALL_PAIRS))
    case = data.draw(qlinear_conv_cases(pair[0].name, pair[1].name))
    i, attrs = case["inputs"], case["attrs"]
    inputs = {"x": i["x"], "w": i["w"], "x_zero_point": i["x_zero_point"], "w_zero_point": i["w_zero_point"]}
    model = one_node_model("ConvInteger", inputs, ["y"], **attrs)
    geo = {k: v for k, v in attrs.items() if k != "kernel_shape"}
    want = Q.conv_integer(*inputs.values(), **geo)
    record("ConvInteger", "evaluator", run_reference(model, inputs), want, str(attrs))
    if np.ndim(i["w_zero_point"]) > 0:
        note("onnxruntime not run: it refuses a per-channel w_zero_point")
        return
    if ort_accumulation("ConvInteger", *pair) is None:
        note("onnxruntime not run: it accumulates neither exactly nor in int16 pairs here")
        return
    record("ConvInteger", "onnxruntime", run_ort(model, inputs), want, str(attrs))


@needs_onnx
@BACKEND
@given(quantize_op_case())
def test_quantize_linear_backends(case):
    x, s, z, kw, dtype = case
    inputs = {"x": x, "y_scale": s, "y_zero_point": z}
    attrs = dict(axis=kw["axis"]) | ({"block_size": kw["block_size"]} if kw["block_size"] else {})
    if z is None:
        attrs["output_dtype"] = int(helper.np_dtype_to_tensor_dtype(dtype))
    model = one_node_model("QuantizeLinear", inputs, ["y"], **attrs)
    got_ref = run_reference(model, feeds_of(inputs))
    record("QuantizeLinear", "evaluator", got_ref, Q.quantize_linear(x, s, z, mode="onnx-reference", **kw))
    got_ort = run_ort(model, feeds_of(inputs))
    record("QuantizeLinear", "onnxruntime", got_ort, Q.quantize_linear(x, s, z, mode="onnxruntime", **kw))
    if not np.array_equal(got_ort, got_ref):
        finite = np.isfinite(x) & (np.abs(x.astype(np.float64)) < 2.0**31 * np.min(s))
        why = ("float16 division (onnxruntime divides in float32)" if np.all(finite) else
               "NaN, inf or |x / s| >= 2**31 (the evaluator's int32 cast)")
        DIFFS["QuantizeLinear", why] += 1


@needs_onnx
@BACKEND
@given(quantize_op_case(), st.sampled_from([None, F32, F16]))
def test_dequantize_linear_backends(case, out):
    q, s, zz, kw = dequantize_input(case)
    inputs = {"x": q, "x_scale": s, "x_zero_point": zz}
    attrs = dict(axis=kw["axis"]) | ({"block_size": kw["block_size"]} if kw["block_size"] else {})
    if out is not None and out != s.dtype:
        attrs["output_dtype"] = int(helper.np_dtype_to_tensor_dtype(out))
    model = one_node_model("DequantizeLinear", inputs, ["y"], opset=23 if "output_dtype" in attrs else 21, **attrs)
    want = Q.dequantize_linear(q, s, zz, axis=kw["axis"], block_size=kw["block_size"], output_dtype=out)
    record("DequantizeLinear", "evaluator", run_reference(model, inputs), want)
    record("DequantizeLinear", "onnxruntime", run_ort(model, inputs), want)


@needs_onnx
@BACKEND
@given(dynamic_case())
def test_dynamic_quantize_linear_backends(x):
    model = one_node_model("DynamicQuantizeLinear", {"x": x}, ["y", "y_scale", "y_zero_point"])
    for backend, run, mode in (("evaluator", run_reference, "onnx-reference"), ("onnxruntime", run_ort, "onnxruntime")):
        got = run(model, {"x": x})
        want = Q.dynamic_quantize_linear(x, mode=mode)
        for g, w in zip(got, want):
            record("DynamicQuantizeLinear", backend, np.asarray(g), w)


# ------------------------------------------------ onnxruntime's departures from the spec, literally

DEVIATIONS = """
Where onnxruntime (1.32, CPU) departs from the ONNX spec or its reference evaluator; each is a test below:
  QLinearConv/QLinearMatMul ties  ORT rounds before adding y_zero_point (acc 5, M 0.5, z_y 1: 3; evaluator 4)
  QLinearMatMul float16 scales    ORT computes M in float32 from the float16 values; the evaluator in float16
  QuantizeLinear float16          ORT divides in float32; ONNX (y_scale's precision) and the evaluator in float16
  QuantizeLinear inf/NaN          ORT saturates +inf to qmax and NaN to qmin; the evaluator's int32 cast gives
                                  INT32_MIN + z (qmin, or qmax when the int32 addition wraps)
  DynamicQuantizeLinear zeros     ORT y_scale 1.0; the evaluator float32(1) / 255; ONNX's body divides by 0
  u8 x s8 accumulation            on x86 without VNNI, adjacent products saturate in int16 (probed)
  per-row a, per-channel ConvInteger w zero point, int8 x uint8, y dtype != x dtype: ORT refuses
"""


@needs_onnx
def test_deviations_literally():
    pytest.importorskip("onnxruntime")
    one = np.float32(1)
    # ties: acc = 5, M = 0.5, z_y = 1
    i = {"a": np.uint8([[5]]), "sa": one, "za": np.uint8(0), "b": np.uint8([[1]]), "sb": np.float32(0.5),
         "zb": np.uint8(0), "sy": one, "zy": np.uint8(1)}
    m = one_node_model("QLinearMatMul", i, ["y"])
    assert run_ort(m, i).tolist() == [[3]] and run_reference(m, i).tolist() == [[4]]
    # float16 scales: M float32 1.93236518 (ORT) versus float16 1.9326171875 (evaluator); acc 37 -> 71 / 72
    f16 = [np.float16(v) for v in (0.43408203125, 0.421142578125, 0.0946044921875)]
    i = {"a": np.uint8([[37]]), "sa": f16[0], "za": np.uint8(0), "b": np.uint8([[1]]), "sb": f16[1], "zb": np.uint8(0),
         "sy": f16[2], "zy": np.uint8(0)}
    m = one_node_model("QLinearMatMul", i, ["y"])
    assert run_ort(m, i).tolist() == [[71]] and run_reference(m, i).tolist() == [[72]]
    # float16 QuantizeLinear: float16(0.45) / float16(0.3) = 1.5 in float16 -> 2; 1.49959 in float32 -> 1
    i = {"x": np.float16([0.45]), "s": np.float16(0.3), "z": np.uint8(0)}
    m = one_node_model("QuantizeLinear", i, ["y"])
    assert run_ort(m, i).tolist() == [1] and run_reference(m, i).tolist() == [2]
    # inf and NaN, int8 zero point -128: ORT [127, -128, -128]; evaluator INT32_MIN - 128 wraps -> 127 for all
    i = {"x": np.float32([np.inf, -np.inf, np.nan]), "s": one, "z": np.int8(-128)}
    m = one_node_model("QuantizeLinear", i, ["y"])
    assert run_ort(m, i).tolist() == [127, -128, -128] and run_reference(m, i).tolist() == [127, 127, 127]
    # all-zero DynamicQuantizeLinear
    i = {"x": np.zeros(3, np.float32)}
    m = one_node_model("DynamicQuantizeLinear", i, ["y", "s", "z"])
    assert float(run_ort(m, i)[1]) == 1.0 and run_reference(m, i)[1] == np.float32(1) / np.float32(255)


@needs_onnx
@pytest.mark.parametrize("op, inputs, attrs", [
    ("QLinearMatMul", {"a": np.int8([[1]]), "sa": np.float32(1), "za": np.int8(0), "b": np.uint8([[1]]),
                       "sb": np.float32(1), "zb": np.uint8(0), "sy": np.float32(1), "zy": np.int8(0)}, {}),
    ("QLinearConv", {"x": np.uint8([[[[1]]]]), "sx": np.float32(1), "zx": np.uint8(0), "w": np.int8([[[[1]]]]),
                     "sw": np.float32(1), "zw": np.int8(0), "sy": np.float32(1), "zy": np.int8(0)}, {}),
    ("MatMulInteger", {"a": np.uint8([[1], [2]]), "b": np.uint8([[1]]), "za": np.uint8([[1], [2]])}, {}),
    ("ConvInteger", {"x": np.uint8([[[[1]]]]), "w": np.uint8([[[[1]]], [[[1]]]]), "zx": np.uint8(0),
                     "zw": np.uint8([1, 2])}, {}),
])
def test_what_onnxruntime_refuses(op, inputs, attrs):
    # ONNX allows these; onnxruntime has no kernel (int8 x uint8; y's dtype unlike x's) or refuses the
    # zero point (per-row a; per-channel ConvInteger w); sqref and the evaluator compute them
    pytest.importorskip("onnxruntime")
    model = one_node_model(op, inputs, ["y"], **attrs)
    run_reference(model, inputs)
    with pytest.raises(Exception):
        run_ort(model, inputs)
