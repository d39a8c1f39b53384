"""sqref.testing.assert_bit_exact: passes on identical arrays, and its failure
message carries what numpy.testing's does and a histogram of differences."""
import importlib.util
import re

import numpy as np
import pytest

from sqref.testing import assert_bit_exact


def failure(actual, desired, **kw):
    with pytest.raises(AssertionError) as info:
        assert_bit_exact(actual, desired, **kw)
    return str(info.value)


@pytest.mark.parametrize(
    "a",
    [
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.array(7, dtype=np.int64),
        np.zeros((0, 3), np.int32),
        np.float32([1.5, np.nan, -np.inf, -0.0]),
    ],
)
def test_passes_on_identical_arrays(a):
    assert_bit_exact(a, a.copy())


def test_message_counts_histogram_worst_and_first_indices():
    desired = np.arange(20, dtype=np.int64).reshape(4, 5)
    actual = desired.copy()
    actual[0, 1] += 1
    actual[1, 2] += 1
    actual[2, 3] -= 1
    actual[3, 4] += 7
    msg = failure(actual, desired, err_msg="mode=tflite")
    assert msg.startswith("Arrays are not bit-exact: mode=tflite")
    assert "mismatched elements: 4 / 20 (20%)" in msg
    assert "differences actual - desired (value: count): {+1: 2, -1: 1, +7: 1}" in msg
    assert "worst difference: +7 at index (3, 4): actual 26, desired 19" in msg
    listed = re.findall(r"^   \((\d+), (\d+)\): (-?\d+) vs (-?\d+)$", msg, flags=re.M)
    assert listed == [("0", "1", "2", "1"), ("1", "2", "8", "7"), ("2", "3", "12", "13"), ("3", "4", "26", "19")]
    assert "shape (4, 5), dtype int64" in msg


def test_message_lists_only_the_first_mismatches():
    msg = failure(np.ones(100, np.uint8), np.zeros(100, np.uint8), max_listed=3)
    assert "mismatched elements: 100 / 100 (100%)" in msg
    assert "{+1: 100}" in msg
    assert len(re.findall(r"^   \(\d+,\): 1 vs 0$", msg, flags=re.M)) == 3 and "... and 97 more" in msg


def test_unsigned_differences_do_not_wrap():
    msg = failure(np.array([0], np.uint8), np.array([255], np.uint8))
    assert "{-255: 1}" in msg and "actual 0, desired 255" in msg


def test_shape_mismatch():
    msg = failure(np.zeros((2, 3), np.int8), np.zeros((3, 2), np.int8))
    assert "shapes differ: actual (2, 3), desired (3, 2)" in msg


def test_dtype_mismatch_is_a_failure_not_a_cast():
    msg = failure(np.zeros(3, np.uint8), np.zeros(3, np.int64))
    assert "dtypes differ: actual uint8, desired int64" in msg


def test_floats_compare_bit_patterns():
    msg = failure(np.float32([-0.0, 1.0]), np.float32([0.0, 1.0]))
    assert "mismatched elements: 1 / 2" in msg
    assert "-0.0 [0x80000000] vs 0.0 [0x00000000]" in msg
    msg = failure(np.float64([1.0 + 2**-52]), np.float64([1.0]))
    assert "{+2.22045e-16: 1}" in msg


def test_scalar_mismatch():
    msg = failure(np.int32(3), np.int32(4))
    assert "mismatched elements: 1 / 1" in msg and "{-1: 1}" in msg and "shape (), dtype int32" in msg


# ------------------------------------------------------------ one_node_model and the QLinear cases

import textwrap  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402

from sqref import testing  # noqa: E402
from sqref.integer import qlinear  # noqa: E402


