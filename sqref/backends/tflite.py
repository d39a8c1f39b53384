"""TFLite out: an IntegerModel as an int8 ``.tflite`` flatbuffer, run by ai_edge_litert's Interpreter.

Built directly from the flatbuffer schema that ai-edge-litert ships
(``ai_edge_litert.schema_py_generated``, object API, ``flatbuffers``); no
TensorFlow. TFLite's int8 conventions, and how sqref's uint8 model maps on them:

    activations  int8, asymmetric: TFLite code = sqref code - 128, zero point z - 128
                 (exact: requant adds the zero point after the multiplier, so the offset
                 passes through; pools and clamps commute with it)
    weights      int8 symmetric (zero point 0), per tensor or per output channel
                 (quantized_dimension 0), layout OHWI
    bias         int32, scale s_x * s_w (per channel), zero point 0
    layout       NHWC: inputs are transposed in, outputs back to NCHW
    conv2d       [PAD with the zero point] + CONV_2D (VALID), fused RELU
    linear       FULLY_CONNECTED, fused RELU
    max/avg pool MAX_POOL_2D / AVERAGE_POOL_2D (VALID; padding unsupported: ValueError)
    flatten      TRANSPOSE to NCHW + RESHAPE, so the features keep sqref's (C, H, W) order
    relu         fused: nothing; unfused: RELU

Which sqref arithmetic a TFLite run matches depends on the kernels (``kernels=``;
measured with ai-edge-litert 2.3 on x86-64 AVX2, tests/test_backend_tflite.py):
    "xnnpack"    the default Interpreter (XNNPACK delegate; every tensor preserved):
                 CONV_2D and FULLY_CONNECTED requantize in float32 with round half
                 even before the zero point, i.e. sqref mode "onnxruntime" (M =
                 float32(float32(s_x * s_w) / s_y)), NOT "tflite"; AVERAGE_POOL_2D
                 rounds as "tflite" (half away on int8 sums)
    "reference"  BUILTIN_REF: CONV_2D = "tflite" (double rounding); FULLY_CONNECTED
                 rounds ONCE, half away from zero (requant.requant_tflite_single_away):
                 neither "tflite" (no intermediate rounding) nor "tflite-single" (ties up)
    "builtin"    optimized kernels without delegates (ruy): double rounding whose
                 final shift rounds half UP, not half away: a variant no sqref mode
                 has (requant.requant_tflite_ruy); it differs from "tflite" only where
                 the first rounding lands on a negative .5 tie (acc = -1403,
                 M = 0.0010695511 gives -1 where "tflite" gives -2)
So no kernel set runs a conv + FC model as mode "tflite" end to end. Max pool is
exact everywhere; every kernel set's AVERAGE_POOL_2D equals the "tflite" rounding.
Limits: groups = 1 only; pools without padding.
Oracle: tests/test_backend_tflite.py.
"""
from __future__ import annotations

import numpy as np

from sqref import integer
from sqref.integer import requant

KERNELS = ("xnnpack", "builtin", "reference")


def load_schema():
    """(the TFLite flatbuffer schema module ai-edge-litert ships, the flatbuffers package): what the
    exporter writes with and sqref.backends.tflite_import reads with."""
    try:
        import ai_edge_litert.schema_py_generated as schema
        import flatbuffers
    except ImportError as exc:  # pragma: no cover - exercised only without ai-edge-litert
        raise ImportError("sqref.backends.tflite needs ai-edge-litert (pip install ai-edge-litert)") from exc
    return schema, flatbuffers


class FlatbufferBuilder:
    """A growing subgraph: tensors, buffers, operators and their codes (object API)."""

    def __init__(self, schema):
        self.s = schema
        self.tensors, self.buffers, self.operators, self.codes = [], [schema.BufferT()], [], {}

    def tensor(self, name, shape, ttype, *, data=None, scale=None, zero_point=None, axis=0):
        s = self.s
        t = s.TensorT()
        t.name, t.shape, t.type = name, [int(d) for d in shape], ttype
        t.buffer = 0
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale = [float(v) for v in np.atleast_1d(np.asarray(scale, np.float32))]
            q.zeroPoint = [int(v) for v in np.atleast_1d(zero_point)]
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def activation(self, name, shape, p: integer.ActParams):
        return self.tensor(name, shape, self.s.TensorType.INT8, scale=p.scale, zero_point=p.zero_point - 128)

    def op(self, code, inputs, outputs, options_type=0, options=None, version=1):
        key = (code, version)
        self.codes.setdefault(key, len(self.codes))
        o = self.s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[key], list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def finish(self, inputs, outputs, flatbuffers):
        s = self.s
        g = s.SubGraphT()
        g.tensors, g.inputs, g.outputs, g.operators, g.name = self.tensors, list(inputs), list(outputs), self.operators, "main"
        m = s.ModelT()
        m.version, m.subgraphs, m.buffers, m.description = 3, [g], self.buffers, "sqref integer model"
        codes = [None] * len(self.codes)
        for (code, version), index in self.codes.items():
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
            codes[index] = oc
        m.operatorCodes = codes
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _activation_fn(schema, relu):
    return schema.ActivationFunctionType.RELU if relu else schema.ActivationFunctionType.NONE


