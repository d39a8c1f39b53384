"""Golden files (sqref.integer.golden) and the `sqref golden` / `sqref verify` commands.

Checked: byte-identical regeneration (two runs of the command hashed), the
format (every dataset has a sha256, the attributes docs/integer.md lists), a
read/write round trip, per-tensor mismatch reports with exact counts, the exit
codes (0 exact, 1 mismatch, 2 bad input) and each backend on a golden file made
in its native mode.
"""
import hashlib
import json
import shutil
import os

import h5py
import numpy as np
import pytest

from sqref import cli, integer
from sqref.backends.probe import accumulation, resolve_accumulate
from sqref.data import load_split
from sqref.integer.verify import verify
from sqref.jobs.integer import prepare
from sqref.integer import golden
from sqref.data import DATA_DIR
from sqref.hdf5 import FileFormatError, manifest_sha256

LENET300 = os.fspath(DATA_DIR / "lenet300.h5")
LENET5 = os.fspath(DATA_DIR / "lenet5.h5")


def run_cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def lenet300_golden(tmp_path_factory):
    """`sqref golden lenet300.h5 --mode onnxruntime --count 50` (fast: an MLP); accumulate "auto"."""
    imodel, info = prepare(LENET300)
    x, y = load_split(split="test")
    g = golden.make_golden(imodel, x[:50], labels=y[:50], meta=info)
    path = tmp_path_factory.mktemp("golden") / "lenet300.golden.h5"
    golden.write_golden(g, path)
    return g, path


def test_regenerating_a_golden_file_is_byte_identical(tmp_path, capsys):
    out = tmp_path / "g.h5"
    argv = ["golden", LENET300, "--mode", "tflite", "--count", "20", "-o", str(out)]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0 and "20 test images" in stdout
    first = sha(out)
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, _ = run_cli(argv + ["--force"], capsys)
    assert code == 0 and sha(out) == first


def test_format_fields_and_checksums(lenet300_golden):
    g, path = lenet300_golden
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "sqref-golden" and f.attrs["format_version"] == 3 and "manifest_sha256" in f.attrs
        assert f.attrs["mode"] == "onnxruntime" and f.attrs["accumulate"] == g.accumulate  # probed
        assert f.attrs["sqref_version"] and int(f.attrs["count"]) == 50
        meta = json.loads(f.attrs["meta"])
        assert meta["weights"].startswith("float model quantized by sqref: 8 bits")
        datasets = []
        f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert all(isinstance(d.attrs.get("sha256"), str) for d in datasets)
        fc1 = f["layers/0001"]
        assert fc1.attrs["type"] == "linear" and fc1.attrs["relu"] == 1
        assert json.loads(fc1.attrs["inputs"]) == [g.imodel.names[0]]  # the tensor it reads
        assert fc1["weight"].dtype == np.int8 and fc1["bias"].dtype == np.int32 and fc1["output"].dtype == np.uint8
        assert fc1["y_zero_point"][()] == 0  # the fused ReLU's output: lo = 0


def test_round_trip_and_sqref_verifies_exactly(lenet300_golden):
    g, path = lenet300_golden
    back = golden.read_golden(path)
    assert back.mode == g.mode and back.accumulate == g.accumulate and back.imodel.names == g.imodel.names
    for a, b in zip(back.outputs, g.outputs):
        assert np.array_equal(a, b) and a.dtype == np.uint8
    assert back.logits.tobytes() == g.logits.tobytes()
    report = verify(back, "sqref")
    assert report["match"] and all(r["match"] for r in report["tensors"])


def test_a_version_2_file_reads_as_a_chain(lenet300_golden, tmp_path):
    # version 2 = version 3 without the layers' "inputs": every layer reads the previous one
    g, path = lenet300_golden
    old = tmp_path / "v2.h5"
    shutil.copy(path, old)
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = 2
        for group in f["layers"].values():
            del group.attrs["inputs"]
        f.attrs["manifest_sha256"] = manifest_sha256(f)  # as sqref 0.1 wrote version 2
    back = golden.read_golden(old)
    assert back.imodel.is_chain and back.imodel.wiring == g.imodel.wiring
    assert verify(back, "sqref")["match"]


