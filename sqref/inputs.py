"""What a command reads as input data (``--data``, and sqref golden's ``--inputs`` and ``--calib``):
the sqref data file (MNIST-5k, which carries its own train / val / test split) or a user's
NumPy file, chosen by the file name's extension:

    .npz          an archive (``numpy.savez``) holding the array ``x`` (the inputs) and, optionally,
                  ``y`` (integer labels); any other array in it is ignored
    .npy          one array (``numpy.save``): the inputs, no labels
    anything else the sqref data file (HDF5, docs/format.md)

Inputs must be float32, finite, shaped (N, *model.input_shape) with N >= 1; sqref converts
nothing (an integer image or a float64 array is refused, with the conversion to make: only the
user knows the model's preprocessing). Labels must be integers in [0, classes), one per input.
Nothing is unpickled: ``allow_pickle=False`` throughout, and an object array is refused from its
header, before its data is read; dtypes and shapes are all checked from the headers first.
Every failure is an ``InputFileError`` (a ``ValueError``) of one line naming the file.

A user's file is split by ``split_indices``: a seeded permutation of its N samples
(``numpy.random.default_rng(seed).permutation(N)``, seed ``SPLIT_SEED`` = 0 unless given);
its first N // 5 entries are the test split, the next N // 10 the validation split and the rest
the train split (calibration, fine-tuning): MNIST-5k's 70 / 10 / 20 proportions. Each split
keeps the file's order. The commands record the file, its SHA-256 and the seed
(``DataFile.record``) in what they write.
"""
from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from sqref.hdf5 import MAX_FILE_BYTES, FileFormatError, file_sha256, open_regular

SPLIT_SEED = 0
SPLITS = ("train", "val", "test")
ALL = "all"  # every sample of the file, for the commands that fit nothing to the data
NPZ, NPY, SQREF_DATA = "npz", "npy", "sqref-data"
KINDS = {".npz": NPZ, ".npy": NPY}
MAX_INPUT_BYTES = MAX_FILE_BYTES  # declared bytes of one array: 4 GiB, as a sqref HDF5 file
MNIST_SHAPE = (1, 28, 28)
SPLIT_RULE = "seeded permutation: test N // 5, val N // 10, train the rest (file order kept in each)"


class InputFileError(FileFormatError):
    """A data file sqref cannot use: one line naming the file and the problem."""


def data_kind(path) -> str:
    """'npz', 'npy' (by the extension, any case) or 'sqref-data' (any other name)."""
    return KINDS.get(os.path.splitext(os.fspath(path))[1].lower(), SQREF_DATA)


def shape_text(shape, batch="N") -> str:
    """(N, 3, 16, 16): a sample shape with its batch axis."""
    return "(" + ", ".join([batch, *map(str, shape)]) + ")"


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """The rows of each split of an N-sample user file (module docstring); sorted int64 arrays."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = n // 5, n // 10
    parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
    return {name: np.sort(parts[name]).astype(np.int64) for name in SPLITS}


# ----------------------------------------------------------------------------- reading NumPy files


def _open_regular(path: str, kind: str):
    """A binary file object for a regular, non-empty file (sqref.hdf5.open_regular)."""
    fh, size = open_regular(path, f"a .{kind} file", InputFileError)
    if size == 0:
        fh.close()
        raise InputFileError(f"{path}: empty file, expected a NumPy .{kind} "
                             f"{'archive (numpy.savez)' if kind == NPZ else 'array (numpy.save)'}")
    return fh


def _read_header(fp, where: str, what: str):
    """(shape, dtype) from a .npy header, nothing else read."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        elif version == (3, 0):  # 3.0 only adds UTF-8 field names of structured arrays: never inputs
            raise InputFileError(f"{where}: {what}: .npy format version 3.0 (structured arrays); expected a "
                                 "float32 array")
        else:
            raise InputFileError(f"{where}: {what}: not a NumPy array (unknown .npy format version "
                                 f"{version[0]}.{version[1]})")
    except InputFileError:
        raise
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(f"{where}: {what}: not a NumPy array ({first})") from None
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _refuse_objects(dtype, where, what):
    if dtype.hasobject:
        raise InputFileError(f"{where}: {what}: an object array (pickled Python objects); refused: sqref never "
                             "unpickles data")


