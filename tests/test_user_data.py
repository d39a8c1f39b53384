"""A user's own data and models: .npz / .npy inputs (sqref.inputs), quality without labels
(sqref.compress.logit_agreement, search_rank on agreement), `sqref import` of an ONNX model and
the commands on it (eval, quantize, compress, golden) with and without labels.

Bad files go through the library (one InputFileError naming the file) and the CLI (exit 2,
one line, no traceback, nothing written). The ONNX model is a tiny CNN exported by
torch.onnx (its default exporter) in the test itself."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import sqref
from sqref import zoo
from sqref.cli import main
from sqref.compress import factor_model, logit_agreement, search_rank
from sqref.data import DATA_DIR, load_split
from sqref.inputs import (ALL, SPLIT_SEED, InputFileError, open_data, output_classes, read_numpy,
                          split_indices)
from sqref.jobs.compress import quality, quantize_file
from sqref.jobs.models import evaluate_file
from sqref.model import predict
from sqref.qmodel import quantize_model

LENET300 = os.fspath(DATA_DIR / "lenet300.h5")
SHAPE = (3, 16, 16)


def cli(capsys, *args):
    """`sqref ARGS --json -q` in this process: (exit code, JSON object, stderr)."""
    code = main([*map(str, args), "--json", "-q"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def one_line_error(capsys, *args) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 2, err
    assert out["exit_code"] == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture
def xs():
    return np.random.default_rng(0).standard_normal((40, *SHAPE)).astype(np.float32)


# ----------------------------------------------------------------------------- reading files


def test_npz_with_and_without_labels_and_npy_round_trip(tmp_path, xs):
    y = np.arange(40) % 6
    np.savez(tmp_path / "xy.npz", x=xs, y=y.astype(np.uint8), note=np.arange(3))  # extra arrays are ignored
    np.savez_compressed(tmp_path / "x.npz", x=xs)
    np.save(tmp_path / "x.npy", xs)
    x1, y1 = read_numpy(tmp_path / "xy.npz", SHAPE)
    assert x1.dtype == np.float32 and np.array_equal(x1, xs) and y1.dtype == np.int64 and np.array_equal(y1, y)
    for name in ("x.npz", "x.npy"):
        x2, y2 = read_numpy(tmp_path / name, SHAPE)
        assert np.array_equal(x2, xs) and y2 is None
    # no shape asked: any (N, ...)
    assert read_numpy(tmp_path / "x.npy")[0].shape == xs.shape


def write(path, make):
    """Write a bad file: make(path) or raw bytes."""
    if isinstance(make, bytes):
        path.write_bytes(make)
    else:
        make(path)
    return path


x_ok = np.zeros((4, *SHAPE), np.float32)
BAD = {
    "shape.npz": (lambda p: np.savez(p, x=np.zeros((4, 3, 32, 32), np.float32)),
                  "inputs 'x' have shape (4, 3, 32, 32); the model expects (N, 3, 16, 16)"),
    "flat.npy": (lambda p: np.save(p, np.zeros((4, 768), np.float32)),
                 "inputs have shape (4, 768); the model expects (N, 3, 16, 16)"),
    "uint8.npz": (lambda p: np.savez(p, x=np.zeros((4, *SHAPE), np.uint8)),
                  "inputs 'x' are uint8; sqref reads float32 inputs and converts nothing"),
    "float64.npy": (lambda p: np.save(p, np.zeros((4, *SHAPE))), "inputs are float64; sqref reads float32"),
    "object.npy": (lambda p: np.save(p, np.array([1, "a", None], dtype=object)),
                   "an object array (pickled Python objects); refused"),
    "object.npz": (lambda p: np.savez(p, x=x_ok, y=np.array([0, "a", None, 1], dtype=object)),
                   "labels 'y': an object array (pickled Python objects); refused"),
    "empty.npz": (b"", "empty file, expected a NumPy .npz archive"),
    "empty.npy": (b"", "empty file, expected a NumPy .npy array"),
    "junk.npz": (b"not a zip archive", "not a NumPy .npz archive"),
    "junk.npy": (b"\x93NUMPY garbage", "inputs: not a NumPy array"),
    "nosamples.npz": (lambda p: np.savez(p, x=np.zeros((0, *SHAPE), np.float32)), "no samples"),
    "nox.npz": (lambda p: np.savez(p, images=x_ok), "no array 'x' (found 'images')"),
    "nan.npz": (lambda p: np.savez(p, x=np.full((4, *SHAPE), np.inf, np.float32)), "NaN or infinite values"),
    "floatlabels.npz": (lambda p: np.savez(p, x=x_ok, y=np.zeros(4)), "labels 'y' are float64; expected integers"),
    "fewlabels.npz": (lambda p: np.savez(p, x=x_ok, y=np.zeros(3, np.int64)),
                      "labels 'y' have shape (3,); expected (4,)"),
    "negative.npz": (lambda p: np.savez(p, x=x_ok, y=np.array([0, 1, -1, 2])), "labels 'y' include -1"),
    "missing.npz": (None, "missing.npz: no such file"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_are_one_line_errors_naming_the_file(name, tmp_path):
    make, message = BAD[name]
    path = tmp_path / name
    if make is not None:
        write(path, make)
    with pytest.raises(InputFileError) as info:
        open_data(path, SHAPE)
    text = str(info.value)
    assert message in text and text.startswith(os.fspath(path)) and len(text.splitlines()) == 1


def test_a_truncated_npy_and_a_fifo_are_refused(tmp_path, xs):
    np.save(tmp_path / "x.npy", xs)
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match="truncated or damaged"):
        read_numpy(tmp_path / "cut.npy", SHAPE)
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(InputFileError, match="not a regular file"):
        read_numpy(tmp_path / "fifo.npz", SHAPE)  # refused without blocking


def test_labels_beyond_the_models_outputs_are_refused(tmp_path, xs):
    np.savez(tmp_path / "xy.npz", x=xs, y=np.full(40, 6))
    source = open_data(tmp_path / "xy.npz", SHAPE)
    source.check_classes(7)
    with pytest.raises(InputFileError, match=r"labels go up to 6, but the model has 6 outputs \(labels must be 0..5\)"):
        source.check_classes(6)
    with pytest.raises(InputFileError, match="the model has 5 outputs"):  # MNIST labels 0..9
        open_data(DATA_DIR / "mnist5k.h5", (1, 28, 28)).check_classes(5)


def test_the_sqref_data_file_against_another_input_shape_is_refused():
    with pytest.raises(InputFileError, match=r"mnist5k.h5: a sqref data file holds MNIST-5k images \(N, 1, 28, 28\); "
                                             r"the model expects \(N, 3, 16, 16\)"):
        open_data(DATA_DIR / "mnist5k.h5", SHAPE)


# ----------------------------------------------------------------------------- the split


def test_the_seeded_split_is_a_deterministic_70_10_20_partition_in_file_order():
    parts = split_indices(1003, SPLIT_SEED)
    assert {k: len(v) for k, v in parts.items()} == {"train": 703, "val": 100, "test": 200}
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(1003))
    assert all(np.all(np.diff(v) > 0) for v in parts.values())  # file order kept
    again, other = split_indices(1003, SPLIT_SEED), split_indices(1003, 1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["test"], other["test"])


def test_data_file_splits_and_record(tmp_path, xs):
    y = np.arange(40) % 6
    np.savez(tmp_path / "xy.npz", x=xs, y=y)
    source = open_data(tmp_path / "xy.npz", SHAPE, seed=3)
    rows = split_indices(40, 3)
    x, yy = source.split("val")
    assert np.array_equal(x, xs[rows["val"]]) and np.array_equal(yy, y[rows["val"]])
    assert source.split(ALL)[0] is source.x
    record = source.record()
    assert record["format"] == "npz" and record["labels"] is True and len(record["sha256"]) == 64
    assert record["split"]["seed"] == 3 and (record["split"]["train"], record["split"]["val"],
                                             record["split"]["test"]) == (28, 4, 8)
    np.save(tmp_path / "few.npy", xs[:9])
    with pytest.raises(InputFileError, match="9 samples leave the val split empty"):
        open_data(tmp_path / "few.npy", SHAPE).split("val")
    with pytest.raises(ValueError, match="split seed -1"):
        open_data(tmp_path / "few.npy", SHAPE, seed=-1)


# ----------------------------------------------------------------------------- quality without labels


def test_logit_agreement_by_hand():
    ref = np.array([[3.0, 1, 0, 0, 0, 0], [0, 2, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    q = np.array([[3.0, 1, 0, 0, 0, 0], [0, 1, 2, 0, 0, 0], [0, 1, 1, 1, 1, 1]])
    m = logit_agreement(ref, q)
    assert m["agreement"] == pytest.approx(1 / 3)  # row 0 kept its top-1; rows 1 and 2 moved (to classes 2, 1)
    assert m["agreement"] == pytest.approx(np.mean(ref.argmax(1) == q.argmax(1)))
    # row 2: class 0 (the reference's top-1) has five classes strictly above it in q: not in the top 5
    assert m["top5_agreement"] == pytest.approx(2 / 3)
    # row 0 is identical (left out of the mean); row 1: 10 log10(5 / 2); row 2: 10 log10(1 / 6)
    assert m["identical_logits"] == 1
    assert m["logit_sqnr_db"] == pytest.approx((10 * np.log10(5 / 2) + 10 * np.log10(1 / 6)) / 2)
    few = logit_agreement(ref[:, :4], q[:, :4])
    assert few["top5_agreement"] is None  # fewer than five classes
    same = logit_agreement(ref, ref)
    assert same["agreement"] == 1 and same["logit_sqnr_db"] is None and same["identical_logits"] == 3


def test_search_rank_without_labels_uses_agreement():
    model = sqref.load(LENET300)
    x, y = load_split(split="val")
    qkw = {"bits": 8, "rule": "max"}
    rank, tried = search_rank(model, (x[:100], None), max_drop=5, quantize_kwargs=qkw)
    preds = predict(model, x[:100])
    compressed = quantize_model(factor_model(model, rank=rank)[0], **qkw)
    assert 100 * (1 - np.mean(predict(compressed, x[:100]) == preds)) <= 5
    assert tried[-1] == (rank, pytest.approx(np.mean(predict(compressed, x[:100]) == preds)))
    assert all(100 * (1 - score) > 5 for _, score in tried[:-1])  # the smallest qualifying rank


def test_quality_without_labels_has_agreement_and_no_accuracy(tmp_path):
    x, y = load_split(split="test")
    np.save(tmp_path / "x.npy", x[:200])
    np.savez(tmp_path / "xy.npz", x=x[:200], y=y[:200])
    model = sqref.load(LENET300)
    q = quantize_model(model, bits=3)
    free = quality(model, q, data=tmp_path / "x.npy", split=ALL)
    assert free["labels"] is False and free["float_accuracy"] is None and free["drop_points"] is None
    full = quality(model, q, data=tmp_path / "xy.npz", split=ALL)
    assert full["labels"] is True and full["float_accuracy"] == round(np.mean(predict(model, x[:200]) == y[:200]), 4)
    for key in ("agreement", "top5_agreement", "logit_sqnr_db", "identical_logits"):
        assert free[key] == full[key]
    assert 0.5 < free["agreement"] <= 1 and 0 < free["logit_sqnr_db"] < 60


def test_quantize_file_records_the_data_and_its_seed(tmp_path):
    x, _ = load_split(split="test")
    np.save(tmp_path / "x.npy", x[:100])
    r = quantize_file(LENET300, output=tmp_path / "q.h5", bits=4, data=tmp_path / "x.npy", split_seed=7)
    assert r.quality["split"] == "all" and r.quality["count"] == 100 and r.quality["compressed_accuracy"] is None
    meta = sqref.load(r.output).meta
    assert meta["data_source"]["file"] == "x.npy" and meta["data_source"]["split"]["seed"] == 7
    assert meta["evaluation"]["labels"] is False and meta["evaluation"]["agreement"] == r.quality["agreement"]
    assert meta["evaluation"]["accuracy"] is None


def test_evaluate_file_without_labels_needs_a_reference(tmp_path):
    x, y = load_split(split="test")
    np.save(tmp_path / "x.npy", x[:50])
    with pytest.raises(ValueError, match="has no labels .*give --reference FLOAT_MODEL"):
        evaluate_file(LENET300, data=tmp_path / "x.npy")
    r = evaluate_file(LENET300, data=tmp_path / "x.npy", reference=LENET300)
    assert (r.accuracy, r.correct, r.agreement, r.identical_logits, r.split) == (None, None, 1.0, 50, "all")


# ----------------------------------------------------------------------------- the CLI


def test_cli_bad_data_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    x, _ = load_split(split="test")
    np.savez(tmp_path / "wide.npz", x=np.zeros((5, 1, 32, 32), np.float32))
    np.savez(tmp_path / "bytes.npz", x=(x[:5] * 255).astype(np.uint8))
    np.savez(tmp_path / "labels.npz", x=x[:5], y=np.array([0, 1, 2, 3, 10]))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "x.npy", x[:20])
    before = sorted(os.listdir(tmp_path))
    out = tmp_path / "o.h5"
    cases = [
        (["eval", LENET300, "--data", tmp_path / "wide.npz"],
         "have shape (5, 1, 32, 32); the model expects (N, 1, 28, 28)"),
        (["quantize", LENET300, "--data", tmp_path / "bytes.npz", "-o", out], "are uint8; sqref reads float32"),
        (["compress", LENET300, "--data", tmp_path / "labels.npz", "-o", out, "--rank", "5"],
         "labels go up to 10, but the model has 10 outputs"),
        (["golden", LENET300, "--mode", "tflite", "--inputs", tmp_path / "obj.npy", "-o", out], "an object array"),
        (["golden", LENET300, "--mode", "tflite", "--calib", tmp_path / "empty.npz", "-o", out], "empty file"),
        (["eval", LENET300, "--data", tmp_path / "x.npy"], "has no labels"),
        (["golden", LENET300, "--mode", "tflite", "--inputs", tmp_path / "x.npy", "--count", "21", "-o", out],
         "--count 21 is more than the 20 inputs in"),
        (["eval", LENET300, "--data", tmp_path / "x.npy", "--split-seed", "-1"], "expected an integer >= 0"),
    ]
    for args, message in cases:
        assert message in one_line_error(capsys, *args), args
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_as_a_program_reports_a_wrong_shape_in_one_line(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3, 16, 16), np.float32))
    proc = subprocess.run([sys.executable, "-m", "sqref", "eval", LENET300, "--data", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"sqref: error: {tmp_path / 'x.npz'}: inputs 'x' have shape (2, 3, 16, 16); the model expects (N, 1, 28, 28)"]


def test_cli_with_user_data_on_the_shipped_model(tmp_path, capsys):
    x, y = load_split(split="test")
    np.save(tmp_path / "x.npy", x[:200])
    np.savez(tmp_path / "xy.npz", x=x[:200], y=y[:200])
    code, r, _ = cli(capsys, "eval", LENET300, "--data", tmp_path / "xy.npz")
    assert code == 0 and r["split"] == "all" and r["count"] == 200 and r["labels"] is True
    code, r, _ = cli(capsys, "eval", LENET300, "--data", tmp_path / "xy.npz", "--split", "test")
    assert code == 0 and r["count"] == 40 and r["data"]["split"]["seed"] == 0
    code, r, _ = cli(capsys, "compress", LENET300, "--data", tmp_path / "x.npy", "--max-drop", "5", "--bits", "6",
                     "--rule", "max", "-o", tmp_path / "c.h5")
    assert code == 0 and r["quality"]["labels"] is False and r["quality"]["count"] == 40
    assert r["rank_search"]["criterion"] == "agreement" and "val_agreement" in r["rank_search"]["tried"][0]
    meta = sqref.load(tmp_path / "c.h5").meta
    assert meta["rank_search"]["criterion"] == "agreement" and meta["data_source"]["split"]["val"] == 20
    assert main(["info", str(tmp_path / "c.h5")]) == 0
    assert "no labels; top-1 agreement with the source model" in capsys.readouterr().out


def test_eval_of_several_data_files_is_eval_of_their_concatenation(tmp_path, capsys):
    """`sqref eval --data A --data B`: the splits of both files as one set of inputs, in order."""
    x, y = load_split(split="test")
    np.savez(tmp_path / "a.npz", x=x[:120], y=y[:120])
    np.savez(tmp_path / "b.npz", x=x[120:200], y=y[120:200])
    np.savez(tmp_path / "ab.npz", x=x[:200], y=y[:200])
    both = evaluate_file(LENET300, data=[tmp_path / "a.npz", tmp_path / "b.npz"], reference=LENET300)
    whole = evaluate_file(LENET300, data=tmp_path / "ab.npz", reference=LENET300)
    for field in ("accuracy", "correct", "count", "accuracy_ci95", "agreement", "drop_points", "drop_ci95", "split"):
        assert getattr(both, field) == getattr(whole, field), field
    assert isinstance(whole.data, dict) and [d["file"] for d in both.data] == ["a.npz", "b.npz"]
    assert [d["evaluated"] for d in both.data] == [{"split": "all", "count": 120}, {"split": "all", "count": 80}]
    # the sqref data file gives its test split, a .npz all of itself; the CLI repeats --data
    code, r, _ = cli(capsys, "eval", LENET300, "--data", DATA_DIR / "mnist5k.h5", "--data", tmp_path / "b.npz")
    assert code == 0 and r["split"] == "test+all" and r["count"] == len(x) + 80
    assert r["correct"] == evaluate_file(LENET300).correct + evaluate_file(LENET300, data=tmp_path / "b.npz").correct
    code, r, _ = cli(capsys, "eval", LENET300, "--data", tmp_path / "a.npz")  # once: the one-file JSON
    assert code == 0 and r["data"]["file"] == "a.npz" and r["count"] == 120


def test_several_data_files_refuse_a_repeat_and_mixed_labels(tmp_path, capsys):
    x, y = load_split(split="test")
    np.savez(tmp_path / "a.npz", x=x[:30], y=y[:30])
    shutil.copyfile(tmp_path / "a.npz", tmp_path / "copy.npz")  # the same bytes under another name
    np.save(tmp_path / "u.npy", x[30:60])
    assert "is the same data as" in one_line_error(capsys, "eval", LENET300, "--data", tmp_path / "a.npz",
                                                   "--data", tmp_path / "copy.npz")
    assert "has no labels but" in one_line_error(capsys, "eval", LENET300, "--data", tmp_path / "u.npy",
                                                 "--data", tmp_path / "a.npz", "--reference", LENET300)
    with pytest.raises(ValueError, match="no data file"):
        evaluate_file(LENET300, data=[])


# ----------------------------------------------------------------------------- an ONNX model of one's own


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A tiny 3-channel CNN (3x16x16: conv-relu-pool-flatten-linear, 6 classes) exported by
    torch.onnx's default exporter, and inputs with and without labels."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")  # the default (dynamo) exporter needs it

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 6)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(0)
    module = Tiny().eval()
    folder = tmp_path_factory.mktemp("user")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, *SHAPE),), str(folder / "tiny.onnx"))
    x = np.random.default_rng(1).standard_normal((50, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).argmax(1).numpy()
    y[::5] = (y[::5] + 1) % 6  # labels the float model gets 80% right
    np.savez(folder / "x.npz", x=x)
    np.savez(folder / "xy.npz", x=x, y=y)
    return folder, module, x, y


def test_import_writes_a_model_that_computes_what_torch_does(onnx_model, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    folder, module, x, _ = onnx_model
    code, r, _ = cli(capsys, "import", folder / "tiny.onnx", "-o", tmp_path / "tiny.h5")
    assert code == 0 and r["input_shape"] == list(SHAPE) and r["classes"] == 6 and r["params"] == 112 + 1542
    model = sqref.load(tmp_path / "tiny.h5")
    assert model.meta["imported"]["file"] == "tiny.onnx" and model.meta["imported"]["sha256"] == r["model_sha256"]
    with torch.no_grad():
        np.testing.assert_allclose(sqref.run(model, x), module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert output_classes(model, x) == 6
    # refuses an existing output, the input itself (even with --force), and reports bad ONNX in one line
    assert "already exists" in one_line_error(capsys, "import", folder / "tiny.onnx", "-o", tmp_path / "tiny.h5")
    assert "is the input file" in one_line_error(capsys, "import", folder / "tiny.onnx", "-o", folder / "tiny.onnx",
                                                 "--force")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    assert "bad.onnx: " in one_line_error(capsys, "import", tmp_path / "bad.onnx", "-o", tmp_path / "b.h5")
    assert "no.onnx: no such file" in one_line_error(capsys, "import", tmp_path / "no.onnx")
    assert not (tmp_path / "b.h5").exists()


@pytest.mark.parametrize("labels", [False, True])
def test_commands_on_an_onnx_model_with_user_data(onnx_model, labels, tmp_path, capsys):
    from sqref.integer import golden

    folder, _, _, y = onnx_model
    model, data = folder / "tiny.onnx", folder / ("xy.npz" if labels else "x.npz")
    code, r, _ = cli(capsys, "eval", model, "--data", data, *([] if labels else ["--reference", model]))
    assert code == 0 and r["count"] == 50 and (r["accuracy"] == 0.8 if labels else r["agreement"] == 1.0)

    code, r, _ = cli(capsys, "quantize", model, "--data", data, "--bits", "4", "-o", tmp_path / "q.h5")
    assert code == 0 and r["quality"]["split"] == "all" and r["quality"]["labels"] is labels
    assert (r["quality"]["float_accuracy"] == 0.8) if labels else r["quality"]["float_accuracy"] is None
    assert sqref.load(tmp_path / "q.h5").meta["source"]["file"] == "tiny.onnx"

    code, r, _ = cli(capsys, "compress", model, "--data", data, "--max-drop", "50", "-o", tmp_path / "c.h5")
    assert code == 0 and r["quality"]["count"] == 10 and r["rank_search"]["chosen_rank"] is not None
    assert r["rank_search"]["criterion"] == ("accuracy" if labels else "agreement")
    assert sqref.load(tmp_path / "c.h5").meta["data_source"]["labels"] is labels

    code, r, _ = cli(capsys, "compress", model, "--data", data, "--rank", "3", "--finetune", "1",
                     "-o", tmp_path / "f.h5")
    assert code == 0 and len(r["finetune_history"]) == 1
    assert any("no labels" in note for note in r["notes"]) is not labels

    code, r, _ = cli(capsys, "golden", model, "--mode", "onnxruntime", "--accumulate", "exact", "--data", data,
                     "-o", tmp_path / "g.h5")
    assert code == 0 and r["count"] == 10 and r["calibration"]["images"] == 35  # 50: test 10, val 5, train 35
    assert (r["accuracy"] is not None) is labels and r["agreement"] >= 0.8
    g = golden.read_golden(tmp_path / "g.h5")
    assert len(g.inputs) == 10 and (g.labels is not None) is labels
    assert g.meta["data"]["source"]["split"]["seed"] == 0

    code, r, _ = cli(capsys, "golden", tmp_path / "q.h5", "--mode", "tflite", "--inputs", data, "--calib", data,
                     "--count", "7", "-o", tmp_path / "g2.h5")
    assert code == 0 and r["count"] == 7 and r["calibration"]["images"] == 50 and r["inputs"]["split"] == "all"
    assert "--inputs" in r["command"] and "--calib" in r["command"]
    assert golden.read_golden(tmp_path / "g2.h5").meta["weights"] == "as stored in the model file"


def test_an_onnx_model_is_pinned_by_expect_sha256(onnx_model, tmp_path, capsys):
    """torch's exporter keeps the weights in tiny.onnx.data, which a pin of tiny.onnx would not
    cover: refused; a model with its weights inside is checked on the bytes imported."""
    onnx = pytest.importorskip("onnx")
    folder = onnx_model[0]
    whole = onnx.load(str(folder / "tiny.onnx"))  # external data loaded in
    onnx.save(whole, str(tmp_path / "whole.onnx"))
    import hashlib

    digest = hashlib.sha256((tmp_path / "whole.onnx").read_bytes()).hexdigest()
    code, r, _ = cli(capsys, "import", tmp_path / "whole.onnx", "--expect-sha256", digest, "-o", tmp_path / "w.h5")
    assert code == 0 and r["model_sha256"] == digest
    assert "does not match the expected" in one_line_error(capsys, "import", tmp_path / "whole.onnx",
                                                           "--expect-sha256", "0" * 64, "-o", tmp_path / "v.h5")
    external = hashlib.sha256((folder / "tiny.onnx").read_bytes()).hexdigest()
    assert "external data files" in one_line_error(capsys, "eval", folder / "tiny.onnx", "--expect-sha256", external,
                                                   "--data", folder / "xy.npz")
    # the external data file is an input too: never an output
    assert "is the input file" in one_line_error(capsys, "quantize", folder / "tiny.onnx", "--data", folder / "x.npz",
                                                 "-o", folder / "tiny.onnx.data", "--force")


def test_model_zoo_model_with_npz_of_the_wrong_shape_in_training(tmp_path, capsys):
    """train takes a .npz with labels, checked against the architecture's input."""
    np.savez(tmp_path / "x.npz", x=np.zeros((20, *SHAPE), np.float32), y=np.zeros(20, np.int64))
    assert "the model expects (N, 1, 28, 28)" in one_line_error(capsys, "train", "--arch", "lenet300", "-o",
                                                                 tmp_path / "m.h5", "--data", tmp_path / "x.npz")
    np.save(tmp_path / "x.npy", np.zeros((20, 1, 28, 28), np.float32))
    assert "training needs a .npz with integer labels" in one_line_error(
        capsys, "train", "--arch", "lenet300", "-o", tmp_path / "m.h5", "--data", tmp_path / "x.npy")
    assert zoo.lenet300().input_shape == (1, 28, 28)


