"""ONNX out: export an IntegerModel as a QOperator ONNX graph, and run it (onnxruntime, the ONNX reference).

Export (``export_onnx``) writes the integer model as onnxruntime runs it:

    input (float32) -> QuantizeLinear -> [layers on uint8] -> DequantizeLinear -> logits (float32)

    conv2d          QLinearConv (int8 weights, zero point 0, per-tensor or per-channel
                    scales, int32 bias B)
    linear          bias-free: QLinearMatMul (b = W^T, per-column scales)
                    with bias: Reshape (N, IN, 1, 1) -> 1x1 QLinearConv -> Flatten
                    # NOTE: QLinearMatMul has no bias input, and onnxruntime's own
                    # quantizer adds it with a second requantization (QLinearAdd), which is
                    # not sqref's arithmetic (the int32 bias inside the accumulator). A 1x1
                    # QLinearConv is the standard op that has it.
    fused ReLU      nothing when z_y = 0 (the uint8 saturation is the clamp; every
                    calibrated ReLU has z_y = 0), else Max(y, z_y)
    ReLU (unfused)  Max(x, z_x) on uint8
    max_pool2d      MaxPool on uint8
    avg_pool2d      com.microsoft QLinearAveragePool (count_include_pad=1)
    flatten         Flatten(axis=1)
    pad             Pad (constant z_x) on uint8
    clip            fused: nothing (the producer's clamp and saturation); else Clip on uint8
                    with the quantized bounds
    add             com.microsoft QLinearAdd (+ Max(y, z_y) for a fused ReLU with z_y > 0)
    global pool     com.microsoft QLinearGlobalAveragePool (+ Flatten without keepdims)

A graph model's layers read the tensors named in its wiring ("input" is input_q).

Every layer's output is a graph output named after the layer (uint8), next
to ``input_q`` (the quantized input) and ``logits``, so a backend can be
compared layer by layer. Opset 21, IR version 10.

Import of float ONNX models is sqref.backends.onnx_import.
"""
from __future__ import annotations

import os

import numpy as np

from sqref import integer
from sqref.backends import onnx_package

OPSET = 21
IR_VERSION = 10


# ----------------------------------------------------------------------------- export


QUANT_FORMATS = ("qoperator", "qdq")


