"""The CLI contract: exit 0 on success, 2 on bad input with one line on
stderr and no traceback, valid JSON on stdout with --json (errors too)."""
import json
import subprocess
import sys

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
])
def test_bad_input_is_one_line_exit_2(args, message, model_file, tmp_path):
    data = sqref.data.DEFAULT_DATA
    args = [a.format(model=model_file, data=data) for a in args]
    code, out, err = run_cli(*args, "--json") if args[0] != "nosuchcommand" else run_cli(*args)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    if args[0] != "nosuchcommand":
        assert json.loads(out)["error"]


def test_no_command_prints_help_and_exits_2():
    code, _, err = run_cli()
    assert code == 2 and "usage: sqref" in err


def test_help_and_version_exit_0():
    code, out, _ = run_cli("--version")
    assert code == 0 and sqref.__version__ in out
    code, out, _ = run_cli("eval", "--help")
    assert code == 0 and "--split" in out
