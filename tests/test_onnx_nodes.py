"""ONNX's own node test cases for the float ops sqref has, run through sqref's public functions.

The cases ship inside the onnx wheel as code (onnx.backend.test.case.node: each op's
``export_*`` functions build a model with inputs and expected outputs from ONNX's NumPy
reference). ``to_sqref`` runs a case's nodes one by one, mapping each node's attributes
onto sqref.ops (and, for uint8 MaxPool, the integer path's max_pool2d_codes) the way an
importer must: ONNX's defaults (stride 1, count_include_pad 0, auto_pad, Clip's omitted
bounds, ReduceMean's empty axes) are spelled out, 1-D pools run as 2-D pools over a unit
height, asymmetric conv pads pad the input first. Collected: every case whose nodes are
all ops listed below: the one-node cases, plus test_hardswish_expanded (ONNX's HardSwish
function body, HardSigmoid then Mul; the other *_expanded cases use ops sqref lacks). A
case sqref cannot run is skipped with its reason, which the table below (TABLE) pins, so
a case that starts or stops running is a visible change:

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
    Add                 8      2    integer dtype (6: int8, int16, uint8, uint16, uint32, uint64)
    Mul                 9      3    integer dtype (6: as Add)
    Div                 10     3    integer dtype (7: as Add, and int32_trunc)
    Concat              12     12
    Clip                12     9    integer dtype (3: int8)
    Sigmoid             2      2
    HardSigmoid         3      3
    HardSwish           1      1
    HardSigmoid+Mul     1      1    (test_hardswish_expanded)
    ReduceMean          8      8
    Reshape             10     10

Tolerance: the expected outputs are float32 results of ONNX's NumPy reference (one
is a 4-decimal literal: LOOSER);
sqref sums in another order (im2col GEMMs, row-then-column pooling, float64 means),
and computes sigmoid, batch norm and the hard activations with other roundings, so
float outputs agree to float32 rounding: rtol 1e-5, atol 1e-6 (the largest error seen
is 8 ulps, on BatchNormalization, which ONNX computes in float32 and sqref in float64).
Exact (EXACT): what only compares or copies (max pooling, ReLU, Clip, Flatten, Reshape,
Concat); the one IEEE float32 operation per element of Add, Mul and Div; and
HardSigmoid and HardSwish, which sqref computes with the float32 operations of ONNX's
reference (alpha * x + beta with alpha and beta rounded to float32, clipped, times x).
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
       "Softmax", "LogSoftmax", "BatchNormalization", "Add", "Mul", "Div", "Concat", "Clip", "Sigmoid",
       "HardSigmoid", "HardSwish", "ReduceMean", "Reshape")
INT = "integer dtype: sqref's float ops take float32 or float64"
TABLE = {  # row: (cases, run, {reason skipped: cases}); a row is the op, or the ops of an expanded case
    "Conv": (6, 6, {}), "MaxPool": (19, 13, {"3-D pooling: sqref's pools are 2-D": 4, "a second output (Indices)": 2}),
    "AveragePool": (20, 14, {"3-D pooling: sqref's pools are 2-D": 6}), "GlobalAveragePool": (2, 2, {}),
    "GlobalMaxPool": (2, 2, {}), "Flatten": (9, 9, {}), "Gemm": (11, 11, {}), "Relu": (1, 1, {}),
    "Softmax": (7, 7, {}), "LogSoftmax": (7, 7, {}),
    "BatchNormalization": (4, 2, {"training mode: sqref's batch norm is inference-only (fixed statistics)": 2}),
    "Add": (8, 2, {INT: 6}), "Mul": (9, 3, {INT: 6}), "Div": (10, 3, {INT: 7}), "Concat": (12, 12, {}),
    "Clip": (12, 9, {INT: 3}), "Sigmoid": (2, 2, {}), "HardSigmoid": (3, 3, {}), "HardSwish": (1, 1, {}),
    "HardSigmoid+Mul": (1, 1, {}), "ReduceMean": (8, 8, {}), "Reshape": (10, 10, {}),
}
EXACT = ("MaxPool", "GlobalMaxPool", "Flatten", "Relu", "Clip", "Reshape", "Concat", "Add", "Mul", "Div",
         "HardSigmoid", "HardSwish", "HardSigmoid+Mul")  # compared bit for bit (module docstring)
RTOL, ATOL = 1e-5, 1e-6  # float32 rounding of another summation order (module docstring)
# Loosened per case, each with its reason (the ONNX reference evaluator's habit):
LOOSER = {"test_averagepool_2d_ceil_last_window_starts_on_pad": dict(rtol=0, atol=1e-4)}  # the expected output is a
# 4-decimal literal, apparently computed before the inputs were rounded to the 4 decimals given: channel 0 is
# (0.8580 + 0.0786 + 0.2692 + 0.1537) / 9 = 0.151056, written 0.1511; channel 1 is 0.284044, written 0.2841


def collect():
    # Every op's cases at once, filtered afterwards: collect_testcases(op_type) fills its list on its first
    # call only (the export modules are imported once), so a later call for another op returns the first
    # call's cases.
    with warnings.catch_warnings():  # the collection builds every op's cases; some warn on purpose
        warnings.simplefilter("ignore")
        cases = onnx_node_cases.collect_testcases(None)
    return [c for c in cases if c.kind == "node" and all(n.op_type in OPS for n in c.model.graph.node)]


CASES = collect()


class Unsupported(Exception):
    """The case needs something sqref does not have. ``reason`` is what the table pins;
    the message adds the case's detail (a dtype, say)."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason


