"""Import of float ONNX models as sqref graph models (docs/backends.md, "Import").

    import_onnx(path or ModelProto) -> sqref.model.Model

What it reads: any directed acyclic graph of the ops in IMPORTED_OPS, as
torch's two exporters write them (the dynamo exporter, torch's default, with
or without its optimizer, and the TorchScript exporter), opset 13 and later.

How, in four steps:

1. Constants. Initializers, `Constant` nodes, and every node whose inputs
   are all constants are evaluated once, by ONNX's own reference evaluator
   (the semantics of the op as ONNX defines them): Transpose or Reshape of
   weights, CastLike/Expand of BatchNormalization statistics,
   `Shape -> Gather -> Concat -> Reshape` shape arithmetic, ConstantOfShape.
   `Shape` of a tensor reads its static shape (ONNX shape inference); a
   symbolic batch axis reads as BATCH_SENTINEL, which a Reshape target may
   carry only in its batch position.
2. Aliases. Identity and Dropout (inference) pass their input through; a
   final Softmax or LogSoftmax that is a graph output is dropped (sqref models
   return logits; argmax is unchanged).
3. Layers. Each remaining node becomes one sqref layer named after its torch
   module where the weight's name gives it ("layer1.0.conv1"), else after the
   node. A BatchNormalization whose input is a convolution or linear layer
   read by nothing else is folded into it (sqref.ops.fold_batchnorm); an Add
   of a constant to such a layer without bias becomes its bias; otherwise
   each is a layer of its own.
4. Outputs. The graph's declared outputs are the model's outputs; layers that
   no output depends on are dropped.

Every failure is an OnnxImportError (a ValueError) of one line naming the
file, and for an unsupported node its name, its op and the supported list.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat

import numpy as np

from sqref.backends import onnx_package
from sqref.fileformat import check_model
from sqref.hdf5 import FileFormatError, active_pins, open_regular
from sqref.model import (INPUT, Add, AvgPool2d, BatchNorm, Clip, Concat, Conv2d, Div, Flatten, GlobalAvgPool,
                         HardSigmoid, HardSwish, Linear, MaxPool2d, Model, Mul, Pad, ReLU, Reshape, Sigmoid, toposort)
from sqref.ops import fold_batchnorm, same_pads

IMPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid",
                "HardSwish", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
                "Flatten", "Reshape", "Concat", "Pad", "BatchNormalization", "Identity", "Dropout", "Softmax",
                "LogSoftmax")
MIN_OPSET = 13  # older opsets carry Clip's bounds and others as attributes; the tests use 13 to 21 and onnx's newest
MAX_ONNX_BYTES = 2**31  # protobuf's own limit for one message
BATCH_SENTINEL = 7919  # what Shape reads for a symbolic batch axis (a prime no layer size is likely to be)
NONDETERMINISTIC = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli")


class OnnxImportError(ValueError):
    """An ONNX model sqref cannot import: one line naming the file and the problem."""


def read_onnx(path):
    """(ModelProto, SHA-256 of the bytes read) of an ONNX file, read once: the hash is
    of the very bytes decoded. A regular file only (a FIFO is refused without blocking),
    at most MAX_ONNX_BYTES. With an active pin (sqref.hdf5.pinned_sha256,
    --expect-sha256) the bytes must have that hash, and weights kept in external data
    files, which the pin would not cover, are refused; without one, external data is
    read from regular files inside the model's folder (_check_external_data)."""
    from google.protobuf.message import DecodeError

    onnx = onnx_package()
    path = os.fspath(path)
    fh, size = open_regular(path, "an ONNX model", OnnxImportError)
    with fh:
        if size > MAX_ONNX_BYTES:
            raise OnnxImportError(f"{path}: {size} bytes, more than protobuf's {MAX_ONNX_BYTES}")
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    pins = active_pins(path)
    for expected in pins:
        if digest != expected:
            raise FileFormatError(f"{path}: SHA-256 {digest} does not match the expected {expected}")
    try:
        proto = onnx.load_model_from_string(data)
    except DecodeError as exc:
        raise OnnxImportError(f"{path}: not an ONNX model (protobuf could not decode it: {exc})") from None
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external and pins:
        raise OnnxImportError(f"{path}: its weights are in external data files, which --expect-sha256 does not "
                              "cover; import it without the pin (`sqref import`) and pin the .h5")
    if external:
        base = os.path.dirname(os.path.abspath(path))
        _check_external_data(external, base, path)
        onnx.load_external_data_for_model(proto, base)
    return proto, digest


