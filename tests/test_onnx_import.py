"""sqref.backends.onnx_import.import_onnx: float ONNX graphs into sqref Models.

Models come from torch.onnx.export (the dynamo exporter, torch's default,
which needs onnxscript, with and without its optimizer, and the TorchScript
exporter) of LeNet-5-like, ResNet-18-shaped and MobileNetV2-shaped nets, and
from onnx.helper for what the exporters fold away (BatchNormalization, MatMul +
Add). Outputs are compared with torch and with onnxruntime: float32 results
of different summation orders, so at a float32 tolerance (rtol 1e-5 of the
largest magnitude: each output is a sum of at most a few thousand float32
products, whose reordering moves it by a few ulps of the largest partial
sum), after an exact check of the structure.
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import sqref  # noqa: E402
from sqref.backends import onnx as onnx_io  # noqa: E402
from sqref.backends.onnx_import import import_onnx  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


class LeNet5(torch.nn.Module):
    """The Caffe LeNet-5 of sqref.zoo, in torch, with a final softmax and a dropout."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 20, 5), torch.nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = torch.nn.Linear(800, 500), torch.nn.Linear(500, 10)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(self.conv1(x), 2)
        x = torch.nn.functional.max_pool2d(self.conv2(x), 2)
        x = self.drop(torch.relu(self.fc1(torch.flatten(x, 1))))
        return torch.softmax(self.fc2(x), dim=1)


