"""The integer path on graph models: residual adds, zero pads, ReLU6 clips and global average pools.

Oracles: the layer rules written out by hand on a tiny graph (which layers fuse,
which parameters each tensor gets); the loop-nest oracles of the add and the
global average pool (sqref.integer.qlinear_elementwise / qlinear_pool) applied
tensor by tensor along the wiring; onnxruntime running the exported QOperator
graph (com.microsoft QLinearAdd and QLinearGlobalAveragePool), every tensor
compared exactly; golden files of graphs written, read back and verified.
"""
import json

import h5py

import numpy as np
import pytest

from sqref import cli, integer, zoo
from sqref.data import DATA_DIR
from sqref.hdf5 import FileFormatError, manifest_sha256
from sqref.integer import golden
from sqref.integer.qlinear_elementwise import oracle_qlinear_add
from sqref.integer.qlinear_pool import oracle_qlinear_global_average_pool
from sqref.integer.verify import backends_for, verify
from sqref.model import INPUT, Add, Clip, Conv2d, GlobalAvgPool, GraphBuilder, HardSwish, Linear, Pad, ReLU
from sqref.qmodel import quantize_model


def tiny_graph(seed=0):
    """input -> pad -> conv (stride 2) -> relu6 -> conv -> add(skip) -> relu -> global pool -> fc: every new layer."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.add("pad", Pad((0, 0, 1, 1)), INPUT)
    x = g.add("stem", Conv2d(rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32),
                             rng.normal(0, 0.1, 4).astype(np.float32), (2, 2), (0, 0)), x)
    x = g.add("stem.relu6", Clip(0.0, 6.0), x)
    y = g.add("conv", Conv2d(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), None, (1, 1), (1, 1)), x)
    y = g.add("add", Add(), y, x)
    y = g.add("add.relu", ReLU(), y)
    y = g.add("pool", GlobalAvgPool(keepdims=False), y)
    g.add("fc", Linear(rng.normal(0, 0.5, (3, 4)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32)), y)
    return g.model((2, 9, 9))


def ort_accumulate(imodel):
    """{layer: accumulation} of onnxruntime's kernels on this machine (probed once per kind of kernel)."""
    from sqref.backends.probe import resolve_layer_accumulate
    return resolve_layer_accumulate("onnxruntime", imodel)[0]


def _act(p):
    return np.float32(p.scale), np.uint8(p.zero_point)


def integer_model_of(model, n=64, seed=1):
    x = np.random.default_rng(seed).normal(0, 1, (n, *model.input_shape)).astype(np.float32)
    q = quantize_model(model, bits=8, scheme="symmetric")
    return integer.build_integer_model(q, integer.calibrate(q, x)), x


# ------------------------------------------------------------------ literal: what fuses, what each tensor gets


def test_the_tiny_graph_fuses_and_wires_as_written():
    im, _ = integer_model_of(tiny_graph())
    kinds = {name: layer for name, layer in zip(im.names, im.layers)}
    assert im.wiring == tiny_graph().wiring and not im.is_chain
    assert isinstance(kinds["pad"], integer.IntPad) and kinds["pad"].pads == (0, 0, 1, 1)
    # the conv's only reader is a clip that quantizes to [z_y, 255]: fused, and the clip is an identity
    assert kinds["stem"].relu and kinds["stem.relu6"].fused and kinds["stem"].y == kinds["stem.relu6"].y
    assert kinds["stem.relu6"].y.zero_point == 0 and kinds["stem.relu6"].q_hi == 255
    # the add reads the conv and the clip's output (the skip); its ReLU fuses into it
    assert kinds["add"].a == kinds["conv"].y and kinds["add"].b == kinds["stem.relu6"].y
    assert kinds["add"].relu and kinds["add.relu"].fused and kinds["add"].y.zero_point == 0
    assert not kinds["conv"].relu  # read by the add only, which is no activation
    # the global pool gets its own calibrated parameters; fc reads them
    assert kinds["fc"].x == kinds["pool"].y != kinds["pool"].x
    assert integer.output_shapes(im) == [(2, 10, 10), (4, 4, 4), (4, 4, 4), (4, 4, 4), (4, 4, 4), (4, 4, 4), (4,), (3,)]


