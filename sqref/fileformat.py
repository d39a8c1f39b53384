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

from sqref import __version__, clipping, quant
from sqref.model import (AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU,
                         infer_shapes, layer_arrays)
from sqref.packing import pack_codes, packed_nbytes, unpack_codes
from sqref.qmodel import BIAS_BITS, LayerQuant

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
    a = np.asarray(a, order="C")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.tobytes()).hexdigest()


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_array(group: h5py.Group, name: str, a: np.ndarray) -> None:
    a = np.asarray(a, order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
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
def atomic_path(path, *, overwrite: bool = False):
    """Yield a temporary path beside `path`; when the body succeeds, fsync the
    temporary file and rename it onto `path`; on any error delete it. The
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
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_h5(path, *, overwrite: bool = False):
    """Yield an open h5py.File that lands on `path` atomically (see atomic_path)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


def atomic_text(path, text: str, *, overwrite: bool = False) -> None:
    """Write a text file atomically (see atomic_path)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)


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
        try:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode(errors="replace")
            if not isinstance(fmt, str) or fmt != expected_format:
                raise FileFormatError(f"{path}: not a {expected_format} file (format attribute {fmt!r})")
            version = f.attrs.get("format_version")
            if isinstance(version, np.generic):
                version = version.item()
            if not isinstance(version, int) or version != FORMAT_VERSION:
                raise FileFormatError(f"{path}: format_version {version!r} is not supported "
                                      f"(this sqref reads version {FORMAT_VERSION})")
            yield f
        except (OSError, KeyError, RuntimeError) as exc:
            # h5py's errors for damaged metadata or data blocks met while reading
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FileFormatError(f"{path}: damaged HDF5 structure: {first}") from None


def int_attr(obj, key: str, where: str, *, allowed=None, lo=None, hi=None) -> int:
    """A scalar integer attribute (not a bool), checked against `allowed` or [lo, hi] when given."""
    value = obj.attrs.get(key)
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, int) or isinstance(value, bool) or (allowed is not None and value not in allowed) \
            or (lo is not None and value < lo) or (hi is not None and value > hi):
        expected = (f"one of {sorted(allowed)}" if allowed is not None
                    else f"an integer in [{lo}, {hi}]" if lo is not None or hi is not None else "an integer")
        raise FileFormatError(f"{where}: attribute {key!r} = {value!r}, expected {expected}")
    return value


def str_attr(obj, key: str, where: str) -> str:
    """A string attribute (bytes are decoded)."""
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


def save(model: Model, path, *, overwrite: bool = False) -> None:
    """Write `model` to `path` (format v1), atomically; quantized layers are
    stored as packed codes. Refuses an existing `path` unless `overwrite`.
    """
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
            q = getattr(layer, "quant", None)
            if layer.kind in ("conv2d", "linear"):
                g.attrs["has_bias"] = int(layer.bias is not None)  # so a deleted bias cannot pass as "no bias"
            if q is None:
                for key, a in layer_arrays(layer).items():
                    write_array(g, key, a)
            else:
                _write_quant(g, q)
                if layer.bias is not None:
                    write_array(g, "bias", layer.bias.astype(np.float16 if q.bias_bits == 16 else np.float32))


def load(path) -> Model:
    """Read a model file (format v1). Every array's checksum is verified and
    every shape checked before the model is returned; quantized layers come
    back with their codes (`layer.quant`) and the dequantized float weight.
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
        count = int_attr(groups, "count", where, lo=1, hi=10_000)
        if set(groups) != {f"{i:04d}" for i in range(count)}:
            raise FileFormatError(f"{where}: layer groups {sorted(groups)[:5]} do not match count {count!r}")
        layers, names = [], []
        for index in range(int(count)):
            g = groups[f"{index:04d}"]
            layer_where = f"{where}: layer {index}"
            layers.append(_read_layer(g, layer_where))
            names.append(str_attr(g, "name", layer_where))
    try:
        model = Model(tuple(layers), tuple(int(v) for v in shape), tuple(names), meta)
        infer_shapes(model)
    except (ValueError, TypeError) as exc:
        raise FileFormatError(f"{where}: {exc}") from None
    return model


def _read_layer(g, where):
    kind = str_attr(g, "type", where)
    if kind not in LAYER_CLASSES:
        raise FileFormatError(f"{where}: unknown layer type {kind!r} (known: {', '.join(LAYER_CLASSES)})")
    cls = LAYER_CLASSES[kind]
    if cls in (Conv2d, Linear):
        q = None
        if "quant" in g:
            q = _read_quant(g, where)
            arrays = {"weight": q.dequantize()}
        else:
            arrays = {"weight": read_array(g, "weight", where, dtypes={"float32", "float64"})}
        has_bias = int_attr(g, "has_bias", where, allowed={0, 1})
        if has_bias != ("bias" in g):
            raise FileFormatError(f"{where}: has_bias is {has_bias} but the bias dataset is {'missing' if has_bias else 'present'}")
        if has_bias:
            arrays["bias"] = read_array(g, "bias", where, dtypes={"float32", "float64", "float16"}).astype(np.float32)
            if q is None and g["bias"].dtype == np.float16:
                raise FileFormatError(f"{where}: a float16 bias is only valid on a quantized layer")
            if q is not None and (g["bias"].dtype == np.float16) != (q.bias_bits == 16):
                raise FileFormatError(f"{where}: bias dtype {g['bias'].dtype} does not match bias_bits {q.bias_bits}")
        weight, bias = arrays["weight"], arrays.get("bias")
        if cls is Linear:
            return Linear(weight, bias, q)
        groups = _int_tuple_attr(g, "groups", where, 1)[0]
        return Conv2d(weight, bias, _int_tuple_attr(g, "stride", where, 2), _int_tuple_attr(g, "padding", where, 2),
                      _int_tuple_attr(g, "dilation", where, 2), groups, q)
    if cls in (MaxPool2d, AvgPool2d):
        return cls(_int_tuple_attr(g, "kernel_size", where, 2), _int_tuple_attr(g, "stride", where, 2),
                   _int_tuple_attr(g, "padding", where, 2))
    return cls()


# --------------------------------------------------------------------------
# quantized weights (docs/format.md, "Quantized layers")
# --------------------------------------------------------------------------
def _write_quant(g, q) -> None:
    qg = g.create_group("quant")
    codes = np.asarray(q.codes)
    write_array(qg, "codes", pack_codes(codes.reshape(-1), q.bits))
    write_array(qg, "scale", np.asarray(q.scale, np.float32))
    write_array(qg, "zero_point", np.asarray(q.zero_point, np.int32))
    write_array(qg, "alpha", np.asarray(q.alpha, np.float64))
    qg.attrs["bits"] = int(q.bits)
    qg.attrs["shape"] = np.asarray(codes.shape, dtype=np.int64)
    qg.attrs["axis"] = -1 if q.axis is None else int(q.axis)
    qg.attrs["bias_bits"] = int(q.bias_bits)
    for key in ("scheme", "rule", "rounding"):
        qg.attrs[key] = getattr(q, key)


def _read_quant(g, where):
    where = f"{where} quant"
    qg = g["quant"]
    if not isinstance(qg, h5py.Group):
        raise FileFormatError(f"{where}: 'quant' is not a group")
    bits = int_attr(qg, "bits", where, lo=2, hi=8)
    bias_bits = int_attr(qg, "bias_bits", where, allowed=set(BIAS_BITS))
    scheme, rule, rounding = (str_attr(qg, key, where) for key in ("scheme", "rule", "rounding"))
    if scheme not in quant.SCHEMES or rule not in clipping.RULES or rounding not in quant.ROUNDINGS:
        raise FileFormatError(f"{where}: unknown scheme {scheme!r}, rule {rule!r} or rounding {rounding!r}")
    shape = np.asarray(qg.attrs.get("shape"))
    if shape.dtype.kind not in "iu" or shape.ndim != 1 or not 1 <= shape.size <= 4 or np.any(shape < 1) \
            or np.prod(shape.astype(np.float64)) > MAX_ARRAY_ELEMENTS:
        raise FileFormatError(f"{where}: shape attribute {shape.tolist()!r} must be 1 to 4 positive sizes")
    shape = tuple(int(v) for v in shape)
    axis = None if int_attr(qg, "axis", where, allowed={-1, 0}) == -1 else 0
    n = int(np.prod(shape))
    packed = read_array(qg, "codes", where, dtypes={"uint8"})
    if packed.shape != (packed_nbytes(n, bits),):
        raise FileFormatError(f"{where}: {packed.shape} packed bytes, expected ({packed_nbytes(n, bits)},) "
                              f"for {n} codes of {bits} bits")
    codes = unpack_codes(packed, bits, n, signed=scheme == "symmetric").reshape(shape)
    expected = () if axis is None else (shape[0],)
    arrays = {}
    for key, dtypes in (("scale", {"float32"}), ("zero_point", {"int32"}), ("alpha", {"float64"})):
        arrays[key] = read_array(qg, key, where, dtypes=dtypes)
        if arrays[key].shape != expected:
            raise FileFormatError(f"{where}: {key} has shape {arrays[key].shape}, expected {expected}")
    if not (np.all(np.isfinite(arrays["scale"])) and np.all(arrays["scale"] > 0)):
        raise FileFormatError(f"{where}: scales must be finite and positive")
    return LayerQuant(codes, arrays["scale"], arrays["zero_point"], bits, axis, scheme, rule, arrays["alpha"],
                      rounding, bias_bits)
