"""Quantized ONNX models, run node by node as onnxruntime runs them (docs/quantized_onnx.md).

A model made by onnxruntime's quantizer (QDQ or QOperator format, any signs, per-tensor or
per-channel) is not what onnxruntime executes: its graph optimizer first fuses
DequantizeLinear -> op -> QuantizeLinear groups into integer kernels (QLinearConv, QGemm,
QLinearAdd, ...) where its selectors allow, and leaves the rest as float32 "islands" between
DQ and Q. ``ort_partition`` asks onnxruntime for that graph (SessionOptions.optimized_model_filepath,
level ORT_ENABLE_EXTENDED: every graph rewrite, no layout change), and ``run_graph`` evaluates it
with sqref's functions, one node at a time:

    integer ops   QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, ConvInteger,
                  MatMulInteger, and onnxruntime's com.microsoft QGemm, QLinearAdd, QLinearMul,
                  QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid,
                  QLinearLeakyRelu: sqref.integer.qlinear*, bit-exact (mode "onnxruntime");
                  MaxPool, Relu, Clip on codes
    float ops     Conv, Gemm, MatMul, ReduceMean, GlobalAveragePool, AveragePool, MaxPool, Add,
                  Sub, Mul, Div, Relu, Clip, Sigmoid, Flatten, Reshape, Identity, Transpose,
                  Squeeze, Unsqueeze, Concat, Softmax: sqref.ops in float32. The reductions
                  among them sum in another order than onnxruntime's MLAS, so their float32
                  results may differ in the last bits: ``float_reference`` gives the float64
                  value and a bound on any float32 summation's error (docs/quantized_onnx.md)

``anchor`` evaluates each node on another runtime's tensors instead of sqref's own, which
checks every node in isolation (sqref.integer.onnx_golden). Anything else is a one-line
ValueError naming the node.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from sqref import ops
from sqref.backends import onnx_package
from sqref.backends.onnx_import import node_attrs, attr_text
from sqref.integer.qlinear import (conv_integer, dequantize_linear, matmul_integer, qlinear_conv, qlinear_matmul,
                                   quantize_linear)
from sqref.integer.qlinear_elementwise import (qlinear_add, qlinear_concat, qlinear_leaky_relu, qlinear_mul,
                                               qlinear_sigmoid)
from sqref.integer.qlinear_gemm import qgemm
from sqref.integer.qlinear_pool import max_pool_codes, qlinear_average_pool, qlinear_global_average_pool

MS = "com.microsoft"
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                 "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool",
                 "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu"}
FLOAT_OPS = {"Conv", "Gemm", "MatMul", "ReduceMean", "GlobalAveragePool", "AveragePool", "MaxPool", "Add", "Sub",
             "Mul", "Div", "Relu", "Clip", "Sigmoid", "Flatten", "Reshape", "Identity", "Transpose", "Squeeze",
             "Unsqueeze", "Concat", "Softmax"}
REDUCTIONS = {"Conv", "Gemm", "MatMul", "ReduceMean", "GlobalAveragePool"}  # float32 sums: order-dependent
OPTIMIZATION = "ORT_ENABLE_EXTENDED"
U32 = 2.0**-24  # float32's unit roundoff


@dataclass(frozen=True)
class Node:
    """One ONNX node: inputs "" where an optional input is absent."""

    name: str
    op: str
    domain: str
    inputs: tuple
    outputs: tuple
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class QGraph:
    """The graph onnxruntime runs: nodes in topological order, constants (initializers) by name,
    graph inputs as (name, NumPy dtype, shape with None for free dimensions), output names."""

    nodes: tuple
    constants: dict
    inputs: tuple
    outputs: tuple


def is_quantized(proto) -> bool:
    """Whether an ONNX model holds quantized ops (QDQ or QOperator format)."""
    return any(n.op_type in QUANTIZED_OPS for n in proto.graph.node)


def ort_partition(proto):
    """(ModelProto, onnxruntime version): the graph onnxruntime itself runs for ``proto`` on the CPU,
    as its optimizer saves it at ORT_ENABLE_EXTENDED (module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION)
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        try:
            ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime refused the model: {str(exc).splitlines()[0]}") from None
        return onnx_package().load(options.optimized_model_filepath), ort.__version__


