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

import dataclasses
import json
import math
import os

import h5py
import numpy as np

from sqref import __version__, clipping, quant
from sqref.hdf5 import (MAX_ARRAY_ELEMENTS, MAX_ATTR_BYTES, FileFormatError, atomic_h5, attr_text, dataset_shape,
                        int_attr, open_h5, read_array, str_attr, verify_file_manifest, write_array)
from sqref.model import (ARRAY_FIELDS, LAYER_TYPES, PARAM_LAYERS, Add, AvgPool2d, BatchNorm, Conv2d, Div, Linear,
                         MaxPool2d, Model, Mul, chain_wiring, layer_arrays, tensor_shapes)
from sqref.packing import pack_codes, packed_nbytes, unpack_codes
from sqref.qmodel import BIAS_BITS, LayerQuant, check_layer_quant

FORMAT_NAME = "sqref-model"
# Version 2 = version 1 + the required root attribute `manifest_sha256`.
# Version 3 = version 2 + graphs: each layer's `inputs`, the root `outputs` and
# `extra_inputs`, the graph layer types, and pooling's dilation, ceil_mode and
# count_include_pad. Readers accept all three; a version-1 file has per-dataset
# checksums only; a version-1 or 2 file is a chain.
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
# hyperparameters a version-1/2 file does not carry, with the value they then have
V3_DEFAULTS = {"dilation": (1, 1), "ceil_mode": False, "count_include_pad": True}

# Working memory of one sample through the float engine (activations, padded
# inputs and im2col buffers of every layer, float32): 512 MiB admits VGG-16 at
# 224x224 (about 250 MiB); refuses e.g. a 1x1 conv padded by 2000 on a wide input.
MAX_SAMPLE_BYTES = 2**29

# --------------------------------------------------------------------------
# what a model must mean (checked at save and at load)
# --------------------------------------------------------------------------
LAYER_CLASSES = {cls.kind: cls for cls in LAYER_TYPES}

# How each hyperparameter is stored: an int64 array of one of the given lengths
# with values in [lo, hi], or ("float", 1) a float64 array of one value.
HYPER_SPEC = {
    "stride": ((2,), 0, 2**20), "dilation": ((2,), 0, 2**20), "kernel_size": ((2,), 0, 2**20),
    "padding": ((2, 4), 0, 2**20), "pads": ((4,), 0, 2**20), "groups": ((1,), 0, 2**20), "axis": ((1,), 1, 3),
    "shape": ((1, 2, 3), 1, 2**31),
    "ceil_mode": ((1,), 0, 1), "count_include_pad": ((1,), 0, 1), "keepdims": ((1,), 0, 1),
    "lo": "float", "hi": "float", "alpha": "float", "beta": "float", "eps": "float",
}


def _hyper_value(key, value):
    """A hyperparameter as the file stores it (checked against HYPER_SPEC)."""
    spec = HYPER_SPEC.get(key)
    if spec is None:
        raise ValueError(f"unknown hyperparameter {key!r}")
    if spec == "float":
        a = np.asarray(value, dtype=np.float64).reshape(-1)
        if a.size != 1 or np.isnan(a[0]):
            raise ValueError(f"{key} {value!r} must be one number (not NaN)")
        return a
    lengths, lo, hi = spec
    a = np.asarray(value).reshape(-1)
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu" or a.size not in lengths or np.any(a < lo) or np.any(a > hi):
        raise ValueError(f"{key} {value!r} must be {' or '.join(map(str, lengths))} integer(s) in [{lo}, {hi}]")
    return a.astype(np.int64)


