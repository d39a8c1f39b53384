"""Quantized ONNX models that sqref did not make: onnxruntime's partition run node by node, golden files
of them, and `sqref verify`'s contract (sqref.integer.onnx_graph, onnx_golden, qlinear_gemm).

Oracles: onnxruntime itself (one-node QGemm models; whole models made by onnxruntime's quantize_static
from small residual and depthwise-separable CNNs defined here in torch.nn, QDQ and QOperator, U8S8 and
S8S8, per tensor and per channel, every tensor compared); literal cases of the tie rule; a golden file
altered on purpose, which must fail.
"""
import collections
import hashlib

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqref import cli
from sqref.backends.probe import accumulation
from sqref.hdf5 import FileFormatError, manifest_sha256
from sqref.integer import onnx_golden, onnx_graph
from sqref.integer.qlinear_gemm import qgemm

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

F32 = np.float32


# ------------------------------------------------------------------ QGemm


def test_qgemm_literal():
    # a = [[2, 4]] (z_a = 1), b = [[1], [2]] (int8, z_b = 0), c = [3]: acc = 1*1 + 3*2 + 3 = 10;
    # m = float32(1 * 0.5 * 0.25) / 0.25 = 0.5: 5.0 + z_y 10 -> 15
    y = qgemm(np.array([[2, 4]], np.uint8), F32(0.5), np.uint8(1), np.array([[1], [2]], np.int8), F32(0.25),
              np.int8(0), np.array([3], np.int32), F32(0.25), np.uint8(10))
    assert y.tolist() == [[15]] and y.dtype == np.uint8
    # a tie: acc = 5, m = 0.5 -> 2.5 -> 2 (half even), + 0
    y = qgemm(np.array([[5]], np.uint8), F32(1), np.uint8(0), np.array([[1]], np.int8), F32(0.5), np.int8(0),
              None, F32(1), np.uint8(0))
    assert y.tolist() == [[2]]
    # no y_scale: float32 acc * m
    y = qgemm(np.array([[5]], np.uint8), F32(1), np.uint8(0), np.array([[1]], np.int8), F32(0.5), np.int8(0))
    assert y.dtype == np.float32 and y.tolist() == [[2.5]]
    with pytest.raises(ValueError, match="K differs"):
        qgemm(np.zeros((2, 3), np.uint8), F32(1), np.uint8(0), np.zeros((4, 2), np.int8), F32(1), np.int8(0))


