"""sqref.backends.probe: which accumulation a backend uses on this machine, measured.

The probe's two expected codes are checked against sqref's own models of the
two accumulations (so both expectations are exercised on every CPU kind),
its decision literally, and the real backends answer one of the two.
"""
import numpy as np
import pytest

from sqref import integer
from sqref.backends import probe
from sqref.integer import requant


def sqref_probe_code(kernel, accumulate):
    """The probe through sqref's kernels and onnxruntime-mode requantization (M = 1/512, z_y = 200)."""
    x, w = probe.probe_operands(kernel)
    if kernel == "matmul":
        acc = integer.linear_accumulate(x, w.T.copy(), x_zero_point=0, accumulate=accumulate)[0, 0]
    else:
        depthwise = kernel == "depthwise"
        acc = integer.conv2d_accumulate(x, w, x_zero_point=0, padding=int(depthwise), groups=w.shape[0],
                                        accumulate=accumulate)[0, 0, int(depthwise), int(depthwise)]
    y = requant.requantize(np.array([acc]), multiplier=1 / probe.PROBE_SCALE, zero_point=probe.PROBE_ZERO_POINT,
                           qmin=0, qmax=255, mode="onnxruntime")
    return int(y[0])


@pytest.mark.parametrize("kernel", probe.KERNELS)
@pytest.mark.parametrize("accumulate, code", [("exact", 72), ("int16-pairs", 136)])
def test_probe_codes_are_what_each_accumulation_gives(kernel, accumulate, code):
    # exact: 255 * -128 * 2 = -65280 / 512 = -127.5 -> -128 (half even) + 200 = 72
    # pairs: sat16(-65280) = -32768 / 512 = -64 + 200 = 136
    assert sqref_probe_code(kernel, accumulate) == code
    assert probe.classify(code, where="x") == accumulate


def test_classify_rejects_any_other_code():
    with pytest.raises(RuntimeError, match="gave 100 on the accumulation probe"):
        probe.classify(100, where="somebackend matmul")


@pytest.mark.parametrize("backend", probe.PROBED_BACKENDS)
@pytest.mark.parametrize("kernel", probe.KERNELS)
def test_real_backend_answers_one_of_the_two(backend, kernel):
    pytest.importorskip(backend)
    assert probe.accumulation(backend, kernel) in ("exact", "int16-pairs")


def test_resolve_accumulate_reports_what_it_found():
    pytest.importorskip("onnxruntime")
    found, report = probe.resolve_accumulate("onnxruntime")
    assert found == probe.accumulation("onnxruntime", "matmul")
    assert report["probe"] == {"matmul": found, "conv": found} and report["requested"] == "auto"
    for mode in ("onnx-reference", "tflite", "tflite-single"):  # int8 x int8 or float64: nothing to probe
        assert probe.resolve_accumulate(mode)[0] == "exact"


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel must be one of"):
        probe.accumulation("onnxruntime", "winograd")
    with pytest.raises(ValueError, match="backend must be one of"):
        probe.accumulation("tflite", "matmul")