def read_graph(proto) -> QGraph:
    """The QGraph of a ModelProto; ValueError naming the first node sqref cannot run."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = []
    for i, n in enumerate(proto.graph.node):
        where = f"node {i} {n.name or n.op_type!r} ({n.domain + ':' if n.domain else ''}{n.op_type})"
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            value = node_attrs(n).get("value")
            if not hasattr(value, "data_type"):  # value_float, value_ints, sparse_value, ...
                raise ValueError(f"{where}: sqref reads a Constant's tensor attribute 'value' only")
            constants[n.output[0]] = numpy_helper.to_array(value)
            continue
        if n.domain not in ("", "ai.onnx", MS) or (n.op_type not in QUANTIZED_OPS | FLOAT_OPS) \
                or (n.domain == MS) != (n.op_type in {"QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
                                                      "QLinearGlobalAveragePool", "QLinearAveragePool",
                                                      "QLinearSigmoid", "QLinearLeakyRelu"}):
            raise ValueError(f"{where}: sqref cannot run this op (docs/quantized_onnx.md lists what it runs)")
        nodes.append(Node(n.name or f"{n.op_type}_{i}", n.op_type, n.domain, tuple(n.input), tuple(n.output),
                          {k: attr_text(v) for k, v in node_attrs(n).items()}))
    inputs = []
    for v in proto.graph.input:
        if v.name in constants:
            continue
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        inputs.append((v.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return QGraph(tuple(nodes), constants, tuple(inputs), tuple(o.name for o in proto.graph.output))


def run_graph(graph: QGraph, feeds: dict, *, accumulate="exact", anchor=None) -> dict:
    """Every tensor of the graph, by name: the graph inputs ``feeds``, the constants and each node's outputs.

    accumulate  "exact", or a dict {node name: "exact" | "int16-pairs"} (the u8 x s8 kernels' saturation)
    anchor      None, or {tensor name: array}: each node reads its inputs from ``anchor`` where it holds
                them (another runtime's tensors), so each node is checked on the same inputs
    """
    env = {**graph.constants, **feeds}
    for node in graph.nodes:
        args = [None if name == "" else (anchor[name] if anchor is not None and name in anchor else env[name])
                for name in node.inputs]
        acc = accumulate.get(node.name, "exact") if isinstance(accumulate, dict) else accumulate
        try:
            outs = run_node(node, args, accumulate=acc)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"node {node.name!r} ({node.op}): {str(exc).splitlines()[0]}") from None
        env.update(zip(node.outputs, outs))
    return env


def _opt(args, i):
    return args[i] if i < len(args) else None


def _conv_pads(x, w, a):
    """The (top, left, bottom, right) pads of a 2-D Conv/pool node, auto_pad included."""
    kernel = tuple(a.get("kernel_shape") or w.shape[2:])
    strides, dilations = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (left, r) = (ops.same_pads(x.shape[2 + i], kernel[i], strides[i], dilations[i],
                                           upper=auto == "SAME_UPPER") for i in range(2))
        return (t, left, b, r)
    if auto == "VALID":
        return (0, 0, 0, 0)
    p = tuple(a.get("pads", (0, 0, 0, 0)))
    return (p[0], p[1], p[2], p[3])


def _float_conv(x, w, b, a):
    if x.ndim != 4:
        raise ValueError(f"only 2-D convolutions (4-D input), got input of shape {x.shape}")
    top, left, bottom, right = _conv_pads(x, w, a)
    if (top, left) != (bottom, right):
        x = ops.pad2d(x, (top, left, bottom, right))
        top = left = 0
    return ops.conv2d(x, w, b, stride=tuple(a.get("strides", (1, 1))), padding=(top, left),
                      dilation=tuple(a.get("dilations", (1, 1))), groups=int(a.get("group", 1)))


def _axes(args, a, ndim):
    axes = _opt(args, 1)
    axes = a.get("axes") if axes is None else axes
    return tuple(range(ndim)) if axes is None or len(axes) == 0 else tuple(int(v) % ndim for v in axes)


def run_node(node: Node, args: list, *, accumulate="exact") -> list:
    """One node's outputs (a list) from its input arrays (None for absent optional inputs)."""
    a, op = node.attrs, node.op
    x = args[0] if args else None
    if op == "QuantizeLinear":
        return [quantize_linear(x, args[1], _opt(args, 2), axis=int(a.get("axis", 1)),
                                saturate=bool(a.get("saturate", 1)))]
    if op == "DequantizeLinear":
        return [dequantize_linear(x, args[1], _opt(args, 2), axis=int(a.get("axis", 1)))]
    if op == "QLinearConv":
        return [qlinear_conv(*args[:8], _opt(args, 8), strides=a.get("strides"), pads=a.get("pads"),
                             dilations=a.get("dilations"), group=int(a.get("group", 1)),
                             auto_pad=a.get("auto_pad", "NOTSET"), kernel_shape=a.get("kernel_shape"),
                             accumulate=accumulate)]
    if op == "QLinearMatMul":
        return [qlinear_matmul(*args[:8], accumulate=accumulate)]
    if op == "ConvInteger":
        return [conv_integer(x, args[1], _opt(args, 2), _opt(args, 3), strides=a.get("strides"), pads=a.get("pads"),
                             dilations=a.get("dilations"), group=int(a.get("group", 1)),
                             auto_pad=a.get("auto_pad", "NOTSET"), kernel_shape=a.get("kernel_shape"))]
    if op == "MatMulInteger":
        return [matmul_integer(x, args[1], _opt(args, 2), _opt(args, 3), accumulate=accumulate)]
    if op == "QGemm":
        return [qgemm(*args[:6], _opt(args, 6), _opt(args, 7), _opt(args, 8), alpha=float(a.get("alpha", 1.0)),
                      trans_a=int(a.get("transA", 0)), trans_b=int(a.get("transB", 0)), accumulate=accumulate)]
    if op == "QLinearAdd":
        return [qlinear_add(*args[:8])]
    if op == "QLinearMul":
        return [qlinear_mul(*args[:8])]
    if op == "QLinearConcat":
        return [qlinear_concat(args[0], args[1], *args[2:], axis=int(a["axis"]))]
    if op == "QLinearGlobalAveragePool":
        return [qlinear_global_average_pool(*args[:5], channels_last=int(a.get("channels_last", 0)))]
    if op == "QLinearAveragePool":
        return [qlinear_average_pool(*args[:5], kernel_shape=a["kernel_shape"], strides=a.get("strides"),
                                     pads=a.get("pads"), count_include_pad=int(a.get("count_include_pad", 0)),
                                     ceil_mode=int(a.get("ceil_mode", 0)), auto_pad=a.get("auto_pad", "NOTSET"),
                                     channels_last=int(a.get("channels_last", 0)))]
    if op == "QLinearSigmoid":
        return [qlinear_sigmoid(*args[:4], _opt(args, 4))]
    if op == "QLinearLeakyRelu":
        return [qlinear_leaky_relu(*args[:4], _opt(args, 4), alpha=float(a.get("alpha", 0.01)))]
    if op == "MaxPool" and x.dtype.kind in "iu":
        return [max_pool_codes(x, kernel_shape=a["kernel_shape"], strides=a.get("strides"), pads=a.get("pads"),
                               dilations=a.get("dilations"), ceil_mode=int(a.get("ceil_mode", 0)),
                               auto_pad=a.get("auto_pad", "NOTSET"))]
    if op in ("Relu", "Clip") and x.dtype.kind in "iu":
        lo = np.iinfo(x.dtype).min if op == "Relu" or _opt(args, 1) is None else args[1]
        lo = 0 if op == "Relu" else lo
        hi = np.iinfo(x.dtype).max if op == "Relu" or _opt(args, 2) is None else args[2]
        return [np.clip(x, lo, hi).astype(x.dtype)]
    return [_float_node(node, args)]


def _float_node(node, args):
    """The float ops, in the input's float dtype (float32 as onnxruntime; float64 for float_reference)."""
    a, op, x = node.attrs, node.op, args[0]
    if op == "Conv":
        return _float_conv(x, args[1], _opt(args, 2), a)
    if op == "Gemm":
        return ops.gemm(x, args[1], _opt(args, 2), alpha=float(a.get("alpha", 1.0)), beta=float(a.get("beta", 1.0)),
                        trans_a=bool(a.get("transA", 0)), trans_b=bool(a.get("transB", 0)))
    if op == "MatMul":
        return np.matmul(x, args[1])
    if op == "ReduceMean":
        return ops.reduce_mean(x, _axes(args, a, x.ndim), keepdims=bool(a.get("keepdims", 1)))
    if op == "GlobalAveragePool":
        return ops.global_avg_pool(x)
    if op in ("MaxPool", "AveragePool"):
        k = tuple(a["kernel_shape"])
        pads = _conv_pads(x, np.empty((1, 1) + k), a)
        kw = dict(kernel_size=k, stride=tuple(a.get("strides", (1, 1))), padding=pads,
                  ceil_mode=bool(a.get("ceil_mode", 0)))
        if op == "MaxPool":
            return ops.max_pool2d(x, dilation=tuple(a.get("dilations", (1, 1))), **kw)
        return ops.avg_pool2d(x, count_include_pad=bool(a.get("count_include_pad", 0)), **kw)
    if op in ("Add", "Sub", "Mul", "Div"):
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](x, args[1])
    if op == "Relu":
        return np.maximum(x, x.dtype.type(0))
    if op == "Clip":
        return ops.clip(x, _opt(args, 1), _opt(args, 2))
    if op == "Sigmoid":
        return ops.sigmoid(x)
    if op == "Flatten":
        return ops.flatten(x, axis=int(a.get("axis", 1)))
    if op == "Reshape":
        return ops.reshape(x, args[1], allowzero=bool(a.get("allowzero", 0)))
    if op == "Identity":
        return x
    if op == "Transpose":
        return np.transpose(x, a.get("perm"))
    if op == "Squeeze":
        axes = _opt(args, 1) if _opt(args, 1) is not None else a.get("axes")
        return np.squeeze(x, axis=None if axes is None else tuple(int(v) for v in axes))
    if op == "Unsqueeze":
        axes = _opt(args, 1) if _opt(args, 1) is not None else a.get("axes")
        return np.expand_dims(x, tuple(int(v) for v in axes))
    if op == "Concat":
        return np.concatenate(args, axis=int(a["axis"]))
    if op == "Softmax":
        return ops.softmax(x, axis=int(a.get("axis", -1)))
    raise ValueError(f"sqref cannot run {op}")


def float_reference(node: Node, args: list):
    """(value, bound) of a float reduction node in float64 from its (float32) inputs: the exact-ish
    value, and a bound on |float32 result - value| for ANY summation order, as onnxruntime's MLAS
    may sum: gamma_n * sum|terms| with gamma_n = n u / (1 - n u), u = 2**-24, n the terms per
    output (+1 for a bias), plus one rounding of the result. None for other nodes."""
    if node.op not in REDUCTIONS:
        return None
    x64 = [None if v is None else np.asarray(v, np.float64) for v in args]
    value = np.asarray(_float_node(node, x64), np.float64)
    absolute = [None if v is None else np.abs(v) for v in x64]
    if node.op in ("ReduceMean", "GlobalAveragePool"):
        size = x64[0].size // max(value.size, 1)
        sums = np.asarray(_float_node(node, absolute), np.float64)  # mean of |x|
    else:
        if node.op == "Conv":
            w = x64[1]
            size = int(np.prod(w.shape[1:])) + (1 if _opt(args, 2) is not None else 0)
        else:
            k = x64[0].shape[0] if node.op == "Gemm" and node.attrs.get("transA") else x64[0].shape[-1]
            size = k + (1 if _opt(args, 2) is not None else 0)
        sums = np.asarray(_float_node(node, absolute), np.float64)
    gamma = size * U32 / (1 - size * U32)
    return value, gamma * sums + U32 * np.abs(value)
