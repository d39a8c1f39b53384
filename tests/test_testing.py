"""sqref.testing.assert_bit_exact: passes on identical arrays, and its failure
message carries what numpy.testing's does and a histogram of differences."""
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

import inspect  # noqa: E402
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


def test_module_docstring_example_runs():
    # the example of sqref.testing's docstring, as written: this body between the markers must equal it
    pytest.importorskip("onnxruntime")
    # --- example
    import onnxruntime as ort
    from hypothesis import given
    from sqref.testing import assert_bit_exact, one_node_model, qlinear_matmul_cases

    @given(qlinear_matmul_cases(a_dtype="uint8", b_dtype="uint8", mode="onnxruntime"))
    def test_onnxruntime_qlinear_matmul(case):
        model = one_node_model("QLinearMatMul", case["inputs"], ["y"])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, case["inputs"])[0]
        assert_bit_exact(got, case["expected"], err_msg=str(case["inputs"]["y_scale"]))
    # --- end
    test_onnxruntime_qlinear_matmul()
    source = inspect.getsource(test_module_docstring_example_runs)
    body = source[source.index("# --- example\n") + 14:source.index("    # --- end")]
    assert textwrap.dedent(body).strip() == _docstring_example()


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