def attributes(node):
    return {a.name: (lambda v: v.decode() if isinstance(v, bytes) else v)(helper.get_attribute_value(a))
            for a in node.attribute}


def pads_2d(attrs, spatial, kernel, strides, dilations):
    """ONNX pads (or auto_pad) as (top, left, bottom, right)."""
    mode = attrs.get("auto_pad", "NOTSET")
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (le, r) = (ops.same_pads(spatial[a], kernel[a], strides[a], dilations[a], upper=mode == "SAME_UPPER")
                           for a in range(2))
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




def float_data(x):
    """x if it is a float array; Unsupported for the integer cases of the arithmetic ops."""
    if np.asarray(x).dtype.kind != "f":
        raise Unsupported(INT, np.asarray(x).dtype.name)
    return x


def batchnorm(attrs, x, scale, bias, mean, var):
    if attrs.get("training_mode", 0):
        raise Unsupported("training mode: sqref's batch norm is inference-only (fixed statistics)")
    return ops.batch_norm(x, scale, bias, mean, var, eps=attrs.get("epsilon", 1e-5))


def folded_batchnorm(attrs, x, scale, bias, mean, var):
    """BN as a folded depthwise 1x1 conv: the path sqref's ONNX importer takes."""
    C = x.shape[1]
    w, b = ops.fold_batchnorm(np.ones((C, 1, 1, 1), x.dtype), None, gamma=scale, beta=bias, mean=mean, var=var,
                              eps=attrs.get("epsilon", 1e-5))
    return ops.conv2d(x, w, b, groups=C)