def export_onnx(imodel: integer.IntegerModel, path=None, *, input_dtype="float32", weight_dtype="int8",
                quant_format="qoperator", overwrite=False):
    """The ONNX QOperator (or QDQ) graph of an IntegerModel (see the module docstring); written to ``path`` if given.

    input_dtype   "float32": the graph input is float images, quantized by QuantizeLinear;
                  "uint8": the graph input is the input codes themselves.
    weight_dtype  "int8": the codes as they are (zero point 0): onnxruntime's u8 x s8
                  kernels, which saturate int16 pairs on AVX2 without VNNI (reproduced
                  by run_integer(accumulate="int16-pairs"));
                  "uint8": the codes + 128 with zero point 128, the same integers
                  (w + 128) - 128 = w, run by onnxruntime's u8 x u8 kernels, which are
                  exact (run_integer(accumulate="exact")).
    quant_format  "qoperator" (the table above) or "qdq": conv, linear, add, average and
                  global average pools written as DequantizeLinear -> float op ->
                  QuantizeLinear, with the weights and the int32 bias as DequantizeLinear
                  of their codes (bias scale float32(s_x) * s_w, the scale the int32 bias was
                  made with), as onnxruntime's quantize_static writes QDQ models; onnxruntime's
                  optimizer fuses them back into QLinearConv, QGemm, QLinearAdd, ... (every other
                  layer is the same node on uint8 as in QOperator format)
    Returns the onnx.ModelProto (checked by onnx.checker).
    """
    onnx = onnx_package()
    if quant_format not in QUANT_FORMATS:
        raise ValueError(f"quant_format must be one of {QUANT_FORMATS}, got {quant_format!r}")
    from onnx import TensorProto, helper, numpy_helper

    if weight_dtype not in ("int8", "uint8"):
        raise ValueError(f"weight_dtype must be 'int8' or 'uint8', got {weight_dtype!r}")
    w_np, w_offset = (np.int8, 0) if weight_dtype == "int8" else (np.uint8, 128)

    def weights(name, codes):
        return const(name, codes.astype(np.int16) + w_offset, w_np)

    if input_dtype not in ("float32", "uint8"):
        raise ValueError(f"input_dtype must be 'float32' or 'uint8', got {input_dtype!r}")
    nodes, inits, outputs = [], [], []

    def const(name, value, dtype):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def qparams(prefix, p):
        return const(f"{prefix}_scale", np.float32(p.scale), np.float32), const(f"{prefix}_zp", p.zero_point, np.uint8)

    shape = ["N", *imodel.input_shape]
    p_in = imodel.input
    if input_dtype == "float32":
        graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
        s, z = qparams("input", p_in)
        nodes.append(helper.make_node("QuantizeLinear", ["input", s, z], ["input_q"], name="quantize_input"))
    else:
        graph_input = helper.make_tensor_value_info("input_q", TensorProto.UINT8, shape)
    outputs.append(helper.make_tensor_value_info("input_q", TensorProto.UINT8, shape))

    def dq(tensor, p, tag):
        """DequantizeLinear of a uint8 activation with parameters p: the name of the float tensor."""
        s_, z_ = qparams(f"{tag}_dq", p)
        nodes.append(helper.make_node("DequantizeLinear", [tensor, s_, z_], [f"{tag}_float_in"], name=f"{tag}_dq"))
        return f"{tag}_float_in"

    def qdq_layer(name, layer, inputs):
        """A layer in QDQ form: DequantizeLinear of its inputs (and constants), the float op, QuantizeLinear."""
        float_out = f"{name}_float"
        if isinstance(layer, (integer.IntConv2d, integer.IntLinear)):
            x = dq(inputs[0], layer.x, name)
            w_scale = np.asarray(layer.w_scale, np.float32)
            w = weights(f"{name}_w", layer.weight)
            ws = const(f"{name}_w_scale", w_scale, np.float32)
            wz = const(f"{name}_w_zp", np.full(w_scale.shape, w_offset), w_np)
            nodes.append(helper.make_node("DequantizeLinear", [w, ws, wz], [f"{name}_w_float"], name=f"{name}_w_dq",
                                          axis=0))
            b_scale = (np.float32(layer.x.scale) * np.broadcast_to(w_scale, layer.bias.shape)).astype(np.float32)
            b = const(f"{name}_b", layer.bias, np.int32)
            bs = const(f"{name}_b_scale", b_scale, np.float32)
            bz = const(f"{name}_b_zp", np.zeros(layer.bias.shape), np.int32)
            nodes.append(helper.make_node("DequantizeLinear", [b, bs, bz], [f"{name}_b_float"], name=f"{name}_b_dq",
                                          axis=0))
            if isinstance(layer, integer.IntConv2d):
                (ph, pw) = layer.padding
                nodes.append(helper.make_node(
                    "Conv", [x, f"{name}_w_float", f"{name}_b_float"], [float_out], name=name,
                    kernel_shape=list(layer.weight.shape[2:]), strides=list(layer.stride), pads=[ph, pw, ph, pw],
                    dilations=list(layer.dilation), group=int(layer.groups)))
            else:
                nodes.append(helper.make_node("Gemm", [x, f"{name}_w_float", f"{name}_b_float"], [float_out],
                                              name=name, transB=1))
        elif isinstance(layer, integer.IntAdd):
            a, b = dq(inputs[0], layer.a, f"{name}_a"), dq(inputs[1], layer.b, f"{name}_b")
            nodes.append(helper.make_node("Add", [a, b], [float_out], name=name))
        elif isinstance(layer, integer.IntGlobalAvgPool):
            nodes.append(helper.make_node("GlobalAveragePool", [dq(inputs[0], layer.x, name)], [float_out], name=name))
        else:  # IntAvgPool2d
            (ph, pw) = layer.padding
            nodes.append(helper.make_node("AveragePool", [dq(inputs[0], layer.x, name)], [float_out], name=name,
                                          kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                                          pads=[ph, pw, ph, pw], count_include_pad=1))
        ys, yz = qparams(f"{name}_y", layer.y)
        keep4 = isinstance(layer, integer.IntGlobalAvgPool) and not layer.keepdims
        raw = f"{name}_requant" if getattr(layer, "relu", False) and layer.y.zero_point > 0 else \
            f"{name}_4d" if keep4 else name
        nodes.append(helper.make_node("QuantizeLinear", [float_out, ys, yz], [raw], name=f"{name}_q"))
        if keep4:
            nodes.append(helper.make_node("Flatten", [raw], [name], name=f"{name}_flatten", axis=1))
        elif raw != name:  # a fused ReLU whose zero point is not 0: clamp at z_y
            nodes.append(helper.make_node("Max", [raw, yz], [name], name=f"{name}_relu"))

    qdq_types = (integer.IntConv2d, integer.IntLinear, integer.IntAdd, integer.IntGlobalAvgPool, integer.IntAvgPool2d)
    for name, layer, out_shape, reads in zip(imodel.names, imodel.layers, integer.output_shapes(imodel), imodel.wiring):
        current, *rest = ["input_q" if r == "input" else r for r in reads]
        if quant_format == "qdq" and isinstance(layer, qdq_types):
            qdq_layer(name, layer, [current, *rest])
        elif isinstance(layer, (integer.IntConv2d, integer.IntLinear)):
            xs, xz = qparams(f"{name}_x", layer.x)
            ys, yz = qparams(f"{name}_y", layer.y)
            w_scale = np.asarray(layer.w_scale, np.float32)
            ws = const(f"{name}_w_scale", w_scale, np.float32)
            wz = const(f"{name}_w_zp", np.full(w_scale.shape, w_offset), w_np)
            raw = f"{name}_requant" if layer.relu and layer.y.zero_point > 0 else name
            if isinstance(layer, integer.IntConv2d):
                (ph, pw) = layer.padding
                w = weights(f"{name}_w", layer.weight)
                b = const(f"{name}_b", layer.bias, np.int32)
                nodes.append(helper.make_node(
                    "QLinearConv", [current, xs, xz, w, ws, wz, ys, yz, b], [raw], name=name,
                    kernel_shape=list(layer.weight.shape[2:]), strides=list(layer.stride), pads=[ph, pw, ph, pw],
                    dilations=list(layer.dilation), group=int(layer.groups)))
            elif not np.any(layer.bias):
                w = weights(f"{name}_w", layer.weight.T)  # (IN, OUT): b of y = a @ b
                nodes.append(helper.make_node("QLinearMatMul", [current, xs, xz, w, ws, wz, ys, yz], [raw], name=name))
            else:
                w = weights(f"{name}_w", layer.weight[:, :, None, None])
                b = const(f"{name}_b", layer.bias, np.int32)
                shape4 = const(f"{name}_shape4", [0, -1, 1, 1], np.int64)
                nodes.append(helper.make_node("Reshape", [current, shape4], [f"{name}_4d"], name=f"{name}_to4d"))
                nodes.append(helper.make_node("QLinearConv", [f"{name}_4d", xs, xz, w, ws, wz, ys, yz, b],
                                              [f"{name}_conv"], name=name, kernel_shape=[1, 1]))
                nodes.append(helper.make_node("Flatten", [f"{name}_conv"], [raw], name=f"{name}_to2d", axis=1))
            if raw != name:  # a fused ReLU whose zero point is not 0: clamp at z_y
                nodes.append(helper.make_node("Max", [raw, yz], [name], name=f"{name}_relu"))
        elif isinstance(layer, integer.IntReLU):
            if layer.fused:
                nodes.append(helper.make_node("Identity", [current], [name], name=name))
            else:
                z = const(f"{name}_zp", layer.x.zero_point, np.uint8)
                nodes.append(helper.make_node("Max", [current, z], [name], name=name))
        elif isinstance(layer, integer.IntMaxPool2d):
            (ph, pw) = layer.padding
            nodes.append(helper.make_node("MaxPool", [current], [name], name=name, kernel_shape=list(layer.kernel_size),
                                          strides=list(layer.stride), pads=[ph, pw, ph, pw]))
        elif isinstance(layer, integer.IntAvgPool2d):
            (ph, pw) = layer.padding
            xs, xz = qparams(f"{name}_x", layer.x)
            nodes.append(helper.make_node("QLinearAveragePool", [current, xs, xz, xs, xz], [name], name=name,
                                          domain="com.microsoft", kernel_shape=list(layer.kernel_size),
                                          strides=list(layer.stride), pads=[ph, pw, ph, pw], count_include_pad=1))
        elif isinstance(layer, integer.IntFlatten):
            nodes.append(helper.make_node("Flatten", [current], [name], name=name, axis=1))
        elif isinstance(layer, integer.IntPad):
            top, left, bottom, right = layer.pads
            pads = const(f"{name}_pads", [0, 0, top, left, 0, 0, bottom, right], np.int64)
            z = const(f"{name}_zp", layer.x.zero_point, np.uint8)
            nodes.append(helper.make_node("Pad", [current, pads, z], [name], name=name, mode="constant"))
        elif isinstance(layer, integer.IntClip):
            if layer.fused:
                nodes.append(helper.make_node("Identity", [current], [name], name=name))
            else:
                lo, hi = const(f"{name}_lo", layer.q_lo, np.uint8), const(f"{name}_hi", layer.q_hi, np.uint8)
                nodes.append(helper.make_node("Clip", [current, lo, hi], [name], name=name))
        elif isinstance(layer, integer.IntAdd):
            (a_s, a_z), (b_s, b_z) = qparams(f"{name}_a", layer.a), qparams(f"{name}_b", layer.b)
            ys, yz = qparams(f"{name}_y", layer.y)
            raw = f"{name}_requant" if layer.relu and layer.y.zero_point > 0 else name
            nodes.append(helper.make_node("QLinearAdd", [current, a_s, a_z, rest[0], b_s, b_z, ys, yz], [raw],
                                          name=name, domain="com.microsoft"))
            if raw != name:
                nodes.append(helper.make_node("Max", [raw, yz], [name], name=f"{name}_relu"))
        elif isinstance(layer, integer.IntGlobalAvgPool):
            xs, xz = qparams(f"{name}_x", layer.x)
            ys, yz = qparams(f"{name}_y", layer.y)
            pooled = name if layer.keepdims else f"{name}_4d"
            nodes.append(helper.make_node("QLinearGlobalAveragePool", [current, xs, xz, ys, yz], [pooled], name=name,
                                          domain="com.microsoft", channels_last=0))
            if not layer.keepdims:
                nodes.append(helper.make_node("Flatten", [pooled], [name], name=f"{name}_flatten", axis=1))
        else:
            raise TypeError(f"layer {name!r}: no ONNX export for {type(layer).__name__}")
        outputs.append(helper.make_tensor_value_info(name, TensorProto.UINT8, ["N", *out_shape]))

    last, current = imodel.layers[-1].y, imodel.names[-1]
    s, z = qparams("logits", last)
    nodes.append(helper.make_node("DequantizeLinear", [current, s, z], ["logits"], name="dequantize_logits"))
    outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", *out_shape]))
    graph = helper.make_graph(nodes, "sqref_integer_model", [graph_input], outputs, initializer=inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if any(n.domain == "com.microsoft" for n in nodes):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="sqref")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    if path is not None:
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path}: already exists (use --force / overwrite=True to replace it)")
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(model.SerializeToString())
        os.replace(tmp, path)
    return model


