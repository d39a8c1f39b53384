"""TFLite import (sqref.backends.tflite_import.read_tflite) against the exporter and ai-edge-litert.

1. Round trip: sqref's LeNet-5 (per-channel and per-tensor weights) and LeNet-300
   exported by sqref.backends.tflite and read back give the same weights, scales,
   biases and activation parameters, and the same codes at every layer in modes
   "tflite" and "onnxruntime" (the exporter writes nothing for a fused ReLU, so the
   import has no such layer: its codes are its producer's).
2. The imported model, run by sqref, equals ai-edge-litert's Interpreter on the same
   file at every tensor, with the options sqref.backends.tflite uses (XNNPACK, one
   thread), in the mode XNNPACK computes as (sqref.integer.verify.NATIVE_MODE).
3. Hand-made files (the exporter's FlatbufferBuilder): float input with QUANTIZE, DEPTHWISE_CONV_2D
   with SAME padding that is asymmetric, fused RELU6 below code 255, a RESHAPE that
   flattens NHWC before a FULLY_CONNECTED, DEQUANTIZE; and a residual ADD, a PAD folded
   into a conv, an average pool and a FULLY_CONNECTED reading a 4-D tensor. Checked
   layer by layer against the Interpreter.
4. Hostile input: truncated and random bytes, unsupported operators: one-line ValueErrors.
"""
import os

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("flatbuffers")

import sqref  # noqa: E402
from sqref import integer  # noqa: E402
from sqref.backends import tflite as tflite_io  # noqa: E402
from sqref.backends.tflite_import import read_tflite, tflite_to_codes  # noqa: E402
from sqref.data import DATA_DIR, load_split  # noqa: E402
from sqref.integer import ActParams  # noqa: E402
from sqref.integer.run import apply_layer  # noqa: E402
from sqref.integer.verify import NATIVE_MODE  # noqa: E402
from sqref.model import INPUT  # noqa: E402
from sqref.qmodel import quantize_model  # noqa: E402
from sqref.testing import assert_bit_exact  # noqa: E402

BATCH = 20
SCHEMA, FLATBUFFERS = tflite_io.load_schema()
OP = SCHEMA.BuiltinOperator
T = SCHEMA.TensorType


@pytest.fixture(scope="module")
def images():
    return load_split(split="train")[0][:300], load_split(split="test")[0][:BATCH]


@pytest.fixture(scope="module", params=[("lenet5.h5", True), ("lenet5.h5", False), ("lenet300.h5", False)],
                ids=["lenet5-per-channel", "lenet5-per-tensor", "lenet300"])
def exported(request, images):
    """(the IntegerModel, its exported flatbuffer, the import of that flatbuffer, its tensor map)."""
    name, per_channel = request.param
    qmodel = quantize_model(sqref.load(os.fspath(DATA_DIR / name)), bits=8, per_channel=per_channel)
    imodel = integer.build_integer_model(qmodel, integer.calibrate(qmodel, images[0]))
    data, _ = tflite_io.build_tflite(imodel, BATCH)
    back, tensors = read_tflite(data, tensor_map=True)
    return imodel, data, back, tensors


def act(scale, zero_point):
    """uint8 ActParams with a float32 scale."""
    return ActParams(float(np.float32(scale)), zero_point)


def same_params(a: ActParams, b: ActParams):
    return (a.scale, a.zero_point) == (b.scale, b.zero_point)


def test_round_trip_keeps_every_parameter(exported):
    imodel, _, back, _ = exported
    assert same_params(back.input, imodel.input) and back.input_shape == imodel.input_shape and back.is_chain
    original = dict(zip(imodel.names, imodel.layers))
    fused = [n for n, layer in original.items() if layer.kind == "relu" and layer.fused]
    assert sorted(set(original) - set(back.names)) == sorted(fused)  # the exporter writes nothing for them
    for name, layer in zip(back.names, back.layers):
        want = original[name]
        assert layer.kind == want.kind, name
        assert same_params(layer.x, want.x) and same_params(layer.y, want.y), name
        if layer.kind in ("conv2d", "linear"):
            np.testing.assert_array_equal(layer.weight, want.weight)
            assert layer.weight.dtype == np.int8
            # the exporter writes a conv's one scale K times: the same per-channel multipliers
            np.testing.assert_array_equal(np.broadcast_to(layer.w_scale, (len(layer.bias),)),
                                          np.broadcast_to(want.w_scale, (len(want.bias),)))
            np.testing.assert_array_equal(layer.bias, want.bias)
            assert layer.relu == want.relu
        if layer.kind == "conv2d":
            assert (layer.stride, layer.padding, layer.dilation, layer.groups) == \
                (want.stride, want.padding, want.dilation, want.groups)
        if layer.kind == "max_pool2d":
            assert (layer.kernel_size, layer.stride, layer.padding) == (want.kernel_size, want.stride, want.padding)


