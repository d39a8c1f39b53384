"""Graph models (sqref.model): a chain is unchanged, shapes are inferred right,
graphs round-trip through the file format exactly, and bad graphs get one line.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sqref
from sqref import ops
from sqref.data import shipped
from sqref.hdf5 import FileFormatError
from sqref.model import (INPUT, Add, AvgPool2d, BatchNorm, Clip, Concat, Conv2d, Div, Flatten, GlobalAvgPool,
                         HardSigmoid, HardSwish, Linear, MaxPool2d, Model, Mul, Pad, ReLU, Reshape, Sigmoid, infer_shapes,
                         substitute, tensor_shapes, toposort)


def conv(rng, k, c, size=3, padding=1, groups=1, bias=True):
    w = rng.normal(0, 0.3, (k, c // groups, size, size)).astype(np.float32)
    return Conv2d(w, rng.normal(0, 0.1, k).astype(np.float32) if bias else None, padding=(padding, padding),
                  groups=groups)


def residual(seed=0):
    """input -> conv -> relu -> [conv -> add(skip) -> relu6] -> concat(branch) -> gap -> fc."""
    rng = np.random.default_rng(seed)
    layers = (conv(rng, 4, 3), ReLU(), conv(rng, 4, 4), Add(), Clip(0.0, 6.0), conv(rng, 2, 4, 1, 0),
              Concat(1), GlobalAvgPool(keepdims=False),
              Linear(rng.normal(0, 0.3, (5, 6)).astype(np.float32), np.zeros(5, np.float32)))
    names = ("c1", "r1", "c2", "add", "relu6", "branch", "cat", "gap", "fc")
    wiring = ((INPUT,), ("c1",), ("r1",), ("c2", "r1"), ("add",), ("relu6",), ("relu6", "branch"), ("cat",), ("gap",))
    return Model(layers, (3, 8, 8), names, {"arch": "test"}, wiring)


# ----------------------------------------------------------------------------- a chain is the special case


@pytest.mark.parametrize("name", ["lenet5.h5", "lenet300.h5"])
def test_shipped_chains_give_the_same_logits_bit_for_bit(name):
    """run() on a chain is the loop sqref always ran: each layer's op on the previous output."""
    model = sqref.load(shipped(name))
    assert model.is_chain
    x = np.random.default_rng(0).random((16, *model.input_shape), dtype=np.float32)
    expected = x
    for layer in model.layers:
        expected = layer(expected)
    out, inter = sqref.run(model, x, return_intermediates=True)
    assert out.tobytes() == expected.tobytes()
    assert list(inter) == list(model.names) and inter[model.names[-1]] is out


def test_run_frees_tensors_and_keeps_them_on_request():
    model = residual()
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    out, inter = sqref.run(model, x, return_intermediates=True)
    assert out.tobytes() == sqref.run(model, x).tobytes()
    assert set(inter) == set(model.names)
    # literal check of the wiring: the add reads c2 and r1, the concat relu6 and branch
    np.testing.assert_array_equal(inter["add"], inter["c2"] + inter["r1"])
    np.testing.assert_array_equal(inter["relu6"], np.clip(inter["add"], 0, 6))
    np.testing.assert_array_equal(inter["cat"][:, :4], inter["relu6"])
    np.testing.assert_array_equal(inter["cat"][:, 4:], inter["branch"])


def test_several_inputs_and_outputs():
    a, b = Add(), Mul(const=np.float32([2.0]))
    model = Model((a, b), (4,), ("sum", "twice"), wiring=((INPUT, "other"), ("sum",)), outputs=("twice", "sum"),
                  extra_inputs=(("other", (4,)),))
    x, y = np.ones((3, 4), np.float32), np.full((3, 4), 2.0, np.float32)
    twice, total = sqref.run(model, {INPUT: x, "other": y})
    np.testing.assert_array_equal(total, 3.0)
    np.testing.assert_array_equal(twice, 6.0)
    with pytest.raises(ValueError, match="pass a dict"):
        sqref.run(model, x)
    with pytest.raises(ValueError, match="input 'other' shape"):
        sqref.run(model, {INPUT: x, "other": y[:, :2]})


# ----------------------------------------------------------------------------- shape inference


