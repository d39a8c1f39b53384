"""Verifying a golden file: recompute every tensor with a backend and compare bit for bit.

``verify(golden, backend)`` runs the golden file's integer model on its input
codes with one backend and returns, per tensor, an exact match or the
mismatch count, the histogram of differences and the worst and first
indices (``compare``), plus notes where a mismatch is a documented
deviation. Backends (BACKENDS): "sqref" (sqref.integer.run), "onnxruntime"
and "onnx-reference" (the exported QOperator graph, sqref.backends.onnx),
"torch" (fbgemm, sqref.backends.torch), "tflite" (sqref.backends.tflite).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from sqref.backends import onnx as onnx_backend
from sqref.backends import require
from sqref.backends.probe import PROBED_BACKENDS, accumulation, layer_kernel
from sqref.backends import tflite as tflite_backend
from sqref.backends import torch as torch_backend
from sqref.integer import requant
from sqref.integer.golden import Golden
from sqref.integer.model import IntAdd, IntAvgPool2d, IntGlobalAvgPool
from sqref.integer.run import run_integer
from sqref.testing import assert_bit_exact

BACKENDS = ("sqref", "onnxruntime", "onnx-reference", "torch", "tflite")


def compare(name, actual, desired, *, max_listed=5) -> dict:
    """One tensor's comparison: exact, or the mismatch count, histogram and worst/first indices.

    ``message`` is sqref.testing.assert_bit_exact's text for a mismatch (None when exact).
    """
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


def layer_accumulation(golden) -> dict:
    """{conv/linear layer name: the accumulation its golden outputs were computed with}."""
    acc = golden.accumulate
    return {name: (acc.get(name, "exact") if isinstance(acc, dict) else acc)
            for name, layer in zip(golden.imodel.names, golden.imodel.layers) if layer_kernel(layer) is not None}


def backends_for(imodel) -> tuple:
    """The backends that can run an integer model: every one for a chain; sqref and onnxruntime for a
    graph (torch and TFLite are exported as chains), and the ONNX reference evaluator only without
    onnxruntime's contrib ops (quantized add, average and global average pools)."""
    contrib = any(isinstance(layer, (IntAdd, IntAvgPool2d, IntGlobalAvgPool)) for layer in imodel.layers)
    return tuple(b for b in BACKENDS if (imodel.is_chain or b in ("sqref", "onnxruntime", "onnx-reference"))
                 and not (contrib and b == "onnx-reference"))


