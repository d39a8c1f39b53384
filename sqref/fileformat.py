"""The sqref model file (HDF5; specified in docs/format.md): save, load, and what a model must mean.

Self-describing (layer types, hyperparameters, shapes, dtypes), versioned, no
pickle (only numeric datasets and string/int/float attributes), read and written
through sqref.hdf5 (structure checks, manifest, per-array checksums, atomic
writes). Loading checks the model the declared shapes imply (``check_model``:
shapes, padding, working memory per sample) before reading its arrays, then the
values (no NaN/Inf, valid quantization records); saving runs the same checks
first, so sqref never writes a model it would refuse to read.
"""
from __future__ import annotations

import json
import math
import os

import h5py
import numpy as np

from sqref import __version__, clipping, quant
from sqref.hdf5 import (MAX_ARRAY_ELEMENTS, MAX_ATTR_BYTES, FileFormatError, atomic_h5, attr_text, dataset_shape,
                        int_attr, open_h5, read_array, str_attr, verify_file_manifest, write_array)
from sqref.model import (AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Model, ReLU,
                         infer_shapes, layer_arrays)
from sqref.packing import pack_codes, packed_nbytes, unpack_codes
from sqref.qmodel import BIAS_BITS, LayerQuant, check_layer_quant

FORMAT_NAME = "sqref-model"
# Version 2 = version 1 + the required root attribute `manifest_sha256`.
# Readers accept both; a version-1 file has per-dataset checksums only.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)

# Working memory of one sample through the float engine (activations, padded
# inputs and im2col buffers of every layer, float32): 512 MiB admits VGG-16 at
# 224x224 (about 250 MiB); refuses e.g. a 1x1 conv padded by 2000 on a wide input.
MAX_SAMPLE_BYTES = 2**29

def _int_tuple_attr(obj, key: str, where: str, length: int) -> tuple[int, ...]:
    value = obj.attrs.get(key)
    a = np.asarray(value) if value is not None else None
    if a is None or a.dtype.kind not in "iu" or a.shape != (length,):
        raise FileFormatError(f"{where}: attribute {key!r} must be {length} integers, got {value!r}")
    if np.any(a < 0) or np.any(a > 2**20):
        raise FileFormatError(f"{where}: attribute {key!r} = {a.tolist()} is out of range [0, 2**20]")
    return tuple(int(v) for v in a)


# --------------------------------------------------------------------------
# what a model must mean (checked at save and at load)
# --------------------------------------------------------------------------
LAYER_CLASSES = {cls.kind: cls for cls in (Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten)}