@pytest.mark.parametrize("mode", ["tflite", "onnxruntime"])
def test_round_trip_gives_the_same_codes_at_every_layer(exported, images, mode):
    imodel, _, back, _ = exported
    logits, outs = integer.run_integer(imodel, images[1], mode=mode, return_intermediates=True)
    logits_back, outs_back = integer.run_integer(back, images[1], mode=mode, return_intermediates=True)
    original, imported = dict(zip(imodel.names, outs)), dict(zip(back.names, outs_back))
    for i, name in enumerate(imodel.names):  # a fused ReLU (absent) outputs its producer's codes
        got = imported.get(name, imported.get(imodel.names[i - 1]))
        assert_bit_exact(got, original[name], err_msg=f"{name} ({mode})")
    assert_bit_exact(logits_back, logits, err_msg="logits")


def interpreter_tensors(data, codes_nchw, kernels="xnnpack"):
    """Run the file in ai-edge-litert (sqref.backends.tflite.interpreter) on uint8 NCHW codes; every tensor."""
    it = tflite_io.interpreter(data, kernels=kernels)
    x = codes_nchw.astype(np.int16) - 128
    x = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(x).astype(np.int8))
    it.invoke()
    return it


def test_imported_model_equals_the_interpreter(exported, images):
    imodel, data, back, tensors = exported
    mode = NATIVE_MODE["tflite"]  # XNNPACK requantizes conv / fully connected as "onnxruntime"
    codes = integer.quantize_input(back, images[1], mode=mode)
    it = interpreter_tensors(data, codes)
    _, outs = integer.run_integer(back, codes, mode=mode, return_intermediates=True)
    for name, out in zip(back.names, outs):
        index, layout, hwc = tensors[name]
        assert_bit_exact(out, tflite_to_codes(it.get_tensor(index), layout, hwc), err_msg=name)


# ----------------------------------------------------------------- hand-made files


def rng_codes(rng, shape, lo=-127, hi=127):
    return rng.integers(lo, hi + 1, size=shape).astype(np.int8)


def weights(B, name, codes, scale, axis):
    scale = np.asarray(scale, np.float32)
    return B.tensor(name, codes.shape, T.INT8, data=codes, scale=scale, zero_point=np.zeros(scale.size, np.int64),
                    axis=axis)


def bias(B, name, values, s_x, s_w):
    s_b = (np.float64(np.float32(s_x)) * np.atleast_1d(np.asarray(s_w, np.float32)).astype(np.float64))
    return B.tensor(name, (len(values),), T.INT32, data=np.asarray(values, np.int32), scale=s_b.astype(np.float32),
                    zero_point=np.zeros(s_b.size, np.int64))


def per_channel_fc(B, rng, x, s_x, shape, k, out):
    """A FULLY_CONNECTED k -> shape[1] reading tensor x (scale s_x): random per-channel int8 weights and an int32
    bias; returns its output tensor of parameters `out`."""
    wf = np.float32(rng.uniform(0.005, 0.02, shape[1]))
    fc = B.activation("fc", shape, out)
    B.op(OP.FULLY_CONNECTED, [x, weights(B, "fc_w", rng_codes(rng, (shape[1], k)), wf, 0),
                              bias(B, "fc_b", rng.integers(-500, 500, shape[1]), s_x, wf)], [fc],
         SCHEMA.BuiltinOptions.FullyConnectedOptions, SCHEMA.FullyConnectedOptionsT(), version=12)
    return fc


def conv_options(opts, padding, stride, act):
    opts.padding, opts.strideH, opts.strideW = padding, stride, stride
    opts.dilationHFactor = opts.dilationWFactor = 1
    opts.fusedActivationFunction = act
    return opts