def ort_session(model, *, threads=1, optimize=True):
    """An onnxruntime CPU InferenceSession of a ModelProto (or path)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run_onnxruntime(imodel: integer.IntegerModel, x, *, weight_dtype="int8", threads=1, optimize=True,
                    quant_format="qoperator"):
    """Run the exported model in onnxruntime: returns (logits float32, {output name: array}).

    x: float images (fed to QuantizeLinear) or uint8 input codes (fed past it).
    quant_format: "qoperator" or "qdq" (export_onnx); a QDQ model needs optimize=True to be fused.
    """
    x = np.asarray(x)
    input_dtype = "uint8" if x.dtype == np.uint8 else "float32"
    model = export_onnx(imodel, input_dtype=input_dtype, weight_dtype=weight_dtype, quant_format=quant_format)
    session = ort_session(model, threads=threads, optimize=optimize)
    feed = {"input_q" if input_dtype == "uint8" else "input": x if input_dtype == "uint8" else x.astype(np.float32)}
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feed)
    out = dict(zip(names, values))
    return out.pop("logits"), out


def run_onnx_reference(imodel: integer.IntegerModel, x, *, weight_dtype="int8"):
    """Run the exported model in ONNX's reference evaluator: returns (logits float32, {output name: array}).

    x as run_onnxruntime. The reference evaluator has no com.microsoft ops, so a model
    with an average pool, an add or a global average pool is a ValueError.
    """
    from onnx.reference import ReferenceEvaluator

    contrib = sorted({layer.kind for layer in imodel.layers
                      if isinstance(layer, (integer.IntAvgPool2d, integer.IntAdd, integer.IntGlobalAvgPool))})
    if contrib:
        raise ValueError(f"the ONNX reference evaluator has no quantized {', '.join(contrib)} (onnxruntime's "
                         f"com.microsoft contrib ops); verify this model with onnxruntime")
    x = np.asarray(x)
    input_dtype = "uint8" if x.dtype == np.uint8 else "float32"
    model = export_onnx(imodel, input_dtype=input_dtype, weight_dtype=weight_dtype)
    feed = {"input_q" if input_dtype == "uint8" else "input": x if input_dtype == "uint8" else x.astype(np.float32)}
    names = [o.name for o in model.graph.output]
    out = dict(zip(names, ReferenceEvaluator(model).run(names, feed)))
    return out.pop("logits"), out
