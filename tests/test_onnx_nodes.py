"""ONNX's own node test cases for the float ops sqref has, run through sqref's public functions.

The cases ship inside the onnx wheel as code (onnx.backend.test.case.node: each op's
``export_*`` functions build a one-node model with inputs and expected outputs from
ONNX's NumPy reference). ``to_sqref`` maps a node's attributes onto sqref.ops (and,
for uint8 MaxPool, the integer path's max_pool2d_codes) the way an importer must:
ONNX's defaults (stride 1, count_include_pad 0, auto_pad) are spelled out, 1-D pools
run as 2-D pools over a unit height, asymmetric conv pads pad the input first. A case
sqref cannot run is skipped with the reason, which the table below pins, so a case
that starts or stops running is a visible change:

    op                  cases  run  skipped: why
    Conv                6      6
    MaxPool             19     13   3-D (4), the Indices output (2)
    AveragePool         20     14   3-D (6)
    GlobalAveragePool   2      2
    GlobalMaxPool       2      2
    Flatten             9      9
    Gemm                11     11
    Relu                1      1
    Softmax             7      7
    LogSoftmax          7      7
    BatchNormalization  4      2    training mode (2)

Tolerance: the expected outputs are float32 results of ONNX's NumPy reference (one
is a 4-decimal literal: LOOSER);
sqref sums in another order (im2col GEMMs, row-then-column pooling), so float
outputs agree to float32 rounding: rtol 1e-5, atol 1e-6 (the largest error seen is
a few ulps); max pooling and reshapes are exact.
"""
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import helper  # noqa: E402
from onnx.backend.test.case import node as onnx_node_cases  # noqa: E402

from sqref import ops  # noqa: E402
from sqref.integer import max_pool2d_codes  # noqa: E402

OPS = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Gemm", "Relu",
       "Softmax", "LogSoftmax", "BatchNormalization")
TABLE = {"Conv": (6, 6), "MaxPool": (19, 13), "AveragePool": (20, 14), "GlobalAveragePool": (2, 2),
         "GlobalMaxPool": (2, 2), "Flatten": (9, 9), "Gemm": (11, 11), "Relu": (1, 1), "Softmax": (7, 7),
         "LogSoftmax": (7, 7), "BatchNormalization": (4, 2)}  # op: (cases, run)
RTOL, ATOL = 1e-5, 1e-6  # float32 rounding of another summation order (module docstring)
# Loosened per case, each with its reason (the ONNX reference evaluator's habit):
LOOSER = {"test_averagepool_2d_ceil_last_window_starts_on_pad": dict(rtol=0, atol=1e-4)}  # the expected output is a
# 4-decimal literal, apparently computed before the inputs were rounded to the 4 decimals given: channel 0 is
# (0.8580 + 0.0786 + 0.2692 + 0.1537) / 9 = 0.151056, written 0.1511; channel 1 is 0.284044, written 0.2841


def collect():
    with warnings.catch_warnings():  # the collection builds every op's cases; some warn on purpose
        warnings.simplefilter("ignore")
        cases = onnx_node_cases.collect_testcases(None)
    return [c for c in cases if c.kind == "node" and c.model.graph.node[0].op_type in OPS]


CASES = collect()


class Unsupported(Exception):
    """The case needs something sqref does not have; the message says what."""


def attributes(node):
    return {a.name: (lambda v: v.decode() if isinstance(v, bytes) else v)(helper.get_attribute_value(a))
            for a in node.attribute}