def chain_file(n):
    """float (N, 8, 8, 2) -> QUANTIZE -> DEPTHWISE_CONV_2D 3x3, M = 2, stride 2, SAME (pads 0 top, 1 bottom),
    per-channel, RELU6 (6 is code 120) -> CONV_2D 3x3 SAME (pads 1), one weight scale, RELU -> MAX_POOL_2D 2x2
    -> RESHAPE (N, 12), NHWC order -> FULLY_CONNECTED 12 -> 5, per-channel -> DEQUANTIZE."""
    rng = np.random.default_rng(16)
    s, A, P = SCHEMA, SCHEMA.ActivationFunctionType, SCHEMA.Padding
    B = tflite_io.FlatbufferBuilder(s)
    x_f = B.tensor("images", (n, 8, 8, 2), T.FLOAT32)
    x = B.activation("x", (n, 8, 8, 2), act(2 / 255, 118))
    B.op(OP.QUANTIZE, [x_f], [x], version=2)
    a1 = act(0.05, 0)
    w1s = np.float32(rng.uniform(0.005, 0.02, 4))
    w1 = weights(B, "dw_w", rng_codes(rng, (1, 3, 3, 4)), w1s, axis=3)
    b1 = bias(B, "dw_b", rng.integers(-300, 300, 4), 2 / 255, w1s)
    y1 = B.activation("dw", (n, 4, 4, 4), a1)
    opts = conv_options(s.DepthwiseConv2DOptionsT(), P.SAME, 2, A.RELU6)
    opts.depthMultiplier = 2
    B.op(OP.DEPTHWISE_CONV_2D, [x, w1, b1], [y1], s.BuiltinOptions.DepthwiseConv2DOptions, opts, version=3)
    a2 = act(0.05, 0)
    w2 = weights(B, "conv_w", rng_codes(rng, (3, 3, 3, 4)), np.float32(0.002), axis=0)
    b2 = bias(B, "conv_b", rng.integers(-3000, 3000, 3), a1.scale, np.float32(0.002))
    y2 = B.activation("conv", (n, 4, 4, 3), a2)
    B.op(OP.CONV_2D, [y1, w2, b2], [y2], s.BuiltinOptions.Conv2DOptions,
         conv_options(s.Conv2DOptionsT(), P.SAME, 1, A.RELU), version=3)
    y3 = B.activation("pool", (n, 2, 2, 3), a2)
    opts = s.Pool2DOptionsT()
    opts.padding, opts.strideH, opts.strideW, opts.filterHeight, opts.filterWidth = P.VALID, 2, 2, 2, 2
    B.op(OP.MAX_POOL_2D, [y2], [y3], s.BuiltinOptions.Pool2DOptions, opts, version=2)
    shape = B.tensor("flat_shape", (2,), T.INT32, data=np.array([n, 12], np.int32))
    y4 = B.activation("flat", (n, 12), a2)
    opts = s.ReshapeOptionsT()
    opts.newShape = [n, 12]
    B.op(OP.RESHAPE, [y3, shape], [y4], s.BuiltinOptions.ReshapeOptions, opts)
    w5s = np.float32(rng.uniform(0.005, 0.02, 5))
    w5 = weights(B, "fc_w", rng_codes(rng, (5, 12)), w5s, axis=0)
    b5 = bias(B, "fc_b", rng.integers(-3000, 3000, 5), a2.scale, w5s)
    y5 = B.activation("fc", (n, 5), act(0.125, 128))
    B.op(OP.FULLY_CONNECTED, [y4, w5, b5], [y5], s.BuiltinOptions.FullyConnectedOptions,
         s.FullyConnectedOptionsT(), version=12)
    out = B.tensor("logits", (n, 5), T.FLOAT32)
    B.op(OP.DEQUANTIZE, [y5], [out], version=2)
    return B.finish([x_f], [out], FLATBUFFERS)


