"""Reliability: damaged files, interrupted writes, the CLI contract for every
subcommand, hostile API inputs, determinism, no code execution from data."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sqref
from sqref import clipping, ops, quant, zoo
from sqref.cli import main

sys.path.insert(0, os.path.dirname(__file__))
import fuzz_files  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fuzz_sources(tmp_path_factory):
    return fuzz_files.default_sources(str(tmp_path_factory.mktemp("fuzz-sources")))


def test_damaged_files_load_correctly_or_fail_with_sqref_error(fuzz_sources, tmp_path):
    """A reduced run of the file fuzzer (the full 1,000: `python tests/fuzz_files.py`)."""
    counts, crashes = fuzz_files.fuzz(fuzz_sources, 150, seed=11, workdir=str(tmp_path))
    assert crashes == [], "\n".join(crashes)
    assert counts["tried"] == 150 and counts["rejected"] > 100


@pytest.mark.slow
def test_damaged_files_full_thousand(fuzz_sources, tmp_path):
    counts, crashes = fuzz_files.fuzz(fuzz_sources, 1000, seed=0, workdir=str(tmp_path))
    assert crashes == [], "\n".join(crashes)


WRITER = textwrap.dedent("""
    import sys, numpy as np, sqref
    from sqref.model import Linear, Model
    rng = np.random.default_rng(0)
    layers = tuple(Linear(rng.standard_normal((2000, 2000)).astype(np.float32), None) for _ in range(8))
    model = Model(layers, (2000,), meta={"writer": sys.argv[2]})
    print("ready", flush=True)
    sqref.save(model, sys.argv[1], overwrite=True)
    print("done", flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
def test_killed_writer_leaves_old_file_or_nothing(tmp_path, delay):
    """SIGKILL a writer of a 128 MB model mid-write: the destination is the old
    file, intact, never a partial one (the temporary is left behind at worst)."""
    dest = tmp_path / "m.h5"
    sqref.save(zoo.lenet300(), dest)
    before = dest.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), "new"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    after = dest.read_bytes()
    if after != before:  # the rename happened: then the new file must be complete
        assert sqref.load(dest).meta["writer"] == "new"
    else:
        sqref.load(dest)


SUBCOMMANDS = {
    "info": ["{missing}"], "import": ["{missing}"], "eval": ["{missing}"], "quantize": ["{missing}"], "compress": ["{missing}"],
    "train": ["--arch", "lenet5", "-o", "{model}"], "data": ["--source", "{missing}", "-o", "{out}"],
    "study": ["nosuchstudy"], "init": ["--arch", "vgg16", "-o", "{model}"],
    "golden": ["{missing}"], "verify": ["{missing}", "--backend", "sqref"],
}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_fails_bad_input_in_one_line_exit_2_json_error(command, tmp_path, capsys):
    model = tmp_path / "m.h5"
    sqref.save(zoo.lenet300(), model)
    args = [a.format(missing=tmp_path / "missing.h5", model=model, out=tmp_path / "o.h5") for a in SUBCOMMANDS[command]]
    assert main([command, *args, "--json", "-q"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("sqref: error: ")
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]  # nothing written


def test_every_registered_subcommand_is_covered():
    from sqref.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)


def test_no_code_execution_from_data():
    """No pickle, no allow_pickle=True, no eval/exec anywhere in the package or tests."""
    pattern = re.compile(r"\bimport pickle\b|allow_pickle\s*=\s*True|(?<![.\w])eval\(|(?<![.\w])exec\(|\bmarshal\b|\bshelve\b")
    offenders = []
    for path in list((ROOT / "sqref").rglob("*.py")) + list((ROOT / "tests").rglob("*.py")) + list((ROOT / "benchmarks").rglob("*.py")):
        if path.name == "test_reliability.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_float_path_is_identical_across_runs():
    code = textwrap.dedent("""
        import hashlib, numpy as np, sqref
        from sqref.data import load_split
        x, _ = load_split(split="test")
        print(hashlib.sha256(sqref.run(sqref.load("data/lenet5.h5"), x).tobytes()).hexdigest())
    """)
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


bad_arrays = st.one_of(
    st.just(np.zeros((0, 1, 3, 3), np.float32)), st.just(np.full((1, 1, 3, 3), np.nan, np.float32)),
    st.just(np.zeros((1, 1, 3), np.float32)), st.just(np.zeros((1, 1, 3, 3), np.int32)),
    st.just(np.full((1, 1, 3, 3), 1e38, np.float32)), st.just("not an array"), st.just(np.zeros((1, 2, 3, 3))),
)


@given(bad_arrays, st.sampled_from([0, 1, 2, -1, 9, 2.5, "8", True, None]))
def test_public_functions_raise_only_documented_errors(x, bits):
    w = np.ones((1, 1, 2, 2), np.float32)
    for call in (lambda: ops.conv2d(x, w), lambda: ops.max_pool2d(x, kernel_size=2), lambda: ops.relu(x),
                 lambda: quant.quantize(x, bits=bits, alpha=1.0), lambda: clipping.boundary(x, bits)):
        try:
            with np.errstate(all="ignore"):
                call()
        except (ValueError, TypeError) as exc:
            assert str(exc)  # a message naming the problem