def test_a_tensor_with_two_readers_keeps_its_own_relu():
    # stem's output feeds the ReLU and the add: it cannot be clamped before the add reads it
    g = GraphBuilder()
    rng = np.random.default_rng(3)
    x = g.add("stem", Conv2d(rng.normal(0, 0.5, (2, 1, 1, 1)).astype(np.float32), None, (1, 1), (0, 0)), INPUT)
    r = g.add("relu", ReLU(), x)
    g.add("add", Add(), r, x)
    im, x_in = integer_model_of(g.model((1, 4, 4)))
    stem, relu, add = im.layers
    assert not stem.relu and not relu.fused and relu.x == stem.y
    logits, outs = integer.run_integer(im, x_in, return_intermediates=True)
    np.testing.assert_array_equal(outs[1], np.maximum(outs[0], np.uint8(stem.y.zero_point)))


def test_the_path_refuses_what_it_cannot_run_in_one_line():
    g = GraphBuilder()
    x = g.add("stem", Conv2d(np.ones((2, 1, 1, 1), np.float32), None, (1, 1), (0, 0)), INPUT)
    g.add("hswish", HardSwish(), x)
    with pytest.raises(ValueError, match="layer 'hswish': the integer path has no hard_swish layer"):
        integer_model_of(g.model((1, 4, 4)))
    im, x = integer_model_of(tiny_graph())
    with pytest.raises(ValueError, match="layer 'add' .*mode 'fbgemm' has no add"):
        integer.run_integer(im, x, mode="fbgemm")


# ------------------------------------------------------------------ the oracles, tensor by tensor


@pytest.mark.parametrize("mode", ["onnxruntime", "tflite"])
def test_add_and_pool_follow_their_oracles_along_the_wiring(mode):
    im, x = integer_model_of(tiny_graph(), n=8)
    if mode == "tflite":  # no TFLite global pool is modelled: check the adds only
        im = integer.IntegerModel(im.layers[:6], im.names[:6], im.input_shape, im.input, wiring=im.wiring[:6])
    _, outs = integer.run_integer(im, x, mode=mode, return_intermediates=True)
    env = dict(zip(im.names, outs))
    for name, layer, reads in zip(im.names, im.layers, im.wiring):
        if isinstance(layer, integer.IntAdd):
            want = oracle_qlinear_add(env[reads[0]], *_act(layer.a), env[reads[1]], *_act(layer.b), *_act(layer.y),
                                      mode=mode)
            np.testing.assert_array_equal(env[name], np.maximum(want, np.uint8(layer.y.zero_point)))
        if isinstance(layer, integer.IntGlobalAvgPool):
            want = oracle_qlinear_global_average_pool(env[reads[0]], *_act(layer.x), *_act(layer.y))
            np.testing.assert_array_equal(env[name], want.reshape(env[name].shape))
        if isinstance(layer, integer.IntPad):
            z = layer.x.zero_point
            assert (env[name][:, :, -1, :] == z).all() and (env[name][:, :, :, -1] == z).all()
            np.testing.assert_array_equal(env[name][:, :, :9, :9], integer.quantize_input(im, x, mode=mode))


# ------------------------------------------------------------------ onnxruntime, every tensor


@pytest.mark.parametrize("quant_format", ["qoperator", "qdq"])
@pytest.mark.parametrize("build", [tiny_graph, lambda: zoo.resnet_mini(seed=2), lambda: zoo.lenet5(seed=2)],
                         ids=["tiny", "resnet_mini", "lenet5"])
def test_onnxruntime_runs_the_graph_bit_exactly(build, quant_format):
    pytest.importorskip("onnxruntime")
    from sqref.backends import onnx as onnx_backend
    from sqref.integer import onnx_graph
    im, x = integer_model_of(build(), n=32)
    # onnxruntime's u8 x s8 kernels saturate int16 pairs on x86 without VNNI: probed, per kind of kernel
    logits, outs = integer.run_integer(im, x, return_intermediates=True, accumulate=ort_accumulate(im))
    if quant_format == "qdq":  # onnxruntime's optimizer fuses every group back into an integer kernel
        optimized, _ = onnx_graph.ort_partition(onnx_backend.export_onnx(im, quant_format="qdq"))
        ops = {n.op_type for n in optimized.graph.node}
        assert not ops & {"Conv", "Gemm", "Add", "GlobalAveragePool", "AveragePool"}, ops
        assert "QLinearConv" in ops
    ort_logits, ort = onnx_backend.run_onnxruntime(im, x, quant_format=quant_format)
    for name, mine in zip(im.names, outs):
        np.testing.assert_array_equal(ort[name], mine, err_msg=name)
    assert ort_logits.tobytes() == logits.tobytes()


