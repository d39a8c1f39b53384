"""Whole models exported by sqref.backends.onnx, run in onnxruntime, against sqref's "onnxruntime" mode.

The shipped LeNet-5, quantized to 8 bits (dynamic boundary, per tensor) and
calibrated on the train split, runs in onnxruntime on all 1,000 test images and
is compared on the quantized input, every layer and the logits. Which accumulation
onnxruntime's u8 x s8 kernels use is probed (sqref.backends.probe): on a VNNI CPU
they are exact; measured on an x86-64 AVX2 CPU without VNNI, onnxruntime 1.32:

* int8 weights (u8 x s8 kernels): onnxruntime == run_integer(accumulate="int16-pairs")
  on every tensor, bit for bit. Against EXACT accumulation it differs (the
  documented deviation: VPMADDUBSW saturates adjacent u8*s8 pairs in int16):
  conv1 256,230 of 11,520,000 outputs, conv2 951,074 of 3,200,000 (30%: its input
  zero point is 124, so raw codes are large even for real 0), fc2 6,243 of
  10,000, 2 of 1,000 predictions.
* uint8 weights (codes + 128, zero point 128; u8 x u8 kernels): onnxruntime ==
  run_integer(accumulate="exact") on every tensor.
Both are asserted below, so neither deviation is tolerated silently.
"""
import os

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sqref  # noqa: E402
from sqref import integer  # noqa: E402
from sqref.backends import onnx as onnx_io  # noqa: E402
from sqref.backends.probe import resolve_accumulate  # noqa: E402
from sqref.data import DATA_DIR, load_split  # noqa: E402
from sqref.model import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU  # noqa: E402
from sqref.qmodel import quantize_model  # noqa: E402
from sqref.testing import assert_bit_exact  # noqa: E402


ACCUMULATE = resolve_accumulate("onnxruntime")[0]  # what this CPU's u8 x s8 kernels do, probed
SATURATES = ACCUMULATE == "int16-pairs"


@pytest.fixture(scope="module")
def lenet5():
    qmodel = quantize_model(sqref.load(os.fspath(DATA_DIR / "lenet5.h5")), bits=8)
    imodel = integer.build_integer_model(qmodel, integer.calibrate(qmodel, load_split(split="train")[0]))
    return imodel, load_split(split="test")[0]


def tensors(imodel, logits, outputs, codes):
    return {"input_q": codes, **dict(zip(imodel.names, outputs)), "logits": logits}


def test_lenet5_int8_weights_onnxruntime_equals_the_pair_model_on_every_tensor(lenet5):
    imodel, x = lenet5
    got_logits, got = onnx_io.run_onnxruntime(imodel, x)
    got["logits"] = got_logits
    accumulate = ACCUMULATE
    logits, outs = integer.run_integer(imodel, x, accumulate=accumulate, return_intermediates=True)
    want = tensors(imodel, logits, outs, integer.quantize_input(imodel, x))
    assert set(got) == set(want)
    for name in want:
        assert_bit_exact(got[name], want[name], err_msg=f"{name} (accumulate={accumulate})")
    if SATURATES:  # the documented deviation, counted: exact accumulation differs from onnxruntime
        exact_logits, exact = integer.run_integer(imodel, x, return_intermediates=True)
        diffs = {name: int(np.sum(a != b)) for name, a, b in zip(imodel.names, exact, outs)}
        assert diffs["conv1"] > 0 and diffs["conv2"] > 0 and diffs["fc2"] > 0
        assert np.mean(exact_logits.argmax(1) == logits.argmax(1)) >= 0.99  # a few predictions move


def test_lenet5_uint8_weights_onnxruntime_equals_exact_accumulation(lenet5):
    imodel, x = lenet5
    x = x[:300]
    got_logits, got = onnx_io.run_onnxruntime(imodel, x, weight_dtype="uint8")
    logits, outs = integer.run_integer(imodel, x, return_intermediates=True)
    for name, want in zip(imodel.names, outs):
        assert_bit_exact(got[name], want, err_msg=f"{name} (u8 x u8)")
    assert_bit_exact(got_logits, logits)


