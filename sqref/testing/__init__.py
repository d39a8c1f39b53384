"""Bit-exact assertions and hypothesis strategies for quantized backends, like numpy.testing.

``assert_bit_exact(actual, desired)`` fails unless shapes, dtypes and every
bit agree (floats are compared by bit pattern: -0.0 != 0.0, NaN == the same
NaN), and its message says how they differ: the mismatch count and fraction,
a histogram of ``actual - desired`` (value: count), the worst difference and
the first mismatching indices with both values.

The strategies draw, on purpose, the cases where backends disagree
(docs/backends.md): exact .5 ties with either sign and zero-point parity,
zero points at the type limits, outputs exactly at qmin/qmax, accumulators
past 2**24, multipliers >= 1 and below 2**-31, and quantize inputs a few ulps
from a tie where a reciprocal multiply and a division round differently.
Multipliers and scales are float32-representable, so every mode sees the same
value. hypothesis is imported when a strategy is first built.

How a backend author uses it, in their own test suite: draw complete cases,
and let ``assert_backend_matches`` build the one-node ONNX model, run it in the
backend (a built-in name, or any callable ``(model, feeds) -> outputs``) and
compare bit for bit with sqref's answer in the backend's mode::

    import onnxruntime as ort
    from hypothesis import given
    from sqref.testing import assert_backend_matches, qlinear_conv_cases, qlinear_matmul_cases

    @given(qlinear_conv_cases(x_dtype="uint8", w_dtype="uint8", mode="onnxruntime"))
    def test_onnxruntime_qlinear_conv(case):
        assert_backend_matches("QLinearConv", case, "onnxruntime")

    def my_runner(model, feeds):  # your backend: an onnx.ModelProto and its feeds in, a list of outputs out
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    @given(qlinear_matmul_cases(a_dtype="uint8", b_dtype="uint8", mode="onnxruntime"))
    def test_my_runner_qlinear_matmul(case):
        assert_backend_matches("QLinearMatMul", case, my_runner)

uint8 weights keep the example true on every CPU: with int8 weights,
onnxruntime's u8 x s8 kernels saturate int16 pairs on x86 without VNNI;
pass ``accumulate=sqref.backends.probe.resolve_accumulate("onnxruntime")[0]``
to model whichever this machine does. The strategies for whole ONNX nodes:
``qlinear_conv_cases`` (QLinearConv, ConvInteger), ``qlinear_matmul_cases``
(QLinearMatMul, MatMulInteger), ``qlinear_add_cases`` (com.microsoft
QLinearAdd, QLinearMul) and ``quantize_linear_cases`` (QuantizeLinear,
DequantizeLinear, DynamicQuantizeLinear). ``requant_cases`` and
``quantize_cases`` draw the requantization and QUANTIZE steps alone, as
arrays, for a backend that exposes them outside a model (compare with
``sqref.integer.requant.requantize`` and ``quantize_linear``).

Oracle of the strategies: tests/test_requant.py asserts that each category
really produces ties, boundary outputs and mode disagreements;
tests/test_testing.py that the QLinear cases plant ties, reach accumulators
past 2**24 and pass assert_backend_matches in onnxruntime and the ONNX
evaluator, and that assert_backend_matches fails on a backend one code off.
"""
from sqref.testing.asserts import assert_bit_exact
from sqref.testing.backends import (BUILTIN_BACKENDS, CHECKED_OPS, assert_backend_matches, one_node_model,
                                    run_onnx_reference, run_onnxruntime)
from sqref.testing.qlinear_cases import (qlinear_add_cases, qlinear_conv_cases, qlinear_matmul_cases,
                                         quantize_linear_cases)
from sqref.testing.strategies import codes, multipliers, qparams, quantize_cases, requant_cases

__all__ = ["assert_bit_exact", "assert_backend_matches", "codes", "qparams", "multipliers", "requant_cases",
           "quantize_cases", "one_node_model", "qlinear_conv_cases", "qlinear_matmul_cases", "qlinear_add_cases",
           "quantize_linear_cases", "run_onnxruntime", "run_onnx_reference", "CHECKED_OPS", "BUILTIN_BACKENDS"]