def sample_bytes(model: Model, shapes=None) -> int:
    """Float32 working memory of one sample through sqref.run: every tensor
    (return_intermediates keeps them all) plus, for the largest conv or pool,
    its padded input and its im2col columns (C/groups*KH*KW, OH*OW).
    `shapes` is tensor_shapes(model) when the caller has it."""
    shapes = tensor_shapes(model) if shapes is None else shapes
    total = sum(math.prod(s) for s in shapes.values())
    work = 0
    for name, layer, reads in zip(model.names, model.layers, model.wiring):
        if isinstance(layer, (Conv2d, MaxPool2d, AvgPool2d)):
            (C, H, W), out = shapes[reads[0]], shapes[name]
            pads = layer.padding if len(layer.padding) == 4 else tuple(layer.padding) * 2
            kh, kw = layer.weight.shape[2:] if isinstance(layer, Conv2d) else layer.kernel_size
            cols = (C // layer.groups if isinstance(layer, Conv2d) else 1) * kh * kw * out[1] * out[2]
            work = max(work, C * (H + pads[0] + pads[2]) * (W + pads[1] + pads[3]) + cols)
    return 4 * (total + work)


def check_model(model: Model, where: str, *, values: bool = True) -> list:
    """Everything sqref requires of a model, at save and at load (so sqref never
    writes a file it cannot read): unique names, wiring that reads only inputs
    and earlier layers (sqref.model.check_wiring), hyperparameters the file can
    store (HYPER_SPEC), shapes that fit (tensor_shapes; pooling as ONNX allows
    it: padding smaller than the window, every window on some input), conv
    padding at most dilation*(KH-1) (beyond that, rows of pure bias), at most
    MAX_SAMPLE_BYTES of working memory per sample, and with `values`: finite
    arrays and a valid quantization record.
    Returns the layers' output shapes; raises FileFormatError naming the layer."""
    try:
        if len(model.layers) != len(model.names) or len(set(model.names)) != len(model.names) \
                or not all(isinstance(n, str) and n for n in model.names):
            raise ValueError(f"layer names must be unique non-empty strings, got {list(model.names)[:10]}")
        if len(model.layers) > 10_000 or not model.layers:
            raise ValueError(f"a model has 1 to 10000 layers, got {len(model.layers)}")
        for name, shape_in in model.input_shapes.items():
            if not isinstance(name, str) or not name or not 1 <= len(shape_in) <= 3 \
                    or any(not 1 <= d <= 2**16 for d in shape_in):
                raise ValueError(f"input_shape {shape_in} of input {name!r} must be 1 to 3 integers in [1, 2**16]")
        if len(model.extra_inputs) > 16:
            raise ValueError(f"a model has at most 17 inputs, got {len(model.input_names)}")
        for name, layer, reads in zip(model.names, model.layers, model.wiring):
            lw = f"layer {name!r} ({layer.kind})"
            if type(layer) not in LAYER_TYPES:
                raise ValueError(f"{lw}: unknown layer type {type(layer).__name__}")
            for key, value in layer.hyper().items():
                try:
                    _hyper_value(key, value)
                except ValueError as exc:
                    raise ValueError(f"{lw}: {exc}") from None
        shapes = tensor_shapes(model)
        for name, layer in zip(model.names, model.layers):
            lw = f"layer {name!r} ({layer.kind})"
            if isinstance(layer, Conv2d):
                kh, kw = layer.weight.shape[2:]
                for axis, k in ((0, kh), (1, kw)):
                    if layer.padding[axis] > layer.dilation[axis] * (k - 1):
                        raise ValueError(f"{lw}: padding {layer.padding} exceeds dilation*(kernel-1) for kernel "
                                         f"{kh}x{kw}, dilation {layer.dilation}: the extra rows would hold only the bias")
            if not values:
                continue
            for key, a in layer_arrays(layer).items():
                if a.dtype.kind != "f":
                    raise ValueError(f"{lw}: {key} has dtype {a.dtype}, expected float")
                if not np.all(np.isfinite(a)):
                    raise ValueError(f"{lw}: {key} has {a.dtype} values that are not all finite (NaN or Inf)")
            if isinstance(layer, BatchNorm) and np.any(layer.var < 0):
                raise ValueError(f"{lw}: var has negative values")
            if getattr(layer, "quant", None) is not None:
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
    return [shapes[name] for name in model.names]


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
def _json(value, what, path) -> str:
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"{os.fspath(path)}: refusing to save: {what} is not plain JSON: {exc}") from None
    if len(text.encode()) > MAX_ATTR_BYTES:
        raise FileFormatError(f"{os.fspath(path)}: refusing to save: {what} is larger than {MAX_ATTR_BYTES} bytes")
    return text