def test_a_changed_output_is_reported_exactly(lenet300_golden, tmp_path):
    g, _ = lenet300_golden
    outputs = list(g.outputs)
    bad = outputs[1].copy()
    bad[3, 7] = np.uint8(bad[3, 7] + 5)
    outputs[1] = bad
    tampered = golden.Golden(g.imodel, g.inputs, tuple(outputs), g.logits, g.mode, g.accumulate, g.labels, g.meta)
    golden.write_golden(tampered, tmp_path / "t.h5")
    report = verify(golden.read_golden(tmp_path / "t.h5"), "sqref")
    rows = {r["name"]: r for r in report["tensors"]}
    assert not report["match"]
    assert rows["fc1"]["mismatches"] == 1 and rows["fc1"]["histogram"] == {"-5": 1}
    assert rows["fc1"]["worst"]["index"] == [3, 7]
    assert all(r["match"] for name, r in rows.items() if name != "fc1")


def test_a_modified_file_fails_its_checksum(lenet300_golden, tmp_path):
    _, path = lenet300_golden
    copy = tmp_path / "c.h5"
    copy.write_bytes(path.read_bytes())
    with h5py.File(copy, "r+") as f:
        f["layers/0000/output"][0, 0] = f["layers/0000/output"][0, 0] ^ 1
    with pytest.raises(FileFormatError, match="checksum"):
        golden.read_golden(copy)
    with pytest.raises(FileFormatError, match="not a sqref-golden file"):
        golden.read_golden(LENET300)