def import_onnx(source, *, tensor_map: bool = False, name: str | None = None):
    """A float ONNX model (a path, read by read_onnx, or a ModelProto) as a sqref
    Model; with `tensor_map`, (model, {layer name: the ONNX tensor its output
    equals}), to compare every intermediate tensor with another runtime. `name`
    is what error messages call a ModelProto (default "ONNX model").

    Refused, each with one line: what read_onnx refuses, an invalid graph,
    unsupported or malformed nodes, and a model that sqref.save would refuse
    (the imported model can always be saved and loaded again).
    """
    onnx = onnx_package()
    is_proto = isinstance(source, onnx.ModelProto)
    name = (name or "ONNX model") if is_proto else os.fspath(source)
    if not is_proto:
        source, _ = read_onnx(source)  # its errors are already one line
    try:
        if is_proto and any(t.data_location == onnx.TensorProto.EXTERNAL for t in source.graph.initializer):
            raise OnnxImportError(f"{name}: initializers keep data in external files; pass the file's path")
        importer = _Importer(source)
        model = importer.model()
        check_model(model, "imported model")
        return (model, importer.tensor_map) if tensor_map else model
    except OnnxImportError:
        raise
    except onnx.checker.ValidationError as exc:
        raise OnnxImportError(f"{name}: invalid ONNX model: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError, OSError, RuntimeError) as exc:
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


def node_attrs(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def attr_text(value):
    return value.decode() if isinstance(value, bytes) else value


class _Importer:
    """One import: the state of the four steps (module docstring)."""

    def __init__(self, model):
        onnx = onnx_package()
        from onnx import numpy_helper

        self.proto = model
        opsets = {o.domain: o.version for o in model.opset_import}
        self.opset = opsets.get("", opsets.get("ai.onnx"))
        if self.opset is None or self.opset < MIN_OPSET:
            raise ValueError(f"opset {self.opset} of the default domain is not supported "
                             f"(sqref imports opset {MIN_OPSET} and later)")
        self.graph = model.graph
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:  # noqa: BLE001 - shape inference is only a help: Shape of an unknown tensor fails later
            inferred = model
        self.static = {}  # tensor -> its full shape, symbolic axes as None
        self.dtypes = {}  # tensor -> its NumPy dtype, where inference knows it
        for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            if not info.type.HasField("tensor_type"):
                continue
            if info.type.tensor_type.HasField("shape"):
                self.static[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                          for d in info.type.tensor_type.shape.dim]
            if info.type.tensor_type.elem_type:
                self.dtypes[info.name] = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.alias = {}  # ONNX tensor -> the ONNX tensor it passes through
        self.layers = []  # [sqref name, layer, [ONNX tensors read], ONNX tensor written]
        self.made_by = {}  # ONNX tensor -> index in self.layers
        self.names = set()
        self.synthetic = set()  # layers the import adds that no ONNX node writes
        readers = {}  # tensor -> how many nodes read its values (Shape and CastLike's model read only its type)
        for node in self.graph.node:
            reads = [] if node.op_type == "Shape" else node.input[:1] if node.op_type == "CastLike" else node.input
            for t in reads:
                readers[t] = readers.get(t, 0) + 1
        for out in self.graph.output:
            readers[out.name] = readers.get(out.name, 0) + 1
        self.readers = readers

    # ---------------------------------------------------------------- helpers
    def pass_through(self, out, t):
        """ONNX tensor `out` is `t` (Identity, Dropout, a dropped Softmax): its
        readers read `t`'s value, which matters to folding."""
        t = self.resolve(t)
        self.alias[out] = t
        self.readers[t] = self.readers.get(t, 0) - 1 + self.readers.get(out, 0)

    def resolve(self, t):
        while t in self.alias:
            t = self.alias[t]
        return t

    def const(self, t, where, what="input"):
        t = self.resolve(t)
        if t not in self.consts:
            raise ValueError(f"{where}: {what} {t!r} must be a constant (an initializer or computed from constants)")
        return np.asarray(self.consts[t])

    def optional_const(self, node, i, where, what):
        return self.const(node.input[i], where, what) if len(node.input) > i and node.input[i] else None

    def unique(self, base):
        base = re.sub(r"[^A-Za-z0-9_.\-]+", "_", base).strip("._") or "layer"
        name, k = base, 1
        while name in self.names or name == INPUT:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def add_layer(self, node, layer, reads, base=None):
        base = base or self.layer_name(node)
        self.made_by[node.output[0]] = len(self.layers)
        self.layers.append([self.unique(base), layer, [self.resolve(t) for t in reads], node.output[0]])

    def sole_layer(self, t, types):
        """The layer writing tensor `t` if it is of `types` and nothing else reads `t`."""
        t = self.resolve(t)
        index = self.made_by.get(t)
        if index is None or self.readers.get(t, 0) != 1 or not isinstance(self.layers[index][1], types):
            return None
        return index

    def fold_into(self, index, layer, tensor):
        """Layer `index` becomes `layer`, which now writes ONNX tensor `tensor`
        (the output of the node folded into it)."""
        entry = self.layers[index]
        del self.made_by[entry[3]]
        entry[1], entry[3] = layer, tensor
        self.made_by[tensor] = index

    def full_shape(self, t):
        return self.static.get(self.resolve(t))

    # ---------------------------------------------------------------- step 1
    def fold(self, node):
        """Evaluate a node whose inputs are all constants (or a Shape of a static
        tensor) into self.consts; False when the node is not foldable."""
        if node.op_type in NONDETERMINISTIC:
            return False
        if node.op_type == "Constant":
            self.consts[node.output[0]] = self.evaluate(node, [])[0]
            return True
        if node.op_type == "Shape" and self.resolve(node.input[0]) not in self.consts:
            shape = self.full_shape(node.input[0])
            if shape is None or any(d is None for d in shape[1:]):
                return False
            value = np.asarray([BATCH_SENTINEL if shape[0] is None else shape[0]] + shape[1:], np.int64)
            attrs = node_attrs(node)
            start, end = attrs.get("start", 0), attrs.get("end", len(value))
            self.consts[node.output[0]] = value[start:end]
            return True
        if node.op_type == "CastLike" and self.resolve(node.input[0]) in self.consts \
                and self.resolve(node.input[1]) not in self.consts and node.input[1] in self.dtypes:
            # a constant cast to a tensor's element type: only the type is read
            self.consts[node.output[0]] = self.consts[self.resolve(node.input[0])].astype(self.dtypes[node.input[1]])
            return True
        present = [t for t in node.input if t]
        if not present or not all(self.resolve(t) in self.consts for t in present):
            return False
        values = [None if not t else self.consts[self.resolve(t)] for t in node.input]
        for out, value in zip(node.output, self.evaluate(node, values)):
            self.consts[out] = np.asarray(value)
        return True

    def evaluate(self, node, values):
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        inputs = [f"in{i}" if v is not None else "" for i, v in enumerate(values)]
        copy = helper.make_node(node.op_type, inputs, [f"out{i}" for i in range(len(node.output))],
                                domain=node.domain)
        copy.attribute.extend(node.attribute)
        feeds = {name: v for name, v in zip(inputs, values) if name}
        graph = helper.make_graph([copy], "fold", [helper.make_tensor_value_info(n, 0, None) for n in feeds],
                                  [helper.make_tensor_value_info(o, 0, None) for o in copy.output])
        model = helper.make_model(graph, opset_imports=list(self.proto.opset_import))
        return ReferenceEvaluator(model).run(None, feeds)

    # ---------------------------------------------------------------- step 3
    def per_sample_const(self, value, t, where):
        """An elementwise constant operand as sqref stores it: without the batch
        axis (ONNX aligns it against the (N, ...) tensor from the right)."""
        value = np.asarray(value, np.float32)
        rank = len(self.full_shape(t) or []) or None
        if rank is not None and value.ndim == rank:
            if value.shape[0] != 1:
                raise ValueError(f"{where}: a constant of shape {value.shape} would broadcast over the batch axis")
            value = value[0]
        return np.ascontiguousarray(value)

    def pads(self, node, attrs, where, kernel, strides, dilations, symmetric):
        auto = attr_text(attrs.get("auto_pad", "NOTSET"))
        if auto in ("NOTSET", "VALID"):
            pads = [0, 0, 0, 0] if auto == "VALID" else list(attrs.get("pads", [0, 0, 0, 0]))
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            shape = self.full_shape(node.input[0])
            if shape is None or len(shape) != 4 or None in shape[2:]:
                raise ValueError(f"{where}: auto_pad={auto} needs the input's static shape")
            pads = [0, 0, 0, 0]
            for axis, (size, k, s, d) in enumerate(zip(shape[2:], kernel, strides, dilations)):
                pads[axis], pads[axis + 2] = same_pads(size, k, s, d, upper=auto == "SAME_UPPER")
        else:
            raise ValueError(f"{where}: auto_pad={auto!r} is not an ONNX value")
        if len(pads) != 4:
            raise ValueError(f"{where}: only 2-D (N, C, H, W) operations are supported, got pads {pads}")
        if symmetric:
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise ValueError(f"{where}: pads {pads} must be symmetric [top, left, bottom, right] with "
                                 f"top == bottom and left == right")
            return (int(pads[0]), int(pads[1]))
        return tuple(int(p) for p in pads)

    def convert(self, node, index):
        op, where = node.op_type, f"node {index} ({node.op_type} {node.name!r})"
        attrs = node_attrs(node)
        if node.domain not in ("", "ai.onnx") or op not in IMPORTED_OPS:
            raise ValueError(f"unsupported ONNX op {(node.domain + '.' if node.domain else '') + op!r} at {where}; "
                             f"sqref imports {', '.join(IMPORTED_OPS)}")
        x = node.input[0]
        if op in ("Identity", "Dropout"):
            if op == "Dropout" and len(node.output) > 1 and node.output[1] and self.readers.get(node.output[1]):
                raise ValueError(f"{where}: the Dropout mask output is not supported")
            self.pass_through(node.output[0], x)
        elif op in ("Softmax", "LogSoftmax"):
            outputs = {o.name for o in self.graph.output}
            if node.output[0] not in outputs or self.readers.get(node.output[0], 0) != 1:
                raise ValueError(f"{where}: {op} is supported only as a graph output (it is dropped: sqref models "
                                 f"output logits)")
            self.pass_through(node.output[0], x)
        elif op == "Conv":
            w = self.const(node.input[1], where, "weight").astype(np.float32)
            if w.ndim != 4:
                raise ValueError(f"{where}: only 2-D convolutions are supported, weight shape {w.shape}")
            b = self.optional_const(node, 2, where, "bias")
            strides, dilations = tuple(attrs.get("strides", [1, 1])), tuple(attrs.get("dilations", [1, 1]))
            top, left, bottom, right = self.pads(node, attrs, where, w.shape[2:], strides, dilations, symmetric=False)
            name = self.layer_name(node, node.input[1])
            if (top, left) != (bottom, right):  # asymmetric (TensorFlow's SAME, fused by exporters): a Pad first
                ph, pw = min(top, bottom), min(left, right)
                pad = Pad((top - ph, left - pw, bottom - ph, right - pw))
                self.layers.append([self.unique((name or "conv") + ".pad"), pad, [self.resolve(x)], None])
                x, top, left = self.layers[-1][0], ph, pw
                self.made_by[x] = len(self.layers) - 1
                self.layers[-1][3] = x
                self.synthetic.add(x)  # no ONNX tensor holds the padded input
            layer = Conv2d(w, None if b is None else b.astype(np.float32), strides, (top, left), dilations,
                           int(attrs.get("group", 1)))
            self.add_layer(node, layer, [x], name)
        elif op == "Gemm":
            if attrs.get("transA", 0):
                raise ValueError(f"{where}: Gemm with transA=1 is not supported (the data must be the left operand)")
            w = self.const(node.input[1], where, "B").astype(np.float64)
            w = (w if attrs.get("transB", 0) else w.T) * attrs.get("alpha", 1.0)
            c = self.optional_const(node, 2, where, "C")
            b = None if c is None else np.broadcast_to(c.astype(np.float64) * attrs.get("beta", 1.0), (w.shape[0],))
            self.add_layer(node, Linear(w.astype(np.float32), None if b is None else b.astype(np.float32)), [x],
                           self.layer_name(node, node.input[1]))
        elif op == "MatMul":
            w = self.const(node.input[1], where, "right operand")
            if w.ndim != 2 or len(self.full_shape(x) or [0, 0]) != 2:
                raise ValueError(f"{where}: MatMul must multiply an (N, IN) tensor by a constant (IN, OUT) matrix")
            self.add_layer(node, Linear(np.ascontiguousarray(w.T).astype(np.float32), None), [x],
                           self.layer_name(node, node.input[1]))
        elif op in ("Add", "Sub", "Mul", "Div"):
            self.binary(node, op, where)
        elif op == "Relu":
            self.add_layer(node, ReLU(), [x])
        elif op == "Clip":
            lo, hi = (self.optional_const(node, i, where, what) for i, what in ((1, "min"), (2, "max")))
            lo = -np.inf if lo is None else float(lo)
            hi = np.inf if hi is None else float(hi)
            self.add_layer(node, ReLU() if (lo, hi) == (0.0, np.inf) else Clip(lo, hi), [x])
        elif op == "Sigmoid":
            self.add_layer(node, Sigmoid(), [x])
        elif op == "HardSigmoid":
            self.add_layer(node, HardSigmoid(float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))), [x])
        elif op == "HardSwish":
            self.add_layer(node, HardSwish(), [x])
        elif op in ("MaxPool", "AveragePool"):
            if op == "MaxPool" and (attrs.get("storage_order", 0) or len(node.output) > 1 and node.output[1]):
                raise ValueError(f"{where}: MaxPool's indices output and storage_order are not supported")
            if "kernel_shape" not in attrs:
                raise ValueError(f"{where}: {op} needs a kernel_shape attribute")
            kernel = tuple(attrs["kernel_shape"])
            if len(kernel) != 2:
                raise ValueError(f"{where}: only 2-D pooling is supported in a model, kernel_shape {list(kernel)}")
            strides, dilations = tuple(attrs.get("strides", [1, 1])), tuple(attrs.get("dilations", [1, 1]))
            pads = self.pads(node, attrs, where, kernel, strides, dilations, symmetric=False)
            pads = pads[:2] if pads[:2] == pads[2:] else pads
            common = dict(kernel_size=kernel, stride=strides, padding=pads, dilation=dilations,
                          ceil_mode=bool(attrs.get("ceil_mode", 0)))
            layer = MaxPool2d(**common) if op == "MaxPool" else \
                AvgPool2d(**common, count_include_pad=bool(attrs.get("count_include_pad", 0)))
            self.add_layer(node, layer, [x])
        elif op == "GlobalAveragePool":
            self.add_layer(node, GlobalAvgPool(), [x])
        elif op == "GlobalMaxPool":
            shape = self.full_shape(x)
            if shape is None or len(shape) != 4 or None in shape[2:]:
                raise ValueError(f"{where}: GlobalMaxPool needs the input's static (N, C, H, W) shape")
            self.add_layer(node, MaxPool2d(tuple(shape[2:]), (1, 1)), [x])
        elif op == "ReduceMean":
            axes = attrs.get("axes") if self.opset < 18 else self.optional_const(node, 1, where, "axes")
            shape = self.full_shape(x)
            rank = len(shape) if shape is not None else 4
            axes = sorted(int(a) % rank for a in np.asarray(axes).reshape(-1)) if axes is not None else None
            if rank != 4 or axes != [2, 3]:
                raise ValueError(f"{where}: ReduceMean is supported over the spatial axes [2, 3] of an (N, C, H, W) "
                                 f"tensor, got axes {axes}")
            self.add_layer(node, GlobalAvgPool(keepdims=bool(attrs.get("keepdims", 1))), [x])
        elif op == "Flatten":
            if attrs.get("axis", 1) != 1:
                raise ValueError(f"{where}: Flatten must use axis=1 (keep the batch axis), got {attrs.get('axis')}")
            self.add_layer(node, Flatten(), [x])
        elif op == "Reshape":
            self.reshape(node, attrs, where)
        elif op == "Pad":
            mode = attr_text(attrs.get("mode", "constant"))
            pads = [int(v) for v in self.const(node.input[1], where, "pads").reshape(-1)]
            value = self.optional_const(node, 2, where, "constant_value")
            if len(node.input) > 3 and node.input[3]:
                raise ValueError(f"{where}: Pad with an axes input is not supported")
            if mode != "constant" or (value is not None and float(np.asarray(value).reshape(-1)[0]) != 0.0):
                raise ValueError(f"{where}: only Pad with zeros (mode constant, value 0) is supported, got mode "
                                 f"{mode!r}")
            if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
                raise ValueError(f"{where}: Pad must pad only H and W of an (N, C, H, W) tensor by >= 0, got {pads}")
            self.add_layer(node, Pad((pads[2], pads[3], pads[6], pads[7])), [x])
        elif op == "Concat":
            shape = self.full_shape(x)
            axis = int(attrs["axis"])
            axis = axis % len(shape) if shape is not None else axis
            if axis < 1:
                raise ValueError(f"{where}: Concat along axis {attrs['axis']} would join batches; axis must be >= 1")
            reads = [t for t in node.input if t]
            if any(self.resolve(t) in self.consts for t in reads):
                raise ValueError(f"{where}: Concat of a constant with a tensor is not supported")
            self.add_layer(node, Concat(axis), reads)
        elif op == "BatchNormalization":
            if attrs.get("training_mode", 0):
                raise ValueError(f"{where}: BatchNormalization in training mode is not supported (export in eval mode)")
            gamma, beta, mean, var = (self.const(t, where, what).astype(np.float32)
                                      for t, what in zip(node.input[1:5], ("scale", "B", "mean", "var")))
            eps = float(attrs.get("epsilon", 1e-5))
            prev = self.sole_layer(x, (Conv2d, Linear))
            if prev is not None and getattr(self.layers[prev][1], "quant", None) is None:
                layer = self.layers[prev][1]
                w, b = fold_batchnorm(layer.weight, layer.bias, gamma=gamma, beta=beta, mean=mean, var=var, eps=eps)
                self.fold_into(prev, dataclasses.replace(layer, weight=w, bias=b), node.output[0])
            else:
                self.add_layer(node, BatchNorm(gamma, beta, mean, var, eps), [x])

    def layer_name(self, node, weight=None):
        """A layer's name, from torch's module names where the file keeps them:
        'layer1.0.conv1' from a weight named 'layer1.0.conv1.weight' (the dynamo
        exporter) or from a node named '/layer1/layer1.0/conv1/Conv' (TorchScript);
        else the name of the layer it reads, then its op: 'layer1.0.conv1.relu'."""
        if weight is not None and self.resolve(weight).endswith(".weight"):
            return self.resolve(weight)[: -len(".weight")]
        parts = [p for p in node.name.split("/") if p][:-1]
        if weight is not None and parts:
            qualified = [parts[0]]
            for part in parts[1:]:  # '/layer1/layer1.0/down/down.0/Conv' -> layer1.0.down.0
                if part.startswith(qualified[-1] + "."):
                    qualified[-1] = part
                else:
                    qualified.append(part)
            return ".".join(qualified)
        source = self.made_by.get(self.resolve(node.input[0])) if node.input else None
        prefix = self.layers[source][0] + "." if source is not None else ""
        return prefix + node.op_type.lower()

    def binary(self, node, op, where):
        a, b = node.input[0], node.input[1]
        ca, cb = self.resolve(a) in self.consts, self.resolve(b) in self.consts
        if ca and op in ("Sub", "Div"):
            raise ValueError(f"{where}: {op} with a constant first operand is not supported")
        if ca and not cb:  # Add and Mul commute
            a, b, ca, cb = b, a, cb, ca
        cls = {"Add": Add, "Sub": Add, "Mul": Mul, "Div": Div}[op]
        if not cb:
            if op == "Sub":
                raise ValueError(f"{where}: Sub of two tensors is not supported")
            self.add_layer(node, cls(), [a, b])
            return
        value = self.const(b, where)
        value = -value if op == "Sub" else value  # a - c == a + (-c) exactly in IEEE arithmetic
        prev = self.sole_layer(a, (Conv2d, Linear)) if op in ("Add", "Sub") else None
        if prev is not None and self.layers[prev][1].bias is None:
            layer = self.layers[prev][1]
            k = layer.weight.shape[0]
            shape = self.full_shape(a) or []
            fits = value.size == k and (value.ndim <= 1 or value.shape[-(len(shape) - 1):][0] == k)
            if fits:
                self.fold_into(prev, dataclasses.replace(layer, bias=value.reshape(k).astype(np.float32)),
                               node.output[0])
                return
        self.add_layer(node, cls(const=self.per_sample_const(value, a, where)), [a])

    def reshape(self, node, attrs, where):
        target = [int(v) for v in self.const(node.input[1], where, "shape").reshape(-1)]
        shape = self.full_shape(node.input[0])
        if shape is None or None in shape[1:]:
            raise ValueError(f"{where}: Reshape needs the input's static shape")
        if not target or not (target[0] in (0, -1, BATCH_SENTINEL) or target[0] == shape[0]):
            raise ValueError(f"{where}: Reshape to {target} changes the batch axis of {shape}")
        if attrs.get("allowzero", 0) and 0 in target:
            raise ValueError(f"{where}: Reshape with allowzero=1 and a 0 in {target} is not supported")
        rest = [shape[i + 1] if v == 0 else v for i, v in enumerate(target[1:])]
        size = int(np.prod(shape[1:]))
        if rest.count(-1) > 1 or any(v < -1 or v == BATCH_SENTINEL for v in rest):
            raise ValueError(f"{where}: Reshape target {target} is not a per-sample shape")
        if -1 in rest:
            known = int(np.prod([v for v in rest if v != -1]))
            rest[rest.index(-1)] = size // known if known and size % known == 0 else -1
        if int(np.prod(rest)) != size or -1 in rest:
            raise ValueError(f"{where}: cannot reshape {shape} to {target}")
        self.add_layer(node, Flatten() if len(rest) == 1 else Reshape(tuple(rest)), [node.input[0]])

    # ---------------------------------------------------------------- all steps
    def model(self) -> Model:
        graph = self.graph
        inputs = [i for i in graph.input if i.name not in self.consts]
        if not inputs:
            raise ValueError("the graph has no data input")
        shapes = []
        for info in inputs:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
            if not 2 <= len(dims) <= 4 or any(d is None or d < 1 for d in dims[1:]):
                raise ValueError(f"graph input {info.name!r} must be (N, C, H, W), (N, C, L) or (N, F) with known "
                                 f"sizes, got {dims}")
            shapes.append(tuple(int(d) for d in dims[1:]))
        rename = {inputs[0].name: INPUT}
        for info in inputs[1:]:
            rename[info.name] = self.unique(info.name)
        available = set(self.consts) | {i.name for i in inputs}
        nodes = list(graph.node)
        # ONNX requires nodes in topological order; sqref checks it rather than trusting it
        produced = {o: i for i, n in enumerate(nodes) for o in n.output if o}
        pairs = [(f"#{i}", [f"#{produced[t]}" for t in n.input if t and t in produced]) for i, n in enumerate(nodes)]
        for index, _ in toposort(pairs, inputs=()):
            node = nodes[int(index[1:])]
            for t in node.input:
                if t and t not in produced and t not in available:
                    raise ValueError(f"node {index[1:]} ({node.op_type} {node.name!r}) reads {t!r}, which no node "
                                     f"writes and no input provides (dangling)")
            if not self.fold(node):
                self.convert(node, int(index[1:]))
        outputs = [self.resolve(o.name) for o in graph.output]
        for o, original in zip(outputs, graph.output):
            if o not in self.made_by:
                raise ValueError(f"graph output {original.name!r} is {'a constant' if o in self.consts else 'an input'}"
                                 f", not computed by a layer")
        names = {onnx_t: entry[0] for onnx_t, entry in ((e[3], e) for e in self.layers)}
        names.update(rename)
        needed, keep = set(outputs), []
        for entry in reversed(self.layers):
            if entry[3] in needed:
                keep.append(entry)
                needed.update(entry[2])
        keep.reverse()
        for name, layer, reads, _ in keep:
            missing = [t for t in reads if t not in names]
            if missing:
                raise ValueError(f"layer {name!r} reads {missing[0]!r}, a constant where sqref needs a tensor")
        self.tensor_map = {e[0]: e[3] for e in keep if e[0] not in self.synthetic}
        return Model(tuple(e[1] for e in keep), shapes[0], tuple(e[0] for e in keep),
                     {"source": "onnx", "producer": self.proto.producer_name,
                      "producer_version": self.proto.producer_version, "opset": self.opset},
                     tuple(tuple(names[t] for t in e[2]) for e in keep), tuple(names[o] for o in outputs),
                     tuple((rename[i.name], s) for i, s in zip(inputs[1:], shapes[1:])))