def build_tflite(imodel: integer.IntegerModel, batch: int):
    """The int8 flatbuffer of an IntegerModel for a fixed batch size.

    Returns (model bytes, {tensor name: (tensor index, "nhwc"|"flat")}) where names are
    "input" and the layer names (a fused ReLU maps to its conv/linear's tensor).
    """
    s, flatbuffers = load_schema()
    B = FlatbufferBuilder(s)
    T = s.TensorType
    shape = tuple(imodel.input_shape)
    if len(shape) == 3:
        current = B.activation("input", (batch, shape[1], shape[2], shape[0]), imodel.input)
        layout = "nhwc"
    else:
        current = B.activation("input", (batch, *shape), imodel.input)
        layout = "flat"
    names = {"input": (current, layout)}
    first = current
    shapes = integer.output_shapes(imodel)
    for name, layer, out_shape in zip(imodel.names, imodel.layers, shapes):
        if isinstance(layer, integer.IntConv2d):
            if layer.groups != 1:
                raise ValueError(f"layer {name!r}: the TFLite export supports groups=1 only, got {layer.groups}")
            (ph, pw) = layer.padding
            if ph or pw:
                in_shape = B.tensors[current].shape
                pads = B.tensor(f"{name}_paddings", (4, 2), T.INT32,
                                data=np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], np.int32))
                padded = B.activation(f"{name}_pad", (in_shape[0], in_shape[1] + 2 * ph, in_shape[2] + 2 * pw,
                                                      in_shape[3]), layer.x)
                B.op(s.BuiltinOperator.PAD, [current, pads], [padded], s.BuiltinOptions.PadOptions, s.PadOptionsT(),
                     version=2)
                current = padded
            k = layer.weight.shape[0]
            w_scale = np.broadcast_to(np.asarray(layer.w_scale, np.float32), (k,))
            w = B.tensor(f"{name}_w", np.transpose(layer.weight, (0, 2, 3, 1)).shape, T.INT8,
                         data=np.transpose(layer.weight, (0, 2, 3, 1)).astype(np.int8), scale=w_scale,
                         zero_point=np.zeros(k, np.int64), axis=0)
            b = B.tensor(f"{name}_b", (k,), T.INT32, data=layer.bias.astype(np.int32),
                         scale=(np.float64(np.float32(layer.x.scale)) * w_scale.astype(np.float64)).astype(np.float32),
                         zero_point=np.zeros(k, np.int64), axis=0)
            out = B.activation(name, (batch, out_shape[1], out_shape[2], out_shape[0]), layer.y)
            opt = s.Conv2DOptionsT()
            opt.padding, opt.strideH, opt.strideW = s.Padding.VALID, layer.stride[0], layer.stride[1]
            opt.dilationHFactor, opt.dilationWFactor = layer.dilation
            opt.fusedActivationFunction = _activation_fn(s, layer.relu)
            B.op(s.BuiltinOperator.CONV_2D, [current, w, b], [out], s.BuiltinOptions.Conv2DOptions, opt, version=3)
            current, layout = out, "nhwc"
        elif isinstance(layer, integer.IntLinear):
            k = layer.weight.shape[0]
            w_scale = np.asarray(layer.w_scale, np.float32)
            per_channel = w_scale.ndim == 1
            w = B.tensor(f"{name}_w", layer.weight.shape, T.INT8, data=layer.weight.astype(np.int8), scale=w_scale,
                         zero_point=np.zeros(w_scale.size, np.int64), axis=0)
            b_scale = (np.float64(np.float32(layer.x.scale)) * w_scale.astype(np.float64)).astype(np.float32)
            b = B.tensor(f"{name}_b", (k,), T.INT32, data=layer.bias.astype(np.int32), scale=b_scale,
                         zero_point=np.zeros(w_scale.size, np.int64), axis=0)
            out = B.activation(name, (batch, k), layer.y)
            opt = s.FullyConnectedOptionsT()
            opt.fusedActivationFunction = _activation_fn(s, layer.relu)
            B.op(s.BuiltinOperator.FULLY_CONNECTED, [current, w, b], [out], s.BuiltinOptions.FullyConnectedOptions,
                 opt, version=12 if per_channel else 4)
            current, layout = out, "flat"
        elif isinstance(layer, (integer.IntMaxPool2d, integer.IntAvgPool2d)):
            if layer.padding != (0, 0):
                raise ValueError(f"layer {name!r}: the TFLite export supports pools without padding only")
            out = B.activation(name, (batch, out_shape[1], out_shape[2], out_shape[0]), layer.y)
            opt = s.Pool2DOptionsT()
            opt.padding, opt.strideH, opt.strideW = s.Padding.VALID, layer.stride[0], layer.stride[1]
            opt.filterHeight, opt.filterWidth = layer.kernel_size
            code = s.BuiltinOperator.MAX_POOL_2D if isinstance(layer, integer.IntMaxPool2d) else s.BuiltinOperator.AVERAGE_POOL_2D
            B.op(code, [current], [out], s.BuiltinOptions.Pool2DOptions, opt, version=2)
            current = out
        elif isinstance(layer, integer.IntFlatten):
            if layout == "nhwc":  # back to NCHW first, so the flat order is sqref's (C, H, W)
                nh, h, w_, c = B.tensors[current].shape
                perm = B.tensor(f"{name}_perm", (4,), T.INT32, data=np.array([0, 3, 1, 2], np.int32))
                nchw = B.activation(f"{name}_nchw", (nh, c, h, w_), layer.x)
                B.op(s.BuiltinOperator.TRANSPOSE, [current, perm], [nchw], s.BuiltinOptions.TransposeOptions,
                     s.TransposeOptionsT(), version=2)
                current = nchw
            new_shape = B.tensor(f"{name}_shape", (2,), T.INT32, data=np.array([batch, out_shape[0]], np.int32))
            out = B.activation(name, (batch, out_shape[0]), layer.y)
            opt = s.ReshapeOptionsT()
            opt.newShape = [batch, out_shape[0]]
            B.op(s.BuiltinOperator.RESHAPE, [current, new_shape], [out], s.BuiltinOptions.ReshapeOptions, opt)
            current, layout = out, "flat"
        elif isinstance(layer, integer.IntReLU):
            if not layer.fused:
                out = B.activation(name, B.tensors[current].shape, layer.y)
                B.op(s.BuiltinOperator.RELU, [current], [out], version=2)
                current = out
        else:
            raise TypeError(f"layer {name!r}: no TFLite export for {type(layer).__name__}")
        names[name] = (current, layout)
    return B.finish([first], [current], flatbuffers), names