def residual_file(n):
    """int8 (N, 6, 6, 3) -> PAD 1 -> CONV_2D 3x3 VALID, RELU (c1) -> CONV_2D 1x1 (c2) -> ADD(c1, c2), RELU
    -> AVERAGE_POOL_2D 2x2 stride 2 -> FULLY_CONNECTED of the (N, 3, 3, 3) tensor -> 4."""
    rng = np.random.default_rng(17)
    s, A, P = SCHEMA, SCHEMA.ActivationFunctionType, SCHEMA.Padding
    B = tflite_io.FlatbufferBuilder(s)
    p_in = act(1 / 64, 100)
    x = B.activation("x", (n, 6, 6, 3), p_in)
    pads = B.tensor("paddings", (4, 2), T.INT32, data=np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))
    xp = B.activation("x_pad", (n, 8, 8, 3), p_in)
    B.op(OP.PAD, [x, pads], [xp], s.BuiltinOptions.PadOptions, s.PadOptionsT(), version=2)
    a1, ws = act(0.03, 0), np.float32(rng.uniform(0.005, 0.02, 3))
    c1 = B.activation("c1", (n, 6, 6, 3), a1)
    B.op(OP.CONV_2D, [xp, weights(B, "c1_w", rng_codes(rng, (3, 3, 3, 3)), ws, 0),
                      bias(B, "c1_b", rng.integers(-500, 500, 3), p_in.scale, ws)], [c1],
         s.BuiltinOptions.Conv2DOptions, conv_options(s.Conv2DOptionsT(), P.VALID, 1, A.RELU), version=3)
    a2 = act(0.02, 130)
    c2 = B.activation("c2", (n, 6, 6, 3), a2)
    B.op(OP.CONV_2D, [c1, weights(B, "c2_w", rng_codes(rng, (3, 1, 1, 3)), ws, 0),
                      bias(B, "c2_b", rng.integers(-500, 500, 3), a1.scale, ws)], [c2],
         s.BuiltinOptions.Conv2DOptions, conv_options(s.Conv2DOptionsT(), P.VALID, 1, A.NONE), version=3)
    a3 = act(0.04, 0)
    add = B.activation("add", (n, 6, 6, 3), a3)
    opts = s.AddOptionsT()
    opts.fusedActivationFunction = A.RELU
    B.op(OP.ADD, [c1, c2], [add], s.BuiltinOptions.AddOptions, opts, version=2)
    pool = B.activation("avg", (n, 3, 3, 3), a3)
    opts = s.Pool2DOptionsT()
    opts.padding, opts.strideH, opts.strideW, opts.filterHeight, opts.filterWidth = P.VALID, 2, 2, 2, 2
    B.op(OP.AVERAGE_POOL_2D, [add], [pool], s.BuiltinOptions.Pool2DOptions, opts, version=2)
    fc = per_channel_fc(B, rng, pool, a3.scale, (n, 4), 27, act(0.1, 120))
    return B.finish([x], [fc], FLATBUFFERS)


def check_layers(back, tensors, it, input_codes, modes):
    """Each sqref layer whose output is a TFLite tensor, run by apply_layer on the Interpreter's own
    inputs (layers without a tensor of their own: on sqref's codes from those) in modes[kind]
    (default "onnxruntime"; None: not compared), equals the Interpreter's tensor. Returns the names checked."""
    env, checked = {INPUT: input_codes}, []
    for name, layer, reads in zip(back.names, back.layers, back.wiring):
        mode = modes.get(layer.kind, "onnxruntime")
        out = apply_layer(layer, *(env[r] for r in reads), mode=mode or "onnxruntime")
        if name in tensors:
            want = tflite_to_codes(it.get_tensor(tensors[name][0]), *tensors[name][1:])
            if mode is not None:
                assert_bit_exact(out, want, err_msg=f"{name} ({layer.kind}, mode {mode})")
                checked.append(name)
            out = want
        env[name] = out
    return checked


