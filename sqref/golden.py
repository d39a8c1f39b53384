"""Golden files: the integer outputs of every layer, with everything needed to recompute them.

A golden file (HDF5, ``format = "sqref-golden"``, ``format_version = 1``;
docs/integer.md has the field table) holds the uint8 input codes of some
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

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sqref import integer, requant
from sqref.fileformat import FileFormatError, atomic_h5, int_attr, open_h5, read_array, str_attr, write_array
from sqref.integer import ActParams

FORMAT_NAME = "sqref-golden"
FORMAT_VERSION = 1
BACKENDS = ("sqref", "onnxruntime", "torch", "tflite")


@dataclass(frozen=True, eq=False)
class Golden:
    """The content of a golden file.

    imodel      the IntegerModel (its mode is ``mode``)
    inputs      uint8 input codes (N, *input_shape)
    outputs     one uint8 array per layer (imodel.names order)
    logits      float32 (N, classes): the last layer's codes dequantized
    mode, accumulate   how the outputs were computed (run_integer's arguments)
    labels      uint8 (N,) or None
    meta        JSON-able provenance: model name and sha256, weight quantization,
                calibration, data, and the command that regenerates the file
    """

    imodel: integer.IntegerModel
    inputs: np.ndarray
    outputs: tuple
    logits: np.ndarray
    mode: str
    accumulate: str
    labels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def make_golden(imodel, x, *, mode=None, accumulate="exact", labels=None, meta=None) -> Golden:
    """Run the integer model on x (float images or uint8 codes) and keep everything."""
    mode = integer.check_mode(imodel.mode if mode is None else mode)
    inputs = integer.quantize_input(imodel, x, mode=mode)
    logits, outputs = integer.run_integer(imodel, inputs, mode=mode, accumulate=accumulate, return_intermediates=True)
    imodel = integer.IntegerModel(imodel.layers, imodel.names, imodel.input_shape, imodel.input, mode, imodel.meta)
    return Golden(imodel, inputs, tuple(outputs), logits, mode, accumulate,
                  None if labels is None else np.asarray(labels, np.uint8), dict(meta or {}))


# ----------------------------------------------------------------------------- preparing a model


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(model_path, *, data=None, rule="max", mode="onnxruntime"):
    """Load a model file and make its IntegerModel; returns (imodel, provenance dict).

    A model with float weights is first quantized as the paper's default:
    ``quantize_model(bits=8, rule="dynamic", per tensor, symmetric)``; an already
    quantized file is used as it is. Activations are calibrated with ``rule``
    on the TRAIN split of the data file.
    """
    import sqref
    from sqref.data import load_split
    from sqref.model import PARAM_LAYERS
    from sqref.qmodel import quantize_model

    model = sqref.load(model_path)
    quantized = [getattr(layer, "quant", None) is not None for layer in model.layers if isinstance(layer, PARAM_LAYERS)]
    if any(quantized) and not all(quantized):
        raise ValueError(f"{model_path}: some conv/linear layers are quantized and some are not")
    if all(quantized) and quantized:
        qmodel, weights = model, "as stored in the model file"
    else:
        qmodel = quantize_model(model, bits=8, rule="dynamic", per_channel=False)
        weights = "float model quantized by sqref: 8 bits, dynamic boundary, per tensor, symmetric"
    x_train = load_split(data, "train")[0]
    cal = integer.calibrate(qmodel, x_train, rule=rule)
    imodel = integer.build_integer_model(qmodel, cal, mode=mode)
    info = {"model": os.path.basename(os.fspath(model_path)), "model_sha256": file_sha256(model_path),
            "weights": weights, "calibration": {"rule": rule, "split": "train", "images": cal.images}}
    return imodel, info


# ----------------------------------------------------------------------------- writing


def _write_act(g, prefix, p: ActParams):
    write_array(g, f"{prefix}_scale", np.float32(p.scale))
    write_array(g, f"{prefix}_zero_point", np.uint8(p.zero_point))
    write_array(g, f"{prefix}_range", np.array([p.lo, p.hi], np.float64))


def write_golden(golden: Golden, path, *, overwrite=False) -> None:
    """Write a golden file (atomically; refuses an existing path unless overwrite)."""
    from sqref import __version__

    im = golden.imodel
    with atomic_h5(path, overwrite=overwrite) as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["sqref_version"] = __version__
        f.attrs["mode"] = golden.mode
        f.attrs["accumulate"] = golden.accumulate
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
        for index, (name, layer, out) in enumerate(zip(im.names, im.layers, golden.outputs)):
            lg = layers.create_group(f"{index:04d}")
            lg.attrs["type"] = layer.kind
            lg.attrs["name"] = name
            write_array(lg, "output", out)
            _write_act(lg, "x", layer.x)
            if isinstance(layer, (integer.IntConv2d, integer.IntLinear)):
                _write_act(lg, "y", layer.y)
                lg.attrs["relu"] = int(layer.relu)
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
    with open_h5(path, FORMAT_NAME) as f:
        where = os.fspath(path)
        mode, accumulate = str_attr(f, "mode", where), str_attr(f, "accumulate", where)
        try:
            integer.check_mode(mode)
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
        layers, names, outputs = [], [], []
        for index in range(int(count)):
            g = groups[f"{index:04d}"]
            lw = f"{where}: layer {index}"
            layers.append(_read_layer(g, lw))
            names.append(str_attr(g, "name", lw))
            outputs.append(read_array(g, "output", lw, dtypes={"uint8"}))
    imodel = integer.IntegerModel(tuple(layers), tuple(names), tuple(int(v) for v in shape), p_in, mode)
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


def _read_layer(g, where):
    kind = str_attr(g, "type", where)
    x = _read_act(g, "x", where)
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


# ----------------------------------------------------------------------------- verifying


def compare(name, actual, desired, *, max_listed=5) -> dict:
    """One tensor's comparison: exact, or the mismatch count, histogram and worst/first indices.

    ``message`` is sqref.testing.assert_bit_exact's text for a mismatch (None when exact).
    """
    from sqref.testing import assert_bit_exact

    row = {"name": name, "shape": list(np.shape(desired)), "total": int(np.size(desired))}
    a, d = np.asarray(actual), np.asarray(desired)
    if a.shape != d.shape or a.dtype != d.dtype:
        return {**row, "match": False, "mismatches": row["total"], "histogram": {}, "worst": None, "first": [],
                "message": f"{name}: backend gave shape {a.shape} {a.dtype}, golden has {d.shape} {d.dtype}"}
    try:
        assert_bit_exact(a, d, err_msg=name, max_listed=max_listed)
        return {**row, "match": True, "mismatches": 0, "histogram": {}, "worst": None, "first": [], "message": None}
    except AssertionError as exc:
        message = str(exc)
    same = a.view(np.uint32) == d.view(np.uint32) if a.dtype == np.float32 else a == d
    bad = np.argwhere(~same)
    diff = a[~same].astype(np.float64) - d[~same].astype(np.float64)
    hist = Counter(int(v) if float(v).is_integer() else float(v) for v in diff)
    w = int(np.nanargmax(np.abs(diff))) if np.any(~np.isnan(diff)) else 0
    entry = lambda i: {"index": [int(v) for v in bad[i]], "actual": a[tuple(bad[i])].item(),  # noqa: E731
                       "desired": d[tuple(bad[i])].item()}
    return {**row, "match": False, "mismatches": int(len(bad)),
            "histogram": {str(k): c for k, c in sorted(hist.items(), key=lambda kv: (-kv[1], abs(kv[0])))},
            "worst": entry(w), "first": [entry(i) for i in range(min(max_listed, len(bad)))], "message": message}


def run_backend(golden: Golden, backend):
    """Recompute the golden tensors with a backend: {"input": codes, layer name: codes, "logits": float32}."""
    im = golden.imodel
    if backend == "sqref":
        logits, outs = integer.run_integer(im, golden.inputs, mode=golden.mode, accumulate=golden.accumulate,
                                           return_intermediates=True)
        return {"input": golden.inputs, **dict(zip(im.names, outs)), "logits": logits}
    if backend == "onnxruntime":
        from sqref import onnx_io

        p = im.input
        x = requant.dequantize_linear(golden.inputs, p.scale, p.zero_point)  # fed to the graph's QuantizeLinear
        logits, outs = onnx_io.run_onnxruntime(im, x)
        return {"input": outs.pop("input_q"), **outs, "logits": logits}
    if backend == "torch":
        return _run_torch(im, golden.inputs)
    if backend == "tflite":
        from sqref import tflite_io

        return tflite_io.run_tflite_model(im, golden.inputs)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def verify(golden: Golden, backend="sqref") -> dict:
    """Recompute ``golden`` with ``backend`` and compare every tensor exactly.

    Returns {"backend", "mode", "accumulate", "match": bool, "tensors": [compare(...) rows],
    "notes": [...]}: notes say where a mismatch is an expected, documented deviation.
    """
    got = run_backend(golden, backend)
    desired = {"input": golden.inputs, **dict(zip(golden.imodel.names, golden.outputs)), "logits": golden.logits}
    rows = [compare(name, got.get(name), want) if name in got else
            {"name": name, "match": None, "skipped": True, "shape": list(want.shape), "total": int(want.size)}
            for name, want in desired.items()]
    match = all(r["match"] is not False for r in rows)
    return {"backend": backend, "mode": golden.mode, "accumulate": golden.accumulate,
            "match": match, "tensors": rows, "notes": _notes(golden, backend, match)}


# The mode each backend's default configuration computes as (tflite: the XNNPACK delegate requantizes conv and
# fully connected like onnxruntime; its average pool rounds as "tflite"; see sqref.tflite_io).
NATIVE_MODE = {"onnxruntime": "onnxruntime", "torch": "fbgemm", "tflite": "onnxruntime"}


def _notes(golden, backend, match):
    """Where a mismatch is a documented deviation, say so (only when something differs)."""
    notes = []
    if backend == "tflite":
        notes.append("TFLite ran with its default XNNPACK delegate on int8 activations (sqref's uint8 code q is "
                     "TFLite's q - 128)")
    if match:
        return notes
    native = NATIVE_MODE.get(backend)
    if native and golden.mode != native:
        notes.append(f"the golden file was computed in mode {golden.mode!r}; {backend} computes as mode {native!r}, "
                     f"so differences at or near .5 ties of the requantization are expected")
    if golden.accumulate == "int16-pairs" and backend == "tflite":
        notes.append("the golden file models the int16 pair saturation of onnxruntime/FBGEMM u8 x s8 kernels; "
                     "TFLite (int8 x int8) accumulates exactly: regenerate with --accumulate exact to compare")
    if golden.accumulate == "int16-pairs" and backend in ("onnxruntime", "torch"):
        notes.append("int16-pairs models x86 AVX2 CPUs without VNNI; on a VNNI or ARM CPU the backend "
                     "accumulates exactly and differences are expected")
    if backend in ("onnxruntime", "torch") and golden.accumulate == "exact":
        notes.append(f"{backend}'s u8 x s8 kernels sum adjacent products in saturating int16 on x86 CPUs without "
                     f"VNNI (docs/BACKENDS.md); a golden file made with --accumulate int16-pairs models that")
    if backend == "tflite":
        notes.append("XNNPACK requantizes conv/fully connected as mode 'onnxruntime' and rounds average pools "
                     "as mode 'tflite'")
        if any(isinstance(layer, integer.IntAvgPool2d) for layer in golden.imodel.layers) and golden.mode != "tflite":
            notes.append("the model has an average pool: TFLite rounds it half away from zero (mode 'tflite'), "
                         "so its outputs may differ at ties")
    cmd = golden.meta.get("command")
    if cmd and backend == "sqref":  # sqref itself changed: the message says how to regenerate
        notes.append(f"to regenerate the golden file: {cmd} --force")
    return notes


# ----------------------------------------------------------------------------- PyTorch backend


def _run_torch(imodel, codes):
    """The integer model as PyTorch quantized ops (fbgemm engine): quantized::conv2d(_relu),
    quantized::linear(_relu) with the float bias, max/avg pooling and reshape on quint8."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("this torch build has no fbgemm quantized engine")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        p = imodel.input
        q = torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(codes)), p.scale, p.zero_point)
        out = {"input": codes}
        for name, layer in zip(imodel.names, imodel.layers):
            q = _torch_layer(torch, layer, q)
            out[name] = q.int_repr().numpy().copy()
        last = imodel.layers[-1].y
        out["logits"] = requant.dequantize_linear(out[imodel.names[-1]], last.scale, last.zero_point)
        return out
    finally:
        torch.backends.quantized.engine = previous


