"""ONNX in and out: export an IntegerModel as a QOperator ONNX graph, import float ONNX models.

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

Every layer's output is a graph output named after the layer (uint8), next
to ``input_q`` (the quantized input) and ``logits``, so a backend can be
compared layer by layer. Opset 21, IR version 10.

Import (``import_onnx``) reads a FLOAT model made of Conv, Gemm, MatMul (+ Add),
Relu, MaxPool, AveragePool, Flatten/Reshape (to (N, -1)), BatchNormalization
(folded into the preceding Conv/Gemm by sqref.ops.fold_batchnorm), Identity,
Dropout (inference: identity) and a final Softmax/LogSoftmax (dropped: sqref
models output logits) into a sqref Model. Any other op is a ValueError naming it.
"""
from __future__ import annotations

import os
import stat

import numpy as np

from sqref import integer
from sqref.fileformat import check_model
from sqref.model import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU, infer_shapes
from sqref.ops import fold_batchnorm

OPSET = 21
IR_VERSION = 10


def _onnx():
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without onnx
        raise ImportError("sqref.backends.onnx needs the onnx package: pip install onnx") from exc
    return onnx


# ----------------------------------------------------------------------------- export


def export_onnx(imodel: integer.IntegerModel, path=None, *, input_dtype="float32", weight_dtype="int8",
                overwrite=False):
    """The ONNX QOperator graph of an IntegerModel (see the module docstring); written to ``path`` if given.

    input_dtype   "float32": the graph input is float images, quantized by QuantizeLinear;
                  "uint8": the graph input is the input codes themselves.
    weight_dtype  "int8": the codes as they are (zero point 0): onnxruntime's u8 x s8
                  kernels, which saturate int16 pairs on AVX2 without VNNI (reproduced
                  by run_integer(accumulate="int16-pairs"));
                  "uint8": the codes + 128 with zero point 128, the same integers
                  (w + 128) - 128 = w, run by onnxruntime's u8 x u8 kernels, which are
                  exact (run_integer(accumulate="exact")).
    Returns the onnx.ModelProto (checked by onnx.checker).
    """
    onnx = _onnx()
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
    current = "input_q"
    outputs.append(helper.make_tensor_value_info("input_q", TensorProto.UINT8, shape))

    for name, layer, out_shape in zip(imodel.names, imodel.layers, integer.output_shapes(imodel)):
        if isinstance(layer, (integer.IntConv2d, integer.IntLinear)):
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
        else:
            raise TypeError(f"layer {name!r}: no ONNX export for {type(layer).__name__}")
        outputs.append(helper.make_tensor_value_info(name, TensorProto.UINT8, ["N", *out_shape]))
        current = name

    last = imodel.layers[-1].y
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


def run_onnxruntime(imodel: integer.IntegerModel, x, *, weight_dtype="int8", threads=1, optimize=True):
    """Run the exported model in onnxruntime: returns (logits float32, {output name: array}).

    x: float images (fed to QuantizeLinear) or uint8 input codes (fed past it).
    """
    x = np.asarray(x)
    input_dtype = "uint8" if x.dtype == np.uint8 else "float32"
    model = export_onnx(imodel, input_dtype=input_dtype, weight_dtype=weight_dtype)
    session = ort_session(model, threads=threads, optimize=optimize)
    feed = {"input_q" if input_dtype == "uint8" else "input": x if input_dtype == "uint8" else x.astype(np.float32)}
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feed)
    out = dict(zip(names, values))
    return out.pop("logits"), out