def run_backend(golden: Golden, backend, *, onnx_format="qoperator"):
    """Recompute the golden tensors with a backend: {"input": codes, layer name: codes, "logits": float32}.
    onnx_format: how onnxruntime gets the model, "qoperator" or "qdq" (sqref.backends.onnx.export_onnx)."""
    require(backend)
    im = golden.imodel
    if backend in ("torch", "tflite") and not im.is_chain:
        raise ValueError(f"backend {backend!r} verifies chains of layers; this golden file holds a graph model "
                         f"(layers reading other tensors than the previous one): verify it with "
                         f"{' or '.join(backends_for(im))}")
    if backend == "sqref":
        logits, outs = run_integer(im, golden.inputs, mode=golden.mode, accumulate=golden.accumulate,
                                           return_intermediates=True)
        return {"input": golden.inputs, **dict(zip(im.names, outs)), "logits": logits}
    if backend in ("onnxruntime", "onnx-reference"):
        p = im.input
        x = requant.dequantize_linear(golden.inputs, p.scale, p.zero_point)  # fed to the graph's QuantizeLinear
        if onnx_format not in onnx_backend.QUANT_FORMATS:
            raise ValueError(f"onnx_format must be one of {onnx_backend.QUANT_FORMATS}, got {onnx_format!r}")
        if backend == "onnxruntime":
            logits, outs = onnx_backend.run_onnxruntime(im, x, quant_format=onnx_format)
        elif onnx_format == "qdq":
            raise ValueError("the ONNX reference evaluator runs a QDQ graph as float ops between DequantizeLinear "
                             "and QuantizeLinear, not as integer kernels: verify QDQ with onnxruntime")
        else:
            logits, outs = onnx_backend.run_onnx_reference(im, x)
        return {"input": outs.pop("input_q"), **outs, "logits": logits}
    if backend == "torch":
        return torch_backend.run_torch_model(im, golden.inputs)
    if backend == "tflite":
        return tflite_backend.run_tflite_model(im, golden.inputs)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def verify(golden: Golden, backend="sqref", *, progress=None, onnx_format="qoperator", got=None) -> dict:
    """Recompute ``golden`` with ``backend`` and compare every tensor exactly.

    Returns {"backend", "mode", "accumulate", "match": bool, "tensors": [compare(...) rows],
    "notes": [...]}: notes say where a mismatch is an expected, documented deviation.
    ``progress``: None, or a callable given (steps done, what was done): the backend run,
    then each tensor compared (1 + number of tensors steps). ``onnx_format``: as run_backend.
    ``got``: the backend's tensors when they were computed elsewhere (run_backend's dict, e.g.
    assembled from batches run on a cluster); None runs the backend here.
    """
    if got is None:
        got = run_backend(golden, backend, onnx_format=onnx_format)
    if progress is not None:
        progress(1, f"{backend} ran")
    desired = {"input": golden.inputs, **dict(zip(golden.imodel.names, golden.outputs)), "logits": golden.logits}
    rows = []
    for name, want in desired.items():
        rows.append(compare(name, got.get(name), want) if name in got else
                    {"name": name, "match": None, "skipped": True, "shape": list(want.shape), "total": int(want.size)})
        if progress is not None:
            progress(1 + len(rows), name)
    match = all(r["match"] is not False for r in rows)
    accumulate = golden.accumulate if isinstance(golden.accumulate, str) else "per layer: " + ", ".join(
        f"{name} {value}" for name, value in golden.accumulate.items())
    return {"backend": backend, "mode": golden.mode, "accumulate": accumulate,
            "match": match, "tensors": rows, "notes": _notes(golden, backend, match)}


# The mode each backend's default configuration computes as (tflite: the XNNPACK delegate requantizes conv and
# fully connected like onnxruntime; its average pool rounds as "tflite"; see sqref.backends.tflite).
NATIVE_MODE = {"onnxruntime": "onnxruntime", "onnx-reference": "onnx-reference", "torch": "fbgemm",
               "tflite": "onnxruntime"}


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
    per_layer = layer_accumulation(golden)
    if "int16-pairs" in per_layer.values() and backend in ("tflite", "onnx-reference"):
        notes.append(f"the golden file models the int16 pair saturation of onnxruntime/FBGEMM u8 x s8 kernels; "
                     f"{backend} accumulates exactly: regenerate with --accumulate exact to compare")
    if backend in PROBED_BACKENDS:
        try:
            found = {k: accumulation(backend, k) for k in sorted({layer_kernel(layer) for layer in golden.imodel.layers}
                                                                  - {None})}
        except (ImportError, RuntimeError, ValueError) as exc:
            found = {}
            notes.append(f"the accumulation probe of {backend} failed: {exc}")
        differ = [name for name, layer in zip(golden.imodel.names, golden.imodel.layers)
                  if layer_kernel(layer) in found and found[layer_kernel(layer)] != per_layer.get(name, "exact")]
        if differ:
            notes.append(f"{backend}'s u8 x s8 kernels accumulate {', '.join(f'{k} {v}' for k, v in found.items())} "
                         f"on this machine (probed; docs/backends.md), the golden file models layers "
                         f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''} otherwise: differences are "
                         f"expected; regenerate it with --accumulate auto")
    if backend == "tflite":
        notes.append("XNNPACK requantizes conv/fully connected as mode 'onnxruntime' and rounds average pools "
                     "as mode 'tflite'")
        if any(isinstance(layer, IntAvgPool2d) for layer in golden.imodel.layers) and golden.mode != "tflite":
            notes.append("the model has an average pool: TFLite rounds it half away from zero (mode 'tflite'), "
                         "so its outputs may differ at ties")
    cmd = golden.meta.get("command")
    if cmd and backend == "sqref":  # sqref itself changed: the message says how to regenerate
        notes.append(f"to regenerate the golden file: {cmd} --force")
    return notes