def test_graph_optimizations_do_not_change_the_result(lenet5):
    imodel, x = lenet5
    codes = integer.quantize_input(imodel, x[:100])
    a_logits, a = onnx_io.run_onnxruntime(imodel, codes, optimize=True)
    b_logits, b = onnx_io.run_onnxruntime(imodel, codes, optimize=False)
    assert_bit_exact(a_logits, b_logits)
    for name in imodel.names:
        assert_bit_exact(a[name], b[name], err_msg=name)


def test_exported_graph_uses_the_documented_ops(lenet5):
    imodel, _ = lenet5
    model = onnx_io.export_onnx(imodel)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["QuantizeLinear", "QLinearConv", "MaxPool", "QLinearConv", "MaxPool", "Flatten",
                   "Reshape", "QLinearConv", "Flatten", "Identity", "Reshape", "QLinearConv", "Flatten",
                   "DequantizeLinear"]
    assert [o.name for o in model.graph.output][:3] == ["logits", "input_q", "conv1"]


# ------------------------------------------------------------ random small models


@st.composite
def small_models(draw):
    """A random conv net: conv (groups, depthwise, padding, stride, per-channel or not), a pool
    (max with padding, avg, or avg over the whole map), an optional unfused ReLU, flatten,
    a linear with bias (+ fused ReLU) and a bias-free linear (QLinearMatMul)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = draw(st.sampled_from([1, 2, 3, 4]))
    groups = draw(st.sampled_from([1, 1, c]))  # groups == c: depthwise when k == c
    k = groups * draw(st.integers(1, 3))
    kh = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 1))
    stride = draw(st.integers(1, 2))
    h = draw(st.integers(6, 9))
    conv = Conv2d(rng.normal(0, 0.5, (k, c // groups, kh, kh)).astype(np.float32),
                  rng.normal(0, 0.1, k).astype(np.float32), (stride, stride), (pad, pad), (1, 1), groups)
    oh = (h + 2 * pad - kh) // stride + 1
    pool = draw(st.sampled_from(["max", "avg", "global"]))
    if pool == "max":
        layers = [conv, MaxPool2d((2, 2), (2, 2), (1, 1))]
        side = (oh + 2 - 2) // 2 + 1
    elif pool == "avg":
        layers = [conv, AvgPool2d((2, 2), (1, 1), (0, 0))]
        side = oh - 1
    else:
        layers = [conv, AvgPool2d((oh, oh), (1, 1), (0, 0))]
        side = 1
    if draw(st.booleans()):
        layers.append(ReLU())
    feat = k * side * side
    layers += [Flatten(), Linear(rng.normal(0, 0.3, (6, feat)).astype(np.float32), rng.normal(0, 0.1, 6).astype(np.float32)),
               ReLU(), Linear(rng.normal(0, 0.3, (3, 6)).astype(np.float32), None)]
    model = Model(tuple(layers), (c, h, h))
    q = quantize_model(model, bits=draw(st.sampled_from([8, 5])), per_channel=draw(st.booleans()))
    x = rng.random((draw(st.integers(1, 4)), c, h, h)).astype(np.float32) * draw(st.sampled_from([1.0, 3.0]))
    return q, x


@settings(max_examples=25, deadline=None)
@given(small_models())
def test_small_models_onnxruntime_equals_sqref_on_every_tensor(case):
    qmodel, x = case
    imodel = integer.build_integer_model(qmodel, integer.calibrate(qmodel, x))
    accumulate = ACCUMULATE
    logits, outs = integer.run_integer(imodel, x, accumulate=accumulate, return_intermediates=True)
    got_logits, got = onnx_io.run_onnxruntime(imodel, x)
    for name, want in zip(imodel.names, outs):
        assert_bit_exact(got[name], want, err_msg=f"{name}: {imodel.layers[imodel.names.index(name)]}")
    assert_bit_exact(got_logits, logits)