def run_onnx_reference(imodel: integer.IntegerModel, x, *, weight_dtype="int8"):
    """Run the exported model in ONNX's reference evaluator: returns (logits float32, {output name: array}).

    x as run_onnxruntime. The reference evaluator has no com.microsoft ops, so a model
    with an average pool (exported as QLinearAveragePool) is a ValueError.
    """
    from onnx.reference import ReferenceEvaluator

    if any(isinstance(layer, integer.IntAvgPool2d) for layer in imodel.layers):
        raise ValueError("the ONNX reference evaluator has no quantized average pool (com.microsoft "
                         "QLinearAveragePool); verify this model with another backend")
    x = np.asarray(x)
    input_dtype = "uint8" if x.dtype == np.uint8 else "float32"
    model = export_onnx(imodel, input_dtype=input_dtype, weight_dtype=weight_dtype)
    feed = {"input_q" if input_dtype == "uint8" else "input": x if input_dtype == "uint8" else x.astype(np.float32)}
    names = [o.name for o in model.graph.output]
    out = dict(zip(names, ReferenceEvaluator(model).run(names, feed)))
    return out.pop("logits"), out


# ----------------------------------------------------------------------------- import

IMPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
                "Reshape", "BatchNormalization", "Identity", "Dropout", "Softmax", "LogSoftmax", "Constant")


