"""The CLI contract: exit 0 on success, 2 on bad input with one line on
stderr and no traceback, valid JSON on stdout with --json (errors too)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sqref
from sqref import zoo
from sqref.cli import main


def run_cli(*args):
    """Run `python -m sqref` in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "sqref", *map(str, args)], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "lenet300.h5"
    sqref.save(zoo.lenet300(seed=1), path)
    return path


@pytest.mark.parametrize("signum, expected", [(2, 130), (15, 143)])
def test_a_signal_inside_an_import_is_an_interruption(model_file, capsys, monkeypatch, signum, expected):
    # A signal that lands while a command imports an extension module (onnxruntime, torch) raises
    # Interrupted inside its initialisation, and Python reports "ImportError: initialization failed"
    # caused by it. That is an interruption (exit 130 / 143), not a missing dependency (exit 1).
    from sqref.cli.main import Interrupted

    def importing(path):
        try:
            raise Interrupted(signum)  # what the handler raises
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr("sqref.cli.models.describe_file", importing)
    assert main(["info", str(model_file)]) == expected
    name = {2: "SIGINT", 15: "SIGTERM"}[signum]
    assert capsys.readouterr().err.splitlines() == [f"sqref: error: interrupted by {name}"]


def test_info_text_and_json(model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "fc1" in out and "266,610 parameters" in out
    assert main(["info", str(model_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["total"]["params"] == 266_610 and result["total"]["float32_bytes"] == 4 * 266_610
    assert [r["name"] for r in result["layers"]] == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    assert [r["kind"] for r in result["layers"]][:2] == ["flatten", "linear"]
    assert result["layers"][1]["weight_shape"] == [300, 784] and result["layers"][1]["scheme"] is None


def test_eval_json(model_file, capsys):
    assert main(["eval", str(model_file), "--json", "-q"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 1000 and 0 <= result["correct"] <= 1000
    assert result["accuracy"] == result["correct"] / 1000


@pytest.mark.parametrize("args, message", [
    (["info", "missing.h5"], "missing.h5: no such file"),
    (["eval", "{data}"], "not a sqref-model file"),
    (["eval", "{model}", "--split", "nope"], "invalid choice: 'nope'"),
    (["train", "--arch", "lenet5", "-o", "{model}"], "already exists; pass --force"),
    (["train", "--arch", "lenet5", "-o", "x.h5", "--epochs", "0"], "expected a positive integer, got '0'"),
    (["train", "--arch", "lenet5", "-o", "x.h5", "--lr", "nan"], "expected a finite number >= 0, got 'nan'"),
    (["data", "--source", "{model}", "-o", "{model}"], "is the input file"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    (["eval", "{model}", "--data", "{tmp}/wide.npz"], "have shape (2, 1, 32, 32); the model expects (N, 1, 28, 28)"),
    (["import", "{tmp}/missing.onnx"], "missing.onnx: no such file"),
    # a bad width is named first, before a data file that does not fit the model is read
    (["quantize", "{model}", "--bits", "9", "--data", "{tmp}/wide.npz", "-o", "{tmp}/q.h5"],
     "bits must be in [2, 8], got 9"),
    (["compress", "{model}", "--bits", "8,fc9=4", "--data", "{tmp}/wide.npz", "-o", "{tmp}/c.h5"],
     "'fc9' in bits spec"),
])
def test_bad_input_is_one_line_exit_2(args, message, model_file, tmp_path):
    data = sqref.data.DEFAULT_DATA
    np.savez(tmp_path / "wide.npz", x=np.zeros((2, 1, 32, 32), np.float32))
    np.save(tmp_path / "pickled.npy", np.array([None, "x"], dtype=object))
    args = [a.format(model=model_file, data=data, tmp=tmp_path) for a in args]
    code, out, err = run_cli(*args, "--json") if args[0] != "nosuchcommand" else run_cli(*args)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    if args[0] != "nosuchcommand":
        assert json.loads(out)["error"]


@pytest.mark.parametrize("args, message", [
    (["eval", "{model}", "--data", "{tmp}/pickled.npy"], "an object array (pickled Python objects); refused"),
    (["eval", "{model}", "--data", "{tmp}/missing.npz"], "missing.npz: no such file"),
    (["eval", "{model}", "--split", "all", "--reference", "{tmp}/missing.onnx"], "missing.onnx: no such file"),
    (["quantize", "{model}", "--split", "train"], "invalid choice: 'train'"),
    (["compress", "{model}", "--split", "all"], "invalid choice: 'all'"),
    (["import", "{model}", "-o", "{model}", "--force"], "is the input file"),
    (["golden", "{model}", "--mode", "tflite", "--inputs", "{tmp}/wide.npz"], "the model expects (N, 1, 28, 28)"),
    (["golden", "{model}", "--mode", "tflite", "--count", "0"], "expected a positive integer, got '0'"),
])
def test_bad_data_and_model_options_in_process(args, message, model_file, tmp_path, capsys):
    """The same contract through main() (faster than a subprocess): exit 2, one line, JSON error."""
    np.savez(tmp_path / "wide.npz", x=np.zeros((2, 1, 32, 32), np.float32))
    np.save(tmp_path / "pickled.npy", np.array([None, "x"], dtype=object))
    before = sorted(os.listdir(tmp_path))
    args = [a.format(model=model_file, tmp=tmp_path) for a in args]
    assert main([*args, "--json", "-q"]) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and json.loads(out)["exit_code"] == 2
    assert sorted(os.listdir(tmp_path)) == before


def test_no_command_prints_help_and_exits_2():
    code, _, err = run_cli()
    assert code == 2 and "usage: sqref" in err


def test_help_and_version_exit_0():
    code, out, _ = run_cli("--version")
    assert code == 0 and sqref.__version__ in out
    code, out, _ = run_cli("eval", "--help")
    assert code == 0 and "--split" in out


@pytest.mark.parametrize("command, options", [
    ("eval", ["--data", "--split", "--split-seed", "--reference", ".npz", ".onnx"]),
    ("quantize", ["--data", "--split", "--split-seed", ".npy", ".onnx"]),
    ("compress", ["--data", "--split-seed", "agreement", ".onnx"]),
    ("golden", ["--data", "--inputs", "--calib", "--split-seed", "--count", ".onnx"]),
    ("import", ["MODEL.onnx", "--output", "--force", "--expect-sha256"]),
    ("train", ["--data", "--split-seed"]),
])
def test_new_options_have_help(command, options, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, option


def test_eval_of_a_user_file_with_labels_text_and_json(tmp_path, capsys):
    x, y = sqref.data.load_split(split="val")
    np.savez(tmp_path / "val.npz", x=x, y=y)
    model = sqref.data.DATA_DIR / "lenet300.h5"
    assert main(["eval", str(model), "--data", str(tmp_path / "val.npz"), "-q"]) == 0
    assert "all of val.npz: accuracy" in capsys.readouterr().out
    assert main(["eval", str(model), "--data", str(tmp_path / "val.npz"), "--json", "-q"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["count"] == 500 and r["split"] == "all" and r["data"]["format"] == "npz"
    # the same images and labels as the shipped file's val split: the same accuracy
    assert main(["eval", str(model), "--split", "val", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == r["accuracy"]