class SmallNet(torch.nn.Module):
    """Padding, stride, groups, BatchNorm (folded by the exporters), average pooling, view, bias-free linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.fc = torch.nn.Linear(6 * 4 * 4, 7, bias=False)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.nn.functional.avg_pool2d(self.conv2(x), 2)
        return self.fc(x.view(x.size(0), -1))


def export(module, shape, tmp_path, dynamo):
    module.eval()
    torch.manual_seed(0)
    for m in module.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path / f"m_{dynamo}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=dynamo)
    return path


@pytest.mark.parametrize("dynamo", [True, False])
@pytest.mark.parametrize("net, shape", [(LeNet5, (3, 1, 28, 28)), (SmallNet, (3, 2, 16, 16))])
def test_torch_exported_nets_import_and_agree(net, shape, dynamo, tmp_path):
    torch.manual_seed(1)
    module = net()
    path = export(module, shape, tmp_path, dynamo)
    model = import_onnx(path)
    x = np.random.default_rng(2).random(shape).astype(np.float32)
    logits = sqref.run(model, x)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    if net is LeNet5:  # the softmax was dropped: sqref outputs logits
        assert [layer.kind for layer in model.layers] == ["conv2d", "max_pool2d", "conv2d", "max_pool2d", "flatten",
                                                          "linear", "relu", "linear"]
        np.testing.assert_allclose(sqref.ops.softmax(logits), want, rtol=1e-5, atol=1e-6)
        assert model.param_count() == 431_080
    else:
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(sqref.ops.softmax(logits) if net is LeNet5 else logits, ort_out, rtol=1e-5, atol=1e-5)


def hand_model(nodes, inits, in_shape, out_shape=None):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_batchnorm_is_folded_and_matmul_add_becomes_a_linear():
    rng = np.random.default_rng(0)
    f = lambda *s: rng.normal(0, 1, s).astype(np.float32)  # noqa: E731
    inits = {"w": f(3, 1, 3, 3), "g": f(3), "b": f(3), "m": f(3), "v": np.abs(f(3)) + 0.5,
             "shape": np.array([0, -1], np.int64), "W": f(3 * 4 * 4, 5), "B": f(5)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "B"], ["y"])]
    model = hand_model(nodes, inits, [2, 1, 8, 8])
    imported = import_onnx(model)
    assert [layer.kind for layer in imported.layers] == ["conv2d", "relu", "max_pool2d", "flatten", "linear"]
    assert imported.layers[-1].bias is not None
    x = rng.random((2, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sqref.run(imported, x), session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_gemm_alpha_beta_and_global_average_pool():
    rng = np.random.default_rng(1)
    inits = {"w": rng.normal(0, 1, (4, 2, 1, 1)).astype(np.float32),
             "W": rng.normal(0, 1, (3, 4)).astype(np.float32), "B": rng.normal(0, 1, 3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1, alpha=0.5, beta=2.0)]
    model = hand_model(nodes, inits, [1, 2, 5, 5])
    x = rng.random((1, 2, 5, 5)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sqref.run(import_onnx(model), x), session.run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nodes, inits, match", [
    ([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], {}, "only as a graph output"),
    ([helper.make_node("Erf", ["x"], ["y"])], {}, "unsupported ONNX op 'Erf' at node 0 .*; sqref imports Conv, "),
    ([helper.make_node("Reshape", ["x", "s"], ["y"])], {"s": np.array([4, -1], np.int64)}, "changes the batch axis"),
    ([helper.make_node("Sub", ["s", "x"], ["y"])], {"s": np.ones(1, np.float32)}, "constant first operand"),
    ([helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], {}, "would join batches"),
    ([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1])], {}, "spatial axes"),
    ([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": np.ones((1, 1, 2), np.float32)}, "only 2-D convolutions"),
    ([helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")], {"p": np.zeros(8, np.int64)}, "only Pad with zeros"),
    ([helper.make_node("Add", ["x", "x"], ["y"]), helper.make_node("Relu", ["z"], ["w"])], {}, "dangling"),
    ([helper.make_node("Relu", ["y"], ["z"]), helper.make_node("Relu", ["z"], ["y"])], {}, "cycle"),
])
def test_unsupported_graphs_name_the_problem(nodes, inits, match):
    with pytest.raises(ValueError, match=match) as info:
        import_onnx(hand_model(nodes, inits, [2, 1, 4, 4]))
    assert "\n" not in str(info.value)


def test_imported_model_runs_the_whole_integer_pipeline(tmp_path):
    # import -> quantize -> integer model -> export -> onnxruntime: the pieces fit together
    from sqref import integer
    from sqref.backends.probe import resolve_accumulate
    from sqref.qmodel import quantize_model

    torch.manual_seed(3)
    model = import_onnx(export(SmallNet(), (2, 2, 16, 16), tmp_path, False))
    q = quantize_model(model, bits=8)
    x = np.random.default_rng(4).random((8, 2, 16, 16)).astype(np.float32)
    imodel = integer.build_integer_model(q, integer.calibrate(q, x))
    accumulate, _ = resolve_accumulate("onnxruntime")  # what this machine's onnxruntime does, probed
    logits, outs = integer.run_integer(imodel, x, accumulate=accumulate, return_intermediates=True)
    got_logits, got = onnx_io.run_onnxruntime(imodel, x)
    assert got_logits.tobytes() == logits.tobytes()
    assert all(np.array_equal(got[n], o) for n, o in zip(imodel.names, outs))


# ----------------------------------------------------------------------------- graphs: residual and depthwise nets


class BasicBlock(torch.nn.Module):
    """ResNet's basic block: two 3x3 convs with batch norm, an identity or 1x1-projection shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18Shaped(torch.nn.Module):
    """ResNet-18's shape (a stem, 4 stages of 2 basic blocks, global average pool, fc), 8 channels wide."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for stage, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            blocks += [BasicBlock(cin, cout, 1 if stage == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks, self.pool, self.fc = nn.Sequential(*blocks), nn.AdaptiveAvgPool2d(1), nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project; ReLU6; a residual when shapes allow."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        nn, hidden = torch.nn, cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Shaped(torch.nn.Module):
    """MobileNetV2's shape, small: a stride-2 stem, inverted residuals, a hard-swish head, mean over H and W."""

    def __init__(self, classes=10):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        blocks, cin = [], 16
        for expand, cout, repeat, stride in [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 1, 1)]:
            for i in range(repeat):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish())
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


EXPORTERS = {  # torch 2.13's default (dynamo, optimized), dynamo unoptimized, TorchScript, dynamo with a symbolic batch
    "dynamo": dict(dynamo=True),
    "dynamo-raw": dict(dynamo=True, optimize=False),
    "torchscript": dict(dynamo=False),
    "dynamo-batch": dict(dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)),
}