def save(model: Model, path, *, overwrite: bool = False) -> None:
    """Write `model` to `path` (format v3), atomically; quantized layers are
    stored as packed codes. Refuses an existing `path` unless `overwrite`, and
    any model `load` would refuse (check_model): never a file sqref cannot read.
    """
    check_model(model, f"{os.fspath(path)}: refusing to save")
    meta = _json(model.meta, "meta", path)
    with atomic_h5(path, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["sqref_version"] = __version__
        f.attrs["input_shape"] = np.asarray(model.input_shape, dtype=np.int64)
        f.attrs["extra_inputs"] = _json([[n, list(s)] for n, s in model.extra_inputs], "extra_inputs", path)
        f.attrs["outputs"] = _json(list(model.outputs), "outputs", path)
        f.attrs["meta"] = meta
        layers = f.create_group("layers")
        layers.attrs["count"] = len(model.layers)
        for index, (name, layer, reads) in enumerate(zip(model.names, model.layers, model.wiring)):
            g = layers.create_group(f"{index:04d}")
            g.attrs["type"] = layer.kind
            g.attrs["name"] = name
            g.attrs["inputs"] = _json(list(reads), f"layer {name!r} inputs", path)
            for key, value in layer.hyper().items():
                g.attrs[key] = _hyper_value(key, value)
            q = getattr(layer, "quant", None)
            for key in _OPTIONAL_ARRAYS.get(type(layer), ()):
                g.attrs[f"has_{key}"] = int(getattr(layer, key) is not None)  # a deleted array cannot pass as none
            if q is None:
                for key, a in layer_arrays(layer).items():
                    write_array(g, key, a)
            else:
                _write_quant(g, q)
                if layer.bias is not None:
                    write_array(g, "bias", layer.bias.astype(np.float16 if q.bias_bits == 16 else np.float32))


def _json_attr(obj, key, where):
    try:
        return json.loads(attr_text(obj.attrs.get(key)))
    except (TypeError, ValueError, RecursionError):
        raise FileFormatError(f"{where}: attribute {key!r} is missing or not valid JSON") from None


def _string_list(value, what, where, *, lo=0, hi=1024):
    if not isinstance(value, list) or not lo <= len(value) <= hi or not all(isinstance(v, str) and v for v in value):
        raise FileFormatError(f"{where}: {what} must be a list of {lo} to {hi} non-empty names, got {str(value)[:200]}")
    return tuple(value)


def _read_graph(f, where, version, count, groups):
    """(wiring, outputs, extra_inputs) of a version-3 file; a chain's for older ones."""
    names = [str_attr(groups[f"{i:04d}"], "name", f"{where}: layer {i}") for i in range(count)]
    if version < 3:
        return tuple(names), chain_wiring(names), (names[-1],), ()
    wiring = tuple(_string_list(_json_attr(groups[f"{i:04d}"], "inputs", f"{where}: layer {i}"), "inputs",
                                f"{where}: layer {i}", lo=1) for i in range(count))
    outputs = _string_list(_json_attr(f, "outputs", where), "outputs", where, lo=1)
    extra = _json_attr(f, "extra_inputs", where)
    if not isinstance(extra, list) or len(extra) > 16 or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and e[0] and isinstance(e[1], list)
            and 1 <= len(e[1]) <= 3 and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 2**16
                                            for d in e[1]) for e in extra):
        raise FileFormatError(f"{where}: extra_inputs must be up to 16 [name, shape] pairs, got {str(extra)[:200]}")
    return tuple(names), wiring, outputs, tuple((n, tuple(s)) for n, s in extra)


def load(path, *, sha256: str | None = None) -> Model:
    """Read a model file (format v1, v2 or v3), in three passes: the structure
    and every declared shape, with the model they imply checked (check_model
    without values) before any array is read; then the manifest (v2 and v3);
    then the arrays, each with its checksum, and check_model with values.
    Quantized layers come back with their codes (`layer.quant`) and the
    dequantized float weight.

    sha256  the expected SHA-256 of the file's bytes (what `sha256sum` prints);
            the bytes are read once, hashed, and parsed from memory.
    """
    where = os.fspath(path)
    with open_h5(path, FORMAT_NAME, sha256=sha256, versions=READ_VERSIONS, verify_manifest=False) as f:
        version = int(f.attrs["format_version"])
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
        names, wiring, outputs, extra = _read_graph(f, where, version, count, groups)
        if len(set(names)) != len(names):
            raise FileFormatError(f"{where}: layer names must be unique, got {names}")

        def build(layers):
            try:
                return Model(tuple(layers), shape, names, meta, wiring, outputs, extra)
            except (ValueError, TypeError) as exc:
                raise FileFormatError(f"{where}: {exc}") from None

        # pass 1: declared shapes only (zero-copy stand-ins), before any array is read
        skeleton = [_read_layer(groups[f"{i:04d}"], f"{where}: layer {i}", version, phantom=True) for i in range(count)]
        check_model(build(skeleton), where, values=False)
        verify_file_manifest(f, where)
        layers = [_read_layer(groups[f"{i:04d}"], f"{where}: layer {i}", version) for i in range(count)]
    model = build(layers)
    check_model(model, where)
    return model