def _check_input_header(shape, dtype, where, what, input_shape):
    _refuse_objects(dtype, where, what)
    if dtype.fields is not None or dtype.kind != "f" or dtype.itemsize != 4:
        name = "a structured array" if dtype.fields is not None else dtype.name
        if dtype.kind in "iub" and dtype.fields is None:
            hint = ("scale them as your model expects and save float32, e.g. "
                    "numpy.save(path, (x / 255).astype(numpy.float32))")
        else:
            hint = "save x.astype(numpy.float32)"
        raise InputFileError(f"{where}: {what} are {name}; sqref reads float32 inputs and converts nothing: {hint}")
    if input_shape is not None:
        if len(shape) != len(input_shape) + 1 or shape[1:] != tuple(input_shape):
            raise InputFileError(f"{where}: {what} have shape {shape}; the model expects "
                                 f"{shape_text(input_shape)}")
    elif len(shape) < 2:
        raise InputFileError(f"{where}: {what} have shape {shape}; expected (N, ...) with a batch axis first")
    if shape[0] == 0:
        raise InputFileError(f"{where}: {what} have shape {shape}: no samples")
    if math.prod(shape) * dtype.itemsize > MAX_INPUT_BYTES:
        raise InputFileError(f"{where}: {what} declare shape {shape}, more than {MAX_INPUT_BYTES} bytes")


def _check_label_header(shape, dtype, where, n):
    _refuse_objects(dtype, where, "labels 'y'")
    if dtype.fields is not None or dtype.kind not in "iu":
        raise InputFileError(f"{where}: labels 'y' are {dtype.name if dtype.fields is None else 'structured'}; "
                             "expected integers (class indices)")
    if shape != (n,):
        raise InputFileError(f"{where}: labels 'y' have shape {shape}; expected ({n},), one per input")