def interpreter(model_bytes, *, kernels="xnnpack"):
    """An ai_edge_litert Interpreter (one thread) with every tensor preserved for inspection."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    resolver = {"builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, "reference": OpResolverType.BUILTIN_REF,
                "xnnpack": OpResolverType.BUILTIN}[kernels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "preserve_all_tensors is for debugging": it is
        it = Interpreter(model_content=model_bytes, experimental_op_resolver_type=resolver,
                         experimental_preserve_all_tensors=True, num_threads=1)
    it.allocate_tensors()
    return it


def _to_nchw_uint8(a, layout):
    a = a.astype(np.int16) + 128
    if layout == "nhwc":
        a = a.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(a).astype(np.uint8)


def run_tflite_model(imodel: integer.IntegerModel, codes, *, kernels="xnnpack"):
    """Run an IntegerModel in TFLite on uint8 input codes.

    Returns {"input": codes, layer name: uint8 codes (NCHW), "logits": float32}, the
    int8 tensors mapped back (+ 128).
    """
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"input codes must be uint8, got {codes.dtype}")
    model, names = build_tflite(imodel, len(codes))
    it = interpreter(model, kernels=kernels)
    x = codes.astype(np.int16) - 128
    if codes.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(x).astype(np.int8))
    it.invoke()
    out = {"input": codes}
    for name in imodel.names:
        index, layout = names[name]
        out[name] = _to_nchw_uint8(it.get_tensor(index), layout)
    last = imodel.layers[-1].y
    out["logits"] = requant.dequantize_linear(out[imodel.names[-1]], last.scale, last.zero_point)
    return out
