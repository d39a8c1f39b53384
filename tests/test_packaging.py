"""Packaging: the wheel ships the default models and data (as sqref/shipped/,
the top-level data/ folder mapped by setup.cfg), and sqref.data finds them
from an installed copy as well as from the checkout."""
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import sqref
from sqref import data

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in")


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a clean copy of the project (the checkout gets no
    build/ folder), without build isolation: no network, a few seconds."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed")
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and importlib.util.find_spec("wheel") is None:
        pytest.skip("no bdist_wheel here (setuptools < 70.1 without the wheel package)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in PROJECT_FILES:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("sqref", "data"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("sqref-*.whl")
    return path


def _source_of(wheel: Path) -> Path:
    """The copy the wheel was built from (the checkout may change while tests run)."""
    return wheel.parent.parent / "src"


def test_wheel_ships_the_data_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in data.SHIPPED_FILES:
            member = f"sqref/shipped/{name}"
            assert member in names, f"{member} missing from {wheel.name}"
            assert _sha256(z.read(member)) == _sha256((_source_of(wheel) / "data" / name).read_bytes()), member


def test_wheel_ships_every_module(wheel):
    """The package list in setup.cfg is explicit: a new subpackage must be added there."""
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    src = _source_of(wheel)
    modules = {p.relative_to(src).as_posix() for p in (src / "sqref").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(modules - names)
    assert not missing, f"not in the wheel (add the package to setup.cfg [options] packages): {missing}"
    assert "sqref = sqref.__main__:entry" in entry_points


def test_installed_wheel_finds_its_own_data(wheel, tmp_path):
    """Unpacked wheel on sys.path, run from an unrelated directory: DATA_DIR is
    the installed sqref/shipped folder, and the shipped files load."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import sqref, sqref.data as d; print(d.DATA_DIR); "
            "m = sqref.load(d.shipped('lenet300')); x, y = d.load_split(split='val'); "
            "print(len(m.layers), x.shape[0])")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    folder, counts = proc.stdout.splitlines()
    assert Path(folder) == (site / "sqref" / "shipped").resolve()
    assert counts.split()[1] == "500"


def test_data_dir_files_exist_and_load():
    for name in data.SHIPPED_FILES:
        assert (data.DATA_DIR / name).is_file()
        assert data.shipped(name) == data.DATA_DIR / name
    assert data.DEFAULT_DATA == data.DATA_DIR / "mnist5k.h5"
    for name in ("lenet5", "lenet300"):
        model = sqref.load(data.shipped(name))
        assert model.layers
    x, y = data.load_split(split="val")
    assert x.shape == (500, 1, 28, 28) and np.array_equal(np.bincount(y, minlength=10), [50] * 10)
    with pytest.raises(FileNotFoundError, match="not a shipped file"):
        data.shipped("lenet7")


def test_python_m_sqref_data_prints_paths(tmp_path):
    run = [sys.executable, "-m", "sqref.data"]
    # the child imports the sqref under test (not whichever one an install points at)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(sqref.__file__).parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(run + ["lenet5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and Path(out.stdout.strip()) == data.DATA_DIR / "lenet5.h5"
    bad = subprocess.run(run + ["nope"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
