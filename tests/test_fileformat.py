"""Model file format v1: exact round trip, checksums, clear errors, atomic writes."""
import json
import os

import h5py
import numpy as np
import pytest

import sqref
from sqref import zoo
from sqref.hdf5 import FileFormatError


def small_model():
    return zoo.lenet5(seed=3)


def test_round_trip_is_exact(tmp_path):
    model = small_model()
    path = tmp_path / "m.h5"
    sqref.save(model, path)
    back = sqref.load(path)
    assert back.names == model.names and back.input_shape == model.input_shape and back.meta == model.meta
    for a, b in zip(model.layers, back.layers):
        assert type(a) is type(b) and a.hyper() == b.hyper()
        for key in ("weight", "bias"):
            if hasattr(a, key):
                np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
                assert getattr(a, key).dtype == getattr(b, key).dtype
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(sqref.run(model, x), sqref.run(back, x))


def test_flipped_byte_in_any_array_fails_the_checksum(tmp_path):
    path = tmp_path / "m.h5"
    sqref.save(small_model(), path)
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    assert len(names) == 8  # weight and bias of 4 layers
    for name in names:
        bad = tmp_path / f"bad_{name.replace('/', '_')}.h5"
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "r+") as f:
            a = f[name][()]
            flat = a.view(np.uint8).reshape(-1)
            flat[len(flat) // 2] ^= 0x10
            f[name][...] = a
        with pytest.raises(FileFormatError, match=f"checksum mismatch in dataset '{name.split('/')[-1]}'"):
            sqref.load(bad)


def test_truncated_empty_and_foreign_files_give_clear_errors(tmp_path):
    path = tmp_path / "m.h5"
    sqref.save(small_model(), path)
    truncated = tmp_path / "t.h5"
    truncated.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(FileFormatError, match="not a readable HDF5 file"):
        sqref.load(truncated)
    empty = tmp_path / "e.h5"
    empty.write_bytes(b"")
    with pytest.raises(FileFormatError, match="not a readable HDF5 file"):
        sqref.load(empty)
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FileFormatError, match="not a sqref-model file"):
        sqref.load(foreign)
    with pytest.raises(FileFormatError, match="is a directory"):
        sqref.load(tmp_path)
    with pytest.raises(FileFormatError, match="no such file"):
        sqref.load(tmp_path / "missing.h5")


def test_wrong_version_and_bad_shapes_are_named(tmp_path):
    path = tmp_path / "m.h5"
    sqref.save(small_model(), path)
    v4 = tmp_path / "v4.h5"
    v4.write_bytes(path.read_bytes())
    with h5py.File(v4, "r+") as f:
        f.attrs["format_version"] = 4
    with pytest.raises(FileFormatError, match="format_version 4 is not supported"):
        sqref.load(v4)
    shape = tmp_path / "shape.h5"
    shape.write_bytes(path.read_bytes())
    with h5py.File(shape, "r+") as f:
        f["layers/0000"].attrs["stride"] = np.array([1, 1, 1])
    with pytest.raises(FileFormatError, match="attribute 'stride' = .* is not a valid stride"):
        sqref.load(shape)


def test_save_is_atomic_and_refuses_to_overwrite(tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    sqref.save(small_model(), path)
    before = path.read_bytes()
    with pytest.raises(FileFormatError, match="already exists"):
        sqref.save(zoo.lenet300(), path)
    assert path.read_bytes() == before
    # a failure in the middle of writing leaves neither a partial file nor a temporary
    class Boom(Exception):
        pass

    written = []

    def failing_write_array(group, name, a):  # the third array write fails
        written.append(name)
        if len(written) == 3:
            raise Boom()
        real_write_array(group, name, a)

    real_write_array = sqref.hdf5.write_array
    monkeypatch.setattr(sqref.fileformat, "write_array", failing_write_array)
    with pytest.raises(Boom):
        sqref.fileformat.save(zoo.lenet300(), tmp_path / "new.h5")
    assert sorted(os.listdir(tmp_path)) == ["m.h5"]


def test_file_documents_itself(tmp_path):
    path = tmp_path / "m.h5"
    sqref.save(small_model(), path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "sqref-model" and f.attrs["format_version"] == 3
        assert len(f.attrs["manifest_sha256"]) == 64
        assert json.loads(f.attrs["outputs"]) == ["fc2"] and json.loads(f.attrs["extra_inputs"]) == []
        assert f.attrs["sqref_version"] == sqref.__version__
        conv = f["layers/0000"]
        assert conv.attrs["type"] == "conv2d" and conv.attrs["name"] == "conv1"
        assert list(conv.attrs["stride"]) == [1, 1] and conv["weight"].shape == (20, 1, 5, 5)
        assert len(conv["weight"].attrs["sha256"]) == 64
