"""TFLite in: an int8 ``.tflite`` flatbuffer as an IntegerModel (docs/integer.md, "TFLite import").

    read_tflite(path or bytes) -> sqref.integer.IntegerModel

The inverse of sqref.backends.tflite.build_tflite, and what a typical int8 CNN
from TFLite's converter holds. Parsed with the flatbuffer schema ai-edge-litert
ships (``ai_edge_litert.schema_py_generated``, object API), as the exporter
writes it; no TensorFlow, no pickle. Subgraph 0 is read, operators in their
stored (execution) order. How TFLite's int8 conventions map on sqref's uint8 ones:

    activations  int8 q8 with zero point z8 -> uint8 q8 + 128 with zero point z8 + 128
                 (the same integers shifted: requant adds the zero point after the
                 multiplier, pools and clamps commute with the shift; exact for every op)
    input        an int8 input tensor; or a float32 / uint8 input read by one QUANTIZE
                 (its output's parameters become the model's input parameters)
    output       the int8 tensor itself, or the input of a final DEQUANTIZE
    weights      int8, zero point 0, one scale or one per output channel; OHWI -> OIHW,
                 depthwise (1, KH, KW, C*M) -> (C*M, 1, KH, KW) with groups = C
    bias         int32 (absent: zeros); bias_float = the bias dequantized (bias * s_x * s_w)
    padding      SAME -> TensorFlow's pads (the extra row/column at the bottom/right);
                 a PAD read only by a conv is folded into it; symmetric pads become
                 the conv's padding, asymmetric ones an IntPad before it
    clamps       fused RELU -> the conv/linear/add clamp at z_y (relu=True); fused RELU6
                 -> the same plus an IntClip to the code of 6, unless that code is >= 255;
                 on a pool an IntReLU / IntClip after it
    flatten      RESHAPE / SQUEEZE of (N, H, W, C) to (N, H*W*C): TFLite's flat order
                 is (H, W, C), sqref's (C, H, W); the FULLY_CONNECTED reading it gets
                 its weight columns permuted to sqref's order, so its output is exact.
                 TRANSPOSE(0, 3, 1, 2) + RESHAPE (the exporter's flatten) is sqref's order.
                 A FULLY_CONNECTED reading a 4-D tensor flattens it as a RESHAPE would.
    softmax      a final SOFTMAX is dropped (sqref models return logits), listed in meta["dropped"]

Every failure is a TfliteImportError (a ValueError) of one line naming the
file, and for an operator its index, its name and what is supported.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import numpy as np

from sqref.backends import tflite as tflite_export
from sqref.hdf5 import open_regular
from sqref.integer.calibration import ACT_QMAX, ActParams
from sqref.integer.model import (IntAdd, IntAvgPool2d, IntClip, IntConv2d, IntegerModel, IntFlatten, IntLinear,
                                 IntMaxPool2d, IntPad, IntReLU, check_mode, output_shapes)
from sqref.model import INPUT
from sqref.ops import same_pads  # TensorFlow's SAME: the odd pixel after (TFLite's ComputePaddingHeightWidth)

SUPPORTED_OPS = ("QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D",
                 "AVERAGE_POOL_2D", "RESHAPE", "SQUEEZE", "TRANSPOSE", "PAD", "PADV2", "RELU", "RELU6", "ADD",
                 "SOFTMAX")
SUPPORTED_ACTIVATIONS = ("NONE", "RELU", "RELU6")
MAX_TFLITE_BYTES = 2**31  # a flatbuffer addresses at most 2 GiB (larger models keep buffers outside it)
BYTES_NAME = "TFLite bytes"  # what error messages call a model given as bytes
OFFSET = 128  # sqref's uint8 code = TFLite's int8 code + OFFSET; the same for zero points


def is_tflite(path) -> bool:
    """Whether a path names a TFLite file (by its extension; read_tflite checks the contents)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".tflite")


class TfliteImportError(ValueError):
    """A TFLite file sqref cannot import: one line naming the file and the problem."""


@dataclass(frozen=True)
class _Ref:
    """What a TFLite activation tensor is on sqref's side.

    name     the sqref tensor holding it ("input" or a layer name)
    p        its uint8 ActParams
    layout   "nhwc" (TFLite (N, H, W, C), sqref (N, C, H, W)), "nchw" (after TRANSPOSE(0, 3, 1, 2):
             both (N, C, H, W); only a RESHAPE may read it) or "flat" (both (N, F))
    hwc      for a flat tensor in TFLite's NHWC flatten order, (H, W, C): sqref holds the same values
             in (C, H, W) order; None when both orders agree
    pads     a PAD folded into the conv that reads this tensor: (top, left, bottom, right)
    """

    name: str
    p: ActParams
    layout: str
    hwc: tuple | None = None
    pads: tuple = (0, 0, 0, 0)