def ort_tensors(path, names, x):
    """Every named tensor of the ONNX model at `path`, as onnxruntime computes it."""
    proto = onnx.load(str(path))
    outputs = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in names if t not in outputs)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, {session.get_inputs()[0].name: x})
    return dict(zip([o.name for o in session.get_outputs()], values))


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("net", [ResNet18Shaped, MobileNetV2Shaped])
def test_residual_and_depthwise_exports_import_and_match(net, exporter, tmp_path):
    torch.manual_seed(5)
    module = net().eval()
    for m in module.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / f"{net.__name__}_{exporter}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), verbose=False, **EXPORTERS[exporter])
    model, tensors = import_onnx(path, tensor_map=True)
    assert not model.is_chain and model.outputs == ("fc",)
    kinds = [layer.kind for layer in model.layers]
    assert kinds.count("conv2d") == 20 and "batch_norm" not in kinds  # every batch norm folded
    if net is ResNet18Shaped:
        assert kinds.count("add") == 8 and sum(len(w) == 2 for w in model.wiring) == 8
    else:
        assert kinds.count("clip") == 13 and kinds.count("hard_swish") == 1 and kinds.count("add") == 2
        assert any(layer.kind == "conv2d" and layer.groups > 1 for layer in model.layers)
    out, inter = sqref.run(model, x.numpy(), return_intermediates=True)
    with torch.no_grad():
        want = module(x).numpy()
    scale = np.abs(want).max()
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * scale)  # float32 summation order (module docstring)
    got = ort_tensors(path, tensors.values(), x.numpy())
    for name, tensor in tensors.items():  # every intermediate tensor against onnxruntime's
        np.testing.assert_allclose(inter[name], got[tensor], rtol=0, atol=1e-5 * np.abs(got[tensor]).max(),
                                   err_msg=name)


def test_import_save_load_run_is_exact(tmp_path):
    torch.manual_seed(6)
    module = MobileNetV2Shaped().eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, 32, 32),), str(path), verbose=False)
    model = import_onnx(path)
    sqref.save(model, tmp_path / "m.h5")
    back = sqref.load(tmp_path / "m.h5")
    assert (back.names, back.wiring, back.outputs) == (model.names, model.wiring, model.outputs)
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    assert sqref.run(back, x).tobytes() == sqref.run(model, x).tobytes()


def test_declared_outputs_are_respected():
    """A trailing Relu the graph does not output is not imported; two outputs come back as two."""
    w = np.ones((2, 1, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Relu", ["s"], ["unused"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [layer.kind for layer in model.layers] == ["conv2d", "relu", "sigmoid"]
    assert len(model.outputs) == 2
    x = np.random.default_rng(1).normal(size=(1, 1, 3, 3)).astype(np.float32)
    r, s = sqref.run(model, x)
    np.testing.assert_array_equal(r, np.maximum(np.concatenate([x, x], 1), 0))


def test_constant_subgraphs_are_folded():
    """Transpose of a weight, Shape -> Gather -> Concat -> Reshape, ConstantOfShape and Identity fold away."""
    rng = np.random.default_rng(2)
    inits = {"wt": rng.normal(size=(16, 3)).astype(np.float32), "zero": np.array([0], np.int64),
             "minus": np.array([-1], np.int64), "dims": np.array([3], np.int64)}
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0]),
             helper.make_node("Identity", ["w"], ["w2"]),
             helper.make_node("Gemm", ["flat", "w2"], ["g"], transB=1),
             helper.make_node("ConstantOfShape", ["dims"], ["bias"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Add", ["g", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model = import_onnx(proto)
    assert [layer.kind for layer in model.layers] == ["flatten", "linear"]
    np.testing.assert_array_equal(model.layers[1].bias, [0.5, 0.5, 0.5])
    x = rng.random((2, 1, 4, 4), dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sqref.run(model, x), session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_a_batch_norm_is_not_folded_into_a_conv_that_others_read():
    """Conv -> Identity -> {BatchNormalization, Relu}: the conv's output is read twice
    (through the Identity), so the batch norm stays a layer and both branches are right."""
    rng = np.random.default_rng(3)
    inits = {"w": rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "g": np.float32([1.5, 0.5]),
             "b": np.float32([0.1, -0.2]), "m": np.float32([0.3, -0.1]), "v": np.float32([2.0, 0.5])}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Identity", ["c"], ["i"]),
             helper.make_node("BatchNormalization", ["i", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["i"], ["r"]),
             helper.make_node("Add", ["n", "r"], ["y"])]
    proto = hand_model(nodes, inits, [2, 1, 5, 5])
    model = import_onnx(proto)
    assert [layer.kind for layer in model.layers] == ["conv2d", "batch_norm", "relu", "add"]
    x = rng.random((2, 1, 5, 5), dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sqref.run(model, x), session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_tensorflow_same_padding_imports_as_pad_then_conv():
    """torch's F.pad before an unpadded stride-2 conv (how TensorFlow's SAME is written) exports as Pad."""
    class Same(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3, stride=2)

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))

    torch.manual_seed(7)
    module = Same().eval()
    x = torch.randn(1, 2, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(module, (x,), dynamo=True, verbose=False).model_proto
    model = import_onnx(proto)
    assert [layer.kind for layer in model.layers] == ["pad", "conv2d"] and model.layers[0].pads == (0, 0, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(sqref.run(model, x.numpy()), module(x).numpy(), rtol=1e-5, atol=1e-6)