def sample_bytes(model: Model, shapes=None) -> int:
    """Float32 working memory of one sample through sqref.run: every layer's
    output (return_intermediates keeps them all) plus, for the largest conv or
    pool, its padded input and its im2col columns (C/groups*KH*KW, OH*OW)."""
    shapes = infer_shapes(model) if shapes is None else shapes
    total = math.prod(model.input_shape) + sum(math.prod(s) for s in shapes)
    work, shape = 0, tuple(model.input_shape)
    for layer, out in zip(model.layers, shapes):
        if isinstance(layer, (Conv2d, MaxPool2d, AvgPool2d)) and len(shape) == 3:
            C, H, W = shape
            ph, pw = layer.padding
            kh, kw = layer.weight.shape[2:] if isinstance(layer, Conv2d) else layer.kernel_size
            cols = (C // layer.groups if isinstance(layer, Conv2d) else 1) * kh * kw * out[1] * out[2]
            work = max(work, C * (H + 2 * ph) * (W + 2 * pw) + cols)
        shape = out
    return 4 * (total + work)


def check_model(model: Model, where: str, *, values: bool = True) -> list:
    """Everything sqref requires of a model, at save and at load (so sqref never
    writes a file it cannot read): unique names, shapes that fit (infer_shapes),
    conv padding at most dilation*(KH-1) (beyond that, rows of pure bias),
    pooling kernel and stride >= 1 and padding at most kernel//2 (PyTorch's
    rule), at most MAX_SAMPLE_BYTES of working memory per sample, and with
    `values`: finite weights and biases and a valid quantization record.
    Returns the output shapes; raises FileFormatError naming the layer."""
    try:
        if len(model.layers) != len(model.names) or len(set(model.names)) != len(model.names) \
                or not all(isinstance(n, str) and n for n in model.names):
            raise ValueError(f"layer names must be unique non-empty strings, got {list(model.names)[:10]}")
        if len(model.layers) > 10_000 or not model.layers:
            raise ValueError(f"a model has 1 to 10000 layers, got {len(model.layers)}")
        shape_in = tuple(model.input_shape)
        if not 1 <= len(shape_in) <= 3 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer))
                                              or not 1 <= d <= 2**16 for d in shape_in):
            raise ValueError(f"input_shape {shape_in} must be 1 to 3 integers in [1, 2**16]")
        for name, layer in zip(model.names, model.layers):
            lw = f"layer {name!r} ({layer.kind})"
            for key, value in layer.hyper().items():  # what the file stores: int64 arrays, length 1 or 2
                a = np.asarray(value)
                length = 1 if key == "groups" else 2
                if a.dtype.kind not in "iu" or a.size != length or np.any(a < 0) or np.any(a > 2**20):
                    raise ValueError(f"{lw}: {key} {value!r} must be {length} integer(s) in [0, 2**20]")
        shapes = infer_shapes(model)
        for name, layer in zip(model.names, model.layers):
            lw = f"layer {name!r} ({layer.kind})"
            if isinstance(layer, Conv2d):
                kh, kw = layer.weight.shape[2:]
                for axis, k in ((0, kh), (1, kw)):
                    if layer.padding[axis] > layer.dilation[axis] * (k - 1):
                        raise ValueError(f"{lw}: padding {layer.padding} exceeds dilation*(kernel-1) for kernel "
                                         f"{kh}x{kw}, dilation {layer.dilation}: the extra rows would hold only the bias")
            if isinstance(layer, (MaxPool2d, AvgPool2d)):
                if min(layer.kernel_size) < 1 or min(layer.stride) < 1 \
                        or any(p > k // 2 for p, k in zip(layer.padding, layer.kernel_size)):
                    raise ValueError(f"{lw}: kernel_size {layer.kernel_size} and stride {layer.stride} must be >= 1 "
                                     f"and padding {layer.padding} at most half the kernel")
            if values and isinstance(layer, (Conv2d, Linear)):
                for key in ("weight", "bias"):
                    a = getattr(layer, key)
                    if a is not None and (a.dtype.kind != "f" or not np.all(np.isfinite(a))):
                        raise ValueError(f"{lw}: {key} has {a.dtype} values that are not all finite (NaN or Inf)"
                                         if a.dtype.kind == "f" else f"{lw}: {key} has dtype {a.dtype}, expected float")
                if layer.quant is not None:
                    check_layer_quant(layer.quant, lw)
                    if tuple(np.shape(layer.quant.codes)) != tuple(layer.weight.shape):
                        raise ValueError(f"{lw}: codes {np.shape(layer.quant.codes)} do not match weight {layer.weight.shape}")
        need = sample_bytes(model, shapes)
        if need > MAX_SAMPLE_BYTES:
            raise ValueError(f"running one sample needs {need} bytes of activations, more than {MAX_SAMPLE_BYTES}")
    except FileFormatError:
        raise
    except (ValueError, TypeError, IndexError) as exc:
        raise FileFormatError(f"{where}: {exc}") from None
    return shapes


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
def save(model: Model, path, *, overwrite: bool = False) -> None:
    """Write `model` to `path` (format v2), atomically; quantized layers are
    stored as packed codes. Refuses an existing `path` unless `overwrite`, and
    any model `load` would refuse (check_model): never a file sqref cannot read.
    """
    check_model(model, f"{os.fspath(path)}: refusing to save")
    try:
        meta = json.dumps(model.meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{os.fspath(path)}: refusing to save: meta is not plain JSON: {exc}") from None
    if len(meta.encode()) > MAX_ATTR_BYTES:
        raise FileFormatError(f"{os.fspath(path)}: refusing to save: meta is larger than {MAX_ATTR_BYTES} bytes")
    with atomic_h5(path, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["sqref_version"] = __version__
        f.attrs["input_shape"] = np.asarray(model.input_shape, dtype=np.int64)
        f.attrs["meta"] = meta
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


def load(path, *, sha256: str | None = None) -> Model:
    """Read a model file (format v1 or v2), in three passes: the structure and
    every declared shape, with the model they imply checked (check_model without
    values) before any array is read; then the manifest (v2); then the arrays,
    each with its checksum, and check_model with values. Quantized layers come
    back with their codes (`layer.quant`) and the dequantized float weight.

    sha256  the expected SHA-256 of the file's bytes (what `sha256sum` prints);
            the bytes are read once, hashed, and parsed from memory.
    """
    where = os.fspath(path)
    with open_h5(path, FORMAT_NAME, sha256=sha256, verify_manifest=False) as f:
        shape = np.asarray(f.attrs.get("input_shape"))
        if shape.dtype.kind not in "iu" or shape.ndim != 1 or not 1 <= shape.size <= 3 or np.any(shape < 1) or np.any(shape > 2**16):
            raise FileFormatError(f"{where}: input_shape attribute {shape.tolist()!r} must be 1 to 3 positive integers")
        shape = tuple(int(v) for v in shape)
        meta_text = attr_text(f.attrs.get("meta", "{}"))
        try:
            meta = json.loads(meta_text)
        except (TypeError, ValueError, RecursionError):
            raise FileFormatError(f"{where}: attribute 'meta' is not valid JSON") from None
        if not isinstance(meta, dict):
            raise FileFormatError(f"{where}: attribute 'meta' must be a JSON object")
        if not isinstance(f.get("layers"), h5py.Group):
            raise FileFormatError(f"{where}: missing group 'layers'")
        groups = f["layers"]
        count = int_attr(groups, "count", where, lo=1, hi=10_000)
        if set(groups) != {f"{i:04d}" for i in range(count)}:
            raise FileFormatError(f"{where}: layer groups {sorted(groups)[:5]} do not match count {count!r}")
        names = [str_attr(groups[f"{i:04d}"], "name", f"{where}: layer {i}") for i in range(count)]
        if len(set(names)) != len(names):
            raise FileFormatError(f"{where}: layer names must be unique, got {names}")
        # pass 1: declared shapes only (zero-copy stand-ins), before any array is read
        skeleton = [_read_layer(groups[f"{i:04d}"], f"{where}: layer {i}", phantom=True) for i in range(count)]
        check_model(Model(tuple(skeleton), shape, tuple(names), meta), where, values=False)
        verify_file_manifest(f, where)
        layers = [_read_layer(groups[f"{i:04d}"], f"{where}: layer {i}") for i in range(count)]
    model = Model(tuple(layers), shape, tuple(names), meta)
    check_model(model, where)
    return model


def _phantom(g, name, where, *, dtypes):
    """A read-only zero-copy stand-in with the dataset's declared shape and dtype."""
    shape = dataset_shape(g, name, where, dtypes=dtypes)
    return np.broadcast_to(np.zeros((), g[name].dtype), shape)


def _read_layer(g, where, *, phantom=False):
    read = _phantom if phantom else read_array
    kind = str_attr(g, "type", where)
    if kind not in LAYER_CLASSES:
        raise FileFormatError(f"{where}: unknown layer type {kind!r} (known: {', '.join(LAYER_CLASSES)})")
    cls = LAYER_CLASSES[kind]
    if cls in (Conv2d, Linear):
        q = None
        if g.get("quant", getlink=True) is not None:
            q, weight = _read_quant(g, where, phantom=phantom)
        else:
            weight = read(g, "weight", where, dtypes={"float32", "float64"})
        has_bias = int_attr(g, "has_bias", where, allowed={0, 1})
        if has_bias != (g.get("bias", getlink=True) is not None):
            raise FileFormatError(f"{where}: has_bias is {has_bias} but the bias dataset is {'missing' if has_bias else 'present'}")
        bias = None
        if has_bias:
            bias_dtype = g["bias"].dtype if isinstance(g["bias"], h5py.Dataset) else None
            bias = read(g, "bias", where, dtypes={"float32", "float64", "float16"})
            if q is None and not phantom and bias_dtype == np.float16 and g.get("quant", getlink=True) is None:
                raise FileFormatError(f"{where}: a float16 bias is only valid on a quantized layer")
            if q is not None and (bias_dtype == np.float16) != (q.bias_bits == 16):
                raise FileFormatError(f"{where}: bias dtype {bias_dtype} does not match bias_bits {q.bias_bits}")
            bias = bias if phantom else bias.astype(np.float32)
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


def _read_quant(g, where, *, phantom=False):
    """(LayerQuant, dequantized float32 weight); with `phantom`, (a stand-in
    record, a zero-copy float32 stand-in of the weight's shape), nothing read."""
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
    n = math.prod(shape)
    packed_shape = dataset_shape(qg, "codes", where, dtypes={"uint8"})
    if packed_shape != (packed_nbytes(n, bits),):
        raise FileFormatError(f"{where}: {packed_shape} packed bytes, expected ({packed_nbytes(n, bits)},) "
                              f"for {n} codes of {bits} bits")
    expected = () if axis is None else (shape[0],)
    for key, dtypes in (("scale", {"float32"}), ("zero_point", {"int32"}), ("alpha", {"float64"})):
        if dataset_shape(qg, key, where, dtypes=dtypes) != expected:
            raise FileFormatError(f"{where}: {key} has shape {qg[key].shape}, expected {expected}")
    if phantom:
        stand_in = LayerQuant(np.broadcast_to(np.zeros((), np.int8), shape), None, None, bits, axis, scheme, rule,
                              None, rounding, bias_bits)
        return stand_in, np.broadcast_to(np.zeros((), np.float32), shape)
    packed = read_array(qg, "codes", where, dtypes={"uint8"})
    codes = unpack_codes(packed, bits, n, signed=scheme == "symmetric").reshape(shape)
    del packed
    arrays = {key: read_array(qg, key, where, dtypes=dtypes, shape=expected)
              for key, dtypes in (("scale", {"float32"}), ("zero_point", {"int32"}), ("alpha", {"float64"}))}
    q = LayerQuant(codes, arrays["scale"], arrays["zero_point"], bits, axis, scheme, rule, arrays["alpha"],
                   rounding, bias_bits)
    try:
        check_layer_quant(q, where)
    except ValueError as exc:
        raise FileFormatError(str(exc)) from None
    return q, q.dequantize()