def _phantom(g, name, where, *, dtypes):
    """A read-only zero-copy stand-in with the dataset's declared shape and dtype."""
    shape = dataset_shape(g, name, where, dtypes=dtypes)
    return np.broadcast_to(np.zeros((), g[name].dtype), shape)


# arrays a layer may lack (has_<key> says whether the file holds it)
_OPTIONAL_ARRAYS = {Conv2d: ("bias",), Linear: ("bias",), Add: ("const",), Mul: ("const",), Div: ("const",)}


def _read_hyper(g, key, where, version, default, cls):
    if key not in g.attrs and version < 3 and cls in (MaxPool2d, AvgPool2d) and key in V3_DEFAULTS:
        return V3_DEFAULTS[key]
    spec = HYPER_SPEC[key]
    try:
        a = _hyper_value(key, g.attrs.get(key))
    except (ValueError, TypeError):
        raise FileFormatError(f"{where}: attribute {key!r} = {g.attrs.get(key)!r} is not a valid {key}") from None
    if spec == "float":
        return float(a[0])
    if isinstance(default, bool):
        return bool(a[0])
    values = tuple(int(v) for v in a)
    return values[0] if isinstance(default, int) else values


def _read_layer(g, where, version, *, phantom=False):
    read = _phantom if phantom else read_array
    kind = str_attr(g, "type", where)
    if kind not in LAYER_CLASSES:
        raise FileFormatError(f"{where}: unknown layer type {kind!r} (known: {', '.join(LAYER_CLASSES)})")
    cls = LAYER_CLASSES[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key in fields:
        if key == "quant" or key in ARRAY_FIELDS.get(cls, ()):
            continue
        default = fields[key].default
        if default is dataclasses.MISSING:  # the required fields are tuples (kernel_size, stride, shape)
            default = ()
        kwargs[key] = _read_hyper(g, key, where, version, default, cls)
    if version < 3 and "inputs" in g.attrs:
        raise FileFormatError(f"{where}: attribute 'inputs' belongs to format version 3")
    if cls in PARAM_LAYERS and g.get("quant", getlink=True) is not None:
        q, weight = _read_quant(g, where, phantom=phantom)
        kwargs.update(weight=weight, quant=q)
    for key in ARRAY_FIELDS.get(cls, ()):
        if key in kwargs:
            continue
        if key in _OPTIONAL_ARRAYS.get(cls, ()):
            present = int_attr(g, f"has_{key}", where, allowed={0, 1})
            if present != (g.get(key, getlink=True) is not None):
                raise FileFormatError(f"{where}: has_{key} is {present} but the {key} dataset is "
                                      f"{'missing' if present else 'present'}")
            if not present:
                kwargs[key] = None
                continue
        kwargs[key] = read(g, key, where, dtypes={"float32", "float64"} | ({"float16"} if key == "bias" else set()))
    bias = kwargs.get("bias")
    if bias is not None:
        q = kwargs.get("quant")
        bias_dtype = g["bias"].dtype
        if q is None and not phantom and bias_dtype == np.float16:
            raise FileFormatError(f"{where}: a float16 bias is only valid on a quantized layer")
        if q is not None and (bias_dtype == np.float16) != (q.bias_bits == 16):
            raise FileFormatError(f"{where}: bias dtype {bias_dtype} does not match bias_bits {q.bias_bits}")
    if not phantom:
        kwargs = {k: (v.astype(np.float32) if k in ARRAY_FIELDS.get(cls, ()) and k != "weight" and v is not None else v)
                  for k, v in kwargs.items()}
    return cls(**kwargs)


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