def test_verify_exit_codes(lenet300_golden, tmp_path, capsys):
    g, path = lenet300_golden
    code, out, _ = run_cli(["verify", str(path), "--backend", "sqref"], capsys)
    assert code == 0 and "OK: all" in out
    outputs = list(g.outputs)
    outputs[0] = outputs[0].copy()
    outputs[0][0, 0] ^= 1
    golden.write_golden(golden.Golden(g.imodel, g.inputs, tuple(outputs), g.logits, g.mode, g.accumulate),
                        tmp_path / "bad.h5")
    code, out, _ = run_cli(["verify", str(tmp_path / "bad.h5"), "--backend", "sqref", "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["match"] is False and report["tensors"][1]["mismatches"] == 1
    code, out, err = run_cli(["verify", str(tmp_path / "missing.h5"), "--backend", "sqref"], capsys)
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["verify", str(path), "--backend", "cuda"], capsys)
    assert code == 2 and "invalid choice" in err


def test_golden_of_a_quantized_model_file(tmp_path, capsys):
    import sqref
    from sqref.qmodel import quantize_model

    qpath = tmp_path / "q4.h5"
    sqref.save(quantize_model(sqref.load(LENET300), bits=4, per_channel=True), qpath)
    code, out, _ = run_cli(["golden", str(qpath), "--mode", "onnx-reference", "--count", "5",
                            "-o", str(tmp_path / "g.h5"), "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["weights"] == "as stored in the model file"
    g = golden.read_golden(tmp_path / "g.h5")
    assert np.asarray(g.imodel.layers[1].w_scale).shape == (300,)  # per channel
    assert int(np.abs(g.imodel.layers[1].weight).max()) <= 7  # 4-bit codes in int8


def test_onnxruntime_verifies_a_native_golden(lenet300_golden):
    pytest.importorskip("onnxruntime")
    g, path = lenet300_golden  # onnxruntime mode, accumulate "auto": what this machine's ORT does, probed
    assert g.accumulate == resolve_accumulate("onnxruntime")[0]
    # LeNet-300-100 has linear layers only: the matmul kernel is the one probed
    assert golden.read_golden(path).meta["accumulate_probe"]["probe"] == {"matmul": g.accumulate}
    report = verify(g, "onnxruntime")
    assert report["match"], [(r["name"], r["mismatches"]) for r in report["tensors"]]


@pytest.mark.parametrize("backend, mode", [("onnxruntime", "onnxruntime"), ("torch", "fbgemm")])
def test_both_accumulations_against_the_probed_backend(backend, mode):
    # Both expectations on every CPU kind: the golden file made with the accumulation the probe
    # found matches the backend bit for bit; the one made with the other accumulation does not
    # (on LeNet-300-100 the saturated pairs change hundreds of fc1 outputs), and the note names
    # what the probe found. On an AVX2 CPU without VNNI the roles of the two swap.
    pytest.importorskip(backend)
    imodel, _ = prepare(LENET300, mode=mode)
    x = load_split(split="test")[0][:50]
    found = accumulation(backend, "matmul")
    other = {"exact": "int16-pairs", "int16-pairs": "exact"}[found]
    assert verify(golden.make_golden(imodel, x, accumulate=found), backend)["match"]
    report = verify(golden.make_golden(imodel, x, accumulate=other), backend)
    fc1 = next(r for r in report["tensors"] if r["name"] == "fc1")
    assert not report["match"] and fc1["mismatches"] > 0
    assert any(f"accumulate matmul {found} on this machine" in note for note in report["notes"]), report["notes"]


def test_tflite_verifies_a_native_golden():
    pytest.importorskip("ai_edge_litert")
    imodel, _ = prepare(LENET300, mode="onnxruntime")  # XNNPACK requantizes as onnxruntime does
    g = golden.make_golden(imodel, load_split(split="test")[0][:50])
    report = verify(g, "tflite")
    assert report["match"], [(r["name"], r["mismatches"]) for r in report["tensors"]]


def test_golden_rejects_bad_options(tmp_path, capsys):
    code, _, err = run_cli(["golden", LENET300, "--mode", "tflite", "--accumulate", "int16-pairs",
                            "-o", str(tmp_path / "x.h5")], capsys)
    assert code == 2 and "int16-pairs" in err
    code, _, err = run_cli(["golden", LENET300, "--mode", "onnxruntime", "--count", "5000",
                            "-o", str(tmp_path / "x.h5")], capsys)
    assert code == 2 and "--count 5000" in err
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(ValueError, match="mode"):
        integer.check_mode("gpu")


def test_verify_with_a_backend_that_is_not_installed(lenet300_golden, capsys, monkeypatch):
    from sqref import backends

    _, path = lenet300_golden
    monkeypatch.setitem(backends.PACKAGES, "onnxruntime", ("no_such_package_sqref_test",))
    code, _, err = run_cli(["verify", str(path), "--backend", "onnxruntime"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "needs the package(s) no_such_package_sqref_test, not installed here" in err


def test_per_layer_accumulation_reproduces_fbgemm_on_a_depthwise_model(tmp_path):
    # fbgemm's depthwise kernel saturates int16 pairs even where its dense kernels are exact (VNNI CPUs):
    # with accumulate="auto" each layer gets what the probe of its kind of kernel says, so one golden
    # file reproduces both; torch's fbgemm must then match every tensor.
    pytest.importorskip("torch")
    from sqref.backends.probe import accumulation, layer_kernel
    from sqref.model import Conv2d, Flatten, Linear, Model, ReLU
    from sqref.qmodel import quantize_model

    rng = np.random.default_rng(0)
    # all weights positive and large, inputs bright: the u8 x s8 pairs of both convs reach past int16, so
    # each layer's outputs tell which accumulation its kernel used
    big = lambda shape: np.abs(rng.normal(0, 0.5, shape)).astype(np.float32) + 0.5  # noqa: E731
    layers = (Conv2d(big((8, 1, 3, 3)), None, (1, 1), (1, 1)), ReLU(),
              Conv2d(big((8, 1, 3, 3)), None, (1, 1), (1, 1), (1, 1), 8), ReLU(),
              Flatten(), Linear(rng.normal(0, 0.1, (10, 8 * 6 * 6)).astype(np.float32), None))
    model = quantize_model(Model(layers, (1, 6, 6)), bits=8, scheme="symmetric")
    x = rng.uniform(0.5, 1, (32, 1, 6, 6)).astype(np.float32)
    imodel = integer.build_integer_model(model, integer.calibrate(model, x), mode="fbgemm")
    g = golden.make_golden(imodel, x, mode="fbgemm", accumulate="auto")
    probed = {k: accumulation("torch", k) for k in ("conv", "depthwise", "matmul")}
    want = {name: probed[layer_kernel(layer)] for name, layer in zip(imodel.names, imodel.layers)
            if layer_kernel(layer)}
    assert (g.accumulate == want) if len(set(want.values())) > 1 else (g.accumulate == set(want.values()).pop())
    golden.write_golden(g, tmp_path / "g.h5")
    back = golden.read_golden(tmp_path / "g.h5")
    assert back.accumulate == g.accumulate
    report = verify(back, "torch")
    assert report["match"], [(r["name"], r["mismatches"]) for r in report["tensors"]]
    if probed["depthwise"] != probed["conv"]:  # then one setting for every layer cannot match torch
        for single in ("exact", "int16-pairs"):
            assert not verify(golden.make_golden(imodel, x, mode="fbgemm", accumulate=single), "torch")["match"]