def test_one_node_model_builds_a_valid_model():
    onnx = pytest.importorskip("onnx")
    x = np.zeros((1, 2, 3, 3), np.uint8)
    w = np.ones((4, 2, 1, 1), np.int8)
    model = testing.one_node_model("ConvInteger", {"x": x, "w": w, "x_zero_point": None, "w_zero_point": np.int8(1)},
                                   ["y"], initializers=("w",), pads=[0, 0, 0, 0])
    onnx.checker.check_model(model)
    (node,) = model.graph.node
    assert list(node.input) == ["x", "w", "", "w_zero_point"]  # None: an omitted optional input
    assert [i.name for i in model.graph.input] == ["x", "w_zero_point"]
    assert [i.name for i in model.graph.initializer] == ["w"]
    out = model.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.TensorProto.INT32 and [d.dim_value for d in out.shape.dim] == [1, 4, 3, 3]
    assert model.opset_import[0].version == 21 and model.ir_version == 10


def test_one_node_model_declared_inputs_and_typed_outputs():
    onnx = pytest.importorskip("onnx")
    model = testing.one_node_model("DynamicQuantizeLinear", {"x": (np.float32, [None, 4])},
                                   {"y": np.uint8, "s": (np.float32, []), "z": np.uint8}, opset=11)
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0  # a free dimension
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.UINT8,
                                                                           onnx.TensorProto.FLOAT,
                                                                           onnx.TensorProto.UINT8]


def test_one_node_model_errors():
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="initializer 'w' must be one of the inputs"):
        testing.one_node_model("Relu", {"x": np.zeros(2, np.float32)}, initializers=("w",))
    with pytest.raises(ValueError, match="cannot type output"):
        testing.one_node_model("NoSuchOp", {"x": np.zeros(2, np.float32)})


def test_one_node_model_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    a, b = np.uint8([[1, 2]]), np.int8([[3], [4]])
    model = testing.one_node_model("MatMulInteger", {"A": a, "B": b}, ["Y"])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"A": a, "B": b})
    assert got[0].tolist() == [[11]] and got[0].dtype == np.int32


def _docstring_example():
    """The indented code block after "::" in sqref.testing's module docstring, dedented."""
    doc = testing.__doc__
    lines = []
    for line in doc[doc.index("::\n\n") + 4:].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip()