def read_tflite(source, *, mode="tflite", tensor_map=False):
    """The IntegerModel of an int8 TFLite flatbuffer (a path or its bytes); see the module docstring.

    ``mode`` is recorded as run_integer's default: "tflite" (TFLite's reference conv); TFLite's
    default XNNPACK delegate computes conv and fully connected as "onnxruntime" (docs/integer.md
    section 6). With ``tensor_map``, also {layer name: (TFLite tensor index, layout, hwc)} for the
    layers whose output is a TFLite tensor, as tflite_to_codes takes them.
    One-line TfliteImportError (a ValueError) for a file that is not a TFLite flatbuffer and for
    every operator or tensor outside what the module docstring lists.
    """
    check_mode(mode)
    data, name = _read_bytes(source)
    schema, model = _parse(data, name)
    try:
        importer = _Importer(schema, model, data, name)
        meta = {"imported_from": "tflite", "sha256": hashlib.sha256(data).hexdigest()}
        if name != BYTES_NAME:
            meta["file"] = os.path.basename(name)
        imodel = importer.integer_model(mode, meta)
    except TfliteImportError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError, ZeroDivisionError,
            struct.error) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TfliteImportError(f"{name}: {message}") from None
    return (imodel, importer.tensor_map) if tensor_map else imodel


def tflite_to_codes(a, layout, hwc=None):
    """A TFLite int8 tensor as sqref's uint8 codes of the same layer (read_tflite's tensor_map gives
    (tensor index, layout, hwc) per layer).

    layout "nhwc": (N, H, W, C) -> (N, C, H, W); "flat": (N, F) as it is, or, with ``hwc`` = (H, W, C),
    (N, H*W*C) in TFLite's flatten order -> (N, C*H*W) in sqref's. Dtypes: int8 in, uint8 out (q + 128).
    """
    q = (np.asarray(a).astype(np.int16) + OFFSET).astype(np.uint8)
    if layout == "nhwc":
        q = q.transpose(0, 3, 1, 2)
    elif layout == "flat" and hwc is not None:
        h, w, c = hwc
        q = q.reshape(len(q), h, w, c).transpose(0, 3, 1, 2).reshape(len(q), -1)
    elif layout != "flat":
        raise ValueError(f"layout must be 'nhwc' or 'flat', got {layout!r}")
    return np.ascontiguousarray(q)