def _qgemm_model(a, sa, za, b, sb, zb, c, sy, zy, **attrs):
    def init(name, v):
        return numpy_helper.from_array(np.asarray(v), name)
    inits = [init("sa", sa), init("za", za), init("B", b), init("sb", sb), init("zb", zb), init("C", c),
             init("sy", sy), init("zy", zy)]
    etype = helper.np_dtype_to_tensor_dtype(a.dtype)
    node = helper.make_node("QGemm", ["A", "sa", "za", "B", "sb", "zb", "C", "sy", "zy"], ["Y"],
                            domain="com.microsoft", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", etype, list(a.shape))],
                              [helper.make_tensor_value_info("Y", etype, None)], initializer=inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


QGEMM_RESULTS = {"cases": 0, "exact": 0}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_qgemm_matches_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    signed = bool(rng.integers(0, 2))
    adt, bdt = (np.int8, np.int8) if signed else (np.uint8, [np.uint8, np.int8][int(rng.integers(0, 2))])
    m, k, n = (int(v) for v in rng.integers(1, [6, 300, 10]))
    ta, tb = (int(v) for v in rng.integers(0, 2, 2))
    ai, bi = np.iinfo(adt), np.iinfo(bdt)
    a = rng.integers(ai.min, ai.max + 1, (k, m) if ta else (m, k)).astype(adt)
    b = rng.integers(bi.min, bi.max + 1, (n, k) if tb else (k, n)).astype(bdt)
    per_column = bool(rng.integers(0, 2))
    sb = rng.uniform(1e-3, 0.05, n if per_column else ()).astype(F32)
    zb = np.zeros(n if per_column else (), bdt)  # onnxruntime's QGemm takes symmetric per-column b
    args = (a, F32(rng.uniform(1e-3, 0.05)), adt(rng.integers(ai.min, ai.max + 1)), b, sb, zb,
            rng.integers(-5000, 5000, n).astype(np.int32), F32(rng.uniform(0.01, 0.5)),
            adt(rng.integers(ai.min, ai.max + 1)))
    alpha = float(rng.choice([1.0, 0.5, 1.7]))
    want = ort.InferenceSession(_qgemm_model(*args, alpha=alpha, transA=ta, transB=tb).SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    # u8 x s8: onnxruntime's kernels saturate int16 pairs on x86 without VNNI (probed); other signs are exact
    pairs = adt == np.uint8 and bdt == np.int8 and accumulation("onnxruntime", "matmul") == "int16-pairs"
    got = qgemm(*args, alpha=alpha, trans_a=ta, trans_b=tb, accumulate="int16-pairs" if pairs else "exact")
    QGEMM_RESULTS["cases"] += 1
    QGEMM_RESULTS["exact"] += int(np.array_equal(got, want))
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ whole models from onnxruntime's quantizer


def _export(tmp_path, kind):
    """A small float CNN exported by torch's ONNX exporter: "residual" (conv, BN, ReLU, a residual add,
    a depthwise conv, a strided 1x1, global mean, linear) or "separable" (MobileNet-style blocks)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.c3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.c4, self.fc = nn.Conv2d(8, 16, 1, stride=2), nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(x + self.c3(torch.relu(self.c2(x))))
            return self.fc(torch.relu(self.c4(x)).mean((2, 3)))

    class Separable(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.dw, self.pw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)
            self.dw2, self.pw2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.Conv2d(8, 16, 1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = nn.functional.relu6(self.stem(x))
            x = x + self.pw(nn.functional.relu6(self.dw(x)))
            x = self.pw2(nn.functional.relu6(self.dw2(x)))
            return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

    net = (Residual if kind == "residual" else Separable)().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}}, dynamo=False)
    return path


def _quantize(float_path, out, fmt, activations, per_channel):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(7)
            self.feeds = iter([{"input": rng.normal(size=(1, 3, 16, 16)).astype(F32)} for _ in range(16)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=getattr(QuantFormat, fmt),
                    activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                    per_channel=per_channel)
    return out


CONFIGS = [("residual", "QDQ", "QInt8", True), ("residual", "QDQ", "QUInt8", False),
           ("residual", "QOperator", "QUInt8", False), ("residual", "QOperator", "QUInt8", True),
           ("separable", "QDQ", "QInt8", True), ("separable", "QOperator", "QUInt8", True),
           ("residual", "QDQ", "QInt16", True)]  # int16 activations: onnxruntime fuses nothing, every group an island
STATUSES = {"exact", "float bound", "ties", "follows"}


@pytest.mark.parametrize("kind,fmt,activations,per_channel", CONFIGS)
def test_quantize_static_models_verify_against_onnxruntime(tmp_path, kind, fmt, activations, per_channel):
    path = _quantize(_export(tmp_path, kind), tmp_path / "q.onnx", fmt, activations, per_channel)
    x = np.random.default_rng(3).normal(size=(64, 3, 16, 16)).astype(F32)
    g = onnx_golden.make_onnx_golden(onnx.load(str(path)), {"input": x})
    onnx_golden.write_onnx_golden(g, tmp_path / "g.h5")
    back = onnx_golden.read_onnx_golden(tmp_path / "g.h5")
    report = onnx_golden.verify_onnx_golden(back, "onnxruntime")
    assert report["match"], [(r["name"], r["status"]) for r in report["tensors"] if r["status"] not in STATUSES]
    graph = back.graph
    ops = {n.op for n in graph.nodes}
    partition = collections.Counter(n.op for n in graph.nodes)  # printed with -s: docs/quantized_onnx.md quotes it
    print(f"\n  {kind} {fmt} {activations} {'per channel' if per_channel else 'per tensor'}: "
          + ", ".join(f"{op} {k}" for op, k in sorted(partition.items())) + "; statuses "
          + ", ".join(f"{status} {k}" for status, k in sorted(report["counts"].items())))
    if activations != "QInt16":
        assert ops & {"QLinearConv", "QGemm", "QLinearMatMul"}  # onnxruntime fused some groups into integer kernels
    for row, node in zip(report["tensors"], graph.nodes):
        # integer kernels never differ on their own: exact, or following an earlier float difference
        if node.op in {"QLinearConv", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool"}:
            assert row["status"] in ("exact", "follows"), row["name"]
    assert onnx_golden.verify_onnx_golden(back, "sqref")["counts"] == {"exact": len(back.tensors)}


def test_the_contract_fails_on_a_wrong_golden_file(tmp_path):
    path = _quantize(_export(tmp_path, "residual"), tmp_path / "q.onnx", "QOperator", "QUInt8", False)
    x = np.random.default_rng(4).normal(size=(8, 3, 16, 16)).astype(F32)
    g = onnx_golden.make_onnx_golden(onnx.load(str(path)), {"input": x})
    name = next(n.outputs[0] for n in g.graph.nodes if n.op == "QLinearConv")
    g.tensors[name][0, 0, 0, 0] ^= 1  # one code of an integer kernel's output, as a sqref bug would
    report = onnx_golden.verify_onnx_golden(g, "onnxruntime")
    assert not report["match"]
    assert [r["status"] for r in report["tensors"] if r["name"] == name] == ["UNEXPLAINED"]


def test_the_tie_rule_literal():
    node = onnx_graph.Node("q", "QuantizeLinear", "", ("v", "s", "z"), ("y",), {"axis": 1})
    s, z = F32(0.5), np.uint8(10)
    # codes 12 and 13: their tie is (12 - 10 + 0.5) * 0.5 = 1.25
    value, bound = np.array([1.25 + 1e-9, 1.4]), np.array([1e-8, 1e-8])
    golden_codes, backend_codes = np.array([12, 13], np.uint8), np.array([13, 12], np.uint8)
    assert onnx_golden.tie_explained(node, [None, s, z], golden_codes, backend_codes, (value, bound)) == (1, 1)
    # two codes apart is never a tie
    assert onnx_golden.tie_explained(node, [None, s, z], np.array([12], np.uint8), np.array([14], np.uint8),
                                      (np.array([1.25]), np.array([1.0]))) == (0, 1)


def test_accumulation_is_recorded_per_kind_of_kernel(tmp_path):
    path = _quantize(_export(tmp_path, "separable"), tmp_path / "q.onnx", "QOperator", "QUInt8", False)
    graph = onnx_graph.read_graph(onnx_graph.ort_partition(onnx.load(str(path)))[0])
    probed = []
    acc = onnx_golden.node_accumulation(graph, probe=lambda k: probed.append(k) or
                                        {"conv": "int16-pairs", "depthwise": "exact", "matmul": "int16-pairs"}[k])
    convs = [n for n in graph.nodes if n.op == "QLinearConv"]
    depthwise = [n.name for n in convs if int(n.attrs.get("group", 1)) > 1]
    assert depthwise and all(acc[name] == "exact" for name in depthwise)
    assert all(acc[n.name] == "int16-pairs" for n in convs if n.name not in depthwise)
    assert sorted(probed) == sorted(set(probed))  # one probe per kind of kernel


def test_the_two_commands_and_their_errors(tmp_path, capsys, monkeypatch):
    _quantize(_export(tmp_path, "residual"), tmp_path / "q.onnx", "QDQ", "QInt8", True)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(5).normal(size=(40, 3, 16, 16)).astype(F32))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["golden", "q.onnx", "--mode", "onnxruntime", "--inputs", "x.npz", "-o", "g.h5"]) == 0
    out = capsys.readouterr().out
    assert "through the graph onnxruntime" in out and "--backend sqref|onnxruntime" in out
    assert cli.main(["verify", "g.h5", "--backend", "onnxruntime"]) == 0
    verdict = capsys.readouterr().out.strip().splitlines()[-1]
    assert verdict.startswith("OK: ")
    with capsys.disabled():  # with -s: the two commands' summary lines, quoted in docs/quantized_onnx.md
        print("\n" + "\n".join(line for line in out.splitlines() if line.lstrip().startswith(("nodes", "float"))))
        print(verdict)
    for argv, message in [(["verify", "g.h5", "--backend", "torch"], "checked with sqref or onnxruntime"),
                          (["golden", "q.onnx", "--mode", "tflite", "--inputs", "x.npz", "-o", "h.h5"],
                           "--mode onnxruntime")]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "h.h5").exists()
    # a golden file whose stored graph and tensors disagree is refused when read
    with h5py.File(tmp_path / "g.h5", "r+") as f:
        f["tensors/00000"].attrs["name"] = "renamed"
        f.attrs["manifest_sha256"] = manifest_sha256(f)
    with pytest.raises(FileFormatError, match="not those of the stored graph"):
        onnx_golden.read_onnx_golden(tmp_path / "g.h5")


def test_hostile_golden_files_are_refused_in_one_line(tmp_path, capsys):
    path = _quantize(_export(tmp_path, "residual"), tmp_path / "q.onnx", "QOperator", "QUInt8", False)
    x = np.random.default_rng(6).normal(size=(4, 3, 16, 16)).astype(F32)
    good = tmp_path / "g.h5"
    onnx_golden.write_onnx_golden(onnx_golden.make_onnx_golden(onnx.load(str(path)), {"input": x}), good)
    data = good.read_bytes()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.h5").write_bytes(np.random.default_rng(0).bytes(5000))
    for name in ("missing.h5", "graph.h5"):
        (tmp_path / name).write_bytes(data)
    with h5py.File(tmp_path / "missing.h5", "r+") as f:
        del f["optimized"]  # the manifest no longer matches
    with h5py.File(tmp_path / "graph.h5", "r+") as f:  # a damaged graph, every checksum resealed
        damaged = f["optimized"][()]
        damaged[100:200] = 0
        f["optimized"][...] = damaged
        f["optimized"].attrs["sha256"] = hashlib.sha256(damaged.tobytes()).hexdigest()
        f.attrs["manifest_sha256"] = manifest_sha256(f)
    for name, message in [("truncated.h5", "not a readable HDF5 file"), ("random.h5", "not a readable HDF5 file"),
                          ("missing.h5", "manifest checksum mismatch"),
                          ("graph.h5", "the stored graph cannot be read")]:
        assert cli.main(["verify", str(tmp_path / name), "--backend", "onnxruntime"]) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (name, err)


def test_constant_nodes_become_constants_and_unknown_ops_are_named():
    # a Constant feeding a Reshape, then a QuantizeLinear: what a hand-written QDQ graph may hold
    shape = helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, -1], np.int64)))
    reshape = helper.make_node("Reshape", ["x", "shape"], ["flat"])
    quant = helper.make_node("QuantizeLinear", ["flat", "s", "z"], ["q"])
    inits = [numpy_helper.from_array(np.array(0.5, F32), "s"), numpy_helper.from_array(np.array(3, np.uint8), "z")]
    graph = helper.make_graph([shape, reshape, quant], "g", [helper.make_tensor_value_info("x", 1, [1, 2, 2])],
                              [helper.make_tensor_value_info("q", 2, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    g = onnx_graph.read_graph(model)
    assert [n.op for n in g.nodes] == ["Reshape", "QuantizeLinear"] and g.constants["shape"].tolist() == [1, -1]
    env = onnx_graph.run_graph(g, {"x": np.array([[[0.0, 0.5], [1.25, -2.0]]], F32)})
    # round_half_even(x / 0.5) + 3, saturated at 0: 1.25 / 0.5 = 2.5 -> 2, -2 / 0.5 + 3 = -1 -> 0
    assert env["q"].tolist() == [[3, 4, 5, 0]]
    model.graph.node.append(helper.make_node("Erf", ["flat"], ["e"], name="my_erf"))
    with pytest.raises(ValueError, match="node 3 'my_erf' \\(Erf\\): sqref cannot run this op"):
        onnx_graph.read_graph(model)