def test_hand_made_chain_with_nhwc_flatten_equals_the_interpreter():
    n = 64
    data = chain_file(n)
    back, tensors = read_tflite(data, tensor_map=True)
    assert [layer.kind for layer in back.layers] == ["pad", "conv2d", "clip", "conv2d", "max_pool2d", "flatten",
                                                     "linear"]
    pad, dw, clip, conv, _, _, fc = back.layers
    assert pad.pads == (0, 0, 1, 1) and dw.groups == 2 and dw.weight.shape == (4, 1, 3, 3) and dw.padding == (0, 0)
    assert dw.relu and (clip.q_lo, clip.q_hi) == (0, 120) and conv.padding == (1, 1) and conv.w_scale.shape == ()
    assert tensors["flat"][1:] == ("flat", (2, 2, 3))  # TFLite's flat order is (H, W, C)
    it = tflite_io.interpreter(data)
    x = np.random.default_rng(0).uniform(-1, 1, (n, 8, 8, 2)).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    codes = tflite_to_codes(it.get_tensor(1), "nhwc")  # the QUANTIZE output (tensor 1): the model's input codes
    checked = check_layers(back, tensors, it, codes, {})
    assert checked == ["dw", "conv", "pool", "flat", "fc"]
    # the whole model in one mode, against the Interpreter's last tensor and its DEQUANTIZE
    logits, outs = integer.run_integer(back, codes, mode=NATIVE_MODE["tflite"], return_intermediates=True)
    assert_bit_exact(outs[-1], tflite_to_codes(it.get_tensor(tensors["fc"][0]), "flat"), err_msg="fc")
    assert_bit_exact(logits, it.get_tensor(it.get_output_details()[0]["index"]), err_msg="logits")
    assert len(np.unique(outs[-1])) > 50 and len(np.unique(outs[1])) > 50  # not a saturated test


def test_the_nhwc_flatten_permutes_the_fully_connected_columns():
    data = chain_file(2)
    model = SCHEMA.ModelT.InitFromPackedBuf(data, 0)
    g = model.subgraphs[0]
    t = next(t for t in g.tensors if t.name == b"fc_w")
    stored = np.frombuffer(np.asarray(model.buffers[t.buffer].data, np.uint8).tobytes(), np.int8).reshape(5, 12)
    fc = read_tflite(data).layers[-1]
    # sqref's column c*H*W + h*W + w is TFLite's column (h*W + w)*C + c (H = W = 2, C = 3)
    np.testing.assert_array_equal(fc.weight, stored.reshape(5, 2, 2, 3).transpose(0, 3, 1, 2).reshape(5, 12))
    assert not np.array_equal(fc.weight, stored)


def test_hand_made_residual_graph_equals_the_interpreter():
    n = 64
    data = residual_file(n)
    back, tensors = read_tflite(data, tensor_map=True)
    assert [layer.kind for layer in back.layers] == ["conv2d", "conv2d", "add", "avg_pool2d", "flatten", "linear"]
    assert back.layers[0].padding == (1, 1) and back.wiring[2] == ("c1", "c2") and not back.is_chain
    codes = np.random.default_rng(1).integers(0, 256, (n, 3, 6, 6)).astype(np.uint8)
    # XNNPACK: conv and fully connected as "onnxruntime", average pool as "tflite"; its ADD is not modelled
    it = interpreter_tensors(data, codes)
    checked = check_layers(back, tensors, it, codes, {"avg_pool2d": "tflite", "add": None})
    assert checked == ["c1", "c2", "avg", "fc"]
    # TFLite's builtin kernels: ADD as mode "tflite" (docs/integer.md section 8.1); the rest not compared here
    it = interpreter_tensors(data, codes, kernels="builtin")
    none = {kind: None for kind in ("conv2d", "linear", "avg_pool2d")}
    assert check_layers(back, tensors, it, codes, {**none, "add": "tflite"}) == ["add"]


