"""sqref model files: HDF5, format version 1 (specified in docs/format.md).

Self-describing (layer types, hyperparameters, shapes, dtypes), versioned,
every array stored with its SHA-256 and checked on load, no pickle (only
numeric datasets and string/int attributes), written atomically.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile

import h5py
import numpy as np

from sqref.model import (AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU,
                         infer_shapes, layer_arrays)

FORMAT_NAME = "sqref-model"
FORMAT_VERSION = 1
# Largest array a file may declare (elements). Checked from the dataset's
# metadata before any read, so a hostile shape cannot trigger a huge allocation.
MAX_ARRAY_ELEMENTS = 2**31
ALLOWED_DTYPES = {"float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64"}


class FileFormatError(ValueError):
    """A file is not a valid sqref file: the message names the file and the problem."""


# --------------------------------------------------------------------------
# arrays with checksums
# --------------------------------------------------------------------------
def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order, little-endian."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.tobytes()).hexdigest()


def write_array(group: h5py.Group, name: str, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    ds = group.create_dataset(name, data=a)
    ds.attrs["sha256"] = array_sha256(a)


def read_array(group: h5py.Group, name: str, where: str, *, dtypes=None) -> np.ndarray:
    """Read dataset `name`, validating kind, dtype and size before reading,
    then its checksum after."""
    if name not in group:
        raise FileFormatError(f"{where}: missing dataset {name!r}")
    ds = group[name]
    if not isinstance(ds, h5py.Dataset):
        raise FileFormatError(f"{where}: {name!r} is not a dataset")
    dtype = str(ds.dtype)
    if dtype not in (dtypes or ALLOWED_DTYPES):
        raise FileFormatError(f"{where}: dataset {name!r} has dtype {dtype}, expected one of {sorted(dtypes or ALLOWED_DTYPES)}")
    size = 1
    for d in ds.shape or ():
        size *= int(d)
    if ds.shape is None or size > MAX_ARRAY_ELEMENTS:
        raise FileFormatError(f"{where}: dataset {name!r} declares shape {ds.shape}, larger than {MAX_ARRAY_ELEMENTS} elements")
    expected = ds.attrs.get("sha256")
    if not isinstance(expected, str):
        raise FileFormatError(f"{where}: dataset {name!r} has no sha256 attribute")
    a = ds[()]
    if array_sha256(a) != expected:
        raise FileFormatError(f"{where}: checksum mismatch in dataset {name!r} (the file is corrupted or was modified)")
    return a


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_h5(path, *, overwrite: bool = False):
    """Yield an open h5py.File on a temporary file beside `path`; on success
    flush, fsync and rename it onto `path`, on any error delete it. The
    destination is therefore either untouched or complete, never partial."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FileFormatError(f"{path}: is a directory, expected a file path to write")
    if not os.path.isdir(directory):
        raise FileFormatError(f"{path}: directory {directory} does not exist")
    if os.path.exists(path) and not overwrite:
        raise FileFormatError(f"{path}: already exists (use --force / overwrite=True to replace it)")
    if not os.access(directory, os.W_OK):
        raise FileFormatError(f"{path}: directory {directory} is not writable")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def open_h5(path, expected_format: str):
    """Open an existing sqref HDF5 file for reading, with clear errors for a
    missing file, a directory, a non-HDF5 or truncated file, and a file of
    another format or version."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileFormatError(f"{path}: is a directory, expected a {expected_format} file")
    if not os.path.exists(path):
        raise FileFormatError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FileFormatError(f"{path}: not a readable HDF5 file (empty, truncated or another format): {str(exc).splitlines()[0]}") from None
    with f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode(errors="replace")
        if fmt != expected_format:
            raise FileFormatError(f"{path}: not a {expected_format} file (format attribute {fmt!r})")
        version = f.attrs.get("format_version")
        if isinstance(version, np.generic):
            version = version.item()
        if not isinstance(version, int) or version != FORMAT_VERSION:
            raise FileFormatError(f"{path}: format_version {version!r} is not supported (this sqref reads version {FORMAT_VERSION})")
        yield f


def _str_attr(obj, key: str, where: str) -> str:
    value = obj.attrs.get(key)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        raise FileFormatError(f"{where}: missing or non-string attribute {key!r}")
    return value


def _int_tuple_attr(obj, key: str, where: str, length: int) -> tuple[int, ...]:
    value = obj.attrs.get(key)
    a = np.asarray(value) if value is not None else None
    if a is None or a.dtype.kind not in "iu" or a.shape != (length,):
        raise FileFormatError(f"{where}: attribute {key!r} must be {length} integers, got {value!r}")
    if np.any(a < 0) or np.any(a > 2**20):
        raise FileFormatError(f"{where}: attribute {key!r} = {a.tolist()} is out of range [0, 2**20]")
    return tuple(int(v) for v in a)


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
LAYER_CLASSES = {cls.kind: cls for cls in (Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten)}


def save(model: Model, path, *, overwrite: bool = False, extra=None) -> None:
    """Write `model` to `path` (format v1), atomically.

    `extra(f, index, layer_group)` may add datasets to a layer group (used by
    the quantized-model writer). Refuses an existing `path` unless `overwrite`.
    """
    from sqref import __version__

    infer_shapes(model)  # never write a model that cannot run
    with atomic_h5(path, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["sqref_version"] = __version__
        f.attrs["input_shape"] = np.asarray(model.input_shape, dtype=np.int64)
        f.attrs["meta"] = json.dumps(model.meta, sort_keys=True)
        layers = f.create_group("layers")
        layers.attrs["count"] = len(model.layers)
        for index, (name, layer) in enumerate(zip(model.names, model.layers)):
            g = layers.create_group(f"{index:04d}")
            g.attrs["type"] = layer.kind
            g.attrs["name"] = name
            for key, value in layer.hyper().items():
                g.attrs[key] = np.asarray(value, dtype=np.int64).reshape(-1)
            for key, a in layer_arrays(layer).items():
                write_array(g, key, a)
            if extra is not None:
                extra(f, index, g)


def load(path, *, layer_hook=None) -> Model:
    """Read a model file (format v1). Every array's checksum is verified and
    every shape checked before the model is returned.

    `layer_hook(group, where, arrays) -> arrays` may supply the arrays of a
    layer stored in another form (quantized codes); by default the plain
    `weight`/`bias` datasets are read.
    """
    with open_h5(path, FORMAT_NAME) as f:
        where = os.fspath(path)
        shape = np.asarray(f.attrs.get("input_shape"))
        if shape.dtype.kind not in "iu" or shape.ndim != 1 or not 1 <= shape.size <= 3 or np.any(shape < 1) or np.any(shape > 2**16):
            raise FileFormatError(f"{where}: input_shape attribute {shape.tolist()!r} must be 1 to 3 positive integers")
        meta_text = f.attrs.get("meta", "{}")
        try:
            meta = json.loads(meta_text)
        except (TypeError, ValueError):
            raise FileFormatError(f"{where}: attribute 'meta' is not valid JSON") from None
        if not isinstance(meta, dict):
            raise FileFormatError(f"{where}: attribute 'meta' must be a JSON object")
        if "layers" not in f or not isinstance(f["layers"], h5py.Group):
            raise FileFormatError(f"{where}: missing group 'layers'")
        groups = f["layers"]
        count = groups.attrs.get("count")
        if not isinstance(count, (int, np.integer)) or not 0 < count <= 10_000 or set(groups) != {f"{i:04d}" for i in range(count)}:
            raise FileFormatError(f"{where}: layer groups {sorted(groups)[:5]} do not match count {count!r}")
        layers, names = [], []
        for index in range(int(count)):
            g = groups[f"{index:04d}"]
            layer_where = f"{where}: layer {index}"
            layers.append(_read_layer(g, layer_where, layer_hook))
            names.append(_str_attr(g, "name", layer_where))
    try:
        model = Model(tuple(layers), tuple(int(v) for v in shape), tuple(names), meta)
        infer_shapes(model)
    except (ValueError, TypeError) as exc:
        raise FileFormatError(f"{where}: {exc}") from None
    return model


def _read_layer(g, where, layer_hook):
    kind = _str_attr(g, "type", where)
    if kind not in LAYER_CLASSES:
        raise FileFormatError(f"{where}: unknown layer type {kind!r} (known: {', '.join(LAYER_CLASSES)})")
    cls = LAYER_CLASSES[kind]
    if cls in (Conv2d, Linear):
        if layer_hook is not None:
            arrays = layer_hook(g, where)
        else:
            arrays = {"weight": read_array(g, "weight", where, dtypes={"float32", "float64"})}
            if "bias" in g:
                arrays["bias"] = read_array(g, "bias", where, dtypes={"float32", "float64"})
        weight, bias = arrays["weight"], arrays.get("bias")
        if cls is Linear:
            return Linear(weight, bias)
        groups = _int_tuple_attr(g, "groups", where, 1)[0]
        return Conv2d(weight, bias, _int_tuple_attr(g, "stride", where, 2), _int_tuple_attr(g, "padding", where, 2),
                      _int_tuple_attr(g, "dilation", where, 2), groups)
    if cls in (MaxPool2d, AvgPool2d):
        return cls(_int_tuple_attr(g, "kernel_size", where, 2), _int_tuple_attr(g, "stride", where, 2),
                   _int_tuple_attr(g, "padding", where, 2))
    return cls()