def test_commands_on_an_imported_residual_graph(tmp_path, capsys):
    """A residual, depthwise 3-channel net from torch's default exporter: import, eval,
    quantize, compress (1x1 convolutions factored too) on a .npz without labels; the
    integer path (golden) says in one line that it runs chains."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.expand, self.dw = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.project = nn.Conv2d(16, 8, 1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            y = self.project(nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(x)))))
            return self.fc((x + y).mean((2, 3)))

    torch.manual_seed(2)
    module = Residual().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, *SHAPE),), str(tmp_path / "res.onnx"))
    capsys.readouterr()  # the exporter's own progress lines
    x = np.random.default_rng(3).standard_normal((60, *SHAPE)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    code, r, _ = cli(capsys, "import", tmp_path / "res.onnx", "-o", tmp_path / "res.h5")
    assert code == 0
    model = sqref.load(tmp_path / "res.h5")
    assert not model.is_chain and [layer.kind for layer in model.layers].count("add") == 1
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sqref.run(model, x), want, rtol=0, atol=1e-5 * np.abs(want).max())

    data = tmp_path / "x.npz"
    code, r, _ = cli(capsys, "eval", tmp_path / "res.h5", "--data", data, "--reference", tmp_path / "res.onnx")
    assert code == 0 and r["agreement"] == 1.0
    code, r, _ = cli(capsys, "quantize", tmp_path / "res.h5", "--data", data, "--bits", "8", "--per-channel",
                     "-o", tmp_path / "q.h5")
    assert code == 0 and r["quality"]["agreement"] >= 0.9
    code, r, _ = cli(capsys, "compress", tmp_path / "res.h5", "--data", data, "--rank", "2", "--svd-1x1",
                     "-o", tmp_path / "c.h5")
    assert code == 0
    factored = sqref.load(tmp_path / "c.h5")
    assert {"expand.v", "expand.u", "project.v", "project.u", "fc.v", "fc.u"} <= set(factored.names)
    assert factored.outputs == ("fc.u",)
    # the integer path runs the graph (residual add, global pool), and onnxruntime agrees on every tensor
    code, r, _ = cli(capsys, "golden", tmp_path / "res.h5", "--mode", "onnxruntime", "--data", data,
                     "-o", tmp_path / "g.h5")
    assert code == 0 and r["backends"] == ["sqref", "onnxruntime"]
    code, r, _ = cli(capsys, "verify", tmp_path / "g.h5", "--backend", "onnxruntime")
    assert code == 0 and r["match"]