def run_node(op, attrs, args):
    """One ONNX node through sqref: ``args`` are its inputs in order (None for an omitted optional one)."""
    x = args[0]
    if op == "Conv":
        return conv(attrs, *[a for a in args if a is not None])
    if op in ("MaxPool", "AveragePool"):
        return pool(op, attrs, x)
    if op == "GlobalAveragePool":
        return ops.global_avg_pool(x)
    if op == "GlobalMaxPool":
        return ops.max_pool2d(x, kernel_size=x.shape[2:], stride=1)
    if op == "Flatten":
        return ops.flatten(x, axis=attrs.get("axis", 1))
    if op == "Gemm":
        return ops.gemm(*args, alpha=attrs.get("alpha", 1.0), beta=attrs.get("beta", 1.0),
                        trans_a=bool(attrs.get("transA", 0)), trans_b=bool(attrs.get("transB", 0)))
    if op == "Relu":
        return ops.relu(x)
    if op in ("Softmax", "LogSoftmax"):  # opset 13+: along one axis, default -1
        return (ops.softmax if op == "Softmax" else ops.log_softmax)(x, axis=attrs.get("axis", -1))
    if op == "BatchNormalization":
        return batchnorm(attrs, *args)
    if op in ("Add", "Mul", "Div"):
        return {"Add": ops.add, "Mul": ops.mul, "Div": ops.div}[op](float_data(x), args[1])
    if op == "Concat":
        return ops.concat(list(args), axis=attrs["axis"])
    if op == "Clip":  # opset 11+: min and max are optional inputs
        lo, hi = (list(args[1:]) + [None, None])[:2]
        return ops.clip(float_data(x), lo, hi)
    if op == "Sigmoid":
        return ops.sigmoid(x)
    if op == "HardSigmoid":
        return ops.hard_sigmoid(x, alpha=attrs.get("alpha", 0.2), beta=attrs.get("beta", 0.5))
    if op == "HardSwish":
        return ops.hard_swish(x)
    if op == "ReduceMean":  # opset 18+: axes is an optional input
        axes = args[1] if len(args) > 1 else None
        if attrs.get("noop_with_empty_axes", 0) and (axes is None or len(axes) == 0):
            raise Unsupported("noop_with_empty_axes: an identity, not a reduction")
        return ops.reduce_mean(x, axes, keepdims=attrs.get("keepdims", 1))
    if op == "Reshape":
        return ops.reshape(x, args[1], allowzero=attrs.get("allowzero", 0))
    raise AssertionError(f"no mapping for {op}")  # collect() keeps only the ops in OPS


def to_sqref(case):
    """(sqref's output, ONNX's expected output) of a case, its nodes run one by one through sqref;
    Unsupported if sqref lacks something."""
    graph = case.model.graph
    inputs, expected = case.data_sets[0]
    values = {i.name: v for i, v in zip(graph.input, inputs)}
    for node in graph.node:
        op, attrs = node.op_type, attributes(node)
        if len([o for o in node.output if o]) > 1 and op != "BatchNormalization":
            raise Unsupported("a second output (Indices)")
        values[node.output[0]] = run_node(op, attrs, [values[name] if name else None for name in node.input])
    return values[graph.output[0].name], expected[0]


def key(case):
    """The table's row: the op of a one-node case; the ops joined by + for an expanded (function body) case."""
    return "+".join(n.op_type for n in case.model.graph.node)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_onnx_node_case(case):
    try:
        got, want = to_sqref(case)
    except Unsupported as exc:
        pytest.skip(f"{key(case)}: {exc}")
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if key(case) in EXACT:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, **LOOSER.get(case.name, dict(rtol=RTOL, atol=ATOL)))


BN_INFERENCE = [c for c in CASES if key(c) == "BatchNormalization" and not attributes(c.model.graph.node[0]).get("training_mode", 0)]


@pytest.mark.parametrize("case", BN_INFERENCE, ids=[c.name for c in BN_INFERENCE])
def test_onnx_batchnorm_cases_through_the_folded_conv(case):
    # the importer folds BN into the preceding conv: that path must agree with ONNX too
    node = case.model.graph.node[0]
    inputs, expected = case.data_sets[0]
    got = folded_batchnorm(attributes(node), *inputs)
    np.testing.assert_allclose(got, expected[0], rtol=RTOL, atol=ATOL)


def test_the_table_of_what_runs():
    # which cases run, and why the others do not, is part of the claim: a change either way must be seen here
    counts = {}
    for case in CASES:
        total, run, skipped = counts.get(key(case), (0, 0, {}))
        try:
            to_sqref(case)
            run += 1
        except Unsupported as exc:
            skipped = {**skipped, exc.reason: skipped.get(exc.reason, 0) + 1}
        counts[key(case)] = (total + 1, run, skipped)
    assert counts == TABLE