def _read_bytes(source):
    """(bytes, the name error messages use) of a path or of bytes; a regular file only, at most 2 GiB."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), BYTES_NAME
    path = os.fspath(source)
    fh, size = open_regular(path, "a TFLite file", TfliteImportError)
    with fh:
        if size > MAX_TFLITE_BYTES:
            raise TfliteImportError(f"{path}: {size} bytes, more than a flatbuffer's {MAX_TFLITE_BYTES}")
        return fh.read(), path


def _parse(data, name):
    """(schema module, ModelT) of TFLite bytes; TfliteImportError when they are not a TFLite flatbuffer."""
    schema, _ = tflite_export.load_schema()
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise TfliteImportError(f"{name}: not a TFLite flatbuffer (no 'TFL3' file identifier at bytes 4..8)")
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    # NOTE: the flatbuffers package reads hostile offsets with struct, numpy and Python indexing and
    # raises whatever they raise (struct.error, IndexError, ValueError, UnicodeDecodeError, ...): every
    # exception is the same finding, a damaged file, reported in one line.
    except Exception as exc:  # noqa: BLE001
        raise TfliteImportError(f"{name}: not a valid TFLite flatbuffer (truncated or damaged: "
                                f"{type(exc).__name__})") from None
    if not model.subgraphs:
        raise TfliteImportError(f"{name}: the TFLite model has no subgraph")
    return schema, model


def _positive(where, **values):
    """Strides, dilations and kernel sizes read from the file must be >= 1 (a damaged file may hold 0)."""
    for what, pair in values.items():
        if min(pair) < 1:
            raise ValueError(f"{where}: {what} {list(pair)} must be >= 1")


def _round_half_away(v):
    """round(v), ties away from zero (std::round, TFLite's TfLiteRound)."""
    return int(np.sign(v) * np.floor(np.abs(v) + 0.5))


class _Importer:
    """One pass over subgraph 0's operators, building sqref layers and their wiring."""

    def __init__(self, schema, model, data, name):
        self.s, self.model, self.data, self.file = schema, model, data, name
        self.g = model.subgraphs[0]
        self.ops_by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
        self.acts = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
        self.env = {}  # TFLite tensor index -> _Ref
        self.layers, self.names, self.wiring = [], [], []
        self.tensor_map = {}
        self.dropped = []  # operators left out (a final SOFTMAX)
        self.readers = {}  # TFLite tensor index -> indices of the operators reading it
        for i, op in enumerate(self.g.operators or []):
            for t in self._ins(op):
                self.readers.setdefault(t, []).append(i)

    # ------------------------------------------------------------- tensors

    def tensor(self, i):
        tensors = self.g.tensors or []
        if not 0 <= i < len(tensors):
            raise ValueError(f"tensor index {i} out of range (the subgraph has {len(tensors)} tensors)")
        return tensors[i]

    def tname(self, i):
        raw = self.tensor(i).name
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
        return text.split(";")[0]  # the converter joins the names of fused ops with ';': keep the first

    def shape(self, i):
        return tuple(int(d) for d in (self.tensor(i).shape if self.tensor(i).shape is not None else ()))

    def dtype_name(self, i):
        return self.types.get(self.tensor(i).type, str(self.tensor(i).type))

    def act(self, i, where):
        """The uint8 ActParams of an int8 activation tensor: (s, z8) -> (s, z8 + 128); its recorded
        min/max as the range, else the grid's."""
        t = self.tensor(i)
        if t.type != self.s.TensorType.INT8:
            raise ValueError(f"{where}: activation tensor {self.tname(i)!r} is {self.dtype_name(i)}; "
                             f"the integer path reads int8 activations")
        q = t.quantization
        scale = [] if q is None or q.scale is None else list(q.scale)
        zp = [] if q is None or q.zeroPoint is None else list(q.zeroPoint)
        if len(scale) != 1 or len(zp) != 1:
            raise ValueError(f"{where}: activation tensor {self.tname(i)!r} needs one scale and zero point, "
                             f"got {len(scale)} and {len(zp)}")
        z = int(zp[0]) + OFFSET
        if not 0 <= z <= ACT_QMAX:
            raise ValueError(f"{where}: zero point {zp[0]} of {self.tname(i)!r} is outside int8")
        s = float(np.float32(scale[0]))
        has_range = q.min is not None and q.max is not None and len(q.min) == 1 and len(q.max) == 1
        lo, hi = (float(q.min[0]), float(q.max[0])) if has_range else (s * (0 - z), s * (ACT_QMAX - z))
        return ActParams(s, z, lo, hi)

    def const(self, i, where, what, dtype):
        """The data of a constant tensor of TFLite type `dtype` ("INT8", "INT32"...), shaped."""
        t = self.tensor(i)
        if self.types.get(t.type) != dtype:
            raise ValueError(f"{where}: {what} {self.tname(i)!r} is {self.dtype_name(i)}, expected {dtype}")
        if t.sparsity is not None or getattr(t, "externalBuffer", 0):
            raise ValueError(f"{where}: {what} {self.tname(i)!r} is sparse or external; dense constants only")
        buffers = self.model.buffers or []
        b = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
        raw = b""
        if b is not None and b.offset is not None and b.offset > 1:  # kept after the flatbuffer (large models)
            raw = self.data[b.offset:b.offset + b.size]
        elif b is not None and b.data is not None:
            raw = np.asarray(b.data, np.uint8).tobytes()
        np_dtype = np.dtype({"INT8": "i1", "INT32": "<i4", "INT64": "<i8"}[dtype])
        shape = self.shape(i)
        count = int(np.prod(shape, dtype=np.int64))
        if len(raw) != count * np_dtype.itemsize:
            raise ValueError(f"{where}: {what} {self.tname(i)!r} must be a constant of shape {list(shape)}; "
                             f"its buffer holds {len(raw)} bytes")
        return np.frombuffer(raw, np_dtype).reshape(shape).copy()

    def weight_scale(self, i, where, k, axis):
        """Weight scales: float32 () for one, (K,) for one per output channel (quantized dimension `axis`)."""
        q = self.tensor(i).quantization
        scale = np.asarray([] if q is None or q.scale is None else q.scale, np.float32)
        zp = np.asarray([] if q is None or q.zeroPoint is None else q.zeroPoint, np.int64)
        if scale.size == 0 or np.any(zp != 0):
            raise ValueError(f"{where}: weights {self.tname(i)!r} must be symmetric int8 (zero point 0, a scale), "
                             f"got zero points {zp.tolist()[:4]}")
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ValueError(f"{where}: weight scales must be finite and > 0, got {scale.tolist()[:4]}")
        if scale.size == 1:
            return scale.reshape(())
        if scale.size != k or q.quantizedDimension != axis:
            raise ValueError(f"{where}: per-channel weight scales must be {k}, one per output channel (quantized "
                             f"dimension {axis}); got {scale.size} along dimension {q.quantizedDimension}")
        return scale

    def bias(self, op, where, k, x, w_scale):
        """(int32 bias (K,), float32 bias dequantized: b * s_x * s_w)."""
        ins = self._ins(op, keep_absent=True)
        if len(ins) < 3 or ins[2] < 0:
            return np.zeros(k, np.int32), np.zeros(k, np.float32)
        b = self.const(ins[2], where, "bias", "INT32")
        if b.shape != (k,):
            raise ValueError(f"{where}: bias shape {list(b.shape)} does not match K = {k}")
        s_b = np.float64(np.float32(x.scale)) * np.broadcast_to(w_scale, (k,)).astype(np.float64)
        return b.astype(np.int32), (b * s_b).astype(np.float32)

    # ------------------------------------------------------------- operators

    def _ins(self, op, keep_absent=False):
        return [int(t) for t in (op.inputs if op.inputs is not None else []) if keep_absent or t >= 0]

    def op_name(self, op):
        codes = self.model.operatorCodes or []
        if not 0 <= op.opcodeIndex < len(codes):
            raise ValueError(f"operator code index {op.opcodeIndex} out of range")
        oc = codes[op.opcodeIndex]
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))  # as TFLite's GetBuiltinCode
        if code == self.s.BuiltinOperator.CUSTOM:
            custom = oc.customCode.decode("utf-8", "replace") if isinstance(oc.customCode, bytes) else oc.customCode
            return f"CUSTOM {custom!r}"
        return self.ops_by_code.get(code, f"builtin {code}")

    def ref(self, i, where, layouts=("nhwc", "flat")):
        if i not in self.env:
            raise ValueError(f"{where}: reads {self.tname(i)!r}, which is neither the model input nor an "
                             f"activation an earlier operator wrote (constant data input?)")
        r = self.env[i]
        if r.layout not in layouts:
            raise ValueError(f"{where}: reads {self.tname(i)!r} in layout {r.layout}; expected {' or '.join(layouts)}")
        return r

    def add(self, layer, reads, name, tensor=None, layout=None, hwc=None):
        """Append a sqref layer under a unique name; record which TFLite tensor it equals."""
        base = name or f"layer{len(self.layers)}"
        name, n = base, 1
        while name == INPUT or name in self.names:
            name, n = f"{base}_{n}", n + 1
        self.layers.append(layer)
        self.names.append(name)
        self.wiring.append(tuple(reads))
        if tensor is not None:
            self.tensor_map[name] = (tensor, layout, hwc)
        return name

    def activation_fn(self, options, where):
        fn = self.acts.get(options.fusedActivationFunction, str(options.fusedActivationFunction))
        if fn not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"{where}: fused activation {fn} is not supported; supported: "
                             f"{', '.join(SUPPORTED_ACTIVATIONS)}")
        return fn

    def relu6_code(self, y: ActParams):
        """The uint8 code of real 6 on grid y, as TFLite's CalculateActivationRangeQuantized:
        z + round_half_away(float32(6) / float32(s)), saturated to 255."""
        return min(ACT_QMAX, y.zero_point + _round_half_away(float(np.float32(6.0) / np.float32(y.scale))))

    def finish(self, layer_fn, fn, y, reads, out, layout, hwc=None):
        """Append a conv/linear/add (layer_fn(relu)) and the clamp its fused activation needs beyond
        relu=True: an IntClip to the code of 6 for a RELU6 whose 6 is below code 255."""
        name = self.tname(out)
        if fn == "RELU6" and self.relu6_code(y) < ACT_QMAX:
            pre = self.add(layer_fn(True), reads, f"{name}_pre_relu6")
            name = self.add(IntClip(y, False, y.zero_point, self.relu6_code(y)), (pre,), name, out, layout, hwc)
        else:
            name = self.add(layer_fn(fn != "NONE"), reads, name, out, layout, hwc)
        self.env[out] = _Ref(name, y, layout, hwc)

    def after_pool(self, layer, fn, reads, out):
        """A pool, and its fused activation as a layer after it (same parameters): RELU -> IntReLU,
        RELU6 -> IntClip."""
        name, p = self.tname(out), layer.x
        if fn == "NONE":
            return self.add(layer, reads, name, out, "nhwc")
        pre = self.add(layer, reads, f"{name}_pre_{fn.lower()}")
        clamp = IntReLU(p, False) if fn == "RELU" else IntClip(p, False, p.zero_point, self.relu6_code(p))
        return self.add(clamp, (pre,), name, out, "nhwc")

    def conv(self, op, where, depthwise):
        ins, out = self._ins(op, keep_absent=True), op.outputs[0]
        x = self.ref(ins[0], where, ("nhwc",))
        n, h, w, c = self.shape(ins[0])
        o = op.builtinOptions
        _positive(where, input_shape=(n, h, w, c))
        if depthwise:
            wt = self.const(ins[1], where, "weights", "INT8")  # (1, KH, KW, C*M)
            if wt.ndim != 4 or wt.shape[0] != 1 or wt.shape[3] % c:
                raise ValueError(f"{where}: depthwise weights {list(wt.shape)} must be (1, KH, KW, C*M), C = {c}")
            weight, groups = np.ascontiguousarray(wt[0].transpose(2, 0, 1)[:, None]), c  # (C*M, 1, KH, KW)
            w_scale = self.weight_scale(ins[1], where, wt.shape[3], axis=3)
        else:
            wt = self.const(ins[1], where, "weights", "INT8")  # (K, KH, KW, C/groups)
            if wt.ndim != 4 or wt.shape[3] < 1 or c % wt.shape[3]:
                raise ValueError(f"{where}: weights {list(wt.shape)} must be (K, KH, KW, C/groups), C = {c}")
            weight, groups = np.ascontiguousarray(wt.transpose(0, 3, 1, 2)), c // wt.shape[3]
            w_scale = self.weight_scale(ins[1], where, wt.shape[0], axis=0)
        k, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
        stride, dilation = (int(o.strideH), int(o.strideW)), (int(o.dilationHFactor), int(o.dilationWFactor))
        _positive(where, stride=stride, dilation=dilation, kernel=(kh, kw))
        if o.padding == self.s.Padding.SAME:
            (t, b), (l, r) = same_pads(h, kh, stride[0], dilation[0]), same_pads(w, kw, stride[1], dilation[1])
        else:
            t = b = l = r = 0
        pt, pl, pb, pr = x.pads
        pads = (t + pt, l + pl, b + pb, r + pr)
        y = self.act(out, where)
        fn = self.activation_fn(o, where)
        bias, bias_float = self.bias(op, where, k, x.p, w_scale)
        reads = (x.name,)
        if pads[0] != pads[2] or pads[1] != pads[3]:  # asymmetric (SAME with an odd total): pad first
            reads = (self.add(IntPad(x.p, pads), reads, f"{self.tname(out)}_pad"),)
            padding = (0, 0)
        else:
            padding = (pads[0], pads[1])

        def layer(relu):
            return IntConv2d(weight, w_scale, bias, bias_float, x.p, y, relu=relu, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
        self.finish(layer, fn, y, reads, out, "nhwc")

    def fully_connected(self, op, where):
        ins, out = self._ins(op, keep_absent=True), op.outputs[0]
        x = self.ref(ins[0], where, ("nhwc", "nchw", "flat"))
        o = op.builtinOptions
        if o is not None and (o.weightsFormat != 0 or (o.keepNumDims and len(self.shape(ins[0])) != 2)):
            raise ValueError(f"{where}: only the default weights format without keep_num_dims is supported")
        wt = self.const(ins[1], where, "weights", "INT8")  # (OUT, IN)
        if wt.ndim != 2:
            raise ValueError(f"{where}: weights {list(wt.shape)} must be (OUT, IN)")
        k = wt.shape[0]
        w_scale = self.weight_scale(ins[1], where, k, axis=0)
        reads, hwc = (x.name,), x.hwc
        if x.layout != "flat":  # FULLY_CONNECTED flattens a 4-D input in its own (TFLite) layout
            _, d1, d2, d3 = self.shape(ins[0])
            hwc = (d1, d2, d3) if x.layout == "nhwc" and d3 > 1 and d1 * d2 > 1 else None
            reads = (self.add(IntFlatten(x.p), reads, f"{self.tname(out)}_flatten"),)
        if hwc is not None:  # TFLite's columns are in (H, W, C) order, sqref's features in (C, H, W)
            h, w, c = hwc
            if wt.shape[1] != h * w * c:
                raise ValueError(f"{where}: weights {list(wt.shape)} do not match {h * w * c} input features")
            wt = wt.reshape(k, h, w, c).transpose(0, 3, 1, 2).reshape(k, h * w * c)
        weight = np.ascontiguousarray(wt)
        y = self.act(out, where)
        fn = self.activation_fn(o, where) if o is not None else "NONE"
        bias, bias_float = self.bias(op, where, k, x.p, w_scale)
        self.finish(lambda relu: IntLinear(weight, w_scale, bias, bias_float, x.p, y, relu=relu), fn, y, reads, out,
                    "flat")

    def pool(self, op, where, op_name):
        ins, out = self._ins(op), op.outputs[0]
        x = self.ref(ins[0], where, ("nhwc",))
        _, h, w, _ = self.shape(ins[0])
        o = op.builtinOptions
        kernel, stride = (int(o.filterHeight), int(o.filterWidth)), (int(o.strideH), int(o.strideW))
        _positive(where, kernel=kernel, stride=stride)
        pads = (0, 0, 0, 0)
        if o.padding == self.s.Padding.SAME:
            (t, b), (l, r) = same_pads(h, kernel[0], stride[0]), same_pads(w, kernel[1], stride[1])
            pads = (t, l, b, r)
        self.same_params(ins[0], out, where)  # TFLite's int8 pools require it
        if op_name == "AVERAGE_POOL_2D" and any(pads):
            raise ValueError(f"{where}: SAME padding {pads} (top, left, bottom, right) is not supported: TFLite leaves "
                             f"padding out of the average's divisor, sqref's average pool counts it; VALID, or SAME "
                             f"that pads nothing, only")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise ValueError(f"{where}: asymmetric SAME padding {pads} (top, left, bottom, right) is not supported; "
                             f"sqref's pools pad symmetrically")
        cls = IntMaxPool2d if op_name == "MAX_POOL_2D" else IntAvgPool2d
        fn = self.activation_fn(o, where)
        name = self.after_pool(cls(kernel, stride, (pads[0], pads[1]), x.p), fn, (x.name,), out)
        self.env[out] = _Ref(name, x.p, "nhwc")

    def same_params(self, i, out, where):
        p, q = self.env[i].p, self.act(out, where)
        if (p.scale, p.zero_point) != (q.scale, q.zero_point):
            raise ValueError(f"{where}: output parameters ({q.scale}, {q.zero_point - OFFSET}) must equal the "
                             f"input's ({p.scale}, {p.zero_point - OFFSET})")

    def reshape(self, op, where):
        ins, out = self._ins(op), op.outputs[0]
        x = self.ref(ins[0], where, ("nhwc", "nchw", "flat"))
        self.same_params(ins[0], out, where)
        src, dst = self.shape(ins[0]), self.shape(out)
        if len(dst) != 2 or dst[0] != src[0] or dst[1] != int(np.prod(src[1:])):
            raise ValueError(f"{where}: reshape {list(src)} -> {list(dst)} is not supported; only flattening to "
                             f"(N, features)")
        if x.layout == "flat":
            self.env[out] = x
            return
        _, d1, d2, d3 = src
        hwc = (d1, d2, d3) if x.layout == "nhwc" and d3 > 1 and d1 * d2 > 1 else None
        name = self.add(IntFlatten(x.p), (x.name,), self.tname(out), out, "flat", hwc)
        self.env[out] = _Ref(name, x.p, "flat", hwc)

    def transpose(self, op, where):
        ins, out = self._ins(op), op.outputs[0]
        x = self.ref(ins[0], where, ("nhwc",))
        perm = self.const(ins[1], where, "permutation", self.dtype_name(ins[1]) if self.dtype_name(ins[1]) in
                          ("INT32", "INT64") else "INT32")
        readers = self.readers.get(out, [])
        if perm.tolist() != [0, 3, 1, 2] or len(readers) != 1 \
                or self.op_name(self.g.operators[readers[0]]) not in ("RESHAPE", "SQUEEZE"):
            raise ValueError(f"{where}: only TRANSPOSE(0, 3, 1, 2) read by one RESHAPE (a flatten in (C, H, W) "
                             f"order) is supported, got permutation {perm.tolist()}")
        self.same_params(ins[0], out, where)
        self.env[out] = _Ref(x.name, x.p, "nchw")

    def pad(self, op, where, op_name):
        ins, out = self._ins(op), op.outputs[0]
        x = self.ref(ins[0], where, ("nhwc",))
        self.same_params(ins[0], out, where)
        kind = self.dtype_name(ins[1])
        paddings = self.const(ins[1], where, "paddings", kind if kind in ("INT32", "INT64") else "INT32")
        if paddings.shape != (4, 2) or paddings[0].any() or paddings[3].any() or (paddings < 0).any():
            raise ValueError(f"{where}: only padding H and W of (N, H, W, C) by >= 0 is supported, "
                             f"got {paddings.tolist()}")
        if op_name == "PADV2" and len(ins) > 2:
            value = self.const(ins[2], where, "pad value", "INT8").reshape(-1)
            if value.size != 1 or int(value[0]) + OFFSET != x.p.zero_point:
                raise ValueError(f"{where}: the pad value must be the zero point {x.p.zero_point - OFFSET} "
                                 f"(real 0), got {value.tolist()}")
        pads = (int(paddings[1, 0]), int(paddings[2, 0]), int(paddings[1, 1]), int(paddings[2, 1]))
        readers = self.readers.get(out, [])
        conv_codes = ("CONV_2D", "DEPTHWISE_CONV_2D")
        if len(readers) == 1 and self.op_name(self.g.operators[readers[0]]) in conv_codes and not any(x.pads) \
                and self._ins(self.g.operators[readers[0]])[0] == out:
            self.env[out] = _Ref(x.name, x.p, "nhwc", pads=pads)  # folded into the conv that reads it
            return
        name = self.add(IntPad(x.p, pads), (x.name,), self.tname(out), out, "nhwc")
        self.env[out] = _Ref(name, x.p, "nhwc")

    def elementwise(self, op, where, op_name):
        ins, out = self._ins(op), op.outputs[0]
        if op_name == "ADD":
            a = self.ref(ins[0], where)
            b = self.ref(ins[1], where)
            if self.shape(ins[0]) != self.shape(ins[1]) or a.layout != b.layout or a.hwc != b.hwc:
                raise ValueError(f"{where}: ADD of shapes {list(self.shape(ins[0]))} and {list(self.shape(ins[1]))}: "
                                 f"only two activations of one shape and layout (no broadcasting) are supported")
            y = self.act(out, where)
            fn = self.activation_fn(op.builtinOptions, where)
            self.finish(lambda relu: IntAdd(a.p, b.p, y, relu=relu), fn, y, (a.name, b.name), out, a.layout, a.hwc)
            return
        x = self.ref(ins[0], where)
        self.same_params(ins[0], out, where)
        clamp = IntReLU(x.p, False) if op_name == "RELU" else IntClip(x.p, False, x.p.zero_point, self.relu6_code(x.p))
        name = self.add(clamp, (x.name,), self.tname(out), out, x.layout, x.hwc)
        self.env[out] = _Ref(name, x.p, x.layout, x.hwc)

    def final_softmax(self, op, where, output):
        """A SOFTMAX whose output is the model's (or a final DEQUANTIZE's input) is dropped, as
        sqref.backends.onnx_import drops a final Softmax: sqref models return logits (the argmax of
        the logits is the file's, up to int8 ties of the probabilities). Recorded in meta["dropped"]."""
        ins, out = self._ins(op), op.outputs[0]
        readers = self.readers.get(out, [])
        last_dequantize = len(readers) == 1 and self.op_name(self.g.operators[readers[0]]) == "DEQUANTIZE" \
            and self.g.operators[readers[0]].outputs[0] == output
        if out != output and not last_dequantize:
            raise ValueError(f"{where}: SOFTMAX is supported only as the model's last operator (it is dropped)")
        self.env[out] = self.ref(ins[0], where, ("flat",))
        self.dropped.append(where)

    # ------------------------------------------------------------- the model

    def model_input(self):
        """The model input: (its ActParams, (C, H, W) or (F,), the QUANTIZE operator that reads it or None)."""
        inputs = [] if self.g.inputs is None else list(self.g.inputs)
        outputs = [] if self.g.outputs is None else list(self.g.outputs)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"the integer path runs models with one input and one output; this one has "
                             f"{len(inputs)} inputs and {len(outputs)} outputs")
        i = int(inputs[0])
        shape = self.shape(i)
        if len(shape) not in (2, 4):
            raise ValueError(f"the input shape {list(shape)} must be (N, H, W, C) or (N, F)")
        quantize = None
        if self.tensor(i).type != self.s.TensorType.INT8:
            readers = self.readers.get(i, [])
            ops = self.g.operators or []
            if len(readers) != 1 or self.op_name(ops[readers[0]]) != "QUANTIZE":
                raise ValueError(f"the input is {self.dtype_name(i)}: it must be int8, or read by one QUANTIZE only")
            quantize = readers[0]
            q_out = ops[quantize].outputs[0]
            p = self.act(q_out, f"operator {quantize} (QUANTIZE)")
            if self.tensor(i).type == self.s.TensorType.UINT8:  # uint8 -> int8 of the same grid: sqref's codes
                q = self.tensor(i).quantization
                z = None if q is None or q.zeroPoint is None or len(q.zeroPoint) != 1 else int(q.zeroPoint[0])
                s = None if q is None or q.scale is None or len(q.scale) != 1 else float(np.float32(q.scale[0]))
                if (s, z) != (p.scale, p.zero_point):
                    raise ValueError(f"operator {quantize} (QUANTIZE): a uint8 input must have the int8 output's "
                                     f"scale and zero point + 128, got ({s}, {z}) for ({p.scale}, {p.zero_point})")
            elif self.tensor(i).type != self.s.TensorType.FLOAT32:
                raise ValueError(f"the input is {self.dtype_name(i)}: it must be int8, uint8 or float32")
            self.env[q_out] = _Ref(INPUT, p, "nhwc" if len(shape) == 4 else "flat")
        else:
            p = self.act(i, "model input")
            self.env[i] = _Ref(INPUT, p, "nhwc" if len(shape) == 4 else "flat")
        input_shape = (shape[3], shape[1], shape[2]) if len(shape) == 4 else (shape[1],)
        return p, input_shape, quantize

    def integer_model(self, mode, meta) -> IntegerModel:
        p, input_shape, quantize = self.model_input()
        output = int(self.g.outputs[0])
        final = None  # the tensor a final DEQUANTIZE reads
        for index, op in enumerate(self.g.operators or []):
            op_name = self.op_name(op)
            where = f"operator {index} ({op_name})"
            if not op.outputs or len(op.outputs) != 1:
                raise ValueError(f"{where}: expected one output")
            if op_name not in SUPPORTED_OPS:
                raise ValueError(f"{where} is not supported; supported: {', '.join(SUPPORTED_OPS)}")
            if op_name == "QUANTIZE":
                if index != quantize:
                    raise ValueError(f"{where}: QUANTIZE is supported only on the float32 or uint8 model input "
                                     f"(an int8 -> int8 requantization is not an integer-path layer)")
            elif op_name == "DEQUANTIZE":
                if op.outputs[0] != output or self._ins(op)[0] not in self.env:
                    raise ValueError(f"{where}: DEQUANTIZE is supported only as the last operator, of an int8 "
                                     f"activation to the model output")
                final = self._ins(op)[0]
            elif op_name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                self.conv(op, where, op_name == "DEPTHWISE_CONV_2D")
            elif op_name == "FULLY_CONNECTED":
                self.fully_connected(op, where)
            elif op_name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                self.pool(op, where, op_name)
            elif op_name in ("RESHAPE", "SQUEEZE"):
                self.reshape(op, where)
            elif op_name == "TRANSPOSE":
                self.transpose(op, where)
            elif op_name in ("PAD", "PADV2"):
                self.pad(op, where, op_name)
            elif op_name == "SOFTMAX":
                self.final_softmax(op, where, output)
            else:
                self.elementwise(op, where, op_name)
        last = final if final is not None else output
        if last not in self.env or not self.layers or self.env[last].name != self.names[-1]:
            raise ValueError("the model output must be the last operator's int8 output (or its DEQUANTIZE)")
        if self.env[last].hwc is not None or self.env[last].layout == "nchw":
            raise ValueError(f"the model output {self.tname(last)!r} is in TFLite's NHWC order, which sqref's "
                             f"(C, H, W) order cannot keep; only a FULLY_CONNECTED may read a NHWC flatten")
        if self.dropped:
            meta = {**meta, "dropped": list(self.dropped)}
        imodel = IntegerModel(tuple(self.layers), tuple(self.names), input_shape, p, mode, meta, tuple(self.wiring))
        self.check_shapes(imodel)
        return imodel

    def check_shapes(self, imodel):
        """Every layer that equals a TFLite tensor has that tensor's shape (in sqref's layout)."""
        for name, shape in zip(imodel.names, output_shapes(imodel)):
            if name not in self.tensor_map:
                continue
            index, layout, _ = self.tensor_map[name]
            t = self.shape(index)[1:]
            want = (t[2], t[0], t[1]) if layout == "nhwc" and len(t) == 3 else t
            if tuple(shape) != tuple(want):
                raise ValueError(f"layer {name!r}: sqref computes shape {list(shape)}, the file's tensor "
                                 f"{self.tname(index)!r} has {list(self.shape(index))}")
