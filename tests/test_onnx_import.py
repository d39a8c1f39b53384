"""sqref.backends.onnx.import_onnx: float ONNX models into sqref Models.

Models come from torch.onnx.export (the dynamo exporter, which needs onnxscript,
and the TorchScript exporter) of LeNet-5-like nets, and from onnx.helper for
what the exporters fold away (BatchNormalization, MatMul + Add). Outputs are
compared with torch and with onnxruntime: float32 results from different
summation orders, so at a float32 tolerance (rtol 1e-5, atol 1e-6), after an
exact check of the structure.
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
    model = onnx_io.import_onnx(path)
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
    imported = onnx_io.import_onnx(model)
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
    np.testing.assert_allclose(sqref.run(onnx_io.import_onnx(model), x), session.run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nodes, inits, match", [
    ([helper.make_node("Sigmoid", ["x"], ["y"])], {}, "unsupported ONNX op 'Sigmoid'"),
    ([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], {}, "last node"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])], {}, "symmetric"),
    ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], {}, "count_include_pad"),
    ([helper.make_node("Reshape", ["x", "s"], ["y"])], {"s": np.array([2, 2, -1], np.int64)}, "not a flatten"),
    ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])], {}, "bias"),
])
def test_unsupported_graphs_name_the_problem(nodes, inits, match):
    with pytest.raises(ValueError, match=match):
        onnx_io.import_onnx(hand_model(nodes, inits, [2, 1, 4, 4]))


def test_imported_model_runs_the_whole_integer_pipeline(tmp_path):
    # import -> quantize -> integer model -> export -> onnxruntime: the pieces fit together
    from sqref import integer
    from sqref.backends.probe import resolve_accumulate
    from sqref.qmodel import quantize_model

    torch.manual_seed(3)
    model = onnx_io.import_onnx(export(SmallNet(), (2, 2, 16, 16), tmp_path, False))
    q = quantize_model(model, bits=8)
    x = np.random.default_rng(4).random((8, 2, 16, 16)).astype(np.float32)
    imodel = integer.build_integer_model(q, integer.calibrate(q, x))
    accumulate, _ = resolve_accumulate("onnxruntime")  # what this machine's onnxruntime does, probed
    logits, outs = integer.run_integer(imodel, x, accumulate=accumulate, return_intermediates=True)
    got_logits, got = onnx_io.run_onnxruntime(imodel, x)
    assert got_logits.tobytes() == logits.tobytes()
    assert all(np.array_equal(got[n], o) for n, o in zip(imodel.names, outs))