def small_ops_file(n):
    """uint8 (N, 4, 4, 2) -> QUANTIZE (same grid) -> PADV2 (bottom/right 1, value z) -> CONV_2D 2x2 VALID
    -> MAX_POOL_2D 3x3 SAME (pads 1), RELU -> RELU6 -> AVERAGE_POOL_2D 4x4 -> SQUEEZE (N, 3) -> FULLY_CONNECTED 2."""
    rng = np.random.default_rng(18)
    s, A, P = SCHEMA, SCHEMA.ActivationFunctionType, SCHEMA.Padding
    B = tflite_io.FlatbufferBuilder(s)
    p_in = act(0.1, 90)
    x_u8 = B.tensor("x_u8", (n, 4, 4, 2), T.UINT8, scale=p_in.scale, zero_point=p_in.zero_point)
    x = B.activation("x", (n, 4, 4, 2), p_in)
    B.op(OP.QUANTIZE, [x_u8], [x], version=2)
    pads = B.tensor("paddings", (4, 2), T.INT32, data=np.array([[0, 0], [0, 1], [0, 1], [0, 0]], np.int32))
    value = B.tensor("pad_value", (), T.INT8, data=np.array(p_in.zero_point - 128, np.int8), scale=p_in.scale,
                     zero_point=p_in.zero_point - 128)
    xp = B.activation("x_pad", (n, 5, 5, 2), p_in)
    B.op(OP.PADV2, [x, pads, value], [xp], s.BuiltinOptions.PadV2Options, s.PadV2OptionsT(), version=2)
    a1, ws = act(0.025, 140), np.float32(rng.uniform(0.005, 0.02, 3))
    c = B.activation("conv", (n, 4, 4, 3), a1)
    B.op(OP.CONV_2D, [xp, weights(B, "w", rng_codes(rng, (3, 2, 2, 2)), ws, 0),
                      bias(B, "b", rng.integers(-500, 500, 3), p_in.scale, ws)], [c],
         s.BuiltinOptions.Conv2DOptions, conv_options(s.Conv2DOptionsT(), P.VALID, 1, A.NONE), version=3)
    mp = B.activation("max", (n, 4, 4, 3), a1)
    opts = s.Pool2DOptionsT()
    opts.padding, opts.strideH, opts.strideW, opts.filterHeight, opts.filterWidth = P.SAME, 1, 1, 3, 3
    opts.fusedActivationFunction = A.RELU
    B.op(OP.MAX_POOL_2D, [c], [mp], s.BuiltinOptions.Pool2DOptions, opts, version=2)
    r6 = B.activation("relu6", (n, 4, 4, 3), a1)
    B.op(OP.RELU6, [mp], [r6], version=2)
    avg = B.activation("avg", (n, 1, 1, 3), a1)
    opts = s.Pool2DOptionsT()
    opts.padding, opts.strideH, opts.strideW, opts.filterHeight, opts.filterWidth = P.VALID, 4, 4, 4, 4
    B.op(OP.AVERAGE_POOL_2D, [r6], [avg], s.BuiltinOptions.Pool2DOptions, opts, version=2)
    sq = B.activation("squeeze", (n, 3), a1)
    opts = s.SqueezeOptionsT()
    opts.squeezeDims = [1, 2]
    B.op(OP.SQUEEZE, [avg], [sq], s.BuiltinOptions.SqueezeOptions, opts)
    fc = per_channel_fc(B, rng, sq, a1.scale, (n, 2), 3, act(0.01, 128))
    return B.finish([x_u8], [fc], FLATBUFFERS)


def test_hand_made_small_ops_equal_the_interpreter():
    n = 64
    data = small_ops_file(n)
    back, tensors = read_tflite(data, tensor_map=True)
    assert [layer.kind for layer in back.layers] == ["pad", "conv2d", "max_pool2d", "relu", "clip", "avg_pool2d",
                                                     "flatten", "linear"]
    pad, _, pool, _, clip = back.layers[:5]
    assert pad.pads == (0, 0, 1, 1) and pool.padding == (1, 1) and (clip.q_lo, clip.q_hi) == (140, 255)
    assert same_params(back.input, act(0.1, 90)) and back.input_shape == (2, 4, 4)
    codes = np.random.default_rng(2).integers(0, 256, (n, 2, 4, 4)).astype(np.uint8)
    it = tflite_io.interpreter(data)
    it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(codes.transpose(0, 2, 3, 1)))
    it.invoke()
    assert_bit_exact(tflite_to_codes(it.get_tensor(1), "nhwc"), codes, err_msg="QUANTIZE uint8 -> int8")
    checked = check_layers(back, tensors, it, codes, {"avg_pool2d": "tflite"})
    assert checked == ["conv", "max", "relu6", "avg", "squeeze", "fc"]


# ----------------------------------------------------------------- hostile input


def one_line_error(source, *needles):
    with pytest.raises(ValueError) as info:
        read_tflite(source)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    exc = info.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__), "a traceback escaped"
    return message