def _attrs(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _symmetric_pads(node, attrs, where):
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        raise ValueError(f"{where}: auto_pad={auto} is not supported (export with explicit pads)")
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise ValueError(f"{where}: pads {pads} must be symmetric [top, left, bottom, right] with top == bottom, "
                         f"left == right")
    return (int(pads[0]), int(pads[1]))


class OnnxImportError(ValueError):
    """An ONNX model sqref cannot import: one line naming the file and the problem."""


MAX_ONNX_BYTES = 2**31  # protobuf's own limit for one message


def import_onnx(source):
    """A float ONNX model (path or ModelProto) as a sqref Model (see _import_chain).

    Every failure is an OnnxImportError (a ValueError) with one line: a file that is
    not a regular file or not ONNX protobuf, tensors stored in external files (not
    followed), an invalid graph, unsupported or malformed nodes, and a model that
    sqref.save would refuse (sqref.fileformat.check_model: the imported model can
    always be saved and loaded again).
    """
    from google.protobuf.message import DecodeError

    onnx = _onnx()
    name = "ONNX model" if isinstance(source, onnx.ModelProto) else os.fspath(source)
    try:
        if not isinstance(source, onnx.ModelProto):
            st = os.stat(name)
            if not stat.S_ISREG(st.st_mode):
                raise OnnxImportError(f"{name}: not a regular file")
            if st.st_size > MAX_ONNX_BYTES:
                raise OnnxImportError(f"{name}: {st.st_size} bytes, more than protobuf's {MAX_ONNX_BYTES}")
            source = onnx.load(name, load_external_data=False)
            external = [t for t in source.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
            if external:
                _check_external_data(external, os.path.dirname(os.path.abspath(name)), name)
                onnx.load_external_data_for_model(source, os.path.dirname(os.path.abspath(name)))
        elif any(t.data_location == onnx.TensorProto.EXTERNAL for t in source.graph.initializer):
            raise OnnxImportError("ONNX model: initializers keep data in external files; pass the file's path")
        model = _import_chain(source)
        check_model(model, "imported model")
        return model
    except OnnxImportError:
        raise
    except FileNotFoundError:
        raise OnnxImportError(f"{name}: no such file") from None
    except DecodeError as exc:
        raise OnnxImportError(f"{name}: not an ONNX model (protobuf could not decode it: {exc})") from None
    except onnx.checker.ValidationError as exc:
        raise OnnxImportError(f"{name}: invalid ONNX model: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, KeyError):
            message = f"missing attribute or tensor {message}"
        raise OnnxImportError(f"{name}: {message}") from None


def _check_external_data(tensors, base, name):
    """External tensor data (torch.onnx writes MODEL.onnx.data) is read only from
    regular files inside the model's own folder, within each file's size."""
    for tensor in tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        path = os.path.realpath(os.path.join(base, location))
        if not location or os.path.isabs(location) or os.path.commonpath([path, os.path.realpath(base)]) != \
                os.path.realpath(base):
            raise OnnxImportError(f"{name}: initializer {tensor.name!r} points outside the model's folder "
                                  f"({location!r}); refused")
        if not os.path.isfile(path) or not stat.S_ISREG(os.stat(path).st_mode):
            raise OnnxImportError(f"{name}: external data {location!r} of {tensor.name!r} is not a regular file")
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", 0) or 0)
        if offset < 0 or length < 0 or offset + length > os.path.getsize(path):
            raise OnnxImportError(f"{name}: external data of {tensor.name!r} ({offset}+{length}) runs past the end "
                                  f"of {location!r}")


def _import_chain(source):
    """A float ONNX model (path or ModelProto) as a sqref Model.

    Supported, as one chain from the graph input to its output: Conv, Gemm
    (transA = 0; alpha and beta folded into weight and bias), MatMul with a constant
    right operand followed optionally by Add of a constant (the bias), Relu, MaxPool,
    AveragePool (ceil_mode 0; count_include_pad 1 when padded, sqref's semantics),
    GlobalAveragePool, Flatten (axis 1) and Reshape to (N, -1), BatchNormalization
    (folded into the preceding Conv/Gemm/MatMul: sqref.ops.fold_batchnorm),
    Identity and Dropout (inference: skipped), Constant. A Softmax or LogSoftmax
    is accepted only as the last node and dropped: sqref models output logits
    (argmax is unchanged). Anything else is a ValueError naming the op and node.
    Shapes: the graph input must be (N, C, H, W) or (N, F).
    """
    import dataclasses

    from onnx import numpy_helper


    onnx = _onnx()
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(os.fspath(source))
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise ValueError(f"the graph must have exactly one data input, got {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]):
        raise ValueError(f"graph input {inputs[0].name!r} must be (N, C, H, W) or (N, F) with known sizes, got {dims}")
    input_shape = tuple(int(d) for d in dims[1:])
    current = inputs[0].name
    layers = []
    nodes = list(graph.node)

    def const(name, where):
        if name not in consts:
            raise ValueError(f"{where}: input {name!r} must be a constant (initializer or Constant node)")
        return np.asarray(consts[name])

    def shape_now():
        return infer_shapes(Model(tuple(layers), input_shape))[-1] if layers else input_shape

    for index, node in enumerate(nodes):
        op, where = node.op_type, f"node {index} ({node.op_type} {node.name!r})"
        attrs = _attrs(node)
        if op == "Constant":
            value = attrs.get("value")
            if value is None:
                raise ValueError(f"{where}: only Constant nodes with a 'value' tensor are supported")
            consts[node.output[0]] = numpy_helper.to_array(value)
            continue
        if op not in IMPORTED_OPS:
            raise ValueError(f"unsupported ONNX op {op!r} at {where}; sqref imports {', '.join(IMPORTED_OPS)}")
        if not node.input or node.input[0] != current:
            raise ValueError(f"{where}: sqref imports a single chain of ops; this node reads {list(node.input)}, "
                             f"not the previous output {current!r}")
        if op == "Conv":
            w = const(node.input[1], where).astype(np.float32)
            b = const(node.input[2], where).astype(np.float32) if len(node.input) > 2 and node.input[2] else None
            if w.ndim != 4:
                raise ValueError(f"{where}: only 2-D convolutions are supported, weight shape {w.shape}")
            layers.append(Conv2d(w, b, stride=tuple(attrs.get("strides", [1, 1])), padding=_symmetric_pads(node, attrs, where),
                                 dilation=tuple(attrs.get("dilations", [1, 1])), groups=int(attrs.get("group", 1))))
        elif op == "Gemm":
            if attrs.get("transA", 0):
                raise ValueError(f"{where}: Gemm with transA=1 is not supported")
            w = const(node.input[1], where).astype(np.float64)
            w = w if attrs.get("transB", 0) else w.T
            w = w * attrs.get("alpha", 1.0)
            b = None
            if len(node.input) > 2 and node.input[2]:
                b = np.broadcast_to(const(node.input[2], where).astype(np.float64) * attrs.get("beta", 1.0),
                                    (w.shape[0],))
            layers.append(Linear(w.astype(np.float32), None if b is None else b.astype(np.float32)))
        elif op == "MatMul":
            w = const(node.input[1], where)
            if w.ndim != 2:
                raise ValueError(f"{where}: MatMul needs a constant 2-D right operand, got shape {w.shape}")
            layers.append(Linear(np.ascontiguousarray(w.T).astype(np.float32), None))
        elif op == "Add":
            other = node.input[1]
            prev = layers[-1] if layers else None
            if not isinstance(prev, (Linear, Conv2d)) or prev.bias is not None or other not in consts:
                raise ValueError(f"{where}: Add is supported only as the bias of a bias-free MatMul/Conv")
            b = np.asarray(consts[other], np.float32)
            k = prev.weight.shape[0]
            if isinstance(prev, Conv2d):
                b = b.reshape(-1) if b.size == k else b
            if b.size != k:
                raise ValueError(f"{where}: bias of shape {b.shape} does not fit {k} outputs")
            layers[-1] = dataclasses.replace(prev, bias=np.ascontiguousarray(b.reshape(k)))
        elif op == "BatchNormalization":
            prev = layers[-1] if layers else None
            if not isinstance(prev, (Linear, Conv2d)):
                raise ValueError(f"{where}: BatchNormalization must follow a Conv, Gemm or MatMul to be folded")
            if attrs.get("training_mode", 0):
                raise ValueError(f"{where}: BatchNormalization in training mode cannot be folded")
            gamma, beta, mean, var = (const(n, where) for n in node.input[1:5])
            w, b = fold_batchnorm(prev.weight, prev.bias, gamma=gamma, beta=beta, mean=mean, var=var,
                                  eps=attrs.get("epsilon", 1e-5))
            layers[-1] = dataclasses.replace(prev, weight=w, bias=b)
        elif op == "Relu":
            layers.append(ReLU())
        elif op in ("MaxPool", "AveragePool"):
            if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
                raise ValueError(f"{where}: ceil_mode and dilations are not supported")
            if op == "MaxPool" and (attrs.get("storage_order", 0) or len(node.output) > 1 and node.output[1]):
                raise ValueError(f"{where}: MaxPool indices output / storage_order are not supported")
            if "kernel_shape" not in attrs:
                raise ValueError(f"{where}: {op} needs a kernel_shape attribute")
            kernel = tuple(attrs["kernel_shape"])
            pads = _symmetric_pads(node, attrs, where)
            if op == "AveragePool" and any(pads) and not attrs.get("count_include_pad", 0):
                raise ValueError(f"{where}: a padded AveragePool must have count_include_pad=1 (sqref's semantics)")
            cls = MaxPool2d if op == "MaxPool" else AvgPool2d
            layers.append(cls(kernel, tuple(attrs.get("strides", [1, 1])), pads))
        elif op == "GlobalAveragePool":
            c, h, w = shape_now()
            layers.append(AvgPool2d((h, w), (1, 1), (0, 0)))
        elif op in ("Flatten", "Reshape"):
            if op == "Flatten" and attrs.get("axis", 1) != 1:
                raise ValueError(f"{where}: Flatten must use axis=1, got {attrs.get('axis')}")
            if op == "Reshape":
                target = const(node.input[1], where).reshape(-1).tolist()
                features = int(np.prod(shape_now()))
                batch = dims[0]  # 0 copies the batch size, -1 infers a size
                flat = len(target) == 2 and ((target[1] == features and target[0] in (0, -1, batch))
                                             or (target[1] == -1 and target[0] in (0, batch)))
                if not flat:
                    raise ValueError(f"{where}: Reshape to {target} is not a flatten to (N, {features})")
            layers.append(Flatten())
        elif op in ("Softmax", "LogSoftmax"):
            if index != len(nodes) - 1:
                raise ValueError(f"{where}: {op} is supported only as the last node (it is dropped)")
            break
        # Identity and Dropout: inference no-ops
        current = node.output[0]
    if not layers:
        raise ValueError("the ONNX graph has no layer sqref can import")
    out = Model(tuple(layers), input_shape, meta={"source": "onnx", "producer": model.producer_name})
    infer_shapes(out)
    return out