@st.composite
def random_dags(draw):
    """A random DAG over (C, 6, 6) tensors: convs, elementwise ops of two earlier
    tensors (with broadcasting of a (C, 1, 1) global pool), concat, pools, activations."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    shapes = {INPUT: (2, 6, 6)}
    layers, names, wiring = [], [], []
    for i in range(draw(st.integers(1, 8))):
        same = [t for t, s in shapes.items() if s[1:] == (6, 6)]
        kind = draw(st.sampled_from(["conv", "add", "mul", "concat", "pool", "act", "gap", "bn"]))
        a = draw(st.sampled_from(same))
        c = shapes[a][0]
        if kind == "conv":
            layer, reads = conv(rng, int(rng.integers(1, 4)), c), (a,)
        elif kind in ("add", "mul"):
            partners = [t for t in same if shapes[t][0] == c] + [t for t, s in shapes.items() if s == (c, 1, 1)]
            layer, reads = (Add() if kind == "add" else Mul()), (a, draw(st.sampled_from(partners)))
        elif kind == "concat":
            layer, reads = Concat(1), (a, draw(st.sampled_from(same)))
        elif kind == "pool":
            layer, reads = (MaxPool2d((3, 3), (1, 1), (1, 1)) if rng.random() < 0.5 else
                            AvgPool2d((3, 3), (1, 1), (1, 1, 1, 1), count_include_pad=False)), (a,)
        elif kind == "gap":
            layer, reads = GlobalAvgPool(), (a,)
        elif kind == "bn":
            layer = BatchNorm(*(rng.random(c, dtype=np.float32) + 0.5 for _ in range(4)))
            reads = (a,)
        else:
            layer, reads = draw(st.sampled_from([ReLU(), Sigmoid(), HardSwish(), HardSigmoid(), Clip(-1.0, 1.0),
                                                 Div(const=np.float32([2.0]))])), (a,)
        name = f"t{i}"
        layers.append(layer), names.append(name), wiring.append(reads)
        shapes[name] = tensor_shapes(Model(tuple(layers), (2, 6, 6), tuple(names), wiring=tuple(wiring)))[name]
    outputs = tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)))
    return Model(tuple(layers), (2, 6, 6), tuple(names), wiring=tuple(wiring), outputs=outputs)


@given(random_dags())
def test_shape_inference_equals_the_run(model):
    x = np.random.default_rng(0).random((2, 2, 6, 6), dtype=np.float32)
    _, inter = sqref.run(model, x, return_intermediates=True)
    assert [tuple(inter[n].shape[1:]) for n in model.names] == infer_shapes(model)


@given(random_dags())
def test_graphs_round_trip_exactly(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("graph") / "g.h5"
    sqref.save(model, path)
    back = sqref.load(path)
    assert (back.names, back.wiring, back.outputs) == (model.names, model.wiring, model.outputs)
    x = np.random.default_rng(2).random((3, 2, 6, 6), dtype=np.float32)
    a, b = sqref.run(model, x), sqref.run(back, x)
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert u.tobytes() == v.tobytes()


def test_every_layer_type_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    layers = (conv(rng, 4, 3), BatchNorm(*(rng.random(4, dtype=np.float32) + 0.5 for _ in range(4)), eps=1e-3),
              HardSwish(), MaxPool2d((3, 3), (2, 2), (0, 0, 1, 1), dilation=(1, 1), ceil_mode=True),
              AvgPool2d((2, 2), (1, 1), (1, 0, 0, 1), dilation=(1, 1), ceil_mode=False, count_include_pad=False),
              Sigmoid(), HardSigmoid(1 / 6, 0.5), Add(const=rng.random((4, 1, 1), dtype=np.float32)),
              Div(const=np.float32([3.0])), Clip(-np.inf, 2.5), Pad((0, 0, 0, 0)), Reshape((4, 16)), Flatten(),
              Linear(rng.random((3, 64), dtype=np.float32), None))
    model = Model(layers, (3, 7, 7))
    path = tmp_path / "all.h5"
    sqref.save(model, path)
    back = sqref.load(path)
    for mine, theirs in zip(model.layers, back.layers):
        assert type(mine) is type(theirs) and mine.hyper() == theirs.hyper()
    x = rng.random((2, 3, 7, 7), dtype=np.float32)
    assert sqref.run(model, x).tobytes() == sqref.run(back, x).tobytes()


def test_substitute_rewires_the_readers():
    model = residual()
    w = model.layers[2].weight
    a = Conv2d(w[:2], None, padding=(1, 1))
    b = Conv2d(np.ones((4, 2, 1, 1), np.float32), model.layers[2].bias)
    split = substitute(model, "c2", ("c2.v", "c2.u"), (a, b))
    assert split.wiring[split.names.index("c2.v")] == ("r1",)
    assert split.wiring[split.names.index("c2.u")] == ("c2.v",)
    assert split.wiring[split.names.index("add")] == ("c2.u", "r1")
    assert tensor_shapes(split)["add"] == (4, 8, 8)


# ----------------------------------------------------------------------------- bad graphs: one line


@pytest.mark.parametrize("names, wiring, outputs, match", [
    (("a", "b"), ((INPUT,), ("b",)), (), "reads 'b', which comes later"),  # a self-loop
    (("a", "b"), (("b",), ("a",)), (), "reads 'b', which comes later"),  # a cycle
    (("a", "b"), ((INPUT,), ("nowhere",)), (), "dangling"),
    (("a", "a"), ((INPUT,), ("a",)), (), "must be unique"),
    (("a", "b"), ((INPUT,), ("a", "a")), (), "reads 2 tensors"),
    (("a", "b"), ((INPUT,), ("a",)), ("c",), "output 'c' is no input and no layer"),
    (("input", "b"), ((INPUT,), ("input",)), (), "differ from the layer names"),
])
def test_bad_wiring_is_one_line(names, wiring, outputs, match):
    with pytest.raises(ValueError, match=match) as info:
        Model((ReLU(), ReLU()), (4,), names, wiring=wiring, outputs=outputs)
    assert "\n" not in str(info.value)


def test_toposort_orders_and_names_the_cycle():
    nodes = [("c", ["b"]), ("b", ["a", INPUT]), ("a", [INPUT])]
    assert [n for n, _ in toposort(nodes, inputs={INPUT})] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="cycle through node"):
        toposort([("a", ["b"]), ("b", ["a"])], inputs={INPUT})
    with pytest.raises(ValueError, match="dangling"):
        toposort([("a", ["zz"])], inputs={INPUT})


def test_mismatched_shapes_are_one_line():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="do not broadcast"):
        infer_shapes(Model((conv(rng, 4, 3), conv(rng, 5, 3), Add()), (3, 8, 8),
                           wiring=((INPUT,), (INPUT,), ("conv1", "conv2"))))
    with pytest.raises(ValueError, match="differ off axis 1"):
        infer_shapes(Model((MaxPool2d((2, 2), (2, 2)), Concat(1)), (3, 8, 8),
                           wiring=((INPUT,), (INPUT, "max_pool2d0"))))
    with pytest.raises(ValueError, match="would grow the input"):
        infer_shapes(Model((Add(const=np.ones((2, 8, 8), np.float32)),), (1, 8, 8)))


def test_a_bad_graph_file_is_refused_in_one_line(tmp_path):
    import h5py
    import json

    path = tmp_path / "g.h5"
    sqref.save(residual(), path)
    edits = {
        "cycle": lambda f: f["layers/0001"].attrs.__setitem__("inputs", json.dumps(["add"])),
        "dangling": lambda f: f["layers/0001"].attrs.__setitem__("inputs", json.dumps(["ghost"])),
        "outputs": lambda f: f.attrs.__setitem__("outputs", json.dumps(["ghost"])),
        "bad json": lambda f: f.attrs.__setitem__("outputs", "[unclosed"),
        "unsupported value": lambda f: f["layers/0006"].attrs.__setitem__("axis", np.array([0], np.int64)),
    }
    for what, edit in edits.items():
        bad = tmp_path / f"{what}.h5"
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "r+") as f:
            edit(f)
            from sqref.hdf5 import manifest_sha256
            f.attrs["manifest_sha256"] = manifest_sha256(f)  # resealed: only the graph checks can tell
        with pytest.raises(FileFormatError) as info:
            sqref.load(bad)
        assert "\n" not in str(info.value) and str(bad) in str(info.value), what


def test_version_2_files_are_chains(tmp_path):
    """A version-2 file (no wiring attributes) loads as a chain; the shipped files are version 2."""
    import h5py

    with h5py.File(shipped("lenet5.h5"), "r") as f:
        assert int(f.attrs["format_version"]) == 2 and "outputs" not in f.attrs
    assert sqref.load(shipped("lenet5.h5")).is_chain


def test_ops_match_the_layers():
    """The layers call the ops of sqref.ops with their hyperparameters (a literal spot check)."""
    x = np.array([[[[-4.0, -1.0], [0.5, 7.0]]]], np.float32)
    np.testing.assert_array_equal(Clip(0.0, 6.0)(x), [[[[0, 0], [0.5, 6]]]])
    np.testing.assert_array_equal(HardSigmoid(1 / 6, 0.5)(x), ops.hard_sigmoid(x, 1 / 6, 0.5))
    np.testing.assert_array_equal(GlobalAvgPool(keepdims=False)(x), [[0.625]])
    np.testing.assert_array_equal(Reshape((4,))(x), [[-4, -1, 0.5, 7]])


def test_info_shows_what_each_layer_reads(tmp_path):
    from sqref.jobs.models import describe_file

    sqref.save(residual(), tmp_path / "g.h5")
    info = describe_file(tmp_path / "g.h5")
    assert not info.chain and info.outputs == ["fc"]
    reads = {row["name"]: row["reads"] for row in info.layers}
    assert reads["add"] == ["c2", "r1"] and reads["cat"] == ["relu6", "branch"]
    assert describe_file(shipped("lenet5.h5")).chain


def test_pad_is_onnx_pad_and_its_gradient_is_the_slice():
    from sqref import grad

    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    y = Pad((0, 1, 1, 0))(x)  # one column before, one row after
    np.testing.assert_array_equal(y[0, 0], [[0, 0, 1], [0, 2, 3], [0, 0, 0]])
    g = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(grad.pad2d_backward(x.shape, g, (0, 1, 1, 0))[0, 0], [[1, 2], [4, 5]])
    assert infer_shapes(Model((Pad((1, 2, 3, 4)),), (3, 5, 5))) == [(3, 9, 11)]
    with pytest.raises(ValueError, match="pads must be 4 integers"):
        ops.pad2d(x, (1, 1))