def test_which_backends_can_verify_a_graph():
    im, _ = integer_model_of(tiny_graph())
    assert backends_for(im) == ("sqref", "onnxruntime")
    chain, _ = integer_model_of(zoo.lenet300())
    assert "torch" in backends_for(chain) and "onnx-reference" in backends_for(chain)


# ------------------------------------------------------------------ golden files of graphs


def test_a_graph_golden_file_round_trips_and_verifies(tmp_path):
    im, x = integer_model_of(tiny_graph(), n=16)
    g = golden.make_golden(im, x, accumulate="auto")  # what onnxruntime's kernels do here, probed
    path = tmp_path / "g.h5"
    golden.write_golden(g, path)
    back = golden.read_golden(path)
    assert back.imodel.wiring == im.wiring and [type(a) for a in back.imodel.layers] == [type(a) for a in im.layers]
    for a, b in zip(back.imodel.layers, im.layers):
        if not isinstance(a, (integer.IntConv2d, integer.IntLinear)):  # (those hold arrays: no ==)
            assert a == b
    assert verify(back, "sqref")["match"]
    with pytest.raises(ValueError, match="backend 'torch' verifies chains .* verify it with sqref or onnxruntime"):
        verify(back, "torch")
    pytest.importorskip("onnxruntime")
    assert verify(back, "onnxruntime")["match"]


def test_a_golden_file_whose_wiring_is_broken_is_refused(tmp_path):
    im, x = integer_model_of(tiny_graph(), n=4)
    path = tmp_path / "g.h5"
    golden.write_golden(golden.make_golden(im, x, accumulate="exact"), path)
    for bad, message in [(json.dumps(["nowhere"]), "reads \\['nowhere'\\]"), ("not json", "not valid JSON"),
                         (json.dumps([1]), "list of 1 or 2 tensor names")]:
        broken = tmp_path / "broken.h5"
        broken.write_bytes(path.read_bytes())
        with h5py.File(broken, "r+") as f:
            f["layers/0004"].attrs["inputs"] = bad  # the add
            f.attrs["manifest_sha256"] = manifest_sha256(f)  # resealed, as a careless tool would
        with pytest.raises(FileFormatError, match=message):
            golden.read_golden(broken)


def test_the_cli_golden_and_verify_of_the_shipped_resnet(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    argv = ["golden", str(DATA_DIR / "resnet_mini.h5"), "--mode", "onnxruntime", "--count", "20", "-o", "r.h5"]
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0 and "--backend sqref|onnxruntime\n" in out
    for onnx_format in ("qoperator", "qdq"):
        assert cli.main(["verify", "r.h5", "--backend", "onnxruntime", "--onnx-format", onnx_format]) == 0
        assert "all 23 tensors are bit-exact" in capsys.readouterr().out
    assert cli.main(["verify", "r.h5", "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "verifies chains of layers" in err


def test_efficientnet_lite0_shaped_random_weights_run_bit_exactly_in_onnxruntime():
    # The network of sqref.pretrained (SAME pads, depthwise convs, ReLU6, 9 residual adds, a global
    # pool), with random weights and batch-norm statistics, per-channel 8-bit weights, at 32 x 32.
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from sqref import pretrained
    from sqref.backends import onnx as onnx_backend
    from test_pretrained import Lite0  # tests/ is on sys.path (pytest's default import mode)

    torch.manual_seed(1)
    net = Lite0("same").eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5), m.weight.data.uniform_(0.5, 1.5)
    model = pretrained.efficientnet_lite0(net.state_dict_as_published(), image_size=32)
    x = np.random.default_rng(2).normal(0, 1, (8, 3, 32, 32)).astype(np.float32)
    q = quantize_model(model, bits=8, per_channel=True, scheme="symmetric")
    im = integer.build_integer_model(q, integer.calibrate(q, x))
    kinds = [layer.kind for layer in im.layers]
    assert kinds.count("add") == 9 and kinds.count("pad") > 0 and kinds.count("clip") == 33
    logits, outs = integer.run_integer(im, x, return_intermediates=True, accumulate=ort_accumulate(im))
    ort_logits, ort = onnx_backend.run_onnxruntime(im, x)
    for name, mine in zip(im.names, outs):
        np.testing.assert_array_equal(ort[name], mine, err_msg=name)
    assert ort_logits.tobytes() == logits.tobytes()