def same_pads(size, kernel, stride, dilation, mode):
    """ONNX auto_pad SAME_UPPER / SAME_LOWER: output ceil(size / stride), the total padding
    split with the odd one at the end (UPPER) or the beginning (LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if mode == "SAME_UPPER" else (large, small)


def pads_2d(attrs, spatial, kernel, strides, dilations):
    """ONNX pads (or auto_pad) as (top, left, bottom, right)."""
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (le, r) = (same_pads(spatial[a], kernel[a], strides[a], dilations[a], mode) for a in range(2))
        return t, le, b, r
    if mode == "VALID":
        return 0, 0, 0, 0
    pads = attrs.get("pads", [0, 0, 0, 0])
    return pads[0], pads[1], pads[2], pads[3]


def pool(op, attrs, x):
    if x.ndim == 5:
        raise Unsupported("3-D pooling: sqref's pools are 2-D")
    one_d = x.ndim == 3
    if one_d:  # (N, C, L) -> (N, C, 1, L)
        x = x[:, :, None, :]
        attrs = {**attrs, "kernel_shape": [1, *attrs["kernel_shape"]],
                 **{k: [v[0], v[0]] if k != "pads" else [0, v[0], 0, v[1]] for k, v in attrs.items()
                    if k in ("strides", "dilations", "pads")}}
    kernel = tuple(attrs["kernel_shape"])
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    pads = pads_2d(attrs, x.shape[2:], kernel, strides, dilations)
    ceil = bool(attrs.get("ceil_mode", 0))
    if op == "MaxPool":
        if attrs.get("storage_order", 0):
            raise Unsupported("storage_order: the Indices output")
        if x.dtype == np.uint8:
            if ceil or dilations != (1, 1) or pads[:2] != pads[2:]:
                raise Unsupported("uint8 pooling with ceil_mode, dilation or asymmetric pads")
            y = max_pool2d_codes(x, kernel_size=kernel, stride=strides, padding=pads[:2])
        else:
            y = ops.max_pool2d(x, kernel_size=kernel, stride=strides, padding=pads, dilation=dilations,
                               ceil_mode=ceil)
    else:
        y = ops.avg_pool2d(x, kernel_size=kernel, stride=strides, padding=pads, dilation=dilations, ceil_mode=ceil,
                           count_include_pad=bool(attrs.get("count_include_pad", 0)))
    return y[:, :, 0, :] if one_d else y


def conv(attrs, x, w, b=None):
    kernel = w.shape[2:]
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    top, left, bottom, right = pads_2d(attrs, x.shape[2:], kernel, strides, dilations)
    if (top, left) != (bottom, right):  # asymmetric: pad the input with zeros first
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        top = left = 0
    return ops.conv2d(x, w, b, stride=strides, padding=(top, left), dilation=dilations,
                      groups=attrs.get("group", 1))


def batchnorm(attrs, x, scale, bias, mean, var):
    if attrs.get("training_mode", 0):
        raise Unsupported("training mode: sqref folds inference batch norms only")
    C = x.shape[1]  # BN as a folded depthwise 1x1 conv: the path an importer takes
    w, b = ops.fold_batchnorm(np.ones((C, 1, 1, 1), x.dtype), None, gamma=scale, beta=bias, mean=mean, var=var,
                              eps=attrs.get("epsilon", 1e-5))
    return ops.conv2d(x, w, b, groups=C)


def to_sqref(case):
    """(sqref's outputs, ONNX's expected outputs) of a node case; Unsupported if sqref lacks something."""
    node = case.model.graph.node[0]
    op, attrs = node.op_type, attributes(node)
    inputs, expected = case.data_sets[0]
    if len(expected) > 1 and op != "BatchNormalization":
        raise Unsupported("a second output (Indices)")
    if op == "Conv":
        out = conv(attrs, *inputs)
    elif op in ("MaxPool", "AveragePool"):
        out = pool(op, attrs, inputs[0])
    elif op == "GlobalAveragePool":
        out = ops.avg_pool2d(inputs[0], kernel_size=inputs[0].shape[2:], stride=1)
    elif op == "GlobalMaxPool":
        out = ops.max_pool2d(inputs[0], kernel_size=inputs[0].shape[2:], stride=1)
    elif op == "Flatten":
        out = ops.flatten(inputs[0], axis=attrs.get("axis", 1))
    elif op == "Gemm":
        out = ops.gemm(*inputs, alpha=attrs.get("alpha", 1.0), beta=attrs.get("beta", 1.0),
                       trans_a=bool(attrs.get("transA", 0)), trans_b=bool(attrs.get("transB", 0)))
    elif op == "Relu":
        out = ops.relu(inputs[0])
    elif op in ("Softmax", "LogSoftmax"):  # opset 13+: along one axis, default -1
        out = (ops.softmax if op == "Softmax" else ops.log_softmax)(inputs[0], axis=attrs.get("axis", -1))
    else:
        out = batchnorm(attrs, *inputs)
    return out, expected[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_node_case(case):
    try:
        got, want = to_sqref(case)
    except Unsupported as exc:
        pytest.skip(f"{case.model.graph.node[0].op_type}: {exc}")
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if case.model.graph.node[0].op_type in ("MaxPool", "GlobalMaxPool", "Flatten", "Relu"):
        np.testing.assert_array_equal(got, want)  # no arithmetic: exact
    else:
        np.testing.assert_allclose(got, want, **LOOSER.get(case.name, dict(rtol=RTOL, atol=ATOL)))


def test_the_table_of_what_runs():
    # which cases run is part of the claim: a change in either direction must be seen here
    counts = {}
    for case in CASES:
        op = case.model.graph.node[0].op_type
        try:
            to_sqref(case)
            ran = 1
        except Unsupported:
            ran = 0
        total, run = counts.get(op, (0, 0))
        counts[op] = (total + 1, run + ran)
    assert counts == TABLE