def run_example(tmp_path, code, name):
    """Save an example as a module and import it, as a user would, then call its two test functions."""
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [f for key, f in vars(module).items() if key.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def test_module_docstring_example_runs(tmp_path):
    # the example of sqref.testing's docstring, as written
    pytest.importorskip("onnxruntime")
    run_example(tmp_path, _docstring_example(), "docstring_example")


CASE_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(case, fn):
    geo = {k: v for k, v in case["attrs"].items() if k != "kernel_shape"}
    a = fn(*case["inputs"].values(), **geo, mode="onnxruntime")
    b = fn(*case["inputs"].values(), **geo, mode="onnx-reference")
    return not np.array_equal(a, b)


def test_qlinear_matmul_cases_draw_what_they_promise():
    seen = {"split": 0, "f16": 0, "large": 0, "per_column": 0, "batched": 0}

    @CASE_SETTINGS
    @given(testing.qlinear_matmul_cases(scale_dtype=None))
    def check(case):
        i = case["inputs"]
        assert list(i) == ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"]
        assert i["y_zero_point"].dtype == i["a"].dtype and i["a_zero_point"].dtype == i["a"].dtype
        assert i["a_scale"].dtype == i["b_scale"].dtype == i["y_scale"].dtype
        testing.assert_bit_exact(case["expected"], qlinear.qlinear_matmul(*i.values()))
        acc = qlinear.matmul_integer(i["a"], i["b"], i["a_zero_point"], i["b_zero_point"])
        seen["split"] += split(case, qlinear.qlinear_matmul)
        seen["f16"] += i["y_scale"].dtype == np.float16
        seen["large"] += int(np.abs(acc.astype(np.int64)).max()) > 2**24
        seen["per_column"] += np.ndim(i["b_scale"]) > 0
        seen["batched"] += i["a"].ndim > 2

    check()
    # ties (the two ONNX modes differ), float16 scales, accumulators past 2**24, per-column, batches
    assert all(v >= 5 for v in seen.values()), sorted(seen.items())


def test_qlinear_conv_cases_draw_what_they_promise():
    seen = {"split": 0, "large": 0, "per_channel": 0, "depthwise": 0, "grouped": 0, "bias": 0, "f16_scale": 0}

    @CASE_SETTINGS
    @given(testing.qlinear_conv_cases())
    def check(case):
        i, attrs = case["inputs"], case["attrs"]
        assert list(i)[-1] == "B" and set(attrs) == {"kernel_shape", "strides", "pads", "dilations", "group"}
        geo = {k: v for k, v in attrs.items() if k != "kernel_shape"}
        testing.assert_bit_exact(case["expected"], qlinear.qlinear_conv(*i.values(), **geo))
        acc = qlinear.conv_integer(i["x"], i["w"], i["x_zero_point"], i["w_zero_point"], **geo)
        seen["split"] += split(case, qlinear.qlinear_conv)
        seen["large"] += int(np.abs(acc.astype(np.int64)).max()) > 2**24
        seen["per_channel"] += np.ndim(i["w_scale"]) > 0
        seen["depthwise"] += i["w"].shape[1] == 1 and i["w"].shape[0] == attrs["group"] > 1
        seen["grouped"] += attrs["group"] > 1 and i["w"].shape[1] > 1
        seen["bias"] += i["B"] is not None
        seen["f16_scale"] += float(np.float16(i["x_scale"])) == float(i["x_scale"])

    check()
    assert all(v >= 5 for v in seen.values()), sorted(seen.items())


def test_qlinear_cases_take_fixed_dtypes_and_modes():
    @settings(max_examples=20, deadline=None)
    @given(testing.qlinear_conv_cases("int8", "uint8", y_dtype="uint8", per_channel=True, bias=False,
                                      mode="tflite"),
           testing.qlinear_matmul_cases("uint8", "int8", accumulate="int16-pairs", max_k=8))
    def check(conv, mm):
        assert conv["inputs"]["x"].dtype == np.int8 and conv["inputs"]["w"].dtype == np.uint8
        assert conv["expected"].dtype == np.uint8 and conv["inputs"]["B"] is None and conv["mode"] == "tflite"
        assert np.ndim(conv["inputs"]["w_zero_point"]) == 1
        assert mm["accumulate"] == "int16-pairs" and mm["inputs"]["a"].shape[-1] <= 8
        testing.assert_bit_exact(mm["expected"], qlinear.qlinear_matmul(*mm["inputs"].values(),
                                                                         accumulate="int16-pairs"))

    check()
    with pytest.raises(ValueError, match="a_dtype must be one of"):
        testing.qlinear_matmul_cases("int16")
    with pytest.raises(ValueError, match="scale_dtype"):
        testing.qlinear_matmul_cases(scale_dtype="float64")


# ------------------------------------------------------------ assert_backend_matches

import functools  # noqa: E402
import pathlib  # noqa: E402

from hypothesis import event  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sqref.integer import requant  # noqa: E402

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "integer.md"
PAIRS = [("uint8", "uint8"), ("uint8", "int8"), ("int8", "int8"), ("int8", "uint8")]
ORT_PAIRS = PAIRS[:3]  # onnxruntime has no int8 x uint8 kernel
CONTRIB = ("QLinearAdd", "QLinearMul")


@functools.lru_cache(maxsize=None)
def ort_accumulate():
    """How this CPU's onnxruntime accumulates u8 x s8 (sqref's probe): "exact", or "int16-pairs" without VNNI."""
    from sqref.backends.probe import resolve_accumulate

    return resolve_accumulate("onnxruntime")[0]


def node_cases(op, backend):
    """Cases of ``op`` that ``backend`` has kernels for, drawn in its mode (u8 x s8 in onnxruntime with the
    probed accumulation)."""
    ort = backend == "onnxruntime"

    def acc(pair):
        return ort_accumulate() if ort and pair == ("uint8", "int8") else "exact"

    pairs = st.sampled_from(ORT_PAIRS if ort else PAIRS)
    if op == "QLinearConv":
        return pairs.flatmap(lambda p: testing.qlinear_conv_cases(*p, mode=backend, accumulate=acc(p)))
    if op == "ConvInteger":  # onnxruntime refuses a per-channel w zero point
        return pairs.flatmap(lambda p: testing.qlinear_conv_cases(*p, op=op, per_channel=False if ort else None))
    if op == "QLinearMatMul":
        return pairs.flatmap(lambda p: testing.qlinear_matmul_cases(*p, scale_dtype=None, mode=backend,
                                                                    accumulate=acc(p)))
    if op == "MatMulInteger":
        return pairs.flatmap(lambda p: testing.qlinear_matmul_cases(*p, op=op, accumulate=acc(p)))
    if op in CONTRIB:
        return testing.qlinear_add_cases(op=op, mode=backend)
    return testing.quantize_linear_cases(op=op, mode=backend)


BACKEND_OPS = [(op, b) for b in testing.BUILTIN_BACKENDS for op in testing.CHECKED_OPS
               if not (b == "onnx-reference" and op in CONTRIB)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the evaluator casts inf to int (QuantizeLinear)
@pytest.mark.parametrize("op, backend", BACKEND_OPS)
def test_assert_backend_matches_passes_on_the_onnx_backends(op, backend):
    pytest.importorskip("onnxruntime" if backend == "onnxruntime" else "onnx")
    seen = []

    @settings(deadline=None)
    @given(node_cases(op, backend), st.booleans())
    def check(case, constant):
        assert case["op"] == op
        # constant weights take another kernel in onnxruntime (prepacked)
        consts = ("w", "B", "b") if constant and op in ("QLinearConv", "QLinearMatMul") else ()
        testing.assert_backend_matches(op, case, backend, initializers=[c for c in consts
                                                                        if case["inputs"].get(c) is not None])
        seen.append(op)

    check()
    assert len(seen) >= 10


def off_by_one(run):
    """A backend that runs ``run`` and then adds 1 to the first element of the first output (codes wrap)."""
    def wrong(model, feeds):
        out = [np.array(o) for o in run(model, feeds)]
        y = out[0].reshape(-1)
        y[0] = (y[0].astype(np.float64) + 1).astype(y.dtype) if y.dtype.kind == "f" else y[0] + y.dtype.type(1)
        return out

    return wrong


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("op", list(testing.CHECKED_OPS))
def test_assert_backend_matches_fails_on_a_wrong_backend(op):
    pytest.importorskip("onnxruntime")
    wrong = off_by_one(testing.run_onnxruntime)
    failed = []

    @settings(deadline=None, max_examples=10)
    @given(node_cases(op, "onnxruntime"))
    def check(case):
        with pytest.raises(AssertionError) as info:
            testing.assert_backend_matches(op, case, wrong, err_msg="planted")
        msg = str(info.value)
        first = next(iter(case["inputs"]))
        name = testing.CHECKED_OPS[op][1][0]
        assert msg.startswith(f"Arrays are not bit-exact: planted: output {name!r} of {op} in wrong against sqref")
        assert "mismatched elements: 1 / " in msg and "worst difference: " in msg
        assert re.search(r"first mismatches \(index: actual vs desired\):\n   \(0(, 0)*,?\): ", msg)
        assert f"\n case:\n   {first}: {np.asarray(case['inputs'][first]).dtype} " in msg
        for k, v in case["inputs"].items():  # every input's dtype and shape, small ones with their values
            if v is not None:
                a = np.asarray(v)
                assert f"   {k}: {a.dtype} {a.shape}" + (f" = {a.tolist()!r}" if a.size <= 16 else "") in msg
        assert f"   attrs: {case['attrs']!r}" in msg
        failed.append(op)

    check()
    assert len(failed) == 10


def test_assert_backend_matches_message_of_the_docs():
    # the failure shown in docs/integer.md, section 8.1 "For other projects' tests", from this literal case
    pytest.importorskip("onnxruntime")
    f32, u8 = np.float32, np.uint8
    inputs = {"x": u8([[[[127, 254]]], [[[1, 255]]]]), "x_scale": np.array(1, f32), "x_zero_point": np.array(0, u8),
              "w": u8([[[[127]]]]), "w_scale": np.array(1, f32), "w_zero_point": np.array(0, u8),
              "y_scale": np.array(16192.5, f32), "y_zero_point": np.array(0, u8), "B": None}
    attrs = dict(kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    geo = {k: v for k, v in attrs.items() if k != "kernel_shape"}
    case = {"op": "QLinearConv", "inputs": inputs, "attrs": attrs, "mode": "onnxruntime", "accumulate": "exact",
            "expected": qlinear.qlinear_conv(*inputs.values(), **geo)}
    testing.assert_backend_matches("QLinearConv", case, "onnxruntime")

    def plus_one(model, feeds):
        y = testing.run_onnxruntime(model, feeds)[0]
        y[0, 0, 0, 1] += 1
        return [y]

    with pytest.raises(AssertionError) as info:
        testing.assert_backend_matches("QLinearConv", case, plus_one)
    text = DOCS.read_text()
    start = text.index("\n```\nArrays are not bit-exact: output 'y' of QLinearConv in plus_one") + 5
    assert str(info.value) == text[start:text.index("\n```", start)]


def test_assert_backend_matches_takes_a_custom_runner():
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    calls = []

    def my_runner(model, feeds):
        assert isinstance(model, onnx.ModelProto)
        onnx.checker.check_model(model)
        (node,) = model.graph.node
        calls.append((node.op_type, node.domain, sorted(feeds)))
        outs = testing.run_onnxruntime(model, feeds)
        return outs[0] if len(outs) == 1 else outs  # one array is accepted too

    @settings(deadline=None, max_examples=10)
    @given(testing.qlinear_add_cases(op="QLinearMul"), testing.quantize_linear_cases(op="DynamicQuantizeLinear"))
    def check(mul, dyn):
        testing.assert_backend_matches("QLinearMul", mul, my_runner)
        assert calls[-1] == ("QLinearMul", "com.microsoft", sorted(mul["inputs"]))  # every input fed
        testing.assert_backend_matches("DynamicQuantizeLinear", dyn, my_runner)

    check()
    assert {c[:2] for c in calls} == {("QLinearMul", "com.microsoft"), ("DynamicQuantizeLinear", "")}
    assert len(calls) == 20


def test_assert_backend_matches_refuses_what_it_cannot_check():
    pytest.importorskip("onnx")
    f32, u8 = np.float32, np.uint8
    x = f32([0.5, 1.5])
    case = {"op": "QuantizeLinear", "inputs": {"x": x, "y_scale": np.array(1, f32), "y_zero_point": np.array(0, u8)},
            "attrs": {}, "mode": "onnxruntime", "expected": u8([0, 2])}
    with pytest.raises(ValueError, match="op must be one of"):
        testing.assert_backend_matches("Relu", case, "onnxruntime")
    with pytest.raises(ValueError, match="drawn for QuantizeLinear, not DequantizeLinear"):
        testing.assert_backend_matches("DequantizeLinear", case, "onnxruntime")
    with pytest.raises(ValueError, match="draw the cases with mode='onnx-reference'"):
        testing.assert_backend_matches("QuantizeLinear", case, "onnx-reference")
    with pytest.raises(ValueError, match="backend must be one of"):
        testing.assert_backend_matches("QuantizeLinear", case, "tensorrt")
    with pytest.raises(TypeError, match="backend must be a name"):
        testing.assert_backend_matches("QuantizeLinear", case, 3)
    add = {"op": "QLinearAdd", "inputs": {}, "attrs": {}, "mode": None, "expected": u8([0])}
    with pytest.raises(ValueError, match="evaluator has no com.microsoft ops"):
        testing.assert_backend_matches("QLinearAdd", add, "onnx-reference")
    with pytest.raises(AssertionError, match="2 outputs, expected 1"):
        testing.assert_backend_matches("QuantizeLinear", case, lambda model, feeds: [u8([0, 2])] * 2)
    testing.assert_backend_matches("QuantizeLinear", case, lambda model, feeds: u8([0, 2]))  # rne: 0.5 -> 0


def exact_ties(op, case):
    """How many outputs of a QLinear case are exactly t + 1/2 before rounding, t and t + 1 in y's range: counted
    where onnxruntime's multiplier (or QLinearAdd's ratios) is a power of two, so float64 holds the value exactly."""
    i = case["inputs"]
    if op in CONTRIB:
        da = i["a"].astype(np.float64) - float(i["a_zero_point"])
        db = i["b"].astype(np.float64) - float(i["b_zero_point"])
        sa, sb, sc = (float(i[k]) for k in ("a_scale", "b_scale", "c_scale"))
        v = (sa / sc * da + sb / sc * db if op == "QLinearAdd" else sa * sb / sc * da * db) + float(i["c_zero_point"])
        exact = all(np.frexp(r)[0] == 0.5 for r in ((sa / sc, sb / sc) if op == "QLinearAdd" else (sa * sb / sc,)))
        lo, hi = qlinear.QUANT_RANGES[case["expected"].dtype]
        return int(np.sum((v - np.floor(v) == 0.5) & (v > lo) & (v < hi))) if exact else 0
    if op == "QLinearConv":
        geo = {k: v for k, v in case["attrs"].items() if k != "kernel_shape"}
        acc = qlinear.conv_integer(i["x"], i["w"], i["x_zero_point"], i["w_zero_point"], **geo).astype(np.int64)
        acc += 0 if i["B"] is None else i["B"].astype(np.int64)[None, :, None, None]
        sw = np.reshape(i["w_scale"], (-1, 1, 1)) if np.ndim(i["w_scale"]) else i["w_scale"]
        m = requant.effective_multiplier(i["x_scale"], sw, i["y_scale"], mode="onnxruntime")
    else:
        acc = qlinear.matmul_integer(i["a"], i["b"], i["a_zero_point"], i["b_zero_point"]).astype(np.int64)
        m = requant.effective_multiplier(i["a_scale"], i["b_scale"], i["y_scale"], mode="onnxruntime")
    m = np.broadcast_to(np.asarray(m, np.float64), acc.shape)
    v = acc * m + float(i["y_zero_point"])
    lo, hi = qlinear.QUANT_RANGES[case["expected"].dtype]
    return int(np.sum((np.frexp(m)[0] == 0.5) & (v - np.floor(v) == 0.5) & (v > lo) & (v < hi)))


@pytest.mark.parametrize("op", ["QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul"])
def test_strategies_plant_ties(op):
    stats = {"cases": 0, "with a tie": 0, "per-channel float16 scales": 0}
    strategy = {"QLinearConv": testing.qlinear_conv_cases(), "QLinearMatMul": testing.qlinear_matmul_cases(),
                "QLinearAdd": testing.qlinear_add_cases(op="QLinearAdd"),
                "QLinearMul": testing.qlinear_add_cases(op="QLinearMul")}[op]

    # 600 examples, not 150: Hypothesis's examples are not independent draws (it mutates earlier ones,
    # and biases numbers towards the literal constants of every local module loaded, so a change to
    # unrelated code moves them); with 150, QLinearMatMul fell to 13 ties in 150 when sqref.mse_search's
    # constants changed (it had passed). 600 cost about 10 s more and keep every op above 1 in 10.
    @settings(deadline=None, max_examples=600)
    @given(strategy)
    def check(case):
        ties = exact_ties(op, case)
        event(f"{op}: a planted .5 tie" if ties else f"{op}: no tie")
        stats["cases"] += 1
        stats["with a tie"] += ties > 0
        scale = case["inputs"].get("w_scale", case["inputs"].get("b_scale"))
        stats["per-channel float16 scales"] += bool(np.ndim(scale) > 0 and np.array_equal(scale.astype(np.float16),
                                                                                          scale))

    check()
    assert stats["with a tie"] >= stats["cases"] // 10, stats  # measured: 1 in 7 to 1 in 2, by op and seed
    if op in ("QLinearConv", "QLinearMatMul"):
        assert stats["per-channel float16 scales"] >= 5, stats


def docs_example():
    """The python block of docs/integer.md between "<!-- example: check-backend -->" and "<!-- end example -->"."""
    text = DOCS.read_text()
    start = text.index("<!-- example: check-backend -->\n```python\n")
    block = text[start:text.index("```\n<!-- end example -->", start)]
    return block.split("```python\n", 1)[1]


def test_docs_example_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    run_example(tmp_path, docs_example(), "docs_example")
