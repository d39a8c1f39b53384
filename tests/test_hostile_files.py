"""Hostile files, full disks and interrupted writes (docs/reliability.md, "Hostile files").

Each row of the issue's table is a test. Every file-reading row runs the CLI in a
subprocess under RLIMIT_AS (MEMORY_LIMIT), so a regression that allocates what
the file declares fails with a MemoryError instead of taking the machine, and
under a timeout, so a regression that blocks on a FIFO fails instead of hanging.
The child reports its peak RSS; every hostile file must stay under PEAK_LIMIT.
"""
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import sqref
from sqref import hdf5, zoo
from sqref.data import DATA_DIR, DEFAULT_DATA
from sqref.hdf5 import FileFormatError

sys.path.insert(0, os.path.dirname(__file__))
import fuzz_files  # noqa: E402  (a test helper beside this file)

MEMORY_LIMIT = 3 * 2**30   # address space of a child: python + numpy + h5py + matplotlib need ~1.5 GiB of it
PEAK_LIMIT = 400 * 2**20   # peak RSS of a child reading a hostile file (the baseline is ~150 MiB)
TIMEOUT = 60

# The child's own peak RSS is VmHWM of /proc/self/status: getrusage's ru_maxrss would carry
# the parent's (pytest's, several hundred MiB once torch is loaded) across fork and exec.
CHILD = textwrap.dedent("""
    import sys
    from sqref.cli.main import main
    rc = main(sys.argv[1:])
    hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("PEAK_RSS_KB", hwm, file=sys.stderr)
    sys.exit(rc)
""")


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(*args, cwd=None):
    """(exit code, stderr lines without the PEAK line, peak RSS in bytes)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, preexec_fn=_limit, cwd=cwd)
    lines = proc.stderr.strip().splitlines()
    peak = [int(line.split()[1]) * 1024 for line in lines if line.startswith("PEAK_RSS_KB")]
    return proc.returncode, [line for line in lines if not line.startswith("PEAK_RSS_KB")], (peak or [0])[0]


def assert_refused(path, match, *, command="info"):
    code, err, peak = run_cli(command, path)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("sqref: error: ") and match in err[0], err
    assert peak < PEAK_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    print(f"PEAK {os.path.basename(str(path))} {match!r}: {peak / 2**20:.0f} MiB")
    with pytest.raises(FileFormatError, match=match):
        sqref.load(path)
    return peak


def reseal(path):
    """Recompute every checksum and the manifest, as a tamperer would (fuzz_files.reseal): the
    file then passes the integrity checks, so the test reaches the check under test."""
    with h5py.File(path, "r+") as f:
        fuzz_files.reseal(f)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.h5"
    sqref.save(zoo.lenet300(seed=1), path)
    return path


def replace_dataset(path, name, **kwargs):
    with h5py.File(path, "r+") as f:
        attrs = dict(f[name].attrs)
        del f[name]
        ds = f.create_dataset(name, **kwargs)
        for k, v in attrs.items():
            ds.attrs[k] = v


# ----------------------------------------------------------------------------- 3, 5: links, VDS, external storage


def test_external_link_is_refused_not_followed(model, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    victim = other / "victim.h5"
    sqref.save(zoo.lenet300(seed=2), victim)
    with h5py.File(model, "r+") as f:
        del f["layers/0001/weight"]
        f["layers/0001/weight"] = h5py.ExternalLink("other/victim.h5", "/layers/0001/weight")
    assert_refused(model, "is an external link")


def test_relative_external_link_up_the_tree_is_refused(model, tmp_path):
    sub = tmp_path / "a"
    sub.mkdir()
    inner = sub / "m.h5"
    shutil.copyfile(model, inner)
    with h5py.File(inner, "r+") as f:
        del f["layers/0001/weight"]
        f["layers/0001/weight"] = h5py.ExternalLink("../m.h5", "/layers/0001/weight")
    assert_refused(inner, "is an external link")


def test_soft_link_is_refused(model):
    with h5py.File(model, "r+") as f:
        del f["layers/0003/bias"]
        f["layers/0003/bias"] = h5py.SoftLink("/layers/0001/bias")
    assert_refused(model, "is a soft link")


def test_hard_link_twice_is_refused(model):
    with h5py.File(model, "r+") as f:
        f["layers/0001/weight_again"] = f["layers/0001/weight"]
    assert_refused(model, "second link")


@pytest.mark.parametrize("source_exists", [True, False])
def test_virtual_dataset_into_another_file_is_refused(model, tmp_path, source_exists):
    victim = tmp_path / "victim.h5"
    sqref.save(zoo.lenet300(seed=2), victim)
    with h5py.File(model, "r") as f:
        shape, dtype = f["layers/0001/weight"].shape, f["layers/0001/weight"].dtype
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[...] = h5py.VirtualSource(str(victim) if source_exists else str(tmp_path / "missing.h5"),
                                     "/layers/0001/weight", shape=shape)
    with h5py.File(model, "r+") as f:
        attrs = dict(f["layers/0001/weight"].attrs)
        del f["layers/0001/weight"]
        ds = f.create_virtual_dataset("layers/0001/weight", layout, fillvalue=0)
        for k, v in attrs.items():
            ds.attrs[k] = v
    assert_refused(model, "virtual dataset")


def test_external_raw_storage_on_a_fifo_is_refused_without_blocking(model, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    replace_dataset(model, "layers/0001/bias", shape=(300,), dtype="float32", external=[(str(fifo), 0, 1200)])
    start = time.perf_counter()
    assert_refused(model, "external files")
    assert time.perf_counter() - start < TIMEOUT


def test_a_fifo_as_the_model_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "m.h5"
    os.mkfifo(fifo)
    code, err, _ = run_cli("info", fifo)
    assert code == 2 and "not a regular file" in err[0]


# ----------------------------------------------------------------------------- filters, types


def test_unknown_filter_is_refused(model):
    with h5py.File(model, "r") as f:
        a = f["layers/0001/weight"][()]
    replace_dataset(model, "layers/0001/weight", data=a, chunks=(50, 784), compression="lzf")
    assert_refused(model, "filter")


def test_compound_and_vlen_datasets_are_refused(model):
    replace_dataset(model, "layers/0001/bias", data=np.zeros(300, dtype=[("a", "f4"), ("b", "i4")]))
    assert_refused(model, "not a plain number type")
    with h5py.File(model, "r+") as f:
        del f["layers/0001/bias"]
        ds = f.create_dataset("layers/0001/bias", shape=(300,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        ds[0] = np.arange(3, dtype=np.uint8)
    assert_refused(model, "not a plain number type")


# ----------------------------------------------------------------------------- 4: memory bombs


@pytest.mark.parametrize("elements", [2**31, 2**27])
def test_unwritten_huge_weight_is_refused_before_allocation(model, elements):
    replace_dataset(model, "layers/0001/weight", shape=(elements,), dtype="float64")
    assert_refused(model, "unwritten")


def test_huge_gzip_chunks_are_refused(model):
    """A valid model whose biases sit in 128 MiB gzip chunks (the issue's file used 1 GiB)."""
    with h5py.File(model, "r") as f:
        bias = f["layers/0001/bias"][()]
    replace_dataset(model, "layers/0001/bias", data=bias, maxshape=(None,), chunks=(2**25,), compression="gzip")
    reseal(model)
    assert_refused(model, "chunks")


def test_gzip_bomb_over_the_compressed_budget_is_refused(model):
    """2**31 2-bit codes (512 MiB packed) in gzip: a file of a few MB."""
    q = tmp = model.parent / "q.h5"
    sqref.save(sqref.qmodel.quantize_model(zoo.lenet300(seed=1), bits=2), tmp)
    with h5py.File(q, "r+") as f:
        qg = f["layers/0001/quant"]
        attrs = dict(qg["codes"].attrs)
        del qg["codes"]
        ds = qg.create_dataset("codes", shape=(2**29,), dtype="uint8", chunks=(2**22,), compression="gzip")
        block = np.zeros(2**22, np.uint8)
        for i in range(0, 2**29, 2**22):
            ds[i:i + 2**22] = block
        for k, v in attrs.items():
            ds.attrs[k] = v
        qg.attrs["shape"] = np.array([2**31], np.int64)
    assert os.path.getsize(q) < 8 * 2**20
    assert_refused(q, "declare more than")


def test_padded_conv_that_needs_gigabytes_per_batch_is_refused(tmp_path):
    """A 1x1 conv with padding 2000 (eval: 15 GiB per batch of 250) is refused at load and at save."""
    from sqref.model import Conv2d, Flatten, Linear, MaxPool2d, Model

    w = np.ones((1, 1, 1, 1), np.float32)
    good = Model((Conv2d(w, None), MaxPool2d((28, 28), (28, 28), (0, 0)), Flatten(),
                  Linear(np.ones((10, 1), np.float32), None)), (1, 28, 28))
    path = tmp_path / "pad.h5"
    sqref.save(good, path)
    with h5py.File(path, "r+") as f:
        f["layers/0000"].attrs["padding"] = np.array([2000, 2000], np.int64)
        f["layers/0001"].attrs["kernel_size"] = np.array([4028, 4028], np.int64)
        f["layers/0001"].attrs["stride"] = np.array([4028, 4028], np.int64)
    reseal(path)
    assert_refused(path, "padding")
    code, err, peak = run_cli("eval", path)
    assert code == 2 and peak < PEAK_LIMIT
    import dataclasses
    bad = dataclasses.replace(good, layers=(Conv2d(w, None, padding=(2000, 2000)), *good.layers[1:]))
    with pytest.raises(FileFormatError, match="refusing to save"):
        sqref.save(bad, tmp_path / "never.h5")
    assert not (tmp_path / "never.h5").exists()


# ----------------------------------------------------------------------------- 6: attributes


@pytest.mark.parametrize("edit", ["meta", "name", "version_string", "manifest"])
def test_attribute_edits_fail_the_manifest(model, edit):
    with h5py.File(model, "r+") as f:
        if edit == "meta":
            f.attrs["meta"] = json.dumps({"arch": "lenet300", "test_accuracy": 0.999})
        elif edit == "name":  # and its reader's inputs, so that only the manifest can tell
            f["layers/0001"].attrs["name"] = "qc1"
            f["layers/0002"].attrs["inputs"] = json.dumps(["qc1"])
        elif edit == "version_string":
            f.attrs["sqref_version"] = "9.9.9"
        else:
            f.attrs["manifest_sha256"] = "0" * 64
    assert_refused(model, "manifest checksum mismatch")


def test_deleted_manifest_in_a_version_2_file_is_refused(model):
    with h5py.File(model, "r+") as f:
        del f.attrs["manifest_sha256"]
    assert_refused(model, "requires the manifest_sha256")


def test_version_1_files_still_load_and_the_shipped_files_are_version_2(tmp_path):
    # version 1 = version 2 without the manifest: per-dataset checksums only (docs/format.md)
    old = tmp_path / "v1.h5"
    shutil.copy(DATA_DIR / "lenet300.h5", old)
    with h5py.File(old, "r+") as f:
        del f.attrs["manifest_sha256"]
        f.attrs["format_version"] = 1
    want = sqref.load(DATA_DIR / "lenet300.h5")
    got = sqref.load(old)
    assert all(np.array_equal(a.weight, b.weight) for a, b in zip(got.layers, want.layers) if hasattr(a, "weight"))
    for name in ("lenet5.h5", "lenet300.h5", "mnist5k.h5"):  # an attribute edit of a shipped file is detected
        with h5py.File(DATA_DIR / name, "r") as f:
            assert f.attrs["format_version"] == 2 and "manifest_sha256" in f.attrs
    sqref.data.load_split(DEFAULT_DATA, "test")


def test_expect_sha256_pins_the_file_bytes(model, tmp_path):
    digest = hdf5.file_sha256(model)
    sqref.load(model, sha256=digest)
    with pytest.raises(FileFormatError, match="does not match the expected"):
        sqref.load(model, sha256="0" * 64)
    code, err, _ = run_cli("info", model, "--expect-sha256", digest)
    assert code == 0, err
    code, err, _ = run_cli("info", model, "--expect-sha256", "f" * 64)
    assert code == 2 and len(err) == 1 and "does not match the expected" in err[0]
    code, err, _ = run_cli("info", model, "--expect-sha256", "xyz")
    assert code == 2


# ----------------------------------------------------------------------------- 10, 11: meaning


def test_nan_weights_are_refused_at_load_and_at_save(model, tmp_path):
    with h5py.File(model, "r+") as f:
        a = f["layers/0001/weight"][()]
        a[0, 0] = np.nan
        f["layers/0001/weight"][...] = a
    reseal(model)
    assert_refused(model, "not all finite")
    bad = zoo.lenet300(seed=1)
    bad.layers[1].weight[0, 0] = np.inf
    with pytest.raises(FileFormatError, match="refusing to save.*not all finite"):
        sqref.save(bad, tmp_path / "inf.h5")
    assert not (tmp_path / "inf.h5").exists()


def test_symmetric_zero_point_must_be_zero(tmp_path):
    path = tmp_path / "q.h5"
    sqref.save(sqref.qmodel.quantize_model(zoo.lenet300(seed=1), bits=8), path)
    with h5py.File(path, "r+") as f:
        f["layers/0001/quant/zero_point"][...] = np.int32(100)
    reseal(path)
    assert_refused(path, "must be 0 on the symmetric grid")


# ----------------------------------------------------------------------------- 9: ONNX import


def test_onnx_import_errors_are_sqref_errors(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from sqref.backends.onnx_import import OnnxImportError, import_onnx

    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x08\x07\xff\xff\xff garbage" * 10)
    with pytest.raises(OnnxImportError):
        import_onnx(garbage)

    def graph(nodes, inits, dims):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        return helper.make_model(g)

    pool = graph([helper.make_node("MaxPool", ["x"], ["y"])], {}, [1, 1, 4, 4])
    with pytest.raises(OnnxImportError, match="kernel_shape"):
        import_onnx(pool)
    w = np.ones((1, 1, 1, 1), np.float32)
    strides3 = graph([helper.make_node("Conv", ["x", "w"], ["y"], strides=[1, 1, 1])], {"w": w}, [1, 1, 4, 4])
    with pytest.raises(OnnxImportError):
        import_onnx(strides3)
    wide = graph([helper.make_node("Relu", ["x"], ["y"])], {}, [1, 2**17])
    with pytest.raises(OnnxImportError, match="input_shape"):
        import_onnx(wide)
    assert issubclass(OnnxImportError, ValueError)


# ----------------------------------------------------------------------------- 1: disk full


@pytest.fixture
def full_disk(tmp_path):
    """A 300 KB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or \
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (the ENOSPC-injection tests still run)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("command", ["golden", "quantize"])
def test_disk_full_on_a_real_small_tmpfs(full_disk, command):
    out = full_disk / ("x.g.h5" if command == "golden" else "x.q8.h5")
    args = ([command, DATA_DIR / "lenet5.h5", "--mode", "onnxruntime", "--accumulate", "exact", "--count", "100"]
            if command == "golden" else [command, DATA_DIR / "lenet5.h5", "--no-eval"])
    code, err, _ = run_cli(*args, "-o", out, "-q")
    assert code == 1, err
    assert len(err) == 1 and err[0] == f"sqref: error: no space left on device writing {out}", err
    assert os.listdir(full_disk) == []


def test_disk_full_injected_at_the_write_call(model, tmp_path, monkeypatch):
    """ENOSPC raised by os.write (runs everywhere): a WriteError, old file intact, no temporary left."""
    before = model.read_bytes()
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data[:1000]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(hdf5.WriteError, match="no space left on device writing"):
        sqref.save(zoo.lenet300(seed=5), model, overwrite=True)
    from sqref.cli.main import main
    assert main(["init", "--arch", "lenet300", "-o", str(tmp_path / "new.h5")]) == 1
    monkeypatch.undo()
    assert model.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]


# ----------------------------------------------------------------------------- 2: an input as the output


@pytest.mark.parametrize("command", ["quantize", "compress", "train", "golden"])
def test_output_equal_to_the_data_file_is_refused_even_with_force(tmp_path, command):
    data = tmp_path / "d.h5"
    shutil.copyfile(DEFAULT_DATA, data)
    before = data.read_bytes()
    model = DATA_DIR / "lenet300.h5"
    args = {"quantize": ["quantize", model, "--no-eval"], "compress": ["compress", model, "--no-eval", "--rank", "8"],
            "train": ["train", "--arch", "lenet300", "--epochs", "1"],
            "golden": ["golden", model, "--mode", "onnxruntime", "--accumulate", "exact", "--count", "4"]}[command]
    code, err, _ = run_cli(*args, "--data", data, "-o", data, "--force", "-q")
    assert code == 2, err
    assert len(err) == 1 and ("input file" in err[0] or "refusing to replace" in err[0]), err
    assert data.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["d.h5"]


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling", "model"])
def test_bad_outputs_are_refused_with_force(tmp_path, kind):
    model = tmp_path / "m.h5"
    sqref.save(zoo.lenet300(seed=1), model)
    out = tmp_path / "out.h5"
    if kind == "directory":
        out.mkdir()
    elif kind == "fifo":
        os.mkfifo(out)
    elif kind == "dangling":
        out.symlink_to(tmp_path / "nowhere.h5")
    else:
        out = tmp_path / "link.h5"
        out.symlink_to(model)
    before = model.read_bytes()
    code, err, _ = run_cli("quantize", model, "--no-eval", "-o", out, "--force")
    assert code == 2 and len(err) == 1, err
    assert model.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- 8: signals


@pytest.mark.parametrize("signum, expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_modules_load_exits_at_once(signum, expected):
    # The handler `sqref` installs before its imports must end the process where the signal lands, not
    # raise: an exception raised while an extension module initialises (SciPy's, in a CI run) came out
    # as "ImportError: initialization failed", a traceback and exit code 1. The except clause below
    # stands for that: had the handler raised, the child would exit 1.
    child = textwrap.dedent(f"""
        import signal, sys
        from sqref.__main__ import exit_on_signal
        signal.signal({int(signum)}, exit_on_signal)
        try:
            signal.raise_signal({int(signum)})
        except BaseException:
            sys.exit(1)
        sys.exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == expected, proc.stderr
    assert proc.stderr.splitlines() == [f"sqref: error: interrupted by {signal.Signals(signum).name}"]


@pytest.mark.parametrize("signum, expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("delay", [0.3, 1.5, 4.0])  # while the modules load (~0.8 s), after, during the work
def test_signal_during_compress_leaves_destination_unchanged(tmp_path, signum, expected, delay):
    out = tmp_path / "c.h5"
    out.write_bytes(b"old contents")
    proc = subprocess.Popen([sys.executable, "-m", "sqref", "compress", str(DATA_DIR / "lenet5.h5"), "--rank", "20",
                             "--finetune", "3",  # about 10 s of work: every delay below lands inside it
                             "-o", str(out), "--force", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=TIMEOUT)
    if proc.returncode == 0:
        pytest.skip("compress finished before the signal")
    assert proc.returncode == expected, err
    assert err.strip().splitlines() == [f"sqref: error: interrupted by {signal.Signals(signum).name}"]
    assert out.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["c.h5"]
