"""Golden files: the integer outputs of every layer, with everything needed to recompute them.

A golden file (HDF5, ``format = "sqref-golden"``, ``format_version = 3``: 2 plus the
tensors each layer reads, for graph models; 2 was 1 plus the manifest; docs/integer.md has
the field table) holds the uint8 input codes of some
images, every layer's uint8 outputs and the dequantized logits under one
requantization mode and accumulation, and the whole IntegerModel: int8
weight codes, float32 weight scales, int32 (and the float) biases, every
activation scale and zero point. ``verify`` recomputes it with a backend
(sqref, onnxruntime, PyTorch, TFLite) and reports, per tensor, an exact
match or the mismatch count, the histogram of differences and the worst
and first indices.

Written with sqref.fileformat (atomic, a sha256 per dataset) and without
timestamps (h5py's default track_times=False), so regenerating a golden
file from the same model, data and options is byte-identical
(tests/test_golden.py hashes two runs).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from sqref import __version__, integer
from sqref.backends.probe import resolve_layer_accumulate
from sqref.hdf5 import FileFormatError, atomic_h5, int_attr, open_h5, read_array, str_attr, write_array
from sqref.integer import requant
from sqref.integer.calibration import ActParams

FORMAT_NAME = "sqref-golden"
READ_VERSIONS = (1, 2, 3)
PER_LAYER = "per-layer"  # the root "accumulate" of a file whose conv/linear layers say their own
# 3 = 2 + each layer's "inputs"; 2 = 1 + the required manifest_sha256 (sqref.hdf5); 1 and 2 are read as chains
FORMAT_VERSION = 3
BACKENDS = ("sqref", "onnxruntime", "torch", "tflite")


@dataclass(frozen=True, eq=False)
class Golden:
    """The content of a golden file.

    imodel      the IntegerModel (its mode is ``mode``)
    inputs      uint8 input codes (N, *input_shape)
    outputs     one uint8 array per layer (imodel.names order)
    logits      float32 (N, classes): the last layer's codes dequantized
    mode, accumulate   how the outputs were computed (run_integer's arguments): accumulate is one
                       value for every layer, or {layer name: value} when the layers differ
    labels      uint8 (N,) or None
    meta        JSON-able provenance: model name and sha256, weight quantization,
                calibration, data, and the command that regenerates the file
    """

    imodel: integer.IntegerModel
    inputs: np.ndarray
    outputs: tuple
    logits: np.ndarray
    mode: str
    accumulate: str | dict
    labels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def make_golden(imodel, x, *, mode=None, accumulate="auto", labels=None, meta=None, progress=None) -> Golden:
    """Run the integer model on x (float images or uint8 codes) and keep everything.

    accumulate  "exact", "int16-pairs", or "auto": what the mode's backend does on this
                machine, probed per kind of kernel (sqref.backends.probe.resolve_layer_accumulate:
                one value when every conv and linear layer agrees, else one per layer); the
                probe's report is kept in ``meta["accumulate_probe"]``.
    progress    None, or a callable given the number of images done (run_integer's).
    """
    mode = integer.check_mode(imodel.mode if mode is None else mode)
    meta = dict(meta or {})
    if accumulate == "auto":
        per_layer, meta["accumulate_probe"] = resolve_layer_accumulate(mode, imodel)
        values = set(per_layer.values())
        accumulate = values.pop() if len(values) == 1 else per_layer if values else "exact"
    inputs = integer.quantize_input(imodel, x, mode=mode)
    logits, outputs = integer.run_integer(imodel, inputs, mode=mode, accumulate=accumulate, return_intermediates=True,
                                          progress=progress)
    imodel = integer.IntegerModel(imodel.layers, imodel.names, imodel.input_shape, imodel.input, mode, imodel.meta,
                                  imodel.wiring)
    return Golden(imodel, inputs, tuple(outputs), logits, mode, accumulate,
                  None if labels is None else np.asarray(labels, np.uint8), meta)


# ----------------------------------------------------------------------------- writing


def _write_act(g, prefix, p: ActParams):
    write_array(g, f"{prefix}_scale", np.float32(p.scale))
    write_array(g, f"{prefix}_zero_point", np.uint8(p.zero_point))
    write_array(g, f"{prefix}_range", np.array([p.lo, p.hi], np.float64))


def write_golden(golden: Golden, path, *, overwrite=False) -> None:
    """Write a golden file (atomically; refuses an existing path unless overwrite)."""
    im = golden.imodel
    with atomic_h5(path, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["sqref_version"] = __version__
        f.attrs["mode"] = golden.mode
        f.attrs["accumulate"] = golden.accumulate if isinstance(golden.accumulate, str) else PER_LAYER
        f.attrs["count"] = int(len(golden.inputs))
        f.attrs["input_shape"] = np.asarray(im.input_shape, np.int64)
        f.attrs["meta"] = json.dumps(golden.meta, sort_keys=True)
        g = f.create_group("input")
        write_array(g, "codes", golden.inputs)
        _write_act(g, "x", im.input)
        write_array(f, "logits", golden.logits)
        if golden.labels is not None:
            write_array(f, "labels", golden.labels)
        layers = f.create_group("layers")
        layers.attrs["count"] = len(im.layers)
        for index, (name, layer, out, reads) in enumerate(zip(im.names, im.layers, golden.outputs, im.wiring)):
            lg = layers.create_group(f"{index:04d}")
            lg.attrs["type"] = layer.kind
            lg.attrs["name"] = name
            lg.attrs["inputs"] = json.dumps(list(reads))
            write_array(lg, "output", out)
            _write_act(lg, "x", layer.x)
            if isinstance(layer, integer.IntAdd):
                _write_act(lg, "b", layer.b)
                _write_act(lg, "y", layer.y)
                lg.attrs["relu"] = int(layer.relu)
            elif isinstance(layer, integer.IntGlobalAvgPool):
                _write_act(lg, "y", layer.y)
                lg.attrs["keepdims"] = int(layer.keepdims)
            elif isinstance(layer, integer.IntPad):
                lg.attrs["pads"] = np.asarray(layer.pads, np.int64)
            elif isinstance(layer, integer.IntClip):
                lg.attrs["fused"] = int(layer.fused)
                lg.attrs["codes"] = np.asarray([layer.q_lo, layer.q_hi], np.int64)
            elif isinstance(layer, (integer.IntConv2d, integer.IntLinear)):
                _write_act(lg, "y", layer.y)
                lg.attrs["relu"] = int(layer.relu)
                lg.attrs["accumulate"] = (golden.accumulate if isinstance(golden.accumulate, str)
                                          else golden.accumulate.get(name, "exact"))
                write_array(lg, "weight", layer.weight)
                write_array(lg, "w_scale", np.asarray(layer.w_scale, np.float32))
                write_array(lg, "bias", layer.bias)
                write_array(lg, "bias_float", layer.bias_float)
                m = requant.effective_multiplier(layer.x.scale, layer.w_scale, layer.y.scale, mode=golden.mode)
                write_array(lg, "multiplier", np.asarray(m, np.float64))  # a record: M as this mode computes it
                if isinstance(layer, integer.IntConv2d):
                    for key in ("stride", "padding", "dilation"):
                        lg.attrs[key] = np.asarray(getattr(layer, key), np.int64)
                    lg.attrs["groups"] = int(layer.groups)
            elif isinstance(layer, (integer.IntMaxPool2d, integer.IntAvgPool2d)):
                for key in ("kernel_size", "stride", "padding"):
                    lg.attrs[key] = np.asarray(getattr(layer, key), np.int64)
            elif isinstance(layer, integer.IntReLU):
                lg.attrs["fused"] = int(layer.fused)


# ----------------------------------------------------------------------------- reading


def _ints(obj, key, where, n):
    v = np.asarray(obj.attrs.get(key))
    if v.dtype.kind not in "iu" or v.shape != (n,) or np.any(v < 0) or np.any(v > 2**20):
        raise FileFormatError(f"{where}: attribute {key!r} must be {n} integers in [0, 2**20], got {v!r}")
    return tuple(int(a) for a in v)


def _read_act(g, prefix, where) -> ActParams:
    scale = read_array(g, f"{prefix}_scale", where, dtypes={"float32"})
    zp = read_array(g, f"{prefix}_zero_point", where, dtypes={"uint8"})
    rng = read_array(g, f"{prefix}_range", where, dtypes={"float64"})
    if scale.shape != () or zp.shape != () or rng.shape != (2,):
        raise FileFormatError(f"{where}: {prefix} parameters must be scalars and a (2,) range")
    try:
        return ActParams(float(scale), int(zp), float(rng[0]), float(rng[1]))
    except ValueError as exc:
        raise FileFormatError(f"{where}: {exc}") from None


def read_golden(path) -> Golden:
    """Read and validate a golden file: checksums, dtypes, and every stored output's
    shape against the shapes the stored model produces."""
    with open_h5(path, FORMAT_NAME, versions=READ_VERSIONS) as f:
        where = os.fspath(path)
        mode, accumulate = str_attr(f, "mode", where), str_attr(f, "accumulate", where)
        try:
            integer.check_mode(mode)
            if accumulate != PER_LAYER:
                integer.check_accumulate(accumulate, mode)
        except ValueError as exc:
            raise FileFormatError(f"{where}: {exc}") from None
        try:
            meta = json.loads(str_attr(f, "meta", where))
        except ValueError:
            raise FileFormatError(f"{where}: attribute 'meta' is not valid JSON") from None
        shape = np.asarray(f.attrs.get("input_shape"))
        if shape.dtype.kind not in "iu" or shape.ndim != 1 or not 1 <= shape.size <= 3 or np.any(shape < 1):
            raise FileFormatError(f"{where}: bad input_shape {shape!r}")
        if "input" not in f or "layers" not in f:
            raise FileFormatError(f"{where}: missing group 'input' or 'layers'")
        inputs = read_array(f["input"], "codes", f"{where}: input", dtypes={"uint8"})
        p_in = _read_act(f["input"], "x", f"{where}: input")
        logits = read_array(f, "logits", where, dtypes={"float32"})
        labels = read_array(f, "labels", where, dtypes={"uint8"}) if "labels" in f else None
        groups = f["layers"]
        count = groups.attrs.get("count")
        if not isinstance(count, (int, np.integer)) or not 0 < count <= 10_000 \
                or set(groups) != {f"{i:04d}" for i in range(count)}:
            raise FileFormatError(f"{where}: layer groups do not match count {count!r}")
        layers, names, outputs, wiring, per_layer = [], [], [], [], {}
        version = int_attr(f, "format_version", where)
        for index in range(int(count)):
            g = groups[f"{index:04d}"]
            lw = f"{where}: layer {index}"
            layers.append(_read_layer(g, lw))
            names.append(str_attr(g, "name", lw))
            outputs.append(read_array(g, "output", lw, dtypes={"uint8"}))
            if version >= 3:
                wiring.append(_read_inputs(g, lw))
            if accumulate == PER_LAYER and "accumulate" in g.attrs:
                per_layer[names[-1]] = str_attr(g, "accumulate", lw)
    if accumulate == PER_LAYER:
        try:
            accumulate = integer.check_accumulate(per_layer, mode)
        except ValueError as exc:
            raise FileFormatError(f"{where}: {exc}") from None
    if len(set(names)) != len(names) or "input" in names:
        raise FileFormatError(f"{where}: layer names must be unique and not 'input'")
    try:
        imodel = integer.IntegerModel(tuple(layers), tuple(names), tuple(int(v) for v in shape), p_in, mode,
                                      wiring=tuple(wiring))
    except ValueError as exc:
        raise FileFormatError(f"{where}: {exc}") from None
    try:
        shapes = integer.output_shapes(imodel)
    except (ValueError, TypeError, IndexError) as exc:
        raise FileFormatError(f"{where}: the stored layers do not fit together: {exc}") from None
    n = inputs.shape[0] if inputs.ndim else -1
    if inputs.shape != (n, *imodel.input_shape):
        raise FileFormatError(f"{where}: input codes have shape {inputs.shape}, expected (N, {imodel.input_shape})")
    for name, out, s in zip(names, outputs, shapes):
        if out.shape != (n, *s):
            raise FileFormatError(f"{where}: layer {name!r} output has shape {out.shape}, expected {(n, *s)}")
    if logits.shape != (n, *shapes[-1]) or (labels is not None and labels.shape != (n,)):
        raise FileFormatError(f"{where}: logits {logits.shape} or labels do not match {n} images")
    return Golden(imodel, inputs, tuple(outputs), logits, mode, accumulate, labels, meta)


def _read_inputs(g, where):
    try:
        reads = json.loads(str_attr(g, "inputs", where))
    except ValueError:
        raise FileFormatError(f"{where}: attribute 'inputs' is not valid JSON") from None
    if not isinstance(reads, list) or not 1 <= len(reads) <= 2 or not all(isinstance(r, str) for r in reads):
        raise FileFormatError(f"{where}: attribute 'inputs' must be a list of 1 or 2 tensor names, got {reads!r}")
    return tuple(reads)


def _read_layer(g, where):
    kind = str_attr(g, "type", where)
    x = _read_act(g, "x", where)
    if kind == "add":
        return integer.IntAdd(x, _read_act(g, "b", where), _read_act(g, "y", where), bool(int_attr(g, "relu", where)))
    if kind == "global_avg_pool":
        return integer.IntGlobalAvgPool(x, _read_act(g, "y", where), bool(int_attr(g, "keepdims", where)))
    if kind == "pad":
        return integer.IntPad(x, _ints(g, "pads", where, 4))
    if kind == "clip":
        q_lo, q_hi = _ints(g, "codes", where, 2)
        if not 0 <= q_lo <= q_hi <= 255:
            raise FileFormatError(f"{where}: clip codes must satisfy 0 <= lo <= hi <= 255, got {(q_lo, q_hi)}")
        return integer.IntClip(x, bool(int_attr(g, "fused", where)), q_lo, q_hi)
    if kind in ("conv2d", "linear"):
        y = _read_act(g, "y", where)
        w = read_array(g, "weight", where, dtypes={"int8"})
        w_scale = read_array(g, "w_scale", where, dtypes={"float32"})
        bias = read_array(g, "bias", where, dtypes={"int32"})
        bias_float = read_array(g, "bias_float", where, dtypes={"float32"})
        k = w.shape[0] if w.ndim else 0
        if w.ndim != (4 if kind == "conv2d" else 2) or w_scale.shape not in ((), (k,)) or bias.shape != (k,) \
                or bias_float.shape != (k,):
            raise FileFormatError(f"{where}: weight {w.shape}, w_scale {w_scale.shape}, bias {bias.shape} do not fit")
        if not (np.all(np.isfinite(w_scale)) and np.all(w_scale > 0)):
            raise FileFormatError(f"{where}: weight scales must be finite and > 0")
        common = dict(weight=w, w_scale=w_scale, bias=bias, bias_float=bias_float, x=x, y=y,
                      relu=bool(int_attr(g, "relu", where)))
        if kind == "linear":
            return integer.IntLinear(**common)
        groups = int_attr(g, "groups", where)
        if groups < 1:
            raise FileFormatError(f"{where}: groups must be >= 1, got {groups}")
        return integer.IntConv2d(**common, stride=_ints(g, "stride", where, 2), padding=_ints(g, "padding", where, 2),
                                 dilation=_ints(g, "dilation", where, 2), groups=groups)
    if kind in ("max_pool2d", "avg_pool2d"):
        cls = integer.IntMaxPool2d if kind == "max_pool2d" else integer.IntAvgPool2d
        ks, st = _ints(g, "kernel_size", where, 2), _ints(g, "stride", where, 2)
        if min(ks) < 1 or min(st) < 1:
            raise FileFormatError(f"{where}: kernel_size {ks} and stride {st} must be >= 1")
        return cls(ks, st, _ints(g, "padding", where, 2), x)
    if kind == "flatten":
        return integer.IntFlatten(x)
    if kind == "relu":
        return integer.IntReLU(x, bool(int_attr(g, "fused", where)))
    raise FileFormatError(f"{where}: unknown layer type {kind!r}")