def _torch_weight(torch, layer):
    w = torch.from_numpy(np.ascontiguousarray(layer.weight))
    s = np.asarray(layer.w_scale)
    if s.ndim == 0:
        return torch._make_per_tensor_quantized_tensor(w, float(s), 0)
    return torch._make_per_channel_quantized_tensor(w, torch.from_numpy(s.astype(np.float64)),
                                                    torch.zeros(s.size, dtype=torch.int64), 0)


def _torch_layer(torch, layer, q):
    import torch.nn.functional as F

    if isinstance(layer, integer.IntConv2d):
        bias = torch.from_numpy(layer.bias_float.copy())
        packed = torch.ops.quantized.conv2d_prepack(_torch_weight(torch, layer), bias, list(layer.stride),
                                                    list(layer.padding), list(layer.dilation), layer.groups)
        op = torch.ops.quantized.conv2d_relu if layer.relu else torch.ops.quantized.conv2d
        return op(q, packed, layer.y.scale, layer.y.zero_point)
    if isinstance(layer, integer.IntLinear):
        packed = torch.ops.quantized.linear_prepack(_torch_weight(torch, layer), torch.from_numpy(layer.bias_float.copy()))
        op = torch.ops.quantized.linear_relu if layer.relu else torch.ops.quantized.linear
        return op(q, packed, layer.y.scale, layer.y.zero_point)
    if isinstance(layer, integer.IntMaxPool2d):
        return F.max_pool2d(q, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, integer.IntAvgPool2d):
        return F.avg_pool2d(q, layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, integer.IntFlatten):
        return q.reshape(q.shape[0], -1)
    if isinstance(layer, integer.IntReLU):
        return q if layer.fused else F.relu(q)
    raise TypeError(f"no PyTorch version of {type(layer).__name__}")