def _read_data(fp, where, what):
    try:
        return np.lib.format.read_array(fp, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(f"{where}: {what}: truncated or damaged ({first})") from None


def _finish_inputs(x, where, what):
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise InputFileError(f"{where}: {what} hold {bad} NaN or infinite values; refused")
    return x


def read_numpy(path, input_shape=None) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's .npz (x, optional y) or .npy (inputs only) as (x float32, y int64 or None),
    checked as the module docstring says; ``input_shape`` (one sample's shape) None: any (N, ...)."""
    where = os.fspath(path)
    kind = data_kind(where)
    if kind not in (NPZ, NPY):
        raise InputFileError(f"{where}: expected a .npz or .npy file")
    with _open_regular(where, kind) as fh:
        if kind == NPY:
            shape, dtype = _read_header(fh, where, "inputs")
            _check_input_header(shape, dtype, where, "inputs", input_shape)
            fh.seek(0)
            return _finish_inputs(_read_data(fh, where, "inputs"), where, "inputs"), None
        try:
            archive = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputFileError(f"{where}: not a NumPy .npz archive ({first})") from None
        with archive:
            names = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
            if "x" not in names:
                found = ", ".join(sorted(repr(n) for n in names)) or "no arrays"
                raise InputFileError(f"{where}: no array 'x' (found {found}); a .npz holds the inputs as 'x' "
                                     "and optional integer labels as 'y'")
            headers = {}
            for key in ("x", "y") if "y" in names else ("x",):
                with _member(archive, names[key], where) as member:
                    headers[key] = _read_header(member, where, f"array {key!r}")
            _check_input_header(*headers["x"], where, "inputs 'x'", input_shape)
            n = headers["x"][0][0]
            if "y" in headers:
                _check_label_header(*headers["y"], where, n)
            with _member(archive, names["x"], where) as member:
                x = _finish_inputs(_read_data(member, where, "inputs 'x'"), where, "inputs 'x'")
            y = None
            if "y" in headers:
                with _member(archive, names["y"], where) as member:
                    y = _read_data(member, where, "labels 'y'")
                if y.size and int(y.min()) < 0:
                    raise InputFileError(f"{where}: labels 'y' include {int(y.min())}; class indices are >= 0")
                if y.size and int(y.max()) >= 2**31:
                    raise InputFileError(f"{where}: labels 'y' go up to {int(y.max())}; not class indices")
                y = y.astype(np.int64)
    return x, y


def _member(archive, name, where):
    try:
        return archive.open(name)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(f"{where}: cannot read {name!r} in the archive ({first})") from None


# ----------------------------------------------------------------------------- one data source


@dataclass(frozen=True, eq=False)
class DataFile:
    """A data source, checked against a model's input shape: the sqref data file (its stored
    splits, read when asked for) or a user's file (read whole, split by ``split_indices``)."""

    path: str
    kind: str
    seed: int
    x: np.ndarray | None = field(default=None, repr=False)
    y: np.ndarray | None = field(default=None, repr=False)

    @property
    def has_labels(self) -> bool:
        return self.kind == SQREF_DATA or self.y is not None

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(x, y) of a split ('train', 'val', 'test') or of the whole file ('all'); y is None
        without labels. An empty split is an InputFileError."""
        if name not in (*SPLITS, ALL):
            raise ValueError(f"split {name!r}: expected one of {', '.join((*SPLITS, ALL))}")
        if self.kind == SQREF_DATA:
            from sqref.data import load_split

            if name != ALL:
                return load_split(self.path, name)
            parts = [load_split(self.path, s) for s in SPLITS]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if name == ALL:
            return self.x, self.y
        rows = split_indices(len(self.x), self.seed)[name]
        if rows.size == 0:
            raise InputFileError(f"{self.path}: {len(self.x)} samples leave the {name} split empty (test N // 5, "
                                 "val N // 10, train the rest): give at least 10 samples")
        return self.x[rows], None if self.y is None else self.y[rows]

    def check_classes(self, classes: int) -> None:
        """Labels must be class indices of a model with ``classes`` outputs."""
        if self.kind == SQREF_DATA:
            top = 9
        elif self.y is None or self.y.size == 0:
            return
        else:
            top = int(self.y.max())
        if top >= classes:
            raise InputFileError(f"{self.path}: labels go up to {top}, but the model has {classes} outputs "
                                 f"(labels must be 0..{classes - 1})")

    def record(self) -> dict:
        """What a written file says about its data: file name, SHA-256, format, labels, split."""
        out = {"file": os.path.basename(self.path), "sha256": file_sha256(self.path), "format": self.kind,
               "labels": self.has_labels}
        if self.kind == SQREF_DATA:
            from sqref.data import SPLIT_SEED as STORED_SEED

            out["split"] = {"rule": "stored in the file (stratified)", "seed": STORED_SEED}
        else:
            counts = {k: int(v.size) for k, v in split_indices(len(self.x), self.seed).items()}
            out["split"] = {"rule": SPLIT_RULE, "seed": self.seed, "samples": len(self.x), **counts}
        return out


def open_data(path, input_shape=None, *, seed: int = SPLIT_SEED) -> DataFile:
    """Check a data file against a model's input shape (one sample's shape; None: any) and
    return it as a DataFile. A user's file is read whole; the sqref data file is opened and
    checked (format, manifest), its splits read when asked for."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"split seed {seed!r}: expected an integer >= 0")
    where = os.fspath(path)
    kind = data_kind(where)
    if kind == SQREF_DATA:
        from sqref.data import FORMAT_NAME
        from sqref.hdf5 import open_h5

        try:
            with open_h5(where, FORMAT_NAME):
                pass
        except FileFormatError as exc:
            if os.path.splitext(where)[1].lower() in (".h5", ".hdf5") or str(exc).endswith("no such file"):
                raise
            raise InputFileError(f"{exc}; data files are the sqref data file (HDF5), a .npz or a .npy") from None
        if input_shape is not None and tuple(input_shape) != MNIST_SHAPE:
            raise InputFileError(f"{where}: a sqref data file holds MNIST-5k images {shape_text(MNIST_SHAPE)}; "
                                 f"the model expects {shape_text(input_shape)}: pass your own inputs as .npz or .npy")
        return DataFile(where, kind, int(seed))
    x, y = read_numpy(where, input_shape)
    return DataFile(where, kind, int(seed), x, y)


def output_classes(model, x) -> int:
    """The number of outputs (classes) of ``model``, from its output on the first input."""
    from sqref.model import run

    out = np.asarray(run(model, x[:1]))
    if out.ndim != 2:
        raise ValueError(f"the model's output has shape {out.shape[1:]} per sample; expected (classes,) logits")
    return int(out.shape[1])