def test_damaged_files_are_one_line_errors(tmp_path):
    data = chain_file(2)
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[:len(data) // 2])
    one_line_error(path, str(path), "TFLite")
    noise = np.random.default_rng(3).integers(0, 256, 4096).astype(np.uint8).tobytes()
    path = tmp_path / "noise.tflite"
    path.write_bytes(noise)
    one_line_error(path, str(path), "not a TFLite flatbuffer")
    path.write_bytes(noise[:4] + b"TFL3" + noise[8:])  # the identifier, then noise: the parser fails
    one_line_error(path, str(path), "TFLite")
    one_line_error(tmp_path / "missing.tflite", "no such file")
    one_line_error(tmp_path, "is a directory")


def test_unsupported_operators_name_their_index():
    B = tflite_io.FlatbufferBuilder(SCHEMA)
    p = act(0.05, 128)
    x = B.activation("x", (1, 4), p)
    y = B.activation("y", (1, 4), p)
    B.op(OP.TANH, [x], [y], version=2)
    message = one_line_error(B.finish([x], [y], FLATBUFFERS), "operator 0 (TANH)", "supported: QUANTIZE")
    assert "FULLY_CONNECTED" in message


def test_a_final_softmax_is_dropped_and_elsewhere_refused():
    s = SCHEMA
    for softmax_last in (True, False):
        B = tflite_io.FlatbufferBuilder(s)
        x = B.activation("x", (1, 4), act(0.05, 128))
        w = weights(B, "w", np.eye(4, dtype=np.int8), np.float32(0.01), 0)
        fc = B.activation("fc", (1, 4), act(0.05, 128))
        sm = B.activation("softmax", (1, 4), act(1 / 256, 0))
        if softmax_last:
            B.op(OP.FULLY_CONNECTED, [x, w, -1], [fc], s.BuiltinOptions.FullyConnectedOptions,
                 s.FullyConnectedOptionsT(), version=4)
            B.op(OP.SOFTMAX, [fc], [sm], s.BuiltinOptions.SoftmaxOptions, s.SoftmaxOptionsT(), version=2)
            back = read_tflite(B.finish([x], [sm], FLATBUFFERS))
            assert back.names == ("fc",) and back.meta["dropped"] == ["operator 1 (SOFTMAX)"]
            np.testing.assert_array_equal(back.layers[0].bias, np.zeros(4, np.int32))  # no bias input
        else:
            B.op(OP.SOFTMAX, [x], [sm], s.BuiltinOptions.SoftmaxOptions, s.SoftmaxOptionsT(), version=2)
            B.op(OP.FULLY_CONNECTED, [sm, w, -1], [fc], s.BuiltinOptions.FullyConnectedOptions,
                 s.FullyConnectedOptionsT(), version=4)
            one_line_error(B.finish([x], [fc], FLATBUFFERS), "operator 0 (SOFTMAX)", "last operator")


def test_average_pool_with_same_padding_is_refused():
    s = SCHEMA
    B = tflite_io.FlatbufferBuilder(s)
    p = act(0.05, 128)
    x = B.activation("x", (1, 5, 5, 1), p)
    y = B.activation("y", (1, 3, 3, 1), p)
    opts = s.Pool2DOptionsT()
    opts.padding, opts.strideH, opts.strideW, opts.filterHeight, opts.filterWidth = s.Padding.SAME, 2, 2, 2, 2
    B.op(OP.AVERAGE_POOL_2D, [x], [y], s.BuiltinOptions.Pool2DOptions, opts, version=2)
    one_line_error(B.finish([x], [y], FLATBUFFERS), "operator 0 (AVERAGE_POOL_2D)", "divisor")


def test_golden_and_verify_of_a_tflite_file(tmp_path, capsys, monkeypatch, images):
    # `sqref golden MODEL.tflite`: the imported integer model recorded as it is (nothing quantized or
    # calibrated), then checked by TFLite's interpreter (XNNPACK computes as mode onnxruntime) and onnxruntime
    from sqref import cli

    qmodel = quantize_model(sqref.load(DATA_DIR / "lenet5.h5"), bits=8, per_channel=True)
    imodel = integer.build_integer_model(qmodel, integer.calibrate(qmodel, images[0]))
    (tmp_path / "m.tflite").write_bytes(bytes(tflite_io.build_tflite(imodel, 1)[0]))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["golden", "m.tflite", "--mode", "onnxruntime", "--count", "20", "-o", "g.h5"]) == 0
    assert "activations: as stored in the model file" in capsys.readouterr().out
    for backend in ("tflite", "onnxruntime", "sqref"):
        assert cli.main(["verify", "g.h5", "--backend", backend]) == 0, backend
        assert "OK: all 9 tensors are bit-exact" in capsys.readouterr().out
    assert cli.main(["golden", "m.tflite", "--mode", "onnxruntime", "--calib", "x.npz", "-o", "h.h5"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "activation parameters are stored in it" in err
